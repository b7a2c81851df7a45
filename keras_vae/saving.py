"""Loading `.keras` files with errors that say what is wrong."""

import json
import os
import zipfile

import keras

# The modules whose classes a .keras file may name: importing them registers
# the classes with Keras.
from keras_vae import backup  # noqa: F401
from keras_vae import callbacks  # noqa: F401
from keras_vae import layers  # noqa: F401
from keras_vae import models  # noqa: F401
from keras_vae import optimizers  # noqa: F401

__all__ = ["ModelFileError", "check_version", "load_model"]


# Defined with the version they check (the model's config checks it too).
from keras_vae._internal.version import ModelFileError  # noqa: E402
from keras_vae._internal.version import check_version  # noqa: E402


def _directory_message(path):
    """What `load_model` says of a directory: what it is, how to load it."""
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return (
            f"Expected a .keras model file. Received: {path}, a SavedModel export "
            "(a version directory with saved_model.pb), which keras.models.load_model "
            f"cannot read. Load it with keras_vae.exported.ExportedVAE({path!r}) (what "
            "tools/evaluate.py evaluates), or use one signature in a Keras model with "
            f"keras.layers.TFSMLayer({path!r}, call_endpoint='encode')."
        )
    if os.path.exists(os.path.join(path, "config.json")):
        return (
            f"Expected a .keras model file. Received: {path}, a directory (a training "
            "run?). Load a run's best model (or its newest backup) with "
            f"keras_vae.training.load_model_or_run({path!r}), or pass its best.keras."
        )
    return f"Expected a .keras model file. Received: {path}, a directory"


def load_model(path, **kwargs):
    """`keras.models.load_model` for keras_vae models, with clear errors.

    Keeps Keras's `safe_mode=True` (the package's layers need no unsafe
    deserialization). Raises `ModelFileError` naming the file when it does
    not exist, is not a `.keras` archive (truncated, corrupted, or another
    format), was saved by a newer keras_vae, or does not match its config.
    For a directory it says what it is and how to load it: an export (a
    SavedModel version directory) through `keras_vae.exported.ExportedVAE`
    or `keras.layers.TFSMLayer`, a training run directory through
    `keras_vae.training.load_model_or_run`.

    Example:

    >>> from keras_vae.saving import load_model
    >>> # vae = load_model("runs/binarized_mnist_vae/best.keras")
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ModelFileError(_directory_message(path))
    if not os.path.isfile(path):
        raise ModelFileError(f"Expected a .keras model file. Received: {path} (not found)")
    if not path.endswith(".keras"):
        raise ModelFileError(f"Expected a file ending in .keras. Received: {path}")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"{path} is not a readable .keras archive: the file is truncated or "
            "corrupted (an interrupted copy or download?). Nothing was loaded."
        )
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
            archive.testzip()
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as e:
        raise ModelFileError(
            f"{path} is a damaged .keras archive ({type(e).__name__}: {e}). "
            "Nothing was loaded."
        ) from None
    check_version(
        (config.get("config") or {}).get("keras_vae_version"), what=f"The model in {path}"
    )
    try:
        return keras.models.load_model(path, **kwargs)
    except ModelFileError:
        raise
    except Exception as e:
        raise ModelFileError(
            f"Could not load {path}: {type(e).__name__}: {e}".rstrip()
        ) from e
