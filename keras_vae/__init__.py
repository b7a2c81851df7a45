"""keras_vae: variational auto-encoders for Keras 3 with TensorFlow Probability.

Example:

>>> import keras_vae
>>> from keras_vae.layers import GaussianEncoder, BernoulliDecoder
>>> vae = keras_vae.VAE(GaussianEncoder(latent_dim=32),
...                     BernoulliDecoder(event_shape=(28, 28, 1)))
"""

from keras_vae import kl
from keras_vae import layers
from keras_vae import optimizers
from keras_vae import saving
from keras_vae.kl import gaussian_kl
from keras_vae.kl import kl_divergence
from keras_vae.layers import BernoulliDecoder
from keras_vae.layers import GaussianDecoder
from keras_vae.layers import GaussianEncoder
from keras_vae.layers import StandardNormalPrior
from keras_vae.models import VAE

__version__ = "0.1.0"

__all__ = [
    "VAE",
    "BernoulliDecoder",
    "GaussianDecoder",
    "GaussianEncoder",
    "StandardNormalPrior",
    "gaussian_kl",
    "kl",
    "kl_divergence",
    "layers",
    "optimizers",
    "saving",
]
