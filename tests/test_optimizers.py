"""FusedAdam against keras.optimizers.Adam, the run optimizer factory
`make_optimizer`, and LogitBernoulli against TFP."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import keras_vae
from keras_vae.layers.decoders import LogitBernoulli
from keras_vae.optimizers import FusedAdam
from keras_vae.optimizers import make_optimizer

tfd = tfp.distributions


def _train(optimizer, steps=30):
    """A few steps of a small regression, the same gradients for both."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(7, "tanh"), keras.layers.Dense(1)])
    model.compile(optimizer=optimizer, loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 5)), rng.normal(size=(64, 1))
    model.fit(x, y, batch_size=16, epochs=steps // 4, shuffle=False, verbose=0)
    return model


@pytest.mark.parametrize("kwargs", [{}, {"learning_rate": 0.05, "beta_1": 0.5, "beta_2": 0.9, "epsilon": 1e-3}])
def test_fused_adam_takes_the_steps_keras_adam_takes(kwargs):
    reference = _train(keras.optimizers.Adam(**kwargs))
    fused = _train(FusedAdam(**kwargs))
    assert int(fused.optimizer.iterations) == int(reference.optimizer.iterations) == 28
    for a, b in zip(reference.get_weights(), fused.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    for a, b in zip(reference.optimizer.variables, fused.optimizer.variables):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-5, atol=1e-7)
    # And it moved: not a no-op that happens to match an untrained model.
    untrained = _train(keras.optimizers.Adam(**kwargs), steps=0)
    assert not np.allclose(untrained.get_weights()[0], fused.get_weights()[0])


def test_fused_adam_with_amsgrad_is_keras_adam():
    reference = _train(keras.optimizers.Adam(amsgrad=True))
    fused = _train(FusedAdam(amsgrad=True))
    for a, b in zip(reference.get_weights(), fused.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


def test_fused_adam_is_the_vae_default_and_survives_save_and_load(make_vae, binary_images, tmp_path):
    vae = make_vae(compile=False)
    vae.compile()
    assert isinstance(vae.optimizer, FusedAdam)
    assert float(vae.optimizer.learning_rate) == pytest.approx(1e-3)
    vae.fit(binary_images, epochs=1, batch_size=32, verbose=0)
    vae.save(tmp_path / "vae.keras")
    loaded = keras_vae.saving.load_model(tmp_path / "vae.keras")
    assert isinstance(loaded.optimizer, FusedAdam)
    assert FusedAdam.from_config(vae.optimizer.get_config()).get_config() == vae.optimizer.get_config()


def test_make_optimizer_constant_rate_or_halved_every_n_epochs():
    constant = make_optimizer(2e-3)
    assert isinstance(constant, FusedAdam)
    assert float(constant.learning_rate) == pytest.approx(2e-3, rel=1e-6)  # float32
    decayed = make_optimizer(2e-3, lr_halve_every=3, steps_per_epoch=5)
    assert isinstance(decayed, FusedAdam)
    assert decayed.get_config()["learning_rate"]["class_name"] == "ExponentialDecay"
    # Halved after every 3 epochs of 5 steps (staircase): the rate at step s.
    rates = []
    for step in (0, 14, 15, 29, 30):
        decayed.iterations.assign(step)
        rates.append(float(decayed.learning_rate))
    np.testing.assert_allclose(rates, [2e-3, 2e-3, 1e-3, 1e-3, 5e-4], rtol=1e-6)
    # The two differ in their variables, which a training backup holds: a
    # run is restored with the optimizer it was trained with.
    names = lambda optimizer: {v.name for v in optimizer.variables}  # noqa: E731
    assert "learning_rate" in names(constant) and "learning_rate" not in names(decayed)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": True}, "learning_rate"),
        ({"lr_halve_every": -1}, "lr_halve_every"),
        ({"lr_halve_every": 1.5}, "lr_halve_every"),
        ({"lr_halve_every": 2}, r"steps_per_epoch.*Received: steps_per_epoch=None"),
        ({"lr_halve_every": 2, "steps_per_epoch": 0}, "steps_per_epoch"),
    ],
)
def test_make_optimizer_refuses_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_optimizer(**kwargs)


def test_logit_bernoulli_log_prob_and_gradient_match_tfp():
    rng = np.random.default_rng(3)
    logits = tf.constant(np.concatenate([rng.normal(0, 3, 500), [-60.0, -20.0, 0.0, 20.0, 60.0]]), tf.float32)
    for x in (rng.random(505) < 0.5, rng.random(505)):  # binary, and in [0, 1]
        x = tf.constant(x, tf.float32)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(logits)
            ours = LogitBernoulli(logits=logits).log_prob(x)
            theirs = tfd.Bernoulli(logits=logits, dtype=tf.float32).log_prob(x)
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(tape.gradient(ours, logits), tape.gradient(theirs, logits), rtol=1e-6, atol=1e-7)
    probs = LogitBernoulli(probs=[0.2, 0.9], dtype=tf.float32)
    np.testing.assert_allclose(probs.log_prob([1.0, 0.0]), np.log([0.2, 0.1]), rtol=1e-6)


def test_a_built_vae_compiled_with_xla_trains(make_vae, binary_images):
    # compile() builds the optimizer of a built model: XLA cannot create
    # variables inside the first step.
    vae = make_vae(compile=False, input_shape=(None, 8, 8, 1))
    vae.compile(jit_compile=True)
    assert vae.optimizer.built
    history = vae.fit(binary_images, epochs=2, batch_size=32, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
