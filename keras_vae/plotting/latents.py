"""Figures of the latent space: the codes of images, the 2-D manifold,
traversals of one unit at a time and interpolations between two codes.

`latent_traversals` and `latent_interpolations` return the decoded arrays
that `plot_traversals` and `plot_interpolations` draw.
"""

import matplotlib.pyplot as plt
import numpy as np
import scipy.stats

from keras_vae import evaluation
from keras_vae import objectives
from keras_vae._internal.validation import check_positive_int
from keras_vae.plotting._canvas import as_images
from keras_vae.plotting._canvas import draw_grid
from keras_vae.plotting._canvas import save
from keras_vae.plotting._canvas import tile_images

__all__ = [
    "latent_interpolations",
    "latent_traversals",
    "plot_interpolations",
    "plot_latent_space",
    "plot_manifold",
    "plot_traversals",
]


def plot_latent_space(model, x, path, labels=None):
    """Posterior means E_q[z|x] in 2-D (the first two principal components
    when latent_dim > 2), coloured by label when labels are given."""
    means = objectives.posterior_location(model.encode(x)).numpy().astype(np.float64)
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
    return save(fig, path)


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
    ax.imshow(tile_images(as_images(images), grid_size, grid_size), cmap="gray_r", vmin=0, vmax=1)
    ax.set_title("E[x|z] over the 5%-95% quantiles of p(z) (z1 across, z2 up)", fontsize=9)
    ax.axis("off")
    return save(fig, path)


def latent_traversals(model, x, num_dims=10, num_steps=9, span=3.0, index=0):
    """Decoder means along one latent unit at a time, the most active first.

    The code of the image `x[index]` is its posterior mean E_q[z|x]. Row i
    moves unit `dims[i]` alone, by `offsets` times that unit's standard
    deviation under the prior (1 for N(0, I); the mixture's for a learned
    prior), and decodes each code. The rows are the `num_dims` units of
    largest activity: the variance over `x` of E_q[z_j|x] (Burda et al.
    2016; `keras_vae.evaluation.active_units` measures it).

    Args:
        model: A `keras_vae.VAE`.
        x: Images `[n, *event_shape]`; the activity is measured over all
            of them.
        num_dims: Number of rows (at most `latent_dim`).
        num_steps: Codes per row, at evenly spaced offsets from `-span` to
            `span` (odd: the middle one is the reconstruction of the image).
        span: The largest offset, in prior standard deviations.
        index: Which image of `x` is traversed.

    Returns:
        A dict of NumPy arrays: `images` `[rows, num_steps, *event_shape]`
        (decoder means), `codes` `[rows, num_steps, latent_dim]` (what was
        decoded), `dims` `[rows]` (the unit of each row), `activity`
        `[latent_dim]`, `num_active` (the count of active units), `offsets`
        `[num_steps]`, `prior_scale` `[latent_dim]`, `code` `[latent_dim]`
        (the posterior mean of `x[index]`).

    Example:

    >>> t = latent_traversals(vae, x_val[:2000], num_dims=5)  # doctest: +SKIP
    >>> t["images"].shape  # doctest: +SKIP
    (5, 9, 28, 28, 1)
    """
    check_positive_int("num_dims", num_dims)
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"Expected `num_steps` to be an integer >= 2. Received: num_steps={num_steps!r}")
    x = np.asarray(x)
    if not 0 <= index < len(x):
        raise ValueError(f"Expected 0 <= index < {len(x)} (the number of images). Received: index={index}")
    means = objectives.posterior_location(model.encode(x)).numpy()
    num_active, activity = evaluation.active_units(means)
    dims = np.argsort(-activity, kind="stable")[:num_dims]
    offsets = np.linspace(-span, span, num_steps)
    prior_scale = np.asarray(model.prior.distribution().stddev(), np.float64)
    code = means[index]
    codes = np.tile(code.astype(np.float64), (len(dims), num_steps, 1))
    for row, dim in enumerate(dims):
        codes[row, :, dim] += offsets * prior_scale[dim]
    codes = codes.astype(means.dtype)
    images = model.decode(codes.reshape(-1, codes.shape[-1])).mean().numpy()
    return {
        "images": images.reshape(codes.shape[:2] + images.shape[1:]),
        "codes": codes,
        "dims": dims,
        "activity": activity,
        "num_active": num_active,
        "offsets": offsets,
        "prior_scale": prior_scale,
        "code": code,
    }


def plot_traversals(model, x, path, num_dims=10, num_steps=9, span=3.0, index=0):
    """Latent traversals of one image: a row per unit, the most active first.

    The input image on the left; in row i, the decoder means E[x|z] with z
    its posterior mean and unit `dims[i]` moved from `-span` to `+span` prior
    standard deviations (the middle column is the reconstruction). Rows are
    labelled with the unit and its activity Var_x(E_q[z_j|x]) over `x`;
    inactive units (by `keras_vae.evaluation.active_units`) say so. See
    `latent_traversals` for the arguments.
    """
    t = latent_traversals(model, x, num_dims=num_dims, num_steps=num_steps, span=span, index=index)
    rows = len(t["dims"])
    grid = as_images(t["images"].reshape((-1,) + t["images"].shape[2:]))
    grid = grid.reshape((rows, num_steps) + grid.shape[1:])
    inputs = np.full((rows, 1) + grid.shape[2:], np.nan, np.float32)
    inputs[0, 0] = as_images(np.asarray(x)[index : index + 1])[0]
    row_labels = [
        f"z{dim}: {t['activity'][dim]:.3g}" + ("" if rank < t["num_active"] else " (inactive)")
        for rank, dim in enumerate(t["dims"])
    ]
    col_labels = ["input"] + [f"{o:+.3g}σ" for o in t["offsets"]]
    fig, ax = plt.subplots(figsize=(0.6 * (num_steps + 2) + 1.5, 0.6 * rows + 1.2))
    draw_grid(ax, np.concatenate([inputs, grid], axis=1), row_labels, col_labels, gap_after=(0,))
    ax.set_xlabel("z_j moved from E_q[z_j|x] by k prior standard deviations", fontsize=8)
    ax.set_ylabel("unit j: activity Var_x(E_q[z_j|x])", fontsize=8)
    ax.set_title(
        f"Traversals: the {rows} most active of {model.latent_dim} units "
        f"({t['num_active']} active); E[x|z] with one unit moved",
        fontsize=9,
    )
    return save(fig, path)


def _slerp(z_a, z_b, t):
    """Spherical interpolation of codes `[n, d]` at weights `t` -> `[n, len(t), d]`.

    The direction moves along the great circle from that of `z_a` to that of
    `z_b` at constant angular speed, the norm linearly from |z_a| to |z_b|;
    where the directions are (anti)parallel, the path is the straight line.
    """
    norm_a = np.linalg.norm(z_a, axis=-1, keepdims=True)
    norm_b = np.linalg.norm(z_b, axis=-1, keepdims=True)
    unit_a = z_a / np.maximum(norm_a, 1e-12)
    unit_b = z_b / np.maximum(norm_b, 1e-12)
    omega = np.arccos(np.clip(np.sum(unit_a * unit_b, axis=-1, keepdims=True), -1.0, 1.0))
    sin = np.sin(omega)
    parallel = sin < 1e-6
    safe = np.where(parallel, 1.0, sin)
    weight_a = np.where(parallel, 1 - t, np.sin((1 - t) * omega) / safe)
    weight_b = np.where(parallel, t, np.sin(t * omega) / safe)
    direction = weight_a[..., None] * unit_a[:, None] + weight_b[..., None] * unit_b[:, None]
    norm = (1 - t) * norm_a + t * norm_b
    return norm[..., None] * direction


def latent_interpolations(model, x_a, x_b, num_steps=8, spherical=False):
    """Decoder means along paths between the codes of pairs of images.

    The codes are the posterior means z_a = E_q[z|x_a], z_b = E_q[z|x_b];
    the path is `(1 - t) z_a + t z_b` for `num_steps` weights t from 0 to 1
    (or the spherical interpolation, `spherical=True`), so its ends are the
    reconstructions of `x_a` and `x_b`.

    Args:
        model: A `keras_vae.VAE`.
        x_a: Images `[n, *event_shape]`, where the paths start.
        x_b: Images of the same shape, where they end.
        num_steps: Codes per path, ends included (>= 2).
        spherical: Move the direction along the great circle (at constant
            angular speed) and the norm linearly, instead of the straight line.

    Returns:
        A dict of NumPy arrays: `images` `[n, num_steps, *event_shape]`
        (decoder means), `codes` `[n, num_steps, latent_dim]`, `weights`
        `[num_steps]` (t).

    Example:

    >>> path = latent_interpolations(vae, x[:4], x[4:8], num_steps=6)  # doctest: +SKIP
    >>> path["images"].shape  # doctest: +SKIP
    (4, 6, 28, 28, 1)
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"Expected `num_steps` to be an integer >= 2. Received: num_steps={num_steps!r}")
    x_a, x_b = np.asarray(x_a), np.asarray(x_b)
    if x_a.shape != x_b.shape:
        raise ValueError(
            f"Expected x_a and x_b of the same shape. Received: x_a.shape={x_a.shape}, x_b.shape={x_b.shape}"
        )
    z_a = objectives.posterior_location(model.encode(x_a)).numpy()
    z_b = objectives.posterior_location(model.encode(x_b)).numpy()
    weights = np.linspace(0.0, 1.0, num_steps)
    a, b = z_a.astype(np.float64), z_b.astype(np.float64)
    if spherical:
        codes = _slerp(a, b, weights)
    else:
        codes = (1 - weights)[None, :, None] * a[:, None] + weights[None, :, None] * b[:, None]
    codes = codes.astype(z_a.dtype)
    images = model.decode(codes.reshape(-1, codes.shape[-1])).mean().numpy()
    return {"images": images.reshape(codes.shape[:2] + images.shape[1:]), "codes": codes, "weights": weights}


def plot_interpolations(model, x_a, x_b, path, num_steps=8, spherical=False):
    """One row per pair: x_a, the decoder means along the path between the
    codes of x_a and x_b, then x_b. See `latent_interpolations`."""
    result = latent_interpolations(model, x_a, x_b, num_steps=num_steps, spherical=spherical)
    pairs = len(result["images"])
    decoded = as_images(result["images"].reshape((-1,) + result["images"].shape[2:]))
    decoded = decoded.reshape((pairs, num_steps) + decoded.shape[1:])
    grid = np.concatenate([as_images(x_a)[:, None], decoded, as_images(x_b)[:, None]], axis=1)
    col_labels = ["x_a"] + [f"t={t:.2g}" for t in result["weights"]] + ["x_b"]
    fig, ax = plt.subplots(figsize=(0.6 * (num_steps + 3) + 1, 0.6 * pairs + 1.2))
    draw_grid(ax, grid, [str(i + 1) for i in range(pairs)], col_labels, gap_after=(0, num_steps))
    ax.set_ylabel("pair", fontsize=8)
    how = "great circle" if spherical else "z = (1 - t) z_a + t z_b"
    ax.set_title(
        f"Interpolations between posterior means z_a = E_q[z|x_a], z_b = E_q[z|x_b] ({how}): E[x|z]",
        fontsize=9,
    )
    return save(fig, path)
