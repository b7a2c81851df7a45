#!/usr/bin/env python
"""One XLA program per execution (`compile(fuse_steps=...)`) against Keras's loop.

`vae.fit` runs `steps_per_execution` = N steps per call of its training
function. Keras's loop calls the step N times, each step its own XLA call
under `jit_compile=True` (every variable passed in and out of every step);
keras_vae's fused execution (`keras_vae.models._fused`, the default wherever
`jit_compile` is on) takes the N batches first and runs N `train_step`
calls as one XLA program. This script times, on the benchmark MLP and
binarized MNIST's training images held in memory, alternating rounds:

* fit, no XLA: Keras's loop of steps with oneDNN's kernels
  (`jit_compile=False`; what `compile()` picks on AVX-512 CPUs);
* fit, XLA per step: Keras's loop, each step compiled by XLA
  (`jit_compile=True, fuse_steps=False`; what `compile()` picked on AVX2
  CPUs before the fusion);
* fit, fused: `jit_compile=True` with the fusion (`compile()`'s default on
  AVX2 CPUs now; `fuse_steps=True` elsewhere);
* a prototype without `fit`: the N batches taken by one tf.function of N
  `get_next` calls (in a graph, outside XLA) instead of one by one in
  Python, then the same one XLA program: what taking the batches in Python
  (which the feature does, to train the batches before a refused one) costs.

Every contender starts from the same initial weights and runs the same
number of steps per round; the table gives examples/s (median of the rounds,
and the best round) and the last loss (the XLA rows draw the same random
numbers as each other, other ones than the oneDNN row).

Example:

    python benchmarks/fused_execution.py --steps 384 --rounds 5
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import _common  # noqa: E402  (puts the repo root on sys.path)


def parse_args(argv=None):
    parser = _common.argument_parser(__doc__)
    parser.add_argument("--steps", type=int, default=384, help="training steps per round (a multiple of --steps-per-execution)")
    parser.add_argument("--steps-per-execution", type=int, default=32, help="N, steps per compiled call (default 32, as compile's 'auto')")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per contender (default 3)")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)
    if args.steps % args.steps_per_execution:
        parser.error("--steps must be a multiple of --steps-per-execution")
    return args


def make_vae(seed=0):
    import keras

    import keras_vae
    from keras_vae.layers import BernoulliDecoder
    from keras_vae.layers import GaussianEncoder

    keras.utils.set_random_seed(seed)
    return keras_vae.VAE(
        GaussianEncoder(_common.LATENT_DIM, hidden_units=_common.ENCODER_UNITS),
        BernoulliDecoder(_common.IMAGE_SHAPE, hidden_units=_common.DECODER_UNITS),
        seed=seed,
        input_shape=(None,) + _common.IMAGE_SHAPE,
    )


def dataset(x, args):
    """The images as a repeated `tf.data` pipeline of batches (in memory)."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(x).batch(args.batch_size, drop_remainder=True).repeat()


BASELINE = "fit, no XLA (oneDNN)"


def fit_contender(x, args, **compile_kwargs):
    """`run()` -> (seconds, loss) of `args.steps` steps of `vae.fit` on a
    tf.data pipeline (with the model's input check mapped over it, as `fit`
    adds it)."""
    vae = make_vae()
    vae.compile(**compile_kwargs)
    data = dataset(x, args)
    vae.fit(data, steps_per_epoch=4 * args.steps_per_execution, epochs=1, verbose=0)

    def run():
        start = time.perf_counter()
        history = vae.fit(data, steps_per_epoch=args.steps, epochs=1, verbose=0)
        return time.perf_counter() - start, history.history["loss"][-1]

    return run


def fused_contender(x, args):
    """`run()` -> (seconds, loss): the prototype, outside `fit`: the N batches
    taken by one tf.function (N `get_next` calls in a graph) and stacked
    there, then N `train_step` calls as one XLA program."""
    import tensorflow as tf

    vae = make_vae()
    vae.compile(jit_compile=False, fuse_steps=False)
    vae.optimizer.build(vae.trainable_variables)
    n = args.steps_per_execution

    @tf.function(jit_compile=True)
    def execution(stacked):
        def body(i, loss):
            logs = vae.train_step(stacked[i])
            return i + 1, tf.cast(logs["loss"], tf.float32)

        return tf.while_loop(lambda i, _: i < n, body, (tf.constant(0), tf.constant(0.0)))[1]

    # The same pipeline and input check as fit's; N get_next calls outside
    # XLA (get_next cannot be compiled), stacked, then the one XLA program.
    iterator = iter(dataset(x, args).map(vae.check_batch).prefetch(tf.data.AUTOTUNE))

    @tf.function
    def gather():
        return tf.stack([iterator.get_next() for _ in range(n)])

    def calls(count):
        loss = None
        for _ in range(count):
            loss = execution(gather())
        return float(loss)

    calls(4)  # compile and warm up

    def run():
        for metric in vae.metrics:
            metric.reset_state()
        start = time.perf_counter()
        loss = calls(args.steps // n)
        return time.perf_counter() - start, loss

    return run


def main(argv=None):
    args = parse_args(argv)
    for line in _common.environment_lines():
        print(line)
    import numpy as np

    from keras_vae import data

    batches = data.load("binarized_mnist", "train", batch_size=10000, shuffle=False, data_dir=args.data_dir)
    x = np.concatenate([np.asarray(b, np.float32) for b in batches])
    print(f"data: {len(x)} training images in memory; {args.steps} steps of {args.batch_size} per round, "
          f"N = {args.steps_per_execution} steps per execution, {args.rounds} rounds", flush=True)
    contenders = {
        BASELINE: fit_contender(x, args, jit_compile=False),
        "fit, XLA per step": fit_contender(x, args, jit_compile=True, fuse_steps=False),
        "fit, fused (one XLA program per execution)": fit_contender(x, args, jit_compile=True, fuse_steps=True),
        "prototype: batches taken in a graph, one XLA program": fused_contender(x, args),
    }
    results = {name: [] for name in contenders}
    for r in range(args.rounds):
        for name, run in contenders.items():
            results[name].append(run())
        print(f"round {r + 1}: " + ", ".join(f"{n} {results[n][-1][0]:.2f} s" for n in contenders), flush=True)
    examples = args.steps * args.batch_size
    baseline = statistics.median(s for s, _ in results[BASELINE])
    rows = []
    for name, timings in results.items():
        seconds = statistics.median(s for s, _ in timings)
        best = min(s for s, _ in timings)
        rows.append([
            name, f"{examples / seconds:,.0f}", f"{examples / best:,.0f}",
            f"{baseline / seconds:.2f}", f"{timings[-1][1]:.2f}",
        ])  # fmt: skip
    print()
    print(_common.format_table(
        ["contender", "examples/s", "best round", "x no XLA", "last loss"], rows, left_columns=(0,)
    ))  # fmt: skip


if __name__ == "__main__":
    main()
