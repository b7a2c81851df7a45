"""Keras's documented training workflows, on a `keras_vae.VAE` built lazily
(no `input_shape`: built from the first data it sees) and one built at
construction. Each works, or is refused up front with a clear error.

The strategy-scope pattern of Keras's distributed-training guide (create and
compile inside `strategy.scope()`, `fit` outside it) needs two logical CPUs,
which can only be set up before TensorFlow starts: it runs in one subprocess
for all its cases.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_vae
from keras_vae.layers import BernoulliDecoder
from keras_vae.layers import GaussianEncoder
from keras_vae.models import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (8, 8, 1)
BUILT = pytest.mark.parametrize("built", [False, True], ids=["lazy", "built"])


def _make(built, seed=0):
    keras.utils.set_random_seed(seed)
    vae = keras_vae.VAE(
        GaussianEncoder(2, hidden_units=(16,)),
        BernoulliDecoder(SHAPE, hidden_units=(16,)),
        seed=seed,
        input_shape=(None,) + SHAPE if built else None,
    )
    vae.compile(optimizer=keras.optimizers.Adam(1e-2))
    return vae


@pytest.fixture(scope="module")
def x():
    return (np.random.default_rng(0).random((96,) + SHAPE) < 0.5).astype("float32")


def _trained(vae, history):
    assert vae.built
    losses = history.history["loss"]
    assert losses and all(np.isfinite(losses)), history.history
    assert int(vae.optimizer.iterations) > 0


@BUILT
def test_validation_split(built, x):
    vae = _make(built)
    history = vae.fit(x, validation_split=0.25, epochs=2, batch_size=16, verbose=0)
    _trained(vae, history)
    assert int(vae.optimizer.iterations) == 2 * 5  # 72 training examples: 4 batches of 16 and one of 8
    assert len(history.history["val_elbo"]) == 2


@BUILT
def test_early_stopping_on_val_elbo(built, x):
    vae = _make(built)
    stop = keras.callbacks.EarlyStopping("val_elbo", mode="max", patience=0)
    history = vae.fit(x, validation_data=x[:32], epochs=20, batch_size=16, verbose=0, callbacks=[stop])
    _trained(vae, history)
    assert stop.best == max(history.history["val_elbo"])


@pytest.mark.parametrize(
    "callback, improves",
    [
        (lambda: keras.callbacks.EarlyStopping("val_elbo", patience=0), np.greater),
        (lambda: keras.callbacks.EarlyStopping("val_kl", patience=0), np.less),
        (lambda: keras.callbacks.ReduceLROnPlateau("val_elbo", patience=0), np.greater),
    ],
    ids=["early_stopping_elbo", "early_stopping_kl", "reduce_lr_elbo"],
)
def test_monitors_in_auto_mode_know_which_way_the_metrics_improve(callback, improves, x):
    # Keras 3.15 alone raises at the end of the first epoch for EarlyStopping
    # and takes val_elbo to improve downwards in ReduceLROnPlateau.
    vae = _make(True)
    callback = callback()
    vae.fit(x, validation_data=x[:32], epochs=1, batch_size=16, verbose=0, callbacks=[callback])
    assert callback.monitor_op(2.0, 1.0) == improves(2.0, 1.0)


@BUILT
def test_model_checkpoint_weights_h5_reloads(built, x, tmp_path):
    vae = _make(built)
    path = str(tmp_path / "best.weights.h5")
    checkpoint = keras.callbacks.ModelCheckpoint(
        path, monitor="val_elbo", mode="max", save_best_only=True, save_weights_only=True
    )
    _trained(vae, vae.fit(x, validation_data=x[:32], epochs=2, batch_size=16, verbose=0, callbacks=[checkpoint]))
    fresh = _make(True, seed=1)
    fresh.load_weights(path)
    best = int(np.argmax(vae.history.history["val_elbo"]))
    if best == 1:  # the last epoch was the best: the file holds today's weights
        np.testing.assert_array_equal(fresh(x[:4]), vae(x[:4]))
    else:
        assert not np.array_equal(fresh.get_weights()[0], _make(True, seed=1).get_weights()[0])


@BUILT
def test_backup_and_restore_resumes_an_interrupted_fit(built, x, tmp_path):
    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                raise RuntimeError("interrupted")

    backup = str(tmp_path / "backup")
    vae = _make(built)
    with pytest.raises(RuntimeError, match="interrupted"):
        vae.fit(x, epochs=2, batch_size=16, verbose=0, shuffle=False,
                callbacks=[keras.callbacks.BackupAndRestore(backup), Interrupt()])  # fmt: skip
    resumed = _make(built)
    history = resumed.fit(x, epochs=2, batch_size=16, verbose=0, shuffle=False,
                          callbacks=[keras.callbacks.BackupAndRestore(backup)])  # fmt: skip
    assert len(history.history["loss"]) == 1  # epoch 2 only: epoch 1 came from the backup
    assert int(resumed.optimizer.iterations) == 2 * 6


class _Batches(keras.utils.PyDataset):
    def __init__(self, x, **kwargs):
        super().__init__(**kwargs)
        self.x = x

    def __len__(self):
        return 3

    def __getitem__(self, index):
        return self.x[index * 32 : (index + 1) * 32]


@BUILT
def test_py_dataset(built, x):
    vae = _make(built)
    _trained(vae, vae.fit(_Batches(x), epochs=2, verbose=0))
    assert int(vae.optimizer.iterations) == 6


@BUILT
@pytest.mark.parametrize("form", ["array", "tuple"])
def test_generator_of_bare_arrays_or_tuples(built, form, x):
    # Keras wants (x,) from a generator; a VAE has no targets, so a bare
    # batch is taken as (x,).
    def batches():
        for i in range(3):
            batch = x[i * 32 : (i + 1) * 32]
            yield batch if form == "array" else (batch,)

    vae = _make(built)
    _trained(vae, vae.fit(batches(), epochs=1, verbose=0))
    assert int(vae.optimizer.iterations) == 3


@BUILT
def test_repeated_dataset_with_steps_per_epoch(built, x):
    vae = _make(built)
    stream = tf.data.Dataset.from_tensor_slices(x).batch(16).repeat()
    _trained(vae, vae.fit(stream, steps_per_epoch=5, epochs=2, verbose=0))
    assert int(vae.optimizer.iterations) == 10


@BUILT
@pytest.mark.parametrize(
    "call",
    [
        lambda vae, x: vae.fit(x, sample_weight=np.ones(len(x)), verbose=0),
        lambda vae, x: vae.fit(x, class_weight={0: 1.0}, verbose=0),
        lambda vae, x: vae.fit(x, validation_data=(x, None, np.ones(len(x))), verbose=0),
        lambda vae, x: vae.fit(
            tf.data.Dataset.from_tensor_slices((x, x, np.ones(len(x)))).batch(16), verbose=0
        ),
        lambda vae, x: vae.evaluate(x, sample_weight=np.ones(len(x)), verbose=0),
        lambda vae, x: vae.train_on_batch(x, sample_weight=np.ones(len(x))),
    ],
    ids=["fit", "class_weight", "validation_data", "dataset", "evaluate", "train_on_batch"],
)
def test_sample_weights_are_refused_before_any_step(built, call, x):
    vae = _make(built)
    with pytest.raises(InputError, match=r"Expected no `(sample|class)_weight`.*Received: "):
        call(vae, x)
    assert int(vae.optimizer.iterations) == 0


@BUILT
@pytest.mark.parametrize(
    "data",
    [
        lambda x: x[:0],
        lambda x: tf.data.Dataset.from_tensor_slices(x[:0]).batch(16),
    ],
    ids=["array", "dataset"],
)
def test_empty_data_is_a_value_error(built, data, x):
    vae = _make(built)
    with pytest.raises(ValueError, match=r"Expected at least one (example|batch) in `x`. Received: "):
        vae.fit(data(x), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"in `validation_data`"):
        vae.fit(x, validation_data=data(x), epochs=1, verbose=0)
    assert int(vae.optimizer.iterations) == 0


@BUILT
def test_keras_model_export_serves_the_reconstruction_mean(built, x, tmp_path):
    vae = _make(built)
    vae.fit(x, epochs=1, batch_size=16, verbose=0)
    path = str(tmp_path / "export")
    vae.export(path, verbose=False)
    served = keras.layers.TFSMLayer(path, call_endpoint="serve")(x[:4])
    np.testing.assert_allclose(served, vae(x[:4]), atol=1e-5)


def test_keras_model_export_of_an_unbuilt_model_is_a_clear_error(tmp_path):
    vae = _make(False)
    with pytest.raises(ValueError, match=r"Expected a built model to export.*Received: an unbuilt model"):
        vae.export(str(tmp_path / "export"))
    assert not os.path.exists(tmp_path / "export")


@BUILT
def test_mixed_float16(built, x):
    keras.config.set_dtype_policy("mixed_float16")
    try:
        vae = _make(built)
        _trained(vae, vae.fit(x, epochs=2, batch_size=16, verbose=0))
    finally:
        keras.config.set_dtype_policy("float32")
    assert vae.encoder.compute_dtype == "float16"
    assert isinstance(vae.optimizer, keras.optimizers.LossScaleOptimizer)


# --------------------------------------------- the strategy-scope pattern

_STRATEGY = r"""
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np, keras_vae
from keras_vae.layers import BernoulliDecoder, GaussianEncoder

x = (np.random.default_rng(0).random((96, 8, 8, 1)) < 0.5).astype("float32")
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
cases = {
    "numpy": lambda vae: vae.fit(x, epochs=1, batch_size=32, verbose=0),
    "tf.data": lambda vae: vae.fit(tf.data.Dataset.from_tensor_slices(x).batch(32), epochs=1, verbose=0),
    "validation_split": lambda vae: vae.fit(x, validation_split=0.25, epochs=1, batch_size=32, verbose=0),
    "evaluate": lambda vae: vae.evaluate(x, batch_size=32, verbose=0, return_dict=True),
}
results = {}
for name, run in cases.items():
    for built in (False, True):
        with strategy.scope():
            vae = keras_vae.VAE(GaussianEncoder(2, hidden_units=(16,)),
                                BernoulliDecoder((8, 8, 1), hidden_units=(16,)), seed=0,
                                input_shape=(None, 8, 8, 1) if built else None)
            vae.compile(**({"optimizer": "adam"} if name == "tf.data" else {}))
        try:
            out = run(vae)
            loss = out["loss"] if isinstance(out, dict) else out.history["loss"][-1]
            mirrored = all(isinstance(v.value, tf.distribute.DistributedValues) for v in vae.variables)
            results[f"{name}-{built}"] = {"loss": float(loss), "mirrored": mirrored,
                                         "iterations": int(vae.optimizer.iterations.numpy())}
        except Exception as e:
            results[f"{name}-{built}"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
from keras_vae.layers import IAFEncoder, VampPrior


def other_family(kind, built):
    shape = (None, 8, 8, 1) if built else None
    if kind == "iaf":
        return keras_vae.VAE(IAFEncoder(GaussianEncoder(2, hidden_units=(16,)), num_steps=2, hidden_units=(8,)),
                             BernoulliDecoder((8, 8, 1), hidden_units=(16,)),
                             prior=VampPrior(num_components=3, seed=0), seed=0, input_shape=shape)
    return keras_vae.HierarchicalVAE(
        [GaussianEncoder(2, hidden_units=(16,)), IAFEncoder(GaussianEncoder(2, hidden_units=(16,)), 1, (8,))],
        [GaussianEncoder(2, hidden_units=(16,))], BernoulliDecoder((8, 8, 1), hidden_units=(16,)),
        prior=VampPrior(num_components=3, seed=0), seed=0, input_shape=shape)


for kind in ("iaf", "hierarchical"):
    for name in ("numpy", "tf.data"):
        for built in (False, True):
            with strategy.scope():
                vae = other_family(kind, built)
                vae.compile()
            try:
                out = cases[name](vae)
                mirrored = all(isinstance(v.value, tf.distribute.DistributedValues) for v in vae.variables)
                results[f"{kind}-{name}-{built}"] = {"loss": float(out.history["loss"][-1]), "mirrored": mirrored,
                                                    "iterations": int(vae.optimizer.iterations.numpy())}
            except Exception as e:
                results[f"{kind}-{name}-{built}"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
print("RESULTS " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def strategy_results():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-c", _STRATEGY], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = [l for l in done.stdout.splitlines() if l.startswith("RESULTS ")][-1]
    return json.loads(line[len("RESULTS "):])


@pytest.mark.parametrize("case", ["numpy", "tf.data", "validation_split", "evaluate"])
@BUILT
def test_created_in_strategy_scope_fit_outside_it(strategy_results, case, built):
    result = strategy_results[f"{case}-{built}"]
    assert "error" not in result, result
    assert np.isfinite(result["loss"])
    assert result["mirrored"]  # every variable created in the strategy's scope
    if case != "evaluate":
        assert result["iterations"] > 0


@pytest.mark.parametrize("kind", ["iaf", "hierarchical"])
@pytest.mark.parametrize("case", ["numpy", "tf.data"])
@BUILT
def test_flow_and_hierarchical_models_created_in_strategy_scope_fit_outside_it(strategy_results, kind, case, built):
    """The new model families (an IAF posterior with a VampPrior; a
    hierarchy with a flow on one layer), built lazily inside fit or at
    construction, under the strategy-scope pattern."""
    result = strategy_results[f"{kind}-{case}-{built}"]
    assert "error" not in result, result
    assert np.isfinite(result["loss"])
    assert result["mirrored"]
    assert result["iterations"] > 0
