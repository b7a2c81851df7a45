"""keras_vae.HierarchicalVAE: the math of a two-layer model, pinned down.

* the importance weights against an explicit NumPy computation of every
  log-density in the chain, on the model's own samples;
* the per-layer KLs against the closed form (the top layer: a Gaussian
  against N(0, I); the lower one: two Gaussians given the sampled layer
  above), and the ELBO as the mean log weight (Monte Carlo, fixed seed);
* a linear-Gaussian two-layer model, whose log p(x) is a closed-form
  Gaussian: ELBO <= IWAE_k <= log p(x), the bound approaching it as k grows;
* training, evaluation, saving, and the errors of a bad construction.
"""

import math

import keras
import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

import keras_vae
from keras_vae import evaluation
from keras_vae.layers import BernoulliDecoder
from keras_vae.layers import GaussianDecoder
from keras_vae.layers import GaussianEncoder
from keras_vae.layers import VampPrior


def _tiny(prior=None, objective="elbo", num_samples=1, event_shape=(4, 4, 1)):
    keras.utils.set_random_seed(0)
    return keras_vae.HierarchicalVAE(
        encoders=[GaussianEncoder(3, hidden_units=(8,)), GaussianEncoder(2, hidden_units=(8,))],
        conditional_priors=[GaussianEncoder(2, hidden_units=(8,))],
        decoder=BernoulliDecoder(event_shape, hidden_units=(8,)),
        prior=prior,
        seed=0,
        objective=objective,
        num_samples=num_samples,
        input_shape=(None,) + event_shape,
    )


def _images(n=6, shape=(4, 4, 1), seed=0):
    return (np.random.default_rng(seed).random((n,) + shape) < 0.4).astype("float32")


def _normal_log_pdf(z, loc, scale):
    z, loc, scale = (np.asarray(a, np.float64) for a in (z, loc, scale))
    return np.sum(-0.5 * ((z - loc) / scale) ** 2 - np.log(scale) - 0.5 * np.log(2 * np.pi), axis=-1)


def _gaussian_kl(loc_q, scale_q, loc_p, scale_p):
    loc_q, scale_q, loc_p, scale_p = (np.asarray(a, np.float64) for a in (loc_q, scale_q, loc_p, scale_p))
    return np.sum(
        np.log(scale_p / scale_q) + (scale_q**2 + (loc_q - loc_p) ** 2) / (2 * scale_p**2) - 0.5, axis=-1
    )


def _params(distribution):
    return distribution.mean().numpy(), distribution.stddev().numpy()


def test_log_weights_are_the_chains_log_densities_computed_explicitly():
    hvae = _tiny()
    x = _images()
    seed = tf.constant([3, 4], tf.int32)
    num_samples = 5
    log_w, log_px = hvae.importance_weights(tf.constant(x), num_samples, seed)
    z = hvae._chain(tf.constant(x), num_samples, seed)["z"].numpy()  # the same draws
    z2, z1 = z[:, :3], z[:, 3:]
    x_rep = np.tile(x.reshape(6, -1), (num_samples, 1))
    loc2, scale2 = _params(hvae.encoders[0](np.tile(x, (num_samples, 1, 1, 1))))
    loc1, scale1 = _params(hvae.encoders[1](np.concatenate([x_rep, z2], -1)))
    loc_p1, scale_p1 = _params(hvae.conditional_priors[0](z2))
    logits = hvae.decoder(z).distribution.logits.numpy().reshape(len(z), -1).astype(np.float64)
    expected_px = np.sum(x_rep * logits - np.logaddexp(0, logits), axis=-1)
    expected = (
        expected_px
        + _normal_log_pdf(z2, 0.0, 1.0)
        + _normal_log_pdf(z1, loc_p1, scale_p1)
        - _normal_log_pdf(z2, loc2, scale2)
        - _normal_log_pdf(z1, loc1, scale1)
    )
    # Sums of ~20 float32 terms of size <= 30: a few 1e-5 apart at most.
    np.testing.assert_allclose(log_px.numpy().reshape(-1), expected_px, rtol=0, atol=1e-4)
    np.testing.assert_allclose(log_w.numpy().reshape(-1), expected, rtol=0, atol=1e-4)


def test_layer_kls_are_the_gaussian_closed_forms_and_the_elbo_is_the_mean_log_weight():
    hvae = _tiny()
    x = _images()
    terms = hvae.elbo_terms(x)  # one chain
    loc2, scale2 = _params(hvae.encoders[0](x))
    np.testing.assert_allclose(terms["kl_2"], _gaussian_kl(loc2, scale2, 0.0, 1.0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(terms["kl"], terms["kl_1"] + terms["kl_2"], rtol=1e-6)
    np.testing.assert_allclose(terms["elbo"], terms["reconstruction"] - terms["kl"], rtol=1e-6)

    # kl_1 given the sampled z_2, on the chain the terms are made of.
    chain = hvae._chain(tf.constant(x), 1, tf.constant([7, 8], tf.int32))
    z2 = chain["z"].numpy()[:, :3]
    loc1, scale1 = _params(hvae.encoders[1](np.concatenate([x.reshape(6, -1), z2], -1)))
    loc_p1, scale_p1 = _params(hvae.conditional_priors[0](z2))
    kl_2, kl_1 = chain["kls"]
    np.testing.assert_allclose(kl_1, _gaussian_kl(loc1, scale1, loc_p1, scale_p1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kl_2, terms["kl_2"], rtol=1e-6)  # analytic: no sample in it

    # E_q[log w] = ELBO: 4000 chains, the mean log weight against the ELBO
    # with its KLs in closed form; the tolerance is 5 standard errors.
    log_w, _ = hvae.importance_weights(tf.constant(x), 4000, tf.constant([1, 2], tf.int32))
    elbo = hvae.elbo_terms(x, num_samples=4000)["elbo"].numpy()
    log_w = log_w.numpy().astype(np.float64)
    error = 5 * log_w.std(axis=0) / math.sqrt(4000)
    assert np.all(np.abs(log_w.mean(axis=0) - elbo) < error + 1e-3), (log_w.mean(axis=0), elbo, error)


def _softplus_inverse(y):
    return np.log(np.expm1(y))


def _linear_gaussian(posterior_noise=0.0):
    """z_2 ~ N(0, 1); z_1 | z_2 ~ N(A z_2 + a, s_1^2); x | z ~ N(B [z_2, z_1] + b, 0.7^2 I),
    x in R^3: every conditional linear with a constant scale (the scale
    columns of each projection zeroed). The encoders are set to the exact
    posteriors p(z_2 | x) and p(z_1 | x, z_2) (Gaussian conditionals of the
    joint), their weights then moved by `posterior_noise`. Returns the model
    and log p(x) in closed form."""
    keras.utils.set_random_seed(1)
    hvae = keras_vae.HierarchicalVAE(
        encoders=[GaussianEncoder(1, hidden_units=(), min_scale=1e-6), GaussianEncoder(1, hidden_units=(), min_scale=1e-6)],
        conditional_priors=[GaussianEncoder(1, hidden_units=(), min_scale=1e-6)],
        decoder=GaussianDecoder((3,), hidden_units=(), scale=0.7),
        seed=0,
        input_shape=(None, 3),
    )
    A, a, s1 = 1.3, 0.4, 0.6
    hvae.conditional_priors[0].params_layer.set_weights(
        [np.array([[A, 0.0]], "float32"), np.array([a, _softplus_inverse(s1 - 1e-6)], "float32")]
    )
    B, b = (w.astype(np.float64) for w in hvae.decoder.params_layer.get_weights())
    B = B.T  # [3, 2]: x = B [z_2, z_1] + b + 0.7 eps
    # (z_2, z_1, x) is jointly Gaussian.
    mean = np.concatenate([[0.0, a], B @ [0.0, a] + b])
    cov_z = np.array([[1.0, A], [A, A * A + s1 * s1]])
    cov = np.block([[cov_z, cov_z @ B.T], [B @ cov_z, B @ cov_z @ B.T + 0.49 * np.eye(3)]])

    def conditional(target, given):
        """p(target | given) = N(W given + c, var): (W, c, std)."""
        gain = cov[np.ix_([target], given)] @ np.linalg.inv(cov[np.ix_(given, given)])
        var = cov[target, target] - (gain @ cov[np.ix_(given, [target])]).item()
        return gain[0], mean[target] - gain[0] @ mean[given], math.sqrt(var)

    rng = np.random.default_rng(3)
    for encoder, (target, given) in zip(hvae.encoders, ((0, [2, 3, 4]), (1, [2, 3, 4, 0]))):
        gain, offset, std = conditional(target, given)
        kernel = np.stack([gain, np.zeros_like(gain)], axis=1)
        bias = np.array([offset, _softplus_inverse(std - 1e-6)])
        kernel[:, 0] += posterior_noise * rng.normal(size=len(gain))
        bias += posterior_noise * rng.normal(size=2)
        encoder.params_layer.set_weights([kernel.astype("float32"), bias.astype("float32")])

    def log_px(x):
        return scipy.stats.multivariate_normal(mean[2:], cov[2:, 2:]).logpdf(x)

    return hvae, log_px


def test_linear_gaussian_with_the_exact_posterior_every_weight_is_log_px():
    # q = p(z | x): log w = log p(x) for every chain, so ELBO = IWAE = log p(x).
    hvae, log_px = _linear_gaussian()
    x = np.random.default_rng(2).normal(size=(5, 3)).astype("float32")
    exact = log_px(x.astype(np.float64))
    log_w, _ = hvae.importance_weights(tf.constant(x), 50, tf.constant([5, 6], tf.int32))
    # float32 sums of a few terms of size ~10: 1e-4 apart at most.
    np.testing.assert_allclose(log_w.numpy(), np.broadcast_to(exact, (50, 5)), rtol=0, atol=2e-4)
    # The ELBO with its KLs in closed form is log p(x) in expectation only (its
    # reconstruction term is a Monte Carlo mean; per chain its spread is ~0.6
    # nats here): 20,000 chains put it within 0.03 (over 5 standard errors).
    np.testing.assert_allclose(hvae.elbo_terms(x, num_samples=20000)["elbo"], exact, rtol=0, atol=0.03)


def test_linear_gaussian_bounds_grow_with_k_towards_the_closed_form_log_likelihood():
    # A posterior moved off the exact one: in expectation ELBO <= IWAE_k <=
    # IWAE_k' <= log p(x) for k <= k', the gap closing as k grows. Each E[IWAE_k]
    # is the mean over 40,000 / k independent estimates.
    hvae, log_px = _linear_gaussian(posterior_noise=0.15)
    x = np.random.default_rng(2).normal(size=(4, 3)).astype("float32")
    exact = log_px(x.astype(np.float64))
    log_w, _ = hvae.importance_weights(tf.constant(x), 40000, tf.constant([5, 6], tf.int32))
    log_w = log_w.numpy().astype(np.float64)
    bounds, errors = {}, {}
    for k in (1, 10, 100, 1000):
        estimates = scipy.special.logsumexp(log_w.reshape(-1, k, 4), axis=1) - np.log(k)
        bounds[k] = estimates.mean(axis=0)
        errors[k] = 3 * estimates.std(axis=0) / math.sqrt(len(estimates))
    elbo = hvae.elbo_terms(x, num_samples=40000)["elbo"].numpy()
    np.testing.assert_allclose(bounds[1], elbo, atol=0, rtol=0.01)  # k = 1 is the ELBO
    gaps = {k: exact - v for k, v in bounds.items()}
    assert np.all(gaps[1] > 0.1), gaps  # the moved posterior leaves a gap
    for small, large in ((1, 10), (10, 100), (100, 1000)):
        assert np.all(bounds[small] < bounds[large] + errors[small] + errors[large]), (small, large, gaps)
    assert np.all(gaps[1000] > -errors[1000]) and np.all(gaps[1000] < 0.2 * gaps[1]), gaps


def test_fit_evaluate_and_the_evaluator_report_every_layer():
    hvae = _tiny(objective="iwae", num_samples=3)
    hvae.compile()
    x = _images(64)
    history = hvae.fit(x, epochs=2, batch_size=32, verbose=0).history
    assert sorted(history) == ["elbo", "iwae", "kl", "kl_1", "kl_2", "loss", "reconstruction"]
    np.testing.assert_allclose(history["loss"], [-v for v in history["iwae"]], rtol=1e-5)
    assert all(np.isfinite(v).all() for v in history.values())
    results = evaluation.evaluate(hvae, [x[:32], x[32:]], num_samples=50, verbose=0)
    assert results["latent_dim"] == 5 and results["num_examples"] == 64
    # The evaluator's NLL is the logsumexp of the model's importance weights
    # (batch 0, chunk 0: the seed folded with 0 twice).
    fold = tf.random.experimental.stateless_fold_in
    log_w, _ = hvae.importance_weights(tf.constant(x[:32]), 50, fold(fold(tf.constant([0, 0], tf.int64), 0), 0))
    first = -(tf.reduce_logsumexp(log_w, 0) - math.log(50)).numpy()
    per = evaluation.evaluate(hvae, [x[:32]], num_samples=50, verbose=0, return_per_example=True)
    np.testing.assert_allclose(-per["per_example"]["log_likelihood"], first, rtol=1e-5)
    assert results["elbo"] <= -results["nll"] + 1.0


def test_a_vamp_prior_on_the_top_layer_uses_its_posterior_and_the_model_round_trips(tmp_path):
    hvae = _tiny(prior=VampPrior(4))
    assert hvae.prior.encoder is hvae.encoders[0]
    assert not hvae.kl_is_analytic
    # p(z_2) = (1/K) sum_k q(z_2 | u_k): the top posterior at the pseudo-inputs.
    q = hvae.encoders[0](hvae.prior.pseudo_inputs)
    z = np.random.default_rng(0).normal(size=(2, 1, 3)).astype("float32")
    expected = scipy.special.logsumexp(q.log_prob(z).numpy().astype(np.float64), axis=1) - np.log(4)
    np.testing.assert_allclose(hvae.prior.distribution().log_prob(z[:, 0]), expected, rtol=1e-5)
    x = _images(8)
    hvae.compile()
    hvae.fit(x, epochs=1, batch_size=4, verbose=0)
    path = str(tmp_path / "hvae.keras")
    hvae.save(path)
    loaded = keras_vae.saving.load_model(path)
    assert isinstance(loaded, keras_vae.HierarchicalVAE) and loaded.latent_dims == (3, 2)
    np.testing.assert_allclose(loaded(x), hvae(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        loaded.importance_weights(tf.constant(x), 4, tf.constant([1, 1]))[0],
        hvae.importance_weights(tf.constant(x), 4, tf.constant([1, 1]))[0],
        rtol=1e-5,
        atol=1e-4,
    )
    # Generation: ancestral samples, and the top code decoded with the
    # lower layers at their conditional means.
    assert loaded.sample(5, seed=1).mean().shape == (5, 4, 4, 1)
    assert loaded.decode(np.zeros((2, 3), "float32")).mean().shape == (2, 4, 4, 1)
    assert loaded.decode(np.zeros((2, 5), "float32")).mean().shape == (2, 4, 4, 1)


def test_bad_constructions_are_refused_with_what_was_expected():
    with pytest.raises(ValueError, match=r"Expected L >= 2 encoders and L - 1 conditional priors.*Received: 1 encoders"):
        keras_vae.HierarchicalVAE([GaussianEncoder(2)], [], BernoulliDecoder((4, 4, 1)))
    with pytest.raises(ValueError, match=r"conditional_priors\[0\] .*latent_dim of encoders\[1\], 2. Received: latent_dim=3"):
        keras_vae.HierarchicalVAE(
            [GaussianEncoder(3), GaussianEncoder(2)], [GaussianEncoder(3)], BernoulliDecoder((4, 4, 1))
        )
    with pytest.raises(ValueError, match=r"Expected objective in"):
        keras_vae.HierarchicalVAE(
            [GaussianEncoder(3), GaussianEncoder(2)], [GaussianEncoder(2)], BernoulliDecoder((4, 4, 1)),
            objective="elob",
        )
    with pytest.raises(ValueError, match=r"decoder's event_shape .*\(4, 4, 1\). Received: decoder.event_shape=\(5, 5, 1\)"):
        keras_vae.HierarchicalVAE(
            [GaussianEncoder(3), GaussianEncoder(2)], [GaussianEncoder(2)], BernoulliDecoder((5, 5, 1)),
            input_shape=(None, 4, 4, 1),
        )


def test_auto_jit_compile_keeps_xla_off_even_where_the_vae_would_get_it(monkeypatch):
    # XLA compiled this model's step for minutes on an AVX2 CPU: "auto"
    # never chooses it for HierarchicalVAE, whatever the CPU or override.
    monkeypatch.setenv("KERAS_VAE_AUTO_XLA", "1")
    hvae = _tiny()
    hvae.compile()
    assert hvae.jit_compile is False
    vae = keras_vae.VAE(GaussianEncoder(2, hidden_units=(4,)), BernoulliDecoder((4, 4, 1), hidden_units=(4,)))
    vae.compile()
    assert vae.jit_compile is True


def test_noise_driven_chain_is_the_seeded_chains_arithmetic():
    """`elbo_terms_from_noise` and `posterior_sample` (what exports compute)
    against the explicit densities of the chain drawn with that noise."""
    hvae = _tiny()
    x = tf.constant(_images())
    noise = np.random.default_rng(3).standard_normal((6, hvae.noise_dim)).astype("float32")
    z, log_q = hvae.posterior_sample(x, noise)
    top, low = np.split(noise, [hvae.latent_dims[0]], axis=-1)
    loc2, scale2 = _params(hvae.encoders[0](x))
    z2 = loc2 + scale2 * top
    x_flat = tf.reshape(x, [6, -1])
    loc1, scale1 = _params(hvae.encoders[1](tf.concat([x_flat, tf.constant(z2)], -1)))
    z1 = loc1 + scale1 * low
    np.testing.assert_allclose(z.numpy(), np.concatenate([z2, z1], -1), rtol=1e-6, atol=1e-6)
    expected_log_q = _normal_log_pdf(z2, loc2, scale2) + _normal_log_pdf(z1, loc1, scale1)
    np.testing.assert_allclose(log_q.numpy(), expected_log_q, rtol=1e-5, atol=1e-4)
    terms = hvae.elbo_terms_from_noise(x, noise)
    lp1, sp1 = _params(hvae.conditional_priors[0](tf.constant(z2)))
    np.testing.assert_allclose(terms["kl_1"].numpy(), _gaussian_kl(loc1, scale1, lp1, sp1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(terms["kl_2"].numpy(), _gaussian_kl(loc2, scale2, 0.0, 1.0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(terms["elbo"].numpy(), (terms["reconstruction"] - terms["kl"]).numpy(), rtol=1e-6, atol=1e-4)
