"""A training run's directory, in one place: its files and how each is read.

`tools/train.py` (through `keras_vae.training.train`) writes a run to
`runs/<name>/`; the report, the sweep and the tools read it back. Every path
and every reader is here: `RunDirectory(path)` gives them as attributes and
methods, and the module functions (`paths`, `read_status`, ...) are the same
readers for code that holds only a path.

==================  ================================================
file                what it holds
==================  ================================================
config.json         the run's `TrainConfig`
best.keras          the model with the best validation ELBO
last.keras          the model at the end of the last session
backup/             the training backups (`keras_vae.backup`)
history.csv         per-epoch metrics (Keras's CSVLogger)
prior_history.csv   a VQ-VAE's code-prior fit, per epoch
status.json         the step reached, time, sessions, early stopping,
                    a VQ-VAE's code prior
evaluation.json     what `tools/train.py` measured after training
tensorboard/        the TensorBoard logs
plots/              the PNG plots (`keras_vae.report.write_plots`)
==================  ================================================

Standard library only.
"""

import csv
import json
import os

from keras_vae._internal.files import read_json
from keras_vae._internal.files import write_atomically
from keras_vae._internal.files import write_json

__all__ = ["FILES", "RunDirectory", "paths", "read_evaluation", "read_history", "read_status"]

# Each file of a run, relative to its directory.
FILES = {
    "config": "config.json",
    "best": "best.keras",
    "last": "last.keras",
    "backup": "backup",
    "history": "history.csv",
    "tensorboard": "tensorboard",
    "plots": "plots",
    "evaluation": "evaluation.json",
    "status": "status.json",
    "prior_history": "prior_history.csv",
}


def paths(output_dir):
    """Where the run in `output_dir` keeps each of its `FILES`."""
    return {key: os.path.join(output_dir, name) for key, name in FILES.items()}


def read_evaluation(output_dir):
    """The evaluation record (`evaluation.json`) of the run in `output_dir`,
    or None when it is missing or unreadable. Its `step` says which training
    step it measured (compare with `read_status(output_dir)["step"]`)."""
    return read_json(paths(output_dir)["evaluation"])


def read_status(output_dir):
    """The training status of the run in `output_dir` (a dict), or None.

    `keras_vae.training.train` keeps `status.json` up to date at every epoch
    end and when it returns: `step` (the optimizer step reached),
    `train_seconds` (wall time of all its sessions, summed: setup and
    fitting, up to the last epoch end of a session that crashed), `sessions`
    (one `{"first_step", "last_step", "seconds"}` per session that trained),
    `stopped_early` (`{"epochs_run", "patience"}` when early stopping ended
    the run, else None) and, for a VQ-VAE, `code_prior`. A run that nothing
    was trained in since has the same status. A missing or unreadable file
    gives None.
    """
    try:
        with open(paths(output_dir)["status"]) as f:
            status = json.load(f)
        int(status["step"]), float(status["train_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return status


def read_history(path):
    """Per-epoch metrics from a CSVLogger file, as a dict of lists."""
    if not os.path.exists(path):
        return {}
    rows = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            # An epoch re-run after a resume appears twice: keep its last row.
            rows[int(row["epoch"])] = row
    # A run resumed with other settings (an IWAE objective, no validation
    # split) has epochs with other columns: one list per column over all
    # epochs, NaN where an epoch lacks it.
    columns = []
    for row in rows.values():
        columns += [key for key in row if key is not None and key not in columns]
    history = {key: [] for key in columns}
    for epoch in sorted(rows):
        for key in columns:
            history[key].append(_number(rows[epoch].get(key)))
    return history


def _number(text):
    """A CSV cell as a float: NaN for an empty or non-numeric one ("NA")."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


class RunDirectory:
    """The run in `path`: its files (`files["best"]`, ...) and their readers.

    Example:

    >>> run = RunDirectory("runs/quickstart_vae")
    >>> run.files["best"]
    'runs/quickstart_vae/best.keras'
    >>> run.status() is None or "step" in run.status()  # doctest: +SKIP
    True
    """

    def __init__(self, path):
        self.path = str(path)
        self.files = paths(self.path)

    def __repr__(self):
        return f"RunDirectory({self.path!r})"

    def config(self):
        """`config.json` as a dict, or None when missing or unreadable."""
        return read_json(self.files["config"])

    def status(self):
        """`read_status` of this run."""
        return read_status(self.path)

    def evaluation(self):
        """`read_evaluation` of this run."""
        return read_evaluation(self.path)

    def history(self):
        """`read_history` of its `history.csv` (an empty dict without one)."""
        return read_history(self.files["history"])

    def prior_history(self):
        """`read_history` of a VQ-VAE's `prior_history.csv`."""
        return read_history(self.files["prior_history"])

    def write_status(self, status):
        """Replaces `status.json`, atomically."""
        write_json(self.files["status"], status)

    def write_evaluation(self, record):
        """Replaces `evaluation.json` (indented, for people), atomically."""

        def write(tmp):
            with open(tmp, "w") as f:
                json.dump(record, f, indent=2)

        write_atomically(self.files["evaluation"], write)
