"""Reading exports back: `ExportedVAE` and `read_description`.

`ExportedVAE(path)` evaluates a SavedModel written by
`keras_vae.export.export_for_serving` through its signatures, as
`keras_vae.evaluation.evaluate` evaluates a Keras VAE; what the export holds
(likelihood, prior, shapes) comes from its description,
`assets/keras_vae.json` (see `keras_vae.export`), or, for exports written
before it existed, is inferred from the signatures.
"""

import copy
import json
import os

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from keras_vae import objectives
from keras_vae.export import DESCRIPTION_FILE
from keras_vae.export import DESCRIPTION_FORMAT
from keras_vae.export import LIKELIHOODS
from keras_vae.export import LEGACY_SIGNATURES
from keras_vae.export import SIGNATURES
from keras_vae.layers.heads import LogitBernoulli
from keras_vae.models.vae import VAE

tfd = tfp.distributions

__all__ = ["ExportedVAE", "read_description"]


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


class _SignatureEncoder:
    """q(z|x) (the top layer's, for a hierarchical model) from `encode`."""

    def __init__(self, signature, latent_dim, takes_noise):
        self._signature = signature
        self._latent_dim = latent_dim
        self._takes_noise = takes_noise

    def __call__(self, x, training=False):
        x = tf.cast(x, tf.float32)
        if self._takes_noise:  # loc and scale do not depend on the noise
            out = self._signature(x=x, noise=tf.zeros([tf.shape(x)[0], self._latent_dim]))
        else:
            out = self._signature(x=x)
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
    for name, (_, parameters) in LIKELIHOODS.items():
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
        "signatures": [s for s in LEGACY_SIGNATURES if s in signatures],
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
        described = read_description(path) or {}
        if described.get("model") == "VQVAE":
            raise ValueError(
                "Expected the export of a VAE (continuous z: ExportedVAE evaluates through "
                f"posterior_sample and log_joint). Received: {path}, a VQVAE export: call its "
                f"signatures {described.get('signatures')} directly (tf.saved_model.load or "
                "keras.layers.TFSMLayer), e.g. log_likelihood(x) for its bound"
            )
        # Exports of today's signatures answer the importance-sampling
        # contract; older ones (LEGACY_SIGNATURES) are read as before.
        self.portable = all(s in self.loaded.signatures for s in SIGNATURES)
        missing = [s for s in LEGACY_SIGNATURES if s not in self.loaded.signatures]
        if missing:
            raise ValueError(
                f"Expected a keras_vae export with signatures {list(SIGNATURES)} (or, "
                f"written before keras_vae 0.3, {list(LEGACY_SIGNATURES)}). "
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
        self.noise_dim = (
            int(signatures["posterior_sample"].structured_input_signature[1]["noise"].shape[-1])
            if self.portable else self.latent_dim
        )  # fmt: skip
        self.encoder = _SignatureEncoder(signatures["encode"], self.latent_dim, self.portable)
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
        if likelihood in LIKELIHOODS and not set(LIKELIHOODS[likelihood][1]) <= outputs:
            raise ValueError(
                f"Expected the decode signature of a {likelihood} likelihood to return "
                f"{list(LIKELIHOODS[likelihood][1])}. Received outputs: {sorted(outputs)}"
            )

    def prepare_inputs(self, data):
        """x as the signatures take it (float32), from any form `fit` accepts."""
        return tf.cast(VAE.unpack_inputs(data), tf.float32)

    def encode(self, x):
        return self.encoder(self.prepare_inputs(x))

    def posterior_sample(self, x, noise):
        """`(z, log_q)` from the `posterior_sample` signature (the contract)."""
        out = self.loaded.signatures["posterior_sample"](x=tf.cast(x, tf.float32), noise=tf.cast(noise, tf.float32))
        return out["z"], out["log_q"]

    def joint_terms(self, x, z):
        """`log_prob` and `log_px_given_z` from the `log_joint` signature."""
        return self.loaded.signatures["log_joint"](x=tf.cast(x, tf.float32), z=tf.cast(z, tf.float32))

    def log_joint(self, x, z):
        """log p(x|z) + log p(z) from the `log_joint` signature (the contract)."""
        return self.joint_terms(x, z)["log_prob"]

    def importance_weights(self, x, num_samples, seed):
        """As `keras_vae.VAE.importance_weights`, through the signatures: for
        an export of today's signatures only `posterior_sample` and
        `log_joint` (whatever the model's latent structure), with the noise
        drawn here from the stateless `seed`."""
        if not self.portable:
            return objectives.sampled_importance_weights(self, x, num_samples, seed)
        batch = tf.shape(x)[0]
        noise = tf.random.stateless_normal([num_samples * batch, self.noise_dim], seed)
        # Sample-major, as the evaluator expects: row s * B + b.
        x_rep = tf.tile(x, tf.concat([[num_samples], tf.ones([x.shape.rank - 1], tf.int32)], 0))
        z, log_q = self.posterior_sample(x_rep, noise)
        joint = self.joint_terms(x_rep, z)
        log_w = tf.reshape(joint["log_prob"] - log_q, [num_samples, batch])
        return log_w, tf.reshape(joint["log_px_given_z"], [num_samples, batch])

    def posterior_summary(self, x, seed):
        """As `keras_vae.VAE.posterior_summary`, through the signatures (for a
        hierarchical export: `kl` over all layers, `mean` and `sample` of
        the top layer, which `encode` gives)."""
        if not self.portable:
            return objectives.posterior_summary(self, x, seed)
        x = tf.cast(x, tf.float32)
        noise = tf.random.stateless_normal([tf.shape(x)[0], self.noise_dim], seed)
        kl = self.loaded.signatures["elbo"](x=x, noise=noise)["kl"]
        top = self.loaded.signatures["encode"](x=x, noise=noise[:, : self.latent_dim])
        return {"kl": kl, "mean": top["loc"], "sample": top["z"]}
