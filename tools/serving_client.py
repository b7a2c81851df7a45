#!/usr/bin/env python
"""Query a keras_vae model served by TensorFlow Serving (REST or gRPC).

Sends one request to a signature of the served model and prints each output's
shape, dtype and first values. Inputs, shaped as the signature's metadata
declares: images x (a few validation images of binarized_mnist from TFDS with
--images tfds, else random binary images), codes z and noise ~ N(0, I),
uniforms in [0, 1) for a mixture prior's `sample`; --num images for `sample`
and --num importance samples per image for `log_likelihood`. --event-shape /
--latent-dim override the metadata's shapes.

Examples (server started as in saved_models/README.md):

    python tools/serving_client.py --rest localhost:8501 --signature encode
    python tools/serving_client.py --grpc localhost:8500 --signature sample --num 4
    python tools/serving_client.py --rest localhost:8501 --signature log_likelihood \\
        --num 100 --images tfds --data-dir ../shared/tensorflow_datasets
"""

import argparse
import os
import sys

TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [TOOLS, os.path.dirname(TOOLS)]  # tools/_cli.py; this checkout's keras_vae
import _cli  # noqa: E402

SIGNATURES = _cli.package_module("serving").SIGNATURES
Z_SIGNATURES = ("decode", "prior_log_prob")


def _host_port(text):
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _shape(text):
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None
    if not shape or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive dimensions, got {text!r}")
    return shape


def parse_args(argv=None):
    parser = _cli.parser(__doc__)
    server = parser.add_mutually_exclusive_group(required=True)
    server.add_argument("--rest", type=_host_port, metavar="HOST:PORT", help="REST API (e.g. localhost:8501; --rest or --grpc is required)")
    server.add_argument("--grpc", type=_host_port, metavar="HOST:PORT", help="gRPC API (e.g. localhost:8500; --rest or --grpc is required)")
    parser.add_argument("--model", default="binarized_mnist_vae", help="served model name")
    parser.add_argument("--version", type=int, default=None, help="model version (default: latest served)")
    parser.add_argument("--signature", default="serving_default", choices=SIGNATURES, help="the served signature to call")
    parser.add_argument("--batch", type=int, default=3, help="number of images or codes sent")
    parser.add_argument("--num", type=int, default=4, help="images drawn by --signature sample; importance samples per image for log_likelihood")
    parser.add_argument("--images", choices=("random", "tfds"), default="random", help="x inputs: random binary images or TFDS validation images")
    parser.add_argument("--dataset", default="binarized_mnist", help="TFDS dataset for --images tfds")
    parser.add_argument("--split", default="validation", help="TFDS split for --images tfds")
    parser.add_argument("--data-dir", default=None, help="TFDS data dir (default: $TFDS_DATA_DIR)")
    parser.add_argument("--event-shape", type=_shape, default=None, help="shape of one image, e.g. 28,28,1 (default: from metadata)")
    parser.add_argument("--latent-dim", type=int, default=None, help="latent dimension (default: from metadata)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument("--timeout", type=float, default=10.0, help="request timeout in seconds")
    parser.add_argument("--values", type=int, default=5, help="how many first values to print per output")
    args = _cli.parse_args(parser, argv)
    _cli.check_integers(parser, args, positive=("batch", "latent_dim"), non_negative=("num", "values"))
    if not args.timeout > 0:
        parser.error(f"Expected --timeout to be a number of seconds > 0. Received: --timeout={args.timeout}")
    return args


def _metadata(args):
    from keras_vae import serving

    if args.rest:
        return serving.rest_metadata(*args.rest, args.model, args.version, args.timeout)
    return serving.grpc_metadata(f"{args.grpc[0]}:{args.grpc[1]}", args.model, args.version, args.timeout)


def _images(args, event_shape, rng):
    if args.images == "tfds":
        from keras_vae import data

        ds = data.load(args.dataset, args.split, batch_size=args.batch, shuffle=False, data_dir=args.data_dir, take=args.batch)
        return next(iter(ds)).numpy().astype("float32")
    return (rng.random((args.batch,) + tuple(event_shape)) < 0.5).astype("float32")


def make_inputs(args, metadata=None):
    """The request's inputs for `args.signature` (a dict of NumPy arrays),
    shaped as the served signature declares (its metadata): `x` images,
    `z` and `noise` standard normal, `uniform` in [0, 1); `sample` draws
    `--num` images, `log_likelihood` `--num` importance samples per image."""
    import numpy as np

    rng = np.random.default_rng(args.seed)
    if args.signature == "serving_default" and args.event_shape is not None and args.images == "random":
        return {"x": _images(args, args.event_shape, rng)}
    if metadata is None:
        metadata = _metadata(args)
    specs = metadata[args.signature]["inputs"]
    rows = args.num if args.signature == "sample" else args.batch
    inputs = {}
    for name in sorted(specs, key=lambda n: n != "x"):
        shape = specs[name]["shape"]
        if name == "num":  # `sample` of an export written before keras_vae 0.3
            inputs[name] = np.int32(args.num)
        elif name == "x":
            inputs[name] = _images(args, args.event_shape or tuple(shape[1:]), rng)
        elif name == "uniform":
            inputs[name] = rng.random(rows).astype("float32")
        else:  # z or noise: [B, D], or [B, k, D] for log_likelihood
            width = args.latent_dim if args.latent_dim is not None and name == "z" and args.signature in Z_SIGNATURES else shape[-1]
            middle = (args.num,) if len(shape) == 3 else ()
            batch = inputs["x"].shape[0] if "x" in inputs else rows
            inputs[name] = rng.standard_normal((batch,) + middle + (width,)).astype("float32")
    return inputs


def format_outputs(outputs, values=5):
    """One line per output: name, shape, dtype and the first values."""
    import numpy as np

    lines = []
    for name in sorted(outputs):
        array = np.asarray(outputs[name])
        first = np.array2string(array.reshape(-1)[:values], precision=4, separator=", ")
        lines.append(f"{name}: shape={array.shape} dtype={array.dtype} first values={first}")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    from keras_vae import serving

    inputs = make_inputs(args)
    if args.rest:
        host, port = args.rest
        where = f"REST {host}:{port}"
        outputs = serving.rest_predict(host, port, args.model, args.signature, inputs, version=args.version, timeout=args.timeout)
    else:
        target = f"{args.grpc[0]}:{args.grpc[1]}"
        where = f"gRPC {target}"
        outputs = serving.grpc_predict(target, args.model, args.signature, inputs, version=args.version, timeout=args.timeout)
    sent = ", ".join(f"{k}{tuple(v.shape)}" for k, v in inputs.items())
    version = f" version {args.version}" if args.version is not None else ""
    print(f"{args.model}{version} / {args.signature} via {where}, inputs {sent}:")
    print(format_outputs(outputs, args.values))
    return outputs


if __name__ == "__main__":
    _cli.run(main)
