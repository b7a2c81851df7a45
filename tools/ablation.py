#!/usr/bin/env python
r"""The latent structure x prior x objective ablation: one tools/train.py run per combination.

Trains the same architecture with the same budget for every latent structure
(single: one Gaussian latent layer; hierarchical: two layers, --latent-layers 2;
iaf: one layer whose q is pushed through inverse autoregressive flows, --flow
iaf), prior (standard, mixture, vamp) and objective (elbo, iwae with
--num-samples), each as its own resumable run
`runs/<prefix>_<prior>_<objective>` (single) or
`runs/<prefix>_<structure>_<prior>_<objective>` (running this again skips the
finished ones and continues the others), evaluates each on validation, and
writes the table (Markdown and JSON) to `runs/<prefix>/`.

Examples (the ablations of docs/results.md, 20 epochs each):

    python tools/ablation.py --epochs 20 --eval-samples 1000 --num-samples 5 -- \
        --architecture gated --hidden-units 300,300 --latent-dim 40 --batch-size 100 \
        --learning-rate 1e-3 --warmup-epochs 5 --steps-per-execution 4

    python tools/ablation.py --structures hierarchical iaf --priors vamp \
        --epochs 20 --eval-samples 1000 --num-samples 5 -- \
        --architecture gated --hidden-units 300,300 --latent-dim 40 --batch-size 100 \
        --learning-rate 1e-3 --warmup-epochs 5 --steps-per-execution 4

Options after `--` go to every tools/train.py run unchanged (they must not set
--latent-layers or --flow, which --structures chooses).
"""

import json
import os
import subprocess
import sys

TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [TOOLS, os.path.dirname(TOOLS)]
import _cli  # noqa: E402

PRIORS = _cli.config_module().PRIORS
OBJECTIVES = _cli.config_module().OBJECTIVES
RUNS = _cli.package_module("runs")
# Each latent structure as the tools/train.py options that make it.
STRUCTURES = {
    "single": [],
    "hierarchical": ["--latent-layers", "2"],
    "iaf": ["--flow", "iaf"],
}
_STRUCTURE_OPTIONS = ("--latent-layers", "--flow")


def parse_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = []
    if "--" in argv:
        passthrough = argv[argv.index("--") + 1:]
        argv = argv[: argv.index("--")]
    parser = _cli.parser(__doc__)
    parser.add_argument("--prefix", default="ablation", help="name prefix of the runs and the table's directory")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of every run")
    parser.add_argument("--num-samples", type=int, default=5, help="k of the iwae runs")
    parser.add_argument("--prior-components", type=int, default=500, help="K of the mixture and vamp priors")
    parser.add_argument("--eval-samples", type=int, default=1000, help="importance samples of the validation NLL")
    parser.add_argument(
        "--structures", nargs="+", default=["single"], choices=list(STRUCTURES),
        help="latent structures to run: single (one Gaussian layer), hierarchical (--latent-layers 2), "
        "iaf (--flow iaf; --num-flows and --flow-hidden-units after -- are passed on)",
    )
    parser.add_argument("--priors", nargs="+", default=list(PRIORS), choices=PRIORS, help="priors to run")
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES, help="objectives to run")
    args = _cli.parse_args(parser, argv)
    _cli.check_integers(parser, args, positive=("epochs", "num_samples", "prior_components", "eval_samples"))
    for option in passthrough:
        if option.split("=")[0] in _STRUCTURE_OPTIONS:
            parser.error(
                f"Expected the latent structure from --structures, not from the options after --. "
                f"Received: {option} after --",
            )
    args.passthrough = passthrough
    return args


def _row(name, structure, prior, objective, run):
    report = run.evaluation()
    if report is None:
        raise RuntimeError(f"Expected {run.files['evaluation']} after the run {name} finished. Received: no readable file")
    validation = report["splits"]["validation"]
    return {
        "run": name,
        "structure": structure,
        "prior": prior,
        "objective": objective,
        "epochs": report["epochs_run"],
        "train_minutes": round(report["train_seconds"] / 60, 1),
        "val_elbo": round(validation["elbo"], 2),
        "val_nll": round(validation["nll"], 2),
        "k": validation["num_samples"],
        "active_units": validation["active_units"],
    }


def format_markdown(rows):
    header = "| latent structure | prior | objective | epochs | training (min) | val ELBO | val NLL (k) | active units |"
    lines = [header, "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(
            f"| {r['structure']} | {r['prior']} | {r['objective']} | {r['epochs']} | {r['train_minutes']} | "
            f"{r['val_elbo']} | {r['val_nll']} ({r['k']}) | {r['active_units']} |"
        )
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    rows = []
    combinations = [(s, p, o) for s in args.structures for p in args.priors for o in args.objectives]
    for structure, prior, objective in combinations:
        # Single-layer runs keep the names they had before --structures existed,
        # so an earlier ablation's finished runs are reused.
        parts = [args.prefix] + ([] if structure == "single" else [structure]) + [prior, objective]
        name = "_".join(parts)
        command = [
            sys.executable, os.path.join(TOOLS, "train.py"),
            "--name", name, "--prior", prior, "--objective", objective,
            "--num-samples", str(args.num_samples if objective == "iwae" else 1),
            "--prior-components", str(args.prior_components),
            "--epochs", str(args.epochs), "--eval-samples", str(args.eval_samples),
            "--eval-split", "validation", "--export-dir", "", "--no-plots", "--verbose", "2",
        ] + STRUCTURES[structure] + args.passthrough  # fmt: skip
        print(f"== {name} ({len(rows) + 1} of {len(combinations)}): {' '.join(command[2:])}", flush=True)
        subprocess.run(command, check=True)
        rows.append(_row(name, structure, prior, objective, RUNS.RunDirectory(os.path.join("runs", name))))
    out_dir = os.path.join("runs", args.prefix)
    os.makedirs(out_dir, exist_ok=True)
    table = format_markdown(rows)
    with open(os.path.join(out_dir, "ablation.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(out_dir, "ablation.json"), "w") as f:
        json.dump(rows, f, indent=2)
    print(table)
    return rows


if __name__ == "__main__":
    _cli.run(main)
