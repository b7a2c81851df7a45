"""Private helpers shared by the encoder and decoder layers.

One place for: validating constructor arguments and making the hidden
Dense (or GatedDense) layers of the default MLP.
"""

import math
import numbers

import keras
import tensorflow as tf

from keras_vae._internal.validation import check_positive_int  # noqa: F401  (used by the layers)
from keras_vae._internal.validation import is_int
from keras_vae.layers.gated_dense import GatedDense


def check_hidden_units(hidden_units):
    if isinstance(hidden_units, int):
        hidden_units = (hidden_units,)
    try:
        units = tuple(hidden_units)
    except TypeError:
        raise ValueError(
            "Expected `hidden_units` to be a sequence of positive integers. "
            f"Received: hidden_units={hidden_units!r}"
        ) from None
    for u in units:
        if not is_int(u) or u <= 0:
            raise ValueError(
                "Expected `hidden_units` to be a sequence of positive integers. "
                f"Received: hidden_units={hidden_units!r}"
            )
    return units


def check_event_shape(event_shape):
    if isinstance(event_shape, int):
        event_shape = (event_shape,)
    try:
        shape = tuple(event_shape)
    except TypeError:
        shape = None
    if not shape or any(
        not is_int(d) or d <= 0 for d in shape
    ):
        raise ValueError(
            "Expected `event_shape` to be a non-empty tuple of positive integers, "
            f"e.g. (28, 28, 1). Received: event_shape={event_shape!r}"
        )
    return shape


def make_hidden_layers(
    hidden_units, activation, name_prefix, kernel_initializer, gated=False, dtype=None
):
    """The hidden layers of an MLP (Dense, or GatedDense), created in `__init__`."""
    if gated:
        layer_class = GatedDense
    else:
        layer_class = keras.layers.Dense
    return [
        layer_class(
            units,
            activation=activation,
            kernel_initializer=kernel_initializer,
            name=f"{name_prefix}_{i}",
            dtype=dtype,
        )
        for i, units in enumerate(hidden_units)
    ]


def check_float_or_int_dtype(x, layer_name):
    """Refuses strings, complex numbers and other non-numeric inputs."""
    dtype = tf.as_dtype(x.dtype)
    if not (dtype.is_floating or dtype.is_integer or dtype == tf.bool):
        raise ValueError(
            f"Expected {layer_name} inputs with a real numeric dtype (float, int "
            f"or uint8). Received: inputs.dtype={dtype.name}"
        )


def check_positive_float(name, value, allow_none=False, none_meaning=""):
    """A finite float > 0 (or None if allowed); ValueError naming the value."""
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value <= 0
    ):
        expected = f"None ({none_meaning}) or " if allow_none else ""
        raise ValueError(
            f"Expected `{name}` to be {expected}a finite float > 0. "
            f"Received: {name}={value!r}"
        )
    return float(value)
