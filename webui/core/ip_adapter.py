"""IP-Adapter units in the worker: a reference image's CLIP tokens fed to the UNet's
cross-attention, through diffusers' IP-Adapter processors.

`encode_reference` runs the unit's CLIP vision encoder on its image once per job (plain
adapters: the projected `image_embeds`; "plus" adapters: the penultimate hidden states)
and the adapter's image projection on it, giving the image tokens of the conditional rows;
the unconditional rows get the projection of a zero embedding (plus: of a black image's
hidden states), as diffusers' `prepare_ip_adapter_image_embeds` and the extension do.

`installed` puts one `IPAdapterAttnProcessor2_0` per cross-attention layer on the UNet for
one pipeline call (holding every IP-Adapter unit's `to_k_ip` / `to_v_ip`, as diffusers'
multi-adapter processors do) and puts the UNet's own processors back afterwards, so the
cached pipeline is never left changed. `tokens_for_call` sets each unit's scale for the
current step (its weight inside [guidance_start, guidance_end], else 0) and lays out the
image tokens for the call's rows (the unconditional rows first); the UNet is then called
with `encoder_hidden_states=(text, [tokens per unit])`, diffusers' IP-Adapter form.

A unit of weight 0 never gets here (`ControlUnit.guides`): the image equals no unit.

This module must never import a UI library.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ..model_manager.cpu_precision import compute_dtype
from .control_region import region_tensor
from .controlnet_units import ControlUnit

log = logging.getLogger(__name__)


@dataclass
class IpUnit:
    unit: ControlUnit
    model: Any  # model_manager.ip_adapter.IpAdapterModel
    cond: torch.Tensor  # (1, tokens, width): the reference image's tokens
    uncond: torch.Tensor  # (1, tokens, width): the unconditional rows' tokens
    region: torch.Tensor | None = None  # its effective region mask (core/control_region.py)


@torch.no_grad()
def encode_reference(unit: ControlUnit, model: Any, embedder: Any, image: Image.Image) -> IpUnit:
    """The unit's image tokens (`embedder`: a `ClipVisionEmbedder`); the unit's mask, if
    any, is the extension's CLIP mask (`clip_masked_pixels`)."""
    if unit.mask is None:
        pixels = embedder.processor(images=[image.convert("RGB")], return_tensors="pt")
        pixels = pixels["pixel_values"]
    else:
        pixels = clip_masked_pixels(embedder.processor, image, unit.mask)
    clip = embedder.model
    pixels = pixels.to(clip.device, clip.dtype)
    if model.plus:
        cond = clip(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        black = torch.zeros_like(pixels)
        uncond = clip(pixel_values=black, output_hidden_states=True).hidden_states[-2]
    else:
        cond = clip(pixel_values=pixels).image_embeds
        uncond = torch.zeros_like(cond)
    proj = model.image_proj
    device, dtype = next(proj.parameters()).device, model.dtype
    region = region_tensor(unit.effective_region_mask)
    return IpUnit(unit, model, proj(cond.to(device, dtype)), proj(uncond.to(device, dtype)),
                  region)  # fmt: skip


def clip_masked_pixels(processor: Any, image: Image.Image, mask: Image.Image) -> torch.Tensor:
    """The CLIP input of `image` with the mask's white area blanked, as the extension's
    CLIP mask (normalised pixels times 1 - mask); the mask goes through the same resize
    and crop as the image (an all-black mask changes nothing)."""
    image = image.convert("RGB")
    pixels = processor(images=[image], return_tensors="pt")["pixel_values"]
    mask = mask.convert("L").resize(image.size, Image.Resampling.BILINEAR).convert("RGB")
    alpha = processor(images=[mask], do_normalize=False, return_tensors="pt")["pixel_values"]
    return pixels * (1.0 - alpha[:, :1].clamp(0.0, 1.0))


@contextmanager
def installed(unet: Any, units: list[IpUnit]) -> Iterator[list[Any]]:
    """The units' IP-Adapter processors on `unet` for one pipeline call (yields them)."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    with installed_processors(unet, units, IPAdapterAttnProcessor2_0, _fits) as made:
        yield made


@contextmanager
def installed_processors(model: Any, units: list[IpUnit], processor_class: type,
                         fits: Callable[[Any, Any, dict], bool]) -> Iterator[list[Any]]:  # fmt: skip
    """One `processor_class` per adapter layer on `model` (a UNet or the FLUX transformer)
    for one pipeline call, holding every unit's `to_k_ip` / `to_v_ip` (diffusers'
    multi-adapter form); the model's own processors are put back afterwards. Units whose
    layers do not `fit` the model (a hires. fix pass on another family) are skipped."""
    saved = model.attn_processors
    if not units or not all(fits(model, u.model, saved) for u in units):
        if units:
            log.warning("IP-Adapter units skipped: their layers do not fit this model")
        yield []
        return
    processors = dict(saved)
    made = []
    dtype = compute_dtype(model)  # CPU bf16: the attention runs in bf16, the adapter is fp32
    for name in units[0].model.names:
        layers = [u.model.processors[u.model.names.index(name)] for u in units]
        with torch.device("meta"):  # the layers below replace its own
            proc = processor_class(layers[0].hidden_size, layers[0].cross_attention_dim,
                                   num_tokens=[u.model.tokens for u in units],
                                   scale=[0.0] * len(units))  # fmt: skip
        proc.to_k_ip = torch.nn.ModuleList([layer.to_k_ip[0] for layer in layers])
        proc.to_v_ip = torch.nn.ModuleList([layer.to_v_ip[0] for layer in layers])
        proc.to(dtype)  # the adapter's own layers (cast again at each use: idempotent)
        processors[name] = proc
        made.append(proc)
    model.set_attn_processor(processors)
    try:
        yield made
    finally:
        model.set_attn_processor(saved)


def _fits(unet: Any, model: Any, processors: dict) -> bool:
    """Whether an adapter's layers are this UNet's (names and cross-attention width)."""
    width = unet.config.cross_attention_dim
    return set(model.names) <= set(processors) and all(
        p.cross_attention_dim == width for p in model.processors
    )


def tokens_for_call(units: list[IpUnit], processors: list[Any], rows: int, uncond_rows: int,
                    fraction: float, like: torch.Tensor) -> list[torch.Tensor]:  # fmt: skip
    """Each unit's image tokens for a UNet call of `rows` rows (the first `uncond_rows`
    unconditional), after setting the processors' scales for this step."""
    scales = [u.unit.weight if u.unit.guidance_start <= fraction <= u.unit.guidance_end else 0.0
              for u in units]  # fmt: skip
    for proc in processors:
        proc.scale = scales
    out = []
    for u in units:
        parts = [u.uncond.expand(uncond_rows, -1, -1), u.cond.expand(rows - uncond_rows, -1, -1)]
        out.append(torch.cat(parts).to(like.device, like.dtype))
    return out


def uncond_rows(rows: int, batch: int, conds: int) -> int:
    """How many of a UNet call's rows are unconditional: the prompt hooks lay them out as
    [uncond x batch, cond_1 x batch, ..., cond_n x batch], or without the uncond rows
    (CFG 1, NGMS's skipped calls); without hooks a call has batch or 2 x batch rows."""
    extra = rows - conds * batch
    if extra in (0, batch):
        return extra
    return batch if rows == 2 * batch else 0
