"""Encoders: layers that map an input x to a posterior distribution q(z|x)."""

import math

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from keras_vae.layers import _dense_stack

tfd = tfp.distributions


@keras.saving.register_keras_serializable(package="keras_vae")
class GaussianEncoder(keras.layers.Layer):
    """MLP encoder returning a diagonal Gaussian posterior q(z|x).

    The input is flattened (any fixed event shape works: `(28, 28, 1)`,
    `(784,)`, ...), passed through ReLU (by default) hidden layers, and a final
    Dense layer gives `loc` and a raw scale mapped to `softplus(raw) + min_scale`,
    so the scale is positive and never collapses below `min_scale`.

    Args:
        latent_dim: Positive int, the dimension of z.
        hidden_units: Sequence of positive ints, widths of the hidden layers.
        activation: Activation of the hidden layers.
        min_scale: Positive float, floor added to the posterior scale.
        kernel_initializer: Initializer of all Dense kernels.
        gated: If True, the hidden layers are `GatedDense` layers computing
            `activation(x W + b) * sigmoid(x V + c)` (pass `activation=None`
            for the linear-gated layers of the VampPrior paper).
        **kwargs: Base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Tensor of shape `[batch, *event_shape]`, float or integer
            (uint8 images are cast to float; they are not rescaled).
        training: Python bool, passed to the hidden layers.

    Returns:
        `tfd.Independent(tfd.Normal(loc, scale), reinterpreted_batch_ndims=1)`
        with batch shape `[batch]` and event shape `[latent_dim]`.

    Example:

    >>> encoder = GaussianEncoder(latent_dim=2, hidden_units=(16,))
    >>> q = encoder(np.zeros((3, 28, 28, 1), "float32"))
    >>> q.batch_shape, q.event_shape
    (TensorShape([3]), TensorShape([2]))
    """

    def __init__(
        self,
        latent_dim,
        hidden_units=(512, 256),
        activation="relu",
        min_scale=1e-4,
        kernel_initializer="glorot_uniform",
        gated=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.latent_dim = _dense_stack.check_positive_int("latent_dim", latent_dim)
        self.min_scale = _dense_stack.check_positive_float("min_scale", min_scale)
        _dense_stack.init_mlp(self, hidden_units, activation, kernel_initializer, gated)
        self.params_layer = keras.layers.Dense(
            2 * self.latent_dim,
            kernel_initializer=kernel_initializer,
            name="loc_and_scale",
            dtype=self.dtype_policy,
        )
        self.input_event_shape = None

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        event_shape = input_shape[1:]
        if len(input_shape) < 2 or any(d is None for d in event_shape):
            raise ValueError(
                "Expected an input shape [batch, *event_shape] with a fixed event "
                f"shape, e.g. (None, 28, 28, 1). Received: input_shape={input_shape}"
            )
        event_shape = tuple(int(d) for d in event_shape)
        if self.input_event_shape is not None and event_shape != self.input_event_shape:
            raise ValueError(
                "Expected an input shape [batch, "
                f"{', '.join(map(str, self.input_event_shape))}] (this layer is "
                f"already built for {self.input_event_shape}). "
                f"Received: input_shape={input_shape}"
            )
        self.input_event_shape = event_shape
        self.input_spec = keras.layers.InputSpec(
            shape=(None,) + self.input_event_shape
        )
        width = _dense_stack.build_stack(
            self.hidden_layers, math.prod(self.input_event_shape)
        )
        if not self.params_layer.built:
            self.params_layer.build((None, width))

    def call(self, inputs, training=None):
        _dense_stack.check_float_or_int_dtype(inputs, "GaussianEncoder")
        x = tf.cast(inputs, self.compute_dtype)
        h = _dense_stack.flatten_event(x, len(self.input_event_shape))
        h = _dense_stack.apply_stack(self.hidden_layers, h, training=training)
        params = self.params_layer(h)
        loc, raw_scale = tf.split(params, 2, axis=-1)
        scale = tf.nn.softplus(raw_scale) + self.min_scale
        return tfd.Independent(
            tfd.Normal(loc=loc, scale=scale), reinterpreted_batch_ndims=1
        )

    def compute_output_shape(self, input_shape):
        """Shape of a sample of q(z|x): `[batch, latent_dim]`."""
        return (input_shape[0], self.latent_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "latent_dim": self.latent_dim,
                "min_scale": self.min_scale,
                **_dense_stack.mlp_config(self),
            }
        )
        return config
