"""Fault tolerance: backups, kill -9 and resume, NaN handling, damaged files.

The subprocess tests run `tools/train.py` for real on the prepared binarized
MNIST data (`../shared/tensorflow_datasets`, or `$TFDS_DATA_DIR`), with a tiny
model, and are skipped when the data is not there.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile

import keras
import numpy as np
import tensorflow as tf
import pytest

import keras_vae
from keras_vae import saving
from keras_vae import training
from keras_vae.callbacks import BackupError
from keras_vae.callbacks import NonFiniteLossError
from keras_vae.callbacks import StopOnNonFiniteLoss
from keras_vae.callbacks import TrainingBackup
from keras_vae.models import InputError

from conftest import shared_data_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


def _fit_with_backup(model, x, tmp_path, **kwargs):
    model.compile(optimizer=model.optimizer, steps_per_execution=1)  # callbacks every step
    backup = TrainingBackup(tmp_path / "backup", **kwargs)
    model.fit(x, epochs=2, batch_size=16, shuffle=False, verbose=0, callbacks=[backup])
    return backup


# ---------------------------------------------------------------- TrainingBackup


def test_backup_holds_weights_optimizer_beta_and_seed_state(make_vae, binary_images, tmp_path):
    model = make_vae(input_shape=(None, 8, 8, 1))
    model.beta.assign(0.3)
    backup = _fit_with_backup(model, binary_images, tmp_path, save_freq=3)
    state = backup.latest()
    assert state["step"] == 8 and state["epoch"] == 2 and state["batch"] == 0
    # Every 3 steps since the last backup (3, 7) and at epoch ends (4, 8);
    # the newest 2 are kept.
    assert sorted(os.listdir(tmp_path / "backup")) == [
        "latest.json", "step-7.weights.h5", "step-8.weights.h5"
    ]  # fmt: skip

    restored = make_vae(seed=99, input_shape=(None, 8, 8, 1))  # other initial weights and seed state
    restored.optimizer.build(restored.trainable_variables)
    again = TrainingBackup(tmp_path / "backup")
    assert again.restore(restored)["step"] == 8
    for a, b in zip(_weights(model), _weights(restored)):
        np.testing.assert_array_equal(a, b)
    assert int(restored.optimizer.iterations) == 8
    for a, b in zip(model.optimizer.variables, restored.optimizer.variables):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    assert float(restored.beta) == pytest.approx(0.3)
    np.testing.assert_array_equal(
        restored.seed_generator.state.numpy(), model.seed_generator.state.numpy()
    )
    # Same state, so the same next step, noise included.
    x = binary_images[:16]
    model.train_on_batch(x)
    restored.train_on_batch(x)
    for a, b in zip(_weights(model), _weights(restored)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_fit_resumes_at_the_epoch_of_the_backup(make_vae, binary_images, tmp_path):
    model = make_vae(input_shape=(None, 8, 8, 1))
    _fit_with_backup(model, binary_images, tmp_path)
    resumed = make_vae(input_shape=(None, 8, 8, 1))
    history = resumed.fit(
        binary_images, epochs=3, batch_size=16, verbose=0,
        callbacks=[TrainingBackup(tmp_path / "backup")],
    )  # fmt: skip
    assert history.epoch == [2]
    assert int(resumed.optimizer.iterations) == 12


def test_a_damaged_backup_is_an_error_and_is_left_as_it_is(make_vae, binary_images, tmp_path):
    backup = _fit_with_backup(make_vae(input_shape=(None, 8, 8, 1)), binary_images, tmp_path)
    weights = backup.latest()["weights_path"]
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    before = {n: (tmp_path / "backup" / n).read_bytes() for n in os.listdir(tmp_path / "backup")}
    model = make_vae(seed=5, input_shape=(None, 8, 8, 1))
    untouched = _weights(model)
    with pytest.raises(BackupError, match=r"Could not restore the training backup .*step-8.*damaged"):
        TrainingBackup(tmp_path / "backup").restore(model)
    after = {n: (tmp_path / "backup" / n).read_bytes() for n in os.listdir(tmp_path / "backup")}
    assert after == before

    (tmp_path / "backup" / "latest.json").write_text("{\"step\": ")
    with pytest.raises(BackupError, match="pointer .*latest.json is damaged"):
        TrainingBackup(tmp_path / "backup").restore(model)
    for a, b in zip(untouched, _weights(model)):
        np.testing.assert_array_equal(a, b)


def test_a_backup_of_another_model_is_refused(make_vae, binary_images, tmp_path):
    _fit_with_backup(make_vae(input_shape=(None, 8, 8, 1)), binary_images, tmp_path)
    other = make_vae(hidden_units=(8,), input_shape=(None, 8, 8, 1))
    with pytest.raises(BackupError, match="different model"):
        TrainingBackup(tmp_path / "backup").restore(other)


def test_backup_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="save_freq='epoch' or a positive number"):
        TrainingBackup(tmp_path, save_freq=0)
    with pytest.raises(ValueError, match="keep to be an int >= 1"):
        TrainingBackup(tmp_path, keep=0)


# ------------------------------------------------------------------- NaN / inf


class _BreakWeightsAt(keras.callbacks.Callback):
    """Sets a weight to NaN after a given global step, as a divergence would."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations) == self.step:
            kernel = self.model.decoder.trainable_weights[0]
            kernel.assign(np.full(kernel.shape, np.nan, dtype="float32"))


class _RecordLosses(keras.callbacks.Callback):
    """Records (training step, logged loss) after every batch."""

    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations) - 1
        self.losses.append((step, float(logs["loss"])))


def test_nan_loss_stops_at_its_step_and_keeps_the_last_good_backup(make_vae, binary_images, tmp_path):
    model = make_vae(input_shape=(None, 8, 8, 1), compile=False)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), steps_per_execution=1)
    backup = TrainingBackup(tmp_path / "backup", save_freq=2, steps_per_epoch=4)
    stop = StopOnNonFiniteLoss(backup, steps_per_epoch=4)
    record = _RecordLosses()
    # A weight becomes NaN at the end of step 5 (iterations == 6), before the
    # backup due then, which finds NaN weights and is skipped, as is every
    # later one. Which step's loss is the first NaN depends on the kernels:
    # oneDNN's fused Dense+ReLU maps a NaN kernel to 0 inside tf.function on
    # some CPUs, so the NaN shows one step later there. The contract tested:
    # training stops at the first non-finite loss, names that step, and the
    # last good backup is the newest finite state (step 4), untouched.
    callbacks = [_BreakWeightsAt(6), record, stop, backup]
    with pytest.raises(NonFiniteLossError) as error:
        model.fit(binary_images, epochs=3, batch_size=16, shuffle=False, verbose=0, callbacks=callbacks)
    steps = [step for step, _ in record.losses]
    assert steps == list(range(len(steps)))
    first_bad = next(step for step, loss in record.losses if not np.isfinite(loss))
    assert first_bad >= 6 and all(np.isfinite(loss) for _, loss in record.losses[:first_bad])
    assert steps[-1] == first_bad  # no step ran after it
    epoch, batch = divmod(first_bad, 4)
    message = str(error.value)
    assert f"The training loss became nan at training step {first_bad} (epoch {epoch}, batch {batch})" in message
    assert "last good backup, untouched, is step 4 (epoch 1, batch 0)" in message
    # No broken state was backed up: restoring gives finite weights.
    assert backup.latest()["step"] == 4
    restored = make_vae(input_shape=(None, 8, 8, 1))
    restored.optimizer.build(restored.trainable_variables)
    TrainingBackup(tmp_path / "backup").restore(restored)
    assert all(np.all(np.isfinite(w)) for w in restored.get_weights())


def test_nan_loss_with_several_steps_per_execution_names_the_execution(make_vae, binary_images, tmp_path):
    # 4 steps per compiled call: the loss is seen after each call, so the
    # error names the call's steps, and the backups (at call ends) stay finite.
    model = make_vae(input_shape=(None, 8, 8, 1), compile=False)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), steps_per_execution=4)
    backup = TrainingBackup(tmp_path / "backup", save_freq=4, steps_per_epoch=4)
    stop = StopOnNonFiniteLoss(backup, steps_per_epoch=4)
    with pytest.raises(NonFiniteLossError) as error:
        model.fit(binary_images, epochs=4, batch_size=16, shuffle=False, verbose=0,
                  callbacks=[_BreakWeightsAt(8), stop, backup])  # fmt: skip
    message = str(error.value)
    assert re.search(r"became nan in training steps (8-11|12-15), run in one compiled call \(the last one is epoch (2|3), batch 3\)", message), message
    assert "last good backup, untouched, is step 4 (epoch 1, batch 0)" in message
    assert backup.latest()["step"] == 4


def test_train_reports_an_infinite_loss_and_writes_no_broken_state(mock_tfds, tmp_path):
    config = training.TrainConfig(
        hidden_units=(16,), latent_dim=2, epochs=2, batch_size=32, take=64,
        learning_rate=1e30, warmup_epochs=0, output_dir=str(tmp_path / "run"),
        backup_every=1, verbose=0,
    )  # fmt: skip
    with mock_tfds(num_examples=64, max_value=2):
        with pytest.raises(NonFiniteLossError, match=r"became (nan|inf) (at training step \d+ \(epoch 0|in training steps \d+-\d+, run in one compiled call \(the last one is epoch 0)"):
            training.train(config)
    state = TrainingBackup(tmp_path / "run" / "backup").latest()
    model = training.build_vae(config)
    model.compile(optimizer="adam")
    TrainingBackup(tmp_path / "run" / "backup").restore(model)
    assert all(np.all(np.isfinite(w)) for w in model.get_weights()), state


def test_a_nan_pixel_is_a_data_error_naming_the_step_and_is_not_trained_on(make_vae, binary_images, model_state, changed_variables):
    model = make_vae(input_shape=(None, 8, 8, 1))
    x = binary_images.copy()
    x[37, 2, 3, 0] = np.nan  # batch 2 of 16
    stream = tf.data.Dataset.from_tensor_slices(x).batch(16)
    with pytest.raises(InputError, match=r"Received at training step 2: a batch with min, max, any NaN or inf = \S+ \S+ 1 \(refused") as error:
        model.fit(stream, epochs=1, verbose=0)
    assert error.value.step == 2  # typed: no parsing of the message
    eager = make_vae(input_shape=(None, 8, 8, 1), compile=False)
    eager.compile(optimizer="adam", run_eagerly=True)
    with pytest.raises(InputError, match="at training step 2") as error:  # the same, eagerly
        eager.fit(stream, epochs=1, verbose=0)
    assert error.value.step == 2
    before = model_state(model)
    with pytest.raises(ValueError, match="refused"):
        model.fit(stream.skip(2), epochs=1, verbose=0)
    # An array is checked whole before training: the error names the example.
    with pytest.raises(InputError, match=r"and NaN \(the first such example is number 37 of 64\)") as error:
        model.fit(x, epochs=1, batch_size=16, shuffle=False, verbose=0)
    assert error.value.step is None
    assert changed_variables(before, model_state(model)) == []


def test_train_names_epoch_and_batch_of_refused_data(mock_tfds, tmp_path):
    config = training.TrainConfig(
        hidden_units=(16,), latent_dim=2, epochs=1, batch_size=32, take=64,
        output_dir=str(tmp_path / "run"), verbose=0,
    )  # fmt: skip
    with mock_tfds(num_examples=64):  # uint8 up to 254: not binary
        with pytest.raises(training.DataError, match=r"binarized_mnist\[train\], epoch 0, batch 0 \(of 2 per epoch\): Expected values in \[0, 1\]"):
            training.train(config)
    assert not os.path.exists(tmp_path / "run" / "backup")


# ------------------------------------------------------------ damaged .keras


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    from conftest import build_small_vae

    path = str(tmp_path_factory.mktemp("keras") / "model.keras")
    build_small_vae(input_shape=(None, 8, 8, 1)).save(path)
    return path


def test_load_model_keeps_safe_mode_and_loads_the_package_layers(keras_file, monkeypatch):
    calls = []
    load = keras.models.load_model
    monkeypatch.setattr(keras.models, "load_model", lambda *a, **k: calls.append(k) or load(*a, **k))
    model = saving.load_model(keras_file)
    assert isinstance(model, keras_vae.VAE)
    assert calls == [{}]  # safe_mode left at Keras's default (True)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_keras_file_is_a_clear_error(keras_file, tmp_path, damage):
    path = tmp_path / "damaged.keras"
    data = open(keras_file, "rb").read()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a zip" * 100)
    with pytest.raises(saving.ModelFileError, match=r"damaged.keras is not a readable .keras archive: the file is truncated or corrupted"):
        saving.load_model(path)


def test_a_model_from_a_newer_keras_vae_is_refused_by_name(keras_file, tmp_path):
    path = tmp_path / "future.keras"
    with zipfile.ZipFile(keras_file) as source, zipfile.ZipFile(path, "w") as target:
        for item in source.infolist():
            content = source.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(content)
                assert config["config"]["keras_vae_version"] == keras_vae.__version__
                config["config"]["keras_vae_version"] = "9.0.0"
                content = json.dumps(config)
            target.writestr(item, content)
    with pytest.raises(saving.ModelFileError, match=r"saved by keras_vae 9.0.0; this is keras_vae 0\.\d+\.\d+"):
        saving.load_model(path)


def test_load_model_names_missing_and_wrong_files(tmp_path):
    with pytest.raises(saving.ModelFileError, match="not found"):
        saving.load_model(tmp_path / "missing.keras")
    (tmp_path / "w.h5").write_bytes(b"")
    with pytest.raises(saving.ModelFileError, match=r"Expected a file ending in .keras. Received: .*w.h5"):
        saving.load_model(tmp_path / "w.h5")


# ------------------------------------------- kill -9, resume, determinism


TRAIN_ARGS = [
    "--take", "2048", "--batch-size", "32", "--hidden-units", "32", "--latent-dim", "4",
    "--epochs", "3", "--warmup-epochs", "2", "--backup-every", "5", "--deterministic",
    "--eval-samples", "0", "--no-plots", "--export-dir=", "--verbose", "0",
]  # fmt: skip
STEPS_PER_EPOCH = 2048 // 32


def _train_command(output_dir):
    return [
        sys.executable, os.path.join(ROOT, "tools", "train.py"),
        "--data-dir", shared_data_dir() or pytest.skip("binarized_mnist is not prepared on this machine"), "--output-dir", str(output_dir), *TRAIN_ARGS,
    ]  # fmt: skip


def _run(command):
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    _run(_train_command(output_dir))
    return output_dir


def _final_model(output_dir):
    return saving.load_model(os.path.join(output_dir, "last.keras"))


def _history(output_dir):
    return training.read_history(os.path.join(output_dir, "history.csv"))


def test_two_deterministic_runs_give_identical_weights(uninterrupted_run, tmp_path):
    _run(_train_command(tmp_path / "again"))
    first, second = _final_model(uninterrupted_run), _final_model(tmp_path / "again")
    for a, b in zip(_weights(first), _weights(second)):
        np.testing.assert_array_equal(a, b)
    assert _history(uninterrupted_run) == _history(tmp_path / "again")


def test_killed_mid_epoch_and_rerun_ends_where_an_uninterrupted_run_ends(uninterrupted_run, tmp_path):
    output_dir = tmp_path / "killed"
    pointer = output_dir / "backup" / "latest.json"
    process = subprocess.Popen(
        _train_command(output_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    killed_at = None
    deadline = time.time() + 300
    try:
        while time.time() < deadline and process.poll() is None:
            try:
                step = json.loads(pointer.read_text())["step"]
            except (OSError, ValueError):
                step = 0
            # A backup in the middle of epoch 1: kill the process right away.
            if step > STEPS_PER_EPOCH and step % STEPS_PER_EPOCH:
                process.send_signal(signal.SIGKILL)
                killed_at = step
                break
            time.sleep(0.01)
    finally:
        if process.poll() is None and killed_at is None:
            process.kill()
        process.wait()
    assert killed_at is not None, f"the run ended before it could be killed: {process.stderr.read()[-2000:]}"
    assert process.returncode == -signal.SIGKILL
    assert not (output_dir / "last.keras").exists()

    # The same command again.
    out = _run(_train_command(output_dir) + ["--verbose", "1"])
    resumed_from = json.loads(out.split("Resuming from the backup of step ")[1].split(" ")[0])
    assert resumed_from >= killed_at and resumed_from % STEPS_PER_EPOCH

    reference, resumed = _final_model(uninterrupted_run), _final_model(output_dir)
    assert int(resumed.optimizer.iterations) == 3 * STEPS_PER_EPOCH
    # Deterministic ops, the same data stream, the restored seed state and
    # optimizer: the resumed run is the uninterrupted run, bit for bit.
    for a, b in zip(_weights(reference), _weights(resumed)):
        np.testing.assert_array_equal(a, b)
    expected, got = _history(uninterrupted_run), _history(output_dir)
    assert got["val_elbo"] == expected["val_elbo"]
    assert got["beta"] == expected["beta"] == [0.0, 0.5, 1.0]
