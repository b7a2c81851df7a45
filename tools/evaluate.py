#!/usr/bin/env python
"""Evaluate a VAE on a TFDS split: importance-sampled NLL, ELBO, rate, distortion.

MODEL is a .keras file, a training run directory (runs/<name>), or an export
version directory (saved_models/<name>/<version>). Prints a table and writes it
as JSON.

Example:

    python tools/evaluate.py saved_models/binarized_mnist_vae/1 \\
        --data-dir ../shared/tensorflow_datasets --split validation --samples 5000

The JSON goes beside MODEL (for an export, beside its version directory, never
in it), named after what was evaluated: evaluation-v1-validation.json for
version 1 on the whole validation split with the defaults, and
evaluation-v1-validation-k100-n2000.json for --samples 100 --take 2000 (other
settings add -<dataset>, -seed<S>, -<dtype policy>). An existing file of a
different evaluation (other model file, dataset, splits, k, examples or seed)
is never replaced: the command stops before evaluating; --output PATH writes
elsewhere (or replaces PATH on purpose). Re-running the same evaluation
rewrites its file, keeping any other fields it holds.

A .keras model or run directory is evaluated in the precision it was saved
with; --dtype-policy mixed_bfloat16 runs it with bfloat16 matrix products
(distributions, log-weights and their logsumexp stay float32), faster on
CPUs with AVX512_BF16, and --dtype-policy float32 runs a mixed_bfloat16 model
in float32. The JSON records the policy used.

Several devices or machines: --strategy mirrored (with --cpu-replicas N on a
machine without GPUs) or --strategy multiworker (every worker runs the same
command, TF_CONFIG naming the cluster and its task, as for tools/train.py)
give batch i to replica i mod R with the seed it has on one device, and
reduce only the sums: the same figures as one device, to float rounding.
Only the chief (worker 0) writes the JSON. The table is followed by the
throughput (examples/s and importance samples/s).
"""

import json
import os
import sys

TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [TOOLS, os.path.dirname(TOOLS)]  # tools/_cli.py; this checkout's keras_vae
import _cli  # noqa: E402

DEFAULT_DATASET = _cli.config_module().DEFAULT_DATASET
DEFAULT_SAMPLES = 5000
DEFAULT_SEED = 0


def parse_args(argv=None):
    parser = _cli.parser(__doc__)
    parser.add_argument("model", help=".keras file, run directory or export version directory")
    parser.add_argument("--dataset", default=DEFAULT_DATASET, choices=_cli.config_module().DATASETS, help="TFDS dataset")
    parser.add_argument("--data-dir", default=None, help="TFDS data dir (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets)")
    parser.add_argument("--split", action="append", default=None, help="split to evaluate, repeatable (default: validation)")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="importance samples k per example")
    parser.add_argument("--batch-size", type=int, default=100, help="examples per batch")
    parser.add_argument("--take", type=int, default=None, help="only the first N examples of each split (default: all)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the samples")
    parser.add_argument(
        "--dtype-policy",
        default=None,
        choices=_cli.config_module().DTYPE_POLICIES,
        help="run the model in this Keras dtype policy (mixed_bfloat16: bfloat16 "
        "matrix products; not for an export) (default: the one it was saved with)",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="JSON file, written even if it exists (default: beside MODEL, named after "
        "the evaluation, never replacing a different one; see above)",
    )
    parser.add_argument(
        "--strategy",
        default="default",
        choices=_cli.config_module().STRATEGIES,
        help="default: one device; mirrored: the GPUs of this machine (or --cpu-replicas CPU "
        "devices); multiworker: the workers TF_CONFIG names (each runs this command)",
    )
    parser.add_argument(
        "--cpu-replicas", type=int, default=None,
        help="with --strategy mirrored on a machine without GPUs: N logical CPU devices",
    )  # fmt: skip
    parser.add_argument("--verbose", type=int, default=1, choices=(0, 1), help="progress bar")
    args = _cli.parse_args(parser, argv)
    args.split = args.split or ["validation"]
    _cli.check_integers(parser, args, positive=("samples", "batch_size", "take", "cpu_replicas"))
    return args


def load(path):
    """A keras_vae.VAE, or an ExportedVAE for a SavedModel directory."""
    from keras_vae import exported as exported_lib
    from keras_vae import training

    if os.path.isdir(path) and os.path.exists(os.path.join(path, "saved_model.pb")):
        return exported_lib.ExportedVAE(path)
    if not os.path.exists(path):
        raise ValueError(
            "Expected a .keras file, a run directory (runs/<name>) or an export "
            f"version directory (saved_models/<name>/<version>). Received: {path} (not found)"
        )
    return training.load_model_or_run(path)


def set_dtype_policy(model, policy, path):
    """Runs a loaded Keras model in `policy`; an export cannot be switched."""
    from keras_vae import exported as exported_lib
    from keras_vae import training

    if isinstance(model, exported_lib.ExportedVAE):
        raise ValueError(
            "Expected a .keras file or a run directory with --dtype-policy (an "
            "export computes in the precision it was exported in). Received: "
            f"{path}, an export"
        )
    training.set_model_dtype_policy(model, policy)
    print(f"Running in dtype policy {policy}")


def default_output(model_path, splits, dataset=DEFAULT_DATASET, samples=DEFAULT_SAMPLES, take=None, seed=DEFAULT_SEED, dtype_policy=None):
    """Where the evaluation goes without --output: a name that says what it is.

    `evaluation-<model>-<splits>[-<dataset>][-k<samples>][-n<take>][-seed<seed>][-<dtype_policy>].json`,
    each bracketed part only when not the default (for the policy: when
    --dtype-policy is given). <model> is `v<version>` for
    an export version directory (the file goes beside it, never in it: TF
    Serving may be serving it), the file's stem for a .keras file (beside
    it), and nothing for a run directory (in it).
    """
    path = os.path.abspath(model_path.rstrip("/"))
    parts = ["evaluation"]
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        directory = os.path.dirname(path)
        parts.append(f"v{os.path.basename(path)}")
    elif os.path.isdir(path):
        directory = path
    else:
        directory = os.path.dirname(path)
        parts.append(os.path.splitext(os.path.basename(path))[0])
    parts.extend(splits)
    if dataset != DEFAULT_DATASET:
        parts.append(dataset)
    if samples != DEFAULT_SAMPLES:
        parts.append(f"k{samples}")
    if take is not None:
        parts.append(f"n{take}")
    if seed != DEFAULT_SEED:
        parts.append(f"seed{seed}")
    if dtype_policy is not None:
        parts.append(dtype_policy)
    return os.path.join(directory, "-".join(parts) + ".json")


def describe(record):
    """What an evaluation file describes: dataset, seed and, per split, k and
    the number of examples. (Files written before the seed was recorded were
    written with the default seed.)"""
    return {
        "dataset": record.get("dataset"),
        "seed": record.get("seed", DEFAULT_SEED),
        "splits": {
            split: {"num_samples": r.get("num_samples"), "num_examples": r.get("num_examples")}
            for split, r in (record.get("splits") or {}).items()
        },
    }


def _planned(args):
    """`describe` of the evaluation `args` ask for, before running it."""
    from keras_vae import data

    splits = {}
    for split in args.split:
        try:
            size = data.num_examples(args.dataset, split, args.data_dir)
        except (KeyError, ValueError, OSError):  # an unknown split: data.load reports it
            size = None
        if size is not None and args.take is not None:
            size = min(size, args.take)
        splits[split] = {"num_samples": args.samples, "num_examples": size}
    return {"dataset": args.dataset, "seed": args.seed, "splits": splits}


def _summary(description):
    return ", ".join(
        f"{split}: k={s['num_samples']} on {s['num_examples']} examples"
        for split, s in description["splits"].items()
    ) + f" of {description['dataset']}, seed {description['seed']}"


def check_output(path, args):
    """The record already at the default `path` if it holds this same
    evaluation (its other fields are kept), {} if there is none.

    Raises:
        ValueError: `path` holds a different evaluation (or is unreadable).
    """
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            existing = json.load(f)
        found = describe(existing)
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(
            f"Expected {path} to be an evaluation file to update. Received: a file "
            f"that cannot be read as one ({e}). Not overwritten: pass --output PATH."
        ) from None
    planned = _planned(args)
    same = found["dataset"] == planned["dataset"] and found["seed"] == planned["seed"]
    same = same and list(found["splits"]) == list(planned["splits"])
    for split, p in planned["splits"].items():
        f = found["splits"].get(split, {})
        same = same and f.get("num_samples") == p["num_samples"]
        same = same and (p["num_examples"] is None or f.get("num_examples") == p["num_examples"])
    if not same:
        raise ValueError(
            f"Expected {path} to hold the same evaluation, to replace it. Received: "
            f"it holds {_summary(found)}; this one is {_summary(planned)}. Not "
            "overwritten and not evaluated: pass --output PATH to write this "
            "evaluation elsewhere (or to replace that file on purpose)."
        )
    return existing


def main(argv=None):
    args = parse_args(argv)
    import time

    from keras_vae import data, distribute, evaluation

    # Before any other TensorFlow work: devices and collectives are set up here.
    strategy = distribute.make_strategy(args.strategy, cpu_replicas=args.cpu_replicas)
    chief = distribute.is_chief(strategy)
    output = args.output
    record = {}
    if output is None:
        output = default_output(args.model, args.split, args.dataset, args.samples, args.take, args.seed, args.dtype_policy)
        record = check_output(output, args)  # before the (long) evaluation
    model = load(args.model)
    if args.dtype_policy is not None:
        set_dtype_policy(model, args.dtype_policy, args.model)
    results = {}
    seconds = 0.0
    for split in args.split:
        ds = data.load(args.dataset, split, batch_size=args.batch_size, shuffle=False, data_dir=args.data_dir, take=args.take)
        start = time.perf_counter()
        results[split] = evaluation.evaluate(
            model, ds, num_samples=args.samples, seed=args.seed, verbose=args.verbose, strategy=strategy
        )
        seconds += time.perf_counter() - start
    print(evaluation.format_table(results))
    examples = sum(r["num_examples"] for r in results.values())
    samples = sum(r["num_examples"] * r["num_samples"] for r in results.values())
    replicas = strategy.num_replicas_in_sync
    print(
        f"{examples} examples in {seconds:.1f} s on {replicas} replica(s): {examples / seconds:,.1f} "
        f"examples/s, {samples / seconds:,.0f} importance samples/s"
    )
    if not chief:
        print("This worker is not the chief: the chief writes the JSON")
        return results
    record.update({"model": args.model, "dataset": args.dataset, "seed": args.seed, "take": args.take, "splits": results})
    if hasattr(model, "dtype_policy"):  # a Keras model (an export has none)
        record["dtype_policy"] = model.dtype_policy.name
    with open(output, "w") as f:
        json.dump(record, f, indent=2)
    print(f"Wrote {output}")
    return results


if __name__ == "__main__":
    _cli.run(main)
