"""A unit's effective region mask (sd-webui-controlnet's `effective_region_mask`).

The mask (white: where the unit acts) restricts a unit to a part of the image, as the
extension does it:

- ControlNet and T2I-Adapter units: each residual (already weighted) is multiplied by the
  mask, scaled bilinearly to the residual's size (stretched, as the extension's
  `apply_effective_region_mask`; the hires. fix pass scales it to its own sizes);
- IP-Adapter units: the output of the image tokens' attention is multiplied by the mask
  at each attention layer's size, through diffusers' `ip_adapter_masks` cross-attention
  argument of `IPAdapterAttnProcessor2_0` (a masked unit's tokens get diffusers' 4-d
  form, one image per unit).

An all-white mask is no mask (the unit acts everywhere). The FLUX ControlNets and the FLUX
IP-Adapter have no region mask (neither the extension nor Forge has one): the service
refuses the field for them (`services/controlnet.py`).

This module must never import a UI library.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def region_tensor(mask: Image.Image | None) -> torch.Tensor | None:
    """The mask as a (1, 1, H, W) float tensor in [0, 1]; None: no mask or all white."""
    if mask is None:
        return None
    values = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    if values.min() >= 1.0:
        return None
    return torch.from_numpy(values)[None, None]


def masked_residuals(
    outputs: list[torch.Tensor], region: torch.Tensor | None
) -> list[torch.Tensor]:
    """Each residual times the region, scaled to the residual's height and width."""
    if region is None:
        return outputs
    result = []
    for out in outputs:
        scaled = F.interpolate(region.to(out.device, torch.float32), size=out.shape[2:],
                               mode="bilinear", align_corners=False)  # fmt: skip
        result.append(out * scaled.to(out.dtype))
    return result


def ip_masks(regions: list[torch.Tensor | None], tokens: list[torch.Tensor],
             size: tuple[int, int]) -> tuple[list[torch.Tensor], list[Any] | None]:  # fmt: skip
    """The IP units' tokens and their `ip_adapter_masks` (None: no unit is masked) for a
    call on latents of `size`; a masked unit's mask is stretched to that size (diffusers
    scales it to each layer by the latents' aspect) and its tokens become
    (rows, 1, tokens, width), diffusers' one-image form."""
    if all(region is None for region in regions):
        return tokens, None
    masks: list[Any] = []
    shaped = []
    for region, unit_tokens in zip(regions, tokens, strict=True):
        if region is None:
            masks.append(None)
            shaped.append(unit_tokens)
        else:
            scaled = F.interpolate(region, size=size, mode="bilinear", align_corners=False)
            masks.append(scaled.to(unit_tokens.device, unit_tokens.dtype))
            shaped.append(unit_tokens[:, None])
    return shaped, masks
