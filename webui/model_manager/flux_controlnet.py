"""FLUX.1 ControlNets: told from their keys, loaded as diffusers' `FluxControlNetModel`, offline.

Layouts users have:

- diffusers' (`FluxControlNetModel`): InstantX's (`FLUX.1-dev-Controlnet-Canny`, ...-Union),
  Shakker-Labs' Union-Pro (1 and 2), as a single `.safetensors` file or a diffusers folder
  (`config.json` of class `FluxControlNetModel`): keys `controlnet_x_embedder.*`,
  `transformer_blocks.N.*`, `single_transformer_blocks.N.*`, `controlnet_blocks.N.*`,
  union models also `controlnet_mode_embedder.weight`;
- XLabs' (`flux-canny-controlnet-v3.safetensors`, `flux-depth-controlnet*.safetensors`):
  Black Forest Labs' block names (`double_blocks.N.*`, `img_in`, `txt_in`, ...) plus
  `input_hint_block.*` (a convolution stack on the pixels), `pos_embed_input` and
  `controlnet_blocks.N`. Diffusers runs this architecture as a `FluxControlNetModel` with a
  `conditioning_embedding_channels` hint block (its FluxControlNetPipeline repeats the
  few block residuals over the transformer's blocks); it ships no converter for the file,
  so `xlabs_state` renames it (the blocks by `flux_files.transformer_state`).

The layouts are told apart by `flux_control_keys.layout_of`. Every size comes from the
tensors (`config_from_shapes`), never from the family name. A layout that is neither
raises `FluxControlNetError` naming the file.

This module must never import `webui.core` or a UI library.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from .controlnet_file import load_model_file
from .flux_control_keys import FOLDER_CLASS, layout_of
from .flux_keys import rope_axes
from .identify import UnsupportedModelError, count

if TYPE_CHECKING:
    import torch

XLABS_HINT = 16  # XLabs' hint block: 16 channels, 1/8 of the image, packed 2x2
# XLabs' `input_hint_block` Sequential index -> diffusers' ControlNetConditioningEmbedding
_XLABS_HINT = {"0": "conv_in", "2": "blocks.0", "4": "blocks.1", "6": "blocks.2",
               "8": "blocks.3", "10": "blocks.4", "12": "blocks.5", "14": "conv_out"}  # fmt: skip


class FluxControlNetError(UserError):
    """A FLUX ControlNet file that cannot be read or does not fit the checkpoint."""


def config_from_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """The `FluxControlNetModel` config of a diffusers-layout state dict's shapes."""
    inner, in_channels = shapes["x_embedder.weight"]
    layers = count(shapes, "transformer_blocks.{}.")
    singles = count(shapes, "single_transformer_blocks.{}.")
    block = "transformer_blocks.0." if layers else "single_transformer_blocks.0."
    head_dim = shapes[f"{block}attn.norm_q.weight"][0]
    if inner % head_dim:
        raise UnsupportedModelError(f"FLUX ControlNet width {inner} with heads of {head_dim}")
    config: dict[str, Any] = {
        "_class_name": FOLDER_CLASS,
        "patch_size": 1,
        "in_channels": in_channels,
        "num_layers": layers,
        "num_single_layers": singles,
        "attention_head_dim": head_dim,
        "num_attention_heads": inner // head_dim,
        "joint_attention_dim": shapes["context_embedder.weight"][1],
        "pooled_projection_dim": shapes["time_text_embed.text_embedder.linear_1.weight"][1],
        "guidance_embeds": "time_text_embed.guidance_embedder.linear_1.weight" in shapes,
        "axes_dims_rope": rope_axes(head_dim),
        "num_mode": None,
        "conditioning_embedding_channels": None,
    }
    if "controlnet_mode_embedder.weight" in shapes:
        config["num_mode"] = shapes["controlnet_mode_embedder.weight"][0]
    if "input_hint_block.conv_out.weight" in shapes:  # XLabs': the hint read from pixels
        config["conditioning_embedding_channels"] = shapes["input_hint_block.conv_out.weight"][0]
        config["patch_size"] = 2
    return config


def xlabs_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An XLabs FLUX ControlNet's tensors in `FluxControlNetModel`'s names."""
    from .flux_files import transformer_state

    hint: dict[str, torch.Tensor] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("input_hint_block."):
            index, _, kind = key.removeprefix("input_hint_block.").partition(".")
            if index not in _XLABS_HINT:
                raise UnsupportedModelError(f"unknown XLabs ControlNet tensor {key}")
            hint[f"input_hint_block.{_XLABS_HINT[index]}.{kind}"] = value
        elif key.startswith("pos_embed_input."):
            hint["controlnet_x_embedder." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("controlnet_blocks."):
            hint[key] = value
        else:
            rest[key] = value
    width = rest["img_in.weight"].shape[0]
    return {**transformer_state(rest, width), **hint}


def load_flux_controlnet(path: Path) -> Any:
    """A `FluxControlNetModel` (CPU, the file's dtype cast to float32) from a file or folder."""
    from diffusers import FluxControlNetModel

    return load_model_file(path, FluxControlNetModel, "FLUX ControlNet", FluxControlNetError,
                           layout_of, {"xlabs": xlabs_state}, config_from_shapes)  # fmt: skip


def check_fits(model: Any, transformer_config: dict, name: str) -> None:
    """A FluxControlNetError naming the file when its residuals cannot be added to this
    transformer's blocks (another width) or it reads other text embeddings."""
    config = model.config
    width = config.num_attention_heads * config.attention_head_dim
    wanted = transformer_config["num_attention_heads"] * transformer_config["attention_head_dim"]
    if width != wanted or config.joint_attention_dim != transformer_config["joint_attention_dim"]:
        raise FluxControlNetError(
            f"FLUX ControlNet {name} (width {width}, text width {config.joint_attention_dim}) "
            f"does not fit this checkpoint (width {wanted}, text width "
            f"{transformer_config['joint_attention_dim']})"
        )
