"""What FLUX and SD 3.5 ControlNet and FLUX IP-Adapter files look like, from their key names.

Read by the model lists (`controlnet_files`, `sniff`: a header's shapes) and by the loaders
(`flux_controlnet`, `flux_ip_adapter`). FLUX ControlNets in diffusers' layout
(`FluxControlNetModel`: InstantX, Shakker-Labs) have `controlnet_x_embedder.*`,
`x_embedder.*` and `controlnet_blocks.N` / `controlnet_single_blocks.N`; XLabs' files have
Black Forest Labs' `double_blocks.N.*` with `pos_embed_input.*` and `controlnet_blocks.N`.
XLabs' FLUX IP-Adapter has `ip_adapter_proj_model.*` and
`double_blocks.N.processor.ip_adapter_double_stream_{k,v}_proj.*`.
SD 3.5 ControlNets (`sd3_layout_of`) have `pos_embed_input.proj.*` and
`controlnet_blocks.N`: diffusers' (`SD3ControlNetModel`: InstantX) with joint blocks
(`attn.to_q`), Stability's with single-stream blocks in their names (`attn.qkv`).

This module must never import torch, diffusers or a UI library (the services and the UI
list models with it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

FOLDER_CLASS = "FluxControlNetModel"
SD3_FOLDER_CLASS = "SD3ControlNetModel"
IP_PROJ_PREFIX = "ip_adapter_proj_model."
_IP_KEY = "double_blocks.0.processor.ip_adapter_double_stream_k_proj.weight"


def layout_of(keys: Iterable[str]) -> str | None:
    """ "diffusers" or "xlabs" for a FLUX ControlNet's keys; None for anything else."""
    keys = set(keys)
    blocks = any(k.startswith(("controlnet_blocks.", "controlnet_single_blocks.")) for k in keys)
    if "controlnet_x_embedder.weight" in keys and "x_embedder.weight" in keys and blocks:
        return "diffusers"
    if "pos_embed_input.weight" in keys and blocks and any(
        k.startswith("double_blocks.") for k in keys
    ):  # fmt: skip
        return "xlabs"
    return None


def sd3_layout_of(keys: Iterable[str]) -> str | None:
    """ "diffusers" or "stability" for an SD 3.5 ControlNet's keys; None for anything else."""
    keys = set(keys)
    if "pos_embed_input.proj.weight" not in keys or "controlnet_blocks.0.weight" not in keys:
        return None
    if "transformer_blocks.0.attn.to_q.weight" in keys:
        return "diffusers"
    return "stability" if "transformer_blocks.0.attn.qkv.weight" in keys else None


def is_folder(folder: Path, folder_class: str = FOLDER_CLASS) -> bool:
    """Whether a folder is a diffusers `FluxControlNetModel` (or `folder_class`)."""
    try:
        return json.loads((folder / "config.json").read_text()).get("_class_name") == folder_class
    except (OSError, ValueError, AttributeError):
        return False


def is_flux_ip_adapter(keys: Iterable[str]) -> bool:
    """Whether a state dict's keys are XLabs' FLUX IP-Adapter's."""
    keys = list(keys)
    return any(k.startswith(IP_PROJ_PREFIX) for k in keys) and any(
        k.startswith("double_blocks.") and ".processor.ip_adapter_double_stream_" in k
        for k in keys
    )  # fmt: skip


def ip_text_width(shapes: dict[str, tuple[int, ...]]) -> int | None:
    """The text width (T5's, 4096 for FLUX.1) a FLUX IP-Adapter's keys and values read."""
    shape = shapes.get(_IP_KEY)
    return int(shape[1]) if shape and len(shape) == 2 else None
