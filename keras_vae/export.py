"""Versioned SavedModel export for TF Serving and `keras.layers.TFSMLayer`.

`export_for_serving(model, "saved_models/my_vae")` writes
`saved_models/my_vae/<version>/` (TF Serving's layout: one integer directory per
version) with these signatures, each taking float32 tensors with a free batch
dimension and returning named outputs:

==================  ==============================  =====================================
signature           inputs                          outputs
==================  ==============================  =====================================
encode              x [B, *event]                   loc, scale, z [B, L]
decode              z [B, L]                        mean [B, *event], and logits (Bernoulli)
                                                    or loc / scale (Gaussian)
prior_log_prob      z [B, L]                        log_prob [B]
elbo                x [B, *event]                   elbo, reconstruction, kl [B]
sample              num [] int32                    mean [num, *event]
serving_default     x [B, *event]                   mean [B, *event] (reconstruction)
==================  ==============================  =====================================

The export is built with `keras.export.ExportArchive` (tracking the model), so
TF Serving's graph-session loader, `tf.saved_model.load` and `TFSMLayer` all
read it. It is written to a hidden temporary directory beside the target and
renamed into place, so a failed export never leaves a partial version.

Its directories and files get the modes the process umask gives new ones
(`0o777 & ~umask`, `0o666 & ~umask`: 0o755 / 0o644 under the usual umask
022), so a TF Serving running as another user can read it. A stricter umask
is kept (027 gives 0o750 / 0o640: let TF Serving's user in by group).

**What the export holds.** Beside the SavedModel, `assets/keras_vae.json`
(`DESCRIPTION_FILE`) describes the model, as `describe(model)` returns it:

==================  ======================================================
key                 value
==================  ======================================================
format              1 (the layout of this file)
keras_vae_version   `keras_vae.__version__` of the package that exported it
event_shape         shape of one example x, e.g. [28, 28, 1]
latent_dim          size of z
likelihood          {"name": "bernoulli"} or {"name": "gaussian", "scale":
                    a fixed float or null (learned), "min_scale": float}
                    (null name: a decoder of another distribution)
prior               the prior's Keras serialization: class_name, config,
                    module, registered_name
encoder, decoder    {"class_name", "registered_name", "custom_network":
                    true (network=...) / false (the default MLP) / null
                    (a layer not from keras_vae), "network": the custom
                    network's class name, or "hidden_units" and "gated"
                    of the MLP}
signatures          the signature names
==================  ======================================================

It is written into the export's `assets/` directory before the atomic
rename, so it is there whenever the version is, and travels with the
version directory. It is a plain file, not a `tf.saved_model.Asset` tracked
in the graph (`ExportArchive` saves no such asset, and a graph-side asset
would only change what a loader reads): graph-session loads (TF Serving's),
`tf.saved_model.load` and `TFSMLayer` read the export as before, and
`read_description(path)` / `ExportedVAE(path).description` read the file.
`ExportedVAE` takes the likelihood and the prior from it. Exports written
before it existed (such as `saved_models/binarized_mnist_vae/1`) have none:
`ExportedVAE` then infers what it needs from the signatures (the `decode`
outputs: `logits` for a Bernoulli, `loc` / `scale` for a Gaussian; the prior
is N(0, I) when `prior_log_prob` gives its values) and says so in its
`description` (`"inferred": true`).
"""

import json
import os
import re
import shutil
import stat
import tempfile

import keras
import tensorflow as tf
import tensorflow_probability as tfp


tfd = tfp.distributions

__all__ = [
    "DESCRIPTION_FILE",
    "DESCRIPTION_FORMAT",
    "SIGNATURES",
    "build_archive",
    "describe",
    "existing_versions",
    "export_for_serving",
]

SIGNATURES = ("encode", "decode", "prior_log_prob", "elbo", "sample", "serving_default")
# The model's description, relative to a version directory.
DESCRIPTION_FILE = os.path.join("assets", "keras_vae.json")
DESCRIPTION_FORMAT = 1
_VERSION = re.compile(r"^[0-9]+$")
# Likelihood name -> (base distribution class, the `decode` outputs of its parameters).
_LIKELIHOODS = {
    "bernoulli": (tfd.Bernoulli, ("logits",)),
    "gaussian": (tfd.Normal, ("loc", "scale")),
}


def existing_versions(base_dir):
    """Sorted integer versions present under `base_dir` (empty if none)."""
    if not os.path.isdir(base_dir):
        return []
    return sorted(
        int(name)
        for name in os.listdir(base_dir)
        if _VERSION.match(name) and os.path.isdir(os.path.join(base_dir, name))
    )


def _base(p):
    """The distribution of each element of a decoder distribution `p`."""
    return p.distribution if isinstance(p, tfd.Independent) else p


def _likelihood_name(p):
    """"bernoulli" or "gaussian" for a decoder distribution `p` (None: other)."""
    for name, (distribution_class, _) in _LIKELIHOODS.items():
        if isinstance(_base(p), distribution_class):
            return name
    return None


def _decoder_outputs(p):
    """Named outputs of a decoder distribution: its mean and its parameters."""
    outputs = {"mean": p.mean()}
    base = _base(p)
    name = _likelihood_name(p)
    if name == "bernoulli":
        outputs["logits"] = base.logits_parameter()
    elif name == "gaussian":
        outputs["loc"] = base.loc
        outputs["scale"] = base.scale
    return outputs


def _likelihood(model):
    """The description's `likelihood`: from the decoder's class, or (for a
    decoder not from keras_vae) from the distribution it returns."""
    from keras_vae.layers import BernoulliDecoder
    from keras_vae.layers import GaussianDecoder

    decoder = model.decoder
    if isinstance(decoder, BernoulliDecoder):
        return {"name": "bernoulli"}
    if isinstance(decoder, GaussianDecoder):
        return {"name": "gaussian", "scale": decoder.scale, "min_scale": decoder.min_scale}
    p = model.decode(tf.zeros([1, model.latent_dim]))
    return {"name": _likelihood_name(p), "distribution": type(_base(p)).__name__}


def _describe_layer(layer):
    """The description's `encoder` / `decoder` entry."""
    info = {
        "class_name": type(layer).__name__,
        "registered_name": keras.saving.get_registered_name(type(layer)),
        "custom_network": getattr(layer, "custom_network", None),
    }
    if info["custom_network"]:
        info["network"] = type(layer.network).__name__
    elif info["custom_network"] is False:
        info["hidden_units"] = list(layer.hidden_units)
        info["gated"] = bool(layer.gated)
    return info


def describe(model):
    """The description of `model` an export holds (`DESCRIPTION_FILE`).

    Args:
        model: A built `keras_vae.VAE`.

    Returns:
        A dict that JSON serializes: `format`, `keras_vae_version`,
        `event_shape`, `latent_dim`, `likelihood`, `prior`, `encoder`,
        `decoder` and `signatures` (see the module docstring).

    Example:

    >>> describe(vae)["likelihood"]  # doctest: +SKIP
    {'name': 'bernoulli'}
    """
    from keras_vae import __version__

    _check_built(model)
    description = {
        "format": DESCRIPTION_FORMAT,
        "keras_vae_version": __version__,
        "event_shape": [int(d) for d in model.input_event_shape],
        "latent_dim": int(model.latent_dim),
        "likelihood": _likelihood(model),
        "prior": keras.saving.serialize_keras_object(model.prior),
        "encoder": _describe_layer(model.encoder),
        "decoder": _describe_layer(model.decoder),
        "signatures": list(SIGNATURES),
    }
    # A JSON round trip: tuples become lists, as a reader will see them.
    return json.loads(json.dumps(description))


def _check_built(model):
    if not model.built or model.input_event_shape is None:
        raise ValueError(
            "Expected a built model (call it on data, fit it, or build it with "
            "model.build((None, *event_shape))). Received: an unbuilt model"
        )


def build_archive(model):
    """A `keras.export.ExportArchive` with the signatures listed above."""
    _check_built(model)
    event_shape = list(model.input_event_shape)
    latent_dim = model.latent_dim
    x_spec = tf.TensorSpec([None] + event_shape, tf.float32, name="x")
    z_spec = tf.TensorSpec([None, latent_dim], tf.float32, name="z")
    num_spec = tf.TensorSpec([], tf.int32, name="num")

    def serving_default(x):
        return {"mean": model(x, training=False)}

    def encode(x):
        q = model.encode(x)
        return {"loc": q.mean(), "scale": q.stddev(), "z": q.sample()}

    def decode(z):
        return _decoder_outputs(model.decode(z))

    def prior_log_prob(z):
        return {"log_prob": model.prior(z)}

    def elbo(x):
        return dict(model.elbo_terms(x))

    def sample(num):
        return {"mean": model.sample(num).mean()}

    archive = keras.export.ExportArchive()
    archive.track(model)
    # serving_default first: it is the default TF Serving answers with.
    archive.add_endpoint("serving_default", serving_default, input_signature=[x_spec])
    archive.add_endpoint("encode", encode, input_signature=[x_spec])
    archive.add_endpoint("decode", decode, input_signature=[z_spec])
    archive.add_endpoint("prior_log_prob", prior_log_prob, input_signature=[z_spec])
    archive.add_endpoint("elbo", elbo, input_signature=[x_spec])
    archive.add_endpoint("sample", sample, input_signature=[num_spec])
    return archive


def export_for_serving(model, base_dir, version=None, verbose=False):
    """Writes `model` to `base_dir/<version>/` atomically; returns that path.

    Args:
        model: A built `keras_vae.VAE` (just built, trained, or loaded from a
            `.keras` file).
        base_dir: The model's directory in a TF Serving model base path, e.g.
            `saved_models/binarized_mnist_vae`.
        version: Positive int. Default: one more than the highest version
            present (1 for an empty directory). An existing version is never
            overwritten.
        verbose: Print the signatures.

    Returns:
        The path of the new version directory. It holds the SavedModel and
        the model's description, `assets/keras_vae.json` (`describe(model)`).

    Raises:
        ValueError: unbuilt model, invalid version, or a version that exists.

    Example:

    >>> path = export_for_serving(vae, "saved_models/my_vae")  # doctest: +SKIP
    >>> layer = keras.layers.TFSMLayer(path, call_endpoint="encode")  # doctest: +SKIP
    """
    present = existing_versions(base_dir)
    if version is None:
        version = (present[-1] + 1) if present else 1
    if isinstance(version, bool) or not isinstance(version, int) or version <= 0:
        raise ValueError(
            f"Expected `version` to be a positive integer. Received: version={version!r}"
        )
    target = os.path.join(base_dir, str(version))
    if os.path.exists(target):
        raise ValueError(
            f"Expected a new version; {target} exists already (versions present: "
            f"{present}). Received: version={version}"
        )
    archive = build_archive(model)
    description = describe(model)
    os.makedirs(base_dir, exist_ok=True)
    # TF Serving only loads directories named by an integer: the temporary
    # ".tmp-..." one is invisible to it until the rename.
    staging = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base_dir)
    try:
        archive.write_out(staging, verbose=verbose)
        _write_description(staging, description)
        # mkdtemp made the directory 0o700: give the export the modes the
        # umask gives new files, so a TF Serving running as another user
        # reads it (0o755 / 0o644 under the usual umask 022).
        _set_modes(staging, *_umask_modes(staging))
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _write_description(path, description):
    """Writes `description` to `path/DESCRIPTION_FILE`."""
    filename = os.path.join(path, DESCRIPTION_FILE)
    os.makedirs(os.path.dirname(filename), exist_ok=True)
    with open(filename, "w") as f:
        json.dump(description, f, indent=2, sort_keys=True)
        f.write("\n")


def _umask_modes(directory):
    """`(directory mode, file mode)` that new ones get under the umask.

    That is `0o777 & ~umask` and `0o666 & ~umask`, read from a probe
    directory made in `directory` (reading the umask with `os.umask` would
    change it for a moment in every thread of the process).
    """
    probe = os.path.join(directory, ".mode-probe")
    os.mkdir(probe, 0o777)
    try:
        dir_mode = stat.S_IMODE(os.stat(probe).st_mode)
    finally:
        os.rmdir(probe)
    return dir_mode, dir_mode & 0o666


def _set_modes(root, dir_mode, file_mode):
    """Sets the mode of `root` and of every directory and file under it."""
    os.chmod(root, dir_mode)
    for parent, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(parent, name), dir_mode)
        for name in files:
            os.chmod(os.path.join(parent, name), file_mode)
