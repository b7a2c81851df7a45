"""keras_vae.runs: a run directory's files and readers, in one place."""

import json
import math

from keras_vae import runs
from keras_vae import training


def test_run_directory_reads_and_writes_the_files_of_a_run(tmp_path):
    run = runs.RunDirectory(tmp_path)
    assert run.files == runs.paths(str(tmp_path)) == training.paths(str(tmp_path))
    assert run.status() is None and run.evaluation() is None and run.history() == {} and run.config() is None
    status = {"step": 12, "train_seconds": 3.5, "sessions": [], "stopped_early": None}
    run.write_status(status)
    assert run.status() == status == training.read_status(str(tmp_path))
    run.write_evaluation({"step": 12, "splits": {}})
    assert run.evaluation() == {"step": 12, "splits": {}}
    assert json.loads((tmp_path / "evaluation.json").read_text())["step"] == 12
    (tmp_path / "history.csv").write_text("epoch,elbo,val_elbo\n0,-100.0,NA\n1,-90.0,-91.0\n1,-89.0,-90.0\n")
    history = run.history()
    assert history["elbo"] == [-100.0, -89.0]  # a re-run epoch keeps its last row
    assert math.isnan(history["val_elbo"][0]) and history["val_elbo"][1] == -90.0
    (tmp_path / "status.json").write_text('{"step": "x"}')
    assert run.status() is None  # unreadable: None, not an error
    assert sorted(runs.FILES) == sorted(run.files)
