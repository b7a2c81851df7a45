"""Keras 3 layers that return TensorFlow Probability distributions."""

from keras_vae.layers.decoders import BernoulliDecoder, GaussianDecoder
from keras_vae.layers.encoders import GaussianEncoder
from keras_vae.layers.gated_dense import GatedDense
from keras_vae.layers.priors import StandardNormalPrior

__all__ = [
    "BernoulliDecoder",
    "GaussianDecoder",
    "GaussianEncoder",
    "GatedDense",
    "StandardNormalPrior",
]
