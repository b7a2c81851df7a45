"""The VQ-VAE: the quantizer's math, the code prior's, and the model's workflow.

References are independent of the code under test: brute-force nearest
neighbours, the loss formulas in NumPy, the EMA update written out in NumPy,
an enumeration of every code grid of a tiny prior, Monte Carlo frequencies.
"""

import itertools
import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_vae import architectures
from keras_vae import saving
from keras_vae.layers import CodeUsage
from keras_vae.layers import MaskedConv2D
from keras_vae.layers import PixelCNNPrior
from keras_vae.layers import VectorQuantizer
from keras_vae.layers.code_priors import categorical_from_uniform
from keras_vae.models import VQVAE

from conftest import ROOT

SHAPE = (8, 8, 1)


def small_vqvae(num_codes=6, code_dim=3, ema_decay=None, restart_unused=False, seed=0, prior=True, input_shape=None):
    encoder, quantizer, decoder, code_prior = architectures.make_vq_layers(
        SHAPE, num_codes=num_codes, code_dim=code_dim, filters=(8,), ema_decay=ema_decay,
        restart_unused=restart_unused, prior_filters=8, prior_layers=1, seed=seed,
    )  # fmt: skip
    return VQVAE(encoder, quantizer, decoder, code_prior if prior else None, seed=seed, input_shape=input_shape)


def _inputs(rng, shape=(5, 4, 4, 3)):
    return rng.normal(size=shape).astype("float32")


# ------------------------------------------------------------- the quantizer


def test_assignment_is_the_brute_force_nearest_code():
    rng = np.random.default_rng(0)
    vq = VectorQuantizer(7, 3, seed=1)
    z = _inputs(rng)
    vq.build(z.shape)
    vq.codebook.assign(rng.normal(size=(7, 3)).astype("float32"))
    codebook = vq.codebook.numpy()
    expected = np.array(
        [min(range(7), key=lambda k: float(np.sum((v - codebook[k]) ** 2))) for v in z.reshape(-1, 3)]
    ).reshape(5, 4, 4)
    np.testing.assert_array_equal(vq.nearest_codes(z).numpy(), expected)
    out = vq.vector_quantize(z)
    np.testing.assert_array_equal(out["indices"].numpy(), expected)
    np.testing.assert_allclose(out["quantized"].numpy(), codebook[expected], rtol=1e-6, atol=1e-6)


def test_losses_follow_their_formulas():
    rng = np.random.default_rng(1)
    vq = VectorQuantizer(5, 3, commitment_cost=0.4, seed=0)
    z = _inputs(rng)
    vq.build(z.shape)
    vq.codebook.assign(rng.normal(size=(5, 3)).astype("float32"))
    out = vq.vector_quantize(z)
    e = vq.codebook.numpy()[out["indices"].numpy()]
    squared = np.sum((z - e) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(out["codebook_loss"].numpy(), squared, rtol=1e-5)
    np.testing.assert_allclose(out["commitment_loss"].numpy(), 0.4 * squared, rtol=1e-5)


def test_straight_through_gradient_reaches_the_encoder_unchanged_and_losses_move_their_sides():
    rng = np.random.default_rng(2)
    vq = VectorQuantizer(5, 3, commitment_cost=0.25, seed=0)
    z = tf.constant(_inputs(rng))
    vq.build(z.shape)
    weights = tf.constant(_inputs(rng))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(z)
        out = vq.vector_quantize(z)
        through = tf.reduce_sum(weights * out["quantized"])
        codebook_loss = tf.reduce_sum(out["codebook_loss"])
        commitment = tf.reduce_sum(out["commitment_loss"])
    np.testing.assert_array_equal(tape.gradient(through, z).numpy(), weights.numpy())
    assert tape.gradient(through, vq.codebook) is None  # the decoder's gradient skips the codes
    assert tape.gradient(codebook_loss, z) is None
    assert tape.gradient(commitment, vq.codebook) is None
    e = vq.codebook.numpy()[out["indices"].numpy()]
    np.testing.assert_allclose(tape.gradient(commitment, z).numpy(), 0.25 * 2 * (z.numpy() - e), rtol=1e-5, atol=1e-6)
    expected = np.zeros((5, 3))
    np.add.at(expected, out["indices"].numpy().reshape(-1), (2 * (e - z.numpy())).reshape(-1, 3))
    np.testing.assert_allclose(tf.convert_to_tensor(tape.gradient(codebook_loss, vq.codebook)).numpy(), expected, rtol=1e-5, atol=1e-5)


def _numpy_ema(codebook, count, total, z, indices, decay, epsilon):
    flat = z.reshape(-1, codebook.shape[1])
    idx = indices.reshape(-1)
    c = np.array([np.sum(idx == k) for k in range(len(codebook))], dtype="float64")
    s = np.array([flat[idx == k].sum(axis=0) for k in range(len(codebook))], dtype="float64")
    count = decay * count + (1 - decay) * c
    total = decay * total + (1 - decay) * s
    new = codebook.copy()
    for k in range(len(codebook)):
        if count[k] > epsilon:
            new[k] = total[k] / count[k]
    return new, count, total


def test_ema_update_matches_a_numpy_reference_over_steps():
    rng = np.random.default_rng(3)
    vq = VectorQuantizer(6, 3, ema_decay=0.9, seed=0)
    vq.build((None, 4, 4, 3))
    assert not vq.codebook.trainable
    vq.codebook.assign(rng.normal(size=(6, 3)).astype("float32"))
    vq.codebook.assign(np.concatenate([vq.codebook.numpy()[:5], [[50.0, 50.0, 50.0]]]).astype("float32"))  # never used
    codebook = vq.codebook.numpy().astype("float64")
    count, total = np.zeros(6), np.zeros((6, 3))
    for step in range(3):
        z = _inputs(rng)
        indices = vq.nearest_codes(z).numpy()
        vq.update_codebook(z, indices)
        codebook, count, total = _numpy_ema(codebook, count, total, z, indices, 0.9, vq.epsilon)
        np.testing.assert_allclose(vq.codebook.numpy(), codebook, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(vq.ema_count.numpy(), count, rtol=1e-5)
    np.testing.assert_array_equal(vq.codebook.numpy()[5], [50.0, 50.0, 50.0])  # an unused code is kept


def test_unused_codes_restart_at_encoder_outputs():
    rng = np.random.default_rng(4)
    vq = VectorQuantizer(4, 2, restart_unused=True, restart_threshold=0.6, usage_decay=0.5, seed=0)
    z = rng.normal(size=(3, 5, 2)).astype("float32")
    vq.build(z.shape)
    vq.codebook.assign(np.array([[0.0, 0.0], [0.1, 0.0], [40.0, 40.0], [-40.0, 40.0]], "float32"))
    indices = vq.nearest_codes(z).numpy()
    assert set(indices.reshape(-1)) <= {0, 1}
    # Codes 2 and 3 got no assignment: usage 0.5 * 1/4 + 0 = 1/8 < 0.6 / 4.
    restarted = int(vq.update_codebook(z, indices))
    assert restarted >= 2
    new = vq.codebook.numpy()
    flat = z.reshape(-1, 2)
    for k in (2, 3):
        assert np.min(np.abs(flat - new[k]).sum(axis=1)) < 1e-6  # one of the batch's outputs
    counts = np.bincount(indices.reshape(-1), minlength=4)
    usage = 0.5 * 0.25 + 0.5 * counts / counts.sum()
    alive = usage >= 0.6 / 4
    assert restarted == int((~alive).sum())
    np.testing.assert_array_equal(new[alive], np.array([[0.0, 0.0], [0.1, 0.0], [40.0, 40.0], [-40.0, 40.0]], "float32")[alive])
    np.testing.assert_allclose(vq.usage.numpy(), np.where(alive, usage, 0.25), rtol=1e-6)


def test_restarted_codes_start_their_moving_averages_afresh():
    rng = np.random.default_rng(6)
    vq = VectorQuantizer(3, 2, ema_decay=0.5, restart_unused=True, restart_threshold=0.9, usage_decay=0.5, seed=0)
    z = rng.normal(size=(4, 2)).astype("float32")
    vq.build(z.shape)
    vq.codebook.assign(np.array([[0.0, 0.0], [30.0, 30.0], [-30.0, -30.0]], "float32"))
    indices = vq.nearest_codes(z).numpy()
    assert set(indices) == {0}
    vq.update_codebook(z, indices)
    np.testing.assert_array_equal(vq.ema_count.numpy()[1:], [0.0, 0.0])
    np.testing.assert_array_equal(vq.ema_sum.numpy()[1:], np.zeros((2, 2)))
    np.testing.assert_allclose(vq.codebook.numpy()[0], z.mean(axis=0), rtol=1e-5)  # the EMA of code 0


def test_empty_batch_restarts_nothing_and_breaks_nothing():
    vq = VectorQuantizer(3, 2, restart_unused=True, restart_threshold=1.0, usage_decay=0.1, seed=0)
    vq.build((None, 2))
    before = vq.codebook.numpy().copy()
    empty = np.zeros((0, 2), "float32")
    assert int(vq.update_codebook(empty, np.zeros((0,), "int32"))) == 0
    np.testing.assert_array_equal(vq.codebook.numpy(), before)


def test_code_usage_perplexity_and_codes_in_use():
    indices = np.array([[0, 0, 1], [3, 0, 1]])
    freq = np.array([3, 2, 0, 1]) / 6.0
    nz = freq[freq > 0]
    perplexity = CodeUsage(4, "perplexity")
    in_use = CodeUsage(4, "in_use")
    for m in (perplexity, in_use):
        m.update_state(indices[:1])
        m.update_state(indices[1:])
    np.testing.assert_allclose(float(perplexity.result()), np.exp(-np.sum(nz * np.log(nz))), rtol=1e-6)
    assert float(in_use.result()) == 3.0
    perplexity.reset_state()
    perplexity.update_state([2, 2])
    assert float(perplexity.result()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_codes": 0, "code_dim": 2}, "num_codes"),
        ({"num_codes": 4, "code_dim": 2, "ema_decay": 1.0}, "ema_decay"),
        ({"num_codes": 4, "code_dim": 2, "commitment_cost": -1.0}, "commitment_cost"),
    ],
)
def test_bad_quantizer_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VectorQuantizer(**kwargs)


def test_quantizer_refuses_inputs_of_another_code_dim():
    with pytest.raises(ValueError, match=r"code_dim=3 on the last axis\). Received: input_shape=\(None, 4, 4, 2\)"):
        VectorQuantizer(5, 3).build((None, 4, 4, 2))


def test_quantizer_config_round_trip():
    vq = VectorQuantizer(9, 4, commitment_cost=0.5, ema_decay=0.95, restart_unused=True, seed=3, name="vq")
    again = VectorQuantizer.from_config(vq.get_config())
    assert again.get_config() == vq.get_config()


# ------------------------------------------------------------- the code prior


def _random_prior(num_codes=3, grid=(2, 2), seed=0):
    prior = PixelCNNPrior(num_codes, filters=4, num_layers=1, first_kernel_size=3, seed=seed)
    prior.build((None,) + grid)
    rng = np.random.default_rng(seed)
    for w in prior.weights:  # the zero-initialized logits too: a non-uniform prior
        w.assign(rng.normal(scale=0.8, size=w.shape).astype("float32"))
    return prior


def test_untrained_prior_is_uniform():
    prior = PixelCNNPrior(5, filters=4, num_layers=1)
    codes = np.random.default_rng(0).integers(0, 5, (3, 3, 4))
    np.testing.assert_allclose(prior.log_prob(codes).numpy(), -12 * math.log(5), rtol=1e-6)


def test_prior_probabilities_sum_to_one_over_every_code_grid():
    prior = _random_prior()
    grids = np.array(list(itertools.product(range(3), repeat=4))).reshape(-1, 2, 2)
    log_p = prior.log_prob(grids).numpy().astype("float64")
    assert np.ptp(log_p) > 1.0  # far from uniform: the test can fail
    np.testing.assert_allclose(np.exp(log_p).sum(), 1.0, rtol=1e-5)


def test_prior_is_autoregressive_in_raster_order():
    prior = _random_prior(num_codes=4, grid=(3, 3), seed=1)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 4, (1, 3, 3))
    logits = prior(codes).numpy()
    for i in range(9):
        changed = codes.copy().reshape(1, 9)
        changed[0, i:] = (changed[0, i:] + 1) % 4  # position i and those after it
        other = prior(changed.reshape(1, 3, 3)).numpy().reshape(9, 4)
        np.testing.assert_allclose(other[: i + 1], logits.reshape(9, 4)[: i + 1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(prior(np.zeros((1, 3, 3), "int32")).numpy().reshape(9, 4)[8], logits.reshape(9, 4)[8])


def test_categorical_from_uniform_is_the_inverse_cdf():
    probs = np.array([[0.2, 0.5, 0.3]] * 7, "float32")
    u = np.array([0.0, 0.1, 0.2, 0.5, 0.69, 0.71, 0.999], "float32")
    np.testing.assert_array_equal(categorical_from_uniform(probs, u).numpy(), [0, 0, 1, 1, 1, 2, 2])


def test_prior_samples_follow_its_probabilities():
    prior = _random_prior(num_codes=2, grid=(2, 2), seed=2)
    grids = np.array(list(itertools.product(range(2), repeat=4))).reshape(-1, 2, 2)
    p = np.exp(prior.log_prob(grids).numpy().astype("float64"))
    n = 20000
    uniform = np.random.default_rng(5).random((n, 2, 2)).astype("float32")
    samples = prior.sample_from_uniform(uniform).numpy().reshape(n, 4)
    index = samples @ (2 ** np.arange(3, -1, -1))
    freq = np.bincount(index, minlength=16) / n
    np.testing.assert_array_less(np.abs(freq - p), 5 * np.sqrt(p * (1 - p) / n) + 1e-3)


def test_masked_conv_refuses_a_bad_mask():
    with pytest.raises(ValueError, match="mask_type"):
        MaskedConv2D("C", 4, 3)


def test_prior_config_round_trip():
    prior = _random_prior()
    again = PixelCNNPrior.from_config(prior.get_config())
    again.build((None, 2, 2))
    again.set_weights(prior.get_weights())
    codes = np.zeros((2, 2, 2), "int32")
    np.testing.assert_allclose(again.log_prob(codes).numpy(), prior.log_prob(codes).numpy(), rtol=1e-6)


# ------------------------------------------------------------- the model


@pytest.fixture(scope="module")
def trained(module_prototype_images):
    keras.utils.set_random_seed(0)
    images, _ = module_prototype_images
    vq = small_vqvae()
    vq.compile(optimizer=keras.optimizers.Adam(1e-2))
    prior_before = [w.copy() for w in vq.prior.get_weights()] if vq.built else None
    history = vq.fit(images, epochs=3, batch_size=64, verbose=0)
    return vq, history, images, prior_before


def test_fit_reports_the_vq_metrics(trained):
    vq, history, images, _ = trained
    assert sorted(history.history) == sorted(
        ["loss", "reconstruction", "kl", "elbo", "codebook_loss", "commitment_loss", "perplexity", "codes_in_use"]
    )
    assert history.history["reconstruction"][-1] > history.history["reconstruction"][0]
    assert 1 <= history.history["codes_in_use"][-1] <= 6
    assert 1 <= history.history["perplexity"][-1] <= history.history["codes_in_use"][-1] + 1e-4


def test_uniform_prior_bound_until_the_prior_is_fitted(trained):
    vq, _, images, _ = trained
    terms = vq.terms(images[:16])
    # The untrained PixelCNN is exactly uniform: KL = N log K.
    np.testing.assert_allclose(terms["kl"].numpy(), 16 * math.log(6), rtol=1e-5)
    np.testing.assert_allclose(terms["elbo"].numpy(), (terms["reconstruction"] - terms["kl"]).numpy(), rtol=1e-6)
    likelihood = vq.decode(vq.encode(images[:16]))
    np.testing.assert_allclose(terms["reconstruction"].numpy(), likelihood.log_prob(images[:16]).numpy(), rtol=1e-5)


def test_fit_trains_the_autoencoder_not_the_prior(module_prototype_images):
    images, _ = module_prototype_images
    vq = small_vqvae()
    vq.build((None,) + SHAPE)
    vq.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = {v.path: v.numpy().copy() for v in vq.variables}
    vq.fit(images[:128], epochs=1, batch_size=64, verbose=0)
    for v in vq.prior.variables:
        np.testing.assert_array_equal(v.numpy(), before[v.path])
    assert not np.array_equal(vq.quantizer.codebook.numpy(), before[vq.quantizer.codebook.path])
    assert not np.array_equal(vq.encoder.variables[0].numpy(), before[vq.encoder.variables[0].path])


def test_fit_prior_raises_the_codes_likelihood_and_tightens_the_bound(module_prototype_images):
    keras.utils.set_random_seed(1)
    images, _ = module_prototype_images
    vq = small_vqvae()
    vq.compile(optimizer=keras.optimizers.Adam(1e-2))
    vq.fit(images, epochs=2, batch_size=64, verbose=0)
    uniform = vq.elbo(images[:64]).numpy()
    history = vq.fit_prior(images, validation_data=images[:64], epochs=3, batch_size=64, learning_rate=1e-2, verbose=0)
    assert history.history["log_prob"][-1] > -16 * math.log(6)
    codes = vq.encode(images[:64])
    np.testing.assert_allclose(
        vq.elbo(images[:64]).numpy(),
        vq.decode(codes).log_prob(images[:64]).numpy() + vq.prior.log_prob(codes).numpy(),
        rtol=1e-5,
    )
    assert vq.elbo(images[:64]).numpy().mean() > uniform.mean()


def test_ema_codebook_is_set_by_moving_averages_in_fit(module_prototype_images):
    images, _ = module_prototype_images
    vq = small_vqvae(ema_decay=0.9)
    vq.build((None,) + SHAPE)
    vq.compile(optimizer=keras.optimizers.Adam(1e-2))
    assert vq.quantizer.codebook.path not in {v.path for v in vq.autoencoder_variables}
    before = vq.quantizer.codebook.numpy().copy()
    vq.fit(images[:128], epochs=1, batch_size=64, verbose=0)
    codebook, count, total = (v.numpy() for v in (vq.quantizer.codebook, vq.quantizer.ema_count, vq.quantizer.ema_sum))
    used = count > vq.quantizer.epsilon
    assert used.any() and not np.array_equal(codebook, before)
    np.testing.assert_allclose(codebook[used], total[used] / count[used][:, None], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(codebook[~used], before[~used])


@pytest.mark.parametrize("ema_decay", [0.9, None], ids=["ema", "gradient"])
def test_fit_under_xla_with_restarts(module_prototype_images, ema_decay):
    """jit_compile=True whatever the CPU ("auto" picks XLA only on some)."""
    images, _ = module_prototype_images
    vq = small_vqvae(ema_decay=ema_decay, restart_unused=True)
    vq.build((None,) + SHAPE)
    vq.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True)
    history = vq.fit(images[:128], epochs=2, batch_size=32, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["reconstruction"][-1] > history.history["reconstruction"][0]


def test_uniform_prior_samples_and_bad_code_indices():
    vq = small_vqvae(prior=False)
    vq.build((None,) + SHAPE)
    assert vq.sample(3, seed=0).mean().shape == (3,) + SHAPE
    uniform = np.array([[[0.0, 0.5, 0.999, 1.0], [-0.1, 0.2, 0.3, 0.4]] * 2], "float32").reshape(1, 4, 4)
    codes = vq.sample_codes_from_uniform(uniform).numpy()
    np.testing.assert_array_equal(codes[0, 0], [0, 3, 5, 5])
    assert codes.min() >= 0 and codes.max() < 6
    np.testing.assert_allclose(vq.code_log_prob(codes).numpy(), [-16 * math.log(6)], rtol=1e-6)
    with pytest.raises(ValueError, match=r"Expected code indices in \[0, 6\)\. Received: values from 6 to 6"):
        vq.decode(np.full((1, 4, 4), 6))
    with pytest.raises(ValueError, match=r"Expected code indices of shape \(batch, 4, 4\)\. Received: shape=\(1, 3, 3\)"):
        vq.code_log_prob(np.zeros((1, 3, 3), "int32"))
    with pytest.raises(ValueError, match="Expected integer code indices"):
        vq.decode(np.zeros((1, 4, 4), "float32"))
    prior = PixelCNNPrior(4, filters=4, num_layers=1)
    prior.build((None, 3, 3))
    with pytest.raises(ValueError, match=r"in \[0, 4\)"):
        prior.log_prob(np.full((1, 3, 3), 7))


def test_keras_round_trip_keeps_codes_bound_and_samples(trained, tmp_path):
    vq, _, images, _ = trained
    path = str(tmp_path / "vq.keras")
    vq.save(path)
    again = saving.load_model(path)
    assert isinstance(again, VQVAE)
    np.testing.assert_array_equal(again.encode(images[:8]).numpy(), vq.encode(images[:8]).numpy())
    np.testing.assert_allclose(again.elbo(images[:8]).numpy(), vq.elbo(images[:8]).numpy(), rtol=1e-6)
    np.testing.assert_allclose(again.sample(4, seed=3).mean().numpy(), vq.sample(4, seed=3).mean().numpy(), rtol=1e-6)
    assert again.quantizer.get_config() == vq.quantizer.get_config()


def test_a_model_built_inside_fit_exports_its_codes_and_bound(trained, tmp_path):
    """The export of a VQ-VAE that no input_shape built (fit built it)."""
    from keras_vae import export

    vq, _, images, _ = trained
    loaded = tf.saved_model.load(export.export_for_serving(vq, str(tmp_path / "vq")))
    x = images[:8]
    np.testing.assert_array_equal(loaded.signatures["encode"](x=x)["indices"].numpy(), vq.encode(x).numpy())
    np.testing.assert_allclose(
        loaded.signatures["log_likelihood"](x=x)["log_likelihood"].numpy(), vq.elbo(x).numpy(), rtol=1e-5, atol=1e-4
    )


def test_sample_decodes_prior_codes(trained):
    vq, _, _, _ = trained
    images = vq.sample(5, seed=1).mean().numpy()
    assert images.shape == (5,) + SHAPE
    assert np.all((images >= 0) & (images <= 1))


def test_model_refuses_a_mismatched_prior_and_a_wrong_encoder():
    encoder, quantizer, decoder, _ = architectures.make_vq_layers(SHAPE, num_codes=6, code_dim=3, filters=(8,))
    with pytest.raises(ValueError, match="num_codes=6 codes. Received: prior.num_codes=5"):
        VQVAE(encoder, quantizer, decoder, PixelCNNPrior(5))
    with pytest.raises(ValueError, match="VectorQuantizer"):
        VQVAE(encoder, "quantizer", decoder)
    wrong = keras.Sequential([keras.layers.Conv2D(4, 3, strides=2, padding="same")])
    with pytest.raises(ValueError, match=r"\[batch, \*grid, 3\]"):
        VQVAE(wrong, quantizer, decoder, input_shape=(None,) + SHAPE)


def test_inputs_are_checked_as_for_the_vaes(trained):
    from keras_vae.models import InputError

    vq, _, images, _ = trained
    with pytest.raises(InputError, match=r"Expected values in \[0, 1\]"):
        vq.evaluate(images[:8] * 3.0, verbose=0)


_DISTRIBUTED = r"""
import json
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np
from test_vqvae import small_vqvae, SHAPE
x = (np.random.default_rng(0).random((64,) + SHAPE) < 0.5).astype("float32")
results = {}
two = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])   # one instance for the whole script
for name, strategy in (("one", tf.distribute.get_strategy()), ("two", two)):
    keras.utils.set_random_seed(0)   # the same initial weights
    with strategy.scope():
        vq = small_vqvae(ema_decay=0.8)
        vq.compile(optimizer=keras.optimizers.SGD(0.01))
    vq.fit(x, epochs=1, batch_size=64, verbose=0)   # one step, the whole batch
    keras.utils.set_random_seed(1)
    with strategy.scope():   # every code below share 1/K after one step restarts
        restarting = small_vqvae(restart_unused=True)
        restarting.quantizer.restart_threshold, restarting.quantizer.usage_decay = 1.0, 0.1
        restarting.compile(optimizer=keras.optimizers.SGD(0.01))
    restarting.build((None,) + SHAPE)
    half = x[: 64 // strategy.num_replicas_in_sync]   # what the first replica receives
    outputs = restarting.encoder(half).numpy().reshape(-1, 3)
    restarting.fit(x, epochs=1, batch_size=64, verbose=0)
    copies = getattr(restarting.quantizer.codebook.value, "values", None) or [restarting.quantizer.codebook.value]
    codebook = np.asarray(copies[0])
    distance = np.abs(codebook[:, None, :] - outputs[None]).sum(-1).min(axis=1)
    results[name + "_restart"] = {"copies": [np.asarray(c).tolist() for c in copies],
                                  "codes_at_first_replica_outputs": int((distance < 1e-5).sum())}
    results[name] = {"codebook": vq.quantizer.codebook.numpy().tolist(),
                     "encoder": vq.encoder.variables[0].numpy().tolist(),
                     "count": vq.quantizer.ema_count.numpy().tolist(),
                     "mirrored": all(isinstance(v.value, tf.distribute.DistributedValues) for v in vq.variables)}
for built in (False, True):   # the strategy-scope pattern: made in the scope, fit outside it
    with two.scope():
        pattern = small_vqvae(ema_decay=0.8, restart_unused=True, input_shape=(None,) + SHAPE if built else None)
        pattern.compile()
    history = pattern.fit(x, epochs=1, batch_size=32, verbose=0)
    pattern.fit_prior(x, epochs=1, batch_size=32, verbose=0)
    results[f"pattern-{built}"] = {
        "loss": history.history["loss"][-1], "elbo": float(pattern.elbo(x[:4]).numpy().mean()),
        "mirrored": all(isinstance(v.value, tf.distribute.DistributedValues) for v in pattern.variables),
    }
print("RESULTS " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def distributed_results():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.path.join(ROOT, "tests"), env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-c", _DISTRIBUTED], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads([l for l in done.stdout.splitlines() if l.startswith("RESULTS ")][-1][len("RESULTS "):])


@pytest.mark.parametrize("built", [False, True], ids=["built-in-fit", "built-at-construction"])
def test_created_in_strategy_scope_fit_and_prior_fit_outside_it(distributed_results, built):
    """Keras's distributed-training pattern, for a VQ-VAE built lazily inside
    fit and one built at construction; its prior's fit too."""
    result = distributed_results[f"pattern-{built}"]
    assert result["mirrored"]
    assert np.isfinite(result["loss"]) and np.isfinite(result["elbo"])


def test_two_replicas_take_the_same_step_as_one_device(distributed_results):
    """One step of the whole batch on two mirrored CPU replicas: the EMA
    codebook (counts and sums over both halves) and the gradient step equal
    one device's, to float32 rounding."""
    results = distributed_results
    assert results["two"]["mirrored"]
    np.testing.assert_allclose(results["two"]["count"], results["one"]["count"], rtol=1e-6)
    np.testing.assert_allclose(results["two"]["codebook"], results["one"]["codebook"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(results["two"]["encoder"], results["one"]["encoder"], rtol=1e-4, atol=1e-5)
    # Restarts on two replicas: the same codes on both, each one of the first
    # replica's encoder outputs (not an average of the replicas' draws).
    first, second = (np.array(c) for c in results["two_restart"]["copies"])
    np.testing.assert_array_equal(first, second)
    assert results["two_restart"]["codes_at_first_replica_outputs"] >= 1
    assert results["one_restart"]["codes_at_first_replica_outputs"] >= 1


def test_a_training_backup_restores_every_state_and_the_next_step_is_the_same(module_prototype_images, tmp_path):
    """Exact resume: weights, the EMA codebook's averages, the usage shares,
    the optimizer and both seed generators (the model's and the restarts')."""
    from keras_vae.backup import TrainingBackup

    images, _ = module_prototype_images
    keras.utils.set_random_seed(0)
    model = small_vqvae(ema_decay=0.9, restart_unused=True)
    model.build((None,) + SHAPE)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), steps_per_execution=1)
    model.fit(images[:128], epochs=2, batch_size=32, verbose=0, callbacks=[TrainingBackup(tmp_path / "backup")])
    keras.utils.set_random_seed(5)
    restored = small_vqvae(ema_decay=0.9, restart_unused=True, seed=7)
    restored.build((None,) + SHAPE)
    restored.compile(optimizer=keras.optimizers.Adam(1e-2), steps_per_execution=1)
    assert TrainingBackup(tmp_path / "backup").restore(restored)["step"] == 8
    for a, b in zip(model.variables, restored.variables):
        np.testing.assert_array_equal(np.array(a), np.array(b), err_msg=a.path)
    np.testing.assert_array_equal(
        restored.quantizer.seed_generator.state.numpy(), model.quantizer.seed_generator.state.numpy()
    )
    batch = images[128:160]
    model.train_on_batch(batch)
    restored.train_on_batch(batch)
    for a, b in zip(model.variables, restored.variables):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-6, atol=1e-7, err_msg=a.path)


def test_a_gaussian_likelihood_and_a_user_network(module_prototype_images):
    """Any Keras networks and a Gaussian p(x | z_q): the model is not tied to
    make_vq_layers or to Bernoulli pixels."""
    from keras_vae.layers import GaussianDecoder

    images, _ = module_prototype_images
    encoder = keras.Sequential([keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu"),
                                keras.layers.Dense(3)])  # Dense on the last axis: [B, 4, 4, 3]
    decoder = GaussianDecoder(SHAPE, hidden_units=(32,))  # reads the 48 flattened code values
    vq = VQVAE(encoder, VectorQuantizer(5, 3, seed=0), decoder, seed=0, input_shape=(None,) + SHAPE)
    vq.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = vq.fit(images[:128] * 0.8 + 0.1, epochs=2, batch_size=32, verbose=0)
    assert np.all(np.isfinite(history.history["elbo"]))
    assert history.history["reconstruction"][-1] > history.history["reconstruction"][0]
    np.testing.assert_allclose(history.history["kl"][-1], 16 * math.log(5), rtol=1e-5)  # uniform: no prior
