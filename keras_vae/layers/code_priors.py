"""Priors over a grid of discrete codes: a small PixelCNN (van den Oord et al. 2016).

`PixelCNNPrior` gives p(k) = prod_i p(k_i | k_<i) over the positions i of an
`[H, W]` grid of code indices in raster order (row by row), each factor a
categorical over the K codes whose logits come from masked convolutions: the
first ("A") sees only the positions before i, the next ones ("B") also the
features at i, which themselves saw only positions before it. The last layer
starts at zero, so an untrained prior is exactly uniform, log p(k) = -H W log K.

Its `log_prob` sums the factors (nats per grid); `sample_from_uniform` draws
a grid position by position from uniforms in [0, 1) (the inverse of each
factor's CDF), a function of its input that exports to TFLite and ONNX.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_vae._internal.validation import check_positive_int

__all__ = ["MaskedConv2D", "PixelCNNPrior", "categorical_from_uniform", "check_code_indices"]


def check_code_indices(indices, grid_shape, num_codes):
    """Code grids `indices` as int32, after checking them: an integer dtype
    and the shape `[batch, *grid_shape]` always (statically), the values in
    [0, num_codes) when running eagerly (in a graph an index outside reads
    no code: the exports mark such rows NaN instead). Raises ValueError
    naming what was expected and what was received."""
    indices = tf.convert_to_tensor(indices)
    if not indices.dtype.is_integer:
        raise ValueError(f"Expected integer code indices. Received: dtype={indices.dtype.name}")
    expected = tuple(grid_shape)
    shape = indices.shape
    if shape.rank is not None and (
        shape.rank != len(expected) + 1 or any(d is not None and d != e for d, e in zip(shape[1:], expected))
    ):
        raise ValueError(
            f"Expected code indices of shape (batch, {', '.join(map(str, expected))}). "
            f"Received: shape={tuple(shape)}"
        )
    if tf.executing_eagerly() and indices.shape.num_elements():
        low, high = int(tf.reduce_min(indices)), int(tf.reduce_max(indices))
        if low < 0 or high >= num_codes:
            raise ValueError(
                f"Expected code indices in [0, {num_codes}). Received: values from {low} to {high}"
            )
    return tf.cast(indices, tf.int32)


def categorical_from_uniform(probs, uniform):
    """Index k with CDF(k - 1) <= u < CDF(k) of categorical `probs` `[..., K]`
    at `uniform` `[...]` in [0, 1): a sample when u ~ U[0, 1). Only sums and
    comparisons (no random op, no argmax over a float tie)."""
    # The last axis by its number: TF.js's Cumsum (4.22) returns an empty
    # tensor for axis -1 (tests/test_portable.py, the VQ-VAE's `sample`).
    cdf = tf.cumsum(probs, axis=len(probs.shape) - 1)
    below = tf.cast(cdf <= uniform[..., tf.newaxis], tf.int32)
    return tf.minimum(tf.reduce_sum(below, axis=-1), tf.shape(probs)[-1] - 1)


@keras.saving.register_keras_serializable(package="keras_vae")
class MaskedConv2D(keras.layers.Conv2D):
    """A `Conv2D` whose kernel sees only the positions before the centre in
    raster order: mask "A" excludes the centre, mask "B" includes it.

    Args:
        mask_type: "A" (a first layer) or "B" (the layers after it).
        filters, kernel_size, **kwargs: As for `keras.layers.Conv2D`
            (`padding` defaults to "same"; odd kernel sizes).
    """

    def __init__(self, mask_type, filters, kernel_size, **kwargs):
        if mask_type not in ("A", "B"):
            raise ValueError(f"Expected mask_type 'A' or 'B'. Received: mask_type={mask_type!r}")
        kwargs.setdefault("padding", "same")
        super().__init__(filters, kernel_size, **kwargs)
        if any(k % 2 == 0 for k in self.kernel_size):
            raise ValueError(f"Expected an odd kernel_size. Received: kernel_size={self.kernel_size}")
        self.mask_type = mask_type

    def build(self, input_shape):
        super().build(input_shape)
        height, width = self.kernel_size
        # Over the kernel's positions only (one code per position: no channel
        # masks), broadcast over its channels: a graph that unrolls many
        # calls (the prior's `sample_from_uniform`) holds kh x kw floats per
        # call, not a kernel-sized constant.
        mask = np.zeros((height, width, 1, 1), dtype="float32")
        mask[: height // 2] = 1.0
        mask[height // 2, : width // 2 + (self.mask_type == "B")] = 1.0
        self.mask = mask

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(inputs, kernel * tf.constant(self.mask, kernel.dtype))

    def get_config(self):
        return dict(super().get_config(), mask_type=self.mask_type)


@keras.saving.register_keras_serializable(package="keras_vae")
class PixelCNNPrior(keras.layers.Layer):
    """An autoregressive prior over `[H, W]` grids of code indices.

    Args:
        num_codes: K, the number of codes.
        filters: Channels of the hidden layers.
        num_layers: Residual blocks of masked "B" convolutions after the
            first, masked "A" one.
        first_kernel_size: Kernel size of the "A" convolution (odd).
        kernel_size: Kernel size of the "B" convolutions (odd).
        seed: Optional int for the initial weights.
        **kwargs: Base layer arguments.

    Calling it on indices `[B, H, W]` gives the logits `[B, H, W, K]` of
    each position's factor.

    Example:

    >>> prior = PixelCNNPrior(num_codes=4, filters=8, num_layers=1)
    >>> codes = np.zeros((2, 3, 3), "int32")
    >>> np.allclose(prior.log_prob(codes), -9 * np.log(4))   # untrained: uniform
    True
    >>> prior.sample_from_uniform(np.random.rand(2, 3, 3)).shape
    TensorShape([2, 3, 3])
    """

    def __init__(self, num_codes, filters=64, num_layers=4, first_kernel_size=5, kernel_size=3, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.num_codes = check_positive_int("num_codes", num_codes)
        self.filters = check_positive_int("filters", filters)
        self.num_layers = check_positive_int("num_layers", num_layers) if num_layers else 0
        self.first_kernel_size = check_positive_int("first_kernel_size", first_kernel_size)
        self.kernel_size = check_positive_int("kernel_size", kernel_size)
        self.seed = seed
        init = lambda i: keras.initializers.HeNormal(seed=None if seed is None else seed + i)  # noqa: E731
        self.first = MaskedConv2D(
            "A", filters, first_kernel_size, kernel_initializer=init(0), name="masked_a", dtype=self.dtype_policy
        )
        # No bias in the residual convolutions: with one, TensorFlow 2.21's
        # Grappler remapper fails to fuse the last block's Conv2D + BiasAdd +
        # Add + Relu in a training step ("remapper failed: ... missing node
        # add", logged as an error; the step still runs unfused).
        self.blocks = [
            MaskedConv2D(
                "B", filters, kernel_size, use_bias=False, kernel_initializer=init(i + 1), name=f"masked_b_{i}",
                dtype=self.dtype_policy,
            )
            for i in range(self.num_layers)
        ]
        self.hidden = keras.layers.Conv2D(
            filters, 1, kernel_initializer=init(self.num_layers + 1), name="hidden", dtype=self.dtype_policy
        )
        self.logits_layer = keras.layers.Conv2D(
            num_codes, 1, kernel_initializer="zeros", name="logits", dtype=self.dtype_policy
        )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 3 or None in input_shape[1:]:
            raise ValueError(
                "Expected code grids of shape [batch, height, width] with a fixed height and "
                f"width. Received: input_shape={input_shape}"
            )
        self.grid_shape = tuple(int(d) for d in input_shape[1:])
        shape = (None,) + self.grid_shape
        self.first.build(shape + (self.num_codes,))
        for block in self.blocks:
            block.build(shape + (self.filters,))
        self.hidden.build(shape + (self.filters,))
        self.logits_layer.build(shape + (self.filters,))

    def call(self, indices):
        """The logits `[B, H, W, K]` of p(k_i | k_<i) at every position i."""
        x = tf.one_hot(tf.cast(indices, tf.int32), self.num_codes, dtype=self.compute_dtype)
        h = self.first(x)
        for block in self.blocks:
            h = h + block(tf.nn.relu(h))
        h = self.hidden(tf.nn.relu(h))
        return tf.cast(self.logits_layer(tf.nn.relu(h)), tf.float32)

    def log_prob(self, indices):
        """log p(k) of code grids `[B, H, W]`, nats per grid: `[B]`."""
        if not self.built:
            self.build((None,) + tuple(tf.convert_to_tensor(indices).shape[1:]))
        indices = check_code_indices(indices, self.grid_shape, self.num_codes)
        log_probs = tf.nn.log_softmax(self(indices), axis=-1)
        picked = tf.reduce_sum(log_probs * tf.one_hot(indices, self.num_codes, dtype=log_probs.dtype), axis=-1)
        return tf.reduce_sum(picked, axis=[1, 2])

    @property
    def num_positions(self):
        return math.prod(self.grid_shape)

    def sample_from_uniform(self, uniform):
        """Code grids `[B, H, W]` (int32) drawn position by position in raster
        order, k_i the inverse CDF of p(k_i | k_<i) at `uniform[:, i]`:
        samples of p(k) for `uniform` `[B, H, W]` ~ U[0, 1).

        One pass of the network per position (H W passes), unrolled: no loop
        op, so the exports' `sample` runs in TFLite and ONNX Runtime.
        """
        uniform = tf.cast(uniform, tf.float32)
        if not self.built:
            self.build((None,) + tuple(uniform.shape[1:]))
        if tuple(uniform.shape[1:]) != self.grid_shape:
            raise ValueError(
                f"Expected uniforms of shape (batch, {', '.join(map(str, self.grid_shape))}). "
                f"Received: shape={tuple(uniform.shape)}"
            )
        height, width = self.grid_shape
        codes = tf.zeros(tf.shape(uniform), tf.int32)
        for i in range(height * width):
            row, column = divmod(i, width)
            probs = tf.nn.softmax(self(codes)[:, row, column, :], axis=-1)
            code = categorical_from_uniform(probs, uniform[:, row, column])
            position = tf.one_hot(i, height * width, dtype=tf.int32)
            codes = codes + code[:, tf.newaxis, tf.newaxis] * tf.reshape(position, (1, height, width))
        return codes

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.num_codes,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_codes": self.num_codes,
                "filters": self.filters,
                "num_layers": self.num_layers,
                "first_kernel_size": self.first_kernel_size,
                "kernel_size": self.kernel_size,
                "seed": self.seed,
            }
        )
        return config
