#!/usr/bin/env python
"""Export a trained VAE as a versioned SavedModel for TF Serving.

MODEL is a .keras file or a training run directory (its best.keras, or its
last backup checkpoint). Writes BASE_DIR/<version>/ atomically and prints it.

Example:

    python tools/export.py runs/binarized_mnist_vae/best.keras \\
        --base-dir saved_models/binarized_mnist_vae
"""

import os
import sys

TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [TOOLS, os.path.dirname(TOOLS)]  # tools/_cli.py; this checkout's keras_vae
import _cli  # noqa: E402


def parse_args(argv=None):
    parser = _cli.parser(__doc__)
    parser.add_argument("model", help=".keras file or training run directory")
    parser.add_argument("--base-dir", required=True, help="the model's directory, e.g. saved_models/binarized_mnist_vae")
    parser.add_argument("--version", type=int, default=None, help="integer version (default: next after the highest present)")
    args = _cli.parse_args(parser, argv)
    _cli.check_integers(parser, args, positive=("version",))
    return args


def main(argv=None):
    args = parse_args(argv)
    from keras_vae import export
    from keras_vae import training

    model = training.load_model_or_run(args.model)
    path = export.export_for_serving(model, args.base_dir, version=args.version)
    print(f"Exported {args.model} to {path} with signatures: {', '.join(export.SIGNATURES)}")
    return path


if __name__ == "__main__":
    _cli.run(main)
