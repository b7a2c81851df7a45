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

import copy
import json
import os
import re
import shutil
import stat
import tempfile

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from keras_vae.layers.heads import LogitBernoulli

tfd = tfp.distributions

__all__ = [
    "DESCRIPTION_FILE",
    "DESCRIPTION_FORMAT",
    "SIGNATURES",
    "ExportedVAE",
    "build_archive",
    "describe",
    "existing_versions",
    "export_for_serving",
    "load_model_or_run",
    "read_description",
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


def read_description(path):
    """The description in the export `path` (a version directory), or None.

    None for an export written before keras_vae wrote descriptions (see
    `ExportedVAE` for what is inferred then).

    Raises:
        ValueError: the file is not valid JSON, or has a newer `format` than
            this keras_vae reads.
    """
    filename = os.path.join(path, DESCRIPTION_FILE)
    if not os.path.exists(filename):
        return None
    try:
        with open(filename) as f:
            description = json.load(f)
    except ValueError as e:
        raise ValueError(
            f"Expected {filename} to hold the export's JSON description. Received: "
            f"a file that does not parse ({e})"
        ) from None
    if not isinstance(description, dict) or not isinstance(description.get("format"), int):
        raise ValueError(
            f"Expected {filename} to hold a JSON object with an integer `format`. "
            f"Received: {str(description)[:200]}"
        )
    if description["format"] > DESCRIPTION_FORMAT:
        raise ValueError(
            f"Expected a description of format <= {DESCRIPTION_FORMAT} (this keras_vae). "
            f"Received: {filename} with format={description['format']} (written by "
            f"keras_vae {description.get('keras_vae_version')}; upgrade keras_vae to read it)"
        )
    return description


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


class _SignatureEncoder:
    def __init__(self, signature):
        self._signature = signature

    def __call__(self, x, training=False):
        out = self._signature(x=tf.cast(x, tf.float32))
        return tfd.Independent(tfd.Normal(out["loc"], out["scale"]), 1)


class _SignatureDecoder:
    """p(x|z) rebuilt from the `decode` signature for the description's likelihood."""

    def __init__(self, signature, likelihood, event_ndims):
        self._signature = signature
        self._likelihood = likelihood
        self._event_ndims = event_ndims

    def __call__(self, z, training=False):
        out = self._signature(z=tf.cast(z, tf.float32))
        if self._likelihood == "bernoulli":
            # The formula the Keras model's IndependentBernoulli uses.
            base = LogitBernoulli(logits=out["logits"], dtype=tf.float32)
        elif self._likelihood == "gaussian":
            base = tfd.Normal(out["loc"], out["scale"])
        else:
            raise ValueError(
                "Expected an export of a Bernoulli or Gaussian likelihood to rebuild "
                f"p(x|z) from its decode signature. Received: likelihood={self._likelihood!r}"
            )
        return tfd.Independent(base, self._event_ndims)


def _standard_normal(latent_dim, dtype):
    zeros = tf.zeros([latent_dim], dtype)
    return tfd.Independent(tfd.Normal(zeros, tf.ones_like(zeros)), 1)


class _SignaturePrior:
    """The export's prior: N(0, I) itself when the export's prior is the
    standard normal (so `tfd.kl_divergence` stays analytic), else a wrapper
    around the `prior_log_prob` signature."""

    def __init__(self, signature, latent_dim, standard_normal):
        self._signature = signature
        self.latent_dim = latent_dim
        self.standard_normal = standard_normal

    def distribution(self, dtype=tf.float32):
        if self.standard_normal:
            return _standard_normal(self.latent_dim, dtype)
        signature = self._signature

        class _Prior:
            def log_prob(self, z):
                flat = tf.reshape(tf.cast(z, tf.float32), [-1, z.shape[-1]])
                log_prob = signature(z=flat)["log_prob"]
                return tf.reshape(log_prob, tf.shape(z)[:-1])

        return _Prior()


_STANDARD_NORMAL_PRIOR = "keras_vae>StandardNormalPrior"


def _is_standard_normal(prior):
    """Whether the description's `prior` is keras_vae's StandardNormalPrior."""
    return isinstance(prior, dict) and prior.get("registered_name") == _STANDARD_NORMAL_PRIOR


def _inferred_description(signatures, event_shape, latent_dim):
    """What an export without `DESCRIPTION_FILE` (written before keras_vae
    wrote one) tells of itself through its signatures.

    The likelihood is named by the `decode` outputs (`logits`: Bernoulli;
    `loc` and `scale`: Gaussian); the prior is StandardNormalPrior when
    `prior_log_prob` gives log N(z; 0, I) at a few points (to float32
    rounding), else unknown.
    """
    outputs = set(signatures["decode"].structured_outputs)
    likelihood = None
    for name, (_, parameters) in _LIKELIHOODS.items():
        if set(parameters) <= outputs:
            likelihood = name
    probe = tf.reshape(tf.linspace(-3.0, 3.0, 4 * latent_dim), [4, latent_dim])
    standard_normal = np.allclose(
        signatures["prior_log_prob"](z=probe)["log_prob"].numpy(),
        _standard_normal(latent_dim, tf.float32).log_prob(probe).numpy(),
        rtol=1e-6,
        atol=1e-5,
    )
    prior = None
    if standard_normal:
        prior = {
            "class_name": "StandardNormalPrior",
            "registered_name": _STANDARD_NORMAL_PRIOR,
            "config": {"latent_dim": latent_dim},
        }
    return {
        "format": None,
        "inferred": True,
        "keras_vae_version": None,
        "event_shape": list(event_shape),
        "latent_dim": latent_dim,
        "likelihood": {"name": likelihood},
        "prior": prior,
        "encoder": None,
        "decoder": None,
        "signatures": [s for s in SIGNATURES if s in signatures],
    }


class ExportedVAE:
    """A VAE export seen through the interface `keras_vae.evaluation` uses.

    `encoder(x)` and `decoder(z)` rebuild distributions from the `encode` /
    `decode` signatures; `prior.distribution().log_prob(z)` is N(0, I) for
    the standard normal prior (so the KL stays analytic) and calls
    `prior_log_prob` otherwise. So `evaluation.evaluate(ExportedVAE(path),
    ds)` measures what TF Serving serves. What the export holds (likelihood,
    prior, shapes) is read from its description, `assets/keras_vae.json`;
    for an export written before descriptions existed it is inferred from
    the signatures (see the module docstring).

    Args:
        path: A version directory written by `export_for_serving`.

    Attributes:
        description: The export's description (a dict, see `describe`), or
            for an older export the inferred one, marked `"inferred": True`.
        input_event_shape: Shape of one example x.
        latent_dim: Size of z.

    Raises:
        ValueError: `path` is not a keras_vae export, or its description
            does not match its signatures.

    Example:

    >>> exported = ExportedVAE("saved_models/binarized_mnist_vae/1")  # doctest: +SKIP
    >>> exported.description["likelihood"]  # doctest: +SKIP
    {'name': 'bernoulli'}
    """

    def __init__(self, path):
        if not os.path.exists(os.path.join(path, "saved_model.pb")):
            raise ValueError(
                f"Expected a SavedModel version directory (holding saved_model.pb). Received: {path}"
            )
        self.path = path
        self.loaded = tf.saved_model.load(path)
        missing = [s for s in SIGNATURES if s not in self.loaded.signatures]
        if missing:
            raise ValueError(
                f"Expected a keras_vae export with signatures {list(SIGNATURES)}. "
                f"Received: {path} without {missing}"
            )
        signatures = self.loaded.signatures
        x_spec = signatures["encode"].structured_input_signature[1]["x"]
        z_spec = signatures["decode"].structured_input_signature[1]["z"]
        self.input_event_shape = tuple(x_spec.shape[1:])
        self.latent_dim = int(z_spec.shape[-1])
        description = read_description(path)
        if description is None:
            description = _inferred_description(
                signatures, self.input_event_shape, self.latent_dim
            )
        self._description = description
        self._check_description(signatures)
        likelihood = description["likelihood"]["name"]
        self.encoder = _SignatureEncoder(signatures["encode"])
        self.decoder = _SignatureDecoder(
            signatures["decode"], likelihood, len(self.input_event_shape)
        )
        self.prior = _SignaturePrior(
            signatures["prior_log_prob"],
            self.latent_dim,
            standard_normal=_is_standard_normal(description["prior"]),
        )

    @property
    def description(self):
        """The export's description (a copy: a dict, see `describe`)."""
        return copy.deepcopy(self._description)

    def _check_description(self, signatures):
        description = self._description
        filename = os.path.join(self.path, DESCRIPTION_FILE)
        shapes = (tuple(description["event_shape"]), description["latent_dim"])
        if shapes != (self.input_event_shape, self.latent_dim):
            raise ValueError(
                f"Expected {filename} to describe the signatures' shapes: event_shape="
                f"{self.input_event_shape}, latent_dim={self.latent_dim}. Received: "
                f"event_shape={shapes[0]}, latent_dim={shapes[1]}"
            )
        likelihood = description["likelihood"]["name"]
        outputs = set(signatures["decode"].structured_outputs)
        if likelihood in _LIKELIHOODS and not set(_LIKELIHOODS[likelihood][1]) <= outputs:
            raise ValueError(
                f"Expected the decode signature of a {likelihood} likelihood to return "
                f"{list(_LIKELIHOODS[likelihood][1])}. Received outputs: {sorted(outputs)}"
            )

    def _prepare(self, data):
        from keras_vae.models.vae import VAE

        return tf.cast(VAE._unpack(data), tf.float32)

    def encode(self, x):
        return self.encoder(self._prepare(x))


def _backup_steps_per_epoch(state):
    """Steps per epoch of the run a training backup (its metadata) comes from.

    `keras_vae.training.train` records a backup's position as
    `epoch, batch = divmod(step, steps_per_epoch)`, so after a complete epoch
    `steps_per_epoch = (step - batch) / epoch` exactly. Within the first
    epoch only `steps_per_epoch > step` is known: `step + 1` gives the
    learning-rate schedule the same (undecayed) value at every step taken.
    Either way the optimizer's variables, what a restore reads, do not
    depend on it.
    """
    step, epoch, batch = int(state["step"]), int(state["epoch"]), int(state["batch"])
    if epoch > 0:
        return max(1, (step - batch) // epoch)
    return step + 1


def load_model_or_run(path):
    """A `keras_vae.VAE` from a `.keras` file or from a training run directory.

    A run directory (written by `tools/train.py`) gives its `best.keras`, or,
    when there is none yet, a model rebuilt from `config.json` with the
    weights of its newest training backup.
    """
    from keras_vae import saving
    from keras_vae import training
    from keras_vae.callbacks import TrainingBackup
    from keras_vae.optimizers import make_optimizer

    if os.path.isfile(path):
        return saving.load_model(path)
    if not os.path.isdir(path):
        raise ValueError(f"Expected a .keras file or a run directory. Received: {path} (not found)")
    files = training.paths(path)
    if os.path.exists(files["best"]):
        return saving.load_model(files["best"])
    backup = TrainingBackup(files["backup"])
    state = backup.latest() if os.path.exists(files["config"]) else None
    if state is not None:
        config = training.TrainConfig.from_json_file(files["config"])
        model = training.build_vae(config)
        # The optimizer training used (the backup holds its variables, which
        # depend on whether the learning rate is a schedule).
        optimizer = make_optimizer(
            config.learning_rate, config.lr_halve_every, _backup_steps_per_epoch(state)
        )
        model.compile(optimizer=optimizer)
        backup.restore(model)
        return model
    raise ValueError(
        f"Expected a run directory holding best.keras, or config.json and "
        f"a training backup. Received: {path} with {sorted(os.listdir(path))}"
    )
