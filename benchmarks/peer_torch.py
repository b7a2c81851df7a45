#!/usr/bin/env python
"""PyTorch peer: the benchmark VAE as a PyTorch user writes it, eager (or torch.compile).

Runs in its own virtualenv (benchmarks/.venvs/torch, `pip install
torch==2.13.0 numpy`), started by train_throughput.py; see _peer_main.py for
the command line and the protocol.

The model is the keras_vae benchmark model: encoder `nn.Linear` 784-512-256
(ReLU) -> 64 numbers, split into loc and a raw scale of a 32-d diagonal
Gaussian q(z|x), scale = softplus(raw) + 1e-4 (keras_vae's GaussianEncoder
parameterization); z = loc + scale * eps (reparameterized); decoder
`nn.Linear` 32-256-512 (ReLU) -> 784 Bernoulli logits l; log p(x|z) =
sum(x * l - softplus(l)); analytic KL(q || N(0, I)) = sum(0.5 * (loc^2 +
scale^2 - 1) - log scale); loss = batch mean of KL - log p(x|z).
`torch.optim.Adam(lr=1e-3)` with its defaults, a plain loop over pre-made
batch tensors (views of one array; batch i % num_batches at step i).
`torch.set_num_threads(--threads)`.

The weights start as Keras's Dense layers (and the JAX peer) start them:
Glorot-uniform kernels, zero biases (`nn.init.xavier_uniform_`, `zeros_`), as
a user porting a Keras model writes it. With PyTorch's default `nn.Linear`
initialization (smaller for these layers) the same loop trains more slowly at
first: a mean loss of 188.4 instead of 163.4 nats over steps 121-220 on the
benchmark data; the step costs the same either way. Initialized alike, the
loss column of train_throughput.py shows that all contenders train the same
model.

With `--compile`, the module is wrapped in `torch.compile` (default mode,
the inductor backend: forward and backward compiled, the optimizer step
eager), as the PyTorch tutorials do; compilation happens in the first steps,
i.e. in the warm-up.
"""

import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import _peer_main  # noqa: E402


def add_options(parser):
    parser.add_argument("--compile", action="store_true", help="wrap the model in torch.compile")


def build_model(torch):
    """The VAE module; `forward(x)` returns the loss (a scalar)."""
    from torch import nn
    from torch.nn import functional as F

    def mlp(sizes):
        layers = []
        for m, n in itertools.pairwise(sizes):
            layers += [nn.Linear(m, n), nn.ReLU()]
        return nn.Sequential(*layers[:-1])  # no activation after the last layer

    class VAE(nn.Module):
        def __init__(self):
            super().__init__()
            latent = _common.LATENT_DIM
            self.encoder = mlp((_common.EVENT_SIZE,) + _common.ENCODER_UNITS + (2 * latent,))
            self.decoder = mlp((latent,) + _common.DECODER_UNITS + (_common.EVENT_SIZE,))
            for module in self.modules():
                if isinstance(module, nn.Linear):  # Keras's Dense defaults
                    nn.init.xavier_uniform_(module.weight)
                    nn.init.zeros_(module.bias)

        def forward(self, x):
            loc, raw_scale = self.encoder(x).chunk(2, dim=-1)
            scale = F.softplus(raw_scale) + _common.MIN_SCALE
            z = loc + scale * torch.randn_like(loc)
            logits = self.decoder(z)
            reconstruction = (x * logits - F.softplus(logits)).sum(dim=-1)
            kl = (0.5 * (loc.square() + scale.square() - 1.0) - scale.log()).sum(dim=-1)
            return (kl - reconstruction).mean()

    return VAE()


def main(argv=None):
    args = _peer_main.parse_args(__doc__, argv, extra=add_options)
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    batches = list(torch.from_numpy(_peer_main.load_batches(args.data, args.batch_size)))
    model = build_model(torch)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    if args.compile:
        model = torch.compile(model)

    def run(steps):
        total = torch.zeros(())
        for i in range(steps):
            loss = model(batches[i % len(batches)])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.detach()
        return total.item() / steps

    info = {
        "versions": f"PyTorch {torch.__version__}, NumPy {np.__version__}",
        "threads": (
            f"torch.get_num_threads()={torch.get_num_threads()}, "
            f"get_num_interop_threads()={torch.get_num_interop_threads()}; "
            f"oneDNN (mkldnn) {'on' if torch.backends.mkldnn.is_available() else 'off'}; "
            f"CPU capability {torch.backends.cpu.get_cpu_capability()}; "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
        ),
        "mode": "torch.compile (inductor)" if args.compile else "eager",
    }
    return _peer_main.main(args, run, info)


if __name__ == "__main__":
    sys.exit(main())
