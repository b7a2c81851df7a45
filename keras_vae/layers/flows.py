"""Flow posteriors: q(z|x) as a diagonal Gaussian pushed through invertible maps.

* `MADE`: the masked autoencoder of Germain et al. (2015) as a Keras 3 layer:
  an MLP whose kernels are multiplied by fixed binary masks, so that output i
  depends only on the inputs before i in the layer's order (and on an
  optional context, unmasked). TFP's `tfb.AutoregressiveNetwork` is a
  tf_keras layer: called inside a Keras 3 model it computes, but the model
  does not track its weights (none trained by `fit`, none saved; checked
  with TFP 0.25 and Keras 3.15). This one is a Keras 3 layer.
* `InverseAutoregressiveFlow`: a `tfb.Bijector` of T steps
  y -> shift(y) + exp(log_scale(y)) * y, each (shift, log_scale) a `MADE`
  (Kingma et al. 2016). One step's Jacobian is triangular with diagonal
  exp(log_scale), so log |det J| = sum log_scale: the forward pass (sampling)
  gives the sample and its density in one pass over the networks; the
  inverse (the density of an arbitrary z) takes D passes per step.
* `IAFEncoder`: any encoder whose q(z|x) is a diagonal Gaussian, followed by
  the flow: q(z|x) is `tfd.TransformedDistribution(q0(z|x), flow)`, with
  log q(z|x) = log q0(y|x) - log |det dz/dy| by the change of variables.

The output layers of the MADEs start at zero, so a new `IAFEncoder` is its
base encoder exactly (tests/test_flows.py). `docs/derivation.md` derives the
density; `keras_vae.objectives.sample_and_log_prob` and
`posterior_sample_from_noise` take the one-pass route.
"""

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from keras_vae._internal import precision
from keras_vae._internal.gaussian import diagonal_gaussian_params
from keras_vae._internal.validation import check_int
from keras_vae._internal.validation import check_latent_dim
from keras_vae._internal.validation import check_positive_int
from keras_vae.layers import _dense_stack
from keras_vae.layers.heads import DistributionLayer

tfd = tfp.distributions
tfb = tfp.bijectors

__all__ = ["IAFEncoder", "InverseAutoregressiveFlow", "MADE", "made_masks"]


def made_masks(event_size, hidden_units, reverse=False):
    """The binary masks of a MADE, one `[inputs, outputs]` array per layer.

    Inputs have degrees 1..D in the layer's order (D..1 if `reverse`);
    hidden unit k of every layer has degree 1 + (k mod max(D - 1, 1)); a
    hidden unit sees the units of the layer below with a degree <= its own,
    and output i (of each of the two parameter blocks) the last hidden
    units with a degree < input i's. So output i is a function of the inputs
    of degree < its own: the Jacobian of the outputs with respect to the
    inputs is strictly triangular in the order.

    >>> [m.shape for m in made_masks(3, (4,))]
    [(3, 4), (4, 6)]
    """
    order = np.arange(1, event_size + 1)
    if reverse:
        order = order[::-1]
    masks, below = [], order
    for units in hidden_units:
        degrees = np.arange(units) % max(event_size - 1, 1) + 1
        masks.append((degrees[np.newaxis, :] >= below[:, np.newaxis]).astype("float32"))
        below = degrees
    outputs = np.concatenate([order, order])
    masks.append((outputs[np.newaxis, :] > below[:, np.newaxis]).astype("float32"))
    return masks


@keras.saving.register_keras_serializable(package="keras_vae")
class MADE(precision.ComputesInVariableDtype, keras.layers.Layer):
    """Masked autoregressive MLP: `(shift, log_scale)` of an affine flow step.

    Output i (shift_i and log_scale_i) is a function of the inputs before i
    in the layer's order (`reverse=False`: 1, ..., D) and of the context,
    never of input i or later ones. The output layer starts at zero: a new
    MADE gives shift = log_scale = 0.

    Args:
        event_size: Positive int D, the width of the inputs.
        hidden_units: Widths of the masked hidden layers (each >= D - 1 lets
            every input reach the outputs after it).
        activation: Activation of the hidden layers.
        reverse: If True, the order is D, ..., 1 (alternate it between the
            steps of a flow, so that every coordinate conditions on every other).
        context_size: Width of an optional context, added (unmasked) to the
            first hidden layer (or to the output if there is no hidden layer).
        kernel_initializer: Initializer of the hidden kernels.
        **kwargs: Base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `[..., D]`.
        context: `[..., context_size]` with the same leading shape, when
            `context_size` > 0.

    Returns:
        `(shift, log_scale)`, each `[..., D]`.

    Example:

    >>> made = MADE(3, hidden_units=(8,))
    >>> shift, log_scale = made(np.ones((2, 3), "float32"))
    >>> shift.shape, float(np.abs(log_scale).max())
    (TensorShape([2, 3]), 0.0)
    """

    def __init__(
        self,
        event_size,
        hidden_units=(320, 320),
        activation="relu",
        reverse=False,
        context_size=0,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.event_size = check_positive_int("event_size", event_size)
        self.hidden_units = _dense_stack.check_hidden_units(hidden_units)
        self.activation = keras.activations.get(activation)
        self.activation_name = activation if isinstance(activation, str) else keras.activations.serialize(activation)
        self.reverse = bool(reverse)
        self.context_size = check_int("context_size", context_size, minimum=0)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.masks = made_masks(self.event_size, self.hidden_units, self.reverse)

    def build(self, input_shape):
        if input_shape[-1] != self.event_size:
            raise ValueError(
                f"Expected inputs [..., {self.event_size}] (event_size={self.event_size}). "
                f"Received: input_shape={tuple(input_shape)}"
            )
        widths = (self.event_size,) + self.hidden_units
        self.kernels, self.biases = [], []
        for i, units in enumerate(self.hidden_units):
            self.kernels.append(
                self.add_weight(shape=(widths[i], units), initializer=self.kernel_initializer, name=f"kernel_{i}")
            )
            self.biases.append(self.add_weight(shape=(units,), initializer="zeros", name=f"bias_{i}"))
        self.context_kernel = None
        if self.context_size:
            units = self.hidden_units[0] if self.hidden_units else 2 * self.event_size
            self.context_kernel = self.add_weight(
                shape=(self.context_size, units),
                initializer=self.kernel_initializer if self.hidden_units else "zeros",
                name="context_kernel",
            )
        self.output_kernel = self.add_weight(
            shape=(widths[-1], 2 * self.event_size), initializer="zeros", name="output_kernel"
        )
        self.output_bias = self.add_weight(shape=(2 * self.event_size,), initializer="zeros", name="output_bias")

    def call(self, inputs, context=None):
        if (context is None) != (self.context_size == 0):
            raise ValueError(
                f"Expected a context [..., {self.context_size}] (context_size={self.context_size}). "
                f"Received: context={'None' if context is None else tuple(context.shape)}"
            )
        dtype = self.compute_dtype
        leading = tf.shape(inputs)[:-1]
        # Two-dimensional products (every runtime has them), leading axes flattened.
        h = tf.reshape(tf.cast(inputs, dtype), [-1, self.event_size])
        flat_context = None
        if context is not None:
            flat_context = tf.reshape(tf.cast(context, dtype), [-1, self.context_size])
        layers = list(zip(self.kernels, self.biases)) + [(self.output_kernel, self.output_bias)]
        for i, ((kernel, bias), mask) in enumerate(zip(layers, self.masks)):
            h = tf.matmul(h, tf.convert_to_tensor(kernel) * tf.constant(mask, dtype)) + bias
            if i == 0 and flat_context is not None:
                h = h + tf.matmul(flat_context, self.context_kernel)
            if i < len(self.hidden_units):
                h = self.activation(h)
        out_shape = tf.concat([leading, [self.event_size]], 0)
        shift = tf.reshape(h[:, : self.event_size], out_shape)
        log_scale = tf.reshape(h[:, self.event_size :], out_shape)
        return shift, log_scale

    def compute_output_shape(self, input_shape):
        return (tuple(input_shape), tuple(input_shape))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "event_size": self.event_size,
                "hidden_units": list(self.hidden_units),
                "activation": self.activation_name,
                "reverse": self.reverse,
                "context_size": self.context_size,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config


class InverseAutoregressiveFlow(tfb.Bijector):
    """The T affine autoregressive steps of an IAF as one `tfb.Bijector`.

    Step t maps y to shift_t(y) + exp(log_scale_t(y)) * y, where
    `(shift_t, raw_t) = made_t(y, context)` and
    log_scale_t = max_log_scale * tanh(raw_t / max_log_scale) (a soft bound:
    the identity at raw = 0, never an overflowing exp). Its Jacobian is
    triangular in made_t's order, so log |det| = sum_i log_scale_t,i.

    Its methods are plain Python over a fixed list of steps (no tensor-
    dependent control flow), marked for AutoGraph not to convert: a training
    run that traced the flow in fit and in its TensorBoard images failed in
    the evaluation that followed, in the same process, with AutoGraph
    calling the converted `_step` without its `self` ("missing 1 required
    positional argument: 'y'").

    Args:
        mades: The `MADE` layers, one per step, applied in this order.
        context: `[B, C]` tensor given to every MADE (broadcast over sample axes).
        max_log_scale: Positive float bound of |log_scale| per coordinate.
    """

    def __init__(self, mades, context, max_log_scale=3.0, name="inverse_autoregressive_flow"):
        self._mades = list(mades)
        self._context = context
        self._max_log_scale = float(max_log_scale)
        super().__init__(forward_min_event_ndims=1, validate_args=False, name=name, parameters={})

    @tf.autograph.experimental.do_not_convert
    def _step(self, made, y):
        context = self._context
        if context is not None:
            context = tf.broadcast_to(
                tf.cast(context, y.dtype), tf.concat([tf.shape(y)[:-1], tf.shape(context)[-1:]], 0)
            )
        shift, raw = made(y, context=context)
        shift, raw = tf.cast(shift, y.dtype), tf.cast(raw, y.dtype)
        return shift, self._max_log_scale * tf.tanh(raw / self._max_log_scale)

    @tf.autograph.experimental.do_not_convert
    def forward_and_log_det(self, y):
        """`(z, log |det dz/dy|)` in one pass over the networks: `[..., D]`, `[...]`."""
        log_det = tf.zeros(tf.shape(y)[:-1], y.dtype)
        for made in self._mades:
            shift, log_scale = self._step(made, y)
            y = shift + tf.exp(log_scale) * y
            log_det = log_det + tf.reduce_sum(log_scale, axis=-1)
        return y, log_det

    def _forward(self, y):
        return self.forward_and_log_det(y)[0]

    def _forward_log_det_jacobian(self, y):
        # TFP derives the inverse log-det from this one, at `inverse(z)`
        # (from its cache when z came out of `forward`).
        return self.forward_and_log_det(y)[1]

    @tf.autograph.experimental.do_not_convert
    def _inverse(self, z):
        # Each step inverted by D fixed-point passes: after pass i the first
        # i coordinates in the step's order are exact (output i depends only
        # on the coordinates before it), so after D passes all are.
        for made in reversed(self._mades):
            y = tf.zeros_like(z)
            for _ in range(made.event_size):
                shift, log_scale = self._step(made, y)
                y = (z - shift) * tf.exp(-log_scale)
            z = y
        return z



@keras.saving.register_keras_serializable(package="keras_vae")
class IAFEncoder(DistributionLayer):
    """An encoder's diagonal Gaussian q0(z|x) pushed through an inverse autoregressive flow.

    z = f_T(... f_1(y)), y ~ q0(z|x) = N(loc(x), diag scale(x)^2), with each
    f_t an affine autoregressive step whose shift and scale come from a
    `MADE` given y and the context [loc(x), log scale(x)] (so the flow depends
    on x through any encoder, whatever its network). The order alternates
    between steps. By the change of variables,

        log q(z|x) = log q0(y|x) - sum_t sum_i log_scale_t,i,

    exact for the z the flow produced; `keras_vae.VAE` computes it in the
    same pass as the sample, and uses the Monte Carlo KL log q(z|x) - log p(z)
    (a flow posterior has no closed-form KL). A new IAFEncoder is its base
    encoder exactly (the MADEs' output layers start at zero).

    With a `VampPrior`, the prior's components are the base encoder's
    Gaussians at the pseudo-inputs (a mixture of Gaussians, sampled and
    scored in closed form), not flows.

    Args:
        encoder: A layer returning a diagonal Gaussian q0(z|x) with a
            `latent_dim` attribute, e.g. `keras_vae.layers.GaussianEncoder`
            on any network.
        num_steps: Positive int T, the flow steps.
        hidden_units: Hidden widths of each step's MADE.
        activation: Activation of the MADEs' hidden layers.
        max_log_scale: Positive float, the soft bound of each step's
            |log scale| per coordinate.
        convert_to_tensor_fn: None (return q(z|x)) or "sample" (a flow has
            no closed-form mean or mode).
        seed: Optional int for `convert_to_tensor_fn="sample"`.
        **kwargs: Base `keras.layers.Layer` arguments.

    Returns (call):
        `tfd.TransformedDistribution(q0, InverseAutoregressiveFlow)`, batch
        `[batch]`, event `[latent_dim]`.

    Example:

    >>> from keras_vae.layers import GaussianEncoder
    >>> encoder = IAFEncoder(GaussianEncoder(4, hidden_units=(16,)), num_steps=2, hidden_units=(8,))
    >>> q = encoder(np.zeros((3, 28, 28, 1), "float32"))
    >>> q.batch_shape, q.event_shape
    (TensorShape([3]), TensorShape([4]))
    """

    def __init__(
        self,
        encoder,
        num_steps=2,
        hidden_units=(320, 320),
        activation="relu",
        max_log_scale=3.0,
        convert_to_tensor_fn=None,
        seed=None,
        **kwargs,
    ):
        if convert_to_tensor_fn not in (None, "sample"):
            raise ValueError(
                "Expected convert_to_tensor_fn in (None, 'sample'): a flow posterior has no "
                f"closed-form mean or mode. Received: convert_to_tensor_fn={convert_to_tensor_fn!r}"
            )
        super().__init__(convert_to_tensor_fn=convert_to_tensor_fn, seed=seed, **kwargs)
        self.base_encoder = encoder
        self.latent_dim = check_latent_dim(encoder, "an encoder")
        self.num_steps = check_positive_int("num_steps", num_steps)
        self.hidden_units = _dense_stack.check_hidden_units(hidden_units)
        self.activation = activation
        self.max_log_scale = _dense_stack.check_positive_float("max_log_scale", max_log_scale)
        self.mades = [
            MADE(
                self.latent_dim,
                self.hidden_units,
                activation=activation,
                reverse=bool(t % 2),
                context_size=2 * self.latent_dim,
                dtype=self.dtype_policy,
                name=f"made_{t}",
            )
            for t in range(self.num_steps)
        ]

    @property
    def input_event_shape(self):
        return getattr(self.base_encoder, "input_event_shape", None)

    def build(self, input_shape):
        if not self.base_encoder.built:
            self.base_encoder.build(tuple(input_shape))
        for made in self.mades:
            if not made.built:
                made.build((None, self.latent_dim))

    def call(self, inputs, training=None):
        q0 = self.base_encoder(inputs, training=training)
        loc, scale = diagonal_gaussian_params(q0, "the base encoder's q0(z|x)")
        context = tf.concat([loc, tf.math.log(scale)], axis=-1)
        flow = InverseAutoregressiveFlow(self.mades, context, self.max_log_scale)
        return self._output(tfd.TransformedDistribution(q0, flow))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.latent_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "encoder": keras.saving.serialize_keras_object(self.base_encoder),
                "num_steps": self.num_steps,
                "hidden_units": list(self.hidden_units),
                "activation": self.activation,
                "max_log_scale": self.max_log_scale,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)
