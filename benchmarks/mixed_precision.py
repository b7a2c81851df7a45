#!/usr/bin/env python
"""float32 against mixed_bfloat16: training and IWAE-evaluation speed, one run.

The benchmark MLP (keras_vae.VAE(GaussianEncoder(32, hidden_units=(512,
256)), BernoulliDecoder((28, 28, 1), hidden_units=(256, 512)))) on binarized
MNIST, made once under each Keras dtype policy, with the same initial
weights:

* training: `vae.compile()` (FusedAdam(1e-3)), `fit(x, batch_size=128)` on
  the first --train-steps x 128 training images (float32 NumPy array, one
  epoch = --train-steps steps), after a warm-up fit that traces the step.
  Timed from `on_train_begin` to `on_train_end`; examples/s, and the CPU
  time of the process (all its threads) per step, less sensitive than wall
  time to other processes on a shared machine. The policies alternate,
  --rounds rounds; the table gives the medians and the best round.
  Each round continues training the same two models (the loss column: the
  mean training loss of the last round, nats per image).
* evaluation: `keras_vae.evaluation.importance_sampled_log_likelihood(model,
  batch, num_samples=k)` on the first --eval-images validation images in
  batches of 100 (as tools/evaluate.py), k = --eval-samples, one set of
  weights run in either policy (a fresh model, or --model PATH.keras,
  switched with `keras_vae.precision.set_model_dtype_policy`); the chunk
  function is traced before timing. Median over --rounds of the seconds
  (wall and CPU) for all the images, importance samples/s, the mean
  log p(x), and the per-image difference of log p(x) between the policies
  (the same seed: the same noise; the difference is the cost of bfloat16
  products in the evaluation alone).

Example (from the repo root; about 3 minutes on 2 cores):

    python benchmarks/mixed_precision.py
    python benchmarks/mixed_precision.py --model runs/x/best.keras --skip-train
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import _common  # noqa: E402  (puts the repo root on sys.path)

POLICIES = ("float32", "mixed_bfloat16")
BATCH_SIZE = 128
EVAL_BATCH = 100


def parse_args(argv=None):
    parser = _common.argument_parser(__doc__)
    parser.add_argument("--train-steps", type=int, default=300, help="timed training steps per round (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating the policies (default 3)")
    parser.add_argument("--eval-images", type=int, default=200, help="validation images evaluated (default 200)")
    parser.add_argument("--eval-samples", type=int, default=5000, help="importance samples k (default 5000)")
    parser.add_argument("--model", default=None, help="a .keras file to evaluate (default: a fresh model)")
    parser.add_argument("--skip-train", action="store_true", help="only the evaluation")
    parser.add_argument("--skip-eval", action="store_true", help="only the training")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("train_steps", "rounds", "eval_images", "eval_samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def benchmark_vae(policy, seed=0):
    """The benchmark MLP, every layer under `policy`, built."""
    import keras

    import keras_vae
    from keras_vae._internal import precision
    from keras_vae.layers import BernoulliDecoder
    from keras_vae.layers import GaussianEncoder

    keras.utils.set_random_seed(seed)
    with precision.dtype_policy_scope(policy):
        return keras_vae.VAE(
            GaussianEncoder(_common.LATENT_DIM, hidden_units=_common.ENCODER_UNITS),
            BernoulliDecoder(_common.IMAGE_SHAPE, hidden_units=_common.DECODER_UNITS),
            seed=seed,
            input_shape=(None,) + _common.IMAGE_SHAPE,
        )


def images(split, count, data_dir):
    """The first `count` images of a split, float32 [count, 28, 28, 1]."""
    import numpy as np

    from keras_vae import data

    ds = data.load("binarized_mnist", split, batch_size=count, shuffle=False, data_dir=data_dir, take=count)
    return np.asarray(next(iter(ds)), np.float32)


def fit_timer():
    """A Keras callback timing `fit` from on_train_begin to on_train_end (`seconds`)."""
    import keras

    class FitTimer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start = time.perf_counter()
            self.cpu_start = time.process_time()

        def on_train_end(self, logs=None):
            self.seconds = time.perf_counter() - self.start
            self.cpu_seconds = time.process_time() - self.cpu_start

    return FitTimer()


def time_training(args):
    x = images("train", args.train_steps * BATCH_SIZE, args.data_dir)
    models = {}
    for policy in POLICIES:
        vae = benchmark_vae(policy, args.seed)
        vae.compile()
        vae.fit(x[: 20 * BATCH_SIZE], batch_size=BATCH_SIZE, epochs=1, verbose=0)  # traces the step
        models[policy] = vae
    rates = {p: [] for p in POLICIES}
    cpu_ms = {p: [] for p in POLICIES}
    losses = {}
    for round_index in range(args.rounds):
        order = POLICIES if round_index % 2 == 0 else POLICIES[::-1]
        for policy in order:
            timer = fit_timer()
            history = models[policy].fit(x, batch_size=BATCH_SIZE, epochs=1, verbose=0, callbacks=[timer])
            rates[policy].append(len(x) / timer.seconds)
            cpu_ms[policy].append(1000 * timer.cpu_seconds / args.train_steps)
            losses[policy] = history.history["loss"][-1]
            print(f"round {round_index + 1} {policy}: {rates[policy][-1]:,.0f} examples/s", flush=True)
    header = [
        "training, fit(x, batch_size=128)", "examples/s (median)", "best", "rounds",
        "CPU ms/step (median)", "loss (last round)",
    ]  # fmt: skip
    rows = [
        [
            policy,
            f"{statistics.median(rates[policy]):,.0f}",
            f"{max(rates[policy]):,.0f}",
            " ".join(f"{r:,.0f}" for r in rates[policy]),
            f"{statistics.median(cpu_ms[policy]):.1f}",
            f"{losses[policy]:.2f}",
        ]
        for policy in POLICIES
    ]
    speedup = statistics.median(rates["mixed_bfloat16"]) / statistics.median(rates["float32"])
    cpu = statistics.median(cpu_ms["float32"]) / statistics.median(cpu_ms["mixed_bfloat16"])
    return _common.format_table(header, rows) + (
        f"\nmixed_bfloat16 / float32 (medians): {speedup:.2f}x examples/s, {cpu:.2f}x less CPU per step"
    )


def time_evaluation(args):
    import numpy as np

    import keras_vae
    from keras_vae._internal import precision
    from keras_vae import evaluation

    x = images("validation", args.eval_images, args.data_dir)
    batches = [x[i : i + EVAL_BATCH] for i in range(0, len(x), EVAL_BATCH)]
    models = {}
    for policy in POLICIES:
        if args.model:
            model = keras_vae.saving.load_model(args.model)
        else:
            model = benchmark_vae("float32", args.seed)
        models[policy] = precision.set_model_dtype_policy(model, policy)
    chunk = max(1, evaluation.DEFAULT_MAX_ELEMENTS // (EVAL_BATCH * _common.EVENT_SIZE))
    for model in models.values():  # traces the chunk function
        evaluation.importance_sampled_log_likelihood(model, batches[0], num_samples=min(chunk, args.eval_samples))
    seconds = {p: [] for p in POLICIES}
    cpu_seconds = {p: [] for p in POLICIES}
    log_px = {}
    for round_index in range(args.rounds):
        order = POLICIES if round_index % 2 == 0 else POLICIES[::-1]
        for policy in order:
            start, cpu_start = time.perf_counter(), time.process_time()
            values = [
                evaluation.importance_sampled_log_likelihood(
                    models[policy], batch, num_samples=args.eval_samples, seed=args.seed
                ).numpy()
                for batch in batches
            ]
            seconds[policy].append(time.perf_counter() - start)
            cpu_seconds[policy].append(time.process_time() - cpu_start)
            log_px[policy] = np.concatenate(values).astype(np.float64)
            print(f"round {round_index + 1} {policy}: {seconds[policy][-1]:.1f} s", flush=True)
    samples = len(x) * args.eval_samples
    header = [
        f"IWAE, k={args.eval_samples}, {len(x)} images", "seconds (median)", "samples/s",
        "rounds (s)", "CPU s (median)", "mean log p(x)",
    ]  # fmt: skip
    rows = [
        [
            policy,
            f"{statistics.median(seconds[policy]):.1f}",
            f"{samples / statistics.median(seconds[policy]):,.0f}",
            " ".join(f"{s:.1f}" for s in seconds[policy]),
            f"{statistics.median(cpu_seconds[policy]):.1f}",
            f"{log_px[policy].mean():.3f}",
        ]
        for policy in POLICIES
    ]
    difference = log_px["mixed_bfloat16"] - log_px["float32"]
    speedup = statistics.median(seconds["float32"]) / statistics.median(seconds["mixed_bfloat16"])
    cpu = statistics.median(cpu_seconds["float32"]) / statistics.median(cpu_seconds["mixed_bfloat16"])
    weights = args.model or "a fresh (untrained) model"
    return (
        _common.format_table(header, rows)
        + f"\nmixed_bfloat16 / float32 (medians): {speedup:.2f}x samples/s, {cpu:.2f}x less CPU"
        + f"\nlog p(x) bfloat16 - float32, per image ({weights}): mean {difference.mean():+.4f}, "
        f"mean |.| {np.abs(difference).mean():.4f}, max |.| {np.abs(difference).max():.4f} nats"
    )


def main(argv=None):
    args = parse_args(argv)
    for line in _common.environment_lines():
        print(line)
    out = []
    if not args.skip_train:
        out.append(time_training(args))
    if not args.skip_eval:
        out.append(time_evaluation(args))
    print()
    print("\n\n".join(out))
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\nload average at the end (1, 5, 15 min): {load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
