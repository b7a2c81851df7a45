#!/usr/bin/env python
"""Train a VAE on a TFDS dataset, evaluate it, plot it and export it for serving.

Example (the README's main job):

    python tools/train.py --data-dir ../shared/tensorflow_datasets --epochs 10

Run the same command again to continue from the newest backup (after a crash,
even kill -9, or with a larger --epochs): backups are written at every epoch end
and every --backup-every steps; --fresh starts over. Exit status 1 with a message
when the loss becomes NaN/inf (naming the step and the last good backup) or a
batch is refused (NaN pixels, values outside [0, 1]; naming epoch and batch).

Several devices or machines (--batch-size is the global batch, split between
the replicas; see the README, "Training on several devices and machines"):

    python tools/train.py --strategy mirrored ...                    # all GPUs
    python tools/train.py --strategy mirrored --cpu-replicas 2 ...   # CPU only
    TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                "task": {"type": "worker", "index": 0}}' \
        python tools/train.py --strategy multiworker ...  # index 1 on host2

Only the chief (worker 0) writes files, evaluates, plots and exports.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv=None):
    from keras_vae import data, distribute, training

    defaults = training.TrainConfig()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default=defaults.dataset, choices=sorted(data.DATASETS))
    parser.add_argument("--data-dir", default=None, help="TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    parser.add_argument("--architecture", default=defaults.architecture, choices=training.ARCHITECTURES, help="mlp: ReLU layers; gated: linear gated layers")
    parser.add_argument("--hidden-units", default="512,256", help="encoder widths, comma-separated; the decoder mirrors them (default: 512,256)")
    parser.add_argument("--latent-dim", type=int, default=defaults.latent_dim)
    parser.add_argument("--beta", type=float, default=defaults.beta, help="final weight of the KL term (1 = the ELBO)")
    parser.add_argument("--warmup-epochs", type=int, default=defaults.warmup_epochs, help="linear KL warm-up from 0 to beta")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--lr-halve-every", type=int, default=0, help="halve the learning rate every N epochs (0: constant)")
    parser.add_argument("--patience", type=int, default=0, help="early stopping patience in epochs on the validation ELBO, counted after the warm-up (0: off)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--output-dir", default=None, help="run directory (default: runs/<name>)")
    parser.add_argument("--name", default=None, help="model name for saved_models/<name> (default: <dataset>_vae)")
    parser.add_argument("--export-dir", default="saved_models", help="base of the versioned export; '' to skip the export")
    parser.add_argument("--eval-samples", type=int, default=1000, help="importance samples k for log p(x) (the literature uses 5000; 0 skips evaluation)")
    parser.add_argument("--eval-split", action="append", default=None, help="splits to evaluate (default: validation, and test where it exists)")
    parser.add_argument("--take", type=int, default=None, help="use only the first N examples of each split (quick runs)")
    parser.add_argument("--steps-per-execution", type=int, default=1)
    parser.add_argument("--backup-every", type=int, default=0, help="also back up the training state every N steps, not only at epoch ends (0: epoch ends only)")
    parser.add_argument("--strategy", default="default", choices=distribute.STRATEGIES, help="default: one device; mirrored: all GPUs of this machine (or --cpu-replicas CPU devices); multiworker: several machines or processes as TF_CONFIG says (default: default)")
    parser.add_argument("--cpu-replicas", type=int, default=None, help="with --strategy mirrored on a machine without GPUs: split the CPU into N logical devices")
    parser.add_argument("--deterministic", action="store_true", help="tf.config.experimental.enable_op_determinism(): the same seed gives bit-identical weights (slower)")
    parser.add_argument("--fresh", action="store_true", help="delete the run's backup, history and best model and start over")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2))
    args = parser.parse_args(argv)
    args.name = args.name or f"{args.dataset}_vae"
    args.output_dir = args.output_dir or os.path.join("runs", args.name)
    return args


def main(argv=None):
    args = parse_args(argv)
    from keras_vae import data, distribute, evaluation, training

    # Before any other TensorFlow work: devices and collectives are set up here.
    strategy = distribute.make_strategy(args.strategy, cpu_replicas=args.cpu_replicas)
    if args.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()

    config = training.TrainConfig(
        dataset=args.dataset,
        data_dir=args.data_dir,
        architecture=args.architecture,
        hidden_units=tuple(int(u) for u in args.hidden_units.split(",")),
        latent_dim=args.latent_dim,
        beta=args.beta,
        warmup_epochs=args.warmup_epochs,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lr_halve_every=args.lr_halve_every,
        patience=args.patience,
        seed=args.seed,
        output_dir=args.output_dir,
        take=args.take,
        steps_per_execution=args.steps_per_execution,
        backup_every=args.backup_every,
        verbose=args.verbose,
    )
    files = training.paths(args.output_dir)
    start = time.time()
    model, history = training.train(config, fresh=args.fresh, strategy=strategy)
    train_seconds = time.time() - start
    report = {"train_seconds": round(train_seconds, 1), "epochs_run": len(history.get("epoch", [])), "splits": {}}
    if not distribute.is_chief(strategy):
        print(f"Trained in {train_seconds:.0f} s; this worker is not the chief: the chief writes the files, evaluates, plots and exports")
        return report
    print(f"Trained in {train_seconds:.0f} s; best model: {files['best']}")
    if args.eval_samples:
        splits = args.eval_split or [
            s for s in ("validation", "test") if s in data.available_splits(args.dataset, args.data_dir)
        ]
        for split in splits:
            ds = data.load(args.dataset, split, batch_size=100, shuffle=False, data_dir=args.data_dir, take=args.take)
            print(f"Evaluating on {split} with k={args.eval_samples} importance samples")
            report["splits"][split] = evaluation.evaluate(model, ds, num_samples=args.eval_samples, seed=args.seed, verbose=args.verbose)
        with open(files["evaluation"], "w") as f:
            json.dump(report, f, indent=2)
        print(evaluation.format_table(report["splits"]))
    if not args.no_plots:
        from keras_vae import plotting

        written = plotting.plot_all(model, history, args.dataset, files["plots"], data_dir=args.data_dir, take=args.take, seed=args.seed)
        print("Plots: " + ", ".join(written))
    if args.export_dir:
        from keras_vae import export

        path = export.export_for_serving(model, os.path.join(args.export_dir, args.name))
        print(f"Exported for serving: {path}")
    return report


if __name__ == "__main__":
    main()
