"""Figures of a run: reconstructions, samples, codebook usage, training
curves, every plot of a model at once (`plot_all`), and the beta sweep's
rate-distortion plane and samples per beta.
"""

import os

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from keras_vae import objectives
from keras_vae._internal.validation import check_positive_int
from keras_vae.plotting import latents
from keras_vae.plotting._canvas import as_images
from keras_vae.plotting._canvas import is_vq
from keras_vae.plotting._canvas import save
from keras_vae.plotting._canvas import tile_images

__all__ = [
    "plot_all",
    "plot_codebook_usage",
    "plot_rate_distortion",
    "plot_reconstructions",
    "plot_samples",
    "plot_samples_per_beta",
    "plot_training_curves",
]


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
    return save(fig, path)


def plot_reconstructions(model, x, path, num_examples=12):
    """Inputs (top row) above their reconstructions (decoder mean at E_q[z])."""
    x = np.asarray(x)[:num_examples]
    recon = model.reconstruct(x).mean().numpy()
    rows = (as_images(x), as_images(recon))
    fig, axes = plt.subplots(2, 1, figsize=(num_examples * 0.9, 2.4))
    what = "E[x | z_q(x)], the nearest codes" if is_vq(model) else "E[x | z = E_q[z|x]]"
    for ax, images, title in zip(
        axes, rows, ("input x", f"reconstruction {what}")
    ):
        ax.imshow(tile_images(images, 1, len(x)), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9, loc="left")
        ax.axis("off")
    return save(fig, path)


def plot_samples(model, path, num_samples=64, seed=0):
    """Pixel probabilities of p(x|z) for z drawn from the prior, in a grid."""
    side = int(np.ceil(np.sqrt(num_samples)))
    images = as_images(model.sample(num_samples, seed=seed).mean().numpy())
    fig, ax = plt.subplots(figsize=(side * 0.8, side * 0.8))
    ax.imshow(tile_images(images, side, side), cmap="gray_r", vmin=0, vmax=1)
    drawn = "E[x|z_q(k)], codes k ~ p(k)" if is_vq(model) else "E[x|z], z ~ p(z)"
    ax.set_title(f"{num_samples} samples: {drawn}", fontsize=9)
    ax.axis("off")
    return save(fig, path)


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
    return save(_training_curves_figure(history, objective, kl_is_analytic), path)


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
    if is_vq(model):
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
        latents.plot_latent_space(model, images, os.path.join(output_dir, "latent_space.png"), labels=labels),
        latents.plot_traversals(model, images, os.path.join(output_dir, "traversals.png")),
    ]
    pairs = min(8, len(images) // 2)
    if pairs:
        written.append(
            latents.plot_interpolations(
                model, images[:pairs], images[pairs : 2 * pairs], os.path.join(output_dir, "interpolations.png")
            )
        )
    if model.latent_dim == 2:
        written.append(latents.plot_manifold(model, os.path.join(output_dir, "manifold.png")))
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
    return save(_rate_distortion_figure(table, title), path)


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
        rows.append(as_images(item)[:num_samples])
    shapes = {row.shape[1:] for row in rows}
    if len(shapes) != 1:
        raise ValueError(f"Expected images of one shape for every beta. Received: shapes={sorted(shapes)}")
    (height, width), cols = shapes.pop(), max(len(row) for row in rows)
    grid = np.zeros((len(rows) * cols, height, width), np.float32)
    for r, row in enumerate(rows):
        grid[r * cols: r * cols + len(row)] = row
    fig, ax = plt.subplots(figsize=(cols * 0.8 + 1.0, len(rows) * 0.8 + 0.6))
    ax.imshow(tile_images(grid, len(rows), cols), cmap="gray_r", vmin=0, vmax=1)
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
    return save(_samples_per_beta_figure(models_or_samples, betas, num_samples, seed), path)
