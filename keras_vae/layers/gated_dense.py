"""Gated dense layer: h = activation(x W + b) * sigmoid(x V + c)."""

import keras

from keras_vae._internal.validation import check_positive_int


@keras.saving.register_keras_serializable(package="keras_vae")
class GatedDense(keras.layers.Layer):
    """A dense layer with a learned sigmoid gate (Dauphin et al. 2017).

    Computes `activation(x @ W + b) * sigmoid(x @ V + c)`. Used as the hidden
    layer of the encoders and decoders with `gated=True`; with a linear
    activation it is the gated MLP of the VampPrior paper (Tomczak & Welling
    2018), which gives better likelihoods than ReLU MLPs on MNIST.

    Args:
        units: Positive int, output width.
        activation: Activation of the non-gate branch (default linear).
        kernel_initializer: Initializer of both kernels.
        **kwargs: Base `keras.layers.Layer` arguments (`name`, `dtype`, ...;
            the dtype policy also applies to both inner Dense layers).

    Call arguments:
        inputs: Tensor of shape `[..., input_dim]`.

    Returns:
        Tensor of shape `[..., units]`.

    Example:

    >>> layer = GatedDense(4)
    >>> layer(np.ones((2, 3), "float32")).shape
    TensorShape([2, 4])
    """

    def __init__(
        self, units, activation=None, kernel_initializer="glorot_uniform", **kwargs
    ):
        super().__init__(**kwargs)
        self.units = check_positive_int("units", units)
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        # The sublayers share this layer's dtype policy (float64, or
        # mixed_float16: float32 variables, float16 computation).
        self.linear = keras.layers.Dense(
            units,
            kernel_initializer=self.kernel_initializer,
            name="linear",
            dtype=self.dtype_policy,
        )
        self.gate = keras.layers.Dense(
            units,
            activation="sigmoid",
            kernel_initializer=self.kernel_initializer,
            name="gate",
            dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        for layer in (self.linear, self.gate):
            if not layer.built:
                layer.build(input_shape)

    def call(self, inputs):
        return self.activation(self.linear(inputs)) * self.gate(inputs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "activation": keras.activations.serialize(self.activation),
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
            }
        )
        return config
