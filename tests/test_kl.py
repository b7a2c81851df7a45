"""Tests pinning down the math of `keras_vae.kl` and the model's KL term.

What is checked (docs/derivation.md names these tests after each step):

* `gaussian_kl(loc, scale)` = 1/2 sum_j [-log s_j^2 - 1 + s_j^2 + mu_j^2] equals
  TFP's analytic KL(N(loc, scale^2) || N(0, I)) over wide ranges, in float32 and
  float64, and a Monte Carlo estimate of E_q[log q(z) - log p(z)];
* its gradients are d/dloc = loc and d/dscale = scale - 1/scale (GradientTape
  and central finite differences), its minimum is exactly 0 at loc=0, scale=1;
* it is one value per example, not a moment match of the batch;
* `kl_divergence(q, p)` is analytic when TFP registers a KL, else a Monte
  Carlo estimate that uses the samples `z` it is given;
* `monte_carlo_kl` shapes, and the KL term of `keras_vae.VAE.elbo_terms`.

All values are in nats. Tensors are small: the file runs in seconds on CPU.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402

import keras_vae  # noqa: E402
from keras_vae.kl import gaussian_kl  # noqa: E402
from keras_vae.kl import kl_divergence  # noqa: E402
from keras_vae.kl import monte_carlo_kl  # noqa: E402
from keras_vae.layers import BernoulliDecoder  # noqa: E402
from keras_vae.layers import GaussianEncoder  # noqa: E402
from keras_vae.layers import StandardNormalPrior  # noqa: E402

tfd = tfp.distributions

DTYPES = [np.float32, np.float64]


def _tolerance(dtype):
    """64 units in the last place, relative and absolute (nats).

    Each term of the closed form is computed with a relative error of a few
    eps; the relative part covers large KLs (mu^2 = 100, s^2 = 1e4), the
    absolute part covers KLs near 0 where -1 + s^2 cancels (error ~ eps * 1).
    Measured worst cases on the grids below: ~3e-7 relative in float32,
    ~2e-15 in float64, well inside 64 eps (7.6e-6 and 1.4e-14).
    """
    eps = float(np.finfo(dtype).eps)
    return dict(rtol=64 * eps, atol=64 * eps)


def _standard_normal(latent_dim, dtype):
    zeros = tf.zeros([latent_dim], dtype=dtype)
    return tfd.Independent(tfd.Normal(zeros, tf.ones_like(zeros)), 1)


def _hand_formula_float64(loc, scale):
    """The closed form in float64 NumPy, written independently of the package."""
    loc = np.asarray(loc, np.float64)
    scale = np.asarray(scale, np.float64)
    return 0.5 * np.sum(-np.log(scale**2) - 1.0 + scale**2 + loc**2, axis=-1)


def _log_ratio_samples(q, p, num_samples, seed):
    """Samples of log q(z) - log p(z), z ~ q, shape [num_samples, *batch]."""
    z = q.sample(num_samples, seed=seed)
    return (q.log_prob(z) - p.log_prob(z)).numpy()


# --------------------------------------------------------------- closed form


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_gaussian_kl_matches_tfp_analytic_kl_per_dimension_over_wide_ranges(dtype):
    # A 41 x 41 grid: loc in [-10, 10], scale in [1e-3, 1e2] log-spaced; it
    # contains loc = 0 and scale = 1. Latent dim 1, so each grid point is
    # checked on its own.
    loc, scale = np.meshgrid(np.linspace(-10, 10, 41), np.logspace(-3, 2, 41))
    loc = loc.reshape(-1, 1).astype(dtype)
    scale = scale.reshape(-1, 1).astype(dtype)
    q = tfd.Independent(tfd.Normal(loc, scale), 1)
    expected = tfd.kl_divergence(q, _standard_normal(1, dtype)).numpy()

    actual = gaussian_kl(loc, scale)

    assert actual.dtype == dtype
    assert actual.shape == (41 * 41,)
    np.testing.assert_allclose(actual.numpy(), expected, **_tolerance(dtype))
    # And against an independent float64 evaluation of the hand formula.
    np.testing.assert_allclose(
        actual.numpy(), _hand_formula_float64(loc, scale), **_tolerance(dtype)
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_gaussian_kl_sums_over_last_axis_and_matches_tfp_independent_normal(dtype):
    # Rows mix all 41 scales (last axis = 41 latent dims), so the sum over the
    # last axis is checked, with loc and scale over the same wide ranges.
    loc, scale = np.meshgrid(np.linspace(-10, 10, 41), np.logspace(-3, 2, 41))
    loc, scale = loc.T.astype(dtype), scale.T.astype(dtype)  # [41 examples, 41 dims]
    q = tfd.Independent(tfd.Normal(loc, scale), 1)
    expected = tfd.kl_divergence(q, _standard_normal(41, dtype)).numpy()

    actual = gaussian_kl(loc, scale).numpy()

    assert actual.shape == (41,)
    np.testing.assert_allclose(actual, expected, **_tolerance(dtype))
    per_dim = gaussian_kl(loc[..., None], scale[..., None]).numpy()
    np.testing.assert_allclose(actual, per_dim.sum(-1), **_tolerance(dtype))


def test_gaussian_kl_is_finite_for_scales_whose_square_underflows_in_float32():
    # scale^2 = 1e-60 is 0 in float32; -log(scale^2) must still be finite
    # (the module computes it as -2 log scale).
    loc = np.array([[0.0, 1.0]], np.float32)
    scale = np.array([[1e-30, 1e-30]], np.float32)

    actual = gaussian_kl(loc, scale).numpy()

    assert np.all(np.isfinite(actual))
    np.testing.assert_allclose(
        actual, _hand_formula_float64(loc, scale), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_gaussian_kl_matches_monte_carlo_estimate_within_five_standard_errors(dtype):
    loc = np.array(
        [[0.0, 0.0, 0.0], [1.5, -2.0, 0.3], [-0.7, 0.1, 2.0], [0.5, -1.0, 0.0]], dtype
    )
    scale = np.array(
        [[1.0, 1.0, 1.0], [0.3, 2.5, 1.0], [1.7, 0.5, 0.8], [0.4, 1.3, 2.0]], dtype
    )
    q = tfd.Independent(tfd.Normal(loc, scale), 1)
    p = _standard_normal(3, dtype)
    num_samples = 200_000

    # E_q[log q(z) - log p(z)] written out by hand from the densities.
    log_ratio = _log_ratio_samples(q, p, num_samples, seed=(12, 34)).astype(np.float64)
    estimate = log_ratio.mean(axis=0)
    standard_error = log_ratio.std(axis=0, ddof=1) / np.sqrt(num_samples)

    expected = gaussian_kl(loc, scale).numpy()

    # The estimate is sharp enough to reject a wrong formula (e.g. a missing
    # "-1", which shifts the KL by latent_dim / 2 = 1.5 nats) ...
    assert np.all(5 * standard_error[1:] < 0.1)
    # ... and agrees with the closed form. Row 0 is q = p: the log ratio is 0
    # for every sample, so the estimate is exactly 0 with zero standard error.
    np.testing.assert_array_equal(log_ratio[:, 0], 0.0)
    assert expected[0] == 0.0
    np.testing.assert_array_less(np.abs(estimate - expected), 5 * standard_error + 1e-12)


# --------------------------------------------------------------- gradients


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_gaussian_kl_gradients_from_gradient_tape_are_loc_and_scale_minus_inverse_scale(
    dtype,
):
    rng = np.random.default_rng(0)
    loc = tf.constant(rng.uniform(-5, 5, size=(4, 3)), dtype)
    scale = tf.constant(np.exp(rng.uniform(-3, 3, size=(4, 3))), dtype)

    with tf.GradientTape() as tape:
        tape.watch([loc, scale])
        # Summed over the batch: each example's KL depends on its own
        # parameters only, so the gradient is per-element.
        total = tf.reduce_sum(gaussian_kl(loc, scale))
    d_loc, d_scale = tape.gradient(total, [loc, scale])

    np.testing.assert_allclose(d_loc.numpy(), loc.numpy(), **_tolerance(dtype))
    np.testing.assert_allclose(
        d_scale.numpy(), scale.numpy() - 1.0 / scale.numpy(), **_tolerance(dtype)
    )


def test_gaussian_kl_gradients_by_central_finite_differences_in_float64():
    rng = np.random.default_rng(1)
    loc = rng.uniform(-3, 3, size=(2, 3))
    scale = np.exp(rng.uniform(-1.5, 1.5, size=(2, 3)))

    def kl_of_example(i, loc_i, scale_i):
        return float(gaussian_kl(loc_i[None], scale_i[None])[0])

    d_loc = np.zeros_like(loc)
    d_scale = np.zeros_like(scale)
    for i in range(loc.shape[0]):
        for j in range(loc.shape[1]):
            h = 1e-5 * max(1.0, abs(loc[i, j]))
            up, down = loc[i].copy(), loc[i].copy()
            up[j] += h
            down[j] -= h
            d_loc[i, j] = (
                kl_of_example(i, up, scale[i]) - kl_of_example(i, down, scale[i])
            ) / (2 * h)
            h = 1e-5 * scale[i, j]
            up, down = scale[i].copy(), scale[i].copy()
            up[j] += h
            down[j] -= h
            d_scale[i, j] = (
                kl_of_example(i, loc[i], up) - kl_of_example(i, loc[i], down)
            ) / (2 * h)

    # Central differences: truncation O(h^2 f''') ~ 1e-10, rounding
    # O(eps |f| / h) ~ 1e-10; 1e-7 leaves a wide margin and still rejects
    # any wrong coefficient (e.g. 2 mu or s - 2/s).
    np.testing.assert_allclose(d_loc, loc, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(d_scale, scale - 1.0 / scale, rtol=1e-7, atol=1e-7)


# --------------------------------------------------------------- minimum


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_gaussian_kl_is_exactly_zero_at_loc_zero_scale_one(dtype):
    loc = tf.zeros((3, 5), dtype)
    scale = tf.ones((3, 5), dtype)

    with tf.GradientTape() as tape:
        tape.watch([loc, scale])
        kl = gaussian_kl(loc, scale)
        total = tf.reduce_sum(kl)
    d_loc, d_scale = tape.gradient(total, [loc, scale])

    np.testing.assert_array_equal(kl.numpy(), np.zeros(3, dtype))
    # A stationary point: both gradients vanish there. d/dloc = loc is exactly
    # 0; d/dscale = scale - 1/scale comes out as a few eps in float32 on some
    # elements (TF's vectorized float32 kernels for the log / reciprocal
    # gradient are not correctly rounded), so allow 4 eps.
    np.testing.assert_array_equal(d_loc.numpy(), 0.0)
    np.testing.assert_allclose(
        d_scale.numpy(), 0.0, rtol=0, atol=4 * float(np.finfo(dtype).eps)
    )


def test_gaussian_kl_is_positive_away_from_the_minimum():
    rng = np.random.default_rng(2)
    # Random points far from and close to (0, 1), one latent dim per example
    # so that no other dimension can make a value positive.
    far_loc = rng.uniform(-10, 10, size=(500, 1))
    far_scale = np.exp(rng.uniform(-5, 5, size=(500, 1)))
    near_loc = rng.uniform(-1e-3, 1e-3, size=(500, 1))
    near_scale = 1.0 + rng.uniform(-1e-3, 1e-3, size=(500, 1))
    loc = np.concatenate([far_loc, near_loc])
    scale = np.concatenate([far_scale, near_scale])

    kl = gaussian_kl(loc, scale).numpy()  # float64

    assert np.all(kl > 0.0)
    # Near the minimum it is the quadratic 1/2 mu^2 + (s - 1)^2 to leading order.
    quadratic = 0.5 * near_loc[:, 0] ** 2 + (near_scale[:, 0] - 1.0) ** 2
    np.testing.assert_allclose(kl[500:], quadratic, rtol=5e-3)


# ------------------------------------------------- per example, not per batch


def test_gaussian_kl_returns_one_value_per_example():
    loc = np.zeros((7, 4), np.float32)
    scale = np.ones((7, 4), np.float32)
    q = tfd.Independent(tfd.Normal(loc, scale), 1)
    p = StandardNormalPrior(4).distribution()

    assert gaussian_kl(loc, scale).shape == (7,)
    assert kl_divergence(q, p).shape == (7,)
    assert gaussian_kl(np.zeros((2, 7, 4)), np.ones((2, 7, 4))).shape == (2, 7)


def test_gaussian_kl_of_each_example_does_not_depend_on_the_rest_of_the_batch():
    rng = np.random.default_rng(3)
    loc = rng.normal(size=(6, 4))
    scale = np.exp(rng.normal(size=(6, 4)))
    permutation = rng.permutation(6)

    batch_kl = gaussian_kl(loc, scale).numpy()
    one_at_a_time = [float(gaussian_kl(loc[i : i + 1], scale[i : i + 1])[0]) for i in range(6)]

    np.testing.assert_allclose(batch_kl, one_at_a_time, rtol=1e-14)
    np.testing.assert_allclose(
        gaussian_kl(loc[permutation], scale[permutation]).numpy(),
        batch_kl[permutation],
        rtol=1e-14,
    )


def test_batch_matching_the_prior_in_aggregate_still_has_large_per_example_kl():
    batch, latent_dim = 512, 4
    rng = np.random.default_rng(4)
    loc = rng.normal(size=(batch, latent_dim))
    # Standardize: the posterior means have batch mean 0 and variance 1 exactly.
    loc = (loc - loc.mean(axis=0)) / loc.std(axis=0)
    scale = np.full((batch, latent_dim), 0.1)
    # One code per example, z ~ q(z|x): the aggregate of the batch.
    codes = loc + scale * rng.normal(size=(batch, latent_dim))

    fitted_loc = codes.mean(axis=0)
    fitted_scale = codes.std(axis=0)
    aggregate_kl = float(gaussian_kl(fitted_loc, fitted_scale))
    per_example_kl = gaussian_kl(loc, scale).numpy()

    assert per_example_kl.shape == (batch,)
    # The aggregate looks like N(0, I): its KL is tiny (sampling noise of
    # 512 codes, and variance 1 + 0.1^2 instead of 1) ...
    assert aggregate_kl < 0.01 * latent_dim
    # ... while each code carries about 1/2 (-log 0.01 - 1 + 0.01 + 1) = 2.3
    # nats per dimension about its own x.
    assert per_example_kl.mean() / latent_dim > 1.0
    np.testing.assert_allclose(
        per_example_kl.mean() / latent_dim,
        0.5 * (-np.log(0.01) - 1.0 + 0.01 + 1.0),
        rtol=1e-12,
    )


# ----------------------------------------------- kl_divergence: analytic / MC


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_kl_divergence_is_analytic_for_gaussian_posterior_and_standard_normal_prior(
    dtype,
):
    rng = np.random.default_rng(5)
    loc = rng.uniform(-10, 10, size=(8, 3)).astype(dtype)
    scale = np.exp(rng.uniform(-6, 4, size=(8, 3))).astype(dtype)
    q = tfd.Independent(tfd.Normal(loc, scale), 1)
    p = StandardNormalPrior(3, dtype=np.dtype(dtype).name).distribution()
    unrelated_z = tf.zeros((2, 8, 3), dtype)

    result = kl_divergence(q, p).numpy()

    np.testing.assert_allclose(result, gaussian_kl(loc, scale).numpy(), **_tolerance(dtype))
    # Analytic, so no sampling: identical for any seed and whatever z is passed.
    np.testing.assert_array_equal(kl_divergence(q, p, seed=(1, 2), num_samples=3), result)
    np.testing.assert_array_equal(kl_divergence(q, p, z=unrelated_z), result)


def _logistic_posterior():
    loc = np.array([[0.0, 0.5], [1.0, -2.0], [-0.5, 0.3]], np.float64)
    scale = np.array([[1.0, 0.6], [0.3, 0.7], [0.8, 0.2]], np.float64)
    return tfd.Independent(tfd.Logistic(loc, scale), 1), loc, scale


def _mixture_posterior():
    logits = np.log(np.array([[0.3, 0.7], [0.5, 0.5], [0.9, 0.1]], np.float64))
    loc = np.array(
        [[[-1.0, 0.0], [1.0, 0.5]], [[2.0, 2.0], [-2.0, -2.0]], [[0.0, 0.0], [0.5, -0.5]]],
        np.float64,
    )
    scale = np.array(
        [[[0.5, 1.0], [0.5, 0.3]], [[1.0, 1.0], [0.2, 0.2]], [[1.0, 1.0], [2.0, 0.5]]],
        np.float64,
    )
    return tfd.MixtureSameFamily(
        tfd.Categorical(logits=logits),
        tfd.Independent(tfd.Normal(loc, scale), 1),
    )


def _logistic_kl_to_standard_normal(loc, scale):
    """Exact KL(Logistic(loc, scale) || N(0, 1)) summed over the last axis.

    -H(q) - E_q[log p(z)], with H = log s + 2 and E[z^2] = mu^2 + s^2 pi^2 / 3.
    """
    per_dim = -(np.log(scale) + 2.0) + 0.5 * np.log(2 * np.pi) + 0.5 * (
        loc**2 + scale**2 * np.pi**2 / 3.0
    )
    return per_dim.sum(-1)


@pytest.mark.parametrize("posterior", ["logistic", "mixture"])
def test_kl_divergence_falls_back_to_monte_carlo_when_no_analytic_kl_is_registered(
    posterior,
):
    q = _logistic_posterior()[0] if posterior == "logistic" else _mixture_posterior()
    p = StandardNormalPrior(2, dtype="float64").distribution()
    with pytest.raises(NotImplementedError):  # the premise: TFP has no KL for these
        tfd.kl_divergence(q, p)
    fallback_samples, reference_samples = 50_000, 200_000

    fallback = kl_divergence(q, p, seed=(7, 8), num_samples=fallback_samples).numpy()

    # Independent reference: more samples, another seed, computed by hand.
    log_ratio = _log_ratio_samples(q, p, reference_samples, seed=(9, 10))
    reference = log_ratio.mean(axis=0)
    std = log_ratio.std(axis=0, ddof=1)
    combined_standard_error = std * np.sqrt(1 / fallback_samples + 1 / reference_samples)
    assert fallback.shape == (3,)
    assert np.all(5 * combined_standard_error < 0.1)  # sharp enough to mean something
    np.testing.assert_array_less(np.abs(fallback - reference), 5 * combined_standard_error)
    # A Monte Carlo estimate: another seed gives another (close) number.
    other_seed = kl_divergence(q, p, seed=(11, 12), num_samples=fallback_samples).numpy()
    assert np.all(other_seed != fallback)


def test_kl_divergence_fallback_for_logistic_posterior_matches_its_exact_kl():
    q, loc, scale = _logistic_posterior()
    p = StandardNormalPrior(2, dtype="float64").distribution()
    num_samples = 100_000
    exact = _logistic_kl_to_standard_normal(loc, scale)

    fallback = kl_divergence(q, p, seed=(3, 4), num_samples=num_samples).numpy()

    std = _log_ratio_samples(q, p, 20_000, seed=(5, 6)).std(axis=0, ddof=1)
    np.testing.assert_array_less(np.abs(fallback - exact), 5 * std / np.sqrt(num_samples))


@pytest.mark.parametrize("z_shape", ["samples_batch_latent", "batch_latent"])
def test_kl_divergence_fallback_uses_the_samples_z_it_is_given(z_shape):
    q, _, _ = _logistic_posterior()
    p = StandardNormalPrior(2, dtype="float64").distribution()
    z = q.sample(5, seed=(13, 14)) if z_shape == "samples_batch_latent" else q.sample(seed=(13, 14))

    result = kl_divergence(q, p, z=z).numpy()

    by_hand = (q.log_prob(z) - p.log_prob(z)).numpy()
    if z_shape == "samples_batch_latent":
        by_hand = by_hand.mean(axis=0)
    assert result.shape == (3,)
    np.testing.assert_allclose(result, by_hand, rtol=1e-14, atol=1e-14)
    # Seed and num_samples are ignored when z is given.
    np.testing.assert_array_equal(
        kl_divergence(q, p, z=z, seed=(1, 1), num_samples=1000).numpy(), result
    )


# --------------------------------------------------------------- monte_carlo_kl


def test_monte_carlo_kl_averages_over_the_sample_axis_of_z_with_shape_s_b_l():
    rng = np.random.default_rng(6)
    q = tfd.Independent(tfd.Normal(rng.normal(size=(4, 3)), np.full((4, 3), 0.5)), 1)
    p = _standard_normal(3, np.float64)
    z = q.sample(6, seed=(15, 16))
    assert z.shape == (6, 4, 3)

    result = monte_carlo_kl(q, p, z=z)

    assert result.shape == (4,)
    np.testing.assert_allclose(
        result.numpy(), (q.log_prob(z) - p.log_prob(z)).numpy().mean(axis=0), rtol=1e-14
    )


def test_monte_carlo_kl_keeps_one_value_per_example_for_z_with_shape_b_l():
    rng = np.random.default_rng(7)
    q = tfd.Independent(tfd.Normal(rng.normal(size=(4, 3)), np.full((4, 3), 0.5)), 1)
    p = _standard_normal(3, np.float64)
    z = q.sample(seed=(17, 18))
    assert z.shape == (4, 3)

    result = monte_carlo_kl(q, p, z=z)

    # Not averaged over the batch axis: each example keeps its own log ratio.
    assert result.shape == (4,)
    np.testing.assert_allclose(
        result.numpy(), (q.log_prob(z) - p.log_prob(z)).numpy(), rtol=1e-14
    )


def test_monte_carlo_kl_draws_num_samples_from_q_when_z_is_not_given():
    rng = np.random.default_rng(8)
    q = tfd.Independent(tfd.Normal(rng.normal(size=(4, 3)), np.full((4, 3), 0.5)), 1)
    p = _standard_normal(3, np.float64)

    result = monte_carlo_kl(q, p, num_samples=6, seed=(19, 20))

    z = q.sample(6, seed=(19, 20))  # same stateless seed, same samples
    assert result.shape == (4,)
    np.testing.assert_allclose(
        result.numpy(), (q.log_prob(z) - p.log_prob(z)).numpy().mean(axis=0), rtol=1e-14
    )


# --------------------------------------------------------------- the model


def _small_vae():
    vae = keras_vae.VAE(
        GaussianEncoder(3, hidden_units=(8,)),
        BernoulliDecoder((6,), hidden_units=(8,)),
        seed=0,
    )
    x = tf.constant(
        (np.random.default_rng(9).uniform(size=(5, 6)) > 0.5).astype(np.float32)
    )
    return vae, x


def test_vae_elbo_terms_kl_is_gaussian_kl_of_the_encoder_posterior():
    vae, x = _small_vae()

    terms = vae.elbo_terms(x)
    q = vae.encoder(x)
    assert isinstance(q, tfd.Independent)
    expected = gaussian_kl(q.distribution.loc, q.distribution.scale)

    assert terms["kl"].shape == (5,)
    np.testing.assert_allclose(terms["kl"].numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    assert np.all(terms["kl"].numpy() > 0.0)
    # Analytic KL: a second call (new z sample) gives the same KL.
    np.testing.assert_array_equal(vae.elbo_terms(x)["kl"].numpy(), terms["kl"].numpy())


def test_vae_elbo_is_reconstruction_minus_kl_per_example():
    vae, x = _small_vae()

    terms = vae.elbo_terms(x)

    for name in ("reconstruction", "kl", "elbo"):
        assert terms[name].shape == (5,)
    np.testing.assert_allclose(
        terms["elbo"].numpy(),
        terms["reconstruction"].numpy() - terms["kl"].numpy(),
        rtol=1e-6,
        atol=1e-6,
    )
    # log p(x|z) of binary data is a log-probability: <= 0, so elbo < -kl.
    assert np.all(terms["reconstruction"].numpy() <= 0.0)
