"""Learned priors and the importance-weighted objective, against independent references.

* The mixture prior's and the VampPrior's log p(z) against an explicit
  mixture computed in float64 NumPy from their parameters (for the VampPrior:
  from the model's own encoder at the pseudo-inputs).
* The Monte Carlo KL the model uses for them against the analytic KL where
  both exist (a one-component mixture at N(0, I) is the standard prior).
* The IWAE objective: k = 1 is exactly the ELBO objective; its control
  variate has mean zero (Monte Carlo with a fixed seed); the bound is above
  the ELBO and below the k = 5000 estimate of log p(x).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from scipy.special import logsumexp

import keras_vae
from conftest import IMAGE_SHAPE
from conftest import float32_atol
from keras_vae import evaluation
from keras_vae import kl as kl_lib
from keras_vae import objectives
from keras_vae.layers import BernoulliDecoder
from keras_vae.layers import GaussianEncoder
from keras_vae.layers import MixtureOfGaussiansPrior
from keras_vae.layers import VampPrior

tfd = tfp.distributions
LATENT = 3


def _vae(prior=None, objective="elbo", num_samples=1, seed=0):
    keras.utils.set_random_seed(seed)
    vae = keras_vae.VAE(
        GaussianEncoder(LATENT, hidden_units=(16,)),
        BernoulliDecoder(IMAGE_SHAPE, hidden_units=(16,)),
        prior=prior,
        objective=objective,
        num_samples=num_samples,
        seed=seed,
        input_shape=(None,) + IMAGE_SHAPE,
    )
    vae.compile(optimizer=keras.optimizers.Adam(1e-2))
    return vae


def _log_normal(z, loc, scale):
    """log N(z; loc, diag(scale^2)) summed over the last axis, float64."""
    return np.sum(-0.5 * ((z - loc) / scale) ** 2 - np.log(scale) - 0.5 * np.log(2 * np.pi), axis=-1)


def _codes(n=7, seed=3):
    return np.random.default_rng(seed).normal(size=(n, LATENT)).astype("float32")


# ------------------------------------------------------------- log p(z)


def test_mixture_prior_log_prob_is_the_explicit_mixture():
    prior = MixtureOfGaussiansPrior(LATENT, num_components=4, seed=1)
    prior.build()
    rng = np.random.default_rng(0)
    prior.logits.assign(rng.normal(size=4).astype("float32"))
    prior.raw_scale.assign(rng.normal(size=(4, LATENT)).astype("float32"))
    z = _codes()
    logits = np.array(prior.logits, np.float64)
    log_weights = logits - logsumexp(logits)
    loc = np.array(prior.loc, np.float64)
    scale = np.log1p(np.exp(np.array(prior.raw_scale, np.float64))) + prior.min_scale
    expected = logsumexp(log_weights + _log_normal(z[:, None, :], loc, scale), axis=1)
    np.testing.assert_allclose(prior(z), expected, rtol=0, atol=float32_atol(expected))


def test_vampprior_log_prob_is_the_mixture_of_the_encoders_posteriors_at_the_pseudo_inputs():
    vae = _vae(VampPrior(num_components=5, seed=2))
    prior = vae.prior
    assert prior.pseudo_inputs.shape == (5,) + IMAGE_SHAPE  # in the data's shape
    rng = np.random.default_rng(1)
    prior.raw_pseudo_inputs.assign(rng.uniform(-0.5, 1.5, size=(5,) + IMAGE_SHAPE).astype("float32"))
    u = np.clip(np.array(prior.raw_pseudo_inputs), 0.0, 1.0)  # the paper's hardtanh
    q = vae.encoder(u)  # the model's own encoder, not a copy
    loc = q.distribution.loc.numpy().astype(np.float64)
    scale = q.distribution.scale.numpy().astype(np.float64)
    z = _codes()
    expected = logsumexp(_log_normal(z[:, None, :], loc, scale), axis=1) - np.log(5)
    np.testing.assert_allclose(prior(z), expected, rtol=0, atol=float32_atol(expected))
    # It follows the encoder: other encoder weights, another prior.
    before = prior(z).numpy()
    kernel = vae.encoder.params_layer.kernel
    kernel.assign(kernel * 2.0)
    assert not np.allclose(prior(z), before)


def test_vampprior_without_an_encoder_says_how_to_attach_one():
    with pytest.raises(ValueError, match=r"prior=VampPrior\(\.\.\.\)"):
        VampPrior(num_components=3).distribution()


def test_learned_priors_serialize_and_reload_with_identical_log_probs(tmp_path, binary_images):
    for prior in (MixtureOfGaussiansPrior(LATENT, num_components=3), VampPrior(num_components=4)):
        vae = _vae(prior)
        vae.fit(binary_images, epochs=1, batch_size=32, verbose=0)
        path = str(tmp_path / f"{type(prior).__name__}.keras")
        vae.save(path)
        reloaded = keras.models.load_model(path)
        assert type(reloaded.prior) is type(prior)
        z = _codes()
        np.testing.assert_array_equal(reloaded.prior(z), vae.prior(z))
        np.testing.assert_array_equal(reloaded(binary_images[:4]), vae(binary_images[:4]))


# ------------------------------------------------------------------ KL


def test_kl_is_analytic_for_the_standard_prior_only():
    assert _vae().kl_is_analytic
    assert not _vae(MixtureOfGaussiansPrior(LATENT, 2)).kl_is_analytic
    assert not _vae(VampPrior(num_components=2)).kl_is_analytic


def test_monte_carlo_kl_of_a_one_component_mixture_at_the_origin_is_the_analytic_kl(binary_images):
    """A mixture of one N(0, I) is the standard prior, but has no analytic
    KL: the model's Monte Carlo estimate must average to the closed form."""
    prior = MixtureOfGaussiansPrior(LATENT, num_components=1, min_scale=1e-3)
    vae = _vae(prior)
    prior.loc.assign(np.zeros((1, LATENT), "float32"))
    prior.raw_scale.assign(np.full((1, LATENT), np.log(np.expm1(1.0 - 1e-3)), "float32"))
    x = binary_images[:8]
    q = vae.encoder(x)
    analytic = kl_lib.gaussian_kl(q.distribution.loc, q.distribution.scale).numpy()
    samples = 20000
    z = q.sample(samples, seed=tf.constant([4, 5]))
    log_ratio = (q.log_prob(z) - prior.distribution().log_prob(z)).numpy()
    estimate = log_ratio.mean(axis=0)
    standard_error = log_ratio.std(axis=0) / np.sqrt(samples)
    assert np.all(np.abs(estimate - analytic) < 5 * standard_error + 1e-4), (estimate, analytic)
    # And the model's terms use that estimate on their own sample.
    terms = vae.elbo_terms(x, num_samples=samples)
    np.testing.assert_allclose(terms["kl"], analytic, atol=5 * standard_error.max() + 1e-3)


# ----------------------------------------------------------------- IWAE


def test_iwae_with_one_sample_is_exactly_the_elbo_objective(binary_images):
    elbo_model, iwae_model = _vae(), _vae(objective="iwae", num_samples=1)
    iwae_model.set_weights(elbo_model.get_weights())
    a = elbo_model.fit(binary_images, epochs=2, batch_size=16, shuffle=False, verbose=0).history
    b = iwae_model.fit(binary_images, epochs=2, batch_size=16, shuffle=False, verbose=0).history
    assert a["loss"] == b["loss"] and b["iwae"] == a["elbo"]
    for w, v in zip(elbo_model.get_weights(), iwae_model.get_weights()):
        np.testing.assert_array_equal(w, v)


def test_the_iwae_formula_at_one_sample_reduces_to_reconstruction_minus_beta_kl():
    rng = np.random.default_rng(2)
    log_px = rng.normal(-50.0, 5.0, size=(1, 6)).astype("float32")
    log_ratio = rng.normal(3.0, 1.0, size=(1, 6)).astype("float32")
    kl = rng.uniform(1.0, 5.0, size=6).astype("float32")
    for beta in (1.0, 0.3):
        value = objectives.iwae_objective(log_px, log_ratio, kl, beta).numpy()
        np.testing.assert_allclose(value, log_px[0] - beta * kl, rtol=0, atol=float32_atol(log_px))


def test_the_control_variate_leaves_the_iwae_estimate_unbiased(binary_images):
    """Mean over many independent draws: with the analytic KL as control
    variate and without it (plain IWAE), the k = 5 estimates agree."""
    vae = _vae()
    x = tf.constant(binary_images[:4])
    q = vae.encoder(x)
    draws = 4000
    z = q.sample([draws, 5], seed=tf.constant([7, 8]))  # [draws, k, B, L]
    z = tf.reshape(z, [draws * 5, 4, LATENT])
    log_w, log_px = objectives.log_importance_weights(vae, x, q, z)
    log_w = tf.reshape(log_w, [draws, 5, 4]).numpy().astype(np.float64)
    log_px = tf.reshape(log_px, [draws, 5, 4]).numpy().astype(np.float64)
    kl = kl_lib.analytic_kl(q, vae.prior.distribution()).numpy()
    plain = logsumexp(log_w, axis=1) - np.log(5)  # [draws, B]
    controlled = np.stack([
        objectives.iwae_objective(log_px[d], log_px[d] - log_w[d], kl).numpy() for d in range(0, draws, 10)
    ])
    se = np.hypot(plain.std(0) / np.sqrt(draws), controlled.std(0) / np.sqrt(len(controlled)))
    assert np.all(np.abs(plain.mean(0) - controlled.mean(0)) < 5 * se), (plain.mean(0), controlled.mean(0), se)


def test_iwae_training_reports_a_bound_between_the_elbo_and_log_px(binary_images):
    vae = _vae(objective="iwae", num_samples=5)
    history = vae.fit(binary_images, epochs=3, batch_size=16, verbose=0).history
    assert {"loss", "reconstruction", "kl", "elbo", "iwae"} <= set(history)
    assert np.all(np.isfinite(history["loss"]))
    logs = vae.evaluate(binary_images, batch_size=64, verbose=0, return_dict=True)
    log_px = evaluation.importance_sampled_log_likelihood(vae, binary_images, num_samples=2000).numpy().mean()
    # Jensen: ELBO <= IWAE_5 <= log p(x) in expectation; 64 images give
    # Monte Carlo noise well under the gaps checked here.
    assert logs["elbo"] < logs["iwae"] < log_px + 0.5


def test_bad_objective_arguments_are_refused():
    with pytest.raises(ValueError, match=r"objective in \('elbo', 'iwae'\)"):
        _vae(objective="vimco")
    with pytest.raises(ValueError, match="num_samples"):
        _vae(num_samples=0)


def test_a_vampprior_vae_exports_its_prior_and_samples(tmp_path, binary_images):
    from keras_vae import export
    from keras_vae import exported as exported_lib

    vae = _vae(VampPrior(num_components=4), objective="iwae", num_samples=3)
    vae.fit(binary_images, epochs=1, batch_size=32, verbose=0)
    path = export.export_for_serving(vae, str(tmp_path / "vamp"))
    exported = exported_lib.ExportedVAE(path)
    z = _codes()
    np.testing.assert_allclose(
        exported.prior.distribution().log_prob(z), vae.prior(z), rtol=1e-5, atol=1e-5
    )
    rng = np.random.default_rng(3)
    noise = rng.standard_normal((6, vae.latent_dim)).astype("float32")
    uniform = np.array([0.0, 0.1, 0.3, 0.55, 0.8, 0.999], "float32")
    images = exported.loaded.signatures["sample"](noise=tf.constant(noise), uniform=tf.constant(uniform))["mean"].numpy()
    assert images.shape == (6,) + IMAGE_SHAPE and np.all((images >= 0) & (images <= 1))
    # Component k = floor(4 u) of the 4 equally weighted components q(z | u_k):
    # the images are the decoder's at loc_k + scale_k * noise.
    components = vae.prior.distribution().components_distribution.distribution
    k = np.floor(uniform * 4).astype(int)
    z = components.loc.numpy()[k] + components.scale.numpy()[k] * noise
    np.testing.assert_allclose(images, vae.decode(z).mean().numpy(), rtol=1e-5, atol=1e-5)


def test_the_matrix_product_mixture_log_prob_is_tfps_at_vampprior_size():
    """500 components over 40 latents, scales down to 0.05: the expanded
    quadratic agrees with TFP's [n, K, L] formula to float32 roundings of
    the largest term it cancels, sum_j (z_j^2 + mu_jk^2) / s_jk^2."""
    from keras_vae.layers.priors import _DiagonalGaussianMixture

    rng = np.random.default_rng(5)
    loc = rng.normal(size=(500, 40)).astype("float32")
    scale = rng.uniform(0.05, 1.0, size=(500, 40)).astype("float32")
    parts = dict(
        mixture_distribution=tfd.Categorical(logits=rng.normal(size=500).astype("float32")),
        components_distribution=tfd.Independent(tfd.Normal(loc, scale), 1),
    )
    ours, reference = _DiagonalGaussianMixture(**parts), tfd.MixtureSameFamily(**parts)
    z = reference.sample([3, 50], seed=tf.constant([1, 2]))  # near the components
    largest = np.max(((z.numpy()[..., None, :] ** 2 + loc**2) / scale**2).sum(-1))
    np.testing.assert_allclose(ours.log_prob(z), reference.log_prob(z), rtol=0, atol=float32_atol(largest))
    assert ours.log_prob(z).shape == (3, 50)
