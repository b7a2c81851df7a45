"""Versioned SavedModel export for TF Serving and `keras.layers.TFSMLayer`.

`export_for_serving(model, "saved_models/my_vae")` writes
`saved_models/my_vae/<version>/` (TF Serving's layout: one integer directory per
version) with these signatures, each taking float32 tensors with a free batch
dimension and returning named outputs:

==================  ================================  =====================================
signature           inputs                            outputs
==================  ================================  =====================================
embed               x [B, *event]                     loc, scale [B, L]: q(z|x)'s parameters
                                                      (features for a downstream model)
encode              x [B, *event], noise [B, L]       loc, scale, z = loc + scale * noise
                                                      [B, L] (a hierarchical model: its top layer)
decode              z [B, L]                          mean [B, *event], and logits (Bernoulli)
                                                      or loc / scale (Gaussian)
prior_log_prob      z [B, L]                          log_prob [B]
elbo                x, noise [B, D]                   elbo, reconstruction, kl [B] (a
                                                      hierarchical model: also kl_1 ... kl_L)
sample              noise [B, D] (and uniform [B]     mean [B, *event]
                    in [0, 1) for a mixture prior)
posterior_sample    x, noise [B, D]                   z [B, D] (all latents), log_q [B]
log_joint           x, z [B, D]                       log_prob [B] = log p(x|z) + log p(z),
                                                      log_px_given_z [B]
log_likelihood      x, noise [B, k, D]                log_likelihood [B]: the IWAE bound of
                                                      the k draws, in nats
serving_default     x [B, *event]                     mean [B, *event] (reconstruction)
==================  ================================  =====================================

A `keras_vae.VQVAE` exports `VQ_SIGNATURES` instead, with code grids k of
int32 indices `[B, *grid]` in place of z:

==================  ================================  =====================================
signature           inputs                            outputs
==================  ================================  =====================================
encode              x [B, *event]                     indices [B, *grid] (int32; -1 in
                                                      every position of a bad row)
decode              indices [B, *grid] (int32)        mean [B, *event], logits (Bernoulli)
                                                      or loc / scale (NaN for a row with
                                                      an index outside [0, K))
prior_log_prob      indices [B, *grid]                log_prob [B], nats (uniform: -N log K)
elbo                x [B, *event]                     elbo, reconstruction, kl [B]: the
                                                      bound log p(x|z_q(x)) + log p(k(x))
sample              uniform [B, *grid] in [0, 1)      mean [B, *event], indices [B, *grid]
                                                      (the prior's inverse CDF, position
                                                      by position; NaN / -1 for a row
                                                      with a u outside [0, 1))
log_joint           x, indices                        log_prob = log p(x|z_q(k)) + log p(k),
                                                      log_px_given_z [B]
log_likelihood      x [B, *event]                     log_likelihood [B]: the bound (a
                                                      deterministic posterior: no noise)
serving_default     x [B, *event]                     mean [B, *event] (reconstruction)
==================  ================================  =====================================

L is the (top) latent size, D = `model.noise_dim` the size of all latents
(L for a one-layer VAE). **Every signature is a function of its inputs**: no
random op, no variable it updates, so the same inputs give the same outputs
and a client that wants fresh draws sends fresh standard-normal `noise`.
`posterior_sample` and `log_joint` are the importance-sampling contract:
with them anyone computes log p(x) >= log (1/k) sum_i p(x, z_i) / q(z_i|x)
without knowing the model's structure (`ExportedVAE` does). **Bad input**: a
row of x outside the likelihood's range ([0, 1] for a Bernoulli; NaN or
infinite for any) gives NaN in every output of that row, the other rows
being unaffected; this is arithmetic, so TFLite, ONNX Runtime and TF.js
behave as TensorFlow does (an `Assert` would be dropped by their
converters). A wrong dtype is refused by TensorFlow (and TF Serving); x is
reshaped to [-1, *event], which refuses rows of another size in every
runtime (rows of the right size but another layout, such as [B, 784] for
[B, 28, 28, 1] images, are read as row-major examples). Only builtin ops: the suite converts every signature
with TFLite's builtins and (where installed) tf2onnx, and compares.

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
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from keras_vae import objectives
from keras_vae._internal.choices import LEGACY_SIGNATURES
from keras_vae._internal.choices import SIGNATURES
from keras_vae._internal.choices import VQ_SIGNATURES
from keras_vae._internal.validation import is_int
from keras_vae._internal.version import VERSION
from keras_vae.layers import BernoulliDecoder
from keras_vae.layers import GaussianDecoder


tfd = tfp.distributions

__all__ = [
    "DESCRIPTION_FILE",
    "DESCRIPTION_FORMAT",
    "LEGACY_SIGNATURES",
    "WARMUP_FILE",
    "warmup_inputs",
    "SIGNATURES",
    "VQ_SIGNATURES",
    "build_archive",
    "describe",
    "existing_versions",
    "export_for_serving",
    "needs_uniform",
    "signature_names",
]

# The model's description, relative to a version directory.
DESCRIPTION_FILE = os.path.join("assets", "keras_vae.json")
# TF Serving's warmup requests (its SavedModel warmup guide), relative to a version.
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
DESCRIPTION_FORMAT = 2
_VERSION = re.compile(r"^[0-9]+$")
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# Likelihood name -> (base distribution class, the `decode` outputs of its parameters).
LIKELIHOODS = {
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
    for name, (distribution_class, _) in LIKELIHOODS.items():
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
    decoder = model.decoder
    if isinstance(decoder, BernoulliDecoder):
        return {"name": "bernoulli"}
    if isinstance(decoder, GaussianDecoder):
        return {"name": "gaussian", "scale": decoder.scale, "min_scale": decoder.min_scale}
    z = tf.zeros([1] + list(model.grid_shape), tf.int32) if _is_vq(model) else tf.zeros([1, model.latent_dim])
    p = model.decode(z)
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
    _check_built(model)
    if _is_vq(model):
        return _describe_vq(model)
    description = {
        "format": DESCRIPTION_FORMAT,
        "keras_vae_version": VERSION,
        "event_shape": [int(d) for d in model.input_event_shape],
        "latent_dim": int(model.latent_dim),
        "noise_dim": int(model.noise_dim),
        "model": type(model).__name__,
        "sample_inputs": ["noise", "uniform"] if needs_uniform(model) else ["noise"],
        "likelihood": _likelihood(model),
        "prior": keras.saving.serialize_keras_object(model.prior),
        "encoder": _describe_layer(model.encoder),
        "decoder": _describe_layer(model.decoder),
        "signatures": list(SIGNATURES),
    }
    # A JSON round trip: tuples become lists, as a reader will see them.
    return json.loads(json.dumps(description))


def _is_vq(model):
    """Whether `model` has discrete codes (a `keras_vae.VQVAE`)."""
    return hasattr(model, "quantizer")


def signature_names(model):
    """The signatures `model`'s export holds: `SIGNATURES`, or
    `VQ_SIGNATURES` for a `keras_vae.VQVAE`."""
    return list(VQ_SIGNATURES if _is_vq(model) else SIGNATURES)


def _describe_vq(model):
    """`describe` for a VQ-VAE: its codebook and code grid instead of z."""
    description = {
        "format": DESCRIPTION_FORMAT,
        "keras_vae_version": VERSION,
        "event_shape": [int(d) for d in model.input_event_shape],
        "model": type(model).__name__,
        "grid_shape": [int(d) for d in model.grid_shape],
        "num_codes": int(model.num_codes),
        "code_dim": int(model.code_dim),
        "likelihood": _likelihood(model),
        "prior": None if model.prior is None else keras.saving.serialize_keras_object(model.prior),
        "quantizer": keras.saving.serialize_keras_object(model.quantizer),
        "decoder": _describe_layer(model.decoder),
        "signatures": list(VQ_SIGNATURES),
    }
    return json.loads(json.dumps(description))


def _check_built(model):
    if not model.built or model.input_event_shape is None:
        raise ValueError(
            "Expected a built model (call it on data, fit it, or build it with "
            "model.build((None, *event_shape))). Received: an unbuilt model"
        )


def needs_uniform(model):
    """Whether `model`'s prior is a mixture, whose `sample` signature takes
    `uniform` (the component of each row) beside `noise`."""
    return isinstance(model.prior.distribution(), tfd.MixtureSameFamily)


def _portable_input(model, x):
    """`(x, invalid)`: x as the model computes on it, and `invalid` `[B]`:
    0 for a row whose every value lies in the likelihood's `data_range`
    ([0, 1] for a Bernoulli; finite otherwise), NaN for any other row (NaN
    and infinities fail every comparison). Comparisons and a min: no
    `Assert`, which converters drop."""
    x, valid = _valid_rows(model, x)
    return x, _nan_unless(valid)


def _valid_rows(model, x):
    """`(x, valid)`: x as the model computes on it and `valid` `[B]`, 1.0
    for a row inside the likelihood's `data_range`, else 0.0."""
    # A graph session (TF Serving's) does not check x against the signature's
    # shape: a reshape refuses rows of another size, in every runtime.
    x = tf.reshape(tf.cast(x, tf.float32), [-1] + list(model.input_event_shape))
    low, high = getattr(model.decoder, "data_range", None) or (-_FLOAT32_MAX, _FLOAT32_MAX)
    inside = tf.cast(x >= low, tf.float32) * tf.cast(x <= high, tf.float32)
    valid = tf.reduce_min(tf.reshape(inside, [tf.shape(x)[0], -1]), axis=1)
    return tf.cast(x, model.variable_dtype), valid


def _nan_unless(valid):
    """0 where `valid` is 1, NaN where it is 0: sqrt(0) and sqrt(-1), arithmetic
    (tf2onnx turned a tf.where between 0 and NaN into NaN everywhere)."""
    return tf.sqrt(valid - 1.0)


def _masked(outputs, invalid):
    """`outputs` (float32) with the rows of invalid inputs made NaN."""
    masked = {}
    for name, value in outputs.items():
        value = tf.cast(value, tf.float32)
        rows = tf.reshape(invalid, tf.concat([[-1], tf.ones([value.shape.rank - 1], tf.int32)], 0))
        masked[name] = value + rows
    return masked


def _embedding(q):
    """`loc` (E_q[z|x]; for a flow posterior the code at zero noise) and
    `scale` (q's standard deviations; for a flow, its base Gaussian's)."""
    return {"loc": objectives.posterior_location(q), "scale": objectives.gaussian_base(q).stddev()}


def build_archive(model):
    """A `keras.export.ExportArchive` with the signatures listed above.

    Every signature is a function of its inputs (no random op, no variable
    it updates, no `Assert`): randomness comes in as `noise` (and `uniform`),
    and a row whose x is out of range gives NaN outputs (`_portable_input`).
    """
    _check_built(model)
    if _is_vq(model):
        return _vq_archive(model)
    event_shape = list(model.input_event_shape)
    latent_dim, noise_dim = model.latent_dim, model.noise_dim
    x_spec = tf.TensorSpec([None] + event_shape, tf.float32, name="x")
    z_spec = tf.TensorSpec([None, latent_dim], tf.float32, name="z")
    code_noise = tf.TensorSpec([None, latent_dim], tf.float32, name="noise")
    noise_spec = tf.TensorSpec([None, noise_dim], tf.float32, name="noise")
    all_z_spec = tf.TensorSpec([None, noise_dim], tf.float32, name="z")
    k_noise_spec = tf.TensorSpec([None, None, noise_dim], tf.float32, name="noise")
    uniform_spec = tf.TensorSpec([None], tf.float32, name="uniform")

    def serving_default(x):
        x, invalid = _portable_input(model, x)
        return _masked({"mean": model.reconstruction_mean(x)}, invalid)

    def embed(x):
        x, invalid = _portable_input(model, x)
        q = model.encoder(x, training=False)
        return _masked(_embedding(q), invalid)

    def encode(x, noise):
        x, invalid = _portable_input(model, x)
        q = model.encoder(x, training=False)
        z, _ = objectives.posterior_sample_from_noise(q, noise)
        return _masked({**_embedding(q), "z": z}, invalid)

    def decode(z):
        return {k: tf.cast(v, tf.float32) for k, v in _decoder_outputs(model.decode(z)).items()}

    def prior_log_prob(z):
        prior = model.prior.distribution(model.variable_dtype)
        return {"log_prob": tf.cast(objectives.portable_log_prob(prior, z), tf.float32)}

    def elbo(x, noise):
        x, invalid = _portable_input(model, x)
        return _masked(model.elbo_terms_from_noise(x, noise), invalid)

    def sample_from(noise, uniform=None):
        return {"mean": tf.cast(model.decoder(model.prior_sample(noise, uniform)).mean(), tf.float32)}

    def posterior_sample(x, noise):
        x, invalid = _portable_input(model, x)
        z, log_q = model.posterior_sample(x, noise)
        return _masked({"z": z, "log_q": log_q}, invalid)

    def log_joint(x, z):
        x, invalid = _portable_input(model, x)
        return _masked(model.joint_terms(x, z), invalid)

    def log_likelihood(x, noise):
        x, invalid = _portable_input(model, x)
        bound = objectives.importance_bound_from_noise(model, x, noise)
        return _masked({"log_likelihood": bound}, invalid)

    archive = keras.export.ExportArchive()
    archive.track(model)
    # serving_default first: it is the default TF Serving answers with.
    archive.add_endpoint("serving_default", serving_default, input_signature=[x_spec])
    archive.add_endpoint("embed", embed, input_signature=[x_spec])
    archive.add_endpoint("encode", encode, input_signature=[x_spec, code_noise])
    archive.add_endpoint("decode", decode, input_signature=[z_spec])
    archive.add_endpoint("prior_log_prob", prior_log_prob, input_signature=[z_spec])
    archive.add_endpoint("elbo", elbo, input_signature=[x_spec, noise_spec])
    if needs_uniform(model):
        archive.add_endpoint("sample", sample_from, input_signature=[noise_spec, uniform_spec])
    else:
        archive.add_endpoint("sample", lambda noise: sample_from(noise), input_signature=[noise_spec])
    archive.add_endpoint("posterior_sample", posterior_sample, input_signature=[x_spec, noise_spec])
    archive.add_endpoint("log_joint", log_joint, input_signature=[x_spec, all_z_spec])
    archive.add_endpoint("log_likelihood", log_likelihood, input_signature=[x_spec, k_noise_spec])
    return archive


def _vq_archive(model):
    """`build_archive` for a VQ-VAE: `VQ_SIGNATURES` (see the module docstring)."""
    grid = list(model.grid_shape)
    x_spec = tf.TensorSpec([None] + list(model.input_event_shape), tf.float32, name="x")
    k_spec = tf.TensorSpec([None] + grid, tf.int32, name="indices")
    uniform_spec = tf.TensorSpec([None] + grid, tf.float32, name="uniform")
    axes = list(range(1, len(grid) + 1))

    def checked_codes(indices):
        """(indices clipped into [0, K), NaN-or-0 per row: any index outside)."""
        inside = tf.cast(indices >= 0, tf.float32) * tf.cast(indices < model.num_codes, tf.float32)
        valid = tf.reduce_min(inside, axis=axes)
        return tf.clip_by_value(indices, 0, model.num_codes - 1), _nan_unless(valid)

    def terms(x, indices):
        """log p(x | z_q(k)) and log p(k), `[B]` each, float32."""
        joint = model.joint_terms(x, indices)
        return joint["log_px_given_z"], joint["log_prob"] - joint["log_px_given_z"]

    def codes_of(x):
        return model.quantizer.nearest_codes(model.encoder(x, training=False))

    def serving_default(x):
        x, invalid = _portable_input(model, x)
        return _masked({"mean": model.reconstruction_mean(x)}, invalid)

    def encode(x):
        x, valid = _valid_rows(model, x)
        keep = tf.reshape(tf.cast(valid, tf.int32), [-1] + [1] * len(grid))
        # -1 in every position of a bad row: integer arithmetic, no where.
        return {"indices": codes_of(x) * keep + (keep - 1)}

    def decode(indices):
        indices, invalid = checked_codes(indices)
        return _masked(_decoder_outputs(model.decode(indices)), invalid)

    def prior_log_prob(indices):
        indices, invalid = checked_codes(indices)
        return _masked({"log_prob": model.code_log_prob(indices)}, invalid)

    def elbo(x):
        x, invalid = _portable_input(model, x)
        log_px, log_pk = terms(x, codes_of(x))
        return _masked({"elbo": log_px + log_pk, "reconstruction": log_px, "kl": -log_pk}, invalid)

    def sample(uniform):
        inside = tf.cast(uniform >= 0.0, tf.float32) * tf.cast(uniform < 1.0, tf.float32)
        valid = tf.reduce_min(inside, axis=axes)  # 0 for a row with a u outside [0, 1) or NaN
        indices = model.sample_codes_from_uniform(uniform)
        keep = tf.reshape(tf.cast(valid, tf.int32), [-1] + [1] * len(grid))
        mean = _masked({"mean": model.decode(indices).mean()}, _nan_unless(valid))["mean"]
        return {"mean": mean, "indices": indices * keep + (keep - 1)}

    def log_joint(x, indices):
        x, invalid = _portable_input(model, x)
        indices, bad_codes = checked_codes(indices)
        log_px, log_pk = terms(x, indices)
        return _masked({"log_prob": log_px + log_pk, "log_px_given_z": log_px}, invalid + bad_codes)

    def log_likelihood(x):
        x, invalid = _portable_input(model, x)
        log_px, log_pk = terms(x, codes_of(x))
        return _masked({"log_likelihood": log_px + log_pk}, invalid)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serving_default, input_signature=[x_spec])
    archive.add_endpoint("encode", encode, input_signature=[x_spec])
    archive.add_endpoint("decode", decode, input_signature=[k_spec])
    archive.add_endpoint("prior_log_prob", prior_log_prob, input_signature=[k_spec])
    archive.add_endpoint("elbo", elbo, input_signature=[x_spec])
    archive.add_endpoint("sample", sample, input_signature=[uniform_spec])
    archive.add_endpoint("log_joint", log_joint, input_signature=[x_spec, k_spec])
    archive.add_endpoint("log_likelihood", log_likelihood, input_signature=[x_spec])
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
        The path of the new version directory. It holds the SavedModel, the
        model's description, `assets/keras_vae.json` (`describe(model)`), and
        TF Serving's warmup requests, `assets.extra/tf_serving_warmup_requests`
        (one `PredictionLog` per signature, `warmup_inputs(model)`).

    Raises:
        ValueError: unbuilt model, invalid version, or a version that exists.

    Example:

    >>> path = export_for_serving(vae, "saved_models/my_vae")  # doctest: +SKIP
    >>> layer = keras.layers.TFSMLayer(path, call_endpoint="encode")  # doctest: +SKIP
    """
    present = existing_versions(base_dir)
    if version is None:
        version = (present[-1] + 1) if present else 1
    if not is_int(version) or version <= 0:
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
        _write_warmup(staging, model)
        # mkdtemp made the directory 0o700: give the export the modes the
        # umask gives new files, so a TF Serving running as another user
        # reads it (0o755 / 0o644 under the usual umask 022).
        _set_modes(staging, *_umask_modes(staging))
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def warmup_inputs(model, batch=1):
    """`{signature: {input: array}}`: one request per signature, `batch` rows
    of valid inputs (images of 0.5, codes and noise of 0, uniforms of 0.5;
    `log_likelihood` with k = 2), what the export's warmup file sends."""
    if _is_vq(model):
        x = np.full([batch] + list(model.input_event_shape), 0.5, np.float32)
        indices = np.zeros([batch] + list(model.grid_shape), np.int32)
        return {
            "serving_default": {"x": x},
            "encode": {"x": x},
            "decode": {"indices": indices},
            "prior_log_prob": {"indices": indices},
            "elbo": {"x": x},
            "sample": {"uniform": np.full([batch] + list(model.grid_shape), 0.5, np.float32)},
            "log_joint": {"x": x, "indices": indices},
            "log_likelihood": {"x": x},
        }
    event, latent_dim, noise_dim = list(model.input_event_shape), model.latent_dim, model.noise_dim
    x = np.full([batch] + event, 0.5, np.float32)
    z, noise = np.zeros([batch, latent_dim], np.float32), np.zeros([batch, noise_dim], np.float32)
    sample = {"noise": noise}
    if needs_uniform(model):
        sample["uniform"] = np.full([batch], 0.5, np.float32)
    return {
        "serving_default": {"x": x},
        "embed": {"x": x},
        "encode": {"x": x, "noise": z},
        "decode": {"z": z},
        "prior_log_prob": {"z": z},
        "elbo": {"x": x, "noise": noise},
        "sample": sample,
        "posterior_sample": {"x": x, "noise": noise},
        "log_joint": {"x": x, "z": noise},
        "log_likelihood": {"x": x, "noise": np.zeros([batch, 2, noise_dim], np.float32)},
    }


def _write_warmup(path, model):
    """Writes `path/WARMUP_FILE`: a TFRecord of `PredictionLog`s, one
    `PredictRequest` per signature (TF Serving runs them at load, so the
    first real request does not pay for graph initialization)."""
    from tensorflow_serving.apis import predict_pb2
    from tensorflow_serving.apis import prediction_log_pb2

    filename = os.path.join(path, WARMUP_FILE)
    os.makedirs(os.path.dirname(filename), exist_ok=True)
    with tf.io.TFRecordWriter(filename) as writer:
        for signature, inputs in warmup_inputs(model).items():
            request = predict_pb2.PredictRequest()
            request.model_spec.signature_name = signature
            for name, value in inputs.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


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
