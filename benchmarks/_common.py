"""Helpers shared by the benchmark scripts: paths, environment report, FLOPs.

The benchmarks measure the MLP of the keras_vae binarized-MNIST model:
encoder Dense 784-512-256 (ReLU) -> 2 x 32 (loc and scale of q(z|x); one
256x64 product in keras_vae, two 256x32 heads in the keras.io peer, the same
FLOPs), decoder Dense 32-256-512 (ReLU) -> 784 (Bernoulli logits).

Imports only the standard library at module level: the PyTorch and JAX peers
(peer_torch.py, peer_jax.py) import it too, in virtualenvs without TensorFlow.
"""

import argparse
import math
import os
import platform
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

IMAGE_SHAPE = (28, 28, 1)
EVENT_SIZE = math.prod(IMAGE_SHAPE)
LATENT_DIM = 32
ENCODER_UNITS = (512, 256)
DECODER_UNITS = (256, 512)
# q(z|x) = Normal(loc, softplus(raw) + MIN_SCALE): GaussianEncoder's default min_scale.
MIN_SCALE = 1e-4

# (inputs, outputs) of every Dense matrix product.
ENCODER_MATMULS = ((784, 512), (512, 256), (256, 2 * LATENT_DIM))
DECODER_MATMULS = ((LATENT_DIM, 256), (256, 512), (512, 784))
ENCODER_MACS = sum(m * n for m, n in ENCODER_MATMULS)  # 548,864 per example
DECODER_MACS = sum(m * n for m, n in DECODER_MATMULS)  # 540,672 per example
FORWARD_MACS = ENCODER_MACS + DECODER_MACS  # 1,089,536 per example


def default_data_dir():
    """$TFDS_DATA_DIR, else ../shared/tensorflow_datasets beside the repo."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.normpath(
        os.path.join(REPO_ROOT, "..", "shared", "tensorflow_datasets")
    )


def argument_parser(description):
    """An argparse parser with the option every benchmark has: --data-dir."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir",
        default=default_data_dir(),
        help="TFDS data dir (default: $TFDS_DATA_DIR, else ../shared/tensorflow_datasets "
        "beside the repo)",
    )
    return parser


def cpu_model():
    """The CPU's "model name" from /proc/cpuinfo (or the platform's guess)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# (/proc/cpuinfo flag, name in the report) of the instruction sets that decide
# which float32 / bfloat16 matmul kernels oneDNN, MKL and XLA pick.
CPU_FLAGS = (
    ("avx2", "AVX2"),
    ("fma", "FMA"),
    ("avx512f", "AVX-512"),
    ("avx512_vnni", "AVX512_VNNI"),
    ("avx512_bf16", "AVX512_BF16"),
    ("amx_bf16", "AMX_BF16"),
)


def cpu_flags():
    """Which of `CPU_FLAGS` /proc/cpuinfo lists, as "AVX2 yes, ..., AMX_BF16 no"
    (or "unknown" where /proc/cpuinfo has no flags line)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        flags = None
    if flags is None:
        return "unknown"
    return ", ".join(f"{name} {'yes' if flag in flags else 'no'}" for flag, name in CPU_FLAGS)


def environment_lines():
    """Versions, CPU, threads and oneDNN setting, one "key: value" per line."""
    import keras
    import tensorflow as tf
    import tensorflow_probability as tfp

    inter = tf.config.threading.get_inter_op_parallelism_threads()
    intra = tf.config.threading.get_intra_op_parallelism_threads()
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return [
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, "
        f"TFP {tfp.__version__}, Python {platform.python_version()}",
        f"CPU: {cpu_model()}; cores: {os.cpu_count()} "
        f"(usable by this process: {len(os.sched_getaffinity(0))})",
        f"CPU flags: {cpu_flags()}",
        f"tf.config.threading: inter_op={inter}, intra_op={intra} (0 = TF picks)",
        "TF_ENABLE_ONEDNN_OPTS="
        + (onednn if onednn is not None else "unset (TF default: oneDNN on for x86 Linux)"),
        f"load average at start (1, 5, 15 min): {load}",
    ]


def format_table(header, rows, align_right=True, left_columns=()):
    """Plain-text table: first column left-aligned, the others right-aligned
    (or left-aligned too with `align_right=False`, or those whose indices are
    in `left_columns`). Trailing spaces are stripped."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def line(cells):
        return "  ".join(
            str(c).rjust(w) if i and align_right and i not in left_columns else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])
