"""Distribution heads: Keras 3 layers from a tensor of parameters to a `tfd` distribution.

A head holds no weights: any network (Dense, Conv2D, a user's own model) ends
in `params_size(event_shape)` numbers per example (or in the event shape
itself), and the head turns them into a distribution, as `tfp.layers` did for
Keras 2 (`tfp.layers` does not run under Keras 3):

| keras_vae head | replaces |
| --- | --- |
| `IndependentNormal` | `tfp.layers.IndependentNormal` (diagonal Gaussian; also with a fixed scale) |
| `IndependentBernoulli` | `tfp.layers.IndependentBernoulli` (logits) |
| `DistributionLayer` (base) | the `convert_to_tensor_fn` rule of `tfp.layers.DistributionLambda` |

Parameters arrive either flat, `[..., params_size]`, or shaped like the
event with the parameters stacked on the last axis, `[..., *event_shape[:-1],
k * event_shape[-1]]` (a conv decoder ending in 28x28x1 logits for a
Bernoulli, or 28x28x2 for a Gaussian with its scale). In both forms the last
axis is split into k equal parts, in the order the head documents (loc, then
scale), and each part is reshaped to `[..., *event_shape]`.

**The functional-API rule.** A distribution cannot flow between the layers of
a functional `keras.Model` (Keras 3 passes tensors only). With the default
`convert_to_tensor_fn=None` these layers return the distribution, and calling
one on a symbolic `keras.Input` raises at construction, saying how to compose
it instead. With `convert_to_tensor_fn="sample"`, `"mean"` or `"mode"` they
return that tensor, eagerly and symbolically alike, so they work in
functional and Sequential models.

**Mixed precision.** The heads are the float32 output layer of a
mixed-precision model: under a mixed policy such as `"mixed_bfloat16"`
(given to the head, or to the encoder or decoder that makes it) they take
the network's bfloat16 parameters on in float32 and give a float32
distribution (parameters, samples, log-probabilities summed over the
event). They compute in their policy's variable dtype
(`keras_vae.precision.ComputesInVariableDtype`): float64 stays float64.
"""

import math

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from keras_vae._internal import bernoulli
from keras_vae._internal import precision
from keras_vae._internal.seeds import stateless_seed
from keras_vae.layers import _dense_stack

tfd = tfp.distributions

CONVERT_TO_TENSOR_FNS = ("sample", "mean", "mode")


class LogitBernoulli(tfd.Bernoulli):
    """`tfd.Bernoulli` whose log-probability costs one softplus per element.

    log p(x) = x log sigmoid(l) + (1 - x) log sigmoid(-l) = x l - softplus(l)
    for logits l (`keras_vae._internal.bernoulli`): one softplus, a multiply
    and a subtraction per element,
    where `tfd.Bernoulli.log_prob` computes softplus(l) and softplus(-l) and
    two products (twice the transcendental work, which dominates the
    importance-sampled evaluation after the matrix products). The two agree
    within float32 rounding for finite logits (tests/test_layers.py); for an
    infinite logit with x = 1 this form gives NaN where TFP's gives 0.
    Built with `logits` (it falls back to TFP's formula with `probs`).
    """

    def _log_prob(self, event):
        if self.logits is None:
            return super()._log_prob(event)
        logits = tf.convert_to_tensor(self.logits)
        event = tf.cast(event, logits.dtype)
        return bernoulli.logit_bernoulli_log_prob(logits, event)


def check_convert_to_tensor_fn(value):
    if value is not None and value not in CONVERT_TO_TENSOR_FNS:
        raise ValueError(
            f"Expected `convert_to_tensor_fn` in {(None,) + CONVERT_TO_TENSOR_FNS}. "
            f"Received: convert_to_tensor_fn={value!r}"
        )
    return value


class DistributionLayer(keras.layers.Layer):
    """Base of the layers that return a `tfd.Distribution`.

    Holds the functional-API rule (see the module docstring): with
    `convert_to_tensor_fn=None` the layer returns its distribution and
    refuses a symbolic call; otherwise it returns the distribution's sample,
    mean or mode, in eager, traced and symbolic calls alike.

    Subclasses call `self._output(distribution)` at the end of `call` and
    implement `compute_output_shape` (the shape of one draw).

    Args:
        convert_to_tensor_fn: None, "sample", "mean" or "mode".
        seed: Optional int seeding the draws of `convert_to_tensor_fn="sample"`.
        **kwargs: Base `keras.layers.Layer` arguments.
    """

    def __init__(self, convert_to_tensor_fn=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.convert_to_tensor_fn = check_convert_to_tensor_fn(convert_to_tensor_fn)
        self.seed = seed
        if self.convert_to_tensor_fn == "sample":
            self.seed_generator = keras.random.SeedGenerator(seed, name="seed_generator")

    def _output(self, distribution):
        if self.convert_to_tensor_fn is None:
            return distribution
        if self.convert_to_tensor_fn == "sample":
            return distribution.sample(seed=stateless_seed(self.seed_generator))
        return getattr(distribution, self.convert_to_tensor_fn)()

    def compute_output_spec(self, inputs, *args, **kwargs):
        if self.convert_to_tensor_fn is None:
            raise ValueError(
                f"{type(self).__name__} returns a tfd.Distribution, which cannot flow "
                "between the layers of a functional or Sequential keras.Model (Keras 3 "
                "passes tensors only). Either pass convert_to_tensor_fn='sample', "
                "'mean' or 'mode' to this layer to get that tensor out of it, or call "
                "it in a subclassed model (e.g. keras_vae.VAE, or your own "
                "keras.Model with a call() method), where it returns the "
                f"distribution. Received: a symbolic input of shape {tuple(inputs.shape)}"
            )
        shape = self.compute_output_shape(tuple(inputs.shape))
        # A distribution is in the variable dtype (float32 under a mixed
        # policy), whatever dtype the encoder's or decoder's network uses.
        return keras.KerasTensor(shape, dtype=self.variable_dtype)

    def get_config(self):
        config = super().get_config()
        config.update({"convert_to_tensor_fn": self.convert_to_tensor_fn, "seed": self.seed})
        return config


class _IndependentHead(precision.ComputesInVariableDtype, DistributionLayer):
    """Parameters `[..., k * prod(event_shape)]` (or event-shaped) -> distribution.

    Subclasses set `num_parameters(...)` (k, per element of the event) and
    `_distribution(*parts)`, each part of shape `[..., *event_shape]`.
    Computes in its policy's variable dtype (float32 under
    `"mixed_bfloat16"`; see the module docstring).
    """

    def __init__(self, event_shape, **kwargs):
        super().__init__(**kwargs)
        self.event_shape = _dense_stack.check_event_shape(event_shape)

    @property
    def parameters_per_element(self):
        return 1

    @property
    def params_count(self):
        """Parameters per example this head takes (its `params_size`)."""
        return self.parameters_per_element * math.prod(self.event_shape)

    def accepts(self, input_shape):
        """Whether `input_shape` `[batch, ...]` is one of the parameter forms,
        with one batch dimension: one set of parameters per example (a
        `[batch, 3, 8]` output for an event `(8,)` is not)."""
        input_shape = tuple(input_shape)
        try:
            ndims = self._input_event_ndims(input_shape)
        except ValueError:
            return False
        return len(input_shape) == 1 + ndims

    def build(self, input_shape):
        self._input_event_ndims(tuple(input_shape))

    def _input_event_ndims(self, input_shape):
        """1 for flat parameters, len(event_shape) for event-shaped ones."""
        k = self.parameters_per_element
        size = k * math.prod(self.event_shape)
        shaped = self.event_shape[:-1] + (k * self.event_shape[-1],)
        if len(input_shape) > len(shaped) and tuple(input_shape[-len(shaped):]) == shaped:
            return len(shaped)
        if len(input_shape) >= 2 and input_shape[-1] == size:
            return 1
        raise ValueError(
            f"Expected parameters of shape [..., {size}] (params_size for "
            f"event_shape={self.event_shape}) or [..., {', '.join(map(str, shaped))}]. "
            f"Received: input_shape={input_shape}"
        )

    def call(self, inputs):
        params = tf.cast(inputs, self.compute_dtype)
        ndims = self._input_event_ndims(tuple(params.shape))
        batch = tf.shape(params)[: params.shape.rank - ndims]
        shape = tf.concat([batch, list(self.event_shape)], axis=0)
        parts = tf.split(params, self.parameters_per_element, axis=-1)
        parts = [tf.reshape(p, shape) for p in parts]
        return self._output(self._distribution(*parts))

    def compute_output_shape(self, input_shape):
        """Shape of one draw: the batch dimensions then `event_shape`."""
        input_shape = tuple(input_shape)
        ndims = self._input_event_ndims(input_shape)
        return input_shape[: len(input_shape) - ndims] + self.event_shape

    def get_config(self):
        config = super().get_config()
        config.update({"event_shape": list(self.event_shape)})
        return config


@keras.saving.register_keras_serializable(package="keras_vae")
class IndependentBernoulli(_IndependentHead):
    """Independent Bernoulli elements parameterized by logits.

    The Keras 3 counterpart of `tfp.layers.IndependentBernoulli` (logits
    only: the log-probability is x l - softplus(l), never a sigmoid followed
    by a cross-entropy). Data must lie in [0, 1] (`data_range`).

    Args:
        event_shape: Shape of one example, e.g. `(28, 28, 1)`.
        convert_to_tensor_fn: None (return the distribution), "sample",
            "mean" or "mode" (return that tensor; for functional models).
        seed: Optional int for `convert_to_tensor_fn="sample"`.
        **kwargs: Base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: Logits `[..., prod(event_shape)]` or `[..., *event_shape]`.

    Returns:
        `tfd.Independent(LogitBernoulli(logits), len(event_shape))`; its
        `mean()` is sigmoid(logits).

    Example:

    >>> head = IndependentBernoulli((28, 28, 1))
    >>> IndependentBernoulli.params_size((28, 28, 1))
    784
    >>> p = head(np.zeros((3, 784), "float32"))
    >>> p.batch_shape, p.event_shape
    (TensorShape([3]), TensorShape([28, 28, 1]))
    """

    data_range = (0.0, 1.0)

    @staticmethod
    def params_size(event_shape):
        """Number of parameters per example: one logit per element."""
        return math.prod(_dense_stack.check_event_shape(event_shape))

    def _distribution(self, logits):
        return tfd.Independent(
            LogitBernoulli(logits=logits, dtype=self.compute_dtype),
            reinterpreted_batch_ndims=len(self.event_shape),
        )


@keras.saving.register_keras_serializable(package="keras_vae")
class IndependentNormal(_IndependentHead):
    """Independent Gaussian elements: a diagonal Gaussian over the event.

    The Keras 3 counterpart of `tfp.layers.IndependentNormal`. With
    `scale=None` (default) the parameters hold `loc` then a raw scale, mapped
    to `softplus(raw) + min_scale` (positive, never below `min_scale`); with
    a float `scale`, the parameters are `loc` only and the scale is fixed.

    Args:
        event_shape: Shape of one draw, e.g. `(32,)` for a posterior over 32
            latents or `(28, 28, 1)` for a likelihood.
        scale: None (learned from the parameters) or a positive float (fixed).
        min_scale: Positive float, floor of a learned scale.
        convert_to_tensor_fn: None (return the distribution), "sample",
            "mean" or "mode" (return that tensor; for functional models).
        seed: Optional int for `convert_to_tensor_fn="sample"`.
        **kwargs: Base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `[..., params_size]`, or event-shaped with loc and raw scale
            stacked on the last axis.

    Returns:
        `tfd.Independent(tfd.Normal(loc, scale), len(event_shape))`.

    Example:

    >>> head = IndependentNormal((2,))
    >>> IndependentNormal.params_size((2,))
    4
    >>> q = head(np.zeros((3, 4), "float32"))
    >>> q.batch_shape, q.event_shape
    (TensorShape([3]), TensorShape([2]))
    """

    def __init__(self, event_shape, scale=None, min_scale=1e-4, **kwargs):
        self.scale = _dense_stack.check_positive_float(
            "scale", scale, allow_none=True, none_meaning="learned"
        )
        self.min_scale = _dense_stack.check_positive_float("min_scale", min_scale)
        super().__init__(event_shape, **kwargs)

    @property
    def parameters_per_element(self):
        return 2 if self.scale is None else 1

    @staticmethod
    def params_size(event_shape, scale=None):
        """Parameters per example: loc and raw scale per element (loc only
        with a fixed `scale`)."""
        size = math.prod(_dense_stack.check_event_shape(event_shape))
        return 2 * size if scale is None else size

    def _distribution(self, loc, raw_scale=None):
        if raw_scale is None:
            scale = tf.fill(tf.shape(loc), tf.constant(self.scale, loc.dtype))
        else:
            scale = tf.nn.softplus(raw_scale) + tf.constant(self.min_scale, loc.dtype)
        return tfd.Independent(
            tfd.Normal(loc=loc, scale=scale),
            reinterpreted_batch_ndims=len(self.event_shape),
        )

    def get_config(self):
        config = super().get_config()
        config.update({"scale": self.scale, "min_scale": self.min_scale})
        return config
