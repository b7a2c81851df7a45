"""Tests of `keras_vae.VAE`: training with `fit` on every input form, the loss
and metrics (beta-weighted negative ELBO, as a variable), the ELBO as a lower
bound of an importance-sampled log p(x), shapes of the public methods, saving
and reloading, reuse of the layers in a user's model, refused inputs, and a
learning check.

Models are tiny (8x8x1 binary images, latent 2, 32 hidden units): the file
takes about a minute of CPU time, most of it tracing `train_step`. One trained
model is shared by the tests that only read it (`trained`, module scope);
tests that train or change `beta` make their own.
"""

import json
import math
import types

import keras
import re

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import keras_vae
from conftest import float32_atol
from keras_vae.models import InputError
from keras_vae.layers import BernoulliDecoder
from keras_vae.layers import GaussianEncoder

tfd = tfp.distributions

METRICS = {"loss", "reconstruction", "kl", "elbo"}


@pytest.fixture(scope="module")
def trained(module_prototype_images, make_vae):
    """A small VAE evaluated once (untrained) and then fit for 5 epochs.

    Tests using it must not train it or change `beta`.
    """
    x, labels = module_prototype_images
    vae = make_vae(seed=0)
    initial = vae.evaluate(x, batch_size=64, verbose=0, return_dict=True)
    history = vae.fit(x, epochs=5, batch_size=64, verbose=0)
    return types.SimpleNamespace(vae=vae, x=x, labels=labels, initial=initial, history=history)


def _assert_metric_identities(logs, beta, rtol=1e-5):
    """loss = -(reconstruction - beta * kl) and elbo = reconstruction - kl."""
    recon, kl = np.asarray(logs["reconstruction"]), np.asarray(logs["kl"])
    np.testing.assert_allclose(logs["loss"], -(recon - beta * kl), rtol=rtol)
    np.testing.assert_allclose(logs["elbo"], recon - kl, rtol=rtol)


# ---------------------------------------------------------------- fit / evaluate


def _array(x, labels):
    return {"x": x}


def _array_and_labels(x, labels):
    return {"x": x, "y": labels}


def _dataset_of_x_tuples(x, labels):
    return {"x": tf.data.Dataset.from_tensor_slices((x,)).batch(64)}


def _dataset_of_tfds_dicts(x, labels):
    # binarized_mnist-style: uint8 images in {0, 1} under "image", plus a label.
    data = {"image": x.astype("uint8"), "label": labels}
    return {"x": tf.data.Dataset.from_tensor_slices(data).batch(64)}


INPUT_FORMS = {
    "numpy_array": _array,
    "numpy_x_and_y": _array_and_labels,
    "dataset_of_x_tuples": _dataset_of_x_tuples,
    "dataset_of_uint8_image_label_dicts": _dataset_of_tfds_dicts,
}


@pytest.mark.parametrize("form", list(INPUT_FORMS))
def test_fit_and_evaluate_report_elbo_metrics_for_every_input_form(
    make_vae, form, prototype_images
):
    x, labels = prototype_images
    x, labels = x[:128], labels[:128]
    vae = make_vae(seed=0)
    assert not vae.built
    kwargs = INPUT_FORMS[form](x, labels)
    batching = {} if isinstance(kwargs["x"], tf.data.Dataset) else {"batch_size": 64}

    history = vae.fit(epochs=2, verbose=0, **kwargs, **batching)

    assert vae.built  # built by fit, not only traced
    assert set(history.history) == METRICS
    assert all(len(v) == 2 for v in history.history.values())
    assert all(np.isfinite(v).all() for v in history.history.values())
    assert int(vae.optimizer.iterations) == 2 * 2
    for epoch in range(2):
        _assert_metric_identities({k: v[epoch] for k, v in history.history.items()}, 1.0)

    logs = vae.evaluate(verbose=0, return_dict=True, **kwargs, **batching)
    assert set(logs) == METRICS
    _assert_metric_identities(logs, 1.0)
    assert logs["kl"] > 0 and logs["reconstruction"] < 0


def test_uint8_dict_input_gives_the_same_elbo_as_float_array(make_vae, prototype_images):
    # uint8 {0, 1} images are cast, not rescaled: same numbers as float input.
    x, labels = prototype_images
    x = x[:128]
    vae = make_vae(seed=0, input_shape=(None, 8, 8, 1))
    state = np.array(vae.seed_generator.state)
    from_float = vae.evaluate(x, batch_size=64, verbose=0, return_dict=True)
    vae.seed_generator.state.assign(state)
    dicts = tf.data.Dataset.from_tensor_slices(
        {"image": x.astype("uint8"), "label": labels[:128]}
    ).batch(64)
    from_uint8 = vae.evaluate(dicts, verbose=0, return_dict=True)
    for key in METRICS:
        assert from_uint8[key] == pytest.approx(from_float[key], rel=1e-6)


def test_loss_is_negative_beta_weighted_elbo(prototype_images):
    x = prototype_images[0][:256]
    keras.utils.set_random_seed(0)

    class CountingVAE(keras_vae.VAE):
        """Counts traces: the Python body of a step runs only when traced."""

        train_traces = 0
        test_traces = 0

        def train_step(self, data):
            self.train_traces += 1
            return super().train_step(data)

        def test_step(self, data):
            self.test_traces += 1
            return super().test_step(data)

    vae = CountingVAE(
        GaussianEncoder(2, hidden_units=(32,)),
        BernoulliDecoder((8, 8, 1), hidden_units=(32,)),
        beta=0.5,
        seed=0,
    )
    vae.compile(optimizer=keras.optimizers.Adam(1e-2))
    assert float(vae.beta) == 0.5

    history = vae.fit(x, epochs=2, batch_size=64, verbose=0)
    for epoch in range(2):
        _assert_metric_identities({k: v[epoch] for k, v in history.history.items()}, 0.5)

    state = np.array(vae.seed_generator.state)
    first = vae.evaluate(x, batch_size=64, verbose=0, return_dict=True)
    _assert_metric_identities(first, 0.5)
    # beta != 1 makes the loss differ from -elbo by (1 - beta) * kl.
    assert first["kl"] > 0.1
    assert first["loss"] == pytest.approx(-first["elbo"] - 0.5 * first["kl"], rel=1e-5)
    assert first["loss"] != pytest.approx(-first["elbo"], rel=1e-3)

    # Change beta between calls: the already traced steps must read the new value.
    traces = (vae.train_traces, vae.test_traces)
    vae.beta.assign(2.0)
    vae.seed_generator.state.assign(state)  # same z samples as `first`
    second = vae.evaluate(x, batch_size=64, verbose=0, return_dict=True)
    assert (vae.train_traces, vae.test_traces) == traces
    assert second["reconstruction"] == pytest.approx(first["reconstruction"], rel=1e-6)
    assert second["kl"] == pytest.approx(first["kl"], rel=1e-6)
    _assert_metric_identities(second, 2.0)
    assert second["loss"] - first["loss"] == pytest.approx(1.5 * first["kl"], rel=1e-4)

    history = vae.fit(x, epochs=1, batch_size=64, verbose=0)
    assert (vae.train_traces, vae.test_traces) == traces
    _assert_metric_identities({k: v[0] for k, v in history.history.items()}, 2.0)

    vae.beta.assign(0.0)
    third = vae.evaluate(x, batch_size=64, verbose=0, return_dict=True)
    assert third["loss"] == pytest.approx(-third["reconstruction"], rel=1e-6)
    assert (vae.train_traces, vae.test_traces) == traces


# ---------------------------------------------------------------- the bound


def _importance_sampled_log_px(vae, x, k, seed):
    """log p(x) ~= logsumexp_i [log p(x|z_i) + log p(z_i) - log q(z_i|x)] - log k."""
    q = vae.encoder(x)
    z = q.sample(k, seed=seed)  # [k, B, L]
    log_px_given_z = vae.decoder(z).log_prob(x)  # [k, B]
    log_pz = vae.prior.distribution().log_prob(z)  # [k, B]
    log_qz = q.log_prob(z)  # [k, B]
    return tf.reduce_logsumexp(log_px_given_z + log_pz - log_qz, axis=0) - math.log(k)


def test_elbo_is_below_importance_sampled_log_likelihood(trained):
    vae, x = trained.vae, trained.x[:64]
    log_px = _importance_sampled_log_px(vae, x, k=500, seed=tf.constant([1, 2]))
    elbo = np.mean([vae.elbo(x, num_samples=20).numpy() for _ in range(5)], axis=0)

    assert log_px.shape == (64,) and elbo.shape == (64,)
    mean_log_px = float(tf.reduce_mean(log_px))
    mean_elbo = float(np.mean(elbo))
    gap = mean_log_px - mean_elbo
    # ELBO <= log p(x); the gap is E_q[KL(q(z|x) || p(z|x))]-sized: small, positive.
    assert mean_elbo <= mean_log_px
    assert 0.0 < gap < 3.0, (mean_elbo, mean_log_px)
    # Nearly every example individually (Monte Carlo noise allows a little slack).
    assert np.mean(log_px.numpy() - elbo > -0.5) > 0.95
    # The importance-sampled bound tightens with k: k=500 >= k=5 on average.
    log_px_5 = _importance_sampled_log_px(vae, x, k=5, seed=tf.constant([1, 2]))
    assert mean_log_px >= float(tf.reduce_mean(log_px_5))
    # And the model's own terms agree with the decomposition used here.
    terms = vae.elbo_terms(x, num_samples=200)
    q = vae.encoder(x)
    np.testing.assert_allclose(
        terms["kl"], tfd.kl_divergence(q, vae.prior.distribution()), rtol=1e-6
    )


# ---------------------------------------------------------------- shapes


def test_public_methods_return_documented_shapes(trained):
    vae, x = trained.vae, trained.x[:10]

    assert vae.elbo(x).shape == (10,)

    q = vae.encoder(x)
    assert q.batch_shape == [10] and q.event_shape == [2]
    q2 = vae.encode(x)
    np.testing.assert_array_equal(q2.mean(), q.mean())

    p = vae.decoder(q.sample(seed=tf.constant([0, 1])))
    assert p.batch_shape == [10] and p.event_shape == [8, 8, 1]
    assert vae.decode(q.mean()).event_shape == [8, 8, 1]

    samples = vae.sample(7)
    assert samples.batch_shape == [7]
    mean = samples.mean().numpy()
    assert mean.shape == (7, 8, 8, 1)
    assert np.all((mean > 0) & (mean < 1))

    recon = vae.reconstruct(x)
    assert recon.batch_shape == [10] and recon.mean().shape == x.shape
    assert vae.reconstruct(x, sample_latent=True).mean().shape == x.shape

    out = vae(x)
    assert out.shape == x.shape
    np.testing.assert_allclose(out, recon.mean(), rtol=1e-6)
    predicted = vae.predict(x, batch_size=4, verbose=0)
    assert predicted.shape == x.shape
    np.testing.assert_allclose(predicted, out, rtol=1e-5, atol=1e-7)


def test_elbo_terms_average_several_samples_per_example(trained):
    vae, x = trained.vae, trained.x[:8]
    terms = vae.elbo_terms(x, num_samples=50)
    assert set(terms) == {"reconstruction", "kl", "elbo"}
    assert all(v.shape == (8,) for v in terms.values())
    np.testing.assert_allclose(terms["elbo"], terms["reconstruction"] - terms["kl"], rtol=1e-6)
    # The analytic KL does not depend on the number of samples.
    np.testing.assert_allclose(terms["kl"], vae.elbo_terms(x)["kl"], rtol=1e-6)
    # Averaging 50 samples shrinks the spread of the estimate (~ 1/sqrt(50)).
    one = np.stack([vae.elbo(x).numpy() for _ in range(20)])
    fifty = np.stack([vae.elbo(x, num_samples=50).numpy() for _ in range(20)])
    assert fifty.std(axis=0).mean() < 0.4 * one.std(axis=0).mean()
    np.testing.assert_allclose(fifty.mean(0), one.mean(0), atol=1.0)


def test_sample_without_seed_draws_new_codes_each_call(trained):
    vae = trained.vae
    assert not np.array_equal(vae.sample(3).mean(), vae.sample(3).mean())


def test_sample_with_same_int_seed_is_reproducible(trained):
    vae = trained.vae
    np.testing.assert_array_equal(vae.sample(3, seed=7).mean(), vae.sample(3, seed=7).mean())


# ---------------------------------------------------------------- learning


def test_fit_lowers_loss_clearly_on_structured_binary_images(trained):
    initial = trained.initial["loss"]
    losses = trained.history.history["loss"]
    # Untrained: about 64 * log(2) = 44 nats for 64 coin-flip pixels.
    assert initial == pytest.approx(64 * math.log(2), rel=0.1)
    assert losses[-1] < 0.6 * initial, (initial, losses)
    assert losses[-1] < losses[0]
    assert trained.history.history["elbo"][-1] > trained.history.history["elbo"][0] + 10
    logs = trained.vae.evaluate(trained.x, batch_size=64, verbose=0, return_dict=True)
    assert logs["loss"] < 0.6 * initial


# ---------------------------------------------------------------- saving


def test_saved_model_reloads_with_identical_outputs_and_keeps_training(
    make_vae, prototype_images, tmp_path
):
    x = prototype_images[0]
    vae = make_vae(seed=0, beta=0.5)
    first = vae.fit(x, epochs=2, batch_size=64, verbose=0)
    vae.beta.assign(0.7)  # a value that is neither the default nor the config's
    path = str(tmp_path / "vae.keras")
    vae.save(path)

    loaded = keras.models.load_model(path)  # default safe_mode=True

    assert type(loaded) is keras_vae.VAE and loaded.built
    assert json.loads(json.dumps(loaded.get_config())) == json.loads(
        json.dumps(vae.get_config())
    )
    assert float(loaded.beta) == pytest.approx(0.7)
    assert len(loaded.weights) == len(vae.weights)
    for a, b in zip(vae.weights, loaded.weights):
        np.testing.assert_array_equal(np.array(a), np.array(b), err_msg=a.path)
    assert len(loaded.optimizer.variables) == len(vae.optimizer.variables)
    for a, b in zip(vae.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(np.array(a), np.array(b), err_msg=a.path)
    assert int(loaded.optimizer.iterations) == 2 * 8

    np.testing.assert_array_equal(
        loaded.predict(x[:32], verbose=0), vae.predict(x[:32], verbose=0)
    )
    q, q_loaded = vae.encoder(x[:32]), loaded.encoder(x[:32])
    np.testing.assert_array_equal(q_loaded.mean(), q.mean())
    np.testing.assert_array_equal(q_loaded.stddev(), q.stddev())
    # Same weights and same seed state: same stochastic ELBO.
    loaded.seed_generator.state.assign(vae.seed_generator.state)
    np.testing.assert_array_equal(loaded.elbo(x[:32]), vae.elbo(x[:32]))

    # Training goes on from where it stopped (optimizer state included).
    more = loaded.fit(x, epochs=2, batch_size=64, verbose=0)
    assert int(loaded.optimizer.iterations) == 4 * 8
    assert more.history["loss"][0] < first.history["loss"][-1] + 1.0
    assert more.history["loss"][-1] < first.history["loss"][-1]
    _assert_metric_identities({k: v[-1] for k, v in more.history.items()}, 0.7)


def test_saved_model_of_an_unfit_model_built_by_input_shape_keeps_its_weights(
    make_vae, binary_images, tmp_path
):
    vae = make_vae(seed=3, input_shape=(None, 8, 8, 1), compile=False)
    path = str(tmp_path / "unfit.keras")
    vae.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(
        loaded.predict(binary_images, verbose=0), vae.predict(binary_images, verbose=0)
    )


# ---------------------------------------------------------------- layers in a user model


class _UserVAE(keras.Model):
    """A user's own model: keras_vae layers, its own ELBO and train_step."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.encoder = GaussianEncoder(2, hidden_units=(32,))
        self.decoder = BernoulliDecoder((8, 8, 1), hidden_units=(32,))
        self.seed_generator = keras.random.SeedGenerator(0)
        self.loss_tracker = keras.metrics.Mean(name="loss")

    def build(self, input_shape):
        if not self.encoder.built:
            self.encoder.build(input_shape)
        if not self.decoder.built:
            self.decoder.build((None, self.encoder.latent_dim))

    def call(self, x):
        return self.decoder(self.encoder(x).mean()).mean()

    def negative_elbo(self, x, training=False):
        q = self.encoder(x, training=training)
        eps = keras.random.normal(tf.shape(q.mean()), seed=self.seed_generator)
        z = q.mean() + q.stddev() * eps
        prior = tfd.Independent(tfd.Normal(tf.zeros(2), tf.ones(2)), 1)
        elbo = self.decoder(z, training=training).log_prob(x) - tfd.kl_divergence(q, prior)
        return -tf.reduce_mean(elbo)

    def train_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            loss = self.negative_elbo(x, training=True)
        grads = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    @property
    def metrics(self):
        return [self.loss_tracker]


def test_layers_train_inside_a_users_subclassed_model(prototype_images):
    x = prototype_images[0]
    keras.utils.set_random_seed(0)
    model = _UserVAE()
    model.build((None, 8, 8, 1))
    assert len(model.trainable_weights) == 8  # 2 Dense layers each side
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = float(model.negative_elbo(x))
    history = model.fit(x, epochs=4, batch_size=64, verbose=0)
    after = float(model.negative_elbo(x))
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert after < 0.7 * before, (before, after)
    assert model(x[:3]).shape == (3, 8, 8, 1)


# ---------------------------------------------------------------- refused inputs


def _nan_images(x):
    x = x.copy()
    x[:, 3, 4, 0] = np.nan
    return x


# name -> (make the bad input from good x, regex naming expected and received)
BAD_INPUTS = {
    "wrong_shape": (
        lambda x: x.reshape(len(x), 64),
        r"Expected inputs of shape \(batch, 8, 8, 1\)\. Received: x\.shape ?= ?.*64",
    ),
    "string_dtype": (
        lambda x: tf.fill(x.shape, "0"),
        r"Expected inputs with a real numeric dtype .*Received: x\.dtype=string",
    ),
    "complex_dtype": (
        lambda x: x.astype("complex64"),
        r"Expected inputs with a real numeric dtype .*Received: x\.dtype=complex64",
    ),
    "uint8_0_to_255": (
        lambda x: (x * 255).astype("uint8"),
        r"Expected values in \[0, 1\] for the BernoulliDecoder likelihood.*"
        r"Received.*255",
    ),
    "nan_pixel": (
        _nan_images,
        r"Expected values in \[0, 1\] for the BernoulliDecoder likelihood.*Received.*(?i:nan)",
    ),
    "dict_without_image_key": (
        lambda x: {"pixels": x},
        r"Expected a dict input to hold the images under the key 'image'.*"
        r"Received keys: \['pixels'\]",
    ),
}


def _run(op, vae, bad):
    if op == "fit":
        if isinstance(bad, tf.Tensor) and bad.dtype == tf.string:
            # Keras' array adapter refuses string tensors itself; go through tf.data.
            bad = tf.data.Dataset.from_tensor_slices(bad).batch(16)
            return vae.fit(bad, epochs=1, verbose=0)
        return vae.fit(bad, epochs=1, batch_size=16, verbose=0)
    if op == "evaluate":
        if isinstance(bad, tf.Tensor) and bad.dtype == tf.string:
            bad = tf.data.Dataset.from_tensor_slices(bad).batch(16)
            return vae.evaluate(bad, verbose=0)
        return vae.evaluate(bad, batch_size=16, verbose=0)
    return vae.elbo(bad)


OPS = ["fit", "evaluate", "elbo"]


@pytest.mark.parametrize("case", list(BAD_INPUTS))
@pytest.mark.parametrize("op", OPS)
def test_refused_input_leaves_every_variable_unchanged(
    trained, op, case, model_state, changed_variables
):
    """All variables, including the optimizer iterations and the seed state."""
    make_bad, message = BAD_INPUTS[case]
    vae = trained.vae
    bad = make_bad(trained.x[:32])
    before = model_state(vae)
    with pytest.raises(ValueError, match=message):
        _run(op, vae, bad)
    assert changed_variables(before, model_state(vae)) == []


def test_runtime_shape_error_shows_the_whole_received_shape(trained):
    # A dataset of unknown rank: the shape is checked at run time, in the
    # pipeline, and the error shows the whole shape received.
    bad = np.zeros((32, 8, 8, 1, 2), "float32")
    ds = tf.data.Dataset.from_generator(
        lambda: iter([bad]), output_signature=tf.TensorSpec(None, tf.float32)
    )
    with pytest.raises(ValueError, match=r"Received: x\.shape ?= ?\[32 8 8 1 2\]"):
        trained.vae.evaluate(ds, verbose=0)
    # An array of that shape is refused at once, from its static shape.
    with pytest.raises(ValueError, match=r"Received: x\.shape=\(32, 8, 8, 1, 2\)"):
        trained.vae.evaluate(bad, batch_size=32, verbose=0)


def test_wrong_shape_after_a_traced_step_raises_value_error(make_vae, binary_images):
    vae = make_vae(seed=0)
    vae.fit(binary_images[:32], epochs=1, batch_size=32, verbose=0)
    # In this order: the same-rank batch is retraced with (None, 8, 8, None),
    # the rank-3 one with an unknown rank.
    outcomes = {}
    for name, shape in [("same_rank", (32, 8, 8, 3)), ("missing_channel_axis", (32, 8, 8))]:
        try:
            vae.fit(np.zeros(shape, "float32"), epochs=1, batch_size=32, verbose=0)
            outcomes[name] = "no error"
        except Exception as e:  # noqa: BLE001 - the type is what is checked
            expected = "Expected inputs of shape (batch, 8, 8, 1)"
            ok = isinstance(e, ValueError) and expected in str(e)
            outcomes[name] = "ValueError" if ok else type(e).__name__
    assert outcomes == {"same_rank": "ValueError", "missing_channel_axis": "ValueError"}


def _bad_batch_stream(x, bad_batch, batch_size=32):
    x = x.copy()
    x[bad_batch * batch_size + 5] = 2.0
    return tf.data.Dataset.from_tensor_slices(x).batch(batch_size)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["no_xla", "xla"])
@pytest.mark.parametrize("steps_per_execution", [1, 2, 4])
def test_a_bad_batch_in_a_stream_is_never_trained_on(
    make_vae, prototype_images, jit_compile, steps_per_execution
):
    # 6 batches of 32, the 4th (step 3) bad. The check runs in the input
    # pipeline, ahead of the step: the 3 good batches train, the bad one
    # never does, whatever the execution groups and with XLA (which drops
    # assertions inside a compiled step).
    x = prototype_images[0][:192]

    def trained(ds):
        vae = make_vae(seed=0, compile=False, input_shape=(None, 8, 8, 1))
        vae.compile(
            optimizer=keras.optimizers.Adam(1e-2),
            jit_compile=jit_compile,
            steps_per_execution=steps_per_execution,
        )
        try:
            vae.fit(ds, epochs=1, verbose=0)
        except InputError as e:
            return vae, e
        return vae, None

    vae, error = trained(_bad_batch_stream(x, bad_batch=3))
    assert error is not None and error.step == 3, error
    assert re.search(
        r"Expected values in \[0, 1\].*Received at training step 3: a batch with min, max, "
        r"any NaN or inf = 0 2 0 \(refused: no update was made\)",
        str(error),
    ), str(error)
    assert int(vae.optimizer.iterations) == 3
    # The same weights as training on the three good batches alone.
    reference, none = trained(tf.data.Dataset.from_tensor_slices(x[:96]).batch(32))
    assert none is None
    for a, b in zip(vae.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=float32_atol(np.abs(b).max() + 1))
    assert int(vae.seed_generator.state[1]) == int(reference.seed_generator.state[1])


def test_an_array_with_a_bad_example_is_refused_before_any_step(
    make_vae, prototype_images, model_state, changed_variables
):
    # Arrays are checked whole, before training starts: nothing trains, and
    # the error names the first bad example.
    x = prototype_images[0][:128].copy()
    x[100] = 2.0
    vae = make_vae(seed=0, input_shape=(None, 8, 8, 1))
    vae.optimizer.build(vae.trainable_variables)
    before = model_state(vae)
    with pytest.raises(
        InputError,
        match=r"Expected values in \[0, 1\].*Received: values with min=0, max=2 "
        r"\(the first such example is number 100 of 128\)",
    ):
        vae.fit(x, epochs=1, batch_size=32, shuffle=False, verbose=0)
    assert changed_variables(before, model_state(vae)) == []
    with pytest.raises(InputError, match="number 100 of 128"):  # also as validation data
        vae.fit(x[:64], validation_data=(x,), epochs=1, batch_size=32, verbose=0)
    assert changed_variables(before, model_state(vae)) == []


def test_generators_and_py_datasets_are_checked_batch_by_batch(make_vae, prototype_images):
    x = prototype_images[0][:128].copy()
    x[100] = 2.0  # in batch 3 of 4

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return x[32 * i: 32 * (i + 1)]

    for make_input in (lambda: ((x[32 * i: 32 * (i + 1)],) for i in range(4)), Batches):
        vae = make_vae(seed=0, input_shape=(None, 8, 8, 1))
        with pytest.raises(InputError, match=r"Expected values in \[0, 1\].*max=2"):
            vae.fit(make_input(), epochs=1, shuffle=False, verbose=0)
        assert int(vae.optimizer.iterations) == 3


def test_inputs_are_not_checked_with_validate_inputs_false(make_vae, prototype_images):
    x = prototype_images[0][:64].copy()
    x[10] = 2.0
    vae = make_vae(seed=0, validate_inputs=False)
    vae.fit(x, epochs=1, batch_size=32, verbose=0)  # trains on it: the user's choice
    assert int(vae.optimizer.iterations) == 2
    assert keras_vae.VAE.from_config(vae.get_config()).validate_inputs is False


@pytest.mark.parametrize("validate_inputs", [True, False])
def test_datasets_given_to_fit_run_without_the_autotune_model_unless_they_choose(
    make_vae, prototype_images, validate_inputs
):
    """A tf.data input gets options.autotune.enabled = False (tf.data's
    autotuning model stalls each iterator Keras drops, once per epoch:
    keras_vae/_internal/pipelines.py); a dataset that sets it keeps its
    choice; the batches are unchanged."""
    x = prototype_images[0][:64]
    vae = make_vae(seed=0, validate_inputs=validate_inputs, input_shape=(None, 8, 8, 1))
    ds = tf.data.Dataset.from_tensor_slices(x).batch(32)
    given = vae._checked(ds)
    assert given.options().autotune.enabled is False
    np.testing.assert_array_equal(np.concatenate([b.numpy() for b in given]), x)
    for choice in (True, False):
        options = tf.data.Options()
        options.autotune.enabled = choice
        assert vae._checked(ds.with_options(options)).options().autotune.enabled is choice
    vae.fit(ds, epochs=2, verbose=0)
    assert int(vae.optimizer.iterations) == 4


def test_negative_beta_is_refused_at_construction(make_vae):
    with pytest.raises(
        ValueError, match=r"Expected `beta` to be a float >= 0\. Received: beta=-0\.5"
    ):
        make_vae(beta=-0.5)


@pytest.mark.parametrize("beta", [float("nan"), float("inf")])
def test_non_finite_beta_is_refused_at_construction(make_vae, beta):
    with pytest.raises(ValueError, match=r"Expected `beta`.*Received: beta="):
        make_vae(beta=beta)


def test_fit_refuses_a_negative_beta_assigned_to_the_variable(
    make_vae, binary_images, model_state, changed_variables
):
    vae = make_vae(seed=0, input_shape=(None, 8, 8, 1))
    vae.optimizer.build(vae.trainable_variables)
    vae.beta.assign(-1.0)
    before = model_state(vae)
    with pytest.raises(ValueError, match=r"Expected `beta`.*Received: beta ?= ?\[?-1"):
        vae.fit(binary_images, epochs=1, batch_size=32, verbose=0)
    assert changed_variables(before, model_state(vae)) == []


@pytest.mark.parametrize("op", OPS)
def test_decoder_event_shape_mismatch_is_refused_before_any_update(op, binary_images):
    keras.utils.set_random_seed(0)
    vae = keras_vae.VAE(
        GaussianEncoder(2, hidden_units=(16,)),
        BernoulliDecoder((28, 28, 1), hidden_units=(16,)),
    )
    vae.compile(optimizer="adam")
    with pytest.raises(
        ValueError,
        match=r"Expected the decoder's event_shape to equal the shape of one input "
        r"example \(8, 8, 1\)\. Received: decoder\.event_shape=\(28, 28, 1\)",
    ):
        _run(op, vae, binary_images)
    assert not vae.built
    assert int(vae.optimizer.iterations) == 0
    assert not vae.optimizer.built


def test_decoder_event_shape_mismatch_is_refused_at_construction_with_input_shape():
    with pytest.raises(ValueError, match=r"\(8, 8, 1\).*decoder\.event_shape=\(28, 28, 1\)"):
        keras_vae.VAE(
            GaussianEncoder(2, hidden_units=(16,)),
            BernoulliDecoder((28, 28, 1), hidden_units=(16,)),
            input_shape=(None, 8, 8, 1),
        )


def test_prior_with_another_latent_dim_is_refused():
    with pytest.raises(
        ValueError,
        match=r"Expected a prior with the encoder's latent_dim=2\. Received: prior\.latent_dim=3",
    ):
        keras_vae.VAE(
            GaussianEncoder(2, hidden_units=(16,)),
            BernoulliDecoder((8, 8, 1), hidden_units=(16,)),
            prior=keras_vae.StandardNormalPrior(3),
        )


# ------------------------------------------------- fast defaults (issue 14)


def test_compile_defaults_to_automatic_steps_per_execution_that_divide_the_epoch(make_vae, prototype_images):
    from keras_vae.models.vae import AUTO_STEPS_PER_EXECUTION

    x = prototype_images[0][:64]
    vae = make_vae(seed=0, compile=False, input_shape=(None, 8, 8, 1))
    vae.compile()
    assert vae.steps_per_execution == AUTO_STEPS_PER_EXECUTION
    assert vae.get_compile_config()["steps_per_execution"] == "auto"
    # An endless stream with 23 steps per epoch: 23 per call (the largest
    # divisor up to the maximum), so no epoch runs extra steps.
    stream = tf.data.Dataset.from_tensor_slices(x).batch(4).repeat()
    vae.fit(stream, steps_per_epoch=23, epochs=2, verbose=0)
    assert vae.steps_per_execution == 23 and int(vae.optimizer.iterations) == 46
    vae.fit(stream, steps_per_epoch=14, epochs=1, verbose=0)
    assert vae.steps_per_execution == 14 and int(vae.optimizer.iterations) == 60
    # Arrays: the last call stops where the data end.
    vae.fit(x, batch_size=4, epochs=1, verbose=0)
    assert int(vae.optimizer.iterations) == 76
    # A number is used as given; eagerly, one step per call.
    fixed = make_vae(seed=0, compile=False)
    fixed.compile(optimizer="adam", steps_per_execution=3)
    assert fixed.steps_per_execution == 3 and fixed.get_compile_config()["steps_per_execution"] == 3
    eager = make_vae(seed=0, compile=False)
    eager.compile(run_eagerly=True)
    assert eager.steps_per_execution == 1


def test_automatic_steps_per_execution_survives_save_and_load(make_vae, prototype_images, tmp_path):
    vae = make_vae(seed=0, compile=False, input_shape=(None, 8, 8, 1))
    vae.compile()
    path = str(tmp_path / "m.keras")
    vae.save(path)
    loaded = keras_vae.saving.load_model(path)
    assert loaded.get_compile_config()["steps_per_execution"] == "auto"
    stream = tf.data.Dataset.from_tensor_slices(prototype_images[0][:40]).batch(4).repeat()
    loaded.fit(stream, steps_per_epoch=10, epochs=1, verbose=0)
    assert loaded.steps_per_execution == 10 and int(loaded.optimizer.iterations) == 10


@pytest.mark.parametrize("levers", [{}, {"steps_per_execution": 5}], ids=["auto", "5"])
def test_fast_settings_train_the_same_model_as_one_step_per_call(make_vae, prototype_images, levers):
    # Same seed, same data: several steps per compiled call change nothing
    # but the float32 rounding of the same arithmetic. (Not so XLA, which is
    # no default on CPUs: TensorFlow's stateless samplers draw other numbers
    # from the same seed inside XLA-compiled functions.)
    x = prototype_images[0][:256]

    def trained(**compile_kwargs):
        vae = make_vae(seed=0, compile=False, input_shape=(None, 8, 8, 1))
        vae.compile(optimizer=keras.optimizers.Adam(1e-2), **compile_kwargs)
        history = vae.fit(x, batch_size=32, epochs=2, shuffle=False, verbose=0)
        return vae, history.history

    reference, reference_history = trained(steps_per_execution=1)
    fast, fast_history = trained(**levers)
    assert fast.steps_per_execution > 1
    assert int(fast.optimizer.iterations) == int(reference.optimizer.iterations) == 16
    # 16 Adam steps of lr 1e-2 on weights of magnitude ~1: each step's
    # rounding differences are amplified at most a few-fold.
    for a, b in zip(fast.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=float32_atol(np.abs(b).max() + 1, roundings=16 * 64))
    np.testing.assert_allclose(fast_history["elbo"], reference_history["elbo"], rtol=0, atol=float32_atol(60, roundings=16 * 64))


@pytest.mark.parametrize("validate_inputs", [True, False])
@pytest.mark.parametrize("feed", ["arrays", "dataset"])
def test_xla_trains_a_model_built_by_fit(prototype_images, validate_inputs, feed):
    # An unbuilt model under jit_compile=True: built (and its optimizer) from
    # the data's shape before the first step; XLA cannot create variables.
    x = prototype_images[0][:64]
    keras.utils.set_random_seed(0)
    vae = keras_vae.VAE(
        GaussianEncoder(2, hidden_units=(8,)),
        BernoulliDecoder((8, 8, 1), hidden_units=(8,)),
        validate_inputs=validate_inputs,
    )
    vae.compile(jit_compile=True)
    data = x if feed == "arrays" else tf.data.Dataset.from_tensor_slices(x).batch(8)
    history = vae.fit(data, batch_size=8 if feed == "arrays" else None, epochs=2, verbose=0)
    assert int(vae.optimizer.iterations) == 16
    assert np.all(np.isfinite(history.history["loss"]))


@pytest.mark.parametrize(
    "flags, override, expected",
    [
        ({"avx2", "fma"}, None, True),  # AVX2 only: XLA measured faster
        ({"avx2", "fma", "avx512f"}, None, False),  # AVX-512: oneDNN measured faster
        ({"avx2", "avx512f"}, "1", True),
        ({"avx2"}, "0", False),
        (None, None, False),  # flags unknown
    ],
)
def test_compile_picks_xla_by_the_cpu(make_vae, monkeypatch, flags, override, expected):
    from keras_vae._internal import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    if override is None:
        monkeypatch.delenv("KERAS_VAE_AUTO_XLA", raising=False)
    else:
        monkeypatch.setenv("KERAS_VAE_AUTO_XLA", override)
    vae = make_vae(seed=0, compile=False)
    vae.compile()
    assert vae.jit_compile is expected
    assert vae.get_compile_config()["jit_compile"] == "auto"  # decided again on load
    given = make_vae(seed=0, compile=False)
    given.compile(jit_compile=not expected)
    assert given.jit_compile is (not expected)
    eager = make_vae(seed=0, compile=False)
    eager.compile(run_eagerly=True)
    assert eager.jit_compile is False


def test_a_steps_per_execution_that_does_not_divide_the_epoch_warns_of_the_extra_steps(make_vae, prototype_images):
    vae = make_vae(seed=0, compile=False, input_shape=(None, 8, 8, 1))
    vae.compile(optimizer="adam", steps_per_execution=4)
    stream = tf.data.Dataset.from_tensor_slices(prototype_images[0][:40]).batch(4).repeat()
    with pytest.warns(UserWarning, match=r"steps_per_execution=4 does not divide steps_per_epoch=10: .* 2 extra step\(s\) \(12\)"):
        vae.fit(stream, steps_per_epoch=10, epochs=1, verbose=0)
    assert int(vae.optimizer.iterations) == 12  # what Keras does, and the warning says


def test_check_batch_outside_fit_reads_as_a_sentence(make_vae):
    # The pipeline's message leaves a place for the refusing step, which fit
    # fills in; iterated by hand, the same message must read as it is (no
    # template placeholder reaching the user).
    vae = make_vae(input_shape=(None, 8, 8, 1))
    x = np.full((4, 8, 8, 1), 2.0, "float32")
    stream = tf.data.Dataset.from_tensor_slices(x).batch(4).map(vae.check_batch)
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        next(iter(stream))
    message = str(error.value)
    assert "{where}" not in message and "Received{" not in message, message
    assert "Expected values in [0, 1]" in message
    assert "Received: a batch with min, max, any NaN or inf =" in message
