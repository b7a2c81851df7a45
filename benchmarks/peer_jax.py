#!/usr/bin/env python
"""JAX + optax peer: the benchmark VAE with its whole training step under `jax.jit`.

Runs in its own virtualenv (benchmarks/.venvs/jax, `pip install jax jaxlib
optax numpy`), started by train_throughput.py; see _peer_main.py for the
command line and the protocol.

The model is the keras_vae benchmark model, written in plain `jax.numpy`:
encoder Dense 784-512-256 (ReLU) -> 64 numbers, split into loc and a raw
scale of a 32-d diagonal Gaussian q(z|x), scale = softplus(raw) + 1e-4
(keras_vae's GaussianEncoder parameterization); z = loc + scale * eps;
decoder Dense 32-256-512 (ReLU) -> 784 Bernoulli logits l; log p(x|z) =
sum(x * l - softplus(l)); analytic KL(q || N(0, I)); loss = batch mean of
KL - log p(x|z). Glorot-uniform kernels and zero biases (Keras's Dense
defaults), `optax.adam(1e-3)`.

One `jax.jit` function does the whole step: split the PRNG key, the loss and
its gradient (`jax.value_and_grad`), the optax update, and the running sum
of the loss. The state (parameters, optimizer state, key, loss sum) is
carried through a Python loop over pre-made device arrays (one per batch,
`jax.device_put` once; batch i % num_batches at step i), its buffers donated
to the next step; the loop ends with `block_until_ready`.

Threads: XLA's CPU client sizes its thread pool by the CPUs the process may
run on. With `--threads` below that number, the process is restricted to
that many of them (`os.sched_setaffinity`) before JAX starts.
"""

import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import _peer_main  # noqa: E402


def limit_cpus(threads):
    """Restrict this process to `threads` of its usable CPUs (if fewer);
    returns a description for the report."""
    usable = sorted(os.sched_getaffinity(0))
    if threads >= len(usable):
        return f"all {len(usable)} usable CPUs (XLA's default thread pool)"
    os.sched_setaffinity(0, usable[:threads])
    return f"affinity restricted to CPUs {usable[:threads]} of {usable} (--threads {threads})"


def build_step(jax, optax):
    """`(init(key) -> state, step(state, x) -> state)`, step jitted."""
    import jax.numpy as jnp

    latent = _common.LATENT_DIM
    encoder_sizes = (_common.EVENT_SIZE,) + _common.ENCODER_UNITS + (2 * latent,)
    decoder_sizes = (latent,) + _common.DECODER_UNITS + (_common.EVENT_SIZE,)
    optimizer = optax.adam(1e-3)

    def dense_params(key, sizes):
        layers = []
        keys = jax.random.split(key, len(sizes) - 1)
        for layer_key, (m, n) in zip(keys, itertools.pairwise(sizes)):
            limit = (6.0 / (m + n)) ** 0.5
            kernel = jax.random.uniform(layer_key, (m, n), minval=-limit, maxval=limit)
            layers.append({"w": kernel, "b": jnp.zeros(n)})
        return layers

    def mlp(layers, h):
        for layer in layers[:-1]:
            h = jax.nn.relu(h @ layer["w"] + layer["b"])
        return h @ layers[-1]["w"] + layers[-1]["b"]

    def loss_fn(params, x, key):
        out = mlp(params["encoder"], x)
        loc, raw_scale = out[:, :latent], out[:, latent:]
        scale = jax.nn.softplus(raw_scale) + _common.MIN_SCALE
        z = loc + scale * jax.random.normal(key, loc.shape)
        logits = mlp(params["decoder"], z)
        reconstruction = jnp.sum(x * logits - jax.nn.softplus(logits), axis=-1)
        kl = jnp.sum(0.5 * (loc**2 + scale**2 - 1.0) - jnp.log(scale), axis=-1)
        return jnp.mean(kl - reconstruction)

    def init(key):
        key, encoder_key, decoder_key = jax.random.split(key, 3)
        params = {
            "encoder": dense_params(encoder_key, encoder_sizes),
            "decoder": dense_params(decoder_key, decoder_sizes),
        }
        return params, optimizer.init(params), key, jnp.zeros(())

    def step(state, x):
        params, opt_state, key, loss_sum = state
        key, sample_key = jax.random.split(key)
        loss, grads = jax.value_and_grad(loss_fn)(params, x, sample_key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, key, loss_sum + loss

    return init, jax.jit(step, donate_argnums=0)


def main(argv=None):
    args = _peer_main.parse_args(__doc__, argv)
    cpus = limit_cpus(args.threads)
    import jax
    import jax.numpy as jnp
    import jaxlib
    import numpy as np
    import optax

    init, step = build_step(jax, optax)
    batches = [jax.device_put(b) for b in _peer_main.load_batches(args.data, args.batch_size)]
    state = [init(jax.random.PRNGKey(args.seed))]  # the state the next run continues from

    def run(steps):
        params, opt_state, key, _ = state[0]
        current = params, opt_state, key, jnp.zeros(())
        for i in range(steps):
            current = step(current, batches[i % len(batches)])
        jax.block_until_ready(current)
        state[0] = current
        return float(current[3]) / steps

    info = {
        "versions": (
            f"JAX {jax.__version__}, jaxlib {jaxlib.__version__}, optax {optax.__version__}, "
            f"NumPy {np.__version__}"
        ),
        "threads": (
            f"{cpus}; backend {jax.default_backend()}, devices {jax.devices()}; "
            f"XLA_FLAGS={os.environ.get('XLA_FLAGS', 'unset')}"
        ),
        "mode": "jax.jit step, optax.adam",
    }
    return _peer_main.main(args, run, info)


if __name__ == "__main__":
    sys.exit(main())
