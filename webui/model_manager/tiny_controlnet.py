"""Tiny random ControlNets for tests and the benchmark, in the layouts users have.

`build_tiny_controlnet` makes a diffusers `ControlNetModel` from a tiny pipeline's UNet
(`ControlNetModel.from_unet`) with every weight jittered (the zero convolutions too, so
the control changes the image). `save_tiny_controlnet` writes it as lllyasviel's single
file (`control_model.*` keys, `.safetensors` or `.pth`), as a diffusers-layout single
file, or as a diffusers folder. With `union_modes` it is a ControlNet Union
(`ControlNetUnionModel`, from the tiny SDXL UNet), as xinsir's files are. `controlnet_to_ldm` is the key map back to lllyasviel's
layout (the inverse of diffusers' `convert_controlnet_checkpoint`).

This module must never import a UI library.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .ldm_keys import StateDict, unet_to_ldm
from .tiny import build_tiny_pipeline

_BLOCK = re.compile(r"controlnet_cond_embedding\.blocks\.(\d+)\.(.+)")
_DOWN = re.compile(r"controlnet_down_blocks\.(\d+)\.(.+)")


def controlnet_to_ldm(state: StateDict, layers_per_block: int) -> StateDict:
    """ControlNetModel weights -> `control_model.*` names (lllyasviel's cldm layout)."""
    blocks = len({m[1] for k in state if (m := _BLOCK.match(k))})
    out: StateDict = {}
    rest: StateDict = {}
    for key, value in state.items():
        if key.startswith("controlnet_cond_embedding.conv_in."):
            out["input_hint_block.0." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("controlnet_cond_embedding.conv_out."):
            out[f"input_hint_block.{2 * (blocks + 1)}." + key.rsplit(".", 1)[1]] = value
        elif m := _BLOCK.match(key):
            out[f"input_hint_block.{2 * (int(m[1]) + 1)}.{m[2]}"] = value
        elif m := _DOWN.match(key):
            out[f"zero_convs.{m[1]}.0.{m[2]}"] = value
        elif key.startswith("controlnet_mid_block."):
            out["middle_block_out.0." + key.rsplit(".", 1)[1]] = value
        else:
            rest[key] = value
    out.update(unet_to_ldm(rest, layers_per_block))
    return {f"control_model.{k}": v.contiguous() for k, v in out.items()}


def _union_from_unet(unet, modes: int):
    """diffusers' `ControlNetUnionModel.from_unet`, with the union layers as wide as the
    tiny UNet's first block (xinsir's are 320 wide, as SDXL's)."""
    from diffusers import ControlNetUnionModel

    keys = ("in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types",
            "only_cross_attention", "block_out_channels", "layers_per_block",
            "downsample_padding", "mid_block_scale_factor", "act_fn", "norm_num_groups",
            "norm_eps", "cross_attention_dim", "attention_head_dim", "num_attention_heads",
            "use_linear_projection", "class_embed_type", "num_class_embeds", "upcast_attention",
            "resnet_time_scale_shift", "projection_class_embeddings_input_dim",
            "transformer_layers_per_block", "addition_embed_type",
            "addition_time_embed_dim")  # fmt: skip
    width = unet.config.block_out_channels[0]
    model = ControlNetUnionModel.from_config({
        **{k: unet.config[k] for k in keys}, "num_control_type": modes,
        "num_trans_channel": width, "num_proj_channel": width, "num_trans_head": 8,
        "conditioning_embedding_out_channels": (16, 32, 96, 256)})  # fmt: skip
    model.conv_in.load_state_dict(unet.conv_in.state_dict())
    model.time_embedding.load_state_dict(unet.time_embedding.state_dict())
    model.down_blocks.load_state_dict(unet.down_blocks.state_dict(), strict=False)
    model.mid_block.load_state_dict(unet.mid_block.state_dict(), strict=False)
    return model


@torch.no_grad()
def build_tiny_controlnet(family: str = "sd1", seed: int = 0, scale: float = 0.5,
                          union_modes: int = 0):  # fmt: skip
    """union_modes > 0: a ControlNet Union (SDXL) with that many control modes."""
    from diffusers import ControlNetModel

    unet = build_tiny_pipeline(family, seed).unet
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        model = _union_from_unet(unet, union_modes) if union_modes else (
            ControlNetModel.from_unet(unet))  # fmt: skip
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
        for module in [*model.controlnet_down_blocks, model.controlnet_mid_block]:
            for param in module.parameters():
                param.copy_(torch.randn_like(param) * scale / param[0].numel() ** 0.5)
    return model.eval()


def save_tiny_controlnet(path: str | Path, family: str = "sd1", seed: int = 0,
                         layout: str = "ldm", union_modes: int = 0) -> Path:  # fmt: skip
    """layout: "ldm" (lllyasviel's; .safetensors or .pth by the suffix), "diffusers"
    (one file), or "folder" (a diffusers folder at `path`); a union model (`union_modes`
    > 0, SDXL) is saved as xinsir's are: "diffusers" or "folder"."""
    from safetensors.torch import save_file

    path = Path(path)
    model = build_tiny_controlnet(family, seed, union_modes=union_modes)
    if layout == "folder":
        model.save_pretrained(path, safe_serialization=True)
        return path
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if layout == "ldm":
        state = controlnet_to_ldm(state, model.config.layers_per_block)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, str(path))
    return path
