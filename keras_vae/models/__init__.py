"""The VAE models (one latent layer; a hierarchy; vector-quantized codes) and the error their input checks raise."""

from keras_vae.models._inputs import InputError
from keras_vae.models.hierarchical import HierarchicalVAE
from keras_vae.models.vae import VAE
from keras_vae.models.vqvae import VQVAE

__all__ = ["HierarchicalVAE", "InputError", "VAE", "VQVAE"]
