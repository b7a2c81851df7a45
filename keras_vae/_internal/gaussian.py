"""Reading a diagonal Gaussian `tfd.Independent(tfd.Normal, 1)`: one check, one reader.

`keras_vae.objectives` (the portable formulas) and `keras_vae.layers.flows`
(the context of a flow, the base of an IAF posterior) both take loc and scale
apart; the layers cannot import `objectives` (it imports the layers).
"""

import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions


def is_diagonal_gaussian(d):
    """Whether `d` is `tfd.Independent(tfd.Normal, 1)`."""
    return (
        isinstance(d, tfd.Independent)
        and isinstance(d.distribution, tfd.Normal)
        and tf.get_static_value(d.reinterpreted_batch_ndims) == 1
    )


def diagonal_gaussian_params(d, what="q"):
    """`(loc, scale)` of a diagonal Gaussian `d`; a ValueError naming `what` otherwise."""
    if not is_diagonal_gaussian(d):
        raise ValueError(
            f"Expected {what} to be a diagonal Gaussian, tfd.Independent(tfd.Normal(loc, "
            "scale), 1) (what keras_vae.layers.GaussianEncoder returns). "
            f"Received: {d!r}"
        )
    base = d.distribution
    loc = tf.convert_to_tensor(base.loc)
    return loc, tf.convert_to_tensor(base.scale, loc.dtype)
