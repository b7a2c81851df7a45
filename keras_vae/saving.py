"""Loading `.keras` files with errors that say what is wrong."""

import json
import os
import zipfile

import keras

__all__ = ["ModelFileError", "check_version", "load_model"]


class ModelFileError(ValueError):
    """A `.keras` file cannot be loaded: missing, damaged or incompatible."""


def _version_tuple(version):
    return tuple(int(p) for p in str(version).split(".")[:2] if p.isdigit())


def check_version(saved_version, what="This model"):
    """Raises ModelFileError if `saved_version` is newer than this package.

    Files written by an older or equal keras_vae load; a file from a newer
    minor or major version may use options this version does not know.
    """
    from keras_vae import __version__

    if saved_version is None:
        return
    if _version_tuple(saved_version) > _version_tuple(__version__):
        raise ModelFileError(
            f"{what} was saved by keras_vae {saved_version}; this is keras_vae "
            f"{__version__}, which cannot read it. Upgrade keras_vae "
            f"(pip install -U keras_vae) to load it."
        )


def load_model(path, **kwargs):
    """`keras.models.load_model` for keras_vae models, with clear errors.

    Keeps Keras's `safe_mode=True` (the package's layers need no unsafe
    deserialization). Raises `ModelFileError` naming the file when it does
    not exist, is not a `.keras` archive (truncated, corrupted, or another
    format), was saved by a newer keras_vae, or does not match its config.

    Example:

    >>> from keras_vae.saving import load_model
    >>> # vae = load_model("runs/binarized_mnist_vae/best.keras")
    """
    import keras_vae  # noqa: F401  (registers the package's classes)

    path = os.fspath(path)
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
