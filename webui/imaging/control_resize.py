"""Resizing ControlNet maps the way sd-webui-controlnet does (its `high_quality_resize`).

A map with 3 to 199 colours (segmentation, colour grids) is resized with nearest
neighbours; a black-and-white map stays black and white (Otsu's threshold after the
resize), and a map of one-pixel edges (canny, scribbles) is thinned back to one-pixel
edges (non-maximum suppression, then hit-or-miss thinning); others use area (shrinking)
or cubic (growing) interpolation. A 4th channel (inpaint's mask) is resized along and
made 0 or 255.

This module must never import torch, diffusers or a UI library.
"""

from __future__ import annotations

import cv2
import numpy as np


def _rotations(*raw: list[list[int]]) -> list[np.ndarray]:
    kernels = [np.array(k, dtype=np.int32) for k in raw]
    return [np.rot90(k, turns) for turns in range(4) for k in kernels]


_THIN = _rotations([[-1, -1, -1], [0, 1, 0], [1, 1, 1]], [[0, -1, -1], [1, 1, -1], [0, 1, 0]])
_PRUNE = _rotations(
    [[-1, -1, -1], [-1, 1, -1], [0, 0, -1]], [[-1, -1, -1], [-1, 1, -1], [-1, 0, 0]]
)
_NMS = [np.array(k, dtype=np.uint8) for k in ([[0, 0, 0], [1, 1, 1], [0, 0, 0]],
                                              [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
                                              [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                                              [[0, 0, 1], [0, 1, 0], [1, 0, 0]])]  # fmt: skip


def _thin_once(x: np.ndarray, kernels: list[np.ndarray]) -> bool:
    """Remove every hit of the kernels from `x` in place; whether anything was removed."""
    changed = False
    for kernel in kernels:
        hits = cv2.morphologyEx(x, cv2.MORPH_HITMISS, kernel) > 127
        if hits.any():
            x[hits] = 0
            changed = True
    return changed


def thin(x: np.ndarray, prune: bool) -> np.ndarray:
    """Edges thinned to one pixel (at most 32 rounds), then the spurs pruned."""
    x = x.copy()
    for _ in range(32):
        if not _thin_once(x, _THIN):
            break
    if prune:
        _thin_once(x, _PRUNE)
    return x


def nms(x: np.ndarray) -> np.ndarray:
    """Keep the pixels that are the maximum along some direction."""
    out = np.zeros_like(x)
    for kernel in _NMS:
        np.putmask(out, cv2.dilate(x, kernel=kernel) == x, x)
    return out


def _one_pixel_edges(x: np.ndarray) -> bool:
    opened = cv2.dilate(cv2.erode(x, np.ones((3, 3), np.uint8)), np.ones((3, 3), np.uint8))
    return np.count_nonzero(opened < x) * 2 > np.count_nonzero(x > 127)


def high_quality_resize(x: np.ndarray, width: int, height: int) -> np.ndarray:
    """`x` (HWC uint8, 3 or 4 channels) at width x height."""
    mask = x[:, :, 3] if x.shape[2] == 4 else None
    x = x[:, :, :3]
    if x.shape[:2] != (height, width):
        smaller = width * height < x.shape[0] * x.shape[1]
        bigger = width * height > x.shape[0] * x.shape[1]
        colours = len(np.unique(x.reshape(-1, 3), axis=0))
        binary = colours == 2 and x.min() < 16 and x.max() > 240
        edges = binary and _one_pixel_edges(x)
        if 2 < colours < 200:
            interpolation = cv2.INTER_NEAREST
        else:
            interpolation = cv2.INTER_AREA if smaller else cv2.INTER_CUBIC
        y = cv2.resize(x, (width, height), interpolation=interpolation)
        if mask is not None:
            mask = cv2.resize(mask, (width, height), interpolation=interpolation)
        if binary:
            grey = np.mean(y.astype(np.float32), axis=2).clip(0, 255).astype(np.uint8)
            if edges:
                grey = nms(grey)
            _, grey = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
            if edges:
                grey = thin(grey, prune=bigger)
            y = np.stack([grey] * 3, axis=2)
        x = y
    if mask is not None:
        mask = np.where(mask > 127, 255, 0).astype(np.uint8)
        x = np.concatenate([x, mask[:, :, None]], axis=2)
    return x
