"""End-to-end smoke tests of tools/train.py, tools/evaluate.py, tools/export.py
on mocked TFDS (`mock_tfds` in conftest.py: no network, no prepared data).

The mocked binarized_mnist has train and validation splits (as on these
machines) of 64 examples. Its images are binary in the test's own setup
(`max_value=2`: TFDS's mock draws uint8 in [0, 2)); with the mock's default
values (uint8 up to 254) the model must refuse them.

One full training run (1 epoch, tiny model, latent 2) is shared by the tests
that only read its outputs (`run`, module scope). The CLIs are imported from
their files and their `main(argv)` called in-process, except `--help` and one
error case, which run the scripts as subprocesses.
"""

import csv
import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import warnings

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
    # The default warm-up is min(10, epochs // 2): none for one epoch.
    assert config["warmup_epochs"] == 0 and float(rows[0]["beta"]) == 1.0

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
    # The default name is <dataset>_run, never the shipped binarized_mnist_vae.
    version_dir = run["export_dir"] / "binarized_mnist_run" / "1"
    assert (version_dir / "saved_model.pb").is_file()
    assert (version_dir / "variables").is_dir()
    assert os.listdir(run["export_dir"] / "binarized_mnist_run") == ["1"]  # no staging left
    with open(run["output_dir"] / "evaluation.json") as f:
        assert json.load(f)["export"] == str(version_dir)


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
            patch.setattr(keras_vae.training, "StopOnNonFiniteLoss", _Interrupt)
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
    # The warm-up schedule continues where it stopped (2 epochs: a 1-epoch
    # warm-up, beta 0 then 1).
    assert [float(r["beta"]) for r in rows] == pytest.approx([0.0, 1.0])
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
    version_dir = run["export_dir"] / "binarized_mnist_run" / "1"
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
        # Named after what was evaluated: k=5 on the first 64 examples.
        (version_dir.parent / "evaluation-v1-validation-k5-n64.json", from_export),
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
    from keras_vae import exported as exported_lib

    version_dir = run["export_dir"] / "binarized_mnist_run" / "1"
    exported = exported_lib.ExportedVAE(str(version_dir))
    model = keras.models.load_model(run["output_dir"] / "best.keras")
    x = (np.random.default_rng(0).random((16, 28, 28, 1)) < 0.5).astype("float32")
    first = evaluation.evaluate(exported, [x], num_samples=2, seed=0, verbose=0)
    second = evaluation.evaluate(exported, [x], num_samples=2, seed=0, verbose=0)
    reference = evaluation.evaluate(model, [x], num_samples=2, seed=0, verbose=0)
    for key in ("kl", "elbo", "gap"):
        assert first[key] == second[key], key  # same seed, same numbers
        assert first[key] == pytest.approx(reference[key], rel=1e-4, abs=1e-3), key


# ------------------------------------------- defaults, reruns, warm-up


def _status(output_dir):
    with open(output_dir / "status.json") as f:
        return json.load(f)


@pytest.mark.machine_defaults
def test_default_run_exports_beside_the_shipped_model_and_a_rerun_changes_nothing(mock_tfds, tmp_path, monkeypatch, capsys):
    # A shipped model in ./saved_models: a run with the default --name and
    # --export-dir must not add a version to it (TF Serving would serve it).
    monkeypatch.chdir(tmp_path)
    shipped = tmp_path / "saved_models" / "binarized_mnist_vae"
    (shipped / "1").mkdir(parents=True)
    (shipped / "1" / "saved_model.pb").write_bytes(b"shipped")
    (shipped / "evaluation-v1-validation.json").write_text("{}")
    argv = [
        "--epochs", "1", "--take", str(TAKE), "--hidden-units", "16", "--latent-dim", "2",
        "--batch-size", "32", "--eval-samples", "2", "--no-plots", "--verbose", "2",
    ]  # fmt: skip
    train = _tool("train")
    run_dir = tmp_path / "runs" / "binarized_mnist_run"
    exports = tmp_path / "saved_models" / "binarized_mnist_run"
    with mock_tfds(num_examples=TAKE, max_value=2):
        first = train.main(argv)
        assert sorted(os.listdir(shipped)) == ["1", "evaluation-v1-validation.json"]
        assert os.listdir(exports) == ["1"] and first["export"] == os.path.join("saved_models", "binarized_mnist_run", "1")
        report, status = (run_dir / "evaluation.json").read_bytes(), (run_dir / "status.json").read_bytes()
        capsys.readouterr()

        # The same command again: the run is complete. Nothing is trained,
        # evaluated or exported; no measured figure is rewritten.
        again = train.main(argv)
        out = capsys.readouterr().out
        assert f"The run in {os.path.join('runs', 'binarized_mnist_run')} is complete: epoch 1 of 1 is trained (step 2)" in out
        assert "larger --epochs" in out and "--fresh" in out and "Resuming" not in out
        assert again == first
        assert os.listdir(exports) == ["1"]
        assert (run_dir / "evaluation.json").read_bytes() == report
        assert (run_dir / "status.json").read_bytes() == status

        # A larger --epochs continues: train_seconds sums the two sessions.
        continued = train.main([*argv, "--epochs", "2", "--export-dir", ""])
    assert "Resuming from the backup of step 2" in capsys.readouterr().out
    sessions = _status(run_dir)["sessions"]
    assert [(s["first_step"], s["last_step"]) for s in sessions] == [(0, 2), (2, 4)]
    # Each session's seconds and their sum are rounded to 0.1 s.
    assert continued["train_seconds"] == pytest.approx(sum(s["seconds"] for s in sessions), abs=0.11)
    assert continued["train_seconds"] >= first["train_seconds"]
    assert continued["epochs_run"] == 2 and continued["step"] == 4 and continued["export"] is None
    assert os.listdir(exports) == ["1"]


class _StopAfterSecondEpoch(keras.callbacks.EarlyStopping):
    """EarlyStopping that stops after epoch 1 whatever the metric."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            self.stopped_epoch = epoch
            self.model.stop_training = True


def test_a_run_ended_by_early_stopping_is_complete_for_the_same_patience(mock_tfds, tmp_path, monkeypatch, capsys):
    from keras_vae import training

    monkeypatch.setattr(keras.callbacks, "EarlyStopping", _StopAfterSecondEpoch)
    config = training.TrainConfig(
        hidden_units=(16,), latent_dim=2, epochs=5, batch_size=32, take=TAKE, patience=1,
        output_dir=str(tmp_path / "run"), verbose=0,
    )  # fmt: skip
    with mock_tfds(num_examples=TAKE, max_value=2):
        _, history = training.train(config)
        assert len(history["epoch"]) == 2
        status = training.read_status(config.output_dir)
        assert status["stopped_early"] == {"epochs_run": 2, "patience": 1} and status["step"] == 4

        def fit(*args, **kwargs):
            raise AssertionError("a complete run was trained again")

        monkeypatch.setattr(keras_vae.VAE, "fit", fit)
        model, _ = training.train(dataclasses.replace(config, epochs=50, verbose=1))
    assert "early stopping (patience 1) ended it after 2 of 50 epochs (step 4)" in capsys.readouterr().out
    assert isinstance(model, keras_vae.VAE)
    assert training.read_status(config.output_dir) == status


def test_nothing_to_train_when_all_epochs_are_done_or_early_stopping_ended_the_run():
    from keras_vae import training

    def verdict(step, status=None, **kwargs):
        config = training.TrainConfig(epochs=10, output_dir="runs/x", **kwargs)
        return training._nothing_to_train(config, step, 2, status)

    assert "complete: epoch 10 of 10 is trained (step 20). Nothing to train" in verdict(20)
    assert "complete: 11 epochs are trained (step 22), more than epochs=10" in verdict(22)
    assert verdict(19) is None  # mid-epoch 9
    stopped = {"step": 8, "stopped_early": {"epochs_run": 4, "patience": 3}}
    assert "early stopping (patience 3) ended it after 4 of 10 epochs" in verdict(8, stopped, patience=3)
    assert "early stopping" in verdict(8, stopped, patience=2)
    assert verdict(8, stopped, patience=4) is None  # more patience: train on
    assert verdict(8, stopped, patience=0) is None  # early stopping off
    assert verdict(6, stopped, patience=3) is None  # the status is of another step


def test_default_warmup_leaves_the_last_epochs_on_the_elbo_and_sticks_to_a_continued_run(tmp_path):
    from keras_vae import training
    from keras_vae.callbacks import KLWarmup

    def warmup(epochs, previous=None, **kwargs):
        config = training.TrainConfig(epochs=epochs, **kwargs)
        return training._resolve_warmup(config, previous).warmup_epochs

    assert training.TrainConfig().warmup_epochs is None
    assert [warmup(e) for e in (1, 2, 3, 10, 19, 20, 198)] == [0, 1, 1, 5, 9, 10, 10]
    # The README's main job (--epochs 10): its last 5 epochs train on beta = 1.
    betas = [KLWarmup(warmup(10)).beta_at(e) for e in range(10)]
    assert betas == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert warmup(10, warmup_epochs=3) == 3
    # Continued with a larger --epochs, a run keeps the warm-up it started with.
    previous = tmp_path / "config.json"
    previous.write_text(training.TrainConfig(epochs=4, warmup_epochs=2).to_json())
    assert warmup(30, str(previous)) == 2
    assert warmup(30, str(previous), warmup_epochs=7) == 7
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warmup(10)  # no warning for the default
    with pytest.warns(UserWarning, match=r"warmup_epochs=10 >= epochs=10: beta ends at 0.9 in the last epoch, below beta=1"):
        warmup(10, warmup_epochs=10)


def test_summary_says_to_watch_the_elbo_during_warmup():
    from keras_vae import training

    history = {"beta": [0.0, 0.5, 1.0, 1.0], "loss": [150.0, 160.0, 170.0, 165.0], "val_elbo": [-150.0, -140.0, -130.0, -131.0]}
    summary = training.summarize(history)
    assert "is 1 from epoch 3 of 4 on" in summary and "watch the ELBO" in summary
    assert "Best validation ELBO: -130.00 nats (epoch 3 of 4)" in summary
    never = training.summarize({"beta": [0.0, 0.5], "elbo": [-150.0, -140.0]})
    assert "beta ended at 0.5, below 1: no epoch trained on the full objective" in never
    assert "Best training ELBO: -140.00 nats (epoch 2 of 2)" in never


def test_summary_of_an_iwae_run_names_its_loss_and_its_best_bound():
    from keras_vae import training

    history = {
        "beta": [0.0, 1.0, 1.0],
        "loss": [229.0, 232.0, 228.0],
        "val_elbo": [-240.0, -236.0, -234.0],
        "val_iwae": [-229.0, -231.0, -228.5],
    }
    summary = training.summarize(history, 1.0, "iwae")
    assert "The loss, -(IWAE bound with beta on log q - log p), rises" in summary
    assert "reconstruction - beta * KL" not in summary
    assert "Best validation IWAE bound: -228.50 nats (epoch 3 of 3)" in summary
    assert "Best validation IWAE" not in training.summarize(history, 1.0, "elbo")


# ------------------------------------------------------------ evaluation files


def test_evaluate_never_replaces_a_different_evaluation(run, mock_tfds, tmp_path, monkeypatch):
    # The issue: `evaluate.py saved_models/binarized_mnist_vae/1 --samples 100
    # --take 2000` replaced the committed evaluation-v1-validation.json (k=5000
    # on 10,000 images). Here on a copy: an export and that file beside it.
    base = tmp_path / "binarized_mnist_vae"
    shutil.copytree(run["export_dir"] / "binarized_mnist_run", base)
    committed = base / "evaluation-v1-validation.json"
    shipped = os.path.join(ROOT, "saved_models", "binarized_mnist_vae", committed.name)
    if os.path.exists(shipped):
        shutil.copy(shipped, committed)
    else:  # its fields, as committed
        committed.write_text(json.dumps({
            "model": "saved_models/binarized_mnist_vae/1", "dataset": "binarized_mnist",
            "splits": {"validation": {"nll": 88.5, "num_examples": 10000, "num_samples": 5000}},
            "epochs_run": 198,
        }))  # fmt: skip
    before, listed = committed.read_bytes(), set(os.listdir(base))
    evaluate = _tool("evaluate")
    quick = [str(base / "1"), "--samples", "3", "--take", "8", "--verbose", "0"]
    written = base / "evaluation-v1-validation-k3-n8.json"
    with mock_tfds(num_examples=TAKE, max_value=2):
        evaluate.main(quick)
        assert committed.read_bytes() == before
        record = json.loads(written.read_text())
        assert (record["seed"], record["take"]) == (0, 8)
        assert record["splits"]["validation"]["num_samples"] == 3
        assert record["splits"]["validation"]["num_examples"] == 8

        # A file of another evaluation under the name is refused, before
        # any evaluation (another seed here; k, examples, splits, dataset
        # likewise).
        written.write_text(json.dumps({**record, "seed": 5}))
        with monkeypatch.context() as patch:
            from keras_vae import evaluation

            patch.setattr(evaluation, "evaluate", None)  # not reached
            with pytest.raises(ValueError, match=r"holds validation: k=3 on 8 examples of binarized_mnist, seed 5; this one is validation: k=3 on 8 examples of binarized_mnist, seed 0\. Not overwritten and not evaluated: pass --output PATH"):
                evaluate.main(quick)
        assert json.loads(written.read_text())["seed"] == 5

        # The same evaluation again rewrites its file, keeping other fields.
        written.write_text(json.dumps({**record, "note": "kept"}))
        evaluate.main(quick)
        # Another seed is another file; --output replaces a file on purpose.
        evaluate.main([*quick, "--seed", "1"])
        evaluate.main([*quick, "--output", str(committed)])
    again = json.loads(written.read_text())
    assert again["note"] == "kept" and again["splits"] == record["splits"]
    assert set(os.listdir(base)) - listed == {
        "evaluation-v1-validation-k3-n8.json", "evaluation-v1-validation-k3-n8-seed1.json"
    }  # fmt: skip
    assert json.loads(committed.read_text())["splits"] == record["splits"]


def test_evaluate_default_output_names_what_was_evaluated(tmp_path):
    evaluate = _tool("evaluate")
    version = tmp_path / "saved" / "m" / "3"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    name = evaluate.default_output
    assert name(str(version), ["validation"]) == str(version.parent / "evaluation-v3-validation.json")
    assert name(str(version) + "/", ["validation", "test"], samples=100, take=2000) == str(
        version.parent / "evaluation-v3-validation-test-k100-n2000.json"
    )
    assert name(str(run_dir), ["test"], dataset="mnist", seed=2) == str(run_dir / "evaluation-test-mnist-seed2.json")
    assert name(str(run_dir / "best.keras"), ["validation"]) == str(run_dir / "evaluation-best-validation.json")


# ------------------------------------------------------------ --help, errors


def _help_entries(text):
    """{option: its help text} from an argparse --help output."""
    entries, current = {}, None
    for line in text.split("options:", 1)[1].splitlines():
        stripped = line.strip()
        if line.startswith("  -") and stripped:
            current = stripped.split()[0].rstrip(",")
            entries[current] = stripped
        elif current and line.startswith("      "):
            entries[current] += " " + stripped
        elif not stripped or not line.startswith(" "):
            current = None
    return entries


def test_every_cli_prints_help_fast_with_every_default_and_without_tensorflow():
    # Each script runs as __main__ in a fresh interpreter; after --help
    # neither TensorFlow nor keras_vae may have been imported.
    code = (
        "import runpy, sys\n"
        "sys.argv = [sys.argv[1], '--help']\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "print('IMPORTED:', sorted(m for m in ('tensorflow', 'keras', 'keras_vae') if m in sys.modules))\n"
    )
    scripts = {"train": "--epochs", "evaluate": "--samples", "export": "--base-dir", "serving_client": "--signature"}
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-c", code, os.path.join("tools", f"{name}.py")],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for name in scripts
    }
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, (name, stderr[-2000:])
        assert stdout.startswith("usage:"), name
        assert stdout.rstrip().endswith("IMPORTED: []"), (name, stdout[-300:])
        assert "Example" in stdout, name  # the module docstring is the description
        entries = _help_entries(stdout)
        assert scripts[name] in entries and "--debug" in entries, name
        for option, text in entries.items():
            if option not in ("-h", "--help"):
                assert "(default" in text, (name, option, text)
        if name == "train":
            # The TF_CONFIG example keeps its line continuation.
            assert '"task": {"type": "worker", "index": 0}}\' \\\n        python tools/train.py --strategy multiworker' in stdout
            assert "(default: min(10, epochs // 2)" in entries["--warmup-epochs"]
            assert "(default: <dataset>_run)" in entries["--name"]


def test_train_options_are_the_train_config_fields_with_their_defaults(capsys):
    from keras_vae import config
    from keras_vae import data
    from keras_vae import distribute
    from keras_vae import training

    assert training.TrainConfig is config.TrainConfig
    assert config.DATASETS == tuple(sorted(data.DATASETS)) and config.DEFAULT_DATASET == data.DEFAULT_DATASET
    assert config.STRATEGIES == distribute.STRATEGIES
    train = _tool("train")
    args = train.parse_args([])
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(training.TrainConfig)}
    assert values == dataclasses.asdict(training.TrainConfig(output_dir="runs/binarized_mnist_run"))
    assert args.name == "binarized_mnist_run" and args.hidden_units == (512, 256)
    assert train.parse_args(["--hidden-units", "16,8", "--name", "x"]).hidden_units == (16, 8)
    assert train.parse_args(["--name", "x"]).output_dir == os.path.join("runs", "x")
    for bad, message in (
        (["--epochs", "0"], "Expected --epochs to be a positive integer. Received: --epochs=0"),
        (["--hidden-units", "16,a"], "Expected comma-separated positive integers"),
        (["--warmup-epochs", "-1"], "Expected --warmup-epochs to be an integer >= 0"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            train.parse_args(bad)
        assert exit_info.value.code == 1  # the tools' error rule (tests/test_cli_errors.py)
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1


def _run_cli(name, argv):
    """The exit status of `_cli.run(main, argv)` for tools/<name>.py."""
    with pytest.raises(SystemExit) as exit_info:
        _tool("_cli").run(_tool(name).main, argv)
    return exit_info.value.code


def test_cli_errors_are_one_line_messages_with_exit_status_1(mock_tfds, tmp_path, capsys):
    missing = str(tmp_path / "missing.keras")
    cases = {
        "evaluate": ([missing], "error: Expected a .keras file, a run directory (runs/<name>) or an export version "
                     f"directory (saved_models/<name>/<version>). Received: {missing} (not found)"),
        "export": ([missing, "--base-dir", str(tmp_path / "saved")], f"error: Expected a .keras file or a run directory. Received: {missing} (not found)"),
        # Nothing listens on port 1: a ServingError (a RuntimeError of keras_vae).
        "serving_client": (["--rest", "localhost:1", "--signature", "encode", "--event-shape", "2,2,1"], "error: "),
        # Not binary images: a keras_vae.training.DataError.
        "train": (_quick_argv(tmp_path / "run", epochs=1), "error: Bad training data in binarized_mnist[train], epoch 0, batch 0"),
    }
    with mock_tfds(num_examples=TAKE):
        for name, (argv, message) in cases.items():
            assert _run_cli(name, argv) == 1, name
            err = capsys.readouterr().err
            assert err.startswith(message) and err.endswith("\n"), (name, err)
            assert "Traceback" not in err, name
    assert not (tmp_path / "saved").exists()


def test_cli_run_exit_statuses_and_debug(capsys):
    from keras_vae.callbacks import NonFiniteLossError

    cli = _tool("_cli")

    def raising(error):
        def main(argv):
            raise error

        return main

    for error, status in (
        (KeyboardInterrupt(), 130), (NonFiniteLossError("nan loss"), 1),
        (FileNotFoundError("no such file"), 1), (ValueError("bad value"), 1),
    ):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            cli.run(raising(error), [])
        assert exit_info.value.code == status
        out, err = capsys.readouterr()
        assert out == "" and err == ("" if status == 130 else f"error: {error}\n")
    with pytest.raises(SystemExit) as exit_info:
        cli.run(lambda argv: None, [])
    assert exit_info.value.code == 0
    # A bug keeps its traceback; --debug shows the traceback of any error.
    with pytest.raises(TypeError):
        cli.run(raising(TypeError("a bug")), [])
    with pytest.raises(ValueError, match="bad value"):
        cli.run(raising(ValueError("bad value")), ["x", "--debug"])
    with pytest.raises(KeyboardInterrupt):
        cli.run(raising(KeyboardInterrupt()), ["--debug"])


def test_a_cli_error_in_a_fresh_process_prints_one_line_and_debug_the_traceback(tmp_path):
    command = [sys.executable, os.path.join(ROOT, "tools", "evaluate.py"), str(tmp_path / "missing")]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    plain, debug = (
        subprocess.Popen(command + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for extra in ([], ["--debug"])
    )
    _, plain_err = plain.communicate(timeout=300)
    _, debug_err = debug.communicate(timeout=300)
    assert plain.returncode == 1 and debug.returncode == 1
    assert "Traceback" not in plain_err
    assert plain_err.strip().splitlines()[-1] == (
        "error: Expected a .keras file, a run directory (runs/<name>) or an export version "
        f"directory (saved_models/<name>/<version>). Received: {tmp_path / 'missing'} (not found)"
    )
    assert "Traceback (most recent call last)" in debug_err and "ValueError: Expected a .keras file" in debug_err


# ------------------------------------------------------------------ ablation


def test_ablation_runs_train_once_per_prior_and_objective_and_tabulates_validation(tmp_path, monkeypatch):
    """tools/ablation.py: the train.py command of each combination (k only
    for iwae, the passthrough options last) and a table row read from each
    run's evaluation.json."""
    ablation = _tool("ablation")
    monkeypatch.chdir(tmp_path)
    commands = []

    def fake_run(command, check):
        commands.append(command)
        name = command[command.index("--name") + 1]
        os.makedirs(os.path.join("runs", name))
        nll = 90.0 + len(commands)
        report = {"epochs_run": 3, "train_seconds": 120.0, "splits": {"validation": {
            "elbo": -nll - 5, "nll": nll, "num_samples": 50, "active_units": 7}}}  # fmt: skip
        with open(os.path.join("runs", name, "evaluation.json"), "w") as f:
            json.dump(report, f)

    monkeypatch.setattr(ablation.subprocess, "run", fake_run)
    rows = ablation.main(["--epochs", "3", "--eval-samples", "50", "--priors", "standard", "vamp", "--", "--take", "64"])
    assert [(c[c.index("--prior") + 1], c[c.index("--objective") + 1], c[c.index("--num-samples") + 1]) for c in commands] == [
        ("standard", "elbo", "1"), ("standard", "iwae", "5"), ("vamp", "elbo", "1"), ("vamp", "iwae", "5"),
    ]  # fmt: skip
    assert all(c[-2:] == ["--take", "64"] and c[c.index("--export-dir") + 1] == "" for c in commands)
    assert [r["val_nll"] for r in rows] == [91.0, 92.0, 93.0, 94.0]
    table = (tmp_path / "runs" / "ablation" / "ablation.md").read_text()
    assert "| single | vamp | iwae | 3 | 2.0 | -99.0 | 94.0 (50) | 7 |" in table
    assert json.loads((tmp_path / "runs" / "ablation" / "ablation.json").read_text()) == rows


def test_ablation_structures_add_their_train_options_and_name_their_runs(tmp_path, monkeypatch):
    """--structures: hierarchical runs get --latent-layers 2, iaf runs --flow
    iaf (before the passthrough options), each under its own run name; single
    runs keep the names of an ablation without --structures; the structure
    options after -- are refused up front (before any run)."""
    ablation = _tool("ablation")
    monkeypatch.chdir(tmp_path)
    commands = []

    def fake_run(command, check):
        commands.append(command)
        name = command[command.index("--name") + 1]
        os.makedirs(os.path.join("runs", name))
        report = {"epochs_run": 2, "train_seconds": 60.0, "splits": {"validation": {
            "elbo": -100.0, "nll": 95.0, "num_samples": 10, "active_units": 3}}}  # fmt: skip
        with open(os.path.join("runs", name, "evaluation.json"), "w") as f:
            json.dump(report, f)

    monkeypatch.setattr(ablation.subprocess, "run", fake_run)
    rows = ablation.main(["--structures", "single", "hierarchical", "iaf", "--priors", "vamp", "--objectives", "elbo",
                          "--prefix", "abl", "--", "--take", "64"])  # fmt: skip
    names = [c[c.index("--name") + 1] for c in commands]
    assert names == ["abl_vamp_elbo", "abl_hierarchical_vamp_elbo", "abl_iaf_vamp_elbo"]
    assert "--latent-layers" not in commands[0] and "--flow" not in commands[0]
    assert commands[1][-4:] == ["--latent-layers", "2", "--take", "64"]
    assert commands[2][-4:] == ["--flow", "iaf", "--take", "64"]
    assert [r["structure"] for r in rows] == ["single", "hierarchical", "iaf"]
    assert "| iaf | vamp | elbo | 2 | 1.0 | -100.0 | 95.0 (10) | 3 |" in (tmp_path / "runs" / "abl" / "ablation.md").read_text()

    commands.clear()
    for passthrough in (["--flow", "iaf"], ["--latent-layers=2"]):
        with pytest.raises(SystemExit) as exit_info:
            ablation.main(["--structures", "iaf", "--"] + passthrough)
        assert exit_info.value.code == 1
    assert commands == []


@pytest.mark.parametrize(
    "extra",
    [
        ("--latent-layers", "2", "--prior", "vamp", "--prior-components", "4", "--architecture", "gated"),
        # The machine's own compile choices (XLA and the fused loop on AVX2-only
        # CPUs), after the other case's evaluation in the same process: where
        # the fused loop once failed to compile (tests/test_fused.py).
        pytest.param(
            ("--flow", "iaf", "--num-flows", "2", "--flow-hidden-units", "8", "--prior", "vamp",
             "--prior-components", "4", "--objective", "iwae", "--num-samples", "2"),
            marks=pytest.mark.machine_defaults,
        ),
    ],
    ids=["hierarchical_vamp", "iaf_iwae"],
)
def test_train_a_hierarchical_or_flow_model_reload_export_and_evaluate_the_export(mock_tfds, tmp_path, extra):
    """What issue 23 asks from the CLI: one epoch, the .keras reloads with the
    same outputs, the export has every signature and evaluates through them."""
    from keras_vae import export
    from keras_vae import exported as exported_lib

    output_dir, export_dir = tmp_path / "run", tmp_path / "saved"
    with mock_tfds(num_examples=TAKE, max_value=2):
        _tool("train").main(_train_argv(output_dir, "--no-plots", "--export-dir", str(export_dir), *extra))
        version_dir = export_dir / "binarized_mnist_run" / "1"
        evaluated = _tool("evaluate").main(
            [str(version_dir), "--take", str(TAKE), "--samples", "5", "--verbose", "0", "--split", "validation"]
        )
    model = keras.saving.load_model(str(output_dir / "best.keras"))
    again = keras.saving.load_model(str(output_dir / "best.keras"))
    x = (np.random.default_rng(0).random((4, 28, 28, 1)) < 0.5).astype("float32")
    noise = np.random.default_rng(1).standard_normal((4, model.noise_dim)).astype("float32")
    for a, b in zip(model.posterior_sample(x, noise), again.posterior_sample(x, noise)):
        np.testing.assert_array_equal(a, b)
    exported = exported_lib.ExportedVAE(str(version_dir))
    assert exported.portable
    assert set(export.SIGNATURES) <= set(exported.loaded.signatures)
    served = exported.loaded.signatures["posterior_sample"](x=x, noise=noise)
    np.testing.assert_allclose(served["log_q"], model.posterior_sample(x, noise)[1], rtol=1e-5, atol=1e-4)
    result = evaluated["validation"]
    assert result["num_examples"] == TAKE and np.isfinite(result["nll"])
    # The IWAE bound is at least the ELBO (k = 5; the ELBO's KL is estimated
    # on other samples, hence the slack), and not far from it on a 1-epoch model.
    assert -result["elbo"] - 50.0 <= result["nll"] <= -result["elbo"] + 5.0


def test_train_a_vqvae_writes_its_report_fits_its_prior_once_and_exports(mock_tfds, tmp_path, capsys):
    """What issue 25 asks from the CLI: `--model vqvae` trains, fits the code
    prior, evaluates the bound, plots codebook usage, writes the report and
    exports the VQ signatures; a rerun changes nothing."""
    from keras_vae import export

    output_dir, export_dir = tmp_path / "run", tmp_path / "saved"
    argv = _train_argv(
        output_dir, "--model", "vqvae", "--num-codes", "8", "--code-dim", "3", "--vq-filters", "4,8",
        "--prior-epochs", "1", "--export-dir", str(export_dir),
    )  # fmt: skip
    with mock_tfds(num_examples=TAKE, max_value=2):
        report = _tool("train").main(argv)
        status = json.loads((output_dir / "status.json").read_text())
        capsys.readouterr()
        again = _tool("train").main(argv)
        rerun = capsys.readouterr().out
        evaluated = _tool("evaluate").main(
            [str(output_dir), "--take", str(TAKE), "--samples", "5", "--verbose", "0", "--split", "validation"]
        )
    result = report["splits"]["validation"]
    assert np.isfinite(result["nll"]) and result["num_samples"] == 1 and result["gap"] == 0.0
    assert result["nll"] == pytest.approx(-result["elbo"])
    assert 1 <= result["active_units"] <= 8 == result["latent_dim"]
    assert evaluated["validation"]["nll"] == pytest.approx(result["nll"], rel=1e-5)
    assert status["code_prior"]["step"] == status["step"] and status["code_prior"]["epochs"] == 1
    assert "Fitting the code prior" not in rerun and again["export"] == report["export"]
    assert json.loads((output_dir / "status.json").read_text()) == status
    for name in ("reconstructions", "samples", "codebook_usage", "training_curves"):
        assert (output_dir / "plots" / f"{name}.png").read_bytes()[:8] == PNG_SIGNATURE
    page = (output_dir / "report.html").read_text()
    assert "Code prior (PixelCNN) fitted" in page and "Codebook usage on the validation images" in page
    model = keras.saving.load_model(str(output_dir / "best.keras"))
    assert isinstance(model, keras_vae.VQVAE) and model.grid_shape == (7, 7)
    assert np.ptp(model.prior(np.zeros((1, 7, 7), "int32")).numpy()) > 0  # the fitted prior was saved
    loaded = __import__("tensorflow").saved_model.load(report["export"])
    assert set(export.VQ_SIGNATURES) <= set(loaded.signatures)
    x = (np.random.default_rng(0).random((2, 28, 28, 1)) < 0.5).astype("float32")
    np.testing.assert_array_equal(loaded.signatures["encode"](x=x)["indices"].numpy(), model.encode(x).numpy())
    np.testing.assert_allclose(
        loaded.signatures["log_likelihood"](x=x)["log_likelihood"].numpy(), model.elbo(x).numpy(), rtol=1e-5, atol=1e-3
    )
