"""Encoders: a network plus a distribution head, mapping x to q(z|x)."""

import keras
import tensorflow as tf

from keras_vae.layers import _dense_stack
from keras_vae.layers import _network
from keras_vae.layers.heads import DistributionLayer
from keras_vae.layers.heads import IndependentNormal


@keras.saving.register_keras_serializable(package="keras_vae")
class GaussianEncoder(DistributionLayer):
    """Any Keras network followed by a diagonal Gaussian posterior q(z|x).

    x goes through `network` (any Keras layer or model: a `keras.Sequential`
    of `Conv2D` layers, a user's own model, ...; by default an MLP built from
    `hidden_units`), its output is flattened and a Dense layer
    (`params_layer`) projects it to `IndependentNormal.params_size((latent_dim,))`
    numbers: `loc` and a raw scale mapped to `softplus(raw) + min_scale`.

    Args:
        latent_dim: Positive int, the dimension of z.
        network: Optional Keras layer or model taking `[batch, *event_shape]`
            and returning features `[batch, ...]`. Give either `network` or
            the MLP arguments below, not both.
        hidden_units: Widths of the default MLP's hidden layers (default
            `(512, 256)`; the input is flattened first).
        activation: Activation of the MLP's hidden layers.
        min_scale: Positive float, floor added to the posterior scale.
        kernel_initializer: Initializer of the MLP's and the projection's kernels.
        gated: If True, the MLP's hidden layers are `GatedDense` layers
            computing `activation(x W + b) * sigmoid(x V + c)` (pass
            `activation=None` for the linear-gated layers of the VampPrior paper).
        convert_to_tensor_fn: None (return q(z|x)) or "sample", "mean",
            "mode" (return that tensor, so the layer works in functional
            models; see `keras_vae.layers.heads`).
        seed: Optional int for `convert_to_tensor_fn="sample"`.
        **kwargs: Base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Tensor of shape `[batch, *event_shape]`, float or integer
            (uint8 images are cast to float; they are not rescaled).
        training: Python bool, passed to the network.

    Returns:
        `tfd.Independent(tfd.Normal(loc, scale), reinterpreted_batch_ndims=1)`
        with batch shape `[batch]` and event shape `[latent_dim]`.

    Example:

    >>> encoder = GaussianEncoder(latent_dim=2, hidden_units=(16,))
    >>> q = encoder(np.zeros((3, 28, 28, 1), "float32"))
    >>> q.batch_shape, q.event_shape
    (TensorShape([3]), TensorShape([2]))
    >>> conv = keras.Sequential([
    ...     keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu"),
    ...     keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu"),
    ... ])
    >>> GaussianEncoder(2, network=conv)(np.zeros((3, 28, 28, 1), "float32")).event_shape
    TensorShape([2])
    """

    def __init__(
        self,
        latent_dim,
        network=None,
        hidden_units=None,
        activation="relu",
        min_scale=1e-4,
        kernel_initializer="glorot_uniform",
        gated=False,
        convert_to_tensor_fn=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(convert_to_tensor_fn=convert_to_tensor_fn, seed=seed, **kwargs)
        self.latent_dim = _dense_stack.check_positive_int("latent_dim", latent_dim)
        self.min_scale = _dense_stack.check_positive_float("min_scale", min_scale)
        _network.init_network(
            self, network, hidden_units, (512, 256), activation, kernel_initializer, gated,
            flatten_input=True,
        )  # fmt: skip
        self.head = IndependentNormal(
            (self.latent_dim,), min_scale=self.min_scale, dtype=self.dtype_policy, name="posterior"
        )
        self.params_layer = keras.layers.Dense(
            self.head.params_size((self.latent_dim,)),
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
        self.input_spec = keras.layers.InputSpec(shape=(None,) + self.input_event_shape)
        features = _network.build_network(self.network, (None,) + event_shape, self.compute_dtype)
        if not self.params_layer.built:
            self.params_layer.build((None, _network.flat_size(features)))
        if not self.head.built:
            self.head.build((None, self.params_layer.units))

    def call(self, inputs, training=None):
        _dense_stack.check_float_or_int_dtype(inputs, type(self).__name__)
        x = tf.cast(inputs, self.compute_dtype)
        h = self.network(x, training=training)
        h = tf.reshape(h, [tf.shape(h)[0], -1])
        return self._output(self.head(self.params_layer(h)))

    def compute_output_shape(self, input_shape):
        """Shape of a sample of q(z|x): `[batch, latent_dim]`."""
        return (input_shape[0], self.latent_dim)

    @property
    def hidden_layers(self):
        """The default MLP's hidden layers (empty for a user's network)."""
        return _network.hidden_layers(self)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "latent_dim": self.latent_dim,
                "min_scale": self.min_scale,
                **_network.network_config(self),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**_network.deserialize_network(config))
