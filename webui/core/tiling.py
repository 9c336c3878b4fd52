"""Tiling (seamless textures): circular padding in every Conv2d of the UNet and the VAE.

A1111's "Tiling" checkbox and the API's `tiling` field: for one job, every `Conv2d` of the
UNet and of the VAE (encoder and decoder, LoRA layers included) pads circularly, so the
left edge of the image continues the right one and the top the bottom. The same modules
serve every pipeline view of a checkpoint (`from_pipe` shares them), so txt2img, the
hires. fix second pass, img2img and inpainting all run tiled.

`seamless(pipe, on)` is the one way to do it: a context manager that restores every
module's previous padding mode however the job ends (an error, an interrupt). Models are
shared between jobs; this module must never leave one changed, never import a UI
library, and never change global options.

`padding_mode(modules, mode)` sets and restores a given mode; `is_circular(module)` tells
`webui.core.decode` that a VAE is tiled (its tiled decode then wraps the latents itself:
diffusers' VAE tiles would otherwise wrap around each tile instead of the image).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

CIRCULAR = "circular"


def _convs(modules: Iterable[nn.Module]) -> list[nn.Conv2d]:
    return [m for module in modules for m in module.modules() if isinstance(m, nn.Conv2d)]


@contextmanager
def padding_mode(modules: Iterable[nn.Module], mode: str) -> Iterator[None]:
    """Every Conv2d inside `modules` pads with `mode` ("circular", "zeros") until the end
    of the block; each gets its own previous mode back afterwards."""
    convs = _convs(modules)
    before = [conv.padding_mode for conv in convs]
    try:
        for conv in convs:
            conv.padding_mode = mode
        yield
    finally:
        for conv, previous in zip(convs, before, strict=True):
            conv.padding_mode = previous


@contextmanager
def seamless(pipe: Any, on: bool) -> Iterator[None]:
    """The job's pipeline (its UNet and VAE) tiled for the block when `on`."""
    if not on:
        yield
        return
    with padding_mode((pipe.unet, pipe.vae), CIRCULAR):
        yield


def is_circular(module: nn.Module) -> bool:
    """Whether the module's convolutions pad circularly (a tiling job is running)."""
    return any(conv.padding_mode == CIRCULAR for conv in _convs((module,)))
