"""PNG figures of a trained VAE: reconstructions, samples, latent space, curves.

Every function takes a model (or a history) and an output path, writes one PNG
with matplotlib's Agg backend (no display needed) and returns the path.
"""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import scipy.stats  # noqa: E402

__all__ = [
    "plot_all",
    "plot_latent_space",
    "plot_manifold",
    "plot_reconstructions",
    "plot_samples",
    "plot_training_curves",
]


def _images(batch):
    """`[n, h, w, 1]` or `[n, h, w]` array -> `[n, h, w]` float array."""
    batch = np.asarray(batch, dtype=np.float32)
    if batch.ndim == 4 and batch.shape[-1] == 1:
        batch = batch[..., 0]
    if batch.ndim != 3:
        raise ValueError(
            "Expected a batch of grey images [n, height, width(, 1)]. "
            f"Received: shape={batch.shape}"
        )
    return batch


def _tile(images, rows, cols, pad=1):
    n, h, w = images.shape
    canvas = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad), np.float32)
    for i in range(min(n, rows * cols)):
        r, c = divmod(i, cols)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = images[i]
    return canvas


def _save(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_reconstructions(model, x, path, num_examples=12):
    """Inputs (top row) above their reconstructions (decoder mean at E_q[z])."""
    x = np.asarray(x)[:num_examples]
    recon = model.reconstruct(x).mean().numpy()
    rows = (_images(x), _images(recon))
    fig, axes = plt.subplots(2, 1, figsize=(num_examples * 0.9, 2.4))
    for ax, images, title in zip(
        axes, rows, ("input x", "reconstruction E[x | z = E_q[z|x]]")
    ):
        ax.imshow(_tile(images, 1, len(x)), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9, loc="left")
        ax.axis("off")
    return _save(fig, path)


def plot_samples(model, path, num_samples=64, seed=0):
    """Pixel probabilities of p(x|z) for z drawn from the prior, in a grid."""
    side = int(np.ceil(np.sqrt(num_samples)))
    images = _images(model.sample(num_samples, seed=seed).mean().numpy())
    fig, ax = plt.subplots(figsize=(side * 0.8, side * 0.8))
    ax.imshow(_tile(images, side, side), cmap="gray_r", vmin=0, vmax=1)
    ax.set_title(f"{num_samples} samples: E[x|z], z ~ p(z)", fontsize=9)
    ax.axis("off")
    return _save(fig, path)


def plot_latent_space(model, x, path, labels=None):
    """Posterior means E_q[z|x] in 2-D (the first two principal components
    when latent_dim > 2), coloured by label when labels are given."""
    means = model.encode(x).mean().numpy().astype(np.float64)
    if means.shape[1] > 2:
        centred = means - means.mean(axis=0)
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        coords = centred @ vt[:2].T
        explained = (s[:2] ** 2).sum() / (s**2).sum()
        xlabel, ylabel = "PC 1", "PC 2"
        title = f"posterior means, PCA of {means.shape[1]} dims ({explained:.0%} of variance)"
    else:
        coords = means if means.shape[1] == 2 else np.c_[means, np.zeros(len(means))]
        xlabel, ylabel = "z1", "z2"
        title = "posterior means E_q[z|x]"
    fig, ax = plt.subplots(figsize=(6, 5))
    if labels is not None and np.any(np.asarray(labels) >= 0):
        scatter = ax.scatter(coords[:, 0], coords[:, 1], c=labels, cmap="tab10", s=4, alpha=0.7)
        fig.colorbar(scatter, ax=ax, label="label")
    else:
        ax.scatter(coords[:, 0], coords[:, 1], s=4, alpha=0.5)
        title += " (dataset has no labels)"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_manifold(model, path, grid_size=15):
    """Decoder means over a grid of prior quantiles (2-D latent spaces only)."""
    if model.latent_dim != 2:
        raise ValueError(
            f"Expected a model with latent_dim=2 for a manifold plot. Received: latent_dim={model.latent_dim}"
        )
    quantiles = scipy.stats.norm.ppf(np.linspace(0.05, 0.95, grid_size))
    z = np.array([[a, b] for b in quantiles[::-1] for a in quantiles], np.float32)
    images = model.decode(z).mean().numpy()
    fig, ax = plt.subplots(figsize=(7, 7))
    ax.imshow(_tile(_images(images), grid_size, grid_size), cmap="gray_r", vmin=0, vmax=1)
    ax.set_title("E[x|z] over the 5%-95% quantiles of p(z) (z1 across, z2 up)", fontsize=9)
    ax.axis("off")
    return _save(fig, path)


def plot_training_curves(history, path):
    """loss, reconstruction, kl and elbo per epoch, training and validation."""
    keys = ("loss", "reconstruction", "kl", "elbo")
    if not any(k in history for k in keys):
        raise ValueError(
            f"Expected a history with some of {keys}. Received keys: {sorted(history)}"
        )
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, key in zip(axes.ravel(), keys):
        epochs = np.arange(1, len(history.get(key, [])) + 1)
        if key in history:
            ax.plot(epochs, history[key], label="train")
        if f"val_{key}" in history:
            ax.plot(np.arange(1, len(history[f"val_{key}"]) + 1), history[f"val_{key}"], label="validation")
        title = f"{key} (nats per example)"
        if key == "loss":  # what a warm-up run shows: the loss rises with beta
            title = "loss = -(reconstruction - beta * KL): rises while beta grows"
        elif key == "elbo":
            title = "elbo (nats per example): the objective to watch"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        if key in ("elbo", "reconstruction") and len(epochs) > 3:
            values = np.concatenate([history[k] for k in (key, f"val_{key}") if k in history][:2])
            ax.set_ylim(np.percentile(values, 5) - 5, values.max() + 2)
        if key == "loss" and len(epochs) > 3:
            values = np.concatenate([history[k] for k in ("loss", "val_loss") if k in history])
            ax.set_ylim(values.min() - 2, np.percentile(values, 95) + 5)
    if "beta" in history:
        twin = axes[0, 0].twinx()
        twin.plot(np.arange(1, len(history["beta"]) + 1), history["beta"], "k:", label="beta")
        twin.set_ylabel("beta (dotted)")
    fig.tight_layout()
    return _save(fig, path)


def plot_all(model, history, images, output_dir, labels=None, seed=0):
    """Every plot that applies; returns the paths.

    Args:
        model: A `keras_vae.VAE`.
        history: Per-epoch metrics (a dict of lists), or None.
        images: Held-out images `[n, *event_shape]` (e.g. 2000 validation
            images) for the reconstructions and the latent space.
        output_dir: Directory of the PNG files.
        labels: Optional labels of `images`, to colour the latent space.
        seed: Seed of the samples from the prior.
    """
    images = np.asarray(images)
    labels = None if labels is None else np.asarray(labels)
    written = [
        plot_reconstructions(model, images, os.path.join(output_dir, "reconstructions.png")),
        plot_samples(model, os.path.join(output_dir, "samples.png"), seed=seed),
        plot_latent_space(model, images, os.path.join(output_dir, "latent_space.png"), labels=labels),
    ]
    if model.latent_dim == 2:
        written.append(plot_manifold(model, os.path.join(output_dir, "manifold.png")))
    if history:
        written.append(plot_training_curves(history, os.path.join(output_dir, "training_curves.png")))
    return written
