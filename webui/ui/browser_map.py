"""The Image Browser's map as a picture: one dot per image, coloured by cluster.

`draw_map` scales the diffusion-map coordinates into a picture (Pillow only) and labels
each cluster at its centre; `nearest` finds the image under a click on that picture (the
page gives the click's pixel coordinates), so a click opens the cluster it falls in.

This module must never import torch or diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageDraw

WIDTH, HEIGHT, MARGIN, DOT = 900, 600, 30, 4
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#ad494a"]  # fmt: skip


@dataclass(frozen=True)
class Placed:
    id: int
    cluster: int
    px: float  # where it is drawn on the picture
    py: float


def place(points: list, width: int = WIDTH, height: int = HEIGHT) -> list[Placed]:
    """Picture coordinates of map points (objects with id, x, y, cluster)."""
    if not points:
        return []
    xs, ys = [p.x for p in points], [p.y for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx = (width - 2 * MARGIN) / ((x1 - x0) or 1.0)
    sy = (height - 2 * MARGIN) / ((y1 - y0) or 1.0)
    return [Placed(p.id, p.cluster, MARGIN + (p.x - x0) * sx, height - MARGIN - (p.y - y0) * sy)
            for p in points]  # fmt: skip


def draw_map(placed: list[Placed], width: int = WIDTH, height: int = HEIGHT) -> Image.Image:
    picture = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(picture)
    for p in placed:
        colour = PALETTE[p.cluster % len(PALETTE)]
        draw.ellipse((p.px - DOT, p.py - DOT, p.px + DOT, p.py + DOT), fill=colour)
    for cluster in sorted({p.cluster for p in placed}):
        members = [p for p in placed if p.cluster == cluster]
        cx = sum(p.px for p in members) / len(members)
        cy = sum(p.py for p in members) / len(members)
        label = f"{cluster + 1} ({len(members)})"
        draw.text((cx + 1, cy + 1), label, fill="white")
        draw.text((cx, cy), label, fill="black")
    return picture


def nearest(placed: list[Placed], x: float, y: float) -> Placed | None:
    """The drawn point closest to the click (x, y), or None when there are none."""
    if not placed:
        return None
    return min(placed, key=lambda p: (p.px - x) ** 2 + (p.py - y) ** 2)
