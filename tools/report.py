#!/usr/bin/env python
"""Write the plots and the HTML report of a training run (again).

Example:

    python tools/report.py runs/quickstart_vae

Reads a run directory written by tools/train.py (config.json, best.keras or
the newest training backup, history.csv, evaluation.json, status.json),
writes plots/*.png from its model and the first --images images of its
validation split, then report.html: one self-contained page (configuration,
training status and time, evaluation table, export, plots embedded, per-epoch
history) that opens offline. With --no-plots only report.html is written,
from the plots already there. Works on any run, e.g. each run of a sweep or
a run trained with --no-plots.
"""

import os
import sys

TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [TOOLS, os.path.dirname(TOOLS)]  # tools/_cli.py; this checkout's keras_vae
import _cli  # noqa: E402


def parse_args(argv=None):
    parser = _cli.parser(__doc__)
    parser.add_argument("run_dir", help="the run directory (runs/<name>)")
    parser.add_argument(
        "--no-plots", action="store_true", help="only write report.html, from the plots already in <run_dir>/plots"
    )
    parser.add_argument(
        "--images",
        type=int,
        default=2000,
        help="validation images for the reconstructions, latent space, traversals and interpolations",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="TFDS data directory (default: the run's, else $TFDS_DATA_DIR, else ~/tensorflow_datasets)",
    )
    parser.add_argument("--output", default=None, help="the HTML file (default: <run_dir>/report.html)")
    args = _cli.parse_args(parser, argv)
    _cli.check_integers(parser, args, positive=("images",))
    return args


def main(argv=None):
    args = parse_args(argv)
    from keras_vae import report

    if not args.no_plots:
        written = report.write_plots(args.run_dir, num_images=args.images, data_dir=args.data_dir)
        print("Plots: " + ", ".join(written))
    path = report.write_report(args.run_dir, path=args.output)
    print(f"Report: {path}")
    return path


if __name__ == "__main__":
    _cli.run(main)
