"""A beta sweep: one training run per KL weight, made visible in the rate-distortion plane.

`run_sweep(TrainConfig(...), betas)` trains one model per beta with
`keras_vae.training.train` (the same seed, data order, architecture and
budget; only `beta` differs), each as its own resumable run in
`<sweep_dir>/beta_<b>`, evaluates each on the validation split
(`keras_vae.evaluation.evaluate`: rate = KL(q(z|x) || p(z)) and distortion =
-E_q[log p(x|z)], both in nats, the ELBO = -(rate + distortion), and with
`eval_samples > 1` the IWAE bound on the NLL), and writes to `sweep_dir`:

* `sweep.json`, `sweep.csv`: the table, one row per beta (`TABLE_COLUMNS`);
* `rate_distortion.png`: distortion against rate, one point per beta, over
  lines of constant ELBO (`keras_vae.plotting.plot_rate_distortion`; Alemi
  et al. 2018, "Fixing a Broken ELBO");
* `samples_per_beta.png`: samples from each model's prior, one row per beta,
  the same seed for every row (`keras_vae.plotting.plot_samples_per_beta`).

Running the same sweep again continues what is unfinished: a complete run is
not trained again (`training.train` decides, as for `tools/train.py`) and an
evaluation made at the run's current step with the same split and number of
samples is read back from the run's `evaluation.json` instead of repeated.

The module's top level imports only the Python standard library (TensorFlow
is imported by `run_sweep`), so that `tools/sweep.py` checks its arguments
(`parse_betas`) and answers `--help` without importing TensorFlow.

Example:

>>> from keras_vae import sweep, training
>>> config = training.TrainConfig(epochs=1)
>>> rows = sweep.run_sweep(config, (0.5, 1.0, 2.0), "runs/beta_sweep")  # doctest: +SKIP
>>> [(r["beta"], round(r["rate"], 1), round(r["distortion"], 1)) for r in rows]  # doctest: +SKIP
[(0.5, 28.7, 106.7), (1.0, 17.2, 118.9), (2.0, 9.3, 137.4)]
"""

import csv
import dataclasses
import json
import math
import os
import time

DEFAULT_BETAS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
DEFAULT_EPOCHS = 1  # 391 steps of batch 128 on binarized MNIST: about 2 minutes for 6 betas
DEFAULT_NUM_IMAGES = 10
# The table's columns, in order (sweep.csv; the keys of each sweep.json row).
TABLE_COLUMNS = (
    "beta",  # the KL weight the run trained with
    "rate",  # KL(q(z|x) || p(z)), nats per example
    "distortion",  # -E_q[log p(x|z)], nats per example
    "elbo",  # -(rate + distortion): the ELBO at beta = 1
    "nll",  # IWAE bound with num_samples samples; None when num_samples == 1
    "num_samples",  # importance samples k of the evaluation
    "active_units",  # Burda et al.'s count, out of latent_dim
    "latent_dim",
    "epochs",  # epochs trained
    "step",  # optimizer steps trained
    "train_seconds",  # wall time of the run's training, all sessions
    "run_dir",
)

__all__ = [
    "DEFAULT_BETAS",
    "DEFAULT_EPOCHS",
    "DEFAULT_NUM_IMAGES",
    "TABLE_COLUMNS",
    "beta_dir",
    "default_name",
    "format_table",
    "parse_betas",
    "paths",
    "read_table",
    "run_sweep",
    "write_table",
]


def default_name(dataset):
    """The sweep's name when none is given: `<dataset>_beta_sweep`."""
    return f"{dataset}_beta_sweep"


def parse_betas(betas):
    """Betas from `"0.5,1,2"` (or a sequence of numbers), sorted ascending.

    Args:
        betas: Comma-separated numbers, or a sequence of numbers.

    Returns:
        A tuple of distinct finite floats >= 0, in increasing order.

    Raises:
        ValueError: for an empty list, a value that is not a number, a
            negative, infinite or NaN value, or two values that are equal
            (or would share a run directory).

    Example:

    >>> parse_betas("1, 0.25,4")
    (0.25, 1.0, 4.0)
    """
    expected = "Expected comma-separated numbers >= 0 for the betas, e.g. 0.25,0.5,1,2"
    if isinstance(betas, str):
        items = [t.strip() for t in betas.split(",")]
        if betas.strip() and "" in items:
            raise ValueError(f"{expected}. Received: betas={betas!r} (an empty item)")
        items = [t for t in items if t]
    else:
        items = list(betas)
    try:
        values = [float(item) for item in items]
    except (TypeError, ValueError):
        raise ValueError(f"{expected}. Received: betas={betas!r}") from None
    if not values:
        raise ValueError(f"{expected}. Received: betas={betas!r} (no value)")
    bad = [v for v in values if not (math.isfinite(v) and v >= 0)]
    if bad:
        raise ValueError(f"{expected}. Received: betas={betas!r} (not allowed: {bad[0]:g})")
    names = [_beta_name(v) for v in values]
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(
            f"Expected distinct betas. Received: betas={betas!r} ({', '.join(repeated)} more than once)"
        )
    return tuple(sorted(values))


def _beta_name(beta):
    return f"{float(beta):.12g}"


def beta_dir(sweep_dir, beta):
    """The run directory of `beta` in a sweep: `<sweep_dir>/beta_<b>`
    (`beta_0.25`, `beta_1`)."""
    return os.path.join(sweep_dir, f"beta_{_beta_name(beta)}")


def paths(sweep_dir):
    """Where a sweep writes its files (besides the runs' directories)."""
    return {
        "json": os.path.join(sweep_dir, "sweep.json"),
        "csv": os.path.join(sweep_dir, "sweep.csv"),
        "rate_distortion": os.path.join(sweep_dir, "rate_distortion.png"),
        "samples": os.path.join(sweep_dir, "samples_per_beta.png"),
    }


def write_table(rows, sweep_dir):
    """Writes the table as `sweep.json` and `sweep.csv` in `sweep_dir`.

    JSON: a list of objects with the `TABLE_COLUMNS` keys (`nll` is null
    when not computed). CSV: a header of `TABLE_COLUMNS`, then one line per
    row (an empty cell for null); floats are written in full (`repr`) in
    both, so that the two files hold the same numbers.

    Returns:
        `(json_path, csv_path)`.
    """
    files = paths(sweep_dir)
    os.makedirs(sweep_dir, exist_ok=True)
    rows = [{key: row.get(key) for key in TABLE_COLUMNS} for row in rows]
    with open(files["json"], "w") as f:
        json.dump(rows, f, indent=2)
        f.write("\n")
    with open(files["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return files["json"], files["csv"]


def format_table(rows):
    """The table as aligned plain text: beta, rate, distortion, ELBO, NLL
    (when computed), active units, epochs.

    Example:

    >>> print(format_table([{"beta": 1.0, "rate": 25.04, "distortion": 78.8, "elbo": -103.84,
    ...                      "nll": None, "active_units": 12, "latent_dim": 32, "epochs": 3}]))
      beta    rate  distortion     ELBO      NLL  active  epochs
         1   25.04       78.80  -103.84        -   12/32       3
    """
    lines = [f"{'beta':>6}{'rate':>8}{'distortion':>12}{'ELBO':>9}{'NLL':>9}{'active':>8}{'epochs':>8}"]
    for row in rows:
        nll = "-" if row.get("nll") is None else f"{row['nll']:.2f}"
        active = f"{row['active_units']}/{row['latent_dim']}"
        lines.append(
            f"{row['beta']:>6g}{row['rate']:>8.2f}{row['distortion']:>12.2f}{row['elbo']:>9.2f}"
            f"{nll:>9}{active:>8}{row['epochs']:>8}"
        )
    return "\n".join(lines)


def read_table(sweep_dir):
    """The rows of a sweep's `sweep.json` (a list of dicts)."""
    with open(paths(sweep_dir)["json"]) as f:
        return json.load(f)



def _evaluation_is_current(report, status, split, num_samples):
    """Whether `report` (a run's evaluation.json) evaluated the run as it is
    now (`status["step"]`), on `split` with `num_samples` samples."""
    if not report or not status or report.get("step") != status.get("step"):
        return False
    results = report.get("splits", {}).get(split)
    return bool(results) and results.get("num_samples") == num_samples


def _row(beta, results, report, run_dir):
    num_samples = results["num_samples"]
    return {
        "beta": float(beta),
        "rate": results["rate"],
        "distortion": results["distortion"],
        "elbo": results["elbo"],
        "nll": results["nll"] if num_samples > 1 else None,
        "num_samples": num_samples,
        "active_units": results["active_units"],
        "latent_dim": results["latent_dim"],
        "epochs": report["epochs_run"],
        "step": report["step"],
        "train_seconds": report["train_seconds"],
        "run_dir": run_dir,
    }


def _evaluation_of_run(model, history, status, path, eval_ds, eval_split, eval_samples, config):
    """The run's evaluation record at `path`: read when it is of the run's
    current step with the same split and k, else computed and written."""
    from keras_vae import evaluation
    from keras_vae._internal.files import read_json

    report = read_json(path)
    if _evaluation_is_current(report, status, eval_split, eval_samples):
        print(f"   evaluation of step {status['step']} read from {path}")
        return report
    what = f"k={eval_samples}" if eval_samples > 1 else "1 sample of z per example"
    print(f"   evaluating on {eval_split} ({what})", flush=True)
    results = evaluation.evaluate(
        model, eval_ds, num_samples=eval_samples, seed=config.seed,
        verbose=int(config.verbose == 1),  # a progress bar, as fit's
    )  # fmt: skip
    report = {
        "train_seconds": status.get("train_seconds"),
        "epochs_run": len(history.get("epoch", [])),
        "step": status.get("step"),
        "splits": {eval_split: results},
    }
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    return report


def run_sweep(
    config,
    betas=DEFAULT_BETAS,
    sweep_dir=None,
    eval_samples=1,
    eval_split="validation",
    num_images=DEFAULT_NUM_IMAGES,
    fresh=False,
):
    """Trains and evaluates one run per beta; writes the table and the plots.

    Each beta's run is `dataclasses.replace(config, beta=b, output_dir=
    beta_dir(sweep_dir, b))`, trained by `keras_vae.training.train` (resumed
    from its backup when interrupted; not trained again when complete; with
    `fresh`, started over). The KL warm-up, if any, ramps to each run's beta.
    Progress is printed: which beta, its position in the sweep, the time
    taken, then its rate, distortion and ELBO.

    Args:
        config: A `keras_vae.training.TrainConfig`: everything but `beta`
            and `output_dir`, which the sweep sets per run.
        betas: The KL weights (see `parse_betas`; a string is parsed).
        sweep_dir: Directory of the runs and of the sweep's files (default:
            `runs/<dataset>_beta_sweep`).
        eval_samples: Samples of z per validation example: the distortion is
            their mean, and with more than 1 the table has the IWAE bound on
            the NLL (`nll`) with that k.
        eval_split: The split to evaluate on (with `config.take` examples).
        num_images: Samples from the prior per beta in `samples_per_beta.png`
            (drawn with `config.seed`).
        fresh: Start every run over (see `keras_vae.training.train`).

    Returns:
        The table: a list of dicts with the `TABLE_COLUMNS` keys, one per
        beta, in increasing order of beta (as written to `sweep.json`).
    """
    from keras_vae import data
    from keras_vae import plotting
    from keras_vae import runs
    from keras_vae import training
    from keras_vae._internal.validation import check_positive_int

    betas = parse_betas(betas)
    check_positive_int("eval_samples", eval_samples)
    sweep_dir = sweep_dir or os.path.join("runs", default_name(config.dataset))
    files = paths(sweep_dir)
    eval_ds = data.load(
        config.dataset, eval_split, batch_size=500, shuffle=False,
        data_dir=config.data_dir, take=config.take,
    )  # fmt: skip
    rows, models = [], []
    start = time.time()
    for index, beta in enumerate(betas):
        run_dir = beta_dir(sweep_dir, beta)
        print(f"== beta {beta:g} ({index + 1} of {len(betas)}): {run_dir}", flush=True)
        run_config = dataclasses.replace(config, beta=beta, output_dir=run_dir)
        began = time.time()
        model, history = training.train(run_config, fresh=fresh)
        run = runs.RunDirectory(run_dir)
        report = _evaluation_of_run(
            model, history, run.status() or {}, run.files["evaluation"], eval_ds, eval_split, eval_samples, config
        )
        row = _row(beta, report["splits"][eval_split], report, run_dir)
        rows.append(row)
        models.append(model)
        nll = f", NLL {row['nll']:.2f} (k={eval_samples})" if row["nll"] is not None else ""
        print(
            f"   beta {beta:g}: rate {row['rate']:.2f}, distortion {row['distortion']:.2f}, "
            f"ELBO {row['elbo']:.2f} nats{nll} ({row['epochs']} epoch{'s' * (row['epochs'] != 1)}; "
            f"{time.time() - began:.0f} s, sweep {time.time() - start:.0f} s so far)",
            flush=True,
        )
    write_table(rows, sweep_dir)
    plotting.plot_rate_distortion(
        rows, files["rate_distortion"],
        title=f"{config.dataset}: one run per beta ({config.epochs} epoch{'s' * (config.epochs != 1)} each), {eval_split} split",
    )  # fmt: skip
    plotting.plot_samples_per_beta(models, betas, files["samples"], num_samples=num_images, seed=config.seed)
    return rows
