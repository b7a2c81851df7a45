"""The VAE's input checks: what a batch must be, refused before any update.

Private to `keras_vae.models`. Shape and dtype are checked in Python (at
trace time inside `fit`); values (finite, inside the likelihood's
`data_range`) eagerly when running eagerly, otherwise by assertions that the
whole step depends on, so that no state changes on refused data. A failed
assertion in a traced step reaches the caller as an `InputError`.
"""

import functools
import re

import keras
import numpy as np
import tensorflow as tf

# Prefix of the messages of assertions that run inside a traced step: the
# step functions turn TensorFlow's InvalidArgumentError carrying it into the
# InputError it stands for.
_TAG = "keras_vae input error: "
_ARRAY = re.compile(r"^[-+.\deinaf ]+$")


class InputError(ValueError):
    """A batch (or `beta`) the model refused; nothing was updated.

    Attributes:
        step: The training step (the optimizer's iteration count) that
            refused it, or None outside `fit`'s training steps.
    """

    def __init__(self, message, step=None):
        super().__init__(message)
        self.step = step


def _message(error):
    """"assertion failed: [<tag><text>] [v1] [v2]\n\t [[node ...]]" -> "<text> v1 v2"."""
    message = error.message
    message = message[message.index(_TAG) + len(_TAG):]
    parts = message.split("\n")[0].rstrip().rstrip("]").split("] [")
    # Texts as they are, arrays (several numbers) in brackets.
    parts = [f"[{p}]" if _ARRAY.match(p) and " " in p else p for p in parts]
    return " ".join(parts).strip()


def _raising_input_errors(function, step=None):
    """Wraps a Keras step function: a tagged InvalidArgumentError becomes an
    InputError, with `step()` (read after the failure: nothing moved it)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except tf.errors.InvalidArgumentError as e:
            if _TAG not in e.message:
                raise
            raise InputError(_message(e), step=step() if step else None) from None

    return wrapper


class InputChecks:
    """Mixin of `keras_vae.VAE`: validates and casts its inputs.

    Needs `self.encoder` (with `input_event_shape` once built), `self.decoder`
    (optionally with a `data_range`), `self.beta` and `self.build`.
    """

    @staticmethod
    def _unpack(data):
        """x from an array, `(x,)`, `(x, y)`, `(x, y, w)` or a TFDS dict."""
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        if isinstance(x, dict):
            if "image" not in x:
                raise InputError(
                    "Expected a dict input to hold the images under the key "
                    f"'image' (TFDS style). Received keys: {sorted(x)}"
                )
            x = x["image"]
        return x

    def _prepare(self, x, step=None):
        """Validates x and casts it to the compute dtype.

        Shape and dtype are checked in Python (at trace time inside `fit`).
        Values are checked (finite; inside `decoder.data_range` if it has one)
        eagerly when running eagerly, otherwise by assertions that everything
        downstream depends on, so no update runs on refused data. `step` (the
        optimizer's iteration count, in `train_step`) is named in the error.
        """
        x = self._unpack(x)
        if not tf.is_tensor(x):
            x = tf.convert_to_tensor(np.asarray(x))
        dtype = tf.as_dtype(x.dtype)
        if not (dtype.is_floating or dtype.is_integer or dtype == tf.bool):
            raise InputError(
                "Expected inputs with a real numeric dtype (float, int or uint8). "
                f"Received: x.dtype={dtype.name}"
            )
        if not self.built:
            self.build((None,) + tuple(x.shape[1:]))
        expected = self.input_event_shape
        shape_message = f"Expected inputs of shape (batch, {', '.join(map(str, expected))}). "
        checks = []
        if x.shape.rank is not None:
            received = tuple(x.shape[1:])
            if len(received) != len(expected) or any(
                r is not None and r != e for r, e in zip(received, expected)
            ):
                raise InputError(f"{shape_message}Received: x.shape={tuple(x.shape)}")
        if x.shape.rank is None or any(d is None for d in x.shape[1:]):
            # Retracing with relaxed shapes (reduce_retracing) can hide dimensions
            # or even the rank: check what is left at run time.
            shape = tf.shape(x, out_type=tf.int64)
            same = tf.cond(
                tf.equal(tf.size(shape), len(expected) + 1),
                lambda: tf.reduce_all(
                    tf.equal(shape[1:], tf.constant(expected, dtype=tf.int64))
                ),
                lambda: tf.constant(False),
            )
            checks.append(
                tf.debugging.Assert(
                    same,
                    [f"{_TAG}{shape_message}Received: x.shape =", shape],
                    summarize=-1,
                )
            )
        with tf.control_dependencies(checks):
            x = tf.cast(x, self.compute_dtype)
            if checks:
                # Not tf.ensure_shape / set_shape: given a static shape claim,
                # Grappler evaluates shape-dependent ops with the run-time shape
                # before the Assert has run. A reshape is an op that waits for it.
                x = tf.reshape(x, (-1,) + tuple(expected))
            else:
                x = tf.ensure_shape(x, (None,) + tuple(expected))
        return self._check_values(x, step)

    def _check_values(self, x, step=None):
        data_range = getattr(self.decoder, "data_range", None)
        if data_range is None:
            ok = tf.reduce_all(tf.math.is_finite(x))
            expectation = "finite values"
        else:
            low, high = data_range
            ok = tf.reduce_all((x >= low) & (x <= high))
            expectation = (
                f"values in [{low:g}, {high:g}] for the "
                f"{type(self.decoder).__name__} likelihood (for 8-bit images, "
                "divide by 255 or binarize)"
            )
        if tf.executing_eagerly():
            if not bool(ok):
                raise InputError(
                    f"Expected {expectation}. Received"
                    f"{'' if step is None else f' at training step {int(step)}'}: values with min="
                    f"{float(tf.reduce_min(x)):g}, max={float(tf.reduce_max(x)):g}"
                    f"{', and NaN' if bool(tf.reduce_any(tf.math.is_nan(x))) else ''}",
                    step=None if step is None else int(step),
                )
            return x
        where = [] if step is None else ["at training step", step]
        check = tf.debugging.Assert(
            ok,
            [f"{_TAG}Expected {expectation}. Received"]
            + where
            + [
                "a batch with min, max, any NaN =",
                tf.reduce_min(x),
                tf.reduce_max(x),
                tf.reduce_any(tf.math.is_nan(x)),
            ]
            + (["(refused: no update was made)"] if where else []),
        )
        with tf.control_dependencies([check]):
            return tf.identity(x)

    def _check_beta(self):
        if tf.executing_eagerly():
            if not float(self.beta) >= 0:
                raise InputError(
                    f"Expected `beta` >= 0. Received: beta={float(self.beta):g}"
                )
            return []
        return [
            tf.debugging.Assert(
                self.beta >= 0,
                [f"{_TAG}Expected `beta` >= 0. Received: beta =", self.beta],
            )
        ]

    def _wrap_step_function(self, kind, force, step=None):
        """Keras's `make_<kind>_function`, its result wrapped by
        `_raising_input_errors` once (Keras caches it in `<kind>_function`)."""
        attribute = f"{kind}_function"
        if getattr(self, attribute) is not None and not force:
            return getattr(self, attribute)
        getattr(super(), f"make_{kind}_function")(force=True)
        setattr(self, attribute, _raising_input_errors(getattr(self, attribute), step=step))
        return getattr(self, attribute)

    def make_train_function(self, force=False):
        return self._wrap_step_function(
            "train", force, step=lambda: int(self.optimizer.iterations.numpy())
        )

    def make_test_function(self, force=False):
        return self._wrap_step_function("test", force)

    def make_predict_function(self, force=False):
        return self._wrap_step_function("predict", force)
