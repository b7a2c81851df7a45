"""Decoders: a network plus a distribution head, mapping z to p(x|z)."""

import keras
import tensorflow as tf

from keras_vae.layers import _dense_stack
from keras_vae.layers import _network
from keras_vae.layers.heads import DistributionLayer
from keras_vae.layers.heads import IndependentBernoulli
from keras_vae.layers.heads import IndependentNormal
from keras_vae.layers.heads import LogitBernoulli  # noqa: F401  (its old home)


class _Decoder(DistributionLayer):
    """Shared body of the decoders: z -> network -> [projection] -> head.

    Subclasses implement `_make_head()`. Latent codes may carry leading
    sample dimensions (`[samples, batch, latent_dim]`): the network sees them
    flattened into one batch and the distribution gets them back.
    """

    # Range the data must lie in for the likelihood to be valid (None: any).
    data_range = None

    def __init__(
        self,
        event_shape,
        network=None,
        hidden_units=None,
        activation="relu",
        kernel_initializer="glorot_uniform",
        gated=False,
        convert_to_tensor_fn=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(convert_to_tensor_fn=convert_to_tensor_fn, seed=seed, **kwargs)
        self.event_shape = _dense_stack.check_event_shape(event_shape)
        _network.init_network(
            self, network, hidden_units, (256, 512), activation, kernel_initializer, gated,
            flatten_input=False,
        )  # fmt: skip
        self.head = self._make_head()
        self.params_layer = None
        if not self.custom_network:
            self.params_layer = self._projection()
        self.latent_dim = None

    def _projection(self):
        return keras.layers.Dense(
            self.head.params_count,
            kernel_initializer=self.kernel_initializer,
            name="params",
            dtype=self.dtype_policy,
        )

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
        features = _network.build_network(self.network, (None, self.latent_dim), self.compute_dtype)
        if self.params_layer is None and not self.head.accepts(features):
            # A user's network ending in features, not in the head's parameters.
            self.params_layer = self._projection()
        if self.params_layer is not None:
            if not self.params_layer.built:
                self.params_layer.build((None, _network.flat_size(features)))
            features = (None, self.params_layer.units)
        if not self.head.built:
            self.head.build(features)

    def call(self, inputs, training=None):
        z = tf.cast(inputs, self.compute_dtype)
        leading = None
        if z.shape.rank != 2:
            leading = tf.shape(z)[:-1]
            z = tf.reshape(z, [-1, self.latent_dim])
        h = self.network(z, training=training)
        if self.params_layer is not None:
            if h.shape.rank != 2:
                h = tf.reshape(h, [tf.shape(h)[0], -1])
            h = self.params_layer(h)
        if leading is not None:
            h = tf.reshape(h, tf.concat([leading, tf.shape(h)[1:]], axis=0))
        return self._output(self.head(h))

    def compute_output_shape(self, input_shape):
        """Shape of a sample of p(x|z): `[*batch, *event_shape]`."""
        return tuple(input_shape[:-1]) + self.event_shape

    @property
    def hidden_layers(self):
        """The default MLP's hidden layers (empty for a user's network)."""
        return _network.hidden_layers(self)

    def get_config(self):
        config = super().get_config()
        config.update({"event_shape": list(self.event_shape), **_network.network_config(self)})
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**_network.deserialize_network(config))


@keras.saving.register_keras_serializable(package="keras_vae")
class BernoulliDecoder(_Decoder):
    """Any Keras network followed by independent Bernoulli pixels (logits).

    z goes through `network` (any Keras layer or model; by default an MLP
    built from `hidden_units`). A network that ends in the event shape
    itself (a `Conv2DTranspose` stack producing 28x28x1 logits) or in
    `prod(event_shape)` features feeds the `IndependentBernoulli` head
    directly; any other output is flattened and projected by a Dense layer
    (`params_layer`). The log-probability is x l - softplus(l) from the
    logits, never a sigmoid followed by a cross-entropy. Data must lie in
    [0, 1].

    Args:
        event_shape: Shape of one example x, e.g. `(28, 28, 1)`.
        network: Optional Keras layer or model taking `[n, latent_dim]`.
            Give either `network` or the MLP arguments, not both.
        hidden_units: Widths of the default MLP's hidden layers (default
            `(256, 512)`).
        activation: Activation of the MLP's hidden layers.
        kernel_initializer: Initializer of the MLP's and projection's kernels.
        gated: If True, the MLP's hidden layers are `GatedDense` layers
            computing `activation(x W + b) * sigmoid(x V + c)` (pass
            `activation=None` for the linear-gated layers of the VampPrior paper).
        convert_to_tensor_fn: None (return p(x|z)) or "sample", "mean",
            "mode" (return that tensor; see `keras_vae.layers.heads`).
        seed: Optional int for `convert_to_tensor_fn="sample"`.
        **kwargs: Base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: Latent codes of shape `[..., latent_dim]` (leading dimensions
            may hold samples and batch).
        training: Python bool, passed to the network.

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

    data_range = IndependentBernoulli.data_range

    def _make_head(self):
        return IndependentBernoulli(self.event_shape, dtype=self.dtype_policy, name="likelihood")


@keras.saving.register_keras_serializable(package="keras_vae")
class GaussianDecoder(_Decoder):
    """Any Keras network followed by an independent Gaussian per element of x.

    For continuous data. The scale is either learned per element from z
    (`scale=None`, the default) as `softplus(raw) + min_scale`, or fixed to a
    positive float. The network's output feeds the `IndependentNormal` head
    directly when it is its parameters (`[2 * prod(event_shape)]` flat, loc
    then raw scale, or the event shape with loc and raw scale stacked on the
    last axis; loc only with a fixed scale); any other output is flattened
    and projected by a Dense layer (`params_layer`).

    Args:
        event_shape: Shape of one example x.
        network: Optional Keras layer or model taking `[n, latent_dim]`.
        hidden_units: Widths of the default MLP's hidden layers.
        scale: None for a learned, z-dependent scale; a positive float to fix it.
        min_scale: Positive float floor of a learned scale.
        activation: Activation of the MLP's hidden layers.
        kernel_initializer: Initializer of the MLP's and projection's kernels.
        gated: If True, the MLP's hidden layers are `GatedDense` layers.
        convert_to_tensor_fn: None, "sample", "mean" or "mode".
        seed: Optional int for `convert_to_tensor_fn="sample"`.
        **kwargs: Base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: Latent codes of shape `[..., latent_dim]`.
        training: Python bool, passed to the network.

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
        network=None,
        hidden_units=None,
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
        super().__init__(
            event_shape,
            network=network,
            hidden_units=hidden_units,
            activation=activation,
            kernel_initializer=kernel_initializer,
            gated=gated,
            **kwargs,
        )

    def _make_head(self):
        return IndependentNormal(
            self.event_shape,
            scale=self.scale,
            min_scale=self.min_scale,
            dtype=self.dtype_policy,
            name="likelihood",
        )

    def get_config(self):
        config = super().get_config()
        config.update({"scale": self.scale, "min_scale": self.min_scale})
        return config
