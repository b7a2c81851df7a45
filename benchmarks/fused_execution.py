#!/usr/bin/env python
"""Would one compiled program per execution train faster? A measurement, not a feature.

The design of the speed issue: gather the N batches of one execution first
(outside XLA), then run all N training steps in one jit-compiled function, a
`tf.while_loop` over the stacked batches with the optimizer's update inside,
so that the variables are read and written once per call. This script times
that loop, written by hand around `keras_vae.VAE.train_step`, against
`vae.fit` with `vae.compile()`'s defaults (and with `jit_compile=True`), on
the benchmark MLP and binarized MNIST's training images held in memory:

* fit, compile defaults: Keras's multi-step loop, `steps_per_execution`
  N, oneDNN or XLA as "auto" decides for this CPU;
* fit, jit_compile=True: the same loop, each step compiled by XLA;
* one XLA program per execution: `tf.function(jit_compile=True)` over a
  `tf.while_loop` of N `train_step` calls on a `[N, batch, 28, 28, 1]`
  tensor, the N batches taken from the same pipeline (with the model's
  input check mapped over it) by N `get_next` calls in a graph outside XLA
  and stacked: timed too;
* the same, the N batches taken one by one in Python (`next(iterator)`)
  and stacked by one eager op: what keeping the refused-batch semantics
  would cost.

Not measured here: what the real feature must also keep (metrics and
callbacks per execution, a refused batch never trained on while the ones
before it are, exact resume, a last partial batch); the prototype only
shows whether the design is worth building on this CPU.

Every contender starts from the same initial weights and runs the same
number of steps per round; the table gives examples/s (median of the
rounds) and the last loss (same data, same seed: the loss should agree to
float32 noise between the fit rows; the XLA loop draws other random
numbers, see `keras_vae.models.training_policy`).

Example:

    python benchmarks/fused_execution.py --steps 390 --rounds 3
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


def fused_contender(x, args, gather_in="graph"):
    """`run()` -> (seconds, loss): one XLA program per execution.

    `gather_in="graph"`: the N batches taken by one tf.function (N
    `get_next` calls in a graph) and stacked there; "python": taken one by
    one with `next(iterator)` in Python and stacked by one eager op, the way
    a feature can stop at a refused batch and still train the batches of the
    same execution before it (a graph that fails loses what it took)."""
    import tensorflow as tf

    vae = make_vae()
    vae.compile(jit_compile=False)
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

    if gather_in == "graph":

        @tf.function
        def gather():
            return tf.stack([iterator.get_next() for _ in range(n)])

    else:

        def gather():
            return tf.stack([next(iterator) for _ in range(n)])

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
        "fit, compile() defaults": fit_contender(x, args),
        "fit, jit_compile=True": fit_contender(x, args, jit_compile=True),
        "one XLA program per execution": fused_contender(x, args),
        "one XLA program, batches taken in Python": fused_contender(x, args, gather_in="python"),
    }
    results = {name: [] for name in contenders}
    for r in range(args.rounds):
        for name, run in contenders.items():
            results[name].append(run())
        print(f"round {r + 1}: " + ", ".join(f"{n} {results[n][-1][0]:.2f} s" for n in contenders), flush=True)
    examples = args.steps * args.batch_size
    baseline = statistics.median(s for s, _ in results["fit, compile() defaults"])
    rows = []
    for name, timings in results.items():
        seconds = statistics.median(s for s, _ in timings)
        rows.append([name, f"{examples / seconds:,.0f}", f"{baseline / seconds:.2f}", f"{timings[-1][1]:.2f}"])
    print()
    print(_common.format_table(["contender", "examples/s", "x defaults", "last loss"], rows, left_columns=(0,)))


if __name__ == "__main__":
    main()
