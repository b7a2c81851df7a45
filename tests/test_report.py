"""Tests of `keras_vae.report` (one self-contained HTML page per training
run), of its wiring in tools/train.py and of tools/report.py.

The page is checked for content: the configuration, training status and
evaluation numbers of the run it describes, one `data:image/png;base64` image
per PNG of the run's plots (decoding to that file's bytes), and no reference
to any other file or URL. Run directories are made by hand, or by
tools/train.py on mocked TFDS (`mock_tfds` in conftest.py: no network).
"""

import base64
import contextlib
import html.parser
import importlib.util
import io
import json
import os
import re
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from keras_vae import evaluation  # noqa: E402
from keras_vae import report  # noqa: E402
from keras_vae import training  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TAKE = 64
DATA_DIR = "/data/<em>&'x"  # text the page must escape
VALIDATION = {
    "nll": 97.6812, "log_likelihood": -97.6812, "elbo": -101.2345, "reconstruction": -80.5,
    "distortion": 80.5, "kl": 20.7345, "rate": 20.7345, "gap": 3.5533, "active_units": 5,
    "latent_dim": 7, "aggregate_posterior_kl": 0.4321, "num_examples": 64, "num_samples": 50,
}  # fmt: skip


class _Page(html.parser.HTMLParser):
    """What a browser would read from a page: its tags, images, table rows,
    <pre> blocks and text (entities decoded)."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.tags, self.images, self.rows, self.pre, self.text = [], [], [], [], []
        self._row = self._cell = self._pre = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "img":
            self.images.append(dict(attrs))
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "pre":
            self._pre = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr":
            self.rows.append(self._row)
            self._row = None
        elif tag == "pre":
            self.pre.append("".join(self._pre))
            self._pre = None

    def handle_data(self, data):
        self.text.append(data)
        for part in (self._cell, self._pre):
            if part is not None:
                part.append(data)

    @property
    def all_text(self):
        return " ".join(" ".join(self.text).split())

    def row(self, first):
        (row,) = [r for r in self.rows if r and r[0] == first]
        return row


def _png(path, value):
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [0, value])
    fig.savefig(path)
    plt.close(fig)


@pytest.fixture
def run_dir(tmp_path):
    """A run directory as tools/train.py leaves it: 3 epochs of 3, evaluated,
    exported, three plots (one that keras_vae.plotting does not make) and a
    file that is not a PNG."""
    run = tmp_path / "my_run"
    config = training.TrainConfig(
        latent_dim=7, hidden_units=(24, 12), epochs=3, data_dir=DATA_DIR, output_dir=str(run)
    )
    os.makedirs(run / "plots")
    (run / "config.json").write_text(config.to_json())
    (run / "status.json").write_text(json.dumps({
        "step": 42, "train_seconds": 75.3, "stopped_early": None,
        "sessions": [{"first_step": 0, "last_step": 42, "seconds": 75.3}],
    }))  # fmt: skip
    history = ["epoch,beta,elbo,kl,loss,val_elbo"]
    for epoch, (elbo, val) in enumerate([(-150.5, -140.75), (-120.25, -115.5), (-110.125, -108.375)]):
        history.append(f"{epoch},{epoch / 2},{elbo},{-elbo / 5},{-elbo},{val}")
    (run / "history.csv").write_text("\n".join(history) + "\n")
    (run / "evaluation.json").write_text(json.dumps({
        "train_seconds": 75.3, "epochs_run": 3, "step": 42,
        "splits": {"validation": VALIDATION}, "export": "saved_models/my_run/3",
    }))  # fmt: skip
    for name, value in (("samples.png", 1), ("rate_distortion.png", 2), ("training_curves.png", 3)):
        _png(run / "plots" / name, value)
    (run / "plots" / "notes.txt").write_text("not a plot")
    return run


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_report_embeds_every_png_of_the_plots_as_a_data_uri(run_dir):
    path = report.write_report(str(run_dir))
    assert path == os.path.join(str(run_dir), "report.html")
    page = _Page(_read(path))
    # The plots of keras_vae.plotting first (curves first), then the others.
    assert [image["alt"] for image in page.images] == ["training_curves.png", "samples.png", "rate_distortion.png"]
    for image in page.images:
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix)
        content = base64.b64decode(image["src"][len(prefix):], validate=True)
        assert content.startswith(PNG_SIGNATURE)
        assert content == (run_dir / "plots" / image["alt"]).read_bytes()
    assert report.CAPTIONS["training_curves.png"][:40] in page.all_text
    assert not any(name.startswith(".") for name in os.listdir(run_dir))  # no temporary file left


def test_report_references_no_other_file_and_no_url(run_dir):
    text = _read(report.write_report(str(run_dir)))
    page = _Page(text)
    without_images = re.sub(r'src="data:image/png;base64,[A-Za-z0-9+/=]*"', "", text)
    assert "data:" not in without_images  # every data URI was an image
    assert "http" not in without_images and "//" not in without_images and "url(" not in without_images
    for tag, attrs in page.tags:
        assert tag not in ("link", "script", "iframe", "object", "embed"), tag
        assert "href" not in attrs, (tag, attrs)
        if "src" in attrs:
            assert attrs["src"].startswith("data:image/png;base64,"), (tag, attrs)
    assert page.tags[0][0] == "html" and ("meta", {"charset": "utf-8"}) in page.tags


def test_report_shows_the_runs_config_training_evaluation_and_export(run_dir):
    text = _read(report.write_report(str(run_dir)))
    page = _Page(text)
    assert "Training run my_run" in page.all_text
    # The configuration, every option of config.json, as JSON values.
    config = json.loads((run_dir / "config.json").read_text())
    for key, value in config.items():
        assert page.row(key) == [key, json.dumps(value)]
    assert page.row("latent_dim") == ["latent_dim", "7"] and page.row("hidden_units")[1] == "[24, 12]"
    # Text is escaped: the data_dir reads back as written, no tag came of it.
    assert page.row("data_dir")[1] == json.dumps(DATA_DIR)
    assert "<em>" not in text and ("em", {}) not in page.tags
    # Training status and time.
    assert page.row("epochs trained")[1] == "3 of 3"
    assert page.row("optimizer steps")[1] == "42"
    assert page.row("training time")[1] == "1 min 15 s (all sessions)"
    assert page.row("status")[1] == "complete"
    assert page.row("export (TF Serving)")[1] == "saved_models/my_run/3"
    assert "Best validation ELBO: -108.38 nats (epoch 3 of 3)." in page.all_text
    # The evaluation table, as tools/train.py prints it.
    (table,) = page.pre
    assert table == evaluation.format_table({"validation": VALIDATION})
    for number in ("97.68", "-101.23", "3.55", "20.73", "80.50", "5/7"):
        assert number in table
    # The per-epoch history.
    assert page.row("epoch") == ["epoch", "beta", "loss", "kl", "elbo", "val_elbo"]
    assert page.row("3") == ["3", "1", "110.1", "22.02", "-110.1", "-108.4"]


def test_report_of_a_run_without_plots_evaluation_or_status_says_what_is_missing(run_dir):
    page = _Page(_read(report.write_report(str(run_dir), include_plots=False)))
    assert page.images == [] and "(--no-plots)" in page.all_text
    assert f"python tools/report.py {run_dir}" in page.all_text

    (run_dir / "evaluation.json").write_text(json.dumps({"splits": {}, "export": None}))
    page = _Page(_read(report.write_report(str(run_dir))))
    assert "Not evaluated (--eval-samples 0)." in page.all_text and page.pre == []
    assert page.row("export (TF Serving)")[1] == "none"

    for name in ("evaluation.json", "status.json", "history.csv"):
        os.remove(run_dir / name)
    for name in os.listdir(run_dir / "plots"):
        os.remove(run_dir / "plots" / name)
    page = _Page(_read(report.write_report(str(run_dir))))
    assert "No evaluation.json in the run directory" in page.all_text
    assert page.row("status")[1].startswith("no status.json")
    assert "No history.csv" in page.all_text
    assert page.images == [] and f"are not in {run_dir / 'plots'}" in page.all_text


def test_report_goes_where_path_says_and_refuses_a_directory_that_is_not_a_run(run_dir, tmp_path):
    other = tmp_path / "elsewhere" / "page.html"
    assert report.write_report(str(run_dir), path=str(other)) == str(other)
    assert len(_Page(_read(other)).images) == 3 and not (run_dir / "report.html").exists()

    (tmp_path / "not_a_run").mkdir()
    (tmp_path / "not_a_run" / "x.txt").write_text("")
    with pytest.raises(ValueError, match=r"holding config.json. Received: .*not_a_run with \['x.txt'\]"):
        report.write_report(str(tmp_path / "not_a_run"))
    with pytest.raises(ValueError, match=r"Received: .*missing with \(not found\)"):
        report.write_report(str(tmp_path / "missing"))


# ------------------------------------------- tools/train.py, tools/report.py


def _tool(name):
    """The module of tools/<name>.py (tools/ is not a package)."""
    path = os.path.join(ROOT, "tools", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"keras_vae_tools_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train_argv(output_dir, *extra):
    return [
        "--epochs", "1", "--take", str(TAKE), "--hidden-units", "16", "--latent-dim", "2",
        "--eval-samples", "2", "--output-dir", str(output_dir), "--batch-size", "32",
        "--verbose", "0", "--export-dir", "", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(mock_tfds, tmp_path_factory):
    """One tools/train.py run with plots on mocked data: its directory and output."""
    run = tmp_path_factory.mktemp("report_cli") / "run"
    out = io.StringIO()
    with mock_tfds(num_examples=TAKE, max_value=2), contextlib.redirect_stdout(out):
        _tool("train").main(_train_argv(run))
    return {"run": run, "stdout": out.getvalue()}


def _images_and_plots(run):
    page = _Page(_read(run / "report.html"))
    return [image["alt"] for image in page.images], sorted(os.listdir(run / "plots"))


def test_train_writes_the_report_with_every_plot_and_prints_its_path(trained):
    run = trained["run"]
    assert f"Report: {run / 'report.html'}\n" in trained["stdout"]
    shown, plots = _images_and_plots(run)
    assert sorted(shown) == plots
    assert {"traversals.png", "interpolations.png", "training_curves.png", "manifold.png"} <= set(plots)
    page = _Page(_read(run / "report.html"))
    results = json.loads((run / "evaluation.json").read_text())["splits"]
    assert page.pre == [evaluation.format_table(results)]
    assert page.row("epochs trained")[1] == "1 of 1" and page.row("status")[1] == "complete"


def test_rerunning_a_complete_run_keeps_its_report_or_writes_a_missing_one(trained, mock_tfds, capsys):
    run = trained["run"]
    before = (run / "report.html").read_bytes()
    with mock_tfds(num_examples=TAKE, max_value=2):
        _tool("train").main(_train_argv(run))
        out = capsys.readouterr().out
        assert "Nothing new to evaluate or export" in out and f"Report: {run / 'report.html'}\n" in out
        assert (run / "report.html").read_bytes() == before  # nothing rewritten

        # A run finished before there were reports gets one.
        os.remove(run / "report.html")
        _tool("train").main(_train_argv(run))
    shown, plots = _images_and_plots(run)
    assert sorted(shown) == plots and f"Report: {run / 'report.html'}\n" in capsys.readouterr().out


def test_train_with_no_plots_writes_a_report_without_plots(mock_tfds, tmp_path, capsys):
    run = tmp_path / "run"
    with mock_tfds(num_examples=TAKE, max_value=2):
        _tool("train").main(_train_argv(run, "--no-plots", "--eval-samples", "0"))
    assert f"Report: {run / 'report.html'}\n" in capsys.readouterr().out
    page = _Page(_read(run / "report.html"))
    assert page.images == [] and "(--no-plots)" in page.all_text
    assert "Not evaluated (--eval-samples 0)." in page.all_text


def test_report_tool_rewrites_the_plots_and_the_report(trained, mock_tfds, tmp_path, capsys):
    run = trained["run"]
    plots = run / "plots"
    for name in os.listdir(plots):
        os.utime(plots / name, (0, 0))  # so that a rewrite shows
    output = tmp_path / "copy.html"
    tool = _tool("report")
    with mock_tfds(num_examples=TAKE, max_value=2):
        # --no-plots: only the page, from the plots there.
        assert tool.main([str(run), "--no-plots", "--output", str(output)]) == str(output)
        assert all(os.stat(plots / name).st_mtime == 0 for name in os.listdir(plots))
        assert f"Report: {output}\n" in capsys.readouterr().out
        assert len(_Page(_read(output)).images) == len(os.listdir(plots))

        assert tool.main([str(run), "--images", "20"]) == str(run / "report.html")
    out = capsys.readouterr().out
    assert "Plots: " in out and f"Report: {run / 'report.html'}\n" in out
    assert all(os.stat(plots / name).st_mtime > 0 for name in os.listdir(plots))
    shown, written = _images_and_plots(run)
    assert sorted(shown) == written


def test_report_tool_help_is_fast_and_its_errors_are_one_line(tmp_path, capsys):
    code = (
        "import runpy, sys\n"
        "sys.argv = [sys.argv[1], '--help']\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "print('IMPORTED:', sorted(m for m in ('tensorflow', 'keras', 'keras_vae') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, os.path.join("tools", "report.py")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:") and "Example" in result.stdout
    assert result.stdout.rstrip().endswith("IMPORTED: []")
    for option in ("--no-plots", "--images", "--data-dir", "--output", "--debug"):
        assert option in result.stdout
    assert "(default: 2000)" in result.stdout and "(default: <run_dir>/report.html)" in result.stdout

    cli, tool = _tool("_cli"), _tool("report")
    missing = str(tmp_path / "missing")
    with pytest.raises(SystemExit) as exit_info:
        cli.run(tool.main, [missing])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err == (
        "error: Expected a run directory written by tools/train.py, holding config.json. "
        f"Received: {missing} with (not found)\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        tool.parse_args([missing, "--images", "0"])
    assert exit_info.value.code == 1
    assert "Expected --images to be a positive integer. Received: --images=0" in capsys.readouterr().err
