"""Argument checks shared by the whole package, written once.

Errors follow Keras: `ValueError("Expected ... Received: name=value")`.
"""

import numbers


def is_int(value):
    """True for Python and NumPy integers, False for bools (and the rest)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name, value, minimum=1, what=None):
    """Returns `value` if it is an integer >= `minimum`, else raises.

    Args:
        name: The argument's name, for the message.
        value: What was received.
        minimum: The smallest value accepted (1: a positive integer).
        what: The expectation in words, by default from `minimum`.

    Example:

    >>> check_int("epochs", 3)
    3
    """
    if not is_int(value) or value < minimum:
        if what is None:
            what = {1: "a positive integer", 0: "an integer >= 0"}.get(
                minimum, f"an integer >= {minimum}"
            )
        raise ValueError(f"Expected `{name}` to be {what}. Received: {name}={value!r}")
    return value


def check_positive_int(name, value):
    """`check_int(name, value, minimum=1)`."""
    return check_int(name, value, minimum=1)


def check_latent_dim(layer, what):
    """`layer.latent_dim` if it is an integer, else a ValueError naming `what`
    (e.g. "an encoder", "encoders[1]"): the models and `IAFEncoder` take any
    layer with one."""
    latent_dim = getattr(layer, "latent_dim", None)
    if not is_int(latent_dim):
        raise ValueError(
            f"Expected {what} with an integer `latent_dim` attribute, such as "
            f"keras_vae.layers.GaussianEncoder. Received: {layer!r}"
        )
    return latent_dim
