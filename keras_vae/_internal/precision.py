"""Mixed precision: which part of a VAE computes in which dtype.

Under a mixed Keras dtype policy (`"mixed_bfloat16"`; `"mixed_float16"`
alike) the networks of a `keras_vae.VAE` compute in 16 bits, with float32
variables (Keras keeps float32 master weights and updates them in float32):
the matrix products, where the time goes. Everything from the networks'
outputs on is float32: the distribution heads (`IndependentNormal`,
`IndependentBernoulli`: loc, scale, logits, log-probabilities and their sums
over the pixels) and the priors, and so the KL, the ELBO, the IWAE
log-weights and their logsumexp, and the loss. bfloat16 keeps 8 significant
bits (a relative rounding of up to 2^-8); a sum of 784 per-pixel
log-probabilities of -0.1 to -5 nats each (-100 nats in all) would be
rounded to a multiple of 0.5 nats, before any accumulation error.

This is the float32 output layer of Keras's mixed-precision guide
(`Activation("softmax", dtype="float32")` after the last Dense layer): the
last projection (the logits, loc and raw scale) still computes in bfloat16,
its output is rounded to bfloat16 and the head takes it on in float32.

* `ComputesInVariableDtype`: the mixin of the heads and priors, which compute
  in their policy's variable dtype (float32 under a mixed policy, the
  policy's own dtype otherwise: float64 stays float64).
* `dtype_policy_scope(policy)`: builds layers under a policy (the global
  policy, restored after), as `keras_vae.training.build_vae` does.
* `set_model_dtype_policy(model, policy)`: runs a loaded model in another
  precision (`tools/evaluate.py --dtype-policy`).
* `check_bfloat16_support(policy)`: warns when bfloat16 products would be
  emulated (a CPU without AVX512_BF16 or AMX, and no GPU).
"""

import contextlib
import warnings

import keras

# /proc/cpuinfo flags of native bfloat16 products on x86 (AVX-512 BF16, AMX).
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


class ComputesInVariableDtype:
    """Mixin of a Keras layer that computes in its policy's variable dtype.

    The layers that make distributions (heads, priors) keep the dtype policy
    of the model they belong to (serialized with it, switched with it), but
    compute in its variable dtype: float32 under `"mixed_bfloat16"`, where
    the networks compute in bfloat16; the same as the compute dtype under
    `"float32"` or `"float64"`. Keras casts their inputs to it and reads
    their variables in it (e.g. a mixture prior's means), as Keras's
    normalization layers compute their statistics in float32 under a mixed
    policy.
    """

    @property
    def compute_dtype(self):
        return self.variable_dtype


@contextlib.contextmanager
def dtype_policy_scope(policy):
    """Layers made in this block default to `policy` (the global policy).

    Keras 3 has a global policy (`keras.config.set_dtype_policy`) but no
    scope: this sets it and restores the previous one on exit. A layer
    takes its policy when it is made, so a model made in the block keeps
    it (and saves it).

    Args:
        policy: A policy name (`"float32"`, `"mixed_bfloat16"`) or a
            `keras.DTypePolicy`.

    Example:

    >>> with dtype_policy_scope("mixed_bfloat16"):
    ...     layer = keras.layers.Dense(4)
    >>> layer.compute_dtype, layer.variable_dtype
    ('bfloat16', 'float32')
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def set_model_dtype_policy(model, policy):
    """Runs `model` (e.g. a loaded float32 VAE) in another precision.

    Every layer of `model` that has the model's own policy gets `policy`;
    layers with a policy of their own (e.g. a `dtype="float32"` layer of a
    user's network) keep it. Variables are not changed: switch only between
    policies whose variable dtype is the model's (float32 and
    `"mixed_bfloat16"`). Switch before the model runs: functions already
    traced (Keras's train / test / predict functions, the IWAE evaluation's)
    keep the precision they were traced with.

    Args:
        model: A Keras model (a `keras_vae.VAE`).
        policy: A policy name or `keras.DTypePolicy`.

    Returns:
        `model`.

    Raises:
        ValueError: `policy` has another variable dtype than the model.

    Example:

    >>> # vae = set_model_dtype_policy(keras_vae.saving.load_model(path), "mixed_bfloat16")
    """
    policy = keras.dtype_policies.get(policy)
    current = model.dtype_policy
    if policy.variable_dtype != current.variable_dtype:
        raise ValueError(
            f"Expected a dtype policy with the model's variable dtype "
            f"{current.variable_dtype} (e.g. float32 or mixed_bfloat16 for a float32 "
            f"model). Received: policy={policy.name!r} (variables in {policy.variable_dtype})"
        )
    for layer in model._flatten_layers(include_self=True):
        if layer.dtype_policy.name == current.name:
            layer.dtype_policy = policy
    return model


def cpu_flags(path="/proc/cpuinfo"):
    """The CPU's feature flags (a set of names), or None where not known."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def check_bfloat16_support(policy, flags=None):
    """Warns if `policy` computes in bfloat16 where no hardware does it.

    Without a GPU, bfloat16 matrix products are native on CPUs with
    AVX512_BF16 or AMX (/proc/cpuinfo flags `avx512_bf16`, `amx_bf16`);
    elsewhere TensorFlow still runs them (converting to float32 and back),
    correctly but likely slower than float32. Nothing is said where the
    flags cannot be read (not Linux) or a GPU is visible.

    Args:
        policy: A policy name or `keras.DTypePolicy`.
        flags: The CPU flags (default: `cpu_flags()`).

    Returns:
        True if a warning was given.
    """
    policy = keras.dtype_policies.get(policy)
    if policy.compute_dtype != "bfloat16":
        return False
    flags = cpu_flags() if flags is None else set(flags)
    if flags is None or flags.intersection(BFLOAT16_CPU_FLAGS):
        return False
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return False
    warnings.warn(
        f"dtype policy {policy.name!r}: this CPU has no native bfloat16 matrix "
        f"products (none of the /proc/cpuinfo flags {', '.join(BFLOAT16_CPU_FLAGS)}). "
        "It runs, converting to float32 and back, but is likely slower than "
        "'float32', and rounds as bfloat16 does all the same.",
        stacklevel=3,
    )
    return True
