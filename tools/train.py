#!/usr/bin/env python
r"""Train a VAE on a TFDS dataset, evaluate it, plot it and export it for serving.

Example (the README's main job):

    python tools/train.py --epochs 10 --eval-samples 100 --name quickstart_vae

(TFDS downloads binarized_mnist on first use; offline, point --data-dir or
$TFDS_DATA_DIR at a directory where it is prepared.)

The run goes to runs/<name>/ (with report.html: one self-contained page of its
configuration, training, evaluation and plots) and its export to
saved_models/<name>/<version>/, with <name> = <dataset>_run unless --name is
given (a shipped model's directory, e.g. saved_models/binarized_mnist_vae,
only gets a new version from a run named so on purpose).

The loss printed is -(reconstruction - beta * KL) (with --objective iwae:
minus the IWAE bound, beta on log q - log p): it rises during the KL warm-up
(--warmup-epochs) while beta grows. The ELBO (elbo, val_elbo; and iwae,
val_iwae with --objective iwae) is the objective to watch.

Run the same command again to continue from the newest backup (after a crash,
even kill -9, or with a larger --epochs): backups are written at every epoch end
and every --backup-every steps; --fresh starts over. A complete run is not
trained, evaluated or exported again. Exit status 1 with a message when the
loss becomes NaN/inf (naming the step and the last good backup) or a batch is
refused (NaN pixels, values outside [0, 1]; naming epoch and batch); --debug
shows the traceback.

Several devices or machines (--batch-size is the global batch, split between
the replicas; see docs/distributed.md):

    python tools/train.py --strategy mirrored ...                    # all GPUs
    python tools/train.py --strategy mirrored --cpu-replicas 2 ...   # CPU only
    TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                "task": {"type": "worker", "index": 0}}' \
        python tools/train.py --strategy multiworker ...  # index 1 on host2

Only the chief (worker 0) writes files, evaluates, plots and exports.
"""

import os
import sys

TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [TOOLS, os.path.dirname(TOOLS)]  # tools/_cli.py; this checkout's keras_vae
import _cli  # noqa: E402


def parse_args(argv=None):
    """The parsed options; the `TrainConfig` ones are checked already."""
    config = _cli.config_module()
    parser = _cli.parser(__doc__)
    _cli.add_dataclass_arguments(
        parser.add_argument_group("the training run (saved as <output-dir>/config.json)"),
        config.TrainConfig,
    )
    after = parser.add_argument_group("evaluation, plots, export and devices")
    after.add_argument(
        "--name",
        default=None,
        help="name of the run and of the exported model: runs/<name>, <export-dir>/<name> "
        "(default: <dataset>_run)",
    )
    after.add_argument(
        "--export-dir",
        default="saved_models",
        help="base of the versioned export <export-dir>/<name>/<version>; '' to skip the export",
    )
    after.add_argument(
        "--eval-samples",
        type=int,
        default=1000,
        help="importance samples k for log p(x) after training (the literature uses 5000; 0 skips the evaluation)",
    )
    after.add_argument(
        "--eval-split",
        action="append",
        default=None,
        help="split to evaluate, repeatable (default: validation, and test where it exists)",
    )
    after.add_argument(
        "--strategy",
        default="default",
        choices=config.STRATEGIES,
        help="default: one device; mirrored: all GPUs of this machine (or --cpu-replicas CPU "
        "devices); multiworker: several machines or processes as TF_CONFIG says",
    )
    after.add_argument(
        "--cpu-replicas",
        type=int,
        default=None,
        help="with --strategy mirrored on a machine without GPUs: split the CPU into N "
        "logical devices (default: none, the GPUs)",
    )
    after.add_argument(
        "--deterministic",
        action="store_true",
        help="tf.config.experimental.enable_op_determinism(): the same seed gives "
        "bit-identical weights (slower)",
    )
    after.add_argument(
        "--fresh",
        action="store_true",
        help="delete the run's backup, history, models, status and evaluation, and start over",
    )
    after.add_argument("--no-plots", action="store_true", help="do not write plots/*.png")
    args = _cli.parse_args(parser, argv)
    _cli.check_integers(parser, args, positive=("cpu_replicas",), non_negative=("eval_samples",))
    args.name = args.name or config.default_name(args.dataset)
    args.output_dir = args.output_dir or config.default_output_dir(args.name)
    # The checks of TrainConfig, before TensorFlow is imported.
    _cli.check_dataclass(parser, config.TrainConfig, _cli.dataclass_values(config.TrainConfig, args))
    return args



def main(argv=None):
    args = parse_args(argv)
    from keras_vae import data, distribute, evaluation, runs, training
    from keras_vae import report as run_report  # report.html; `report` is evaluation.json's dict

    # Before any other TensorFlow work: devices and collectives are set up here.
    strategy = distribute.make_strategy(args.strategy, cpu_replicas=args.cpu_replicas)
    if args.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()

    config = training.TrainConfig(**_cli.dataclass_values(training.TrainConfig, args))
    run = runs.RunDirectory(config.output_dir)
    model, history = training.train(config, fresh=args.fresh, strategy=strategy)
    if not distribute.is_chief(strategy):
        print("Trained; this worker is not the chief: the chief writes the files, evaluates, plots and exports")
        return {"epochs_run": len(history.get("epoch", []))}

    status = run.status() or {}
    previous = run.evaluation()
    if previous is not None and previous.get("step") == status.get("step"):
        # Nothing trained since the report: keep its figures, no new export.
        return _complete(args, model, run, previous)

    report = {
        "train_seconds": status.get("train_seconds"),  # all sessions, summed
        "epochs_run": len(history.get("epoch", [])),
        "step": status.get("step"),
        "splits": {},
        "export": None,
    }
    seconds = report["train_seconds"]
    took = f"in {seconds:.0f} s" if seconds is not None else "(time not recorded)"
    print(f"Trained {took} ({report['epochs_run']} epochs, all sessions); best model: {run.files['best']}")
    summary = training.summarize(history, config.beta, config.objective)
    if summary:
        print(summary)
    prior = status.get("code_prior")
    if config.model == "vqvae" and prior:
        # The history's ELBO is under the uniform prior of the auto-encoder's training.
        held_out = prior["val_log_prob"]
        shown = f"{held_out:.2f} on validation" if held_out is not None else f"{prior['log_prob']:.2f} on training"
        print(
            f"Code prior fitted in {prior['seconds']:.0f} s ({prior['epochs']} epochs): log p(k) = {shown} "
            "(nats per code grid; the ELBO above is under the uniform prior, the evaluation uses the fitted one)."
        )
    if args.eval_samples:
        splits = args.eval_split or [
            s for s in ("validation", "test") if s in data.available_splits(config.dataset, config.data_dir)
        ]
        for split in splits:
            ds = data.load(config.dataset, split, batch_size=100, shuffle=False, data_dir=config.data_dir, take=config.take)
            print(f"Evaluating on {split} with k={args.eval_samples} importance samples")
            report["splits"][split] = evaluation.evaluate(model, ds, num_samples=args.eval_samples, seed=config.seed, verbose=config.verbose)
        print(evaluation.format_table(report["splits"]))
    run.write_evaluation(report)
    if not args.no_plots:
        written = run_report.write_plots(config.output_dir, model=model, config=config, history=history)
        print("Plots: " + ", ".join(written))
    _export(args, model, run, report)
    print(f"Report: {run_report.write_report(config.output_dir, include_plots=not args.no_plots)}")
    return report


def _export(args, model, run, report):
    """Exports `model` as the next version of <export-dir>/<name> (unless
    --export-dir ''), and records the version directory in the report."""
    if not args.export_dir:
        return
    from keras_vae import export

    report["export"] = export.export_for_serving(model, os.path.join(args.export_dir, args.name))
    run.write_evaluation(report)
    print(f"Exported for serving: {report['export']}")


def _complete(args, model, run, report):
    """A rerun of a run whose report is up to date: nothing is rewritten.

    Only an export that the report does not hold (it was skipped with
    --export-dir '' or interrupted) is made now, and report.html is written
    only if that export changed it or it does not exist (a run finished
    before there were reports).
    """
    from keras_vae import report as run_report

    exported = report.get("export")
    if "export" in report and report["export"] is None:
        _export(args, model, run, report)
    print(
        f"Nothing new to evaluate or export: the results of this run are in "
        f"{run.files['evaluation']} (export: {report.get('export') or 'none'})."
    )
    page = os.path.join(args.output_dir, run_report.REPORT_NAME)
    if report.get("export") != exported or not os.path.exists(page):
        run_report.write_report(args.output_dir, include_plots=not args.no_plots)
    print(f"Report: {page}")
    return report


if __name__ == "__main__":
    _cli.run(main)
