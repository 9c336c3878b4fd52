"""Tiny random FLUX ControlNets for tests, in the layouts users have (`flux_controlnet`).

`build_tiny_flux_controlnet` makes a diffusers `FluxControlNetModel` of the tiny FLUX.1's
sizes (`tiny_flux`: width 64, 2 heads of 32, text width 32), 1 double and 1 single block,
every weight random (the zero-initialised output layers too, so a unit changes the image);
`union=True` adds InstantX's / Shakker-Labs' 7 control modes, `xlabs=True` makes XLabs'
architecture (a pixel hint block, 1 double block, no single blocks). `save_tiny_flux_controlnet`
writes it as a diffusers single file, a diffusers folder, or (xlabs) in XLabs' key names.
`save_tiny_flux_ip_adapter` writes an IP-Adapter in XLabs' FLUX layout for the tiny
FLUX.1 (its projection reads a CLIP vision model's `image_embeds` of `clip_projection`).

This module must never touch the network or import a UI library.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch

from .flux_controlnet import XLABS_HINT
from .tiny_flux import HEAD_DIM, HEADS, TEXT_WIDTH

_HINT_TO_XLABS = {"conv_in": "0", "conv_out": "14",
                  **{f"blocks.{i}": str(2 * i + 2) for i in range(6)}}  # fmt: skip


@torch.no_grad()
def build_tiny_flux_controlnet(seed: int = 0, union: bool = False, xlabs: bool = False):
    from diffusers import FluxControlNetModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FluxControlNetModel(
            patch_size=2 if xlabs else 1, in_channels=64, num_layers=1,
            num_single_layers=0 if xlabs else 1, attention_head_dim=HEAD_DIM,
            num_attention_heads=HEADS, joint_attention_dim=TEXT_WIDTH,
            pooled_projection_dim=TEXT_WIDTH, guidance_embeds=True, axes_dims_rope=(4, 14, 14),
            num_mode=7 if union else None,
            conditioning_embedding_channels=XLABS_HINT if xlabs else None,
        )  # fmt: skip
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
        outputs = [*model.controlnet_blocks, *model.controlnet_single_blocks,
                   model.controlnet_x_embedder]  # fmt: skip
        for module in outputs:
            for param in module.parameters():
                param.copy_(torch.randn_like(param) * 0.5 / param[0].numel() ** 0.5)
    return model.eval()


def xlabs_keys(model) -> dict[str, torch.Tensor]:
    """A `FluxControlNetModel` of XLabs' architecture in XLabs' key names (the inverse of
    `flux_controlnet.xlabs_state`)."""
    from .tiny_flux import bfl_transformer_state

    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for key in list(state):
        if key.startswith("input_hint_block."):
            name, kind = key.removeprefix("input_hint_block.").rsplit(".", 1)
            out[f"input_hint_block.{_HINT_TO_XLABS[name]}.{kind}"] = state.pop(key)
        elif key.startswith("controlnet_x_embedder."):
            out["pos_embed_input." + key.rsplit(".", 1)[1]] = state.pop(key)
        elif key.startswith("controlnet_blocks."):
            out[key] = state.pop(key)
    width = model.config.num_attention_heads * model.config.attention_head_dim
    state |= {
        "norm_out.linear.weight": torch.zeros(2 * width, width),
        "norm_out.linear.bias": torch.zeros(2 * width),
    }  # the converter wants a final layer
    config = SimpleNamespace(num_layers=model.config.num_layers, num_single_layers=0)
    blocks = bfl_transformer_state(SimpleNamespace(config=config, state_dict=lambda: state))
    return {**out, **{k: v for k, v in blocks.items() if not k.startswith("final_layer.")}}


def save_tiny_flux_controlnet(path: str | Path, seed: int = 0, layout: str = "diffusers",
                              union: bool = False) -> Path:  # fmt: skip
    """layout: "diffusers" (one file), "folder" (a diffusers folder at `path`) or "xlabs"."""
    model = build_tiny_flux_controlnet(seed, union=union, xlabs=layout == "xlabs")
    return write_model(model, Path(path), layout, xlabs_keys if layout == "xlabs" else None)


def write_model(model, path: Path, layout: str, renamed: Callable | None = None) -> Path:
    """A diffusers folder at `path` (layout "folder"), else one file of the model's tensors
    in its names or in `renamed(model)`'s."""
    from safetensors.torch import save_file

    if layout == "folder":
        model.save_pretrained(path, safe_serialization=True)
        return path
    state = renamed(model) if renamed is not None else model.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@torch.no_grad()
def save_tiny_flux_ip_adapter(path: str | Path, clip_projection: int, seed: int = 0,
                              double_blocks: int = 1) -> Path:  # fmt: skip
    """XLabs' `ip_adapter.safetensors` layout: `ip_adapter_proj_model.*` (diffusers'
    `ImageProjection`, 4 tokens of the text width) and per double block N
    `double_blocks.N.processor.ip_adapter_double_stream_{k,v}_proj.*`."""
    from diffusers.models.embeddings import ImageProjection
    from safetensors.torch import save_file

    width = HEADS * HEAD_DIM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        proj = ImageProjection(cross_attention_dim=TEXT_WIDTH, image_embed_dim=clip_projection,
                               num_image_text_embeds=4)  # fmt: skip
        state = {f"ip_adapter_proj_model.{k.replace('image_embeds', 'proj')}": v.clone()
                 for k, v in proj.state_dict().items()}  # fmt: skip
        for n in range(double_blocks):
            for name in ("k", "v"):
                key = f"double_blocks.{n}.processor.ip_adapter_double_stream_{name}_proj"
                state[f"{key}.weight"] = torch.randn(width, TEXT_WIDTH) / TEXT_WIDTH**0.5
                state[f"{key}.bias"] = torch.randn(width) * 0.1
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path
