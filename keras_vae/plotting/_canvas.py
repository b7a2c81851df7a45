"""What the figures share: the Agg backend, image batches, tiles, saving.

Private to `keras_vae.plotting` (its modules import these by name).
"""

import os

import matplotlib

matplotlib.use("Agg")  # no display needed; before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from keras_vae._internal.grid import tile  # noqa: E402

__all__ = ["as_images", "draw_grid", "grid_canvas", "is_vq", "save", "tile_images"]


def as_images(batch):
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


def tile_images(images, rows, cols, pad=1):
    """The plots' grids: `rows` x `cols` frames, 1-pixel frames of value 1."""
    return tile(images, cols, rows=rows, pad=pad, pad_value=1.0)


def save(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def is_vq(model):
    """Whether `model` has discrete codes (a `keras_vae.VQVAE`)."""
    return hasattr(model, "quantizer")


def grid_canvas(grid, gap_after=(), pad=1):
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


def draw_grid(ax, grid, row_labels, col_labels, gap_after=()):
    """Draws `grid_canvas(grid, gap_after)` on `ax`, rows and columns labelled."""
    canvas, x, y = grid_canvas(grid, gap_after)
    cmap = matplotlib.colormaps["gray_r"].with_extremes(bad="white")
    ax.imshow(canvas, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(x, col_labels, fontsize=7)
    ax.set_yticks(y, row_labels, fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
