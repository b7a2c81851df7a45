"""Tests of `keras_vae.evaluation`: the importance-sampled log-likelihood (IWAE
bound) against an exact marginal, its behaviour in k, its chunking, and the
`evaluate` report over a dataset.

The exact reference is a linear Gaussian model, the one VAE whose marginal is
known in closed form: z ~ N(0, I_L), x | z ~ N(W z + b, sigma^2 I_D), so
x ~ N(b, W W^T + sigma^2 I_D) (a `GaussianDecoder` with `hidden_units=()` and a
fixed `scale` is exactly that, with W the transposed kernel of its Dense layer).
Its posterior is p(z|x) = N(P W^T (x - b) / sigma^2, P) with
P = (I + W^T W / sigma^2)^-1, and the encoder (also linear, `hidden_units=()`)
is set by hand to a Gaussian q(z|x) with that mean, so the Monte Carlo error of
the estimate is known analytically (see `_relative_weight_variance`).
"""

import math

import keras
import numpy as np
import pytest
import scipy.special
import scipy.stats
import tensorflow as tf

import keras_vae
from keras_vae import evaluation
from keras_vae.layers import BernoulliDecoder
from keras_vae.layers import GaussianDecoder
from keras_vae.layers import GaussianEncoder

D, L, SIGMA = 4, 2, 0.5
MIN_SCALE = 1e-4  # GaussianEncoder's default floor on the scale


# ------------------------------------------------------------ linear Gaussian


def _linear_gaussian_vae(seed=0, kernel=None):
    """A VAE with linear encoder and decoder; returns (vae, W [D, L], b [D])."""
    keras.utils.set_random_seed(seed)
    vae = keras_vae.VAE(
        GaussianEncoder(L, hidden_units=(), min_scale=MIN_SCALE),
        GaussianDecoder((D,), hidden_units=(), scale=SIGMA),
        seed=seed,
        input_shape=(None, D),
    )
    dense = vae.decoder.params_layer  # x_mean = z @ kernel + bias
    if kernel is not None:
        dense.kernel.assign(np.asarray(kernel, np.float32))
    dense.bias.assign(np.random.default_rng(seed).normal(size=D).astype(np.float32))
    W = np.asarray(dense.kernel, np.float64).T
    b = np.asarray(dense.bias, np.float64)
    return vae, W, b


def _posterior(W):
    """Covariance P of p(z|x) and the matrix A with E[z|x] = (x - b) @ A."""
    P = np.linalg.inv(np.eye(L) + W.T @ W / SIGMA**2)
    return P, W @ P / SIGMA**2


def _set_encoder(vae, A, b, scale):
    """q(z|x) = N((x - b) @ A, diag(scale^2)) through the linear encoder."""
    scale = np.broadcast_to(np.asarray(scale, np.float64), (L,))
    kernel = np.zeros((D, 2 * L))
    kernel[:, :L] = A
    bias = np.zeros(2 * L)
    bias[:L] = -b @ A
    bias[L:] = np.log(np.expm1(scale - MIN_SCALE))  # softplus^-1
    vae.encoder.params_layer.kernel.assign(kernel.astype(np.float32))
    vae.encoder.params_layer.bias.assign(bias.astype(np.float32))


def _exact_log_px(W, b, x):
    return scipy.stats.multivariate_normal(b, W @ W.T + SIGMA**2 * np.eye(D)).logpdf(x)


def _relative_weight_variance(P, Q):
    """Var_q[w] / E_q[w]^2 for q = N(m, Q) and p(z|x) = N(m, P).

    w = p(x, z) / q(z) = p(x) p(z|x) / q(z), so with r = p(z|x) / q(z),
    E_q[r] = 1 and E_q[r^2] = |Q|^1/2 / (|P| |2 P^-1 - Q^-1|^1/2), the same for
    every x. For k samples the IWAE estimate log mean(w) then has standard
    error sqrt(v / k) and bias about -v / (2k) (delta method).
    """
    second_moment = np.sqrt(np.linalg.det(Q)) / (
        np.linalg.det(P) * np.sqrt(np.linalg.det(2 * np.linalg.inv(P) - np.linalg.inv(Q)))
    )
    return second_moment - 1.0


def test_iwae_matches_exact_log_likelihood_of_linear_gaussian_model():
    vae, W, b = _linear_gaussian_vae(seed=0)
    P, A = _posterior(W)
    assert not np.allclose(P, np.diag(np.diag(P)), atol=1e-3)  # q cannot be exact
    # q: the posterior mean, an isotropic scale a bit wider than the posterior's
    # widest direction, so the importance weights have a bounded variance.
    scale = 1.1 * math.sqrt(np.linalg.eigvalsh(P).max())
    _set_encoder(vae, A, b, scale)
    x = np.random.default_rng(1).multivariate_normal(b, W @ W.T + SIGMA**2 * np.eye(D), 8)
    x = x.astype(np.float32)
    exact = _exact_log_px(W, b, x)

    v = _relative_weight_variance(P, scale**2 * np.eye(L))
    k = 20000
    tolerance = 5 * math.sqrt(v / k) + v / (2 * k) + 1e-4  # 5 sd, bias, float32
    assert 0 < v < 2 and tolerance < 0.05

    # max_elements = 1000 * batch * event_size: 20 chunks of 1000 samples.
    chunked = evaluation.importance_sampled_log_likelihood(
        vae, x, num_samples=k, seed=0, max_elements=1000 * 8 * D
    ).numpy()
    whole = evaluation.importance_sampled_log_likelihood(vae, x, num_samples=k, seed=1).numpy()

    assert chunked.shape == whole.shape == (8,)
    np.testing.assert_allclose(chunked, exact, atol=tolerance, rtol=0)
    np.testing.assert_allclose(whole, exact, atol=tolerance, rtol=0)
    # A lower bound in expectation: it does not sit systematically above.
    assert np.mean(chunked - exact) < 3 * math.sqrt(v / k / 8)


def test_iwae_is_exact_for_any_k_when_q_is_the_true_posterior():
    # Orthogonal kernel columns: W^T W is diagonal, so the true posterior is a
    # diagonal Gaussian the encoder can represent; then every weight equals
    # p(x) and the estimate is exact whatever k (this pins the signs and terms
    # of log w = log p(x|z) + log p(z) - log q(z|x)).
    kernel = np.array([[1.5, 0.0, 0.5, 0.0], [0.0, -0.8, 0.0, 1.2]])
    vae, W, b = _linear_gaussian_vae(seed=2, kernel=kernel)
    P, A = _posterior(W)
    np.testing.assert_allclose(P, np.diag(np.diag(P)), atol=1e-12)
    _set_encoder(vae, A, b, np.sqrt(np.diag(P)))
    x = np.random.default_rng(3).normal(size=(5, D)).astype(np.float32) * 2
    exact = _exact_log_px(W, b, x)
    for k in (1, 7):
        estimate = evaluation.importance_sampled_log_likelihood(vae, x, num_samples=k).numpy()
        np.testing.assert_allclose(estimate, exact, atol=2e-4, rtol=0)


# ------------------------------------------------------------ behaviour in k


@pytest.fixture(scope="module")
def loose_posterior_vae():
    """A Bernoulli VAE whose q(z|x) is far from p(z|x): a large IWAE gap.

    Decoder weights ~ N(0, 1) make p(x|z) sharp in z, so the true posterior is
    narrow while the untrained encoder's q is not.
    """
    keras.utils.set_random_seed(0)
    vae = keras_vae.VAE(
        GaussianEncoder(2, hidden_units=(16,)),
        BernoulliDecoder(
            (8, 8, 1),
            hidden_units=(16,),
            kernel_initializer=keras.initializers.RandomNormal(stddev=1.0),
        ),
        seed=0,
        input_shape=(None, 8, 8, 1),
    )
    return vae


def test_iwae_increases_with_k(loose_posterior_vae, module_prototype_images):
    vae = loose_posterior_vae
    x = module_prototype_images[0][:64]
    copies = 4
    means, standard_errors = {}, {}
    for k in (1, 10, 100, 1000):
        # Each copy of the 64 examples gets its own k samples (one call per k);
        # the spread of the per-copy means gives the standard error.
        estimates = evaluation.importance_sampled_log_likelihood(
            vae, np.tile(x, (copies, 1, 1, 1)), num_samples=k, seed=k
        ).numpy()
        per_copy = estimates.reshape(copies, -1).mean(axis=1)
        means[k] = per_copy.mean()
        standard_errors[k] = per_copy.std(ddof=1) / math.sqrt(copies)
    ks = sorted(means)
    for small, large in zip(ks, ks[1:]):
        noise = 3 * math.hypot(standard_errors[small], standard_errors[large])
        assert means[large] >= means[small] - noise, (means, standard_errors)
    # Overall a clear increase: the bound tightens.
    assert means[1000] > means[1] + 10 * standard_errors[1] + 1.0, means

    # IWAE >= ELBO on average (here by far: the posterior is badly matched).
    elbo = float(np.mean(vae.elbo(x, num_samples=1000)))
    assert means[1000] > elbo + 1.0
    assert means[10] > elbo


def test_iwae_with_one_sample_is_the_elbo_in_expectation(loose_posterior_vae, module_prototype_images):
    vae = loose_posterior_vae
    x = module_prototype_images[0][:64]
    copies = 256
    # Each copy of an example gets its own sample z ~ q(z|x): 64 draws of
    # log w = log p(x|z) + log p(z) - log q(z|x) per example, in one call.
    k1 = evaluation.importance_sampled_log_likelihood(
        vae, np.tile(x, (copies, 1, 1, 1)), num_samples=1, seed=5
    ).numpy()
    k1_mean = k1.mean()
    k1_se = k1.reshape(copies, -1).mean(axis=1).std(ddof=1) / math.sqrt(copies)
    elbo = vae.elbo_terms(x, num_samples=2000)
    elbo_mean = float(np.mean(elbo["elbo"]))
    # The ELBO's own MC error (reconstruction term only) is ~1/45 of k1's.
    assert abs(k1_mean - elbo_mean) < 4 * k1_se + 0.05, (k1_mean, elbo_mean, k1_se)
    assert k1_se < 0.4  # the comparison has power


def test_same_seed_gives_the_same_estimate_and_another_seed_another(loose_posterior_vae, binary_images):
    vae, x = loose_posterior_vae, binary_images[:8]
    first = evaluation.importance_sampled_log_likelihood(vae, x, num_samples=50, seed=3)
    again = evaluation.importance_sampled_log_likelihood(vae, x, num_samples=50, seed=3)
    other = evaluation.importance_sampled_log_likelihood(vae, x, num_samples=50, seed=4)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


# ------------------------------------------------------------ chunking


@pytest.mark.parametrize(
    "batch, event_size, num_samples, max_elements",
    [
        (8, 4, 20000, 8 * 4 * 1000),
        (100, 784, 5000, 2**23),
        (100, 784, 5000, 1000),  # smaller than one sample of the batch
        (3, 5, 7, 10**9),
        (1, 1, 1, 1),
        (50, 10, 1000, 50 * 10 * 333 + 7),
    ],
)
def test_chunk_size_respects_max_elements_and_num_samples(batch, event_size, num_samples, max_elements):
    chunk = evaluation._chunk_size(batch, event_size, num_samples, max_elements)
    assert isinstance(chunk, int)
    assert 1 <= chunk <= num_samples
    if batch * event_size <= max_elements:
        assert chunk * batch * event_size <= max_elements
        # ...and as large as allowed (fewest chunks).
        assert chunk == num_samples or (chunk + 1) * batch * event_size > max_elements


def test_sampler_processes_all_k_samples_in_chunks_within_the_memory_bound(loose_posterior_vae, binary_images):
    # The chunk loop runs in one graph; its result must be the logsumexp over
    # the chunks the memory bound allows (30, 30, 30, 10 samples), chunk i
    # drawn with stateless_fold_in(seed, i), computed here chunk by chunk.
    vae, x = loose_posterior_vae, tf.constant(binary_images[:10])
    max_elements = 10 * 64 * 30  # 30 samples of the batch at once
    assert evaluation._chunk_size(10, 64, 100, max_elements) == 30
    log_px, mean_log_px_given_z = evaluation._ImportanceSampler(vae)(x, 100, seed=0, max_elements=max_elements)
    seed = tf.constant([0, 0], tf.int64)
    chunks = [
        vae.importance_weights(x, size, tf.random.experimental.stateless_fold_in(seed, i))
        for i, size in enumerate([30, 30, 30, 10])
    ]
    log_w = np.concatenate([c[0].numpy() for c in chunks]).astype(np.float64)
    log_px_given_z = np.concatenate([c[1].numpy() for c in chunks]).astype(np.float64)
    assert log_w.shape == (100, 10)
    assert log_px.shape == mean_log_px_given_z.shape == (10,)
    # float32 sums of 64 terms and a logsumexp of 100: rounding of a few ulps
    # of the largest magnitude.
    atol = 1e-5 * np.abs(log_w).max()
    np.testing.assert_allclose(log_px.numpy(), scipy.special.logsumexp(log_w, axis=0) - np.log(100), rtol=0, atol=atol)
    np.testing.assert_allclose(mean_log_px_given_z.numpy(), log_px_given_z.mean(0), rtol=0, atol=atol)
    # The same samples in one chunk of 100 give another estimate (other draws).
    one = evaluation._ImportanceSampler(vae)(x, 100, seed=0, max_elements=10 * 64 * 100)[0].numpy()
    assert np.abs(one - log_px.numpy()).max() > atol


@pytest.mark.parametrize("prior", ["standard_normal", "vamp"])
@pytest.mark.parametrize("built", [False, True], ids=["lazily_built", "prebuilt"])
def test_sampler_on_a_model_first_built_by_the_evaluation(binary_images, prior, built):
    # The chunk loop computes q(z|x) and p(z) once per batch (for a
    # VampPrior, the encoder at its pseudo-inputs) inside its tf.function: a
    # model never called before must build there and give the chunk-by-chunk
    # estimate, as a model built at construction does.
    from keras_vae.layers import VampPrior

    keras.utils.set_random_seed(0)
    vae = keras_vae.VAE(
        GaussianEncoder(2, hidden_units=(16,)),
        BernoulliDecoder((8, 8, 1), hidden_units=(16,)),
        prior=VampPrior(num_components=3, seed=0) if prior == "vamp" else None,
        seed=0,
        input_shape=(None, 8, 8, 1) if built else None,
    )
    assert vae.built == built
    x = tf.constant(binary_images[:6])
    log_px = evaluation.importance_sampled_log_likelihood(vae, x, num_samples=50, seed=3, max_elements=6 * 64 * 20)
    assert vae.built
    seed = tf.constant([3, 0], tf.int64)
    prepared = vae.prepare_inputs(x)
    log_w = np.concatenate([
        vae.importance_weights(prepared, size, tf.random.experimental.stateless_fold_in(seed, i))[0].numpy()
        for i, size in enumerate([20, 20, 10])
    ]).astype(np.float64)  # fmt: skip
    atol = 1e-5 * np.abs(log_w).max()
    np.testing.assert_allclose(log_px.numpy(), scipy.special.logsumexp(log_w, axis=0) - np.log(50), rtol=0, atol=atol)


@pytest.mark.parametrize("name, value", [("num_samples", 0), ("num_samples", 2.5), ("max_elements", 0), ("max_elements", True)])
def test_sampler_refuses_a_bad_number_of_samples_or_elements(loose_posterior_vae, binary_images, name, value):
    kwargs = {"num_samples": 10, "max_elements": 2**20, name: value}
    with pytest.raises(ValueError, match=f"Expected `{name}` to be a positive integer. Received: {name}={value!r}"):
        evaluation.importance_sampled_log_likelihood(loose_posterior_vae, binary_images[:4], seed=0, **kwargs)


def test_chunked_and_unchunked_estimates_agree_within_monte_carlo_error(loose_posterior_vae, module_prototype_images):
    # Chunks draw with seeds (seed, chunk index), so the samples differ; the
    # estimates must agree statistically.
    vae, x = loose_posterior_vae, module_prototype_images[0][:32]
    one_chunk = evaluation.importance_sampled_log_likelihood(vae, x, num_samples=2000, seed=0).numpy()
    many = evaluation.importance_sampled_log_likelihood(
        vae, x, num_samples=2000, seed=1, max_elements=32 * 64 * 64
    ).numpy()  # 32 chunks of 64 samples (the last one smaller)
    other_seed = evaluation.importance_sampled_log_likelihood(vae, x, num_samples=2000, seed=2).numpy()
    # Scale of the seed-to-seed noise, from two unchunked estimates.
    noise = np.abs(one_chunk - other_seed).mean()
    assert np.abs(one_chunk - many).mean() < 4 * noise + 0.02
    assert abs(one_chunk.mean() - many.mean()) < 4 * noise + 0.02


# ------------------------------------------------------------ evaluate


@pytest.fixture(scope="module")
def latent3_vae():
    """A small Bernoulli VAE with latent_dim=3 whose 3rd posterior mean is
    constant (its loc weights are zero): exactly 2 active units."""
    keras.utils.set_random_seed(1)
    vae = keras_vae.VAE(
        GaussianEncoder(3, hidden_units=(16,)),
        BernoulliDecoder((8, 8, 1), hidden_units=(16,)),
        seed=1,
        input_shape=(None, 8, 8, 1),
    )
    kernel = np.array(vae.encoder.params_layer.kernel)
    kernel[:, 2] = 0.0  # loc of z_3 = its bias, whatever x
    kernel[:, :2] *= 3.0  # the other two clearly vary across examples
    vae.encoder.params_layer.kernel.assign(kernel)
    return vae


EVALUATE_KEYS = {
    "nll",
    "log_likelihood",
    "elbo",
    "reconstruction",
    "distortion",
    "kl",
    "rate",
    "gap",
    "active_units",
    "latent_dim",
    "aggregate_posterior_kl",
    "num_examples",
    "num_samples",
}


def test_evaluate_reports_consistent_terms_over_a_dataset(latent3_vae, module_prototype_images):
    x = module_prototype_images[0][:48]
    ds = tf.data.Dataset.from_tensor_slices(x).batch(16)
    results = evaluation.evaluate(latent3_vae, ds, num_samples=20, verbose=0, return_per_example=True)
    per = results.pop("per_example")

    assert set(results) == EVALUATE_KEYS
    assert results["nll"] == -results["log_likelihood"]
    assert results["rate"] == results["kl"]
    assert results["distortion"] == -results["reconstruction"]
    assert results["gap"] == pytest.approx(results["log_likelihood"] - results["elbo"], abs=1e-4)
    assert results["elbo"] == pytest.approx(results["reconstruction"] - results["kl"], abs=1e-4)
    assert results["num_examples"] == 48 and results["num_samples"] == 20
    assert results["latent_dim"] == 3
    assert results["kl"] > 0 and results["gap"] > 0  # ELBO below log p(x)
    for key, value in results.items():
        assert np.isfinite(value), key

    # Per-example arrays: one value per image, averaging to the report.
    assert set(per) == {"log_likelihood", "reconstruction", "kl", "elbo"}
    for key, values in per.items():
        assert values.shape == (48,), key
        assert float(values.mean()) == pytest.approx(results[key], rel=1e-6)
    np.testing.assert_allclose(per["elbo"], per["reconstruction"] - per["kl"], rtol=1e-6)

    # The KL is the analytic KL of the encoder's q(z|x) to N(0, I).
    q = latent3_vae.encode(x)
    expected_kl = keras_vae.gaussian_kl(q.mean(), q.stddev()).numpy()
    np.testing.assert_allclose(per["kl"], expected_kl, rtol=1e-4, atol=1e-5)


def test_progress_bar_shows_the_running_mean_nll_and_ends_on_the_reported_one(
    latent3_vae, module_prototype_images, monkeypatch, capsys
):
    """The bar's "nll" after batch i is the mean over the examples of batches
    0..i (a partial last batch weighs by its examples), shown as given: its
    last value, on screen too, is the NLL `evaluate` returns."""
    given = []

    class RecordingProgbar(keras.utils.Progbar):
        def update(self, current, values=None, finalize=None):
            given.append(dict(values or []))
            super().update(current, values, finalize)

    monkeypatch.setattr(keras.utils, "Progbar", RecordingProgbar)
    x = module_prototype_images[0][:36]
    batches = [x[:16], x[16:32], x[32:]]  # 16, 16 and a partial 4
    results = evaluation.evaluate(
        latent3_vae, batches, num_samples=20, verbose=1, return_per_example=True
    )
    per_example_nll = -results["per_example"]["log_likelihood"].astype(np.float64)
    # Means of ~50-nat values over <= 36 examples, summed in float64 in two
    # different orders: they agree to ~1e-13.
    expected = [per_example_nll[:end].mean() for end in (16, 32, 36)]
    np.testing.assert_allclose([v["nll"] for v in given], expected, rtol=0, atol=1e-9)
    assert given[-1]["nll"] == results["nll"]
    # Not the last batch's own mean: the test would not tell them apart otherwise.
    assert abs(per_example_nll[32:].mean() - results["nll"]) > 0.01
    # What the bar prints (4 decimals) is the reported figure.
    assert f"nll: {results['nll']:.4f}" in capsys.readouterr().out


def test_evaluate_counts_active_units_as_dims_with_posterior_mean_variance_above_001(
    latent3_vae, module_prototype_images
):
    x = module_prototype_images[0][:48]
    results = evaluation.evaluate(latent3_vae, [x[:20], x[20:]], num_samples=2, verbose=0)
    means = latent3_vae.encode(x).mean().numpy()
    hand_count = int(np.sum(np.var(means, axis=0) > 0.01))
    assert hand_count == 2  # the fixture's construction
    assert results["active_units"] == hand_count
    assert 0 <= results["active_units"] <= results["latent_dim"]


def test_active_units_applies_the_threshold_per_dimension():
    rng = np.random.default_rng(0)
    means = np.stack(
        [rng.normal(0, 1, 1000), rng.normal(5, 0.05, 1000), np.full(1000, 3.0), rng.normal(0, 0.2, 1000)],
        axis=1,
    )  # variances ~1, 0.0025, 0, 0.04
    count, variance = evaluation.active_units(means)
    assert count == 2
    np.testing.assert_allclose(variance, np.var(means, axis=0))
    assert evaluation.active_units(means, threshold=0.001)[0] == 3
    assert evaluation.active_units(means, threshold=2.0)[0] == 0


def test_aggregate_posterior_kl_is_near_zero_for_prior_codes_and_large_for_shifted_ones():
    codes = np.random.default_rng(0).normal(size=(20000, 4))
    # Fitted Gaussian: loc ~ 0 +- 0.007, scale ~ 1 +- 0.005: KL ~ 4 * 1e-4.
    assert 0 <= evaluation.aggregate_posterior_kl(codes) < 0.01
    # Shift by 3 in every dimension: KL = 1/2 * sum(mu^2) = 18 nats.
    assert evaluation.aggregate_posterior_kl(codes + 3.0) == pytest.approx(18.0, rel=0.02)
    # Shrunk codes: sigma = 0.1 per dim -> 1/2 * (-log 0.01 - 1 + 0.01) * 4.
    expected = 0.5 * (-math.log(0.01) - 1 + 0.01) * 4
    assert evaluation.aggregate_posterior_kl(codes * 0.1) == pytest.approx(expected, rel=0.02)


def test_evaluate_raises_value_error_on_an_empty_dataset(latent3_vae):
    empty = tf.data.Dataset.from_tensor_slices(np.zeros((0, 8, 8, 1), np.float32)).batch(4)
    for dataset in ([], empty):
        with pytest.raises(ValueError, match="at least one batch"):
            evaluation.evaluate(latent3_vae, dataset, num_samples=2, verbose=0)


def test_evaluate_accepts_arrays_xy_tuples_and_tfds_dicts_with_the_same_result(
    latent3_vae, module_prototype_images
):
    x, labels = module_prototype_images
    x, labels = x[:32], labels[:32]
    forms = {
        "arrays": tf.data.Dataset.from_tensor_slices(x).batch(16),
        "xy_tuples": tf.data.Dataset.from_tensor_slices((x, labels)).batch(16),
        "tfds_dicts": tf.data.Dataset.from_tensor_slices(
            {"image": x.astype(np.uint8), "label": labels}
        ).batch(16),
        "list_of_arrays": [x[:16], x[16:]],
    }
    results = {
        form: evaluation.evaluate(latent3_vae, ds, num_samples=5, seed=7, verbose=0)
        for form, ds in forms.items()
    }
    reference = results.pop("arrays")
    for form, result in results.items():
        assert set(result) == set(reference), form
        for key in reference:
            assert result[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-5), (form, key)


def test_evaluate_refuses_images_outside_the_bernoulli_range(latent3_vae):
    x = np.full((4, 8, 8, 1), 254, np.uint8)  # raw 8-bit values, not binarized
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        evaluation.evaluate(latent3_vae, [x], num_samples=2, verbose=0)


def test_format_table_lists_every_split_and_row():
    def result(nll, units):
        return {
            "nll": nll,
            "elbo": -nll - 3.0,
            "gap": 3.0,
            "rate": 25.5,
            "distortion": nll - 20.0,
            "aggregate_posterior_kl": 0.25,
            "active_units": units,
            "latent_dim": 32,
            "num_samples": 5000,
            "num_examples": 10000,
        }

    table = evaluation.format_table({"validation": result(90.625, 17), "test": result(89.875, 16)})
    lines = table.splitlines()
    assert len(lines) == 1 + len(evaluation.TABLE_ROWS)
    assert "validation" in lines[0] and "test" in lines[0]
    assert lines[0].index("validation") < lines[0].index("test")  # column order kept
    for (key, label), line in zip(evaluation.TABLE_ROWS, lines[1:]):
        assert line.startswith(label), key
    row = dict(zip((key for key, _ in evaluation.TABLE_ROWS), lines[1:]))
    assert row["nll"].split()[-2:] == ["90.62", "89.88"]
    assert row["active_units"].split()[-2:] == ["17/32", "16/32"]
    assert row["num_samples"].split()[-2:] == ["5000", "5000"]
    assert row["elbo"].split()[-2:] == ["-93.62", "-92.88"]


def test_fused_bernoulli_log_likelihood_matches_tfp_and_its_gradient(latent3_vae):
    # log_importance_weights computes log p(x|z) of the package's Bernoulli
    # decoder in one XLA pass with x broadcast; TFP's Bernoulli on tiled x is
    # the independent reference, for the values and the gradient w.r.t. z.
    import tensorflow_probability as tfp

    from conftest import float32_atol
    from keras_vae import objectives

    vae = latent3_vae
    x = tf.constant((np.random.default_rng(3).random((5, 8, 8, 1)) < 0.4).astype("float32"))
    q = vae.encoder(x)
    z = q.sample(7, seed=tf.constant([1, 2], tf.int32))
    assert objectives._bernoulli_logits(vae.decoder(z[0]), x) is not None  # the fused path
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(z)
        log_w, log_px = objectives.log_importance_weights(vae, x, q, z)
        logits = vae.decoder(tf.reshape(z, (-1, 3))).distribution.logits
        reference = tf.reshape(
            tfp.distributions.Independent(tfp.distributions.Bernoulli(logits=logits), 3).log_prob(
                tf.tile(x, (7, 1, 1, 1))
            ),
            (7, 5),
        )
    # Sums of 64 terms near 0.7 nats each: roundings of the ~45-nat total.
    np.testing.assert_allclose(log_px, reference, rtol=0, atol=float32_atol(64))
    np.testing.assert_allclose(
        tape.gradient(log_px, z), tape.gradient(reference, z), rtol=0, atol=float32_atol(64)
    )
    np.testing.assert_allclose(
        log_w - log_px, vae.prior.distribution().log_prob(z) - q.log_prob(z), atol=1e-5
    )


@pytest.mark.parametrize("unknown_shape", [False, True], ids=["static", "unknown_dims"])
def test_the_bernoulli_pass_has_the_plain_formulas_gradients(unknown_shape):
    # Its gradient is written out (d/dl = x - sigmoid(l), d/dx = l summed over
    # the samples): against autodiff of the plain per-pixel formula with x
    # tiled, from a trace with static shapes and one with every dimension
    # unknown (the evaluator's kind of trace, which later calls reuse).
    from conftest import float32_atol
    from keras_vae import objectives
    from keras_vae._internal.bernoulli import logit_bernoulli_log_prob

    rng = np.random.default_rng(5)
    logits = tf.constant(rng.normal(0.0, 4.0, (3, 4, 10)), tf.float32)
    x = tf.constant(rng.random((4, 10)) < 0.5, tf.float32)
    upstream = tf.constant(rng.normal(size=(3, 4)), tf.float32)
    spec = [None, None, None] if unknown_shape else [3, 4, 10]
    function = objectives._bernoulli_log_likelihood.get_concrete_function(
        tf.TensorSpec(spec, tf.float32), tf.TensorSpec(spec[1:], tf.float32)
    )
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([logits, x])
        fused = function(logits, x)
        plain = tf.reduce_sum(logit_bernoulli_log_prob(logits, tf.broadcast_to(x, logits.shape)), axis=-1)
    # Sums of 10 terms of at most ~12 nats: a few roundings of that.
    np.testing.assert_allclose(fused, plain, rtol=0, atol=float32_atol(120))
    for a, b in zip(tape.gradient(fused, [logits, x], upstream), tape.gradient(plain, [logits, x], upstream)):
        np.testing.assert_allclose(a, b, rtol=0, atol=float32_atol(np.abs(b).max() + 1))
