"""Grid images: several pictures in rows and columns on one sheet (A1111's image_grid).

`image_grid` pastes cells in row-major order; `grid_rows` picks the number of rows as
A1111's ``n_rows`` option does. The batch grid a job saves (`webui.core.saving`) and the
scripts' labelled grids (`webui.ext.scripts.grid`) are both made with `image_grid`.

This module must never import torch, diffusers or a UI library (Pillow only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image

BACKGROUND = (255, 255, 255)


def image_grid(images: Sequence[Image.Image], rows: int, cols: int,
               margin: int = 0) -> Image.Image:  # fmt: skip
    """Cells in row-major order on a white sheet; empty places stay white."""
    w, h = images[0].size
    sheet = Image.new("RGB", (cols * w + (cols - 1) * margin, rows * h + (rows - 1) * margin),
                      BACKGROUND)  # fmt: skip
    for i, image in enumerate(images[: rows * cols]):
        row, col = divmod(i, cols)
        sheet.paste(image.convert("RGB").resize((w, h)), (col * (w + margin), row * (h + margin)))
    return sheet


def grid_rows(count: int, batch_size: int = 1, n_rows: int = -1) -> int:
    """Rows for a grid of ``count`` images: ``n_rows`` when > 0, the batch size for 0,
    else about the square root (A1111's autodetect); never more than ``count``."""
    if n_rows > 0:
        rows = n_rows
    elif n_rows == 0:
        rows = batch_size
    else:
        rows = round(math.sqrt(count))
    return max(1, min(rows, count))


def batch_image_grid(images: Sequence[Image.Image], batch_size: int = 1,
                     n_rows: int = -1) -> Image.Image:  # fmt: skip
    """A1111's grid of a job's images: `grid_rows` rows, as many columns as needed."""
    rows = grid_rows(len(images), batch_size, n_rows)
    return image_grid(images, rows, math.ceil(len(images) / rows))
