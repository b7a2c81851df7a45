"""One self-contained HTML page per training run: `<run_dir>/report.html`.

`write_report(run_dir)` reads what `tools/train.py` leaves in a run directory
(`config.json`, `status.json`, `history.csv`, `evaluation.json`,
`plots/*.png`) and writes one HTML file: the configuration, the training
time, epochs and status, the evaluation table, the export, every plot
embedded as a base64 `data:` URI and the per-epoch history. It loads nothing
from anywhere else (no script, style sheet, font or image file), so it opens
offline and can be copied or mailed alone. `write_plots(run_dir)` (re)writes
the run's plots from its model and validation images.

Example:

>>> from keras_vae import report
>>> report.write_plots("runs/quickstart_vae")  # doctest: +SKIP
>>> report.write_report("runs/quickstart_vae")  # doctest: +SKIP
'runs/quickstart_vae/report.html'
"""

import base64
import datetime
import glob
import html
import json
import os

from keras_vae import evaluation
from keras_vae import runs
from keras_vae import training
from keras_vae._internal.version import VERSION

__all__ = ["CAPTIONS", "REPORT_NAME", "VQ_CAPTIONS", "write_plots", "write_report"]

REPORT_NAME = "report.html"

# What each plot of `keras_vae.plotting.plot_all` shows, in the page's order;
# other PNG files of the plots directory follow, in name order.
CAPTIONS = {
    "training_curves.png": (
        "Training curves: loss, reconstruction E_q[log p(x|z)], KL(q(z|x) || p(z)) and "
        "ELBO per epoch, training and validation, in nats per example; beta (the KL "
        "weight) on the loss panel's right axis, and for an IWAE run its IWAE bound "
        "(dashed) beside the ELBO. The loss rises while the KL warm-up "
        "raises beta: judge the run by the ELBO (or the IWAE bound). Epochs far off the scale of the "
        "later ones are left off the axes; the panel titles say which."
    ),
    "reconstructions.png": (
        "Reconstructions: validation images (top) and the decoder mean E[x|z] at their "
        "posterior mean z = E_q[z|x] (bottom)."
    ),
    "samples.png": "Samples: pixel probabilities E[x|z] for codes z drawn from the prior p(z).",
    "traversals.png": (
        "Latent traversals: the first validation image (left) and, in each row, the "
        "decoder mean when one latent unit of its posterior mean is moved from -3 to "
        "+3 prior standard deviations (the middle column is its reconstruction). Rows "
        "are the most active units first, labelled with their activity Var_x(E_q[z_j|x]) "
        "over the validation images; a unit whose row does not change is unused."
    ),
    "interpolations.png": (
        "Interpolations: for pairs of validation images x_a (left) and x_b (right), "
        "the decoder mean along the straight line between their posterior means; the "
        "ends are their reconstructions."
    ),
    "latent_space.png": (
        "Latent space: posterior means E_q[z|x] of the validation images (their first "
        "two principal components beyond 2 latents), coloured by label when the "
        "dataset has labels (binarized_mnist has none)."
    ),
    "manifold.png": "Manifold: decoder means over a grid of prior quantiles (2 latents only).",
}
# A VQ-VAE's plots (`--model vqvae`), in the page's order.
VQ_CAPTIONS = {
    "training_curves.png": (
        "Training curves: loss (-log p(x|z_q) plus the codebook and commitment losses), "
        "reconstruction log p(x|z_q(x)), commitment loss and codebook perplexity per epoch, "
        "training and validation. The history's ELBO is under the uniform prior of the "
        "auto-encoder's training; the evaluation above uses the fitted code prior."
    ),
    "reconstructions.png": (
        "Reconstructions: validation images (top) and the decoder mean at their nearest "
        "codes z_q(x) (bottom)."
    ),
    "samples.png": "Samples: code grids drawn from the PixelCNN prior p(k), decoded (pixel probabilities).",
    "codebook_usage.png": (
        "Codebook usage on the validation images: each code's share of the grid positions, "
        "most used first, and the code grids of the first 8 images, one colour per code."
    ),
}

_STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; max-width: 900px; }
.note { color: #666; font-size: 0.9em; }
"""



def _run_config(run_dir):
    """The `config.json` of the run in `run_dir` (a dict); ValueError if none."""
    config = runs.RunDirectory(run_dir).config()
    if not isinstance(config, dict):
        listing = sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else "(not found)"
        raise ValueError(
            "Expected a run directory written by tools/train.py, holding config.json. "
            f"Received: {run_dir} with {listing}"
        )
    return config


def _duration(seconds):
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _table(rows, header=None, numeric=()):
    """An HTML table of text cells (escaped here); `numeric`: right-aligned columns."""

    def cells(row, tag):
        return "".join(
            f'<{tag}{" class=num" if i in numeric else ""}>{html.escape(str(c))}</{tag}>'
            for i, c in enumerate(row)
        )

    lines = ["<table>"]
    if header:
        lines.append(f"<tr>{cells(header, 'th')}</tr>")
    lines.extend(f"<tr>{cells(row, 'td')}</tr>" for row in rows)
    lines.append("</table>")
    return "\n".join(lines)


def _paragraph(text, note=False):
    return f'<p{" class=note" if note else ""}>{html.escape(text)}</p>'


def _training_section(config, status, history, results, files):
    rows = []
    epochs = len(history.get("epoch", []))
    planned = config.get("epochs") if config else None
    rows.append(("epochs trained", f"{epochs} of {planned}" if planned else str(epochs)))
    if status:
        rows.append(("optimizer steps", status.get("step")))
        rows.append(("training time", f"{_duration(status['train_seconds'])} (all sessions)"))
        rows.append(("sessions", len(status.get("sessions", [])) or 1))
        stopped = status.get("stopped_early")
        rows.append((
            "status",
            f"stopped early after {stopped['epochs_run']} epochs (patience {stopped['patience']})"
            if stopped
            else ("complete" if planned and epochs >= planned else "not complete: run the same command again to continue"),
        ))
    else:
        rows.append(("status", "no status.json (training did not reach an epoch end)"))
    best = files["best"] if os.path.exists(files["best"]) else "none yet"
    rows.append(("best model", best))
    rows.append(("export (TF Serving)", (results or {}).get("export") or "none"))
    rows.append(("TensorBoard", f"tensorboard --logdir {files['tensorboard']}"))
    parts = ["<h2>Training</h2>", _table(rows)]
    config = config or {}
    summary = (
        training.summarize(history, config.get("beta", 1.0), config.get("objective", "elbo")) if history else ""
    )
    parts.extend(_paragraph(line) for line in summary.splitlines())
    prior = (status or {}).get("code_prior")
    if prior:
        held_out = prior.get("val_log_prob")
        shown = f"{held_out:.2f} nats on validation" if held_out is not None else f"{prior['log_prob']:.2f} on training"
        parts.append(_paragraph(
            f"Code prior (PixelCNN) fitted after training in {prior['seconds']:.0f} s "
            f"({prior['epochs']} epochs): log p(k) = {shown}, per code grid. The ELBO above "
            "is under the uniform prior; the evaluation uses the fitted one."
        ))
    return parts


def _evaluation_section(results, vq=False):
    parts = ["<h2>Evaluation</h2>"]
    splits = (results or {}).get("splits")
    if splits:
        parts.append(f"<pre>{html.escape(evaluation.format_table(splits))}</pre>")
        note = (
            "Nats per example. The bound log p(x|z_q(x)) + log p(k(x)) of a deterministic "
            "posterior (its ELBO: importance sampling cannot tighten it); rate: -log p(k(x)) "
            "under the code prior; distortion: -log p(x|z_q(x)); codes in use: codes "
            "assigned at least once."
            if vq
            else "Nats per example. NLL: -log p(x) estimated with k importance samples (the "
            "IWAE bound); gap: log p(x) - ELBO; rate: KL(q(z|x) || p(z)); distortion: "
            "-E_q[log p(x|z)]; active units: latent units whose posterior mean varies "
            "over the data (variance > 0.01)."
        )
        parts.append(_paragraph(note, note=True))
    elif results is not None:
        parts.append(_paragraph("Not evaluated (--eval-samples 0)."))
    else:
        parts.append(_paragraph("No evaluation.json in the run directory (not evaluated yet)."))
    return parts


def _plot_files(plots_dir, captions=CAPTIONS):
    """PNG files of `plots_dir`: those of `captions` in its order, then the rest."""
    found = {os.path.basename(p): p for p in glob.glob(os.path.join(plots_dir, "*.png"))}
    order = [name for name in captions if name in found]
    order += sorted(name for name in found if name not in captions)
    return [found[name] for name in order]


def _plots_section(plots_dir, include_plots, run_dir, captions=CAPTIONS):
    parts = ["<h2>Plots</h2>"]
    paths = _plot_files(plots_dir, captions) if include_plots else []
    if not paths:
        why = "were not written for this run (--no-plots)" if not include_plots else f"are not in {plots_dir}"
        command = f"python tools/report.py {run_dir}"
        parts.append(
            f"<p>The plots {html.escape(why)}: <code>{html.escape(command)}</code> "
            "writes them and this page again.</p>"
        )
    for path in paths:
        name = os.path.basename(path)
        with open(path, "rb") as f:
            data = base64.b64encode(f.read()).decode("ascii")
        parts.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(name)}">'
            f"<figcaption><b>{html.escape(name)}</b>. {html.escape(captions.get(name, ''))}</figcaption></figure>"
        )
    return parts


def _history_section(history):
    if not history.get("epoch"):
        return ["<h2>History</h2>", _paragraph("No history.csv: no epoch has ended yet.")]
    preferred = ("beta", "loss", "reconstruction", "kl", "elbo", "iwae")
    keys = [k for p in preferred for k in (p, f"val_{p}") if k in history]
    keys += sorted(k for k in history if k not in keys and k != "epoch")
    rows = [
        [int(epoch) + 1] + [f"{history[k][i]:.4g}" if i < len(history[k]) else "" for k in keys]
        for i, epoch in enumerate(history["epoch"])
    ]
    numeric = range(len(keys) + 1)
    return [
        "<h2>History</h2>",
        f"<details><summary>{len(rows)} epochs (nats per example; epochs from 1)</summary>",
        _table(rows, header=["epoch"] + keys, numeric=numeric),
        "</details>",
    ]


def write_report(run_dir, path=None, include_plots=True):
    """Writes the HTML report of the training run in `run_dir`.

    The page holds the run's configuration, its training status (epochs,
    steps, training time, early stopping), the summary of its history
    (`keras_vae.training.summarize`), the evaluation table
    (`keras_vae.evaluation.format_table` of `evaluation.json`), the export,
    every PNG of `<run_dir>/plots` embedded as a `data:image/png;base64` URI
    with a caption (`CAPTIONS`), and the per-epoch history. All text is
    HTML-escaped; the page references no other file and no URL. It is
    written to a temporary file renamed into place.

    Args:
        run_dir: A run directory written by `tools/train.py`
            (`keras_vae.training.train`): it holds `config.json`.
        path: The HTML file (default: `<run_dir>/report.html`).
        include_plots: False leaves the plots out (the page then says how
            to write them), e.g. for a run trained with `--no-plots`, whose
            plots directory may hold older figures.

    Returns:
        The path of the HTML file.
    """
    run = runs.RunDirectory(run_dir)
    files = run.files
    config = _run_config(run_dir)
    path = path or os.path.join(run_dir, REPORT_NAME)
    status = run.status()
    history = run.history()
    results = run.evaluation()
    vq = config.get("model") == "vqvae"
    name = os.path.basename(os.path.normpath(os.path.abspath(run_dir)))
    written = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    config_rows = [(key, json.dumps(value)) for key, value in config.items()]
    body = [
        f"<h1>Training run {html.escape(name)}</h1>",
        _paragraph(
            f"Written {written} by keras_vae {VERSION} from the files in "
            f"{os.path.abspath(run_dir)}.",
            note=True,
        ),
        *_training_section(config, status, history, results, files),
        *_evaluation_section(results, vq=vq),
        *_plots_section(files["plots"], include_plots, run_dir, VQ_CAPTIONS if vq else CAPTIONS),
        "<h2>Configuration</h2>",
        _paragraph("config.json: the options of tools/train.py that made this run.", note=True),
        _table(config_rows, header=("option", "value")),
        *_history_section(history),
    ]
    page = "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{html.escape(name)}: keras_vae training run</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        *body,
        "</body>",
        "</html>",
        "",
    ])
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.tmp")
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(temporary, path)
    return path


def write_plots(run_dir, model=None, config=None, history=None, num_images=2000, data_dir=None):
    """Writes the plots of the training run in `run_dir` to `<run_dir>/plots`.

    `keras_vae.plotting.plot_all` on the run's model and the first
    `num_images` images (and labels) of its validation split (its training
    split when it has none), with the run's seed.

    Args:
        run_dir: A run directory written by `tools/train.py`.
        model: The model (default: the run's best model, or its newest
            backup: `keras_vae.training.load_model_or_run`).
        config: Its `TrainConfig` (default: read from `config.json`).
        history: Its per-epoch history (default: read from `history.csv`).
        num_images: Number of images for the reconstructions, latent space,
            traversals (activity) and interpolations.
        data_dir: TFDS data directory (default: the run's `data_dir`, else
            `$TFDS_DATA_DIR`, else TFDS's default).

    Returns:
        The paths of the PNG files.
    """
    from keras_vae import plotting

    run = runs.RunDirectory(run_dir)
    files = run.files
    config = config or training.TrainConfig(**_run_config(run_dir))
    model = training.load_model_or_run(run_dir) if model is None else model
    history = run.history() if history is None else history
    images, labels = training.held_out_images(config, num_images, data_dir=data_dir)
    return plotting.plot_all(model, history, images, files["plots"], labels=labels, seed=config.seed)
