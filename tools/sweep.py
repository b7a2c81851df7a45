#!/usr/bin/env python
r"""A beta sweep: one short training run per KL weight, in the rate-distortion plane.

Trains one VAE per beta (the same seed, data, architecture and budget; only
beta differs), evaluates each on the validation split: rate = KL(q(z|x) ||
p(z)) and distortion = -E_q[log p(x|z)] in nats, the ELBO = -(rate +
distortion), and with --eval-samples k > 1 the IWAE bound on the NLL. Writes
to runs/<name>/ (or --output-dir):

    beta_<b>/              each beta's run (as tools/train.py writes it)
    sweep.json, sweep.csv  the table: beta, rate, distortion, elbo, nll, ...
    rate_distortion.png    distortion against rate, a point per beta, over
                           lines of constant ELBO (Alemi et al. 2018)
    samples_per_beta.png   samples from the prior, one row per beta

Example (the sweep of docs/looking_inside.md: the default betas
0.1,0.25,0.5,1,2,4, one epoch each on the 50,000 training images; about 2
minutes on 2 CPU cores):

    python tools/sweep.py --name beta_sweep

Then with a larger --epochs (the next command of docs/looking_inside.md),
the same command continues every run (and adds the NLL, an IWAE bound with
100 samples, to the table):

    python tools/sweep.py --name beta_sweep --epochs 3 --eval-samples 100

A quicker one (4 betas, one epoch on 10,000 training images; under a minute):

    python tools/sweep.py --betas 0.25,0.5,1,2 --take 10000 --name quick_sweep

Run the same command again to continue: finished runs are not trained again
and their evaluations are read back; --fresh starts every run over. The
training options are those of tools/train.py (without --beta, which the
sweep sets for each run); a KL warm-up (--warmup-epochs) ramps to each run's
beta.
"""

import os
import sys

TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [TOOLS, os.path.dirname(TOOLS)]  # tools/_cli.py; this checkout's keras_vae
import _cli  # noqa: E402

# Set by the sweep for each run: no option.
SWEEP_FIELDS = ("beta", "output_dir")


def parse_args(argv=None):
    """The parsed options; the betas and the `TrainConfig` ones are checked
    (one line `error: ...`, exit status 1), before TensorFlow is imported."""
    config = _cli.config_module()
    sweep = _cli.package_module("sweep")
    parser = _cli.parser(__doc__)
    parser.add_argument(
        "--betas",
        default=",".join(f"{b:g}" for b in sweep.DEFAULT_BETAS),
        help="the KL weights, comma-separated numbers >= 0; one run each",
    )
    parser.add_argument(
        "--name",
        default=None,
        help="name of the sweep: its directory is runs/<name> (default: <dataset>_beta_sweep)",
    )
    parser.add_argument(
        "--output-dir",
        default=None,
        help="directory of the sweep: the runs beta_<b>/, the table and the plots "
        "(default: runs/<name>)",
    )
    parser.add_argument(
        "--eval-samples",
        type=int,
        default=1,
        help="samples of z per validation example: the distortion is their mean; with k > 1 "
        "the table also has the NLL (IWAE bound with k samples, e.g. 100)",
    )
    parser.add_argument("--eval-split", default="validation", help="the split to evaluate on")
    parser.add_argument(
        "--num-images",
        type=int,
        default=sweep.DEFAULT_NUM_IMAGES,
        help="samples from the prior per beta in samples_per_beta.png (drawn with --seed)",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="start every run over (deletes each run's backup, history, models, status and evaluation)",
    )
    fields = _cli.add_dataclass_arguments(
        parser.add_argument_group("each run's training (as tools/train.py; saved as beta_<b>/config.json)"),
        config.TrainConfig,
        skip=SWEEP_FIELDS,
        defaults={"epochs": sweep.DEFAULT_EPOCHS},
    )
    args = _cli.parse_args(parser, argv)
    try:
        args.betas = sweep.parse_betas(args.betas)
    except ValueError as e:
        parser.error(str(e))
    args.name = args.name or sweep.default_name(args.dataset)
    args.output_dir = args.output_dir or os.path.join("runs", args.name)
    _cli.check_integers(parser, args, positive=("eval_samples", "num_images"))
    args.config = {name: getattr(args, name) for name in fields}
    _cli.check_dataclass(parser, config.TrainConfig, args.config)  # before TensorFlow is imported
    return args


def main(argv=None):
    args = parse_args(argv)
    from keras_vae import sweep
    from keras_vae import training

    rows = sweep.run_sweep(
        training.TrainConfig(**args.config),
        args.betas,
        args.output_dir,
        eval_samples=args.eval_samples,
        eval_split=args.eval_split,
        num_images=args.num_images,
        fresh=args.fresh,
    )
    print(sweep.format_table(rows))
    files = sweep.paths(args.output_dir)
    print("Wrote: " + ", ".join(files[k] for k in ("json", "csv", "rate_distortion", "samples")))
    return rows


if __name__ == "__main__":
    _cli.run(main)
