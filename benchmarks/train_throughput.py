#!/usr/bin/env python
"""Training throughput of keras_vae.VAE next to its peers (keras.io, PyTorch, JAX) and a ceiling.

On the binarized MNIST train split (loaded once into memory as float32),
measures training examples per second after a warm-up for:

* keras_vae.VAE trained with `model.fit` as a user does it, with its
  defaults: `vae.compile()` (the optimizer is then
  `keras_vae.optimizers.FusedAdam(1e-3)`, Keras's Adam arithmetic in one
  fused kernel per variable) and nothing else; fed both ways users feed it:
  from a tf.data pipeline (from_tensor_slices, batch with drop_remainder,
  cache, repeat, prefetch; no shuffling; `fit(dataset, shuffle=False)`) and
  from the NumPy array itself (`fit(x, batch_size=128)`: Keras's array
  adapter batches and shuffles it).
* With --jit-compile and/or --steps-per-execution K, keras_vae.VAE rows
  compiled with those levers, fed both ways (model and optimizer built before
  `fit`, which jit_compile=True needs; note that XLA drops the model's
  tf.debugging.Assert input checks).
* The keras.io peer: the keras.io "Variational AutoEncoder" example with the
  same MLP (benchmarks/keras_io_vae.py), compiled with Adam(1e-3), trained
  with `fit`, fed both ways.
* Peers in other frameworks (--peers; _peers.py), each a subprocess in its
  own virtualenv under benchmarks/.venvs/, created and installed on the first
  run that asks for it: the same model, loss and Adam(1e-3) written in
  PyTorch, eager (peer_torch.py; `torch.set_num_threads` to the thread count
  TF uses), optionally under torch.compile, and in JAX + optax with the whole
  step under `jax.jit` (peer_jax.py). They loop over pre-made batches of the
  same images (written to a .npy file for them). A peer that cannot be
  installed, imported or run gets a row that says why, not a crash.
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
`fit_runner`), a peer around its training loop (inside its process), a
ceiling around its call. Each measurement of `steps` steps starts from the
first batch again, as a new `fit` call does. Each round measures every
contender once (the order rotates between rounds), so that load from other
processes falls on all of them alike; the table gives the median over rounds,
the best round, and the CPU time of the contender's process per step (all its
threads; less sensitive than wall time to other processes, and the better
measure with --threads 1 on a busy machine). Ratios: against the keras.io
peer fed the same way (the tf.data one for rows that are not fed by Keras),
against the fastest peer (keras.io, PyTorch or JAX) and against the ceiling.
The `loss` column is the mean training loss (negative ELBO, nats per image)
of each contender's last measurement, after the same number of steps for all:
it shows that they train the same model. GFLOP/s counts 2*m*n*k per product
and forward + backward = 3 x forward (1,089,536 multiply-adds per example
forward); the products a step really needs are 2.63 x forward (see above),
the same for every contender, so ratios do not depend on the convention.

Example (from the repo root):

    python benchmarks/train_throughput.py
    python benchmarks/train_throughput.py --jit-compile --steps-per-execution 10
    python benchmarks/train_throughput.py --quick
    python benchmarks/train_throughput.py --peers torch,jax    # no torch.compile row
    python benchmarks/train_throughput.py --no-peers           # TensorFlow only
"""

import contextlib
import dataclasses
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import _common  # noqa: E402  (puts the repo root on sys.path)
import _peers  # noqa: E402

DEFAULT_PEERS = "torch,torch-compile,jax"


def parse_args(argv=None):
    parser = _common.argument_parser(__doc__)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default: the full batches of one epoch, 390 for the 50,000 training images, rounded down to a multiple of --steps-per-execution)")
    parser.add_argument("--warmup-steps", type=int, default=50, help="untimed steps per contender before the rounds (default 50)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per contender; the table gives the median (default 3)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps-per-execution", type=int, default=1, help="lever: adds keras_vae rows compiled with this steps_per_execution")
    parser.add_argument("--jit-compile", action="store_true", help="lever: adds keras_vae rows compiled with jit_compile=True")
    parser.add_argument("--threads", type=int, default=0, help="TF intra- and inter-op threads, and the peers' threads (default 0: TF picks, one per core; the peers get one per usable CPU)")
    parser.add_argument("--peers", default=DEFAULT_PEERS, help=f"comma-separated peers in other frameworks, among {', '.join(_peers.PEERS)} (default {DEFAULT_PEERS}); each is installed into benchmarks/.venvs/ on first use")
    parser.add_argument("--no-peers", action="store_true", help="no PyTorch or JAX peers (same as --peers '')")
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip the profile of a step printed after the table (benchmarks/profile_step.py, about a minute)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 6,400 examples, 20 steps, 5 warm-up steps, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup_steps, args.rounds = 20, 5, 1
    if args.threads < 0:
        parser.error("--threads must be >= 0")
    for name in ("steps", "warmup_steps", "rounds", "batch_size", "steps_per_execution"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if (args.steps or 0) % args.steps_per_execution or args.warmup_steps % args.steps_per_execution:
        parser.error("--steps and --warmup-steps must be multiples of --steps-per-execution")
    try:
        args.peers = [] if args.no_peers else _peers.parse_peer_list(args.peers)
    except ValueError as error:
        parser.error(str(error))
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


def fit_runner(model, data, **fit_options):
    """`run(steps) -> (wall, CPU) seconds, loss`: one `model.fit(data,
    steps_per_epoch=steps, epochs=1, **fit_options)` call; `loss` is the
    epoch's mean training loss, as `fit` reports it.

    `data` is the tf.data pipeline of `make_dataset` (with `shuffle=False`),
    or the NumPy array of images with `batch_size=...`: Keras's array adapter
    then batches (and, by default, shuffles) it, as in `vae.fit(x,
    batch_size=128)`.

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
        history = model.fit(
            data, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[timer], **fit_options
        )
        wall, cpu = (end - begin for begin, end in zip(marks["begin"], marks["end"]))
        return wall, cpu, history.history["loss"][-1]

    return run


def ceiling_runner(images, batch_size, jit_compile):
    """`run(steps) -> (wall, CPU) seconds, None`: the products of `steps` steps, one call.

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
        # A plain while loop: `for i in tf.range(steps)` gives the loop a
        # maximum_iterations, which XLA takes as a compile-time constant, so it
        # compiled the loop again for each new step count (the first timed
        # round after the warm-up then included a compilation).
        def body(i, ws):
            return i + 1, step(ws, x[i % num_batches])

        _, ws = tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), weights))
        return tf.add_n([tf.reduce_sum(w) for w in ws])

    def run(steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        checksum = float(loop(tf.constant(steps)))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        if not np.isfinite(checksum):
            raise RuntimeError("The ceiling loop diverged (non-finite weights).")
        return wall, cpu, None

    return run


@dataclasses.dataclass
class Contender:
    """A row of the table and its measurements.

    `kind`: "keras_vae"; "keras.io" or "framework" (the peers: what a user
    writes without keras_vae, in Keras or in PyTorch / JAX); or "ceiling".
    `feed`: how `fit` gets the batches ("tf.data" or "NumPy"), None for the
    contenders not fed by Keras. `run(steps) -> (wall, CPU) seconds, loss`.
    `missing`: why the row has no numbers (None when it has).
    """

    name: str
    short: str
    kind: str
    run: object = None
    feed: str = None
    missing: str = None
    seconds: list = dataclasses.field(default_factory=list)
    cpu_seconds: list = dataclasses.field(default_factory=list)
    loss: float = None


FEEDS = ("tf.data", "NumPy")


def keras_contenders(args, images, dataset):
    """keras_vae (defaults, and with the levers if asked) and the keras.io
    peer, each fed from the tf.data pipeline and from the NumPy array."""
    import keras_io_vae

    def both_feeds(name, short, kind, build):
        runners = {
            "tf.data": fit_runner(build(), dataset, shuffle=False),
            "NumPy": fit_runner(build(), images, batch_size=args.batch_size),
        }
        return [
            Contender(f"{name}, fit({feed})", f"{short}/{feed.lower()}", kind, runners[feed], feed)
            for feed in FEEDS
        ]

    contenders = both_feeds("keras_vae.VAE (compile defaults)", "vae", "keras_vae", keras_vae_model)
    if args.jit_compile or args.steps_per_execution != 1:
        levers = []
        if args.jit_compile:
            levers.append("jit_compile=True")
        if args.steps_per_execution != 1:
            levers.append(f"steps_per_execution={args.steps_per_execution}")
        contenders += both_feeds(
            f"keras_vae.VAE ({', '.join(levers)})", "vae+levers", "keras_vae",
            lambda: keras_vae_model(
                jit_compile=True if args.jit_compile else "auto",
                steps_per_execution=args.steps_per_execution,
                built=True,
            ),
        )  # fmt: skip
    contenders += both_feeds("keras.io peer", "keras.io", "keras.io", keras_io_vae.build_vae)
    return contenders


def peer_contenders(specs, images, threads, batch_size, workdir, stack):
    """A Contender per peer spec: its virtualenv made (first use) and its
    process started, or `missing` saying why not. `stack` closes them."""
    import numpy as np

    if not specs:
        return []
    data_path = os.path.join(workdir, "images.npy")
    np.save(data_path, images)
    pythons = {}  # venv -> its Python, or why it is unavailable
    started = []  # (contender, process): all start side by side, then we wait
    start = time.perf_counter()
    for spec in specs:
        contender = Contender(spec.title, spec.key, "framework")
        if spec.venv not in pythons:
            try:
                pythons[spec.venv] = _peers.ensure_venv(
                    spec.venv, spec.requirements, log=lambda line: print(line, flush=True)
                )
            except _peers.PeerUnavailable as error:
                pythons[spec.venv] = error
        python = pythons[spec.venv]
        process = None
        if isinstance(python, _peers.PeerUnavailable):
            contender.missing = str(python)
        else:
            try:
                process = _peers.PeerProcess(spec, python, data_path, threads, batch_size, workdir)
                stack.callback(process.close)
            except _peers.PeerUnavailable as error:
                contender.missing = str(error)
        started.append((contender, process))
    for contender, process in started:
        if process is not None:
            try:
                info = process.wait_ready()
                contender.run = process.run
                print(
                    f"peer {contender.name}: {info['versions']}; {info['threads']} "
                    f"({os.path.relpath(os.path.dirname(os.path.dirname(process.python)))}, "
                    f"ready {time.perf_counter() - start:.1f} s after the start)",
                    flush=True,
                )
            except _peers.PeerUnavailable as error:
                contender.missing = str(error)
        if contender.missing is not None:
            print(f"peer {contender.name}: MISSING: {contender.missing}", flush=True)
    return [contender for contender, _ in started]


def measure(contender, steps, when):
    """`contender.run(steps)`; a peer that fails becomes `missing` (returns None)."""
    try:
        return contender.run(steps)
    except _peers.PeerUnavailable as error:
        contender.missing = f"failed in {when}: {error}"
        print(f"{contender.name}: {contender.missing}", flush=True)
        return None


def table_rows(contenders, args):
    """The table's rows: numbers, ratios and loss per contender ("-" where
    missing), with [ceiling] and [fastest peer] marks on the references."""
    examples = args.steps * args.batch_size
    measured = [c for c in contenders if c.missing is None]
    median = {c.name: examples / statistics.median(c.seconds) for c in measured}
    best = {c.name: examples / min(c.seconds) for c in measured}

    def fastest(kinds):
        names = [c.name for c in measured if c.kind in kinds]
        return max(names, key=median.get) if names else None

    ceiling = fastest(("ceiling",))
    fastest_peer = fastest(("keras.io", "framework"))
    keras_io = {c.feed: c.name for c in measured if c.kind == "keras.io"}

    def ratio(name, reference):
        return f"{median[name] / median[reference]:.2f}" if reference else "-"

    flops_per_example = 3 * 2 * _common.FORWARD_MACS
    rows = []
    for c in contenders:
        marks = [m for m, ref in (("[ceiling]", ceiling), ("[fastest peer]", fastest_peer)) if ref == c.name]
        name = " ".join([c.name] + marks)
        if c.missing is not None:
            rows.append([name] + ["-"] * 9 + ["missing: " + c.missing])
            continue
        rows.append(
            [
                name,
                f"{median[c.name]:,.0f}",
                f"{best[c.name]:,.0f}",
                f"{1e3 * args.batch_size / median[c.name]:.1f}",
                f"{1e3 * statistics.median(c.cpu_seconds) / args.steps:.1f}",
                ratio(c.name, keras_io.get(c.feed or "tf.data")),
                ratio(c.name, fastest_peer),
                ratio(c.name, ceiling),
                f"{median[c.name] * flops_per_example / 1e9:.1f}",
                "-" if c.loss is None else f"{c.loss:.1f}",
                "",
            ]
        )
    return rows


def main(argv=None):
    args = parse_args(argv)
    import keras
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    for line in _common.environment_lines():
        print(line)
    usable_cpus = len(os.sched_getaffinity(0))
    peer_threads = args.threads or usable_cpus
    if args.peers:
        print(
            f"peers: {', '.join(s.title for s in args.peers)}; {peer_threads} thread(s) each "
            "(--threads, else one per usable CPU like TF's default)"
        )
    if os.getloadavg()[0] >= usable_cpus:
        print(
            f"warning: the machine is busy (load average {os.getloadavg()[0]:.1f} on {usable_cpus} "
            "usable CPUs): wall times are noisy. PyTorch's OpenMP threads spin while they wait for "
            "each other and can be many times slower under load (see CPU ms/step); "
            "OMP_WAIT_POLICY=PASSIVE in the environment, or --threads 1, avoids that."
        )

    keras.utils.set_random_seed(0)
    start = time.perf_counter()
    take = 50 * args.batch_size if args.quick else None
    images = load_images(args.data_dir, take=take)
    batches_per_epoch = len(images) // args.batch_size
    if args.steps is None:
        args.steps = batches_per_epoch - batches_per_epoch % args.steps_per_execution
    if max(args.steps, args.warmup_steps) > batches_per_epoch:
        sys.exit(
            f"Expected --steps and --warmup-steps of at most {batches_per_epoch} (the batches of "
            f"one epoch of {len(images)} images: the NumPy-fed rows run one `fit` epoch per "
            f"measurement). Received: --steps {args.steps}, --warmup-steps {args.warmup_steps}"
        )
    dataset = make_dataset(images, args.batch_size)
    print(
        f"data: binarized_mnist train, {len(images)} images as float32 in memory "
        f"(loaded in {time.perf_counter() - start:.1f} s), batch {args.batch_size}, "
        f"{args.warmup_steps} warm-up steps, {args.rounds} round(s) of {args.steps} "
        "timed steps per contender",
        flush=True,
    )

    with tempfile.TemporaryDirectory(prefix="train_throughput_") as workdir, contextlib.ExitStack() as stack:
        contenders = keras_contenders(args, images, dataset)
        contenders += peer_contenders(args.peers, images, peer_threads, args.batch_size, workdir, stack)
        contenders += [
            Contender("ceiling: matmuls only, XLA", "ceiling-xla", "ceiling",
                      ceiling_runner(images, args.batch_size, True)),
            Contender("ceiling: matmuls only, no XLA", "ceiling-graph", "ceiling",
                      ceiling_runner(images, args.batch_size, False)),
        ]  # fmt: skip

        for c in contenders:
            if c.missing is None:
                start = time.perf_counter()
                if measure(c, args.warmup_steps, "the warm-up") is not None:
                    print(f"warm-up {c.name}: {time.perf_counter() - start:.1f} s", flush=True)

        for r in range(args.rounds):
            active = [c for c in contenders if c.missing is None]
            shift = r % len(active)
            for c in active[shift:] + active[:shift]:
                result = measure(c, args.steps, f"round {r + 1}")
                if result is not None:
                    wall, cpu, c.loss = result
                    c.seconds.append(wall)
                    c.cpu_seconds.append(cpu)
            print(
                f"round {r + 1}: "
                + ", ".join(f"{c.short} {c.seconds[-1]:.2f} s" for c in active if c.missing is None),
                flush=True,
            )

    rows = table_rows(contenders, args)
    header = ["contender", "examples/s", "best", "ms/step", "CPU ms/step", "x keras.io",
              "x fastest peer", "x ceiling", "GFLOP/s", "loss", "note"]  # fmt: skip
    if all(c.missing is None for c in contenders):
        header, rows = header[:-1], [r[:-1] for r in rows]
    print()
    print(_common.format_table(header, rows, left_columns=(len(header) - 1,) if header[-1] == "note" else ()))
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    total_steps = args.warmup_steps + args.rounds * args.steps
    print(
        f"\nexamples/s, ms/step, CPU ms/step (process time of the contender's process, all "
        f"threads), ratios and GFLOP/s: median of {args.rounds} round(s); best: fastest round. "
        "x keras.io: against the keras.io peer fed the same way (tf.data for rows not fed by "
        "Keras). GFLOP/s = examples/s x "
        f"{3 * 2 * _common.FORWARD_MACS / 1e6:.2f} MFLOP (3 x forward). loss: mean training loss "
        f"(nats per image) of the last measurement, after {total_steps} steps for each contender. "
        "Load average at the end (1, 5, 15 min): " + load
    )
    if args.profile:
        run_profile(args)
    return 0


def run_profile(args):
    """Prints where a step of `vae.compile()`'s defaults goes: profile_step.py
    (TensorFlow's profiler), in its own process, on the tf.data feed."""
    import subprocess

    command = [
        sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "profile_step.py"),
        "--feeds", "tf.data", "--rounds", "1", "--top", "0",
    ]  # fmt: skip
    if args.quick:
        command.append("--quick")
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    if args.threads:
        command += ["--threads", str(args.threads)]
    print(f"\nProfile of a training step with the defaults ({' '.join(command[1:])}):", flush=True)
    done = subprocess.run(command, check=False)
    if done.returncode:
        print(f"(the profile did not finish: exit status {done.returncode})")


if __name__ == "__main__":
    sys.exit(main())
