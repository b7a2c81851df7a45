"""What a user typing a wrong command gets from the tools in tools/.

The README's rule: an error prints one line, `error: <message>`, on stderr
and exits with status 1; an option is never abbreviated; a message names the
option and the value received. Argument errors are found before TensorFlow
is imported, so most cases run the tools' `parse_args` in-process through
`_cli.run` (fast) and a few as real scripts in subprocesses. Also here: a run
directory continued with another architecture is refused by comparing its
`config.json` first, loading an export with `keras_vae.saving.load_model`
says how to load one, and the examples of `--help` that are the README's
commands are the README's commands.
"""

import glob
import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = ("train", "evaluate", "export", "report", "sweep", "ablation", "serving_client")
TAKE = 64


def _tool(name):
    """The module of tools/<name>.py (tools/ is not a package)."""
    path = os.path.join(ROOT, "tools", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"keras_vae_cli_errors_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(name, argv, capsys, entry="parse_args"):
    """`(exit status, stdout, stderr)` of tools/<name>.py's `parse_args(argv)`
    (or `entry`) run as a command by `_cli.run`: exit status 0 if it returns.

    Argument errors are the parser's: checking `parse_args` alone never
    starts a training, a download or a request when an argument is wrongly
    accepted."""
    with pytest.raises(SystemExit) as exit_info:
        _tool("_cli").run(getattr(_tool(name), entry), argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def _assert_one_line_error(status, out, err, message=None):
    assert status == 1, (status, err)
    assert out == "", out
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "usage:" not in err and "Traceback" not in err, err
    if message is not None:
        assert err == f"error: {message}\n"


# ------------------------------------------- item 2: bad values, one line, exit 1


BAD_VALUES = [
    ("train", ["--epochs", "-1"], "Expected --epochs to be a positive integer. Received: --epochs=-1"),
    ("train", ["--epochs", "0"], "Expected --epochs to be a positive integer. Received: --epochs=0"),
    ("train", ["--batch-size", "0"], "Expected --batch-size to be a positive integer. Received: --batch-size=0"),
    ("train", ["--take", "0"], "Expected --take to be a positive integer (or None: every example). Received: --take=0"),
    ("train", ["--beta", "-1"], "Expected --beta >= 0. Received: --beta=-1.0"),
    ("train", ["--learning-rate", "-1"], "Expected --learning-rate > 0. Received: --learning-rate=-1.0"),
    ("train", ["--eval-samples", "-1"], "Expected --eval-samples to be an integer >= 0. Received: --eval-samples=-1"),
    ("train", ["--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
    ("evaluate", ["m.keras", "--samples", "0"], "Expected --samples to be a positive integer. Received: --samples=0"),
    ("export", ["m.keras"], "the following arguments are required: --base-dir"),
    ("export", ["m.keras", "--base-dir", "b", "--version", "0"], "Expected --version to be a positive integer. Received: --version=0"),
    ("report", ["r", "--images", "0"], "Expected --images to be a positive integer. Received: --images=0"),
    ("sweep", ["--eval-samples", "0"], "Expected --eval-samples to be a positive integer. Received: --eval-samples=0"),
    ("sweep", ["--epochs", "0"], "Expected --epochs to be a positive integer. Received: --epochs=0"),
    ("ablation", ["--epochs", "0"], "Expected --epochs to be a positive integer. Received: --epochs=0"),
    ("ablation", ["--eval-samples", "0"], "Expected --eval-samples to be a positive integer. Received: --eval-samples=0"),
    ("serving_client", [], "one of the arguments --rest --grpc is required"),
    ("serving_client", ["--rest", "localhost:1", "--batch", "0"], "Expected --batch to be a positive integer. Received: --batch=0"),
    ("serving_client", ["--rest", "localhost:1", "--num", "-1"], "Expected --num to be an integer >= 0. Received: --num=-1"),
]  # fmt: skip


@pytest.mark.parametrize("name, argv, message", BAD_VALUES, ids=[f"{n}{' '.join(a)}" for n, a, _ in BAD_VALUES])
def test_a_bad_value_is_one_line_naming_the_option_and_value_with_exit_status_1(name, argv, message, capsys):
    _assert_one_line_error(*_run(name, argv, capsys), message)


def test_a_bad_value_in_a_fresh_process_is_one_line_before_tensorflow():
    # As a user runs them: the script as __main__; TensorFlow not imported.
    code = (
        "import runpy, sys\n"
        "sys.argv = sys.argv[1:]\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    print('EXIT:', e.code)\n"
        "print('IMPORTED:', sorted(m for m in ('tensorflow', 'keras', 'keras_vae') if m in sys.modules))\n"
    )
    cases = {
        "train": ["--epochs", "-1"],
        "evaluate": ["m.keras", "--samples", "0"],
        "serving_client": [],
        "sweep": ["--betas", "-1,1"],
    }
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-c", code, os.path.join("tools", f"{name}.py"), *argv],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for name, argv in cases.items()
    }
    for name, process in processes.items():
        out, err = process.communicate(timeout=120)
        assert out == "EXIT: 1\nIMPORTED: []\n", (name, out, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and "usage:" not in err, (name, err)


# ----------------------------------- item 3: evaluate names the option and value


@pytest.mark.parametrize(
    "argv, option, value",
    [(["--samples", "0"], "--samples", "0"), (["--take", "-5"], "--take", "-5"), (["--batch-size", "0"], "--batch-size", "0")],
)
def test_evaluate_names_the_option_and_the_value_received(argv, option, value, capsys):
    status, out, err = _run("evaluate", ["m.keras", *argv], capsys)
    _assert_one_line_error(status, out, err, f"Expected {option} to be a positive integer. Received: {option}={value}")


# -------------------------------------------------- item 4: no abbreviations


@pytest.mark.parametrize(
    "name, argv, meant",
    [
        ("sweep", ["--beta", "2"], "--betas"),
        ("sweep", ["--beta=2"], "--betas"),
        ("train", ["--epoch", "0"], "--epochs"),
        ("evaluate", ["m.keras", "--sample", "0"], "--samples"),
        ("export", ["m.keras", "--base-dir", "b", "--vers", "0"], "--version"),
        ("report", ["r", "--image", "0"], "--images"),
        ("ablation", ["--prior", "vamp"], "--prior-components or --priors"),
        ("serving_client", ["--rest", "localhost:1", "--sig", "nope"], "--signature"),
    ],
)
def test_no_cli_accepts_an_abbreviated_option(name, argv, meant, capsys):
    # Values an accepted abbreviation would refuse fast (no training starts).
    status, out, err = _run(name, argv, capsys)
    _assert_one_line_error(status, out, err)
    assert err.startswith(f"error: unrecognized arguments: {' '.join(argv[-2:] if '=' not in argv[-1] else argv[-1:])}"), err
    assert f"(did you mean {meant}? options are not abbreviated)" in err, err


# ------------------------------- item 5: values that look like negative numbers


def test_negative_looking_values_are_values_with_or_without_equals(capsys):
    betas = "Expected comma-separated numbers >= 0 for the betas, e.g. 0.25,0.5,1,2. Received: betas='-1,1' (not allowed: -1)"
    for argv in (["--betas", "-1,1"], ["--betas=-1,1"]):
        _assert_one_line_error(*_run("sweep", argv, capsys), betas)
    rate = "Expected --learning-rate > 0. Received: --learning-rate=-0.001"
    for argv in (["--learning-rate", "-1e-3"], ["--learning-rate=-1e-3"]):
        _assert_one_line_error(*_run("train", argv, capsys), rate)
    # A negative number is still a value of the option before it, and an
    # unknown option is still an option.
    assert _tool("train").parse_args(["--hidden-units", "16", "--seed", "-3"]).seed == -3
    status, out, err = _run("train", ["--seed", "--epochs"], capsys)
    _assert_one_line_error(status, out, err, "argument --seed: expected one argument")


# ---------------------------- item 7: another architecture on an existing run


def _quick_argv(output_dir, *extra, epochs=1):
    return [
        "--epochs", str(epochs), "--take", str(TAKE), "--hidden-units", "16", "--latent-dim", "2",
        "--eval-samples", "0", "--no-plots", "--export-dir", "", "--output-dir", str(output_dir),
        "--batch-size", "32", "--verbose", "0", "--tensorboard-images-every", "0", *extra,
    ]  # fmt: skip


class _StopBeforeTraining(Exception):
    pass


def test_a_run_continued_with_another_architecture_is_refused_naming_the_fields(mock_tfds, tmp_path, capsys, monkeypatch):
    import keras_vae

    output_dir = tmp_path / "run"
    with mock_tfds(num_examples=TAKE, max_value=2):
        _tool("train").main(_quick_argv(output_dir))
        capsys.readouterr()
        before = {p: p.read_bytes() for p in output_dir.rglob("*") if p.is_file()}
        status, out, err = _run("train", _quick_argv(output_dir, "--latent-dim", "3", "--hidden-units", "16,8"), capsys, entry="main")
        _assert_one_line_error(status, out, err)
        assert err.startswith(
            f"error: The run in {output_dir} was trained with hidden_units=16, latent_dim=2; "
            "received hidden_units=16,8, latent_dim=3: its backup does not fit the model "
            "these settings build. Use --fresh to start this run over"
        ), err
        assert "damaged" not in err and "Layer '" not in err
        status, out, err = _run("train", _quick_argv(output_dir, "--prior", "vamp", "--lr-halve-every", "2", epochs=2), capsys, entry="main")
        assert "trained with prior=standard, lr_halve_every=0; received prior=vamp, lr_halve_every=2:" in err, err
        assert {p: p.read_bytes() for p in output_dir.rglob("*") if p.is_file()} == before  # nothing written

        # Settings that do not change the model still continue the run.
        fits = []

        def fit(model, *args, **kwargs):
            fits.append(kwargs["initial_epoch"])
            raise _StopBeforeTraining

        monkeypatch.setattr(keras_vae.VAE, "fit", fit)
        with pytest.raises(_StopBeforeTraining):
            _tool("train").main(_quick_argv(output_dir, "--seed", "4", "--beta", "0.5", "--prior-components", "9", epochs=2))
        assert fits == [1]


def test_structure_differences_are_the_fields_that_change_the_model():
    from keras_vae import config

    new = config.TrainConfig(latent_dim=16, epochs=20)
    assert config.structure_differences({"latent_dim": 32, "epochs": 10}, new) == [("latent_dim", 32, 16)]
    saved = json.loads(config.TrainConfig(hidden_units=(512, 256), epochs=3, beta=2.0, seed=1).to_json())
    assert saved["hidden_units"] == [512, 256]  # a list in config.json
    assert config.structure_differences(saved, config.TrainConfig()) == []
    assert config.structure_differences(config.TrainConfig(), config.TrainConfig(prior_components=7)) == []
    mixture = config.TrainConfig(prior="mixture", prior_components=3)
    assert config.structure_differences(mixture, config.TrainConfig(prior="mixture", prior_components=4)) == [
        ("prior_components", 3, 4)
    ]
    # A constant learning rate is an optimizer variable, a schedule none.
    assert config.structure_differences({}, config.TrainConfig(lr_halve_every=5)) == [("lr_halve_every", 0, 5)]
    assert config.structure_differences({"lr_halve_every": 10}, config.TrainConfig(lr_halve_every=5)) == []
    assert [d[0] for d in config.structure_differences({"architecture": "gated"}, config.TrainConfig())] == ["architecture"]
    # Another objective would shift history.csv's columns (an IWAE run logs iwae).
    assert config.structure_differences({}, config.TrainConfig(objective="iwae")) == [("objective", "elbo", "iwae")]


# ------------------------------------------------ item 8: exports and loaders


def test_load_model_of_an_export_or_run_directory_says_what_it_is_and_how_to_load_it(tmp_path):
    from keras_vae.saving import ModelFileError
    from keras_vae.saving import load_model

    export = tmp_path / "saved_models" / "m" / "1"
    export.mkdir(parents=True)
    (export / "saved_model.pb").write_bytes(b"")
    with pytest.raises(ModelFileError) as info:
        load_model(str(export))
    message = str(info.value)
    assert "not found" not in message
    assert f"Received: {export}, a SavedModel export" in message
    assert f"keras_vae.exported.ExportedVAE({str(export)!r})" in message
    assert "keras.layers.TFSMLayer(" in message
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    with pytest.raises(ModelFileError, match=re.escape(f"keras_vae.training.load_model_or_run({str(run_dir)!r})")):
        load_model(str(run_dir))
    with pytest.raises(ModelFileError, match="not found"):
        load_model(str(tmp_path / "missing.keras"))


def test_evaluate_of_a_missing_model_lists_every_kind_it_accepts_exports_included(tmp_path, capsys):
    missing = str(tmp_path / "missing.keras")
    _assert_one_line_error(
        *_run("evaluate", [missing], capsys, entry="main"),
        "Expected a .keras file, a run directory (runs/<name>) or an export version "
        f"directory (saved_models/<name>/<version>). Received: {missing} (not found)",
    )


# --------------------------------- item 10: the README's commands in --help


def _commands(lines):
    """Commands of shell lines: continuations joined, `&&` chains split,
    comments and prompts dropped, whitespace normalized."""
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    commands = []
    for line in text.splitlines():
        line = re.sub(r"\s+#.*$", "", line)
        for part in line.split("&&"):
            part = " ".join(part.split())
            if part:
                commands.append(part)
    return commands


def _readme_commands():
    """The shell commands of the README and its guides (docs/*.md)."""
    commands = set()
    for path in [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))):
        with open(path) as f:
            text = f.read()
        for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, flags=re.S):
            commands.update(_commands(block.splitlines()))
    return commands


def _claimed_readme_examples(help_text):
    """The commands of the indented block after each paragraph of `help_text`
    that says it is the README's or a guide's ("Example (the README's main
    job):", "Example (the sweep of docs/looking_inside.md):")."""
    examples, paragraph, block = [], [], None
    for line in help_text.splitlines() + [""]:
        if block is not None:
            if line.startswith("    ") or (not line.strip() and not block):
                block.append(line)
                continue
            examples.extend(c for c in _commands(block) if c.startswith("python tools/"))
            block = None
        if line.strip() and not line.startswith(" "):
            paragraph.append(line)
        elif not line.strip() and paragraph:
            claim = " ".join(paragraph)
            if "README's" in claim or re.search(r"\bof docs/\w+\.md\b", claim):
                block = []
            paragraph = []
    return examples


def _help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _tool(name).parse_args(["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_help_examples_that_claim_to_be_the_readmes_commands_are_in_the_readme(capsys):
    readme = _readme_commands()
    assert "python tools/train.py --epochs 10 --eval-samples 100 --name quickstart_vae" in readme  # the extraction works
    claimed = {name: _claimed_readme_examples(_help(name, capsys)) for name in TOOLS}
    assert len(claimed["train"]) == 1 and len(claimed["ablation"]) == 1 and len(claimed["sweep"]) == 2, claimed
    for name, commands in claimed.items():
        for command in commands:
            assert command in readme, (name, command)


def test_claimed_examples_are_found_in_a_help_text():
    text = (
        "Example (the README's job):\n\n"
        "    python tools/x.py --a 1 \\\n        --b 2\n\n"
        "Other examples (see the README):\n\n    python tools/x.py ...\n"
    )
    assert _claimed_readme_examples(text) == ["python tools/x.py --a 1 --b 2"]
    assert _commands(["python3 -m venv .venv && python tools/x.py --a 1  # comment"]) == [
        "python3 -m venv .venv", "python tools/x.py --a 1"
    ]  # fmt: skip


def test_read_history_of_a_run_resumed_with_other_columns(tmp_path):
    # A run resumed with an IWAE objective logs an extra column; a dataset
    # without a validation split logs "NA": neither is a crash.
    from keras_vae import training

    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,val_loss\n0,3.0,NA\n1,2.0,1.5,7.0\n")
    history = training.read_history(str(path))
    assert history["loss"] == [3.0, 2.0]
    assert np.isnan(history["val_loss"][0]) and history["val_loss"][1] == 1.5
