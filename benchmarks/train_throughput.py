#!/usr/bin/env python
"""Training throughput of keras_vae.VAE next to a keras.io-style peer and a ceiling.

On the binarized MNIST train split (loaded once into memory as float32 and fed
to every contender by the same tf.data pipeline: from_tensor_slices, batch,
cache, repeat, prefetch; no shuffling), measures training examples per second
after a warm-up for:

* keras_vae.VAE trained with `model.fit` as a user does it, with its
  defaults: `vae.compile()` (the optimizer is then
  `keras_vae.optimizers.FusedAdam(1e-3)`, Keras's Adam arithmetic in one
  fused kernel per variable) and nothing else.
* With --jit-compile and/or --steps-per-execution K, an extra keras_vae.VAE
  row compiled with those levers (model and optimizer built before `fit`,
  which jit_compile=True needs; note that XLA drops the model's
  tf.debugging.Assert input checks).
* The peer: the keras.io "Variational AutoEncoder" example with the same MLP
  (benchmarks/keras_io_vae.py), compiled the same way, trained with `fit`.
* The ceiling: only the dense matrix products of a training step, in one
  tf.function looping over the same batches, with XLA (jit_compile=True) and
  without; the faster of the two is the ceiling the ratios use. Per batch it
  computes the 7 forward products x @ W (784x512, 512x256, the two 256x32 heads
  as one 256x64 product, 32x256, 256x512, 512x784), the 7 weight-gradient
  products h^T @ g and the 6 input-gradient products g @ W^T that back-
  propagation needs (none for the first layer: no gradient w.r.t. the data).
  Besides the products it has only what chains them: z = loc + scale-head
  (a [B, 32] add), the output gradient logits - x ([B, 784]), a concat of the
  [B, 32] head gradients and a plain SGD update W -= 1e-6 * dW so that the
  next batch depends on this one as in training (1.09M multiply-adds, 0.3%
  of the FLOPs). No biases, activations, distributions, optimizer state,
  metrics or input pipeline.

A fit contender is timed from `on_train_begin` to `on_train_end` (see
`fit_runner`), a ceiling around its call. Each round measures every contender
once (the order rotates between rounds), so that load from other processes
falls on all of them alike; the table gives the median over rounds, the best
round, and the CPU time of this process per step (all its threads; less
sensitive than wall time to other processes, and the better measure with
--threads 1 on a busy machine). GFLOP/s counts 2*m*n*k per product and
forward + backward = 3 x forward (1,089,536 multiply-adds per example
forward); the products a step really needs are 2.63 x forward (see above),
the same for every contender, so ratios do not depend on the convention.

Example (from the repo root):

    python benchmarks/train_throughput.py
    python benchmarks/train_throughput.py --jit-compile --steps-per-execution 10
    python benchmarks/train_throughput.py --quick
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
    parser.add_argument("--steps", type=int, default=400, help="timed steps per measurement (default 400, about one epoch)")
    parser.add_argument("--warmup-steps", type=int, default=50, help="untimed steps per contender before the rounds (default 50)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per contender; the table gives the median (default 3)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps-per-execution", type=int, default=1, help="lever: adds a keras_vae row compiled with this steps_per_execution")
    parser.add_argument("--jit-compile", action="store_true", help="lever: adds a keras_vae row compiled with jit_compile=True")
    parser.add_argument("--threads", type=int, default=0, help="TF intra- and inter-op threads (default 0: TF picks, one per core)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 6,400 examples, 20 steps, 5 warm-up steps, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup_steps, args.rounds = 20, 5, 1
    if args.threads < 0:
        parser.error("--threads must be >= 0")
    for name in ("steps", "warmup_steps", "rounds", "batch_size", "steps_per_execution"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.steps % args.steps_per_execution or args.warmup_steps % args.steps_per_execution:
        parser.error("--steps and --warmup-steps must be multiples of --steps-per-execution")
    return args


def load_images(data_dir, take=None):
    """The binarized MNIST train split as one float32 array [N, 28, 28, 1]."""
    import numpy as np

    from keras_vae import data

    ds = data.load(
        "binarized_mnist", "train", batch_size=10000, shuffle=False, data_dir=data_dir, take=take
    )
    return np.concatenate([batch.numpy() for batch in ds]).astype("float32")


def make_dataset(images, batch_size):
    """The pipeline every fit contender reads: cached in memory, repeated."""
    import tensorflow as tf

    return (
        tf.data.Dataset.from_tensor_slices(images)
        .batch(batch_size, drop_remainder=True)
        .cache()
        .repeat()
        .prefetch(tf.data.AUTOTUNE)
    )


def keras_vae_model(jit_compile="auto", steps_per_execution=1, built=False):
    """The keras_vae model of the benchmark, compiled as a user compiles it.

    `built=True` builds the model at construction (`input_shape=`) and its
    optimizer after `compile`: with jit_compile=True, variables left to be
    created in the first step fail ("We failed to lift variable creations out
    of this tf.function"), because `VAE.train_step` applies the gradients
    under `tf.control_dependencies` on its input checks.
    """
    import keras_vae
    from keras_vae.layers import BernoulliDecoder
    from keras_vae.layers import GaussianEncoder

    vae = keras_vae.VAE(
        GaussianEncoder(_common.LATENT_DIM, hidden_units=_common.ENCODER_UNITS),
        BernoulliDecoder(_common.IMAGE_SHAPE, hidden_units=_common.DECODER_UNITS),
        seed=0,
        input_shape=(None,) + _common.IMAGE_SHAPE if built else None,
    )
    options = {}
    if jit_compile != "auto":
        options["jit_compile"] = jit_compile
    if steps_per_execution != 1:
        options["steps_per_execution"] = steps_per_execution
    vae.compile(**options)  # its defaults: FusedAdam(1e-3)
    if built:
        vae.optimizer.build(vae.trainable_variables)
    return vae


def fit_runner(model, dataset):
    """`run(steps) -> (wall, CPU) seconds`: one `model.fit` call of `steps` batches.

    Timed by a callback from `on_train_begin` to `on_train_end`, not around
    the call: on this machine `fit` calls were seen to return up to 1.6 s
    after `on_train_end`, ending exactly 10.23 s or 20.47 s after they
    started whatever the model, which would quantize the measurements.
    """
    import keras

    marks = {}

    class Timer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            marks["begin"] = (time.perf_counter(), time.process_time())

        def on_train_end(self, logs=None):
            marks["end"] = (time.perf_counter(), time.process_time())

    timer = Timer()

    def run(steps):
        model.fit(
            dataset, steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0, callbacks=[timer]
        )
        return tuple(end - begin for begin, end in zip(marks["begin"], marks["end"]))

    return run


def ceiling_runner(images, batch_size, jit_compile):
    """`run(steps) -> (wall, CPU) seconds`: the products of `steps` steps, one call.

    See the module docstring for exactly what a step computes.
    """
    import numpy as np
    import tensorflow as tf

    num_batches = len(images) // batch_size
    x = tf.constant(
        images[: num_batches * batch_size].reshape(num_batches, batch_size, _common.EVENT_SIZE)
    )
    rng = np.random.default_rng(0)
    shapes = _common.ENCODER_MATMULS + _common.DECODER_MATMULS
    weights = [
        tf.constant((rng.uniform(-1, 1, size=s) * np.sqrt(6 / sum(s))).astype("float32"))
        for s in shapes
    ]
    latent = _common.LATENT_DIM
    learning_rate = 1e-6

    def step(ws, xb):
        w1, w2, w3, w4, w5, w6 = ws
        # Forward: 7 products (the two heads as one 256x64 product).
        h1 = xb @ w1
        h2 = h1 @ w2
        heads = h2 @ w3
        z = heads[:, :latent] + heads[:, latent:]
        d1 = z @ w4
        d2 = d1 @ w5
        logits = d2 @ w6
        # Backward: 7 weight-gradient and 6 input-gradient products.
        g = logits - xb
        gw6 = tf.matmul(d2, g, transpose_a=True)
        g = tf.matmul(g, w6, transpose_b=True)
        gw5 = tf.matmul(d1, g, transpose_a=True)
        g = tf.matmul(g, w5, transpose_b=True)
        gw4 = tf.matmul(z, g, transpose_a=True)
        g = tf.matmul(g, w4, transpose_b=True)
        g = tf.concat([g, g], axis=1)
        gw3 = tf.matmul(h2, g, transpose_a=True)
        g = tf.matmul(g, w3, transpose_b=True)
        gw2 = tf.matmul(h1, g, transpose_a=True)
        g = tf.matmul(g, w2, transpose_b=True)
        gw1 = tf.matmul(xb, g, transpose_a=True)
        grads = (gw1, gw2, gw3, gw4, gw5, gw6)
        return [w - learning_rate * dw for w, dw in zip(ws, grads)]

    @tf.function(jit_compile=jit_compile)
    def loop(steps):
        ws = weights
        for i in tf.range(steps):
            ws = step(ws, x[i % num_batches])
        return tf.add_n([tf.reduce_sum(w) for w in ws])

    def run(steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        checksum = float(loop(tf.constant(steps)))
        seconds = time.perf_counter() - start, time.process_time() - cpu_start
        if not np.isfinite(checksum):
            raise RuntimeError("The ceiling loop diverged (non-finite weights).")
        return seconds

    return run


def main(argv=None):
    args = parse_args(argv)
    import keras
    import keras_io_vae
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    for line in _common.environment_lines():
        print(line)

    keras.utils.set_random_seed(0)
    start = time.perf_counter()
    take = 50 * args.batch_size if args.quick else None
    images = load_images(args.data_dir, take=take)
    dataset = make_dataset(images, args.batch_size)
    print(
        f"data: binarized_mnist train, {len(images)} images as float32 in memory "
        f"(loaded in {time.perf_counter() - start:.1f} s), batch {args.batch_size}, "
        f"{args.warmup_steps} warm-up steps, {args.rounds} round(s) of {args.steps} "
        "timed steps per contender"
    )

    # (name in the table, short name in the progress lines, runner)
    contenders = [
        ("keras_vae.VAE, fit (compile defaults)", "vae", fit_runner(keras_vae_model(), dataset))
    ]
    if args.jit_compile or args.steps_per_execution != 1:
        levers = []
        if args.jit_compile:
            levers.append("jit_compile=True")
        if args.steps_per_execution != 1:
            levers.append(f"steps_per_execution={args.steps_per_execution}")
        model = keras_vae_model(
            jit_compile=True if args.jit_compile else "auto",
            steps_per_execution=args.steps_per_execution,
            built=True,
        )
        contenders.append(
            (f"keras_vae.VAE, fit ({', '.join(levers)})", "vae+levers", fit_runner(model, dataset))
        )
    peer_name = "keras.io peer, fit"
    contenders.append((peer_name, "peer", fit_runner(keras_io_vae.build_vae(), dataset)))
    ceiling_names = ("ceiling: matmuls only, XLA", "ceiling: matmuls only, no XLA")
    contenders.append(
        (ceiling_names[0], "ceiling-xla", ceiling_runner(images, args.batch_size, True))
    )
    contenders.append(
        (ceiling_names[1], "ceiling-graph", ceiling_runner(images, args.batch_size, False))
    )

    for name, _, run in contenders:
        start = time.perf_counter()
        run(args.warmup_steps)
        print(f"warm-up {name}: {time.perf_counter() - start:.1f} s", flush=True)

    seconds = {name: [] for name, _, _ in contenders}
    cpu_seconds = {name: [] for name, _, _ in contenders}
    for r in range(args.rounds):
        shift = r % len(contenders)
        for name, _, run in contenders[shift:] + contenders[:shift]:
            wall, cpu = run(args.steps)
            seconds[name].append(wall)
            cpu_seconds[name].append(cpu)
        print(
            f"round {r + 1}: "
            + ", ".join(f"{short} {seconds[name][-1]:.2f} s" for name, short, _ in contenders),
            flush=True,
        )

    examples = args.steps * args.batch_size
    median = {name: examples / statistics.median(s) for name, s in seconds.items()}
    best = {name: examples / min(s) for name, s in seconds.items()}
    ceiling_name = max(ceiling_names, key=median.get)
    flops_per_example = 3 * 2 * _common.FORWARD_MACS
    rows = []
    for name, _, _ in contenders:
        rows.append(
            [
                name + (" [ceiling]" if name == ceiling_name else ""),
                f"{median[name]:,.0f}",
                f"{best[name]:,.0f}",
                f"{1e3 * args.batch_size / median[name]:.1f}",
                f"{1e3 * statistics.median(cpu_seconds[name]) / args.steps:.1f}",
                f"{median[name] / median[peer_name]:.2f}",
                f"{median[name] / median[ceiling_name]:.2f}",
                f"{median[name] * flops_per_example / 1e9:.1f}",
            ]
        )
    print()
    print(
        _common.format_table(
            ["contender", "examples/s", "best", "ms/step", "CPU ms/step", "x peer", "x ceiling", "GFLOP/s"],
            rows,
        )
    )
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"\nexamples/s, ms/step, CPU ms/step (process time, all threads), ratios and GFLOP/s: "
        f"median of {args.rounds} round(s); best: fastest round. GFLOP/s = examples/s x {flops_per_example / 1e6:.2f} MFLOP "
        "(3 x forward). Load average at the end (1, 5, 15 min): " + load
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
