"""PNG figures of a trained VAE: reconstructions, samples, latent space, curves.

Every `plot_*` function takes a model (or a history, or a beta sweep's table)
and an output path, writes one PNG with matplotlib's Agg backend (no display
needed) and returns the path.
`latent_traversals` and `latent_interpolations` return the decoded arrays that
`plot_traversals` and `plot_interpolations` draw.
"""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import scipy.stats  # noqa: E402

from keras_vae._internal.grid import tile  # noqa: E402

from keras_vae import evaluation  # noqa: E402
from keras_vae import objectives  # noqa: E402
from keras_vae._internal.validation import check_positive_int  # noqa: E402

__all__ = [
    "latent_interpolations",
    "latent_traversals",
    "plot_all",
    "plot_codebook_usage",
    "plot_interpolations",
    "plot_latent_space",
    "plot_manifold",
    "plot_rate_distortion",
    "plot_reconstructions",
    "plot_samples",
    "plot_samples_per_beta",
    "plot_training_curves",
    "plot_traversals",
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
    """The plots' grids: `rows` x `cols` frames, 1-pixel frames of value 1."""
    return tile(images, cols, rows=rows, pad=pad, pad_value=1.0)


def _save(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _is_vq(model):
    """Whether `model` has discrete codes (a `keras_vae.VQVAE`)."""
    return hasattr(model, "quantizer")


def plot_codebook_usage(model, x, path, num_grids=8):
    """How a VQ-VAE uses its codebook on images `x`: the frequency of each
    code, most used first (with the perplexity and the codes in use), and
    the code grids of the first `num_grids` images, one colour per code."""
    codes = model.code_indices(np.asarray(x))
    counts = np.bincount(codes.reshape(-1), minlength=model.num_codes)
    order = np.argsort(-counts, kind="stable")
    p = counts / counts.sum()
    nonzero = p[p > 0]
    perplexity = float(np.exp(-np.sum(nonzero * np.log(nonzero))))
    fig = plt.figure(figsize=(11, 4.2))
    ax = fig.add_axes([0.06, 0.42, 0.9, 0.48])
    ax.bar(np.arange(model.num_codes), p[order], width=1.0, color="C0")
    ax.set_xlim(-0.5, model.num_codes - 0.5)
    ax.set_xlabel("codes, most used first")
    ax.set_ylabel("share of the grid positions")
    ax.set_title(
        f"codebook usage on {len(codes)} images: {int((counts > 0).sum())} of {model.num_codes} codes "
        f"in use, perplexity {perplexity:.1f}",
        fontsize=10,
    )
    grids = codes[:num_grids]
    if grids.ndim == 3:
        for i, grid in enumerate(grids):
            cell = fig.add_axes([0.06 + i * 0.9 / num_grids, 0.02, 0.9 / num_grids * 0.85, 0.26])
            cell.imshow(grid, cmap="tab20", vmin=0, vmax=max(model.num_codes - 1, 1), interpolation="nearest")
            cell.set_xticks([])
            cell.set_yticks([])
            if i == 0:
                cell.set_ylabel("code grids", fontsize=8)
    return _save(fig, path)


def plot_reconstructions(model, x, path, num_examples=12):
    """Inputs (top row) above their reconstructions (decoder mean at E_q[z])."""
    x = np.asarray(x)[:num_examples]
    recon = model.reconstruct(x).mean().numpy()
    rows = (_images(x), _images(recon))
    fig, axes = plt.subplots(2, 1, figsize=(num_examples * 0.9, 2.4))
    what = "E[x | z_q(x)], the nearest codes" if _is_vq(model) else "E[x | z = E_q[z|x]]"
    for ax, images, title in zip(
        axes, rows, ("input x", f"reconstruction {what}")
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
    drawn = "E[x|z_q(k)], codes k ~ p(k)" if _is_vq(model) else "E[x|z], z ~ p(z)"
    ax.set_title(f"{num_samples} samples: {drawn}", fontsize=9)
    ax.axis("off")
    return _save(fig, path)


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


def _grid_canvas(grid, gap_after=(), pad=1):
    """Images `[rows, cols, h, w]` laid out in one canvas.

    Each image gets a `pad`-pixel frame (drawn black); a white gap half an
    image wide follows each column index in `gap_after`; a cell whose image
    is all NaN stays white (no image there). Returns `(canvas, x, y)`: the
    canvas (NaN where white) and the pixel centres of the columns and rows.
    """
    rows, cols, h, w = grid.shape
    gap = max(2, w // 2)
    lefts, x = [], pad
    for c in range(cols):
        lefts.append(x)
        x += w + pad + (gap if c in gap_after else 0)
    tops = [pad + r * (h + pad) for r in range(rows)]
    canvas = np.full((pad + rows * (h + pad), x), np.nan, np.float32)
    for r, top in enumerate(tops):
        for c, left in enumerate(lefts):
            if np.all(np.isnan(grid[r, c])):
                continue
            canvas[top - pad : top + h + pad, left - pad : left + w + pad] = 1.0
            canvas[top : top + h, left : left + w] = grid[r, c]
    return canvas, np.asarray(lefts) + (w - 1) / 2, np.asarray(tops) + (h - 1) / 2


def _draw_grid(ax, grid, row_labels, col_labels, gap_after=()):
    """Draws `_grid_canvas(grid, gap_after)` on `ax`, rows and columns labelled."""
    canvas, x, y = _grid_canvas(grid, gap_after)
    cmap = matplotlib.colormaps["gray_r"].with_extremes(bad="white")
    ax.imshow(canvas, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(x, col_labels, fontsize=7)
    ax.set_yticks(y, row_labels, fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)


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
    grid = _images(t["images"].reshape((-1,) + t["images"].shape[2:]))
    grid = grid.reshape((rows, num_steps) + grid.shape[1:])
    inputs = np.full((rows, 1) + grid.shape[2:], np.nan, np.float32)
    inputs[0, 0] = _images(np.asarray(x)[index : index + 1])[0]
    row_labels = [
        f"z{dim}: {t['activity'][dim]:.3g}" + ("" if rank < t["num_active"] else " (inactive)")
        for rank, dim in enumerate(t["dims"])
    ]
    col_labels = ["input"] + [f"{o:+.3g}σ" for o in t["offsets"]]
    fig, ax = plt.subplots(figsize=(0.6 * (num_steps + 2) + 1.5, 0.6 * rows + 1.2))
    _draw_grid(ax, np.concatenate([inputs, grid], axis=1), row_labels, col_labels, gap_after=(0,))
    ax.set_xlabel("z_j moved from E_q[z_j|x] by k prior standard deviations", fontsize=8)
    ax.set_ylabel("unit j: activity Var_x(E_q[z_j|x])", fontsize=8)
    ax.set_title(
        f"Traversals: the {rows} most active of {model.latent_dim} units "
        f"({t['num_active']} active); E[x|z] with one unit moved",
        fontsize=9,
    )
    return _save(fig, path)


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
    decoded = _images(result["images"].reshape((-1,) + result["images"].shape[2:]))
    decoded = decoded.reshape((pairs, num_steps) + decoded.shape[1:])
    grid = np.concatenate([_images(x_a)[:, None], decoded, _images(x_b)[:, None]], axis=1)
    col_labels = ["x_a"] + [f"t={t:.2g}" for t in result["weights"]] + ["x_b"]
    fig, ax = plt.subplots(figsize=(0.6 * (num_steps + 3) + 1, 0.6 * pairs + 1.2))
    _draw_grid(ax, grid, [str(i + 1) for i in range(pairs)], col_labels, gap_after=(0, num_steps))
    ax.set_ylabel("pair", fontsize=8)
    how = "great circle" if spherical else "z = (1 - t) z_a + t z_b"
    ax.set_title(
        f"Interpolations between posterior means z_a = E_q[z|x_a], z_b = E_q[z|x_b] ({how}): E[x|z]",
        fontsize=9,
    )
    return _save(fig, path)


# The training-curve panels: history key and on which side its bad epochs lie
# (where a long run's worst 5% may fall off the axis); titles in `_curve_titles`.
_CURVES = (("loss", "high"), ("reconstruction", None), ("kl", None), ("elbo", "low"))
# A VQ-VAE's panels (objective "vqvae"): its KL is the constant N log K while
# it trains, so the codebook's losses and use take that panel and the ELBO's.
_VQ_CURVES = (("loss", "high"), ("reconstruction", None), ("commitment_loss", None), ("perplexity", None))


def _curve_titles(objective, kl_is_analytic):
    """{panel key: title} for a run trained on `objective` ("elbo", "iwae")
    whose KL is analytic (True), a Monte Carlo estimate (False) or unknown (None)."""
    kl = {
        True: "KL(q(z|x) || p(z)), analytic: the rate",
        False: "KL(q(z|x) || p(z)): Monte Carlo estimate E_q[log q - log p]",
        None: "KL(q(z|x) || p(z)): the rate",
    }[kl_is_analytic]
    if objective == "vqvae":
        return {
            "loss": "loss = -log p(x|z_q) + codebook and commitment losses",
            "reconstruction": "reconstruction log p(x|z_q(x))",
            "commitment_loss": "commitment loss beta ||z_e - sg[e]||^2",
            "perplexity": "codebook perplexity exp(H(code frequencies))",
        }
    return {
        "loss": f"loss = {objectives.loss_formula(objective)}: rises while beta grows",
        "reconstruction": "reconstruction E_q[log p(x|z)]",  # falls as beta grows
        "kl": kl,
        "elbo": "ELBO: the objective to watch" if objective == "elbo"
        else "ELBO and IWAE bound (dashed): the objective to watch",
    }


def _curve_limits(values, worse=None):
    """Y-limits of per-epoch curves that keep the later epochs legible.

    The first epoch of a VAE is often off by orders of magnitude (an
    untrained decoder, a KL at beta = 0): in a history of 3 epochs or more,
    epoch 1 is left off the axis when including it would stretch the axis to
    more than 3 times the range of the later epochs. In runs of more than 20
    epochs the worst 5% of the later epochs (on the `worse` side, "low" or
    "high") may fall off too; the best values never do.

    Args:
        values: `[num_curves, num_epochs]` array, NaN where a curve has no value.
        worse: "low", "high" or None.

    Returns:
        `(bottom, top, off_scale)` with `off_scale` the 1-based epochs with a
        value off the axis; None if there is no finite value.
    """
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    later = values[:, 1:][np.isfinite(values[:, 1:])]
    if values.shape[1] < 3 or later.size == 0:
        low, high = finite.min(), finite.max()
    else:
        low, high = later.min(), later.max()
        if values.shape[1] > 20:
            if worse == "low":
                low = np.percentile(later, 5)
            elif worse == "high":
                high = np.percentile(later, 95)
        first = values[:, 0][np.isfinite(values[:, 0])]
        floor = max(high - low, 0.01 * max(abs(low), abs(high)), 1e-6)
        if first.size and max(high, first.max()) - min(low, first.min()) <= 3 * floor:
            low, high = min(low, first.min()), max(high, first.max())
    margin = 0.06 * (high - low) if high > low else max(0.5, 0.01 * abs(high))
    with np.errstate(invalid="ignore"):
        outside = (values < low) | (values > high)
    off_scale = [int(e) + 1 for e in np.flatnonzero(outside.any(axis=0))]
    return low - margin, high + margin, off_scale


def _epoch_ranges(epochs):
    """[1, 2, 3, 7] -> "1-3, 7"."""
    parts, start = [], None
    for i, e in enumerate(epochs):
        start = e if start is None else start
        if i + 1 == len(epochs) or epochs[i + 1] != e + 1:
            parts.append(f"{start}-{e}" if e > start else str(e))
            start = None
    return ", ".join(parts)


def _panel_curves(history, key, objective):
    """[(legend name, values, line style)] of one panel: training and
    validation, and on the ELBO panel of an IWAE run the IWAE bound dashed."""
    names = [(key, "")]
    if key == "elbo" and objective == "iwae":
        names.append(("iwae", " IWAE"))
    curves = []
    for k, suffix in names:
        for i, (name, column) in enumerate((("train", k), ("validation", f"val_{k}"))):
            if column in history:
                style = {"color": f"C{i}", "linestyle": "--" if suffix else "-"}
                curves.append((name + suffix, np.asarray(history[column], np.float64), style))
    return curves


def _training_curves_figure(history, objective=None, kl_is_analytic=None):
    """The figure of `plot_training_curves` (see there), not saved."""
    if objective is None and ("perplexity" in history or "codes_in_use" in history):
        objective = "vqvae"
    curves_of = _VQ_CURVES if objective == "vqvae" else _CURVES
    keys = tuple(key for key, _ in curves_of)
    if not any(k in history for k in keys):
        raise ValueError(
            f"Expected a history with some of {keys}. Received keys: {sorted(history)}"
        )
    if objective is None:
        objective = "iwae" if "iwae" in history or "val_iwae" in history else "elbo"
    titles = _curve_titles(objective, kl_is_analytic)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    handles = {}
    for ax, (key, worse) in zip(axes.ravel(), curves_of):
        title = titles[key]
        curves = _panel_curves(history, key, objective)
        length = max((len(v) for _, v, _ in curves), default=0)
        values = np.full((max(len(curves), 1), max(length, 1)), np.nan)
        for i, (_, v, _) in enumerate(curves):
            values[i, : len(v)] = v
        limits = _curve_limits(values, worse) if curves else None
        bottom, top = (limits[0], limits[1]) if limits is not None else (-np.inf, np.inf)
        for name, v, style in curves:
            # Epochs before the curve first enters the axis are not drawn: a
            # segment from an off-scale first epoch would be a vertical spike.
            on_axis = np.flatnonzero((v >= bottom) & (v <= top))
            start = int(on_axis[0]) if on_axis.size else len(v)
            epochs = np.arange(1, len(v) + 1)
            marker = "o" if length <= 30 else None
            (line,) = ax.plot(epochs[start:], v[start:], marker=marker, markersize=3, label=name, **style)
            handles.setdefault(name, line)
        if limits is not None:
            off_scale = limits[2]
            ax.set_ylim(bottom, top)
            if len(off_scale) == 1:
                (epoch,) = off_scale
                shown = ", ".join(f"{name} {v[epoch - 1]:.4g}" for name, v, _ in curves if len(v) >= epoch)
                title += f"\n(epoch {epoch} off scale: {shown})"
            elif off_scale:
                title += f"\n(off scale: epochs {_epoch_ranges(off_scale)})"
        elif not curves:
            ax.text(0.5, 0.5, f"no {key} in the history", ha="center", va="center", transform=ax.transAxes)
            ax.set_yticks([])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("codes" if key == "perplexity" else "nats per example")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(1 - max(0.5, 0.03 * length), max(length, 1) + max(0.5, 0.03 * length))
        ax.grid(alpha=0.3)
    if "beta" in history:
        twin = axes[0, 0].twinx()
        beta = history["beta"]
        (handles["beta (KL weight, right axis)"],) = twin.plot(
            np.arange(1, len(beta) + 1), beta, ":", color="0.3", marker="." if len(beta) <= 30 else None
        )
        twin.set_ylim(0, 1.05 * max(1.0, np.nanmax(beta)))
        twin.set_ylabel("beta (dotted)")
    # One legend for all panels, above them: it hides no curve.
    fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return fig


def plot_training_curves(history, path, objective=None, kl_is_analytic=None):
    """loss, reconstruction, KL and ELBO per epoch, training and validation.

    Each panel is in nats per example, against the epoch (from 1); the loss
    panel also shows beta, the KL weight (right axis), and says which loss
    the objective minimizes; an IWAE run's ELBO panel also draws its IWAE
    bound (dashed), the objective it trains. One legend above the panels.
    The y-axes keep the later epochs legible: a first epoch off by orders
    of magnitude (and, in runs of over 20 epochs, the worst 5% of the later
    ones) is left off the axis, and the panel's title says which epochs are
    off scale (see `_curve_limits`); a curve is drawn from the first epoch
    on its axis.

    Args:
        history: Per-epoch lists (`keras_vae.training.read_history`), with
            some of `loss`, `reconstruction`, `kl`, `elbo`, `iwae`, their
            `val_` versions and `beta`.
        path: The PNG file to write.
        objective: "elbo" or "iwae" (`VAE.objective`); default: "iwae" if
            the history has an `iwae` column, else "elbo".
        kl_is_analytic: `VAE.kl_is_analytic`: the KL panel says "analytic"
            or "Monte Carlo estimate" (learned priors); None: says neither.

    Returns:
        `path`.

    Example:

    >>> plot_training_curves({"loss": [150.0, 120.0], "elbo": [-150.0, -120.0]},
    ...                      "/tmp/curves.png")  # doctest: +SKIP
    '/tmp/curves.png'
    """
    return _save(_training_curves_figure(history, objective, kl_is_analytic), path)


def plot_all(model, history, images, output_dir, labels=None, seed=0):
    """Every plot that applies; returns the paths.

    For a `keras_vae.VQVAE`: the reconstructions, samples, codebook usage
    (`plot_codebook_usage`) and training curves.

    Args:
        model: A `keras_vae.VAE`, `HierarchicalVAE` or `VQVAE`.
        history: Per-epoch metrics (a dict of lists), or None.
        images: Held-out images `[n, *event_shape]` (e.g. 2000 validation
            images) for the reconstructions, the latent space, the
            traversals (of the first image; activity over all) and the
            interpolations (between the first 8 images and the next 8).
        output_dir: Directory of the PNG files.
        labels: Optional labels of `images`, to colour the latent space.
        seed: Seed of the samples from the prior.
    """
    images = np.asarray(images)
    labels = None if labels is None else np.asarray(labels)
    if _is_vq(model):
        # Discrete codes: no latent space, traversals or interpolations of z.
        written = [
            plot_reconstructions(model, images, os.path.join(output_dir, "reconstructions.png")),
            plot_samples(model, os.path.join(output_dir, "samples.png"), seed=seed),
            plot_codebook_usage(model, images, os.path.join(output_dir, "codebook_usage.png")),
        ]
        if history:
            written.append(plot_training_curves(history, os.path.join(output_dir, "training_curves.png")))
        return written
    written = [
        plot_reconstructions(model, images, os.path.join(output_dir, "reconstructions.png")),
        plot_samples(model, os.path.join(output_dir, "samples.png"), seed=seed),
        plot_latent_space(model, images, os.path.join(output_dir, "latent_space.png"), labels=labels),
        plot_traversals(model, images, os.path.join(output_dir, "traversals.png")),
    ]
    pairs = min(8, len(images) // 2)
    if pairs:
        written.append(
            plot_interpolations(
                model, images[:pairs], images[pairs : 2 * pairs], os.path.join(output_dir, "interpolations.png")
            )
        )
    if model.latent_dim == 2:
        written.append(plot_manifold(model, os.path.join(output_dir, "manifold.png")))
    if history:
        written.append(
            plot_training_curves(
                history,
                os.path.join(output_dir, "training_curves.png"),
                objective=getattr(model, "objective", None),
                kl_is_analytic=getattr(model, "kl_is_analytic", None),
            )
        )
    return written


def _label_position(xs, c, limits, avoid):
    """Where on the segment `xs` of the line D = c - R to put its label.

    The place farthest (in axes fractions) from the points `avoid`, a list of
    `(R, D)`: the runs' points and the labels placed so far, so that no label
    covers a point, its beta or another label. Returns `(R, [anchor and
    middle of the label])`, the latter to add to `avoid`.
    """
    x0, x1, y0, y1 = limits
    scale = np.array([x1 - x0, y1 - y0])
    points = (np.asarray(avoid, np.float64) - [x0, y0]) / scale
    best, best_distance, best_ends = None, -1.0, None
    for x in xs[0] + np.linspace(0.03, 0.75, 25) * (xs[1] - xs[0]):
        # The label runs down the line from its anchor: its middle counts too.
        middle = x + 0.08 * (x1 - x0)
        ends = np.array([[x, c - x], [middle, c - middle]])
        distance = np.min(np.linalg.norm(points[:, None] - ((ends - [x0, y0]) / scale)[None], axis=-1))
        if distance > best_distance:
            best, best_distance, best_ends = x, distance, ends
    return best, list(best_ends)


def _rate_distortion_figure(table, title=None):
    """The figure of `plot_rate_distortion` (not saved, not closed)."""
    rows = sorted(table, key=lambda row: row["beta"])
    if not rows or any(k not in row for row in rows for k in ("beta", "rate", "distortion")):
        raise ValueError(
            "Expected a table of rows with beta, rate and distortion (at least one row). "
            f"Received: {list(table)!r}"
        )
    beta, rate, distortion = (np.array([row[k] for row in rows], np.float64) for k in ("beta", "rate", "distortion"))
    total = rate + distortion  # -ELBO
    pad_x = max(0.1 * np.ptp(rate), 1.0)
    pad_y = max(0.1 * np.ptp(distortion), 1.0)
    x0, x1 = rate.min() - pad_x, rate.max() + pad_x
    y0, y1 = distortion.min() - pad_y, distortion.max() + pad_y
    fig, ax = plt.subplots(figsize=(7, 5.5))
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.autoscale(False)
    # Lines of constant ELBO: D + R = c, slope -1; round values of c whose
    # range covers every point's D + R.
    levels = matplotlib.ticker.MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]).tick_values(total.min(), total.max())
    label = "constant ELBO = -(D + R) (slope -1)"
    avoid = list(zip(rate, distortion))
    for c in levels:
        xs = np.array([max(x0, c - y1), min(x1, c - y0)])  # the part inside the axes
        if xs[0] >= xs[1]:
            continue
        ax.plot(xs, c - xs, "--", color="0.55", lw=1, gid="iso_elbo", label=label)
        label = "_nolegend_"
        x, placed = _label_position(xs, c, (x0, x1, y0, y1), avoid)
        avoid += placed
        ax.text(
            x, c - x, f"ELBO = {-c:g}", rotation=-45, transform_rotates_text=True,
            rotation_mode="anchor", ha="left", va="bottom", fontsize=8, color="0.35",
            gid="iso_elbo_label",
        )  # fmt: skip
    ax.plot(rate, distortion, "-", color="C0", alpha=0.35, lw=1, zorder=2)
    ax.scatter(rate, distortion, s=36, color="C0", zorder=3, gid="runs", label="one run per beta (labelled)")
    best = int(np.argmin(total))
    ax.scatter(
        rate[best], distortion[best], s=150, facecolors="none", edgecolors="C3", zorder=3,
        gid="best", label=f"best ELBO: {-total[best]:.2f} nats (beta = {beta[best]:g})",
    )  # fmt: skip
    for b, r, d in zip(beta, rate, distortion):
        ax.annotate(f"β = {b:g}", (r, d), xytext=(6, 5), textcoords="offset points", fontsize=9, gid="beta_label")
    ax.set_xlabel("rate R = KL(q(z|x) || p(z))  (nats per example)")
    ax.set_ylabel("distortion D = -E_q[log p(x|z)]  (nats per example)")
    ax.set_title(title or "rate-distortion plane (Alemi et al. 2018)", fontsize=10)
    ax.grid(alpha=0.2)
    # Outside the axes: the legend hides no point.
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    return fig


def plot_rate_distortion(table, path, title=None):
    """Distortion against rate, one point per beta, over lines of constant ELBO.

    The picture of Alemi et al. 2018 ("Fixing a Broken ELBO"): each model
    trained with KL weight beta is a point (R, D), rate R = KL(q(z|x) ||
    p(z)) and distortion D = -E_q[log p(x|z)] in nats, labelled with its
    beta. The dashed lines D + R = c (slope -1) join the points of equal
    ELBO = -(D + R), labelled with that ELBO; a few round values spanning the
    points are drawn. The best ELBO is ringed. A beta below 1 buys distortion
    with rate, a beta above 1 the reverse; the ELBO ranks them on the lines.

    Args:
        table: Rows (mappings) with `beta`, `rate` and `distortion`, e.g.
            the rows of `keras_vae.sweep.run_sweep`; drawn in order of beta.
        path: The PNG file to write.
        title: The figure's title (default: the plot's name).

    Returns:
        `path`.

    Example:

    >>> plot_rate_distortion([{"beta": 0.5, "rate": 30.0, "distortion": 70.0},
    ...                       {"beta": 2.0, "rate": 15.0, "distortion": 95.0}],
    ...                      "rate_distortion.png")  # doctest: +SKIP
    """
    return _save(_rate_distortion_figure(table, title), path)


def _samples_per_beta_figure(models_or_samples, betas, num_samples=10, seed=0):
    """The figure of `plot_samples_per_beta` (not saved, not closed)."""
    check_positive_int("num_samples", num_samples)
    if len(models_or_samples) != len(betas) or not len(betas):
        raise ValueError(
            "Expected one model or batch of samples per beta (at least one). Received: "
            f"{len(models_or_samples)} for betas={list(betas)}"
        )
    rows = []
    for item in models_or_samples:
        if hasattr(item, "sample"):
            item = item.sample(num_samples, seed=seed).mean().numpy()
        rows.append(_images(item)[:num_samples])
    shapes = {row.shape[1:] for row in rows}
    if len(shapes) != 1:
        raise ValueError(f"Expected images of one shape for every beta. Received: shapes={sorted(shapes)}")
    (height, width), cols = shapes.pop(), max(len(row) for row in rows)
    grid = np.zeros((len(rows) * cols, height, width), np.float32)
    for r, row in enumerate(rows):
        grid[r * cols: r * cols + len(row)] = row
    fig, ax = plt.subplots(figsize=(cols * 0.8 + 1.0, len(rows) * 0.8 + 0.6))
    ax.imshow(_tile(grid, len(rows), cols), cmap="gray_r", vmin=0, vmax=1)
    ax.set_yticks([1 + r * (height + 1) + (height - 1) / 2 for r in range(len(rows))])
    ax.set_yticklabels([f"β = {b:g}" for b in betas])
    ax.set_xticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.tick_params(left=False)
    ax.set_title(f"E[x|z] for z ~ p(z) (seed {seed}): one row per beta", fontsize=9)
    return fig


def plot_samples_per_beta(models_or_samples, betas, path, num_samples=10, seed=0):
    """Samples from the prior of each model, one row per beta.

    Each row shows the pixel probabilities E[x|z] of `num_samples` codes
    z ~ p(z), drawn with the same `seed` for every model: with the same
    prior (the standard normal), each column decodes the same z with each
    beta's decoder.

    Args:
        models_or_samples: One entry per beta: a `keras_vae.VAE` (sampled
            here) or an array of images `[n, height, width(, 1)]`.
        betas: The betas, labelling the rows (same order).
        path: The PNG file to write.
        num_samples: Images per row.
        seed: Int seed of the codes drawn from the models' priors.

    Returns:
        `path`.

    Example:

    >>> plot_samples_per_beta([vae_05, vae_1, vae_2], [0.5, 1, 2], "samples.png")  # doctest: +SKIP
    """
    return _save(_samples_per_beta_figure(models_or_samples, betas, num_samples, seed), path)
