"""Keras 3 layers that return TensorFlow Probability distributions."""

from keras_vae.layers.code_priors import MaskedConv2D, PixelCNNPrior
from keras_vae.layers.decoders import BernoulliDecoder, GaussianDecoder
from keras_vae.layers.encoders import GaussianEncoder
from keras_vae.layers.flows import IAFEncoder
from keras_vae.layers.flows import MADE
from keras_vae.layers.gated_dense import GatedDense
from keras_vae.layers.heads import DistributionLayer
from keras_vae.layers.heads import IndependentBernoulli
from keras_vae.layers.heads import IndependentNormal
from keras_vae.layers.priors import MixtureOfGaussiansPrior
from keras_vae.layers.priors import StandardNormalPrior
from keras_vae.layers.priors import VampPrior
from keras_vae.layers.quantizer import CodeUsage, VectorQuantizer

__all__ = [
    "BernoulliDecoder",
    "CodeUsage",
    "GaussianDecoder",
    "GaussianEncoder",
    "DistributionLayer",
    "GatedDense",
    "IAFEncoder",
    "IndependentBernoulli",
    "IndependentNormal",
    "MADE",
    "MaskedConv2D",
    "MixtureOfGaussiansPrior",
    "PixelCNNPrior",
    "StandardNormalPrior",
    "VampPrior",
    "VectorQuantizer",
]
