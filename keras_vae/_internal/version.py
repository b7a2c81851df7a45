"""The package version, and the check of the version a file was saved by.

Standard library only: setup.cfg reads `VERSION` from this file without
importing the package.
"""

VERSION = "0.3.0"


class ModelFileError(ValueError):
    """A `.keras` file cannot be loaded: missing, damaged or incompatible."""


def _version_tuple(version):
    return tuple(int(p) for p in str(version).split(".")[:2] if p.isdigit())


def check_version(saved_version, what="This model"):
    """Raises ModelFileError if `saved_version` is newer than this package.

    Files written by an older or equal keras_vae load; a file from a newer
    minor or major version may use options this version does not know.
    """
    if saved_version is None:
        return
    if _version_tuple(saved_version) > _version_tuple(VERSION):
        raise ModelFileError(
            f"{what} was saved by keras_vae {saved_version}; this is keras_vae "
            f"{VERSION}, which cannot read it. Upgrade keras_vae "
            f"(pip install -U keras_vae) to load it."
        )
