"""The VAE's input checks: what a batch must be, refused before any update.

Private to `keras_vae.models`. Where data enters (`fit`, `evaluate`,
`predict`, the `*_on_batch` methods) it is checked before any step runs on
it, so the compiled steps carry no checks (nothing for XLA to drop, no
control dependencies that block kernel fusions):

* arrays and tensors are checked whole, eagerly, before anything starts;
* a `tf.data.Dataset` gets the check as a `map` (it runs in the input
  pipeline, ahead of the step): a refused batch fails the iterator's
  `get_next`, so its step never runs, at any `steps_per_execution`, with or
  without XLA; the steps before it ran (they were good);
* Python generators and `keras.utils.PyDataset`s are checked batch by batch
  as they are drawn.

Shape and dtype are checked in Python (at trace time); values (finite,
inside the likelihood's `data_range`) by `tf.debugging.Assert` in the
pipeline or eagerly. A failed check reaches the caller as an `InputError`.
Direct calls (`encode`, `elbo`, the exported signatures) check their inputs
themselves.
"""

import functools
import inspect
import re
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_vae._internal import pipelines

# Prefix of the messages of assertions that run inside a traced step: the
# step functions turn TensorFlow's InvalidArgumentError carrying it into the
# InputError it stands for.
_TAG = "keras_vae input error: "
_ARRAY = re.compile(r"^[-+.\deinaf ]+$")
# Where the step that refused a batch is named, once known (see _message):
# the first "Received:" of the text becomes "Received at training step N:".
_RECEIVED = "Received:"
# How TensorFlow reports an InputError raised by Python code in a tf.data
# pipeline (Keras feeds generators and PyDatasets through one).
_RAISED = "InputError: "


class InputError(ValueError):
    """A batch (or `beta`) the model refused; nothing was updated.

    Attributes:
        step: The training step (the optimizer's iteration count) that
            refused it, or None outside `fit`'s training steps.
    """

    def __init__(self, message, step=None):
        super().__init__(message)
        self.step = step


def _message(error, step=None):
    """The text of a tagged TensorFlow error, with the refusing step named.

    From an assertion: "assertion failed: [<tag><text>] [v1] [v2]\n\t [[node
    ...]]" -> "<text> v1 v2"; from an InputError raised by Python code in the
    pipeline (a generator's or PyDataset's batches, see `_checked`): its
    one-line text. With a `step`, its first "Received:" becomes "Received
    at training step <step>:".
    """
    message = error.message
    if _TAG not in message:
        message = message[message.index(_RAISED) + len(_RAISED):]
        text = message.split("\n")[0].strip()
    else:
        message = message[message.index(_TAG) + len(_TAG):]
        parts = message.split("\n")[0].rstrip().rstrip("]").split("] [")
        # Texts as they are, arrays (several numbers) in brackets.
        parts = [f"[{p}]" if _ARRAY.match(p) and " " in p else p for p in parts]
        text = " ".join(parts).strip()
    if step is None:
        return text
    return text.replace(_RECEIVED, f"Received at training step {step}:", 1)


def _raising_input_errors(function, step=None, before=None):
    """Wraps a Keras step function: a tagged TensorFlow error (from the input
    pipeline's checks) becomes an InputError, with `step()` (read after the
    failure: nothing moved it). `before()` runs before each call."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if before is not None:
            before()
        try:
            return function(*args, **kwargs)
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
            if _TAG not in (e.message or "") and _RAISED not in (e.message or ""):
                raise
            at = step() if step else None
            raise InputError(_message(e, at), step=at) from None

    return wrapper


def _refuse_weights(argument, received):
    """Raises the error for per-example weights, which the VAE does not take."""
    raise InputError(
        f"Expected no `{argument}`: keras_vae.VAE trains on the mean ELBO (or "
        "IWAE bound) of each batch and takes no per-example or per-class "
        "weights (repeat or subsample the examples instead). "
        f"Received: {received}"
    )


def _refuse_weight_arguments(kwargs):
    """Refuses `sample_weight=` / `class_weight=` given to fit and the others."""
    for argument in ("sample_weight", "class_weight"):
        if kwargs.get(argument) is not None:
            _refuse_weights(argument, f"{argument} of type {type(kwargs[argument]).__name__}")


def _as_tuple(batch):
    """A generator's batch as Keras wants it: a bare array becomes `(x,)`."""
    return batch if isinstance(batch, tuple) else (batch,)


def _check_not_empty(data, what):
    """Refuses an array or a dataset known to hold no example."""
    if isinstance(data, tf.data.Dataset):
        if int(data.cardinality()) == 0:
            raise InputError(f"Expected at least one batch in `{what}`. Received: an empty tf.data.Dataset")
        return
    x = InputChecks.unpack_inputs(data)
    shape = np.shape(x)
    if len(shape) and shape[0] == 0:
        raise InputError(f"Expected at least one example in `{what}`. Received: {what}.shape={tuple(shape)}")


class _CheckedPyDataset(keras.utils.PyDataset):
    """A `keras.utils.PyDataset` whose batches are checked as they are drawn."""

    def __init__(self, dataset, check):
        super().__init__(
            workers=dataset.workers,
            use_multiprocessing=dataset.use_multiprocessing,
            max_queue_size=dataset.max_queue_size,
        )
        self._dataset = dataset
        self._check = check

    def __len__(self):
        return len(self._dataset)

    @property
    def num_batches(self):
        return self._dataset.num_batches

    def __getitem__(self, index):
        batch = self._dataset[index]
        self._check(batch)
        return batch

    def on_epoch_begin(self):
        self._dataset.on_epoch_begin()

    def on_epoch_end(self):
        self._dataset.on_epoch_end()


def _is_array_like(data):
    """Arrays, tensors, and tuples / lists / dicts of them (what is checked whole)."""
    if isinstance(data, (tuple, list)):
        return all(d is None or _is_array_like(d) for d in data)
    if isinstance(data, dict):
        return all(_is_array_like(d) for d in data.values())
    return tf.is_tensor(data) or hasattr(data, "__array__") or isinstance(data, (int, float))


class InputChecks:
    """Mixin of `keras_vae.VAE`: validates and casts its inputs.

    Needs `self.validate_inputs` (False: `fit` and the others pass data on
    unchecked) besides what is listed below.

    Needs `self.input_event_shape` (once built), `self.decoder` (optionally
    with a `data_range`), `self.build` and, if the model has a KL weight,
    `self.beta`.
    """

    @staticmethod
    def unpack_inputs(data):
        """x from an array, `(x,)`, `(x, y)` or a TFDS dict (y is ignored).

        `(x, y, sample_weight)` is refused: the objective has no per-example
        weights (see `_refuse_weights`).
        """
        x, _, weights = keras.utils.unpack_x_y_sample_weight(data)
        if weights is not None:
            _refuse_weights("sample_weight", "batches of (x, y, sample_weight)")
        if isinstance(x, dict):
            if "image" not in x:
                raise InputError(
                    "Expected a dict input to hold the images under the key "
                    f"'image' (TFDS style). Received keys: {sorted(x)}"
                )
            x = x["image"]
        return x

    def prepare_inputs(self, x):
        """x checked (shape, dtype, values) and cast to the variable dtype.

        What the model's methods do to their inputs, for code that computes
        with the model's layers itself (`keras_vae.evaluation`). Accepts
        every form `fit` does (an array, `(x,)`, `(x, y)`, a TFDS dict).
        """
        return self._prepare(x)

    def _prepare(self, x, step=None, checked=False, in_pipeline=False, cast=True):
        """Validates x and casts it to the variable dtype.

        The variable dtype: float32 under a mixed policy, where the encoder
        rounds its own input and the likelihood sees the data unrounded.

        Shape and dtype are checked in Python (at trace time when traced).
        Unless `checked` (the input was checked where it entered: `fit`,
        `evaluate`, ...), values are checked (finite; inside
        `decoder.data_range` if it has one) eagerly when running eagerly,
        otherwise by assertions that everything downstream depends on, and
        so are dimensions left unknown by a relaxed retrace. `step` (the
        training step, eagerly) is named in the error; `in_pipeline`: see
        `_check_values`. `cast=False` returns x checked but not cast.
        """
        x = self.unpack_inputs(x)
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
        unknown = x.shape.rank is None or any(d is None for d in x.shape[1:])
        if unknown and not checked:
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
            if unknown:
                # Not tf.ensure_shape / set_shape: given a static shape claim,
                # Grappler evaluates shape-dependent ops with the run-time shape
                # before the Assert has run. A reshape is an op that waits for it.
                x = tf.reshape(x, (-1,) + tuple(expected))
            else:
                # A graph fed directly (TF Serving's session) bypasses the
                # static shape: refused here at run time, before any op that
                # relies on it.
                x = tf.ensure_shape(x, (None,) + tuple(expected))
        if not checked:
            # On the data as given (uint8 needs no cast to be checked).
            x = self._check_values(x, step, in_pipeline=in_pipeline)
        return tf.cast(x, self.variable_dtype) if cast else x

    def _value_summary(self, x):
        """(ok, min, max, any non-finite) of a batch, in three reductions.

        No temporaries of the batch's size but one product: NaN and inf are
        found by `sum(x * 0)` (NaN exactly when some value is not finite;
        min and max alone may skip a NaN), the range by min and max.
        Returns also the expectation, for messages.
        """
        data_range = getattr(self.decoder, "data_range", None)
        if x.dtype == tf.bool:
            x = tf.cast(x, tf.uint8)
        if x.dtype.is_floating:
            nonfinite = tf.math.is_nan(tf.reduce_sum(x * tf.zeros((), x.dtype)))
        else:
            nonfinite = tf.constant(False)
        low_seen = tf.cast(tf.reduce_min(x), tf.float32)
        high_seen = tf.cast(tf.reduce_max(x), tf.float32)
        if data_range is None:
            ok = ~nonfinite
            expectation = "finite values"
        else:
            low, high = data_range
            ok = ~nonfinite & (low_seen >= low) & (high_seen <= high)
            expectation = (
                f"values in [{low:g}, {high:g}] for the "
                f"{type(self.decoder).__name__} likelihood (for 8-bit images, "
                "divide by 255 or binarize)"
            )
        return ok, low_seen, high_seen, nonfinite, expectation

    def _check_values(self, x, step=None, in_pipeline=False):
        """x, after a check of its values: eager, or an assertion x depends on.

        `in_pipeline`: the assertion runs in an input pipeline of `fit`
        (`evaluate`, ...), and its message leaves a place for the step that
        refused the batch, named when the error reaches the caller.
        """
        ok, low_seen, high_seen, nonfinite, expectation = self._value_summary(x)
        if tf.executing_eagerly():
            if not bool(ok):
                # Only now, per example: which is the first bad one.
                data_range = getattr(self.decoder, "data_range", None)
                values = tf.cast(x, tf.float32)
                good = tf.math.is_finite(values)
                if data_range is not None:
                    good &= (values >= data_range[0]) & (values <= data_range[1])
                per_example = tf.reduce_all(tf.reshape(good, (tf.shape(good)[0], -1)), axis=1)
                first = int(tf.where(~per_example)[0, 0])
                nan = tf.math.is_nan(values)
                numbers = tf.boolean_mask(values, ~nan) if not bool(tf.reduce_all(nan)) else values
                raise InputError(
                    f"Expected {expectation}. Received"
                    f"{'' if step is None else f' at training step {int(step)}'}: values with min="
                    f"{float(tf.reduce_min(numbers)):g}, max={float(tf.reduce_max(numbers)):g}"
                    f"{', and NaN' if bool(tf.reduce_any(nan)) else ''}"
                    f" (the first such example is number {first} of {int(tf.shape(x)[0])})",
                    step=None if step is None else int(step),
                )
            return x
        check = tf.debugging.Assert(
            ok,
            [f"{_TAG}Expected {expectation}. {_RECEIVED} a batch with min, max, any NaN or inf ="]
            + [low_seen, high_seen, nonfinite]
            + (["(refused: no update was made)"] if in_pipeline else []),
        )
        with tf.control_dependencies([check]):
            return tf.identity(x)

    def _check_beta(self):
        """Refuses a negative `beta` (a variable callbacks may assign; a model
        without one, `VQVAE`, has nothing to check)."""
        if getattr(self, "beta", None) is None:
            return
        beta = float(self.beta.numpy())
        if not beta >= 0:
            raise InputError(f"Expected `beta` >= 0. Received: beta={beta:g}")

    # ------------------------------------------------ checks where data enters

    def _check_batch_now(self, data):
        """Checks a batch (or a whole array) eagerly; returns it unchanged."""
        self._prepare(data)
        return data

    def _checked(self, data, what="x"):
        """`data` (any input `fit` takes) with its checks where it enters.

        Arrays and tensors are checked now, whole; a `tf.data.Dataset` gets a
        map that checks each batch ahead of the step; generators and
        `keras.utils.PyDataset`s are checked batch by batch as they are
        drawn. Inputs of other kinds (e.g. an already distributed dataset)
        are passed on unchecked, with a warning.
        """
        if inspect.isgenerator(data):
            data = (_as_tuple(batch) for batch in data)
        elif isinstance(data, tf.data.Dataset) or _is_array_like(data):
            _check_not_empty(data, what)
        self._build_for(data)
        if isinstance(data, tf.data.Dataset):
            # Keras drops an iterator per epoch; tf.data's autotuning model
            # would stall each drop (see keras_vae/_internal/pipelines.py).
            data = pipelines.without_autotune_model(data)
        if data is None or not self.validate_inputs:
            return data
        if isinstance(data, tf.data.Dataset):
            if not self.built:
                # The map below must not create the model's variables.
                self._check_batch_now(next(iter(data)))
            # Not converted by AutoGraph: an InputError raised while tracing
            # (dtype, static shape) reaches the caller as itself.
            check = tf.autograph.experimental.do_not_convert(self.check_batch)
            return data.map(check).prefetch(tf.data.AUTOTUNE)
        if inspect.isgenerator(data):
            return (self._check_batch_now(batch) for batch in data)
        if isinstance(data, keras.utils.PyDataset):
            return _CheckedPyDataset(data, self._check_batch_now)
        if isinstance(data, tf.distribute.DistributedDataset) or not _is_array_like(data):
            warnings.warn(
                f"keras_vae.VAE cannot check the values of a {type(data).__name__} "
                "input before training on it; map `vae.check_batch` over your "
                "tf.data.Dataset before distributing it to have them checked.",
                stacklevel=3,
            )
            return data
        return self._check_batch_now(data)

    def _build_for(self, data):
        """Builds the model from the shape of `data` (an array, a tensor, or
        a dataset's element spec), reading no data, if that shape is known.

        Then no variable is created inside a compiled step (which XLA
        refuses) nor inside a `tf.data` map.
        """
        if self.built or data is None:
            return
        if isinstance(data, tf.data.Dataset):
            spec = data.element_spec
            spec = spec[0] if isinstance(spec, tuple) else spec
            spec = spec["image"] if isinstance(spec, dict) and "image" in spec else spec
            shape = getattr(spec, "shape", None)
        elif _is_array_like(data):
            try:
                shape = tf.TensorShape(np.shape(self.unpack_inputs(data)))
            except (InputError, ValueError, TypeError):
                return  # refused with a clear message by the checks
        else:
            return
        if shape is not None and shape.rank and shape[1:].is_fully_defined():
            self.build((None,) + tuple(shape[1:]))

    def check_batch(self, *element):
        """A `tf.data` map function that checks batches as `fit` does.

        `fit`, `evaluate` and `predict` add this check to the datasets they
        are given; map it yourself where they cannot, e.g. before
        `strategy.experimental_distribute_dataset`. A refused batch fails the
        iterator (as an `InputError` inside `fit`).

        Example:

        >>> # ds = ds.map(vae.check_batch)
        """
        data = element[0] if len(element) == 1 else element
        x = self._prepare(data, in_pipeline=True, cast=False)
        with tf.control_dependencies([x]):
            return tf.nest.map_structure(tf.identity, data)

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto",
            callbacks=None, validation_split=0.0, validation_data=None, **kwargs):
        _refuse_weight_arguments(kwargs)
        x = self._checked(x)
        if isinstance(validation_data, (tuple, list)):
            if len(validation_data) == 3 and validation_data[2] is not None:
                _refuse_weights("sample_weight", "validation_data=(x, y, sample_weight)")
            validation_data = (
                self._checked(validation_data[0], "validation_data"),
            ) + tuple(validation_data[1:])
        else:
            validation_data = self._checked(validation_data, "validation_data")
        return super().fit(
            x, y, batch_size=batch_size, epochs=epochs, verbose=verbose,
            callbacks=callbacks, validation_split=validation_split,
            validation_data=validation_data, **kwargs,
        )  # fmt: skip

    def evaluate(self, x=None, y=None, *args, **kwargs):
        _refuse_weight_arguments(kwargs)
        if not kwargs.get("_use_cached_eval_dataset"):  # fit's, checked there
            x = self._checked(x)
        return super().evaluate(x, y, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        return super().predict(self._checked(x), *args, **kwargs)

    def train_on_batch(self, x, *args, **kwargs):
        _refuse_weight_arguments(kwargs)
        self._check_beta()
        return super().train_on_batch(self._checked(x), *args, **kwargs)

    def test_on_batch(self, x, *args, **kwargs):
        _refuse_weight_arguments(kwargs)
        return super().test_on_batch(self._checked(x), *args, **kwargs)

    def predict_on_batch(self, x):
        return super().predict_on_batch(self._checked(x))

    def _wrap_step_function(self, kind, force, step=None, before=None, transform=None):
        """Keras's `make_<kind>_function`, its result given to `transform`
        (if any) and wrapped by `_raising_input_errors` once (Keras caches
        it in `<kind>_function`)."""
        attribute = f"{kind}_function"
        if getattr(self, attribute) is not None and not force:
            return getattr(self, attribute)
        getattr(super(), f"make_{kind}_function")(force=True)
        function = getattr(self, attribute)
        if transform is not None:
            function = transform(function)
        setattr(self, attribute, _raising_input_errors(function, step=step, before=before))
        return getattr(self, attribute)

    def make_train_function(self, force=False):
        # `_train_execution` (the training policy's, if the class has one)
        # may run the execution's steps as one program instead.
        return self._wrap_step_function(
            "train",
            force,
            step=lambda: int(self.optimizer.iterations.numpy()),
            before=self._check_beta,
            transform=getattr(self, "_train_execution", None),
        )

    def make_test_function(self, force=False):
        return self._wrap_step_function("test", force)

    def make_predict_function(self, force=False):
        return self._wrap_step_function("predict", force)
