#!/usr/bin/env python
"""Evaluation throughput: importance-sampled log p(x), k = 5000, binarized MNIST.

Calls `keras_vae.evaluation.importance_sampled_log_likelihood(model, x,
num_samples=k)` on every batch of the binarized MNIST validation split (10,000
images), as a user does, and prints:

* wall time of the whole loop (batches are read into memory first; the loop
  includes everything the function does, its tracing included), extrapolated
  linearly to 10,000 images when --images is smaller (and labelled so);
* importance samples per second (images x k / wall time);
* the decoder FLOP rate achieved: images x k x 2 x 540,672 FLOPs (the decoder
  products 32x256 + 256x512 + 512x784 per sample) / wall time. The encoder is
  not counted: it runs once per image, not per sample (< 0.01% of the FLOPs);
* the ceiling: the same three decoder products alone (no biases,
  activations, likelihood or sampling), on a [chunk x batch, 32] input, the
  chunk being the number of samples the function processes at once
  (max_elements // (batch x 784), as its docstring defines it), in a
  tf.function with XLA and without; the faster one is the ceiling. Measured
  before and after the evaluation, median of all calls;
* the ratio of the two rates, and the peak resident memory: ru_maxrss of the
  process, and the peak of /proc/self/status VmRSS sampled every 20 ms during
  the evaluation.

The model is a freshly initialised keras_vae.VAE with the benchmark's MLP
(timing does not depend on the weights), or --model PATH.keras.

Example (from the repo root):

    python benchmarks/eval_throughput.py
    python benchmarks/eval_throughput.py --images 200 --samples 5000
"""

import math
import os
import resource
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import _common  # noqa: E402  (puts the repo root on sys.path)

VALIDATION_IMAGES = 10000
GIB = 2**30


def parse_args(argv=None):
    parser = _common.argument_parser(__doc__)
    parser.add_argument("--model", default=None, help="a .keras file (default: a fresh model)")
    parser.add_argument("--samples", type=int, default=5000, help="importance samples k (default 5000)")
    parser.add_argument("--images", type=int, default=VALIDATION_IMAGES, help="first N validation images (default all 10,000); times are extrapolated to 10,000")
    parser.add_argument("--batch-size", type=int, default=100, help="images per call (default 100, as tools/evaluate.py)")
    parser.add_argument("--max-elements", type=int, default=None, help="the function's max_elements (default: its default); sets the chunk of samples")
    parser.add_argument("--ceiling-calls", type=int, default=5, help="timed calls of each ceiling variant, before and after (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("samples", "images", "batch_size", "ceiling_calls"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


class PeakRSS:
    """Samples VmRSS of /proc/self/status in a thread; `peak` in bytes."""

    def __init__(self, interval=0.02):
        self.interval = interval
        self.peak = self.read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    @staticmethod
    def read():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _poll(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.read())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.read())


def build_model(path, seed=0):
    """The model to evaluate: loaded from `path`, or fresh with the benchmark
    MLP, initialised from `seed`."""
    import keras

    import keras_vae
    from keras_vae.layers import BernoulliDecoder
    from keras_vae.layers import GaussianEncoder

    if path:
        return keras.models.load_model(path)
    keras.utils.set_random_seed(seed)
    return keras_vae.VAE(
        GaussianEncoder(_common.LATENT_DIM, hidden_units=_common.ENCODER_UNITS),
        BernoulliDecoder(_common.IMAGE_SHAPE, hidden_units=_common.DECODER_UNITS),
        seed=0,
        input_shape=(None,) + _common.IMAGE_SHAPE,
    )


def decoder_ceiling(rows, jit_compile):
    """`run()`: the decoder's three products on a [rows, 32] input, one call."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    z = tf.constant(rng.normal(size=(rows, _common.LATENT_DIM)).astype("float32"))
    weights = [
        tf.constant((rng.uniform(-1, 1, size=s) * np.sqrt(6 / sum(s))).astype("float32"))
        for s in _common.DECODER_MATMULS
    ]

    @tf.function(jit_compile=jit_compile)
    def products():
        h = z
        for w in weights:
            h = h @ w
        return tf.reduce_sum(h)

    return lambda: float(products())


def time_ceilings(ceilings, calls, seconds):
    """Alternates the ceiling variants `calls` times, appending to `seconds`."""
    for _ in range(calls):
        for name, run in ceilings.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)


def main(argv=None):
    args = parse_args(argv)
    for line in _common.environment_lines():
        print(line)
    import numpy as np

    from keras_vae import data
    from keras_vae import evaluation

    model = build_model(args.model, args.seed)
    batches = list(
        data.load(
            "binarized_mnist",
            "validation",
            batch_size=args.batch_size,
            shuffle=False,
            data_dir=args.data_dir,
            take=args.images,
        )
    )
    images = sum(int(b.shape[0]) for b in batches)
    max_elements = args.max_elements or evaluation.DEFAULT_MAX_ELEMENTS
    chunk = max(1, min(args.samples, max_elements // (args.batch_size * _common.EVENT_SIZE)))
    rows = chunk * args.batch_size
    print(
        f"model: {args.model or 'fresh keras_vae.VAE, MLP 784-512-256-32 / 32-256-512-784'}; "
        f"data: binarized_mnist validation, {images} images in batches of {args.batch_size}; "
        f"k = {args.samples}; max_elements = {max_elements:,} -> chunks of {chunk} samples "
        f"({rows:,} decoder rows), {math.ceil(args.samples / chunk)} chunks per batch",
        flush=True,
    )

    ceilings = {
        "XLA": decoder_ceiling(rows, jit_compile=True),
        "no XLA": decoder_ceiling(rows, jit_compile=False),
    }
    for run in ceilings.values():
        run()  # compile
    ceiling_seconds = {name: [] for name in ceilings}
    time_ceilings(ceilings, args.ceiling_calls, ceiling_seconds)

    per_batch = []
    log_px = []
    rss_before = PeakRSS.read()
    with PeakRSS() as rss:
        start = time.perf_counter()
        for batch in batches:
            batch_start = time.perf_counter()
            log_px.append(
                evaluation.importance_sampled_log_likelihood(
                    model,
                    batch,
                    num_samples=args.samples,
                    seed=args.seed,
                    max_elements=max_elements,
                ).numpy()
            )
            per_batch.append(time.perf_counter() - batch_start)
            if len(per_batch) % 10 == 0 and len(per_batch) < len(batches):
                elapsed = time.perf_counter() - start
                print(
                    f"batch {len(per_batch)}/{len(batches)}: {elapsed:.0f} s, projected "
                    f"{elapsed * len(batches) / len(per_batch):.0f} s",
                    flush=True,
                )
        wall = time.perf_counter() - start
    time_ceilings(ceilings, args.ceiling_calls, ceiling_seconds)

    samples = images * args.samples
    flops_per_sample = 2 * _common.DECODER_MACS
    achieved = samples * flops_per_sample / wall
    ceiling_rates = {
        name: rows * flops_per_sample / statistics.median(s)
        for name, s in ceiling_seconds.items()
    }
    ceiling_name = max(ceiling_rates, key=ceiling_rates.get)
    ceiling = ceiling_rates[ceiling_name]
    wall_10k = wall * VALIDATION_IMAGES / images

    lines = [
        ("images x importance samples", f"{images:,} x {args.samples:,} = {samples:,}"),
        ("mean log p(x) (nats)", f"{float(np.mean(np.concatenate(log_px))):.2f}"),
        ("wall time", f"{wall:.1f} s ({wall / 60:.1f} min)"),
    ]
    if images != VALIDATION_IMAGES:
        lines.append(
            (
                f"wall time EXTRAPOLATED to {VALIDATION_IMAGES:,} images",
                f"{wall_10k:.0f} s ({wall_10k / 60:.1f} min), linear in images",
            )
        )
    lines += [
        (
            "seconds per batch (median, first, max)",
            f"{statistics.median(per_batch):.2f}, {per_batch[0]:.2f}, {max(per_batch):.2f}",
        ),
        ("importance samples/s", f"{samples / wall:,.0f}"),
        ("decoder GFLOP/s achieved (encoder not counted)", f"{achieved / 1e9:.1f}"),
        (
            f"ceiling GFLOP/s, decoder products on [{rows:,}, 32]",
            ", ".join(f"{n}: {r / 1e9:.1f}" for n, r in ceiling_rates.items())
            + f" -> ceiling = {ceiling_name}",
        ),
        ("achieved / ceiling", f"{achieved / ceiling:.2f}"),
        (
            "peak RSS: ru_maxrss (process)",
            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB:.2f} GiB",
        ),
        (
            "VmRSS before / peak during the evaluation",
            f"{rss_before / GIB:.2f} / {rss.peak / GIB:.2f} GiB",
        ),
    ]
    print()
    print(
        _common.format_table(
            ["importance_sampled_log_likelihood", "value"],
            [list(line) for line in lines],
            align_right=False,
        )
    )
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\nload average at the end (1, 5, 15 min): {load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
