"""Decoders: layers that map a latent code z to a likelihood p(x|z)."""

import math

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from keras_vae.layers import _dense_stack

tfd = tfp.distributions


class LogitBernoulli(tfd.Bernoulli):
    """`tfd.Bernoulli` whose log-probability costs one softplus per element.

    log p(x) = x log sigmoid(l) + (1 - x) log sigmoid(-l) = x l - softplus(l)
    for logits l: one softplus, a multiply and a subtraction per element,
    where `tfd.Bernoulli.log_prob` computes softplus(l) and softplus(-l) and
    two products (twice the transcendental work, which dominates the
    importance-sampled evaluation after the matrix products). The two agree
    within float32 rounding for finite logits (tests/test_layers.py); for an
    infinite logit with x = 1 this form gives NaN where TFP's gives 0.
    Built with `logits` (it falls back to TFP's formula with `probs`).
    """

    def _log_prob(self, event):
        if self._logits is None:
            return super()._log_prob(event)
        logits = tf.convert_to_tensor(self._logits)
        event = tf.cast(event, logits.dtype)
        return tf.math.multiply_no_nan(logits, event) - tf.math.softplus(logits)


class _MLPDecoder(keras.layers.Layer):
    """Shared body of the MLP decoders: z -> hidden layers -> parameters.

    Subclasses set `params_per_element` (how many numbers the network outputs
    per element of x) and implement `_distribution(params)`, where `params` has
    shape `[..., *event_shape, params_per_element]`.
    """

    params_per_element = 1
    # Range the data must lie in for the likelihood to be valid (None: any).
    data_range = None

    def __init__(
        self,
        event_shape,
        hidden_units=(256, 512),
        activation="relu",
        kernel_initializer="glorot_uniform",
        gated=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.event_shape = _dense_stack.check_event_shape(event_shape)
        _dense_stack.init_mlp(self, hidden_units, activation, kernel_initializer, gated)
        self.params_layer = keras.layers.Dense(
            self.params_per_element * math.prod(self.event_shape),
            kernel_initializer=kernel_initializer,
            name="params",
            dtype=self.dtype_policy,
        )
        self.latent_dim = None

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(
                "Expected a latent input shape [..., latent_dim] with a fixed "
                f"latent_dim. Received: input_shape={input_shape}"
            )
        if self.latent_dim is not None and int(input_shape[-1]) != self.latent_dim:
            raise ValueError(
                f"Expected a latent input shape [..., {self.latent_dim}] (this "
                f"layer is already built). Received: input_shape={input_shape}"
            )
        self.latent_dim = int(input_shape[-1])
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: self.latent_dim})
        width = _dense_stack.build_stack(self.hidden_layers, self.latent_dim)
        if not self.params_layer.built:
            self.params_layer.build((None, width))

    def call(self, inputs, training=None):
        z = tf.cast(inputs, self.compute_dtype)
        h = _dense_stack.apply_stack(self.hidden_layers, z, training=training)
        params = self.params_layer(h)
        shape = self.event_shape + (self.params_per_element,)
        params = _dense_stack.unflatten_event(params, shape)
        return self._distribution(params)

    def compute_output_shape(self, input_shape):
        """Shape of a sample of p(x|z): `[*batch, *event_shape]`."""
        return tuple(input_shape[:-1]) + self.event_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "event_shape": list(self.event_shape),
                **_dense_stack.mlp_config(self),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_vae")
class BernoulliDecoder(_MLPDecoder):
    """MLP decoder returning independent Bernoulli pixels, parameterized by logits.

    The likelihood is a `tfd.Bernoulli` with `logits` (a `LogitBernoulli`):
    its log-probability is computed from the logits as x l - softplus(l),
    stable and with one transcendental per pixel, never through a sigmoid
    followed by a cross-entropy. Data must lie in [0, 1].

    Args:
        event_shape: Shape of one example x, e.g. `(28, 28, 1)`.
        hidden_units: Sequence of positive ints, widths of the hidden layers.
        activation: Activation of the hidden layers.
        kernel_initializer: Initializer of all Dense kernels.
        gated: If True, the hidden layers are `GatedDense` layers computing
            `activation(x W + b) * sigmoid(x V + c)` (pass `activation=None`
            for the linear-gated layers of the VampPrior paper).
        **kwargs: Base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: Latent codes of shape `[..., latent_dim]` (leading dimensions
            may hold samples and batch).
        training: Python bool, passed to the hidden layers.

    Returns:
        `tfd.Independent(LogitBernoulli(logits), len(event_shape))` with batch
        shape `inputs.shape[:-1]` and event shape `event_shape`. Its `mean()`
        is the pixel probability sigmoid(logits).

    Example:

    >>> decoder = BernoulliDecoder(event_shape=(28, 28, 1), hidden_units=(16,))
    >>> p = decoder(np.zeros((3, 2), "float32"))
    >>> p.batch_shape, p.event_shape
    (TensorShape([3]), TensorShape([28, 28, 1]))
    """

    data_range = (0.0, 1.0)

    def _distribution(self, params):
        logits = params[..., 0]
        return tfd.Independent(
            LogitBernoulli(logits=logits, dtype=self.compute_dtype),
            reinterpreted_batch_ndims=len(self.event_shape),
        )


@keras.saving.register_keras_serializable(package="keras_vae")
class GaussianDecoder(_MLPDecoder):
    """MLP decoder returning an independent Gaussian per element of x.

    For continuous data. The scale is either learned per element from z
    (`scale=None`, the default) as `softplus(raw) + min_scale`, or fixed to a
    positive float.

    Args:
        event_shape: Shape of one example x.
        hidden_units: Sequence of positive ints, widths of the hidden layers.
        scale: None for a learned, z-dependent scale; a positive float to fix it.
        min_scale: Positive float floor of a learned scale.
        activation: Activation of the hidden layers.
        kernel_initializer: Initializer of all Dense kernels.
        gated: If True, the hidden layers are `GatedDense` layers computing
            `activation(x W + b) * sigmoid(x V + c)` (pass `activation=None`
            for the linear-gated layers of the VampPrior paper).
        **kwargs: Base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: Latent codes of shape `[..., latent_dim]`.
        training: Python bool, passed to the hidden layers.

    Returns:
        `tfd.Independent(tfd.Normal(loc, scale), len(event_shape))`.

    Example:

    >>> decoder = GaussianDecoder(event_shape=(5,), hidden_units=(8,), scale=0.1)
    >>> p = decoder(np.zeros((3, 2), "float32"))
    >>> p.event_shape
    TensorShape([5])
    """

    def __init__(
        self,
        event_shape,
        hidden_units=(256, 512),
        scale=None,
        min_scale=1e-3,
        activation="relu",
        kernel_initializer="glorot_uniform",
        gated=False,
        **kwargs,
    ):
        self.scale = _dense_stack.check_positive_float(
            "scale", scale, allow_none=True, none_meaning="learned"
        )
        self.min_scale = _dense_stack.check_positive_float("min_scale", min_scale)
        self.params_per_element = 2 if self.scale is None else 1
        super().__init__(
            event_shape,
            hidden_units=hidden_units,
            activation=activation,
            kernel_initializer=kernel_initializer,
            gated=gated,
            **kwargs,
        )

    def _distribution(self, params):
        loc = params[..., 0]
        if self.scale is None:
            scale = tf.nn.softplus(params[..., 1]) + self.min_scale
        else:
            scale = tf.fill(tf.shape(loc), tf.constant(self.scale, loc.dtype))
        return tfd.Independent(
            tfd.Normal(loc=loc, scale=scale),
            reinterpreted_batch_ndims=len(self.event_shape),
        )

    def get_config(self):
        config = super().get_config()
        config.update({"scale": self.scale, "min_scale": self.min_scale})
        return config
