"""Mixed precision ("mixed_bfloat16"): bfloat16 matrix products, float32 math.

Under the policy the networks' products run in bfloat16 with float32
weights, and everything probabilistic is float32: the heads' parameters and
log-probabilities, the priors, the KL, the ELBO, the loss and the IWAE
evaluation (keras_vae/precision.py). The ELBO of a mixed model is checked
against the same weights in float32 within a first-order bound of bfloat16
rounding (`_elbo_error_scale`). Tiny models (8x8x1 images, one hidden layer
of 32 units): the file takes well under a minute.
"""

import json
import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_vae
from conftest import float32_atol
from keras_vae._internal import precision
from keras_vae import evaluation
from keras_vae import training
from keras_vae.layers import BernoulliDecoder
from keras_vae.layers import GaussianDecoder
from keras_vae.layers import GaussianEncoder
from keras_vae.layers import MixtureOfGaussiansPrior
from keras_vae.layers import VampPrior

MIXED = "mixed_bfloat16"
# Unit roundoff of bfloat16 (8 significant bits): a rounding to nearest
# changes a number by at most 2^-8 of itself.
BF16_UNIT_ROUNDOFF = 2.0**-8
SHAPE = (8, 8, 1)
LATENT_DIM = 4
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _prior(name, seed):
    if name == "mixture":
        return MixtureOfGaussiansPrior(LATENT_DIM, 3, seed=seed)
    if name == "vamp":
        return VampPrior(3, seed=seed)
    return None  # the standard normal


def _vae(policy=MIXED, prior=None, decoder=None, seed=0, **kwargs):
    """A tiny VAE with every layer made under `policy`, built."""
    keras.utils.set_random_seed(seed)
    with precision.dtype_policy_scope(policy):
        return keras_vae.VAE(
            GaussianEncoder(LATENT_DIM, hidden_units=(32,)),
            decoder or BernoulliDecoder(SHAPE, hidden_units=(32,)),
            prior=_prior(prior, seed),
            seed=seed,
            input_shape=(None,) + SHAPE,
            **kwargs,
        )


def _float32_copy(vae):
    """The same architecture, weights and seed in float32."""
    copy = _vae("float32", seed=vae.seed)
    copy.set_weights(vae.get_weights())
    return copy


def _products(fn, *args):
    """{(op type, dtype): count} of the matrix products in the graph of `fn`."""
    graph = tf.function(fn).get_concrete_function(*args).graph
    counts = {}
    for op in graph.get_operations():
        if op.type in ("MatMul", "BatchMatMulV2", "_FusedMatMul", "Conv2D", "Conv2DBackpropInput"):
            key = (op.type, op.get_attr("T").name)
            counts[key] = counts.get(key, 0) + 1
    return counts, graph


@pytest.fixture
def x(binary_images):
    return binary_images[:16]


# ------------------------------------------------------------------ dtypes


def test_networks_compute_in_bfloat16_with_float32_weights(x):
    vae = _vae()
    assert vae.dtype_policy.name == MIXED
    dense = [layer for layer in vae._flatten_layers() if isinstance(layer, keras.layers.Dense)]
    assert len(dense) == 4  # encoder hidden + projection, decoder hidden + projection
    for layer in dense:
        assert (layer.compute_dtype, layer.kernel.dtype, layer.bias.dtype) == (
            "bfloat16", "float32", "float32",
        ), layer.path  # fmt: skip
    assert {v.dtype for v in vae.weights} == {"float32"}
    # Every matrix product of the ELBO and of its gradient is a bfloat16 one.
    counts, _ = _products(lambda x: vae.elbo_terms(x)["elbo"], tf.constant(x))
    assert counts == {("MatMul", "bfloat16"): 4}

    def gradient(x):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(vae.elbo_terms(x)["elbo"])
        return tape.gradient(loss, vae.trainable_weights)

    counts, _ = _products(gradient, tf.constant(x))
    assert set(counts) == {("MatMul", "bfloat16")} and counts[("MatMul", "bfloat16")] > 4
    # The gradients reach the float32 weights as float32.
    assert {g.dtype for g in gradient(tf.constant(x))} == {tf.float32}


@pytest.mark.parametrize("prior", [None, "mixture", "vamp"])
def test_distributions_log_probabilities_elbo_and_loss_are_float32(x, prior):
    vae = _vae(prior=prior, objective="iwae", num_samples=3)
    q = vae.encode(x)
    assert (q.dtype, q.distribution.loc.dtype, q.distribution.scale.dtype) == (tf.float32,) * 3
    p = vae.decode(q.sample(seed=(1, 2)))
    assert (p.dtype, p.distribution.logits.dtype, p.log_prob(x).dtype) == (tf.float32,) * 3
    assert vae.prior.distribution().dtype == tf.float32
    assert vae.prior(q.mean()).dtype == "float32"
    assert {v.dtype for v in vae.prior.weights} <= {"float32"}
    for name, value in vae.objective_terms(x).items():
        assert value.dtype == tf.float32, name
    vae.compile()
    logs = vae.test_on_batch(x, return_dict=True)
    assert np.isfinite(list(logs.values())).all()
    assert vae.sample(3, seed=1).mean().dtype == tf.float32
    # The heads keep the model's policy (saved with it) and compute in float32.
    assert vae.decoder.head.dtype_policy.name == MIXED
    assert vae.decoder.head.compute_dtype == "float32"


def test_a_head_under_a_mixed_policy_takes_bfloat16_parameters_on_in_float32():
    head = keras_vae.layers.heads.IndependentNormal((2,), dtype=MIXED)
    params = tf.constant([[0.1, -0.2, 0.3, 0.4]], tf.bfloat16)
    q = head(params)
    assert q.distribution.loc.dtype == tf.float32
    assert q.log_prob(tf.zeros([1, 2])).dtype == tf.float32
    sampling = keras_vae.layers.heads.IndependentBernoulli((3,), convert_to_tensor_fn="mean", dtype=MIXED)
    symbolic = sampling(keras.Input((3,), dtype="bfloat16"))
    assert symbolic.dtype == "float32"


def test_gaussian_data_enter_the_log_likelihood_unrounded():
    # x in [0, 1] with more digits than bfloat16 keeps (8 bits: a rounding of
    # up to 2^-9 near 1): under a Gaussian likelihood of scale 0.01, such a
    # rounding would move log p(x|z) by up to (x - loc) 2^-9 / 0.01^2 nats per
    # pixel. The encoder sees bfloat16 x, the likelihood the data as given.
    vae = _vae(decoder=GaussianDecoder(SHAPE, hidden_units=(32,), scale=0.01))
    x = np.random.default_rng(0).uniform(0.5, 1.0, (4,) + SHAPE).astype("float32")
    rounded = tf.cast(tf.cast(x, tf.bfloat16), tf.float32).numpy()
    assert not np.array_equal(rounded, x)
    state = vae.seed_generator.state.numpy()
    exact = vae.elbo_terms(x)["reconstruction"].numpy()
    vae.seed_generator.state.assign(state)  # the same draw of z
    from_rounded = vae.elbo_terms(rounded)["reconstruction"].numpy()
    # Same encoder input (it rounds x itself), same z: only the data differ.
    assert np.all(exact != from_rounded)


# ------------------------------------------------------------- agreement


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _dense(h, cov, layer, relu, u):
    """A bfloat16 Dense layer on one example, to first order in the roundings.

    Rounding model (Higham & Mary, "A new approach to probabilistic rounding
    error analysis", 2019): each rounding to bfloat16 adds an independent,
    zero-mean error of at most u times the value rounded. Here the input h
    is rounded (u |h_i|) and each weight (u |W_ij|, contributing h_i dW_ij),
    the product h W (accumulated in float32) is rounded (2u |hW_j|: oneDNN
    rounds to nearest, within u, but TensorFlow's own kernel, used with
    TF_ENABLE_ONEDNN_OPTS=0, truncates, within 2u), the bias (u |b_j|) and
    the sum (u |y_j|). `cov` carries, for the error of h, the
    sum over the rounding sources of (bound x sensitivity) outer products:
    propagated as a covariance, it gives at the end the sum of squared
    bounds c_k^2 of Hoeffding's inequality. ReLU passes errors where y > 0.

    Returns:
        `(y, cov, jacobian)`: the output, its error matrix and dy/dh.
    """
    w = np.asarray(layer.kernel, np.float64)
    b = np.asarray(layer.bias, np.float64)
    hw = h @ w
    y = hw + b
    cov = cov + np.diag((u * h) ** 2)
    cov = w.T @ cov @ w + np.diag(u**2 * ((h**2) @ (w**2) + 4 * hw**2 + b**2 + y**2))
    jacobian = w
    if relu:
        on = (y > 0).astype(np.float64)
        y, cov, jacobian = y * on, cov * np.outer(on, on), w * on
    return y, cov, jacobian


def _elbo_error_scale(vae, x, eps, u):
    """Per example: sigma, the root of Hoeffding's sum of squared bounds for
    ELBO_bf16 - ELBO_exact (first order), and the size of the terms summed.

    The encoder's roundings reach loc and the raw scale (`cov_p`); they move
    the KL (d KL / d loc = loc, d KL / d scale = scale - 1/scale, and
    d scale / d raw = sigmoid(raw)) and z = loc + scale * eps (the same eps
    in both models), and through the decoder's Jacobian the logits l, where
    d log p(x|z) / d l = x - sigmoid(l). The decoder's own roundings (`cov_l`,
    from z rounded at its input on) reach the logits only.
    """
    sigmas, magnitudes = [], []
    for pixels, e in zip(x.reshape(len(x), -1).astype(np.float64), eps):
        h, cov = pixels, np.zeros((pixels.size,) * 2)
        for layer in vae.encoder.hidden_layers:
            h, cov, _ = _dense(h, cov, layer, True, u)
        params, cov_p, _ = _dense(h, cov, vae.encoder.params_layer, False, u)
        loc, raw = np.split(params, 2)
        scale = np.logaddexp(0.0, raw) + vae.encoder.min_scale
        h = loc + scale * e
        cov, jacobian = np.zeros((h.size,) * 2), np.eye(h.size)
        for layer in vae.decoder.hidden_layers:
            h, cov, j = _dense(h, cov, layer, True, u)
            jacobian = jacobian @ j
        logits, cov_l, j = _dense(h, cov, vae.decoder.params_layer, False, u)
        g_logits = pixels - _sigmoid(logits)
        g_z = jacobian @ j @ g_logits
        g_params = np.concatenate(
            [g_z - loc, (e * g_z - (scale - 1.0 / scale)) * _sigmoid(raw)]
        )  # d ELBO / d (loc, raw)
        sigmas.append(np.sqrt(g_params @ cov_p @ g_params + g_logits @ cov_l @ g_logits))
        log_px = pixels * logits - np.logaddexp(0.0, logits)
        kl = 0.5 * (-2 * np.log(scale) - 1 + scale**2 + loc**2)
        magnitudes.append(np.sum(np.abs(log_px)) + np.sum(np.abs(kl)))
    return np.array(sigmas), np.array(magnitudes)


def test_the_elbo_agrees_with_float32_within_bfloat16_rounding(prototype_images, monkeypatch):
    x = prototype_images[0][:32]
    mixed = _vae(seed=3)
    reference = _float32_copy(mixed)
    # The float32 model's draw of z, to recover eps.
    codes = []
    call = reference.decoder.call
    monkeypatch.setattr(
        reference.decoder, "call", lambda z, training=None: codes.append(np.asarray(z)) or call(z, training=training)
    )
    # The same seed state: the same stateless draw of eps, in float32 in both.
    np.testing.assert_array_equal(mixed.seed_generator.state, reference.seed_generator.state)
    expected = reference.elbo_terms(x)["elbo"].numpy()
    got = mixed.elbo_terms(x)["elbo"].numpy()
    q = reference.encode(x)
    eps = (codes[0] - q.distribution.loc.numpy()) / q.distribution.scale.numpy()

    sigma, magnitude = _elbo_error_scale(reference, x, eps, BF16_UNIT_ROUNDOFF)
    # Tolerance. Hoeffding: P(|error| > lambda sigma) <= 2 exp(-lambda^2 / 2),
    # 3e-8 per example at lambda = 6 (a worst case adding every bound, all
    # signs aligned, is ~1000 times larger here and would let a bfloat16 sum
    # of the 64 log-probabilities, off by ~0.1 nats, pass). 25% more for the
    # second-order terms neglected (relative size ~ roundings on a path x
    # 2^-8, about 10 x 0.4%); plus the float32 roundings of both models' sums
    # (conftest.float32_atol of the terms' size, once per model).
    float32_allowance = 2 * float32_atol(magnitude)
    tolerance = 1.25 * 6 * sigma + float32_allowance
    difference = np.abs(got - expected)
    assert np.all(difference <= tolerance), (difference / tolerance).max()
    # And the mixed model did round as bfloat16 (not a float32 computation).
    assert difference.max() > float32_allowance


# ------------------------------------------------------- training, saving


def test_a_few_fit_steps_lower_the_loss(prototype_images):
    vae = _vae()
    vae.compile(optimizer=keras_vae.optimizers.FusedAdam(1e-2))
    history = vae.fit(prototype_images[0], epochs=3, batch_size=64, verbose=0).history
    assert np.all(np.isfinite(history["loss"]))
    assert history["loss"][-1] < history["loss"][0]
    assert {v.dtype for v in vae.optimizer.variables if v.dtype.startswith("float")} == {"float32"}


def test_fused_adam_updates_float32_weights_from_bfloat16_products(x):
    def one_step(optimizer):
        vae = _vae()
        vae.compile(optimizer=optimizer)
        vae.train_on_batch(x)
        return vae

    lr = 1e-3
    fused = one_step(keras_vae.optimizers.FusedAdam(lr))
    keras_adam = one_step(keras.optimizers.Adam(lr))
    weights = lambda vae: [np.asarray(w) for w in vae.trainable_weights]  # noqa: E731
    initial = weights(_vae())
    # The same gradients (the same bfloat16 products) and Adam's first step
    # from the same weights, about lr * sign(g). TensorFlow's kernel takes
    # 1 - beta in float32 from beta rounded to float32, Keras in float64:
    # relative differences d1, d2 in m and v, so d1 + d2 / 2 in the step
    # (6.4e-6 for beta_2 = 0.999), plus float32 roundings of |w| + lr.
    d1, d2 = ((1 - float(np.float32(b))) / (1 - b) - 1 for b in (0.9, 0.999))
    for w0, a, b in zip(initial, weights(keras_adam), weights(fused)):
        assert b.dtype == np.float32
        atol = lr * (abs(d1) + abs(d2) / 2) + float32_atol(np.abs(w0) + lr)
        np.testing.assert_allclose(b, a, rtol=0, atol=atol)
        assert np.abs(b - w0).max() > lr / 2  # it moved (by about lr)
    # The fused kernel updates float32 variables with float32 gradients.
    step = tf.function(fused.train_step).get_concrete_function(tf.constant(x)).graph
    updates = [op for op in step.get_operations() if op.type == "ResourceApplyAdam"]
    assert len(updates) == len(fused.trainable_weights)
    assert {op.get_attr("T").name for op in updates} == {"float32"}


def test_saving_and_loading_keeps_the_policy(x, tmp_path):
    vae = _vae(prior="vamp")
    vae.compile()
    vae.fit(x, epochs=1, batch_size=8, verbose=0)
    vae.save(tmp_path / "mixed.keras")
    loaded = keras_vae.saving.load_model(tmp_path / "mixed.keras")
    policies = lambda model: [layer.dtype_policy.name for layer in model._flatten_layers()]  # noqa: E731
    assert policies(loaded) == policies(vae)
    assert len(policies(vae)) > 10 and set(policies(vae)) == {MIXED}
    for a, b in zip(vae.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    counts, _ = _products(lambda x: loaded.elbo_terms(x)["elbo"], tf.constant(x))
    # The networks (the encoder on x and on the VampPrior's pseudo-inputs, the
    # decoder) in bfloat16; the mixture's log-density, two products of the
    # codes with the components' precisions, in float32.
    assert counts == {("MatMul", "bfloat16"): 6, ("MatMul", "float32"): 2}
    # The same computation on the same weights.
    loc = vae.encode(x).mean().numpy()
    np.testing.assert_allclose(
        loaded.encode(x).mean().numpy(), loc, rtol=0, atol=BF16_UNIT_ROUNDOFF * np.abs(loc).max()
    )


# ------------------------------------------------------------ evaluation


def test_importance_sampled_log_likelihood_runs_mixed_and_returns_float32(x):
    vae = _vae(prior="mixture")
    log_px = evaluation.importance_sampled_log_likelihood(vae, x, num_samples=20, max_elements=2000)
    assert log_px.dtype == tf.float32 and log_px.shape == (len(x),)
    assert np.all(np.isfinite(log_px.numpy()))
    results = evaluation.evaluate(vae, [x[:8], x[8:]], num_samples=10, verbose=0)
    assert np.isfinite(results["nll"]) and np.isfinite(results["elbo"])


def test_a_loaded_float32_model_can_run_mixed_and_back(x):
    reference = _vae("float32")
    model = precision.set_model_dtype_policy(_float32_copy(reference), MIXED)
    counts, _ = _products(lambda x: model.elbo_terms(x)["elbo"], tf.constant(x))
    assert counts == {("MatMul", "bfloat16"): 4}
    assert model.encode(x).dtype == tf.float32
    precision.set_model_dtype_policy(model, "float32")
    counts, _ = _products(lambda x: model.elbo_terms(x)["elbo"], tf.constant(x))
    assert counts == {("MatMul", "float32"): 4}
    with pytest.raises(ValueError, match="variable dtype float32"):
        precision.set_model_dtype_policy(model, "float64")


# ---------------------------------------------------------- config, CLI


def test_build_vae_makes_every_layer_under_the_configs_policy():
    global_policy = keras.config.dtype_policy().name
    config = training.TrainConfig(
        architecture="conv", hidden_units=(4, 8), latent_dim=2, prior="mixture",
        prior_components=3, dtype_policy=MIXED,
    )  # fmt: skip
    vae = training.build_vae(config)
    assert keras.config.dtype_policy().name == global_policy
    # The conv networks' layers too (made by keras_vae.architectures).
    compute = {l.compute_dtype for l in vae._flatten_layers() if isinstance(l, (keras.layers.Conv2D, keras.layers.Dense))}
    assert compute == {"bfloat16"}
    assert vae.encode(np.zeros((2, 28, 28, 1), "float32")).dtype == tf.float32
    assert training.build_vae(training.TrainConfig(latent_dim=2)).dtype_policy.name == "float32"
    with pytest.raises(ValueError, match="dtype_policy"):
        training.TrainConfig(dtype_policy="mixed_float16")


def test_bfloat16_on_a_cpu_without_native_support_warns_but_runs(monkeypatch):
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("no warning with a GPU")
    with pytest.warns(UserWarning, match="no native bfloat16"):
        assert precision.check_bfloat16_support(MIXED, flags={"avx2", "fma", "avx512f"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not precision.check_bfloat16_support(MIXED, flags={"avx512_bf16"})
        assert not precision.check_bfloat16_support(MIXED, flags={"amx_bf16"})
        assert not precision.check_bfloat16_support("float32", flags=set())
    monkeypatch.setattr(precision, "cpu_flags", lambda path=None: {"avx2"})
    with pytest.warns(UserWarning, match="AVX512_BF16|avx512_bf16"):
        vae = training.build_vae(training.TrainConfig(latent_dim=2, hidden_units=(8,), dtype_policy=MIXED))
    assert vae.dtype_policy.name == MIXED


def _tool(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"mp_tools_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_and_evaluate_clis_take_a_dtype_policy(mock_tfds, tmp_path):
    output_dir = tmp_path / "run"
    argv = [
        "--epochs", "1", "--take", "64", "--hidden-units", "16", "--latent-dim", "2",
        "--batch-size", "32", "--verbose", "0", "--eval-samples", "5", "--no-plots",
        "--export-dir", "", "--output-dir", str(output_dir), "--dtype-policy", MIXED,
    ]  # fmt: skip
    evaluate = _tool("evaluate")
    with mock_tfds(num_examples=64, max_value=2):
        report = _tool("train").main(argv)
        assert np.isfinite(report["splits"]["validation"]["nll"])
        with open(output_dir / "config.json") as f:
            assert json.load(f)["dtype_policy"] == MIXED
        assert keras_vae.saving.load_model(output_dir / "best.keras").dtype_policy.name == MIXED
        common = ["--take", "64", "--samples", "5", "--verbose", "0"]
        results = evaluate.main([str(output_dir / "best.keras"), *common, "--dtype-policy", "float32"])
    written = output_dir / "evaluation-best-validation-k5-n64-float32.json"
    with open(written) as f:
        record = json.load(f)
    assert record["dtype_policy"] == "float32"
    assert record["splits"]["validation"]["nll"] == pytest.approx(results["validation"]["nll"])


def test_evaluate_refuses_a_dtype_policy_for_an_export_and_unknown_policies():
    from keras_vae.exported import ExportedVAE

    evaluate = _tool("evaluate")
    export = ExportedVAE.__new__(ExportedVAE)  # its type is what is checked
    with pytest.raises(ValueError, match="an export computes in the precision"):
        evaluate.set_dtype_policy(export, MIXED, "saved_models/m/1")
    with pytest.raises(SystemExit):
        evaluate.parse_args(["model.keras", "--dtype-policy", "float16"])
