"""T2I style adapter units in the worker: a reference image's style as prompt tokens.

As sd-webui-controlnet runs `t2iadapter_style_sd14v1` with the `t2ia_style_clipvision`
preprocessor: `encode_style` (once per job) squeezes the unit's image to the CLIP vision
model's square input (224 for ViT-L/14, OpenCV's area resize), takes the vision tower's
last hidden state and runs the adapter on it (`model_manager/t2i_style.py`): a few
tokens of the prompt's width. `with_style` appends them, times the unit's weight, to the
cross-attention context of every UNet call whose step lies in [guidance_start,
guidance_end]; the unconditional rows get zero tokens (the extension multiplies them by
its cond mark), so the context has one length for all rows. The control mode does not
apply (the extension hides it for this preprocessor and its hook never reads it).

This module must never import a UI library.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from .controlnet_units import ControlUnit

log = logging.getLogger(__name__)


@dataclass
class StyleUnit:
    unit: ControlUnit
    tokens: torch.Tensor  # (1, tokens, width): the adapter's output, weight not applied
    warned: bool = False  # told once that a UNet of another width runs without it


@torch.no_grad()
def encode_style(unit: ControlUnit, model: Any, embedder: Any, image: Image.Image) -> StyleUnit:
    """The unit's style tokens (`embedder`: a `ClipVisionEmbedder`, CLIP ViT-L/14)."""
    clip = embedder.model
    side = int(clip.config.image_size)
    rgb = cv2.resize(np.asarray(image.convert("RGB")), (side, side), interpolation=cv2.INTER_AREA)
    pixels = embedder.processor(images=[rgb], return_tensors="pt")["pixel_values"]
    hidden = clip(pixel_values=pixels.to(clip.device, clip.dtype)).last_hidden_state
    if hidden.shape[-1] != model.width:
        raise UserError(f"the CLIP vision model gives width {hidden.shape[-1]}, the style "
                         f"adapter takes {model.width} (CLIP ViT-L/14: 1024)")  # fmt: skip
    weights = next(model.parameters())
    return StyleUnit(unit, model(hidden.to(weights.device, weights.dtype)))


def with_style(context: torch.Tensor, units: list[StyleUnit], uncond_rows: int,
               fraction: float) -> torch.Tensor:  # fmt: skip
    """`context` (rows, tokens, width) with the tokens of the units guiding this step
    appended (zeros on the first `uncond_rows` rows)."""
    parts = [context]
    for style in units:
        unit = style.unit
        if not unit.guidance_start <= fraction <= unit.guidance_end or unit.weight <= 0:
            continue
        if style.tokens.shape[-1] != context.shape[-1]:  # a hires. fix checkpoint of another width
            if not style.warned:
                log.warning("T2I style adapter skipped: its tokens do not fit this checkpoint")
                style.warned = True
            continue
        tokens = style.tokens.to(context.device, context.dtype) * unit.weight
        tokens = tokens.expand(context.shape[0], -1, -1).clone()
        tokens[:uncond_rows] = 0
        parts.append(tokens)
    return torch.cat(parts, dim=1) if len(parts) > 1 else context
