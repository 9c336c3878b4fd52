"""SD 3.5 ControlNets: told from their keys, loaded as diffusers' `SD3ControlNetModel`, offline.

Layouts users have (told apart by `flux_control_keys.sd3_layout_of`):

- diffusers' (`SD3ControlNetModel`): InstantX's `SD3-Controlnet-Canny/Pose/Tile` and other
  diffusers-trained models, as a single `.safetensors` file or a diffusers folder
  (`config.json` of class `SD3ControlNetModel`): `pos_embed.*`, `pos_embed_input.proj.*`,
  `context_embedder.*`, joint `transformer_blocks.N.*`, `controlnet_blocks.N.*`;
- Stability's (`sd3.5_large_controlnet_{canny,depth,blur}.safetensors`): no position nor
  text embedder of their own (they take the transformer's position embedding and read no
  text), single-stream `transformer_blocks.N.*` in Stability's names (`attn.qkv`,
  `attn.proj`, `mlp.fc1/fc2`, `adaLN_modulation.1`), renamed by `stability_state` as
  diffusers' `scripts/convert_sd3_controlnet_to_diffusers.py` does.

Every size comes from the tensors (`config_from_shapes`); the heads, when the file has no
q/k norm to tell them, are the checkpoint's (an SD 3 ControlNet is a copy of its
transformer's first blocks). A file that fits neither layout or not the checkpoint raises
`SD3ControlNetError` naming it.

This module must never import `webui.core` or a UI library.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from .controlnet_file import load_model_file
from .flux_control_keys import SD3_FOLDER_CLASS, sd3_layout_of
from .identify import count

if TYPE_CHECKING:
    import torch

_STABILITY_NAMES = {"attn.proj.": "attn.to_out.0.", "mlp.fc1.": "ff.net.0.proj.",
                    "mlp.fc2.": "ff.net.2.", "adaLN_modulation.1.": "norm1.linear."}  # fmt: skip


class SD3ControlNetError(UserError):
    """An SD 3.5 ControlNet file that cannot be read or does not fit the checkpoint."""


def config_from_shapes(shapes: dict[str, tuple[int, ...]], head_dim: int = 64) -> dict[str, Any]:
    """The `SD3ControlNetModel` config of a diffusers-layout state dict's shapes; `head_dim`:
    the checkpoint's, used when the blocks have no q/k norm that tells it."""
    inner = shapes["controlnet_blocks.0.weight"][0]
    hint = shapes["pos_embed_input.proj.weight"]
    norm = shapes.get("transformer_blocks.0.attn.norm_q.weight")
    head_dim = norm[0] if norm else head_dim
    if inner % head_dim:
        raise SD3ControlNetError(f"SD 3.5 ControlNet width {inner} with heads of {head_dim}")
    text = shapes.get("context_embedder.weight")
    positions = shapes.get("pos_embed.pos_embed")
    in_channels = shapes["pos_embed.proj.weight"][1] if "pos_embed.proj.weight" in shapes else 16
    layers = count(shapes, "transformer_blocks.{}.")
    return {
        "_class_name": SD3_FOLDER_CLASS,
        "patch_size": hint[2],
        "in_channels": in_channels,
        "out_channels": in_channels,
        "extra_conditioning_channels": hint[1] - in_channels,
        "num_layers": layers,
        "attention_head_dim": head_dim,
        "num_attention_heads": inner // head_dim,
        "joint_attention_dim": text[1] if text else None,
        "caption_projection_dim": inner,
        "pooled_projection_dim": shapes["time_text_embed.text_embedder.linear_1.weight"][1],
        "pos_embed_max_size": math.isqrt(positions[1]) if positions else None,
        "pos_embed_type": "sincos" if "pos_embed.proj.weight" in shapes else None,
        "use_pos_embed": "pos_embed.proj.weight" in shapes,
        "dual_attention_layers": tuple(
            i for i in range(layers) if f"transformer_blocks.{i}.attn2.to_q.weight" in shapes
        ),
        "qk_norm": "rms_norm" if norm else None,
        # InstantX's read zeros as the pooled text, Stability's the prompt's (diffusers' rule)
        "force_zeros_for_pooled_projection": text is not None,
    }


def stability_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Stability SD 3.5 ControlNet's tensors in `SD3ControlNetModel`'s names."""
    import torch

    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "control_type":  # a variant marker some files carry: no weight of the model
            continue
        if ".attn.qkv." in key:
            for name, part in zip(("to_q", "to_k", "to_v"), torch.chunk(value, 3), strict=True):
                out[key.replace("attn.qkv.", f"attn.{name}.")] = part
            continue
        for old, new in _STABILITY_NAMES.items():
            key = key.replace(f".{old}", f".{new}")
        out[key] = value
    return out


def load_sd3_controlnet(path: Path, transformer_config: dict | None = None) -> Any:
    """An `SD3ControlNetModel` (CPU, float32) from a file or a diffusers folder."""
    from diffusers import SD3ControlNetModel

    head_dim = int((transformer_config or {}).get("attention_head_dim", 64))

    return load_model_file(path, SD3ControlNetModel, "SD 3.5 ControlNet", SD3ControlNetError,
                           sd3_layout_of, {"stability": stability_state},
                           lambda shapes: config_from_shapes(shapes, head_dim))  # fmt: skip


def fit_to(model: Any, transformer: Any, name: str) -> None:
    """Check that the model's residuals fit the transformer's blocks (its width, latent
    channels, text width); give Stability's models the transformer's position embedding
    (as diffusers' StableDiffusion3ControlNetPipeline does)."""
    config, wanted = model.config, transformer.config
    width = config.num_attention_heads * config.attention_head_dim
    target = wanted.num_attention_heads * wanted.attention_head_dim
    text = config.joint_attention_dim
    if (width, config.in_channels) != (target, wanted.in_channels) or text not in (
        None, wanted.joint_attention_dim,
    ):  # fmt: skip
        raise SD3ControlNetError(
            f"SD 3.5 ControlNet {name} (width {width}, text width {text}) does not fit this "
            f"checkpoint (width {target}, text width {wanted.joint_attention_dim})"
        )
    if not config.use_pos_embed:
        pos_embed = model._get_pos_embed_from_transformer(transformer)
        model.pos_embed = pos_embed.to(model.device, model.dtype)
