"""What peer_torch.py and peer_jax.py share: their command line, data and protocol.

A peer is a training loop of the benchmark model in another framework, run by
train_throughput.py as a subprocess in its own virtualenv (see _peers.py). It
imports only the standard library, NumPy and `_common` here, so that it runs
in a virtualenv with no TensorFlow.

The peer script parses its arguments with `parse_args` (before importing its
framework, so that it can set thread counts first), builds its model and a
`run(batches, steps) -> mean loss` function, then calls `main`, which:

* with `--serve` (how train_throughput.py runs it) prints one protocol line
  `@peer {"event": "ready", ...}` with its versions and thread settings, then
  answers each line `run N` of its standard input with
  `@peer {"wall": s, "cpu": s, "loss": x}` (N steps from the first batch on,
  like one `fit(..., steps_per_epoch=N)` call of the Keras contenders), until
  `quit` or the end of its input;
* without it, runs `--warmup-steps` then `--rounds` measurements of
  `--steps` and prints the same JSON lines, to run a peer alone:

    benchmarks/.venvs/torch/bin/python benchmarks/peer_torch.py \\
        --data images.npy --threads 2 --steps 100

`wall` is the time of the whole loop, `cpu` the CPU time of the peer process
(all its threads) over it, `loss` the mean over the N steps of the training
loss (the batch mean of -(log p(x|z) - KL), nats per image): what Keras's
`fit` reports as `loss` for an epoch of N steps.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

PROTOCOL_PREFIX = "@peer "


def parse_args(description, argv=None, extra=None):
    """The peer's arguments; `extra(parser)` adds the peer's own options."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help=".npy file of float32 images [N, 28, 28, 1] (or [N, 784])")
    parser.add_argument("--threads", type=int, required=True, help="threads for the framework's kernels (>= 1)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve", action="store_true", help="take `run N` commands on stdin (train_throughput.py)")
    parser.add_argument("--steps", type=int, default=400, help="without --serve: timed steps per round")
    parser.add_argument("--warmup-steps", type=int, default=50, help="without --serve: untimed steps first")
    parser.add_argument("--rounds", type=int, default=3, help="without --serve: measurements")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    for name in ("threads", "batch_size", "steps", "warmup_steps", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def load_batches(path, batch_size):
    """The images of `path` as float32 [num_batches, batch_size, 784], the
    last partial batch dropped (as the tf.data contenders' drop_remainder)."""
    import numpy as np

    images = np.load(path).reshape(-1, _common.EVENT_SIZE).astype("float32", copy=False)
    num_batches = len(images) // batch_size
    if num_batches < 1:
        raise ValueError(
            f"Expected at least one batch of {batch_size} images. Received: {len(images)} images in {path}"
        )
    return np.ascontiguousarray(images[: num_batches * batch_size].reshape(num_batches, batch_size, -1))


def emit(message):
    """One protocol line on stdout."""
    print(PROTOCOL_PREFIX + json.dumps(message), flush=True)


def measure(run, steps):
    """Wall and process CPU seconds of `run(steps)` (which must return only
    when the work is done), and the mean loss it returns."""
    wall, cpu = time.perf_counter(), time.process_time()
    loss = float(run(steps))
    return {
        "wall": time.perf_counter() - wall,
        "cpu": time.process_time() - cpu,
        "loss": loss,
        "steps": steps,
    }


def main(args, run, info):
    """Serve `run N` commands (`--serve`) or run the fixed schedule of the
    arguments; `info` (versions, threads) goes into the `ready` line."""
    emit({"event": "ready", **info})
    if args.serve:
        for line in sys.stdin:
            command = line.split()
            if not command:
                continue
            if command == ["quit"]:
                break
            if len(command) != 2 or command[0] != "run" or not command[1].isdigit():
                raise ValueError(f"Expected `run N` or `quit`. Received: {line.strip()!r}")
            emit(measure(run, int(command[1])))
        return 0
    emit({"warmup": True, **measure(run, args.warmup_steps)})
    for _ in range(args.rounds):
        result = measure(run, args.steps)
        result["examples_per_second"] = args.steps * args.batch_size / result["wall"]
        emit(result)
    return 0
