"""The shipped exports saved_models/binarized_mnist_vae/<version>, read as TF Serving reads them.

Every version in the directory is checked: its signatures answer from a
graph-session load (TF Serving's C++ loader path), agree with each other, and
reproduce the validation ELBO recorded beside it.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import float32_atol
from conftest import shared_data_dir
from keras_vae import export

HERE = os.path.dirname(os.path.abspath(__file__))
BASE = os.path.join(HERE, "..", "saved_models", "binarized_mnist_vae")
# The version directories as TF Serving finds them, as strings for paths and test ids.
VERSIONS = [str(v) for v in export.existing_versions(BASE)]

pytestmark = pytest.mark.skipif(not VERSIONS, reason="no shipped export in this checkout")


def _description(version):
    """The export's description asset, or None for exports made before it."""
    path = os.path.join(BASE, version, "assets", "keras_vae.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _standard_prior(version):
    description = _description(version)
    return description is None or description["prior"]["class_name"] == "StandardNormalPrior"


@pytest.fixture(scope="module", params=VERSIONS)
def session(request):
    graph = tf.Graph()
    with graph.as_default():
        sess = tf.compat.v1.Session(graph=graph)
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], os.path.join(BASE, request.param))
    yield sess, meta, request.param
    sess.close()


def _run(session, signature, **inputs):
    """Runs `signature`, adding the randomness an export of today's
    signatures takes as inputs (standard-normal `noise`, `uniform` in
    [0, 1), seeded) where the signature declares them."""
    sess, meta, _ = session
    sig = meta.signature_def[signature]
    rng = np.random.default_rng(11)
    first = next(iter(inputs.values()))
    rows = len(first) if np.ndim(first) else 3
    for name, info in sig.inputs.items():
        if name in inputs:
            continue
        shape = [d.size for d in info.tensor_shape.dim]
        if name == "noise":
            inputs[name] = rng.standard_normal([rows] + shape[1:]).astype("float32")
        elif name == "uniform":
            inputs[name] = rng.random(rows).astype("float32")
    feeds = {sig.inputs[k].name: v for k, v in inputs.items()}
    return sess.run({k: v.name for k, v in sig.outputs.items()}, feeds)


def _sample(session, n):
    """`n` images from `sample`: a count for exports written before keras_vae
    0.3, noise (and uniforms) per image after."""
    _, meta, _ = session
    if "num" in meta.signature_def["sample"].inputs:
        return _run(session, "sample", num=np.int32(n))["mean"]
    noise = np.random.default_rng(12).standard_normal((n, _noise_dim(session))).astype("float32")
    return _run(session, "sample", noise=noise)["mean"]


def _noise_dim(session):
    return session[1].signature_def["sample"].inputs["noise"].tensor_shape.dim[-1].size


def _images(n):
    rng = np.random.default_rng(0)
    return (rng.random((n, 28, 28, 1)) < 0.2).astype("float32")


def test_shipped_export_has_every_signature_with_free_batch_dimension(session):
    _, meta, _ = session
    assert set(meta.signature_def) >= {
        "serving_default", "encode", "decode", "prior_log_prob", "elbo", "sample"
    }
    x = meta.signature_def["encode"].inputs["x"].tensor_shape
    assert [d.size for d in x.dim] == [-1, 28, 28, 1]


def test_shipped_export_signatures_agree_with_each_other(session):
    version = session[2]
    x = _images(8)
    encoded = _run(session, "encode", x=x)
    latent_dim = encoded["loc"].shape[1]
    assert encoded["scale"].min() > 0 and encoded["z"].shape == (8, latent_dim)
    decoded = _run(session, "decode", z=encoded["loc"])
    # serving_default is the decoder mean at the posterior mean. Two graphs
    # (one fed the other's loc) may get other kernels or fusions: their logits
    # agree to roundings of the largest logit, and the sigmoid's slope is at
    # most 1/4, so the means agree at least as well.
    served = _run(session, "serving_default", x=x)["mean"]
    logit_atol = float32_atol(decoded["logits"])
    description = _description(version)
    if description is None or description.get("model", "VAE") == "VAE":
        # (A hierarchical model's serving_default decodes the chain of
        # posterior means of all layers; its decode completes the top code
        # with the conditional priors' means: another z.)
        np.testing.assert_allclose(served, decoded["mean"], rtol=0, atol=logit_atol)
    else:
        assert served.shape == decoded["mean"].shape and 0 <= served.min() and served.max() <= 1
    # The same logits through TF's sigmoid and NumPy's: a few roundings of 1.
    expit = np.exp(-np.logaddexp(0.0, -decoded["logits"].astype("float64")))
    np.testing.assert_allclose(decoded["mean"], expit, rtol=0, atol=float32_atol(1.0))
    log_prob = _run(session, "prior_log_prob", z=np.zeros((2, latent_dim), "float32"))["log_prob"]
    if _standard_prior(version):
        expected = -0.5 * latent_dim * np.log(2 * np.pi)
        np.testing.assert_allclose(log_prob, expected, rtol=0, atol=float32_atol(expected))
    else:
        # A learned prior: a density, the same for the same code.
        assert np.all(np.isfinite(log_prob)) and log_prob[0] == log_prob[1]
    sample = _sample(session, 3)
    assert sample.shape == (3, 28, 28, 1) and 0 <= sample.min() and sample.max() <= 1
    terms = _run(session, "elbo", x=x)
    np.testing.assert_allclose(terms["elbo"], terms["reconstruction"] - terms["kl"], rtol=0, atol=float32_atol(terms["reconstruction"]))


def test_shipped_export_reproduces_its_recorded_validation_elbo(session):
    version = session[2]
    data_dir = shared_data_dir()
    if data_dir is None:
        pytest.skip("binarized_mnist is not prepared on this machine")
    from keras_vae import data

    record = os.path.join(BASE, f"evaluation-v{version}-validation.json")
    if not os.path.exists(record):
        pytest.skip(f"version {version} has no recorded validation evaluation ({record})")
    with open(record) as f:
        recorded = json.load(f)["splits"]["validation"]
    elbos, kls = [], []
    for batch in data.load("binarized_mnist", "validation", batch_size=1000, shuffle=False, data_dir=data_dir):
        terms = _run(session, "elbo", x=batch.numpy().astype("float32"))
        elbos.append(terms["elbo"])
        kls.append(terms["kl"])
    kls, elbos = np.concatenate(kls), np.concatenate(elbos)
    if _standard_prior(version):
        # The KL is analytic: the same numbers as the record's.
        assert np.mean(kls) == pytest.approx(recorded["kl"], abs=1e-3)
    else:
        # A Monte Carlo KL, one sample per image, against the record's other
        # samples: agreement within 5 standard errors of the mean.
        assert abs(np.mean(kls) - recorded["kl"]) < 5 * np.std(kls) / np.sqrt(kls.size) + 0.05
    # One sample per image in the signature against k=5000 in the record: the
    # means over 10,000 images agree to well under a nat.
    assert np.mean(elbos) == pytest.approx(recorded["elbo"], abs=0.5)


VQ_BASE = os.path.join(HERE, "..", "saved_models", "binarized_mnist_vqvae")


VQ_VERSIONS = [str(v) for v in export.existing_versions(VQ_BASE)]


@pytest.mark.skipif(not VQ_VERSIONS, reason="no shipped VQ-VAE in this checkout")
@pytest.mark.parametrize("version", VQ_VERSIONS)
def test_shipped_vqvae_export_reproduces_its_recorded_validation_bound(version):
    """saved_models/binarized_mnist_vqvae/<version>: a VQ-VAE export (its
    description says so), codes in [0, 128) on a 7x7 grid, samples from
    uniforms, and the bound recorded beside it from the export's own
    `log_likelihood` (version 2 holds version 1's weights, re-exported after
    the TF.js fix of `sample`, so its record is version 1's)."""
    loaded = tf.saved_model.load(os.path.join(VQ_BASE, version))
    with open(os.path.join(VQ_BASE, version, "assets", "keras_vae.json")) as f:
        description = json.load(f)
    assert description["model"] == "VQVAE" and description["grid_shape"] == [7, 7]
    uniform = np.random.default_rng(0).random((2, 7, 7)).astype("float32")
    sampled = loaded.signatures["sample"](uniform=uniform)
    assert sampled["mean"].shape == (2, 28, 28, 1)
    indices = loaded.signatures["encode"](x=sampled["mean"].numpy().round())["indices"].numpy()
    assert indices.shape == (2, 7, 7) and indices.min() >= 0 and indices.max() < 128
    data_dir = shared_data_dir()
    if data_dir is None:
        pytest.skip("the recorded bound needs the prepared binarized_mnist")
    from keras_vae import data

    with open(os.path.join(VQ_BASE, f"evaluation-v{version}-validation.json")) as f:
        recorded = json.load(f)["splits"]["validation"]
    bounds = [
        loaded.signatures["log_likelihood"](x=tf.cast(batch, tf.float32))["log_likelihood"].numpy()
        for batch in data.load("binarized_mnist", "validation", batch_size=500, shuffle=False, data_dir=data_dir)
    ]
    bounds = np.concatenate(bounds).astype(np.float64)
    assert len(bounds) == recorded["num_examples"] == 10000
    np.testing.assert_allclose(-bounds.mean(), recorded["nll"], rtol=0, atol=float32_atol(recorded["nll"]))
