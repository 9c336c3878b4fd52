"""Pixel geometry of img2img and inpainting, as A1111 does it (Pillow and numpy only).

- `resize_image`: A1111's resize modes (just resize, crop and resize, resize and fill).
- Masks: blur, the crop region of "inpaint only masked" and its expansion to the
  processing aspect ratio, the "fill" masked content, the overlay that puts the original
  back outside the mask (soft at the blurred edge), and outpainting canvases.
- `split_grid` / `combine_grid`: the overlapping tiles of SD upscale, joined with linear
  blends over the overlap.

This module must never import torch or a UI library.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL, LATENT_RESIZE = 0, 1, 2, 3
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
LANCZOS = Image.Resampling.LANCZOS


def resize_image(mode: int, image: Image.Image, width: int, height: int) -> Image.Image:
    """`image` at width x height by A1111's resize mode (mode 3 resizes like mode 0)."""
    if mode in (JUST_RESIZE, LATENT_RESIZE):
        return image.resize((width, height), LANCZOS) if image.size != (width, height) else image
    ratio = width / height
    src_ratio = image.width / image.height
    if mode == CROP_AND_RESIZE:
        src_w = width if ratio > src_ratio else image.width * height // image.height
        src_h = height if ratio <= src_ratio else image.height * width // image.width
        resized = image.resize((src_w, src_h), LANCZOS)
        result = Image.new(image.mode, (width, height))
        result.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        return result
    if mode != RESIZE_AND_FILL:
        raise ValueError(f"unknown resize mode {mode}")
    src_w = width if ratio < src_ratio else image.width * height // image.height
    src_h = height if ratio >= src_ratio else image.height * width // image.width
    resized = image.resize((src_w, src_h), LANCZOS)
    result = Image.new(image.mode, (width, height))
    result.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if ratio < src_ratio:  # bands above and below: stretch the edge rows
        fill = height // 2 - src_h // 2
        if fill > 0:
            top = resized.resize((width, fill), box=(0, 0, width, 0))
            bottom = resized.resize((width, fill), box=(0, resized.height, width, resized.height))
            result.paste(top, box=(0, 0))
            result.paste(bottom, box=(0, fill + src_h))
    elif ratio > src_ratio:  # bands left and right: stretch the edge columns
        fill = width // 2 - src_w // 2
        if fill > 0:
            left = resized.resize((fill, height), box=(0, 0, 0, height))
            right = resized.resize((fill, height), box=(resized.width, 0, resized.width, height))
            result.paste(left, box=(0, 0))
            result.paste(right, box=(fill + src_w, 0))
    return result


def blur_mask(mask: Image.Image, blur_x: float, blur_y: float) -> Image.Image:
    """Gaussian blur with separate horizontal and vertical strength (pixels)."""
    if blur_x <= 0 and blur_y <= 0:
        return mask
    return mask.filter(ImageFilter.GaussianBlur((max(0, blur_x), max(0, blur_y))))


def crop_region(mask: Image.Image, padding: int) -> tuple[int, int, int, int] | None:
    """The box around the mask's non-black pixels plus `padding`, clipped; None if empty."""
    box = mask.getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return (
        max(x1 - padding, 0),
        max(y1 - padding, 0),
        min(x2 + padding, mask.width),
        min(y2 + padding, mask.height),
    )


def expand_crop_region(
    box: tuple[int, int, int, int], width: int, height: int, image_w: int, image_h: int
) -> tuple[int, int, int, int]:
    """Grow `box` to the width:height aspect ratio, staying inside the image."""
    x1, y1, x2, y2 = box
    box_ratio = (x2 - x1) / (y2 - y1)
    target_ratio = width / height
    if box_ratio > target_ratio:
        y1, y2 = _grow(y1, y2, (x2 - x1) / target_ratio, image_h)
    else:
        x1, x2 = _grow(x1, x2, (y2 - y1) * target_ratio, image_w)
    return x1, y1, x2, y2


def _grow(a: int, b: int, desired: float, limit: int) -> tuple[int, int]:
    diff = int(desired - (b - a))
    a -= diff // 2
    b += diff - diff // 2
    if b >= limit:
        a -= b - limit
        b = limit
    if a < 0:
        b -= a
        a = 0
    return a, min(b, limit)


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill": the masked area painted with blurred colours of its surroundings."""
    result = Image.new("RGBA", image.size)
    kept = Image.new("RGBa", image.size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            result.alpha_composite(blurred)
    return result.convert("RGB")


def make_overlay(image: Image.Image, mask_for_overlay: Image.Image) -> Image.Image:
    """The original as RGBA, transparent where the mask is white (soft at blurred edges)."""
    overlay = image.convert("RGBA")
    overlay.putalpha(ImageOps.invert(mask_for_overlay.convert("L")))
    return overlay


def apply_overlay(
    result: Image.Image, overlay: Image.Image, paste_to: tuple[int, int, int, int] | None = None
) -> Image.Image:
    """Put `result` under the original's overlay; with `paste_to` (x, y, w, h) it is first
    scaled into that box of a canvas the size of the overlay ("only masked")."""
    if paste_to is not None:
        x, y, w, h = paste_to
        canvas = Image.new("RGBA", overlay.size)
        canvas.paste(resize_image(CROP_AND_RESIZE, result, w, h), (x, y))
        result = canvas
    elif result.size != overlay.size:
        result = result.resize(overlay.size, LANCZOS)
    merged = result.convert("RGBA")
    merged.alpha_composite(overlay)
    return merged.convert("RGB")


def outpaint_canvas(
    image: Image.Image,
    mask: Image.Image | None,
    left: int,
    right: int,
    up: int,
    down: int,
    overlap: int = 0,
) -> tuple[Image.Image, Image.Image]:
    """A larger canvas with the image inside, and a mask of the new area.

    The mask reaches `overlap` pixels into the old image on each extended side, so the
    new area blends in; an existing mask is kept (moved with the image).
    """
    width, height = image.width + left + right, image.height + up + down
    canvas = Image.new("RGB", (width, height))
    canvas.paste(image.convert("RGB"), (left, up))
    new_mask = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(new_mask)
    box = (
        left + (overlap if left else 0),
        up + (overlap if up else 0),
        width - right - (overlap if right else 0),
        height - down - (overlap if down else 0),
    )
    if box[2] > box[0] and box[3] > box[1]:
        draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=0)
    if mask is not None:
        old = Image.new("L", (width, height), 0)
        old.paste(mask.convert("L"), (left, up))
        new_mask = Image.fromarray(np.maximum(np.asarray(new_mask), np.asarray(old)), "L")
    return canvas, new_mask


@dataclass
class Grid:
    """Overlapping tiles of an image: rows of (y, h, [(x, w, tile), ...])."""

    tile_w: int
    tile_h: int
    image_w: int
    image_h: int
    overlap: int
    rows: list = field(default_factory=list)

    def tiles(self) -> list[Image.Image]:
        return [tile for _, _, row in self.rows for _, _, tile in row]

    def replace_tiles(self, tiles: list[Image.Image]) -> None:
        it = iter(tiles)
        for _, _, row in self.rows:
            for i, (x, w, _) in enumerate(row):
                row[i] = (x, w, next(it))


def split_grid(image: Image.Image, tile_w: int, tile_h: int, overlap: int) -> Grid:
    """A1111's split_grid: tiles of tile_w x tile_h overlapping by at least `overlap`."""
    if image.width < tile_w or image.height < tile_h:
        raise ValueError(
            f"image {image.width}x{image.height} is smaller than a tile ({tile_w}x{tile_h})"
        )
    if not 0 <= overlap < min(tile_w, tile_h):
        raise ValueError(f"overlap must be between 0 and {min(tile_w, tile_h) - 1}, got {overlap}")
    cols = max(1, math.ceil((image.width - overlap) / (tile_w - overlap)))
    rows = max(1, math.ceil((image.height - overlap) / (tile_h - overlap)))
    dx = (image.width - tile_w) / (cols - 1) if cols > 1 else 0
    dy = (image.height - tile_h) / (rows - 1) if rows > 1 else 0
    grid = Grid(tile_w, tile_h, image.width, image.height, overlap)
    for row in range(rows):
        y = min(int(row * dy), image.height - tile_h)
        cells = []
        for col in range(cols):
            x = min(int(col * dx), image.width - tile_w)
            cells.append((x, tile_w, image.crop((x, y, x + tile_w, y + tile_h))))
        grid.rows.append((y, tile_h, cells))
    return grid


def combine_grid(grid: Grid) -> Image.Image:
    """Join the tiles, blending each overlap with a linear ramp (A1111's combine_grid)."""
    n = grid.overlap
    ramp = np.arange(n, dtype=np.float32) * 255 / max(n, 1)
    mask_w = Image.fromarray(np.repeat(ramp[None, :], grid.tile_h, 0).astype(np.uint8), "L")
    mask_h = Image.fromarray(np.repeat(ramp[:, None], grid.image_w, 1).astype(np.uint8), "L")
    combined = Image.new("RGB", (grid.image_w, grid.image_h))
    for y, h, row in grid.rows:
        line = Image.new("RGB", (grid.image_w, h))
        for x, w, tile in row:
            if x == 0 or n == 0:
                line.paste(tile, (x, 0))
                continue
            line.paste(tile.crop((0, 0, n, h)), (x, 0), mask=mask_w)
            line.paste(tile.crop((n, 0, w, h)), (x + n, 0))
        if y == 0 or n == 0:
            combined.paste(line, (0, y))
            continue
        combined.paste(line.crop((0, 0, line.width, n)), (0, y), mask=mask_h)
        combined.paste(line.crop((0, n, line.width, h)), (0, y + n))
    return combined
