"""One XLA program per execution (keras_vae.models._fused): the same model
as Keras's loop of XLA-compiled steps, every batch that cannot be fused
still trained (or refused) in order, and where compile() turns it on."""

import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_vae
from keras_vae.layers import BernoulliDecoder
from keras_vae.layers import GaussianEncoder
from keras_vae.models._fused import FusedExecution
from keras_vae.models._inputs import InputError
from tests.conftest import build_small_vae
from tests.conftest import float32_atol


def _compiled(steps_per_execution=4, built=True, model_kwargs=None, **compile_kwargs):
    input_shape = (None, 8, 8, 1) if built else None
    vae = build_small_vae(seed=0, compile=False, input_shape=input_shape, **(model_kwargs or {}))
    vae.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        jit_compile=True,
        steps_per_execution=steps_per_execution,
        **compile_kwargs,
    )
    return vae


def _execution(vae):
    """The FusedExecution inside the model's (error-wrapped) train function,
    or None."""
    function = getattr(vae.train_function, "__wrapped__", None)
    return function if isinstance(function, FusedExecution) else None


def _assert_same_model(a, b):
    for p, q in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(p, q, rtol=0, atol=float32_atol(np.abs(q).max() + 1))
    assert int(a.optimizer.iterations) == int(b.optimizer.iterations)
    assert int(a.seed_generator.state[1]) == int(b.seed_generator.state[1])


def _assert_same_history(a, b):
    assert a.history.keys() == b.history.keys()
    for key in a.history:
        np.testing.assert_allclose(a.history[key], b.history[key], rtol=1e-5, atol=1e-5, err_msg=key)


@pytest.mark.parametrize(
    "batches, steps_per_execution, expected",
    [
        # 12 batches, 4 per execution: 3 fused executions per epoch.
        (dict(count=96, batch_size=8), 4, dict(fused=24, per_step=0)),
        # 10 batches, 4 per execution: 2 fused, the last 2 batches one by one.
        (dict(count=80, batch_size=8), 4, dict(fused=16, per_step=4)),
        # 76 images: 9 batches of 8 and a last one of 4; the third
        # execution meets the end of the data after 2: one by one.
        (dict(count=76, batch_size=8), 4, dict(fused=16, per_step=4)),
        # 44 images: 5 batches of 8 and one of 4, 3 per execution: the
        # second execution holds the partial batch, which cannot be stacked
        # with the others: its 3 batches run one by one.
        (dict(count=44, batch_size=8), 3, dict(fused=6, per_step=6)),
    ],
    ids=["whole_executions", "end_of_data", "partial_last_batch", "partial_batch_in_an_execution"],
)
def test_fused_executions_train_the_model_keras_loop_trains(
    prototype_images, batches, steps_per_execution, expected
):
    x = prototype_images[0][: batches["count"]]
    ds = tf.data.Dataset.from_tensor_slices(x).batch(batches["batch_size"])
    fused = _compiled(steps_per_execution)
    looped = _compiled(steps_per_execution, fuse_steps=False)
    history_fused = fused.fit(ds, epochs=2, verbose=0)
    history_looped = looped.fit(ds, epochs=2, verbose=0)
    execution = _execution(fused)
    assert execution is not None and _execution(looped) is None
    assert (execution.fused_steps, execution.per_step_steps) == (expected["fused"], expected["per_step"])
    # XLA compiles both the same step's arithmetic with the same random
    # draws: the same model to float32 rounding.
    _assert_same_model(fused, looped)
    _assert_same_history(history_fused, history_looped)


def test_a_refused_batch_inside_an_execution_trains_the_batches_before_it(prototype_images):
    # 8 batches of 16, batch 6 (step 6) bad, 4 steps per execution: the
    # first execution is fused (steps 0-3), the second takes batches 4 and
    # 5, meets the bad one, trains 4 and 5 one by one and refuses batch 6.
    x = prototype_images[0][:128].copy()
    x[6 * 16 + 3] = 2.0
    vae = _compiled(4)
    with pytest.raises(InputError) as info:
        vae.fit(tf.data.Dataset.from_tensor_slices(x).batch(16), epochs=1, verbose=0)
    assert info.value.step == 6
    assert re.search(r"Received at training step 6: a batch with min, max", str(info.value))
    execution = _execution(vae)
    assert (execution.fused_steps, execution.per_step_steps) == (4, 2)
    reference = _compiled(4, fuse_steps=False)
    reference.fit(tf.data.Dataset.from_tensor_slices(x[:96]).batch(16), epochs=1, verbose=0)
    _assert_same_model(vae, reference)


def test_validation_and_train_on_batch_run_as_keras_runs_them(prototype_images):
    x = prototype_images[0][:128]
    fused = _compiled(4)
    looped = _compiled(4, fuse_steps=False)
    for vae in (fused, looped):
        vae.fit(x[:64], validation_data=(x[64:],), epochs=1, batch_size=16, shuffle=False, verbose=0)
        vae.train_on_batch(x[:16])
    _assert_same_model(fused, looped)
    np.testing.assert_allclose(
        fused.evaluate(x[64:], verbose=0), looped.evaluate(x[64:], verbose=0), rtol=1e-5
    )


def _tiny_vae(**kwargs):
    return keras_vae.VAE(
        GaussianEncoder(2, hidden_units=(4,)), BernoulliDecoder((4, 4, 1), hidden_units=(4,)), **kwargs
    )


@pytest.mark.parametrize("auto_xla", ["1", "0"])
def test_compile_defaults_fuse_where_they_choose_xla(monkeypatch, auto_xla):
    monkeypatch.setenv("KERAS_VAE_AUTO_XLA", auto_xla)
    vae = _tiny_vae(input_shape=(None, 4, 4, 1))
    vae.compile()
    vae.fit(np.zeros((64, 4, 4, 1), "float32"), steps_per_epoch=4, batch_size=16, verbose=0)
    assert (_execution(vae) is not None) == (auto_xla == "1")
    # Asked for on a CPU where "auto" keeps XLA off: XLA and the fusion.
    asked = _tiny_vae(input_shape=(None, 4, 4, 1))
    asked.compile(fuse_steps=True)
    assert asked.jit_compile is True
    asked.fit(np.zeros((64, 4, 4, 1), "float32"), steps_per_epoch=4, batch_size=16, verbose=0)
    assert _execution(asked) is not None
    # One step per execution: nothing to fuse.
    single = _tiny_vae(input_shape=(None, 4, 4, 1))
    single.compile(jit_compile=True, steps_per_execution=1)
    single.fit(np.zeros((32, 4, 4, 1), "float32"), batch_size=16, verbose=0)
    assert _execution(single) is None


def test_fuse_steps_is_checked_and_saved(tmp_path):
    vae = _tiny_vae()
    with pytest.raises(ValueError, match=r'Expected fuse_steps to be "auto", True or False\. Received: fuse_steps=\'yes\''):
        vae.compile(fuse_steps="yes")
    with pytest.raises(ValueError, match=r"Expected jit_compile to be True or \"auto\" with fuse_steps=True.*Received: jit_compile=False"):
        vae.compile(fuse_steps=True, jit_compile=False)
    vae = _tiny_vae(input_shape=(None, 4, 4, 1))
    vae.compile(jit_compile=True, fuse_steps=False)
    assert vae.get_compile_config()["fuse_steps"] is False
    path = str(tmp_path / "vae.keras")
    vae.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded._fuse_steps is False and loaded.jit_compile is True
    default = _tiny_vae(input_shape=(None, 4, 4, 1))
    default.compile()
    assert "fuse_steps" not in default.get_compile_config()  # "auto": as before


def test_a_model_whose_loop_does_not_compile_trains_step_by_step(prototype_images, monkeypatch):
    # XLA may fail to compile the loop where it compiles the step alone (an
    # op needing a shape it cannot fold inside the loop): the first call
    # fails before anything ran, and the model trains step by step, warned.
    def failing(self, stacked):
        raise tf.errors.InvalidArgumentError(None, None, "Input 1 to node `x` must be a compile-time constant.\nmore")

    x = prototype_images[0][:96]
    ds = tf.data.Dataset.from_tensor_slices(x).batch(8)
    looped = _compiled(4, fuse_steps=False)
    looped.fit(ds, epochs=1, verbose=0)
    vae = _compiled(4)
    vae.make_train_function()
    execution = _execution(vae)
    monkeypatch.setattr(execution, "_program", failing.__get__(execution))
    with pytest.warns(UserWarning, match=r"did not compile for this model; training step by step instead\. XLA said: Input 1 to node `x` must be a compile-time constant\.$"):
        vae.fit(ds, epochs=1, verbose=0)
    assert (execution.fused_steps, execution.per_step_steps) == (0, 12)
    _assert_same_model(vae, looped)


def test_a_model_first_built_inside_fit_is_fused_too(prototype_images):
    # No input_shape: fit builds the model (and its optimizer) before the
    # first execution, then fuses its steps like a pre-built model's.
    ds = tf.data.Dataset.from_tensor_slices(prototype_images[0][:64]).batch(8)
    fused = _compiled(4, built=False)
    looped = _compiled(4, built=False, fuse_steps=False)
    assert not fused.built
    fused.fit(ds, epochs=1, verbose=0)
    looped.fit(ds, epochs=1, verbose=0)
    assert _execution(fused).fused_steps == 8
    _assert_same_model(fused, looped)


@pytest.mark.parametrize("built", [True, False], ids=["built", "lazy"])
def test_an_iwae_model_fuses_after_the_bernoulli_pass_was_traced_at_other_shapes(prototype_images, built):
    # The IWAE objective's log p(x|z) is one shared compiled pass
    # (objectives._bernoulli_log_likelihood). Traced first with dimensions
    # unknown (the evaluator's number of samples is a tensor; other shapes
    # relax the trace), that trace serves the training step too; its
    # gradient must not need the shapes (TensorFlow's gradient of a sum over
    # an unknown shape is a DynamicStitch that XLA cannot compile inside the
    # fused loop: seen in the CLI tests, the loop fell back to step by step).
    from keras_vae import objectives

    rng = np.random.default_rng(0)
    objectives._bernoulli_log_likelihood.get_concrete_function(
        tf.TensorSpec([None, 8, 64], tf.float32), tf.TensorSpec([8, 64], tf.float32)
    )
    for shape in ((3, 5, 64), (2, 7, 64), (4, 6, 10)):
        objectives._bernoulli_log_likelihood(
            tf.constant(rng.normal(size=shape), tf.float32), tf.constant(rng.random(shape[1:]) < 0.5, tf.float32)
        )
    ds = tf.data.Dataset.from_tensor_slices(prototype_images[0][:64]).batch(8)
    vae = _compiled(4, built=built, model_kwargs=dict(objective="iwae", num_samples=3))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "keras_vae: the fused execution")
        vae.fit(ds, epochs=1, verbose=0, shuffle=False)
    execution = _execution(vae)
    assert execution.unfusable is None
    assert (execution.fused_steps, execution.per_step_steps) == (8, 0)
