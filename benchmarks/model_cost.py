#!/usr/bin/env python
"""Cost of a training step for each shipped model's architecture, against v2's.

The shipped models differ in latent structure, not in data or schedule: v2 is
one latent layer of 40 with a VampPrior (K = 500) on gated MLPs 300-300, v4
the two-layer hierarchical VAE on the same networks, and the IAF row is v2
with its q pushed through 2 inverse autoregressive flow steps (MADE 320-320).
This script builds each from its `TrainConfig` exactly as `tools/train.py`
does (`keras_vae.training.build_vae`, Adam, the config's
`steps_per_execution`), trains it with `fit` on random binary images fed from
tf.data (the
cost of a step does not depend on the data), and prints ms per step and the
ratio to v2's, in alternating rounds (every model once per round) so that a
change in the machine's load hits all of them alike. The median over rounds is
the figure; the spread says how noisy the machine was.

    python benchmarks/model_cost.py                    # v2, v4, iaf: 5 rounds of 200 steps
    python benchmarks/model_cost.py --models v2 v4 --rounds 3 --steps 100

Configs: v2 and v4 are `saved_models/binarized_mnist_vae/config-v2.json` and
`config-v4.json` (their `steps_per_execution` included: 8 and 10); iaf is
config-v2 with `flow="iaf"`, `num_flows=2` (the comparison of
docs/results.md). Compare ratios within one run, not milliseconds across
machines.
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

SHIPPED = os.path.join(_common.REPO_ROOT, "saved_models", "binarized_mnist_vae")
MODELS = {
    "v2": ("config-v2.json", {}),
    "v4": ("config-v4.json", {}),
    "iaf": ("config-v2.json", {"flow": "iaf", "num_flows": 2}),
}


def _config(name):
    import dataclasses

    from keras_vae.config import TrainConfig

    file, changes = MODELS[name]
    return dataclasses.replace(TrainConfig.from_json_file(os.path.join(SHIPPED, file)), **changes)


def _model(config, steps_per_epoch):
    """The compiled model of `config`, as `keras_vae.training.train` makes it."""
    from keras_vae.optimizers import make_optimizer
    from keras_vae.training import build_vae

    model = build_vae(config)
    model.compile(
        optimizer=make_optimizer(config.learning_rate, config.lr_halve_every, steps_per_epoch),
        steps_per_execution=config.steps_per_execution or "auto",
    )
    return model


def main(argv=None):
    parser = _common.argument_parser(__doc__)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), help="models to time")
    parser.add_argument("--steps", type=int, default=200, help="timed training steps per model and round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.rounds < 1:
        parser.error(f"Expected --steps and --rounds >= 1. Received: --steps={args.steps} --rounds={args.rounds}")
    print("\n".join(_common.environment_lines()))

    import numpy as np
    import tensorflow as tf

    batch_sizes, models, data = {}, {}, {}
    rng = np.random.default_rng(0)
    for name in args.models:
        config = _config(name)
        model = _model(config, args.steps)
        batch = config.batch_size
        x = (rng.random((batch * args.steps, 28, 28, 1)) < 0.2).astype("float32")
        # Fed from tf.data, as tools/train.py feeds it (NumPy inputs get
        # Keras's own pipeline, whose autotuning model stalls each fit's end:
        # benchmarks/epoch_overhead.py).
        ds = tf.data.Dataset.from_tensor_slices(x).batch(batch)
        spe = config.steps_per_execution or 1
        model.fit(ds.take(2 * spe), epochs=1, verbose=0)  # trace and warm up
        models[name], data[name], batch_sizes[name] = model, ds, batch
        print(f"{name}: {model.__class__.__name__}, {model.count_params():,} parameters, batch {batch}, "
              f"steps_per_execution {config.steps_per_execution}", flush=True)

    times = {name: [] for name in args.models}
    for r in range(args.rounds):
        for name in args.models:
            start = time.perf_counter()
            models[name].fit(data[name], epochs=1, verbose=0)
            times[name].append((time.perf_counter() - start) / args.steps * 1e3)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {times[n][-1]:.2f} ms" for n in args.models),
              flush=True)

    base = statistics.median(times["v2"]) if "v2" in times else None
    rows = []
    for name in args.models:
        median = statistics.median(times[name])
        rows.append([
            name, f"{median:.2f}", f"{min(times[name]):.2f}-{max(times[name]):.2f}",
            f"{batch_sizes[name] / median * 1e3:,.0f}", f"{median / base:.2f}x" if base else "-",
        ])  # fmt: skip
    print()
    print(_common.format_table(["model", "ms/step (median)", "range", "examples/s", "vs v2"], rows))


if __name__ == "__main__":
    main()
