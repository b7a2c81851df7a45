#!/usr/bin/env python
"""Evaluate a VAE on a TFDS split: importance-sampled NLL, ELBO, rate, distortion.

MODEL is a .keras file, a training run directory (runs/<name>), or an export
version directory (saved_models/<name>/<version>). Prints a table and writes it
as JSON.

Example:

    python tools/evaluate.py saved_models/binarized_mnist_vae/1 \\
        --data-dir ../shared/tensorflow_datasets --split validation --samples 5000
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help=".keras file, run directory or export version directory")
    parser.add_argument("--dataset", default="binarized_mnist")
    parser.add_argument("--data-dir", default=None, help="TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    parser.add_argument("--split", action="append", default=None, help="split(s) to evaluate (default: validation)")
    parser.add_argument("--samples", type=int, default=5000, help="importance samples k per example (default 5000)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--take", type=int, default=None, help="only the first N examples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="JSON file (default: evaluation-<split>.json beside MODEL)")
    parser.add_argument("--verbose", type=int, default=1, choices=(0, 1))
    return parser.parse_args(argv)


def load(path):
    """A keras_vae.VAE, or an ExportedVAE for a SavedModel directory."""
    from keras_vae import export

    if os.path.isdir(path) and os.path.exists(os.path.join(path, "saved_model.pb")):
        return export.ExportedVAE(path)
    return export.load_model_or_run(path)


def default_output(model_path, splits):
    """Beside the model; for an export, beside its version directory, never in
    it (TF Serving may be serving it)."""
    path = os.path.abspath(model_path.rstrip("/"))
    name = f"evaluation-{'-'.join(splits)}.json"
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return os.path.join(os.path.dirname(path), f"evaluation-v{os.path.basename(path)}-{'-'.join(splits)}.json")
    return os.path.join(path if os.path.isdir(path) else os.path.dirname(path), name)


def main(argv=None):
    args = parse_args(argv)
    from keras_vae import data, evaluation

    model = load(args.model)
    results = {}
    for split in args.split or ["validation"]:
        ds = data.load(args.dataset, split, batch_size=args.batch_size, shuffle=False, data_dir=args.data_dir, take=args.take)
        results[split] = evaluation.evaluate(model, ds, num_samples=args.samples, seed=args.seed, verbose=args.verbose)
    print(evaluation.format_table(results))
    output = args.output or default_output(args.model, list(results))
    with open(output, "w") as f:
        json.dump({"model": args.model, "dataset": args.dataset, "splits": results}, f, indent=2)
    print(f"Wrote {output}")
    return results


if __name__ == "__main__":
    main()
