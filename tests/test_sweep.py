"""Tests of the beta sweep: `keras_vae.sweep`, `tools/sweep.py` and its plots
(`keras_vae.plotting.plot_rate_distortion`, `plot_samples_per_beta`).

The plots are checked for what they draw (the points, their beta labels, the
lines of constant ELBO and their values, the rows of samples), read back from
the figures that the public functions save (built by `plotting`'s private
`_rate_distortion_figure` and `_samples_per_beta_figure`). The end-to-end sweep runs on mocked
TFDS (`mock_tfds`: binary 28x28 images, 64 per split) with a tiny model, one
epoch per beta; a second run of the same command must train and evaluate
nothing.
"""

import csv
import json
import os
import re
import subprocess
import sys

import matplotlib.pyplot as plt
import numpy as np
import pytest

import keras_vae
from keras_vae import evaluation
from keras_vae import plotting
from keras_vae import sweep

from conftest import float32_atol
from test_cli import _help_entries
from test_cli import _tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAKE = 64
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TABLE = [  # in no particular order: the plot sorts by beta
    {"beta": 2.0, "rate": 16.0, "distortion": 96.0},
    {"beta": 0.25, "rate": 42.0, "distortion": 66.5},
    {"beta": 1.0, "rate": 25.0, "distortion": 80.0},
    {"beta": 0.5, "rate": 33.0, "distortion": 72.0},
]


# ------------------------------------------------------------- the betas


def test_parse_betas_sorts_and_accepts_strings_and_sequences():
    assert sweep.parse_betas("1, 0.25,4") == (0.25, 1.0, 4.0)
    assert sweep.parse_betas([2, 0]) == (0.0, 2.0)  # beta = 0: the autoencoder end
    assert sweep.parse_betas("1e-1") == (0.1,)
    assert sweep.beta_dir("runs/s", 0.25) == os.path.join("runs/s", "beta_0.25")
    assert sweep.beta_dir("runs/s", 1.0) == os.path.join("runs/s", "beta_1")


@pytest.mark.parametrize(
    "betas, detail",
    [
        ("-1", "(not allowed: -1)"), ("0.5,-0.1", "(not allowed: -0.1)"),
        ("", "(no value)"), (" , ", "(an empty item)"), ("1,,2", "(an empty item)"),
        ("a,1", "Received: betas='a,1'"), ("nan", "(not allowed: nan)"), ("inf", "(not allowed: inf)"),
        ([], "(no value)"), (["x"], "Received: betas=['x']"),
    ],
)  # fmt: skip
def test_parse_betas_refuses_negative_empty_and_non_numeric_values(betas, detail):
    with pytest.raises(ValueError, match=r"^Expected comma-separated numbers >= 0 for the betas") as info:
        sweep.parse_betas(betas)
    assert "Received: betas=" in str(info.value) and detail in str(info.value)


def test_parse_betas_refuses_betas_that_would_share_a_run_directory():
    with pytest.raises(ValueError, match=r"Expected distinct betas. Received: betas='1,0.5,1.0' \(1 more than once\)"):
        sweep.parse_betas("1,0.5,1.0")


# ------------------------------------------------------ rate-distortion plot


def _iso_lines(ax):
    """The iso-ELBO lines (D + R = c) of the axes, in the order drawn."""
    return [line for line in ax.get_lines() if line.get_gid() == "iso_elbo"]


def test_rate_distortion_plot_draws_the_tables_points_labelled_with_their_beta():
    fig = plotting.figures._rate_distortion_figure(TABLE)
    try:
        (ax,) = fig.axes
        rows = sorted(TABLE, key=lambda r: r["beta"])
        expected = np.array([[r["rate"], r["distortion"]] for r in rows])
        (points,) = [c for c in ax.collections if c.get_gid() == "runs"]
        np.testing.assert_array_equal(points.get_offsets(), expected)
        labels = [t for t in ax.texts if t.get_gid() == "beta_label"]
        assert [t.get_text() for t in labels] == ["β = 0.25", "β = 0.5", "β = 1", "β = 2"]
        np.testing.assert_array_equal([t.xy for t in labels], expected)
        # The best ELBO, -(R + D) largest, is ringed: beta 0.5 (R + D = 105).
        (best,) = [c for c in ax.collections if c.get_gid() == "best"]
        np.testing.assert_array_equal(best.get_offsets(), [[33.0, 72.0]])
        assert "rate" in ax.get_xlabel() and "(nats" in ax.get_xlabel()
        assert "distortion" in ax.get_ylabel() and "(nats" in ax.get_ylabel()
        assert ax.get_title()
        # Every point is inside the axes.
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        assert np.all((expected[:, 0] > x0) & (expected[:, 0] < x1))
        assert np.all((expected[:, 1] > y0) & (expected[:, 1] < y1))
    finally:
        plt.close(fig)


def test_rate_distortion_iso_elbo_lines_have_slope_minus_one_and_their_labelled_values():
    fig = plotting.figures._rate_distortion_figure(TABLE)
    try:
        (ax,) = fig.axes
        lines = _iso_lines(ax)
        texts = [t for t in ax.texts if t.get_gid() == "iso_elbo_label"]
        assert len(lines) >= 3 and len(texts) == len(lines)
        totals = []
        for line, text in zip(lines, texts):
            x, y = (np.asarray(v, np.float64) for v in line.get_data())
            assert len(x) >= 2 and x[-1] - x[0] > 0
            # Slope -1 and D + R constant along the line (exact up to float64 rounding).
            np.testing.assert_allclose(np.diff(y) / np.diff(x), -1.0, rtol=0, atol=1e-9)
            total = x[0] + y[0]
            np.testing.assert_allclose(x + y, total, rtol=0, atol=1e-9)
            # The label reads the ELBO of the line, -(D + R), and sits on it.
            match = re.fullmatch(r"ELBO = (-?[\d.]+)", text.get_text())
            assert match, text.get_text()
            assert float(match.group(1)) == pytest.approx(-total, abs=1e-9)
            tx, ty = text.get_position()
            assert tx + ty == pytest.approx(total, abs=1e-9)
            totals.append(total)
        # Round values, increasing, spanning every point's D + R.
        points = [r["rate"] + r["distortion"] for r in TABLE]
        assert totals == sorted(totals)
        assert min(totals) <= min(points) and max(totals) >= max(points)
        assert all(float(t).is_integer() for t in totals)  # 100, 105, ... here
        assert lines[0].get_label().startswith("constant ELBO")
    finally:
        plt.close(fig)


def test_rate_distortion_legend_hides_no_point():
    fig = plotting.figures._rate_distortion_figure(TABLE)
    try:
        (ax,) = fig.axes
        fig.canvas.draw()
        legend = ax.get_legend().get_window_extent()
        points = ax.transData.transform([[r["rate"], r["distortion"]] for r in TABLE])
        assert not any(legend.contains(x, y) for x, y in points)
        assert not legend.overlaps(ax.get_window_extent())  # outside the axes
    finally:
        plt.close(fig)


def test_plot_rate_distortion_writes_a_png_and_closes_its_figure(tmp_path):
    path = str(tmp_path / "plots" / "rd.png")
    assert plotting.plot_rate_distortion(TABLE, path, title="a sweep") == path
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    assert plt.get_fignums() == []
    with pytest.raises(ValueError, match="Expected a table of rows with beta, rate and distortion"):
        plotting.plot_rate_distortion([{"beta": 1.0, "rate": 3.0}], path)
    with pytest.raises(ValueError, match="at least one row"):
        plotting.plot_rate_distortion([], path)


# ------------------------------------------------------ samples per beta


def test_samples_per_beta_draws_one_row_per_beta_in_order():
    rng = np.random.default_rng(0)
    samples = [rng.random((5, 8, 8, 1)).astype("float32") for _ in range(3)]
    fig = plotting.figures._samples_per_beta_figure(samples, [0.5, 1.0, 2.0], num_samples=4)
    try:
        (ax,) = fig.axes
        drawn = np.asarray(ax.images[0].get_array())
        # Row r, column c: image c of beta r (only num_samples=4 of the 5).
        expected = plotting._canvas.tile_images(np.concatenate([s[:4, ..., 0] for s in samples]), 3, 4)
        np.testing.assert_array_equal(drawn, expected)
        assert [t.get_text() for t in ax.get_yticklabels()] == ["β = 0.5", "β = 1", "β = 2"]
        # Each tick label at the middle of its row of 8-pixel images.
        np.testing.assert_allclose(ax.get_yticks(), [1 + 3.5, 10 + 3.5, 19 + 3.5])
    finally:
        plt.close(fig)


def test_plot_samples_per_beta_samples_each_model_with_the_same_seed(make_vae, tmp_path):
    models = [make_vae(latent_dim=2, event_shape=(8, 8, 1), seed=s, input_shape=(None, 8, 8, 1)) for s in (0, 1)]
    fig = plotting.figures._samples_per_beta_figure(models, [0.5, 2.0], num_samples=3, seed=7)
    try:
        drawn = np.asarray(fig.axes[0].images[0].get_array())
    finally:
        plt.close(fig)
    images = np.concatenate([m.sample(3, seed=7).mean().numpy()[..., 0] for m in models])
    np.testing.assert_allclose(drawn, plotting._canvas.tile_images(images, 2, 3), rtol=0, atol=1e-6)
    path = str(tmp_path / "samples.png")
    assert plotting.plot_samples_per_beta(models, [0.5, 2.0], path, num_samples=3) == path
    assert os.path.getsize(path) > 1000 and plt.get_fignums() == []
    with pytest.raises(ValueError, match=r"Expected one model or batch of samples per beta .* Received: 2 for betas=\[1\]"):
        plotting.plot_samples_per_beta(models, [1], path)


# ------------------------------------------------------ the sweep end to end


def _sweep_argv(output_dir, betas, *extra):
    return [
        "--betas", betas, "--output-dir", str(output_dir), "--epochs", "1", "--take", str(TAKE),
        "--hidden-units", "16", "--latent-dim", "2", "--batch-size", "32", "--verbose", "0",
        "--num-images", "4", "--tensorboard-images-every", "0", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def finished(mock_tfds, tmp_path_factory):
    """A finished 3-beta sweep: its directory, the rows main returned, and
    each run's status.json and evaluation.json as bytes."""
    output_dir = tmp_path_factory.mktemp("sweep") / "s"
    with mock_tfds(num_examples=TAKE, max_value=2):
        rows = _tool("sweep").main(_sweep_argv(output_dir, "2,0.5,1"))
    files = {
        beta: {name: (output_dir / f"beta_{beta}" / name).read_bytes() for name in ("status.json", "evaluation.json")}
        for beta in ("0.5", "1", "2")
    }
    return {"dir": output_dir, "rows": rows, "files": files}


def test_sweep_trains_one_run_per_beta_and_tabulates_its_validation_terms(finished):
    rows, output_dir = finished["rows"], finished["dir"]
    assert [r["beta"] for r in rows] == [0.5, 1.0, 2.0]
    for row in rows:
        run_dir = output_dir / f"beta_{row['beta']:g}"
        assert row["run_dir"] == str(run_dir)
        with open(run_dir / "config.json") as f:
            config = json.load(f)
        assert config["beta"] == row["beta"] and config["epochs"] == 1 and config["take"] == TAKE
        assert config["output_dir"] == str(run_dir)
        with open(run_dir / "evaluation.json") as f:
            results = json.load(f)["splits"]["validation"]
        assert results["num_examples"] == TAKE and results["num_samples"] == 1
        for key in ("rate", "distortion", "elbo", "active_units", "latent_dim"):
            assert row[key] == results[key], key
        # ELBO = -(rate + distortion): sums of 784 pixel terms near 544 nats.
        assert row["elbo"] == pytest.approx(-(row["rate"] + row["distortion"]), abs=float32_atol(row["distortion"]))
        assert row["rate"] >= 0 and row["distortion"] > 0
        assert row["nll"] is None  # one sample: no IWAE bound
        assert row["epochs"] == 1 and row["step"] == TAKE // 32 and row["train_seconds"] > 0
    assert set(rows[0]) == set(sweep.TABLE_COLUMNS)
    assert sweep.read_table(str(output_dir)) == rows


def test_sweep_table_json_and_csv_agree(finished):
    files = sweep.paths(str(finished["dir"]))
    with open(files["json"]) as f:
        from_json = json.load(f)
    with open(files["csv"], newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == sweep.TABLE_COLUMNS
        from_csv = list(reader)
    assert len(from_csv) == len(from_json) == 3
    for j, c in zip(from_json, from_csv):
        for key in sweep.TABLE_COLUMNS:
            if j[key] is None:
                assert c[key] == "", key
            elif isinstance(j[key], str):
                assert c[key] == j[key], key
            else:  # the same number, written in full in both
                assert float(c[key]) == j[key], key


def test_sweep_writes_its_plots_from_the_table(finished):
    files = sweep.paths(str(finished["dir"]))
    for key in ("rate_distortion", "samples"):
        with open(files[key], "rb") as f:
            assert f.read(8) == PNG_SIGNATURE, key
        assert os.path.getsize(files[key]) > 1000, key


class _Refused(Exception):
    pass


def test_running_the_sweep_again_trains_and_evaluates_nothing(finished, mock_tfds, tmp_path, monkeypatch, capsys):
    import shutil

    output_dir = tmp_path / "s"
    shutil.copytree(finished["dir"], output_dir)

    def refuse(*args, **kwargs):
        raise _Refused("a finished run was trained or evaluated again")

    monkeypatch.setattr(keras_vae.VAE, "fit", refuse)
    monkeypatch.setattr(evaluation, "evaluate", refuse)
    capsys.readouterr()
    with mock_tfds(num_examples=TAKE, max_value=2):
        rows = _tool("sweep").main(_sweep_argv(output_dir, "0.5,1,2"))
    out = capsys.readouterr().out
    assert "== beta 0.5 (1 of 3)" in out and "== beta 2 (3 of 3)" in out
    assert out.count("evaluation of step 2 read from") == 3
    for beta, files in finished["files"].items():
        for name, content in files.items():
            assert (output_dir / f"beta_{beta}" / name).read_bytes() == content, (beta, name)
    assert [{k: v for k, v in r.items() if k != "run_dir"} for r in rows] == [
        {k: v for k, v in r.items() if k != "run_dir"} for r in finished["rows"]
    ]


def test_a_sweep_with_a_new_beta_trains_only_that_one(finished, mock_tfds, tmp_path, monkeypatch):
    import shutil

    output_dir = tmp_path / "s"
    shutil.copytree(finished["dir"], output_dir)
    shutil.rmtree(output_dir / "beta_2")  # as if the sweep had stopped before beta 2
    fit = keras_vae.VAE.fit
    trained = []

    def recording_fit(model, *args, **kwargs):
        trained.append(float(model.beta.numpy()))
        return fit(model, *args, **kwargs)

    monkeypatch.setattr(keras_vae.VAE, "fit", recording_fit)
    with mock_tfds(num_examples=TAKE, max_value=2):
        rows = _tool("sweep").main(_sweep_argv(output_dir, "0.5,1,2"))
    assert trained == [2.0]  # the model of beta 2, built with its beta
    assert [r["beta"] for r in rows] == [0.5, 1.0, 2.0]
    for beta in ("0.5", "1"):
        assert (output_dir / f"beta_{beta}" / "status.json").read_bytes() == finished["files"][beta]["status.json"]


def test_more_eval_samples_evaluate_again_with_the_nll_without_training(finished, mock_tfds, tmp_path, monkeypatch):
    import shutil

    output_dir = tmp_path / "s"
    shutil.copytree(finished["dir"], output_dir)

    def refuse(*args, **kwargs):
        raise _Refused("a finished run was trained again")

    monkeypatch.setattr(keras_vae.VAE, "fit", refuse)
    with mock_tfds(num_examples=TAKE, max_value=2):
        rows = _tool("sweep").main(_sweep_argv(output_dir, "1", "--eval-samples", "3"))
    (row,) = rows
    assert row["num_samples"] == 3 and row["nll"] is not None
    # The IWAE bound with 3 samples: -NLL above the ELBO on average (here
    # certainly: a tiny 1-epoch model, gaps of nats).
    assert -row["nll"] > row["elbo"]
    assert (output_dir / "beta_1" / "status.json").read_bytes() == finished["files"]["1"]["status.json"]
    assert [r["beta"] for r in sweep.read_table(str(output_dir))] == [1.0]


# ------------------------------------------------------ the CLI: errors, --help


@pytest.mark.parametrize("betas", ["-1", "", "0.5,abc", "1,-2", "nan"])
def test_bad_betas_give_a_one_line_error_and_exit_status_1(betas, tmp_path, capsys):
    cli = _tool("_cli")
    with pytest.raises(SystemExit) as info:
        cli.run(_tool("sweep").main, ["--betas", betas, "--output-dir", str(tmp_path / "s")])
    assert info.value.code == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: Expected ") and "Received: " in err
    assert err.endswith("\n") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_sweep_help_is_fast_shows_every_default_and_bad_betas_fail_before_tensorflow():
    # As tests/test_cli.py checks the other tools: a fresh interpreter, and
    # neither TensorFlow nor keras_vae imported after --help or a bad --betas.
    code = (
        "import runpy, sys\n"
        "sys.argv = [sys.argv[1]] + sys.argv[2:]\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    print('EXIT:', e.code)\n"
        "print('IMPORTED:', sorted(m for m in ('tensorflow', 'keras', 'keras_vae') if m in sys.modules))\n"
    )
    script = os.path.join("tools", "sweep.py")
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, script, *extra],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for extra in (["--help"], ["--betas", "0.5,-1"])
    ]
    (help_out, help_err), (bad_out, bad_err) = (p.communicate(timeout=120) for p in processes)
    assert help_out.startswith("usage:") and "Example" in help_out, help_err[-2000:]
    assert help_out.rstrip().endswith("EXIT: 0\nIMPORTED: []"), help_out[-300:]
    entries = _help_entries(help_out)
    for option in ("--betas", "--epochs", "--take", "--name", "--output-dir", "--data-dir", "--eval-samples", "--latent-dim", "--debug"):
        assert option in entries, option
    for option, text in entries.items():
        if option not in ("-h", "--help"):
            assert "(default" in text, (option, text)
    assert "(default: 0.1,0.25,0.5,1,2,4)" in entries["--betas"]
    assert f"(default: {sweep.DEFAULT_EPOCHS})" in entries["--epochs"]
    assert "--beta" not in entries  # set by the sweep, per run
    assert bad_out.rstrip().endswith("EXIT: 1\nIMPORTED: []"), bad_out[-300:]
    assert bad_err == "error: Expected comma-separated numbers >= 0 for the betas, e.g. 0.25,0.5,1,2. Received: betas='0.5,-1' (not allowed: -1)\n"

