"""The network inside an encoder or decoder: a user's, or the default MLP.

One place for: taking `network=` or the MLP short form (`hidden_units=`,
`gated=`, ...), building the network and reading its output shape, and the
config entries either form serializes to.
"""

import math

import keras

from keras_vae.layers import _dense_stack


class _MLP(keras.layers.Layer):
    """The default network: hidden Dense (or GatedDense) layers, the input
    flattened first if asked. Not serialized itself: the encoder or decoder
    stores its arguments and makes it again."""

    def __init__(self, hidden_units, activation, kernel_initializer, gated, flatten_input, **kwargs):
        super().__init__(**kwargs)
        self.flatten_input = flatten_input
        self.hidden_layers = _dense_stack.make_hidden_layers(
            hidden_units, activation, "hidden", kernel_initializer, gated, dtype=self.dtype_policy
        )

    def build(self, input_shape):
        width = math.prod(input_shape[1:]) if self.flatten_input else input_shape[-1]
        for layer in self.hidden_layers:
            if not layer.built:
                layer.build((None, width))
            width = layer.units

    def call(self, inputs, training=None):
        h = inputs
        if self.flatten_input and h.shape.rank != 2:
            h = keras.ops.reshape(h, (-1, math.prod(h.shape[1:])))
        for layer in self.hidden_layers:
            h = layer(h, training=training)
        return h

    def compute_output_shape(self, input_shape):
        width = math.prod(input_shape[1:]) if self.flatten_input else input_shape[-1]
        if self.hidden_layers:
            width = self.hidden_layers[-1].units
        return (input_shape[0], width)


def init_network(
    layer,
    network,
    hidden_units,
    default_hidden_units,
    activation,
    kernel_initializer,
    gated,
    flatten_input,
):
    """Stores the network arguments on `layer` and creates `layer.network`."""
    layer.kernel_initializer = kernel_initializer
    layer.custom_network = network is not None
    if network is not None:
        if not isinstance(network, keras.layers.Layer):
            raise ValueError(
                "Expected `network` to be a Keras layer or model (e.g. a "
                f"keras.Sequential of Conv2D layers). Received: network={network!r}"
            )
        if hidden_units is not None or gated:
            raise ValueError(
                "Expected either `network` or the MLP arguments (`hidden_units`, "
                "`gated`), not both. Received: network="
                f"{network.name!r}, hidden_units={hidden_units!r}, gated={gated!r}"
            )
        layer.network = network
        return
    layer.hidden_units = _dense_stack.check_hidden_units(
        default_hidden_units if hidden_units is None else hidden_units
    )
    layer.activation = activation
    layer.gated = bool(gated)
    layer.network = _MLP(
        layer.hidden_units,
        activation,
        kernel_initializer,
        layer.gated,
        flatten_input,
        dtype=layer.dtype_policy,
        name="mlp",
    )


def build_network(network, input_shape, dtype):
    """Builds `network` (unless built) and returns its output shape."""
    if not network.built:
        network.build(input_shape)
    spec = network.compute_output_spec(keras.KerasTensor(input_shape, dtype=dtype))
    return tuple(spec.shape)


def flat_size(shape):
    """Number of features per example of an output `shape` `[batch, ...]`."""
    features = shape[1:]
    if any(d is None for d in features):
        raise ValueError(
            "Expected a network whose output has a fixed shape per example. "
            f"Received: output shape {shape}"
        )
    return math.prod(features)


def hidden_layers(layer):
    """The default MLP's hidden layers (empty for a user's network)."""
    return [] if layer.custom_network else list(layer.network.hidden_layers)


def network_config(layer):
    """`get_config` entries: the user's network, or the MLP's arguments."""
    config = {
        "kernel_initializer": keras.initializers.serialize(
            keras.initializers.get(layer.kernel_initializer)
        )
    }
    if layer.custom_network:
        config["network"] = keras.saving.serialize_keras_object(layer.network)
        return config
    config.update(
        {
            "hidden_units": list(layer.hidden_units),
            "activation": keras.activations.serialize(keras.activations.get(layer.activation)),
            "gated": layer.gated,
        }
    )
    return config


def deserialize_network(config):
    """A config whose serialized `network` (if any) is a layer again."""
    config = dict(config)
    if isinstance(config.get("network"), dict):
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
    return config
