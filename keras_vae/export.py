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
"""

import os
import re
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

SIGNATURES = ("encode", "decode", "prior_log_prob", "elbo", "sample", "serving_default")
_VERSION = re.compile(r"^[0-9]+$")


def existing_versions(base_dir):
    """Sorted integer versions present under `base_dir` (empty if none)."""
    if not os.path.isdir(base_dir):
        return []
    return sorted(
        int(name)
        for name in os.listdir(base_dir)
        if _VERSION.match(name) and os.path.isdir(os.path.join(base_dir, name))
    )


def _decoder_outputs(p):
    """Named outputs of a decoder distribution: its mean and its parameters."""
    outputs = {"mean": p.mean()}
    base = p.distribution if isinstance(p, tfd.Independent) else p
    if isinstance(base, tfd.Bernoulli):
        outputs["logits"] = base.logits_parameter()
    elif isinstance(base, tfd.Normal):
        outputs["loc"] = base.loc
        outputs["scale"] = base.scale
    return outputs


def build_archive(model):
    """A `keras.export.ExportArchive` with the signatures listed above."""
    if not model.built or model.input_event_shape is None:
        raise ValueError(
            "Expected a built model (call it on data, fit it, or build it with "
            "model.build((None, *event_shape))). Received: an unbuilt model"
        )
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
        The path of the new version directory.

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
    os.makedirs(base_dir, exist_ok=True)
    # TF Serving only loads directories named by an integer: the temporary
    # ".tmp-..." one is invisible to it until the rename.
    staging = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base_dir)
    try:
        archive.write_out(staging, verbose=verbose)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


class _SignatureEncoder:
    def __init__(self, signature):
        self._signature = signature

    def __call__(self, x, training=False):
        out = self._signature(x=tf.cast(x, tf.float32))
        return tfd.Independent(tfd.Normal(out["loc"], out["scale"]), 1)


class _SignatureDecoder:
    def __init__(self, signature, event_ndims):
        self._signature = signature
        self._event_ndims = event_ndims

    def __call__(self, z, training=False):
        out = self._signature(z=tf.cast(z, tf.float32))
        if "logits" in out:
            base = tfd.Bernoulli(logits=out["logits"], dtype=tf.float32)
        elif "loc" in out:
            base = tfd.Normal(out["loc"], out["scale"])
        else:
            raise ValueError(
                "Expected the decode signature to return `logits` or `loc`/`scale`. "
                f"Received outputs: {sorted(out)}"
            )
        return tfd.Independent(base, self._event_ndims)


class _SignaturePrior:
    """The export's prior: N(0, I) when `prior_log_prob` is exactly that (so
    `tfd.kl_divergence` stays analytic), else a wrapper around the signature."""

    def __init__(self, signature, latent_dim):
        self._signature = signature
        self.latent_dim = latent_dim
        probe = tf.reshape(tf.linspace(-3.0, 3.0, 4 * latent_dim), [4, latent_dim])
        self._standard_normal = bool(
            np.allclose(
                signature(z=probe)["log_prob"].numpy(),
                self._normal(tf.float32).log_prob(probe).numpy(),
                rtol=1e-6,
                atol=1e-5,
            )
        )

    def _normal(self, dtype):
        zeros = tf.zeros([self.latent_dim], dtype)
        return tfd.Independent(tfd.Normal(zeros, tf.ones_like(zeros)), 1)

    def distribution(self, dtype=tf.float32):
        if self._standard_normal:
            return self._normal(dtype)
        signature = self._signature

        class _Prior:
            def log_prob(self, z):
                flat = tf.reshape(tf.cast(z, tf.float32), [-1, z.shape[-1]])
                log_prob = signature(z=flat)["log_prob"]
                return tf.reshape(log_prob, tf.shape(z)[:-1])

        return _Prior()


class ExportedVAE:
    """A VAE export seen through the interface `keras_vae.evaluation` uses.

    `encoder(x)` and `decoder(z)` rebuild distributions from the `encode` /
    `decode` signatures; `prior.distribution().log_prob(z)` calls
    `prior_log_prob`. So `evaluation.evaluate(ExportedVAE(path), ds)` measures
    what TF Serving serves.

    Args:
        path: A version directory written by `export_for_serving`.
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
        self.encoder = _SignatureEncoder(signatures["encode"])
        self.decoder = _SignatureDecoder(signatures["decode"], len(self.input_event_shape))
        self.prior = _SignaturePrior(signatures["prior_log_prob"], self.latent_dim)

    def _prepare(self, data):
        from keras_vae.models.vae import VAE

        return tf.cast(VAE._unpack(data), tf.float32)

    def encode(self, x):
        return self.encoder(self._prepare(x))


def load_model_or_run(path):
    """A `keras_vae.VAE` from a `.keras` file or from a training run directory.

    A run directory (written by `tools/train.py`) gives its `best.keras`, or,
    when there is none yet, a model rebuilt from `config.json` with the
    weights of its newest training backup.
    """
    from keras_vae import saving
    from keras_vae import training
    from keras_vae.callbacks import TrainingBackup

    if os.path.isfile(path):
        return saving.load_model(path)
    if not os.path.isdir(path):
        raise ValueError(f"Expected a .keras file or a run directory. Received: {path} (not found)")
    files = training.paths(path)
    if os.path.exists(files["best"]):
        return saving.load_model(files["best"])
    backup = TrainingBackup(files["backup"])
    if os.path.exists(files["config"]) and backup.latest() is not None:
        config = training.TrainConfig.from_json_file(files["config"])
        model = training.build_vae(config)
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
        backup.restore(model)
        return model
    raise ValueError(
        f"Expected a run directory holding best.keras, or config.json and "
        f"a training backup. Received: {path} with {sorted(os.listdir(path))}"
    )
