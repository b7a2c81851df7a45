#!/usr/bin/env python
"""What tf.data's autotuning model costs `fit` between epochs.

Keras makes a new iterator of the validation data at every epoch (and of the
training data, when `steps_per_epoch` is not given) and drops the old one.
With tf.data's autotuning model on (its default), dropping an iterator waits
for the model thread's next wake-up, at 10, 30, 70, ..., 1270, 2550, 5110 ms
after the iterator was made (the periods double), so epochs stall. keras_vae
turns the model off on the pipelines it reads (`keras_vae.data.load`, and
any `tf.data.Dataset` given to `fit` / `evaluate` / `predict` that does not
set `options.autotune.enabled` itself; see keras_vae/_internal/pipelines.py).

This script trains the benchmark MLP (random binary images, batch 128) for
`--epochs` epochs with validation data, both fed from tf.data, once with the
autotuning model on (set explicitly on the datasets: an explicit choice is
kept) and once with the package's default (off), in alternating rounds, and
prints the wall time of each epoch (training and validation) and of the
whole `fit`.

    python benchmarks/epoch_overhead.py                   # 3 rounds of 8 epochs of 100 steps
    python benchmarks/epoch_overhead.py --steps 400 --rounds 2

NumPy inputs are not covered by the package's setting: Keras builds their
pipeline itself (see docs/speed.md).
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import _common  # noqa: E402  (puts the repo root on sys.path)


def main(argv=None):
    parser = _common.argument_parser(__doc__)
    parser.add_argument("--steps", type=int, default=100, help="training steps per epoch")
    parser.add_argument("--validation-steps", type=int, default=20, help="validation batches per epoch")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per fit")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    args = parser.parse_args(argv)
    for name in ("steps", "validation_steps", "epochs", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"Expected --{name.replace('_', '-')} >= 1. Received: {getattr(args, name)}")
    print("\n".join(_common.environment_lines()))

    import keras
    import numpy as np
    import tensorflow as tf

    import keras_vae
    from keras_vae.layers import BernoulliDecoder
    from keras_vae.layers import GaussianEncoder

    batch = 128
    rng = np.random.default_rng(0)
    x = (rng.random((batch * args.steps, 28, 28, 1)) < 0.2).astype("float32")
    x_val = (rng.random((batch * args.validation_steps, 28, 28, 1)) < 0.2).astype("float32")

    def datasets(autotune):
        train = tf.data.Dataset.from_tensor_slices(x).batch(batch)
        val = tf.data.Dataset.from_tensor_slices(x_val).batch(batch)
        if autotune:
            options = tf.data.Options()
            options.autotune.enabled = True
            train, val = train.with_options(options), val.with_options(options)
        return train, val

    class EpochTimes(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)

    contenders = {"autotuning model on (tf.data default)": True, "keras_vae default (model off)": False}
    results = {name: {"epochs": [], "fits": []} for name in contenders}
    for r in range(args.rounds):
        for name, autotune in contenders.items():
            keras.utils.set_random_seed(0)
            vae = keras_vae.VAE(
                GaussianEncoder(_common.LATENT_DIM, hidden_units=_common.ENCODER_UNITS),
                BernoulliDecoder(_common.IMAGE_SHAPE, hidden_units=_common.DECODER_UNITS),
                seed=0, input_shape=(None,) + _common.IMAGE_SHAPE,
            )  # fmt: skip
            vae.compile()
            train, val = datasets(autotune)
            vae.fit(train.take(2), epochs=1, verbose=0)  # trace the training step
            timer = EpochTimes()
            timer.seconds = []
            start = time.perf_counter()
            vae.fit(train, validation_data=val, epochs=args.epochs, verbose=0, callbacks=[timer])
            results[name]["fits"].append(time.perf_counter() - start)
            results[name]["epochs"].extend(timer.seconds[1:])  # the first epoch traces validation
            print(f"round {r + 1}, {name}: fit {results[name]['fits'][-1]:.2f} s, epochs "
                  + " ".join(f"{s:.2f}" for s in timer.seconds), flush=True)

    rows = []
    for name, result in results.items():
        epochs = result["epochs"]
        rows.append([
            name, f"{statistics.median(result['fits']):.2f}", f"{statistics.median(epochs):.2f}",
            f"{min(epochs):.2f}-{max(epochs):.2f}",
        ])  # fmt: skip
    print()
    print(_common.format_table(
        ["pipelines", "fit s (median)", "epoch s (median)", "epoch range"], rows, left_columns=(0,)
    ))  # fmt: skip


if __name__ == "__main__":
    main()
