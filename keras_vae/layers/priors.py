"""Priors p(z)."""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from keras_vae.layers import _dense_stack

tfd = tfp.distributions


@keras.saving.register_keras_serializable(package="keras_vae")
class StandardNormalPrior(keras.layers.Layer):
    """The standard normal prior p(z) = N(0, I) of the classic VAE.

    A layer (with no weights) so that a model tracks and serializes it like its
    encoder and decoder, and so that learned priors can take its place.

    Args:
        latent_dim: Positive int, the dimension of z.
        **kwargs: Base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: Latent codes `z` of shape `[..., latent_dim]`.

    Returns:
        From `call`: log p(z), shape `[...]`. From `distribution()`:
        `tfd.Independent(tfd.Normal(0, 1), 1)` with event shape `[latent_dim]`.

    Example:

    >>> prior = StandardNormalPrior(latent_dim=2)
    >>> prior.distribution().event_shape
    TensorShape([2])
    >>> round(float(prior(np.zeros((1, 2), "float32"))[0]), 4)  # -log(2 pi)
    -1.8379
    """

    def __init__(self, latent_dim, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = _dense_stack.check_positive_int("latent_dim", latent_dim)
        self.input_spec = keras.layers.InputSpec(min_ndim=1, axes={-1: latent_dim})

    def build(self, input_shape=None):
        pass

    def distribution(self, dtype=None):
        """The prior as a `tfd.Distribution` with event shape `[latent_dim]`."""
        dtype = dtype or self.compute_dtype
        zeros = tf.zeros([self.latent_dim], dtype=dtype)
        return tfd.Independent(
            tfd.Normal(loc=zeros, scale=tf.ones_like(zeros)),
            reinterpreted_batch_ndims=1,
        )

    def call(self, inputs):
        z = tf.cast(inputs, self.compute_dtype)
        return self.distribution(z.dtype).log_prob(z)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])

    def get_config(self):
        config = super().get_config()
        config.update({"latent_dim": self.latent_dim})
        return config
