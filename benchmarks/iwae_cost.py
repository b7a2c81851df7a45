#!/usr/bin/env python
"""Time and memory of a training step against k, the IWAE objective's samples.

`keras_vae.VAE(objective="iwae", num_samples=k)` decodes k codes per example:
the decoder's work, and the activations kept for the backward pass, grow
about linearly with k while the encoder's stay the same. This script trains
the benchmark MLP (784-512-256 -> 32 -> 256-512-784, batch 128, random binary
images: the cost does not depend on the data) for each k with `fit`, and
prints examples/s, ms per step against k = 1 (the ELBO), and the peak
resident memory of a fresh process per k.

    python benchmarks/iwae_cost.py                 # k = 1, 5, 10, 20, 50
    python benchmarks/iwae_cost.py --k 1 5 --steps 100

Each k runs in its own process (so that its peak memory is its own); compare
ratios within one run, not absolute numbers across machines.
"""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

_CHILD = r"""
import json, os, resource, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, sys.argv[3])
import numpy as np, keras, keras_vae
from keras_vae.layers import BernoulliDecoder, GaussianEncoder
k, steps = int(sys.argv[1]), int(sys.argv[2])
batch = 128
x = (np.random.default_rng(0).random((batch * steps, 28, 28, 1)) < 0.2).astype("float32")
vae = keras_vae.VAE(GaussianEncoder(32, hidden_units=(512, 256)), BernoulliDecoder((28, 28, 1), hidden_units=(256, 512)),
                    objective="iwae", num_samples=k, seed=0, input_shape=(None, 28, 28, 1))
vae.compile()
vae.fit(x[: batch * 5], batch_size=batch, epochs=1, verbose=0)  # trace and warm up
start = time.perf_counter()
vae.fit(x, batch_size=batch, epochs=1, verbose=0)
seconds = time.perf_counter() - start
print(json.dumps({"k": k, "seconds": seconds, "steps": steps, "batch": batch,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main(argv=None):
    parser = _common.argument_parser(__doc__)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 5, 10, 20, 50], help="values of k")
    parser.add_argument("--steps", type=int, default=150, help="timed training steps per k")
    args = parser.parse_args(argv)
    print("\n".join(_common.environment_lines()))
    rows, base = [], None
    for k in args.k:
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(k), str(args.steps), _common.REPO_ROOT],
            capture_output=True, text=True, check=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        ms = 1000 * result["seconds"] / result["steps"]
        base = base or ms
        rows.append([
            str(k),
            f"{result['batch'] * result['steps'] / result['seconds']:,.0f}",
            f"{ms:.1f}",
            f"{ms / base:.2f}",
            f"{result['peak_rss_mib']:,.0f}",
        ])
        print(f"k={k}: {ms:.1f} ms/step", file=sys.stderr)
    print(_common.format_table(["k", "examples/s", "ms/step", "x k=1", "peak RSS MiB"], rows))
    return rows


if __name__ == "__main__":
    main()
