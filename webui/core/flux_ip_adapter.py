"""FLUX IP-Adapter units in the worker: a reference image's CLIP tokens fed to the FLUX
transformer's double blocks through diffusers' `FluxIPAdapterAttnProcessor`.

The image is encoded once per job like an SD unit's (`core/ip_adapter.py:encode_reference`:
CLIP ViT-L/14's projected `image_embeds` through the adapter's `ImageProjection`; the
negative prompt's call gets the projection of a zero embedding, as the SD adapters;
diffusers' FLUX pipeline encodes a black image instead). `installed` puts one
`FluxIPAdapterAttnProcessor` per double block on the transformer for one pipeline call
(every IP unit's `to_k_ip` / `to_v_ip` in it, diffusers' multi-adapter form) and puts the
transformer's own processors back afterwards. `call_kwargs` sets each unit's scale for
the step (its weight inside [guidance_start, guidance_end], else 0) and gives the call's
`ip_hidden_states` (the transformer passes `joint_attention_kwargs` to the processors;
the single blocks' processors ignore them).

This module must never import a UI library.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .ip_adapter import IpUnit, installed_processors


def _fits(transformer: Any, model: Any, processors: dict) -> bool:
    config = transformer.config
    width = config.num_attention_heads * config.attention_head_dim
    return set(model.names) <= set(processors) and all(
        p.hidden_size == width and p.cross_attention_dim == config.joint_attention_dim
        for p in model.processors
    )  # fmt: skip


@contextmanager
def installed(transformer: Any, units: list[IpUnit]) -> Iterator[list[Any]]:
    """The units' FLUX IP-Adapter processors on `transformer` for one call (yields them)."""
    from diffusers.models.transformers.transformer_flux import FluxIPAdapterAttnProcessor

    with installed_processors(transformer, units, FluxIPAdapterAttnProcessor, _fits) as made:
        yield made


def call_kwargs(units: list[IpUnit], processors: list[Any], kwargs: dict, negative: bool,
                fraction: float) -> dict:  # fmt: skip
    """The transformer call's `joint_attention_kwargs` with the units' image tokens, after
    setting the processors' scales for this step."""
    scales = [u.unit.weight if u.unit.guidance_start <= fraction <= u.unit.guidance_end else 0.0
              for u in units]  # fmt: skip
    for proc in processors:
        proc.scale = scales
    like = kwargs["hidden_states"]
    rows = like.shape[0]
    tokens = [(u.uncond if negative else u.cond).to(like.device, like.dtype).expand(rows, -1, -1)
              for u in units]  # fmt: skip
    return {**(kwargs.get("joint_attention_kwargs") or {}), "ip_hidden_states": tokens}
