"""End-to-end smoke tests of tools/train.py, tools/evaluate.py, tools/export.py
on mocked TFDS (`mock_tfds` in conftest.py: no network, no prepared data).

The mocked binarized_mnist has train and validation splits (as on these
machines) of 64 examples. Its images are binary in the test's own setup
(`max_value=2`: TFDS's mock draws uint8 in [0, 2)); with the mock's default
values (uint8 up to 254) the model must refuse them.

One full training run (1 epoch, tiny model, latent 2) is shared by the tests
that only read its outputs (`run`, module scope). The CLIs are imported from
their files and their `main(argv)` called in-process, except `--help`, which
runs each script as a subprocess.
"""

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_vae
import keras_vae.callbacks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TAKE = 64
EVALUATE_KEYS = {
    "nll", "log_likelihood", "elbo", "reconstruction", "distortion", "kl", "rate",
    "gap", "active_units", "latent_dim", "aggregate_posterior_kl", "num_examples",
    "num_samples",
}  # fmt: skip


def _tool(name):
    """The module of tools/<name>.py (tools/ is not a package)."""
    path = os.path.join(ROOT, "tools", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"keras_vae_tools_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train_argv(output_dir, *extra, epochs=1):
    return [
        "--epochs", str(epochs), "--take", str(TAKE), "--hidden-units", "16",
        "--latent-dim", "2", "--eval-samples", "5", "--output-dir", str(output_dir),
        "--batch-size", "32", "--verbose", "0", *extra,
    ]  # fmt: skip


def _quick_argv(output_dir, epochs):
    """Training only: no evaluation, plots or export."""
    return _train_argv(output_dir, "--eval-samples", "0", "--no-plots", "--export-dir", "", epochs=epochs)


def _csv_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def run(mock_tfds, tmp_path_factory):
    """One full `tools/train.py` run: paths, its report and the data dir."""
    base = tmp_path_factory.mktemp("cli")
    output_dir, export_dir = base / "run", base / "saved"
    with mock_tfds(num_examples=TAKE, max_value=2) as data_dir:
        report = _tool("train").main(_train_argv(output_dir, "--export-dir", str(export_dir)))
    return {"output_dir": output_dir, "export_dir": export_dir, "report": report, "data_dir": data_dir}


# ------------------------------------------------------------ tools/train.py


def test_train_writes_config_history_and_models(run):
    output_dir = run["output_dir"]
    with open(output_dir / "config.json") as f:
        config = json.load(f)
    assert config["latent_dim"] == 2 and config["hidden_units"] == [16]
    assert config["epochs"] == 1 and config["take"] == TAKE and config["batch_size"] == 32
    assert config["dataset"] == "binarized_mnist"

    rows = _csv_rows(output_dir / "history.csv")
    assert [int(r["epoch"]) for r in rows] == [0]
    for key in ("loss", "reconstruction", "kl", "elbo", "beta", "val_elbo", "val_loss"):
        assert np.isfinite(float(rows[0][key])), key
    assert float(rows[0]["beta"]) == 0.0  # first epoch of the default 10-epoch warm-up

    best = keras.models.load_model(output_dir / "best.keras")
    assert isinstance(best, keras_vae.VAE)
    assert best.latent_dim == 2 and best.input_event_shape == (28, 28, 1)
    assert (output_dir / "last.keras").is_file()
    assert any((output_dir / "tensorboard").iterdir())


def test_train_writes_evaluation_json_of_the_validation_split(run):
    with open(run["output_dir"] / "evaluation.json") as f:
        report = json.load(f)
    assert report == json.loads(json.dumps(run["report"]))  # what main returned
    assert report["epochs_run"] == 1 and report["train_seconds"] >= 0
    assert list(report["splits"]) == ["validation"]  # no test split prepared
    results = report["splits"]["validation"]
    assert set(results) == EVALUATE_KEYS
    assert results["num_examples"] == TAKE and results["num_samples"] == 5
    assert results["latent_dim"] == 2
    assert results["nll"] > 0 and results["gap"] > 0


@pytest.mark.parametrize(
    "name", ["reconstructions", "samples", "latent_space", "manifold", "training_curves"]
)
def test_train_writes_every_plot_as_png_including_manifold_for_latent_2(run, name):
    path = run["output_dir"] / "plots" / f"{name}.png"
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    assert path.stat().st_size > 1000


def test_train_exports_a_versioned_saved_model(run):
    version_dir = run["export_dir"] / "binarized_mnist_vae" / "1"
    assert (version_dir / "saved_model.pb").is_file()
    assert (version_dir / "variables").is_dir()
    assert os.listdir(run["export_dir"] / "binarized_mnist_vae") == ["1"]  # no staging left


def test_train_refuses_mock_images_that_are_not_binary(mock_tfds, tmp_path):
    # TFDS's mock fills binarized_mnist with uint8 up to 254: the Bernoulli
    # likelihood must refuse them rather than train on them.
    with mock_tfds(num_examples=TAKE) as _:
        with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
            _tool("train").main(_quick_argv(tmp_path / "run", epochs=1))
    assert not (tmp_path / "run" / "best.keras").exists()


class _Interrupt(keras.callbacks.Callback):
    """Stands in for StopOnNonFiniteLoss; raises when epoch 1 begins (after
    epoch 0's backup, checkpoint and CSV row are written)."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("interrupted")


def test_train_resumes_an_interrupted_run_from_its_last_epoch(mock_tfds, tmp_path, monkeypatch):
    output_dir = tmp_path / "run"
    argv = _quick_argv(output_dir, epochs=2)
    train = _tool("train")
    with mock_tfds(num_examples=TAKE, max_value=2):
        with monkeypatch.context() as patch:
            patch.setattr(keras_vae.callbacks, "StopOnNonFiniteLoss", _Interrupt)
            with pytest.raises(RuntimeError, match="interrupted"):
                train.main(argv)
        assert (output_dir / "backup").is_dir()
        assert [int(r["epoch"]) for r in _csv_rows(output_dir / "history.csv")] == [0]
        first_epoch = _csv_rows(output_dir / "history.csv")[0]

        report = train.main(argv)  # the same command again

    rows = _csv_rows(output_dir / "history.csv")
    # Epoch 1 only was trained: no second row for epoch 0.
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert rows[0] == first_epoch
    # The warm-up schedule continues where it stopped (10 epochs: 0, then 0.1).
    assert [float(r["beta"]) for r in rows] == pytest.approx([0.0, 0.1])
    assert report["epochs_run"] == 2
    best = keras.models.load_model(output_dir / "best.keras")
    assert best.optimizer.iterations.numpy() > 0


class _StopBeforeTraining(Exception):
    pass


def test_train_again_with_more_epochs_continues_a_completed_run(run, mock_tfds, tmp_path, monkeypatch):
    output_dir = tmp_path / "run"
    shutil.copytree(run["output_dir"], output_dir)  # a completed 1-epoch run
    fits = []

    def fit(model, *args, **kwargs):
        # The backup is restored before fit, which starts at epoch 1.
        fits.append((kwargs["initial_epoch"], int(model.optimizer.iterations.numpy())))
        raise _StopBeforeTraining  # cheap: the decision is made by now

    monkeypatch.setattr(keras_vae.VAE, "fit", fit)
    with mock_tfds(num_examples=TAKE, max_value=2):
        with pytest.raises(_StopBeforeTraining):
            _tool("train").main(_quick_argv(output_dir, epochs=2))
    assert len(fits) == 1
    # The finished epoch is kept, and there is a backup to continue from.
    assert (output_dir / "history.csv").exists()
    assert [int(r["epoch"]) for r in _csv_rows(output_dir / "history.csv")] == [0]
    assert fits == [(1, TAKE // 32)]  # one epoch of 32-example batches


# ------------------------------------------------------------ tools/evaluate.py


def test_evaluate_cli_on_keras_file_run_dir_and_export_give_the_same_numbers(run, mock_tfds, tmp_path):
    evaluate = _tool("evaluate")
    common = ["--take", str(TAKE), "--samples", "5", "--verbose", "0", "--split", "validation"]
    version_dir = run["export_dir"] / "binarized_mnist_vae" / "1"
    with mock_tfds(num_examples=TAKE, max_value=2):
        from_file = evaluate.main(
            [str(run["output_dir"] / "best.keras"), *common, "--output", str(tmp_path / "file.json")]
        )
        from_run_dir = evaluate.main(
            [str(run["output_dir"]), *common, "--output", str(tmp_path / "run.json")]
        )
        from_export = evaluate.main([str(version_dir), *common])  # default output path

    for path, returned in (
        (tmp_path / "file.json", from_file),
        (tmp_path / "run.json", from_run_dir),
        # Beside the version directory, not in it: TF Serving may be serving it.
        (version_dir.parent / "evaluation-v1-validation.json", from_export),
    ):
        with open(path) as f:
            written = json.load(f)
        assert written["dataset"] == "binarized_mnist"
        assert list(written["splits"]) == ["validation"]
        assert set(written["splits"]["validation"]) == EVALUATE_KEYS
        assert written["splits"] == json.loads(json.dumps(returned))

    reference = from_file["validation"]
    assert reference["num_examples"] == TAKE and reference["num_samples"] == 5
    # The same model, seed and data: the same numbers from the .keras file and
    # from the run directory (its best.keras)...
    assert from_run_dir["validation"] == pytest.approx(reference, rel=1e-6)
    # ...and from the SavedModel TF Serving would load: the same importance
    # weights (log p(x), reconstruction) and posterior means. (The KL, and so
    # the ELBO and gap, see the next test.)
    exported = from_export["validation"]
    for key in ("nll", "reconstruction", "active_units", "aggregate_posterior_kl"):
        assert exported[key] == pytest.approx(reference[key], rel=1e-4, abs=1e-3), key


def test_evaluate_of_an_export_reports_the_keras_models_kl_and_is_repeatable(run):
    from keras_vae import evaluation
    from keras_vae import export

    version_dir = run["export_dir"] / "binarized_mnist_vae" / "1"
    exported = export.ExportedVAE(str(version_dir))
    model = keras.models.load_model(run["output_dir"] / "best.keras")
    x = (np.random.default_rng(0).random((16, 28, 28, 1)) < 0.5).astype("float32")
    first = evaluation.evaluate(exported, [x], num_samples=2, seed=0, verbose=0)
    second = evaluation.evaluate(exported, [x], num_samples=2, seed=0, verbose=0)
    reference = evaluation.evaluate(model, [x], num_samples=2, seed=0, verbose=0)
    for key in ("kl", "elbo", "gap"):
        assert first[key] == second[key], key  # same seed, same numbers
        assert first[key] == pytest.approx(reference[key], rel=1e-4, abs=1e-3), key


# ------------------------------------------------------------ --help


def test_every_cli_prints_help_and_exits_0():
    # Started together: each is a fresh interpreter (train.py imports TF for
    # its defaults), so running them in parallel saves wall time.
    scripts = {"train": "--epochs", "evaluate": "--samples", "export": "--base-dir"}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    processes = {
        name: subprocess.Popen(
            [sys.executable, os.path.join("tools", f"{name}.py"), "--help"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in scripts
    }
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, (name, stderr[-2000:])
        assert stdout.startswith("usage:"), name
        assert scripts[name] in stdout, name
        assert "Example" in stdout, name  # the module docstring is the description
