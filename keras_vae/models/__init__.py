"""The VAE model and the error its input checks raise."""

from keras_vae.models._inputs import InputError
from keras_vae.models.vae import VAE

__all__ = ["InputError", "VAE"]
