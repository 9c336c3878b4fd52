"""Grid images with labelled axes, for the X/Y/Z plot and prompt matrix scripts.

`annotated_grid` lays cells out in rows and columns and writes the column labels above
and the row labels to the left, as A1111's `draw_grid_annotations` does (labels may have
several lines; an inactive line is grey and struck through, as in the prompt matrix).
The cells are laid out by `webui.imaging.grid.image_grid` (re-exported here for the
scripts). `stack_grids` puts several grids side by side with a title over each (the Z axis).

This module must never import torch, diffusers or a UI library (Pillow only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from ...imaging.grid import BACKGROUND, image_grid

ACTIVE = (0, 0, 0)
INACTIVE = (153, 153, 153)
PAD = 6


@dataclass(frozen=True)
class Label:
    text: str
    active: bool = True


LabelLines = Sequence[Label]
__all__ = ["Label", "LabelLines", "annotated_grid", "batch_grid", "image_grid", "stack_grids"]


def font_for(cell_width: int, cell_height: int) -> ImageFont.ImageFont:
    """A1111 sizes label text by the cell size; never below a readable 14 px."""
    size = max(14, min(48, (cell_width + cell_height) // 25))
    return ImageFont.load_default(size=size)


def batch_grid(images: Sequence[Image.Image]) -> Image.Image:
    """One picture for a batch: the image itself, or a near-square grid of them."""
    if len(images) == 1:
        return images[0]
    cols = math.ceil(math.sqrt(len(images)))
    return image_grid(images, math.ceil(len(images) / cols), cols)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}".strip()
            if line and draw.textlength(candidate, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def _lines(draw, labels: LabelLines, font, width: int) -> list[tuple[str, bool]]:
    return [(line, lab.active) for lab in labels for line in _wrap(draw, lab.text, font, width)]


def _line_height(font) -> int:
    left, top, right, bottom = font.getbbox("Ag")
    return int((bottom - top) * 1.3) + 2


def _block_height(draw, labels: LabelLines, font, width: int) -> int:
    return len(_lines(draw, labels, font, width)) * _line_height(font)


def _draw_block(draw, labels: LabelLines, font, box: tuple[int, int, int, int]) -> None:
    """Centred lines of text inside `box` (x, y, width, height)."""
    x, y, width, height = box
    lines = _lines(draw, labels, font, width - 2 * PAD)
    step = _line_height(font)
    top = y + (height - len(lines) * step) // 2
    for i, (text, active) in enumerate(lines):
        length = draw.textlength(text, font=font)
        left = x + (width - length) / 2
        line_y = top + i * step
        draw.text((left, line_y), text, font=font, fill=ACTIVE if active else INACTIVE)
        if not active:
            mid = line_y + step // 2
            draw.line(
                (left - 2, mid, left + length + 2, mid), fill=INACTIVE, width=max(1, step // 12)
            )


def annotated_grid(cells: Sequence[Image.Image], col_labels: Sequence[LabelLines],
                   row_labels: Sequence[LabelLines], margin: int = 0) -> Image.Image:  # fmt: skip
    """A grid of `cells` (row-major, len(row_labels) x len(col_labels)) with its labels.

    A label list may be empty for an axis with one value and no name (nothing drawn)."""
    cols, rows = max(1, len(col_labels)), max(1, len(row_labels))
    w, h = cells[0].size
    font = font_for(w, h)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    has_cols = any(col_labels)
    has_rows = any(row_labels)
    left = 0
    if has_rows:
        widest = max(
            probe.textlength(lab.text, font=font) for labels in row_labels for lab in labels
        )
        left = int(min(max(widest + 2 * PAD, w * 3 // 4), max(w, 256)))
    top = 0
    if has_cols:
        top = (
            max(_block_height(probe, labels, font, w - 2 * PAD) for labels in col_labels) + 2 * PAD
        )
    grid = image_grid(cells, rows, cols, margin)
    sheet = Image.new("RGB", (grid.width + left, grid.height + top), BACKGROUND)
    sheet.paste(grid, (left, top))
    draw = ImageDraw.Draw(sheet)
    if has_cols:
        for col, labels in enumerate(col_labels):
            _draw_block(draw, labels, font, (left + col * (w + margin), 0, w, top))
    if has_rows:
        for row, labels in enumerate(row_labels):
            _draw_block(draw, labels, font, (0, top + row * (h + margin), left, h))
    return sheet


def stack_grids(grids: Sequence[Image.Image], titles: Sequence[str],
                margin: int = 0) -> Image.Image:  # fmt: skip
    """Grids side by side, each with its title above (A1111's Z axis)."""
    font = font_for(*grids[0].size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    top = max(_block_height(probe, [Label(t)], font, g.width - 2 * PAD)
              for g, t in zip(grids, titles, strict=True)) + 2 * PAD  # fmt: skip
    gap = max(margin, PAD * 2)
    width = sum(g.width for g in grids) + gap * (len(grids) - 1)
    sheet = Image.new("RGB", (width, top + max(g.height for g in grids)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    x = 0
    for grid, title in zip(grids, titles, strict=True):
        _draw_block(draw, [Label(title)], font, (x, 0, grid.width, top))
        sheet.paste(grid, (x, top))
        x += grid.width + gap
    return sheet
