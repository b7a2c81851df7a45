"""tf.distribute: one step on two replicas equals one step on one device, and
tools/train.py trains as one job under MirroredStrategy (two logical CPUs) and
MultiWorkerMirroredStrategy (two worker processes on 127.0.0.1).

Logical CPU devices and multi-worker collectives can only be set up before
TensorFlow initializes its runtime, which this pytest process did long ago:
everything that needs them runs in a subprocess. The tools/train.py runs read
the prepared binarized_mnist (`$TFDS_DATA_DIR` or ../shared/tensorflow_datasets
beside the project; skipped without it): the TFDS mock of conftest.py patches
this process only.
"""

import csv
import json
import os
import re
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_vae
import keras_vae.training
from keras_vae import distribute
from keras_vae._internal.seeds import stateless_seed

from conftest import float32_atol
from conftest import shared_data_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 300  # seconds per subprocess: a wedged collective must not hang the suite


def _data_dir():
    return shared_data_dir() or pytest.skip(
        "binarized_mnist is not prepared in $TFDS_DATA_DIR nor in "
        "../shared/tensorflow_datasets; tools/train.py subprocesses cannot use "
        "the in-process TFDS mock"
    )


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_CONFIG", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def _run(args):
    """The output of `python *args`, which must exit 0."""
    ((returncode, output),) = _communicate([_start(args)])
    assert returncode == 0, output[-5000:]
    return output


def _start(args, cwd=ROOT, **env):
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd,
        env=_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _communicate(processes):
    """(returncode, output) of each process; kills them all on a timeout."""
    results = []
    try:
        for process in processes:
            output, _ = process.communicate(timeout=TIMEOUT)
            results.append((process.returncode, output))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


def _run_workers(args_of_worker, cwd_of_worker=lambda index: ROOT):
    """Runs `python *args_of_worker(i)` as worker i of a two-worker job on 127.0.0.1.

    Returns (returncode, output) of each worker, worker 0 (the chief) first.
    """
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    processes = []
    for index in range(2):
        task = {"type": "worker", "index": index}
        tf_config = json.dumps({"cluster": cluster, "task": task})
        processes.append(_start(args_of_worker(index), cwd_of_worker(index), TF_CONFIG=tf_config))
    return _communicate(processes)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _results(output):
    """The JSON a child script printed after "RESULTS "."""
    return json.loads(output.split("RESULTS ", 1)[1].splitlines()[0])


def _train_argv(output_dir, epochs, *extra):
    """A tiny tools/train.py run: training only, no evaluation, plots or export."""
    return [
        os.path.join(ROOT, "tools", "train.py"), "--data-dir", _data_dir(),
        "--hidden-units", "16", "--latent-dim", "2", "--take", "256",
        "--batch-size", "32", "--epochs", str(epochs), "--eval-samples", "0",
        "--no-plots", "--export-dir", "", "--output-dir", str(output_dir),
        "--verbose", "2", *extra,
    ]  # fmt: skip


def _history(output_dir):
    with open(os.path.join(output_dir, "history.csv")) as f:
        return list(csv.DictReader(f))


def _check_loads(path):
    model = keras_vae.saving.load_model(str(path))
    x = np.zeros((2, 28, 28, 1), "float32")
    assert np.all(np.isfinite(model.elbo(x).numpy()))
    return model


# ------------------------------------------------------------ make_strategy


def test_make_strategy_refuses_unknown_names_and_bad_cpu_replicas():
    with pytest.raises(ValueError, match=r"Expected a strategy name in .*'mirrored'.* Received: name='tpu'"):
        distribute.make_strategy("tpu")
    with pytest.raises(ValueError, match=r"positive int or None. Received: cpu_replicas=0"):
        distribute.make_strategy("mirrored", cpu_replicas=0)
    with pytest.raises(ValueError, match=r"only with the 'mirrored' strategy. Received: name='default', cpu_replicas=2"):
        distribute.make_strategy("default", cpu_replicas=2)
    assert distribute.make_strategy("default") is tf.distribute.get_strategy()


@pytest.mark.parametrize(
    "tf_config, received",
    [
        (None, "TF_CONFIG is not set"),
        ("worker 0", "not JSON"),
        ('{"cluster": {"worker": ["127.0.0.1:1"]}}', "needs a 'cluster' dict and a 'task' dict"),
        ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}', "'host:port'"),
        ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}', "index 2"),
    ],
)
def test_multiworker_refuses_a_missing_or_malformed_tf_config(monkeypatch, tf_config, received):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match="Expected TF_CONFIG") as info:
        distribute.make_strategy("multiworker")
    assert received in str(info.value)
    assert '"task": {"type": "worker", "index": 0}' in str(info.value)  # the example


def test_mirrored_cpu_replicas_after_tensorflow_started_is_a_clear_error():
    tf.constant(0.0)  # this process's runtime is initialized (one CPU device)
    assert len(tf.config.list_logical_devices("CPU")) == 1
    with pytest.raises(RuntimeError, match=r"before TensorFlow initializes its runtime.*cpu_replicas=2\) first thing"):
        distribute.make_strategy("mirrored", cpu_replicas=2)


def test_train_refuses_steps_per_execution_with_several_replicas(tmp_path):
    # Keras 3.15's multi-step loop fails under a strategy with several
    # replicas (checked with a plain Dense model): refused before anything.
    class TwoReplicas:
        num_replicas_in_sync = 2

    config = keras_vae.training.TrainConfig(steps_per_execution=8, output_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"steps_per_execution=1 .*Received: steps_per_execution=8 with 2 replicas"):
        keras_vae.training.train(config, strategy=TwoReplicas())
    assert not (tmp_path / "run").exists()


def test_one_device_seeds_are_the_generator_state_unchanged():
    # Folding the replica id into sampling seeds applies to several replicas only.
    generator = keras.random.SeedGenerator(7)
    assert stateless_seed(generator).numpy().tolist() == [7, 0]
    assert stateless_seed(generator).numpy().tolist() == [7, 1]


# ------------------------------------------------------------ one step

_ONE_STEP = r"""
import json
import os
import sys

from keras_vae import distribute

name, backup_dir = sys.argv[1:]
strategy = distribute.make_strategy(  # before any other TF work
    name, cpu_replicas=2 if name == "mirrored" else None
)

import keras
import numpy as np
import tensorflow as tf
import keras_vae
from keras_vae.callbacks import TrainingBackup
from keras_vae.layers import BernoulliDecoder, GaussianEncoder
from keras_vae._internal.seeds import stateless_seed


def make():
    vae = keras_vae.VAE(
        GaussianEncoder(2, hidden_units=(16,), min_scale=1e-8),
        BernoulliDecoder((8, 8, 1), hidden_units=(16,)),
        seed=0,
        input_shape=(None, 8, 8, 1),
    )
    vae.compile(optimizer=keras.optimizers.SGD(0.5))  # plain SGD: a step is lr * gradient
    return vae


keras.utils.set_random_seed(0)
single = make()
# Posterior scale softplus(-50) + 1e-8: z is the posterior mean whatever noise a
# replica draws, so one device and two replicas must take the same step.
kernel, bias = single.encoder.params_layer.get_weights()
kernel[:, 2:] = 0.0
bias[2:] = -50.0
single.encoder.params_layer.set_weights([kernel, bias])
initial = single.get_weights()
with strategy.scope():
    distributed = make()

rng = np.random.default_rng(0)
results = {
    "replicas": strategy.num_replicas_in_sync,
    "chief": distribute.is_chief(strategy),
    "cases": {},
}
# One global batch of n uint8 images (as TFDS gives them), as training.train
# feeds it: 32 splits 16 + 16; 33 unevenly; 1 leaves a replica empty.
for n in (32, 33, 1):
    x = (rng.random((n, 8, 8, 1)) < 0.5).astype("uint8")
    dataset = distribute.prepare_dataset(tf.data.Dataset.from_tensor_slices(x).batch(n))
    out = {}
    for key, model in (("single", single), ("distributed", distributed)):
        model.set_weights(initial)
        backup = TrainingBackup(os.path.join(backup_dir, key, str(n)))
        history = model.fit(dataset, verbose=0, callbacks=[backup])
        out[key] = (history.history["loss"][0], model.get_weights())
    results["cases"][str(n)] = {
        "loss": [out["single"][0], out["distributed"][0]],
        "update": max(float(np.max(np.abs(a - b))) for a, b in zip(out["single"][1], initial)),
        "difference": max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(out["single"][1], out["distributed"][1])
        ),
    }


@tf.function
def seeds():
    return strategy.run(lambda: stateless_seed(distributed.seed_generator))


results["seeds"] = [s.numpy().tolist() for s in strategy.experimental_local_results(seeds())]
print("RESULTS " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def mirrored_step(tmp_path_factory):
    backups = tmp_path_factory.mktemp("mirrored")
    return _results(_run(["-c", _ONE_STEP, "mirrored", str(backups)]))


@pytest.mark.parametrize("batch", ["32", "33", "1"])
def test_one_mirrored_step_on_two_cpus_updates_weights_as_one_device(mirrored_step, batch):
    # Each replica's loss is weighted by its share of the global batch: summed
    # over replicas, the gradient of the global batch mean. Per-replica means
    # summed would make the step twice as large; a plain 1/replicas would be
    # wrong for the 33 and 1 cases.
    assert mirrored_step["replicas"] == 2
    case = mirrored_step["cases"][batch]
    assert case["update"] > 0.1  # the step is large against the tolerance
    # Weights are O(1) (max |w| < 2) and one replica sums 16 or 17 examples'
    # gradients where one device sums 32 or 33: the two updates differ by
    # float32 roundings of the summed gradient times lr = 0.5, about 1e-7 per
    # rounding. 1e-5 allows ~80 of them and is 1e-4 of the update checked.
    assert case["difference"] < 1e-5, case


@pytest.mark.parametrize("batch", ["32", "33", "1"])
def test_one_mirrored_step_reports_the_one_device_loss(mirrored_step, batch):
    single, mirrored = mirrored_step["cases"][batch]["loss"]
    assert np.isfinite(mirrored)
    # A mean of per-replica means against one mean over the batch: another
    # order of float32 sums of the per-example losses (about 44 nats each).
    np.testing.assert_allclose(mirrored, single, rtol=0, atol=float32_atol(single))


def test_mirrored_replicas_draw_different_noise(mirrored_step):
    first, second = mirrored_step["seeds"]
    assert first != second


def test_two_worker_processes_take_the_one_device_step_and_only_the_chief_writes(tmp_path):
    # MultiWorkerMirroredStrategy, two processes on 127.0.0.1 (one replica
    # each): the same steps as one device, each replica its own noise, and
    # TrainingBackup written by worker 0 only.
    outputs = _run_workers(lambda i: ["-c", _ONE_STEP, "multiworker", str(tmp_path / f"worker-{i}")])
    for returncode, output in outputs:
        assert returncode == 0, output[-5000:]
    chief, worker = (_results(output) for _, output in outputs)
    assert chief["chief"] and not worker["chief"]
    for results in (chief, worker):
        assert results["replicas"] == 2
        for batch, case in results["cases"].items():
            assert case["update"] > 0.1, batch
            assert case["difference"] < 1e-5, (batch, case)
            np.testing.assert_allclose(case["loss"][1], case["loss"][0], rtol=0, atol=float32_atol(case["loss"][0]))
    assert chief["seeds"] != worker["seeds"]
    for batch in ("32", "33", "1"):
        assert (tmp_path / "worker-0" / "distributed" / batch / "latest.json").is_file()
    assert not (tmp_path / "worker-1" / "distributed").exists()


# ------------------------------------------------------ tools/train.py runs


def test_train_cli_mirrored_over_two_cpu_replicas(tmp_path):
    output = _run(_train_argv(tmp_path / "run", 2, "--strategy", "mirrored", "--cpu-replicas", "2"))
    assert "Trained in" in output
    rows = _history(tmp_path / "run")
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert all(np.isfinite(float(r[k])) for r in rows for k in ("loss", "val_elbo"))
    with open(tmp_path / "run" / "backup" / "latest.json") as f:
        assert json.load(f)["step"] == 16  # 256 examples / global batch 32, 2 epochs
    _check_loads(tmp_path / "run" / "best.keras")


def _train_workers(tmp_path, output_dirs, epochs):
    """Two `tools/train.py --strategy multiworker` processes, one per output dir."""
    for index in range(2):
        (tmp_path / f"cwd-{index}").mkdir(exist_ok=True)  # where stray relative paths land
    return _run_workers(
        lambda i: _train_argv(output_dirs[i], epochs, "--strategy", "multiworker"),
        lambda i: tmp_path / f"cwd-{i}",
    )


def _epoch_losses(output):
    """The per-epoch loss values a worker printed (verbose=2)."""
    return re.findall(r"step - .*? loss: (\S+)", output)


def _check_two_workers_trained_as_one_job(results, chief_dir, epochs):
    (chief_rc, chief_out), (worker_rc, worker_out) = results
    assert chief_rc == 0, chief_out[-5000:]
    assert worker_rc == 0, worker_out[-5000:]
    assert "this worker is not the chief" in worker_out
    assert "not the chief" not in chief_out
    # One synchronous job: both print the same all-reduced metrics.
    assert len(_epoch_losses(chief_out)) >= 1
    assert _epoch_losses(chief_out) == _epoch_losses(worker_out)
    rows = _history(chief_dir)
    assert [int(r["epoch"]) for r in rows] == list(range(epochs))
    assert all(np.isfinite(float(r[k])) for r in rows for k in ("loss", "val_elbo"))
    with open(chief_dir / "backup" / "latest.json") as f:
        # 256 examples in global batches of 32 (16 per worker): 8 steps an epoch.
        assert json.load(f)["step"] == 8 * epochs
    _check_loads(chief_dir / "best.keras")
    _check_loads(chief_dir / "last.keras")


@pytest.mark.slow
def test_train_cli_two_workers_train_as_one_job_and_resume_from_a_shared_dir(tmp_path):
    # Two tools/train.py processes with TF_CONFIG, as on two machines, each
    # with its own output dir (a local disk): only the chief writes.
    run_dir, worker_dir = tmp_path / "run", tmp_path / "worker-run"
    results = _train_workers(tmp_path, [run_dir, worker_dir], 2)
    _check_two_workers_trained_as_one_job(results, run_dir, epochs=2)
    assert not worker_dir.exists()
    assert [p.name for p in (tmp_path / "cwd-1").iterdir()] == []

    # To resume, the worker does not find the chief's backup on its disk:
    # both refuse, rather than train from different weights and steps.
    results = _train_workers(tmp_path, [run_dir, worker_dir], 3)
    for returncode, output in results:
        assert returncode != 0
        assert "Expected every worker of this multi-worker job to find the same training backup" in output
        assert "Received: steps [16, 0]" in output
    assert len(_history(run_dir)) == 2

    # The same output dir for both (shared storage): both resume at step 16.
    results = _train_workers(tmp_path, [run_dir, run_dir], 3)
    for _, output in results:
        assert "Resuming from the backup of step 16" in output
    _check_two_workers_trained_as_one_job(results, run_dir, epochs=3)


# ------------------------------------------------------ tools/evaluate.py


def test_evaluate_cli_on_two_workers_gives_the_one_process_figures(tmp_path):
    """tools/evaluate.py --strategy multiworker on two loopback processes:
    the batches are shared between them (each computes only its own) and the
    sums reduced; the NLL and ELBO are the one-process figures to rounding,
    and only the chief writes the JSON."""
    from keras_vae.layers import BernoulliDecoder
    from keras_vae.layers import GaussianEncoder

    keras.utils.set_random_seed(0)
    vae = keras_vae.VAE(
        GaussianEncoder(3, hidden_units=(16,)), BernoulliDecoder((28, 28, 1), hidden_units=(16,)),
        seed=0, input_shape=(None, 28, 28, 1),
    )  # fmt: skip
    model = tmp_path / "vae.keras"
    vae.save(model)
    common = [
        os.path.join(ROOT, "tools", "evaluate.py"), str(model), "--data-dir", _data_dir(), "--take", "80",
        "--batch-size", "16", "--samples", "20", "--seed", "3", "--verbose", "0",
    ]  # fmt: skip
    one = _run(common + ["--output", str(tmp_path / "one.json")])
    outputs = _run_workers(lambda i: common + ["--strategy", "multiworker", "--output", str(tmp_path / f"two-{i}.json")])
    for returncode, output in outputs:
        assert returncode == 0, output[-5000:]
    assert "on 2 replica(s)" in outputs[0][1] and "on 1 replica(s)" in one
    assert not (tmp_path / "two-1.json").exists()  # only the chief writes
    single = json.loads((tmp_path / "one.json").read_text())["splits"]["validation"]
    sharded = json.loads((tmp_path / "two-0.json").read_text())["splits"]["validation"]
    assert sharded["num_examples"] == single["num_examples"] == 80 and sharded["replicas"] == 2
    for key in ("nll", "elbo", "kl", "reconstruction"):
        np.testing.assert_allclose(sharded[key], single[key], rtol=0, atol=float32_atol(single["reconstruction"]), err_msg=key)
    assert sharded["active_units"] == single["active_units"]


_SHARDED_EVALUATION = r"""
import json
from keras_vae import distribute
strategy = distribute.make_strategy("mirrored", cpu_replicas=2)
import keras, numpy as np, keras_vae
from keras_vae import evaluation
from keras_vae.layers import BernoulliDecoder, GaussianEncoder

x = (np.random.default_rng(0).random((70, 8, 8, 1)) < 0.5).astype("float32")
batches = [x[i:i + 16] for i in range(0, 70, 16)]   # 5 batches, the last of 6
results = {}
for built in (False, True):
    keras.utils.set_random_seed(0)
    vae = keras_vae.VAE(GaussianEncoder(3, hidden_units=(16,)), BernoulliDecoder((8, 8, 1), hidden_units=(16,)),
                        seed=0, input_shape=(None, 8, 8, 1) if built else None)
    vae.compile()
    vae.fit(x, epochs=1, batch_size=16, verbose=0)   # built here when not at construction
    one = evaluation.evaluate(vae, batches, num_samples=20, seed=3, verbose=0)
    two = evaluation.evaluate(vae, batches, num_samples=20, seed=3, verbose=0, strategy=strategy)
    results[str(built)] = {"one": one, "two": two}
print("RESULTS " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def sharded_evaluation():
    return _results(_run(["-c", _SHARDED_EVALUATION]))


@pytest.mark.parametrize("built", ["False", "True"], ids=["built-in-fit", "built-at-construction"])
def test_evaluate_over_two_mirrored_replicas_gives_the_one_device_figures(sharded_evaluation, built):
    """`evaluate(strategy=MirroredStrategy)` (two logical CPUs) on models
    built inside fit and at construction: one device's figures to rounding."""
    results = sharded_evaluation[built]
    one, two = results["one"], results["two"]
    assert two["replicas"] == 2 and two["num_examples"] == one["num_examples"] == 70
    for key in ("nll", "elbo", "kl", "reconstruction", "aggregate_posterior_kl"):
        np.testing.assert_allclose(two[key], one[key], rtol=0, atol=float32_atol(one["reconstruction"]), err_msg=key)
    assert two["active_units"] == one["active_units"]
