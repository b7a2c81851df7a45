"""Images laid out in a grid (NumPy only): the plots' and TensorBoard's."""

import numpy as np


def tile(images, cols, rows=None, pad=0, pad_value=0.0):
    """`[n, h, w]` or `[n, h, w, c]` frames -> one `[H, W(, c)]` image.

    Row by row, `cols` frames a row, `rows` rows (default: as many as the
    frames need; frames beyond `rows * cols` are left out). `pad` pixels of
    `pad_value` separate the frames and surround the grid; cells without a
    frame are `pad_value`.
    """
    images = np.asarray(images, np.float32)
    n, h, w = images.shape[:3]
    rows = -(-n // cols) if rows is None else rows
    canvas = np.full(
        (rows * (h + pad) + pad, cols * (w + pad) + pad) + images.shape[3:], pad_value, np.float32
    )
    for i in range(min(n, rows * cols)):
        row, col = divmod(i, cols)
        top, left = pad + row * (h + pad), pad + col * (w + pad)
        canvas[top : top + h, left : left + w] = images[i]
    return canvas
