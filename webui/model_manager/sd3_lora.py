"""SD 3.5 LoRA files in the layouts users have, as the diffusers/peft state
`StableDiffusion3Pipeline.load_lora_weights` takes (diffusers 0.42 has no converter for
SD 3's original names).

Layouts:
- kohya / sd-scripts / ComfyUI in Stability's layer names
  (`lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight`, `.lora_up.weight`,
  `.alpha`; `diffusion_model.joint_blocks.0.x_block.attn.qkv.lora_A.weight`): converted by
  `flux_lora.diffusers_lora_state` with `SD3_LORA`: the fused qkv projections split in
  thirds, the final (and the last context block's) modulation's (shift, scale) turned into
  diffusers' (scale, shift), the alpha scale folded into the up weights. CLIP-L and CLIP-G
  as `lora_te1_...` and `lora_te2_...` go onto `text_encoder` and `text_encoder_2`; T5's
  `lora_te3_...` keys are taken out before and applied to T5 by `encoder_lora` (diffusers'
  SD 3 pipeline puts no LoRA on T5).
- diffusers / peft (`transformer.transformer_blocks.0.attn.to_q.lora_A.weight`,
  `text_encoder.`, `text_encoder_2.`): returned as they are.

This module must never import `webui.core` or a UI library, and never touch the network.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .flux_files import _swap_halves
from .flux_lora import LoraLayout, converted_layer, split_key
from .sd3_keys import BLOCK_NAMES, QKV_NAMES, TOP_NAMES

if TYPE_CHECKING:
    import torch

_BLOCK = re.compile(r"^joint_blocks\.(\d+)\.(.+)$")
_MODULATION = "final_layer.adaLN_modulation.1"
_TOP = {
    stability: diffusers
    for diffusers, stability in TOP_NAMES.items()
    if diffusers != "pos_embed.proj"
}  # fmt: skip  (the patch embedding is a convolution)
_IN_BLOCK = {
    stability: diffusers for diffusers, stability in BLOCK_NAMES.items() if ".ln_" not in stability
}  # fmt: skip  (norm scales: no LoRA layers)
_FUSED = {stability: diffusers for diffusers, stability in QKV_NAMES.items()}
_NOT_IN_LAST = ("context_block.attn.proj", "context_block.mlp.fc1", "context_block.mlp.fc2")
_TEXT = {"lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2"}
_CLIP_LAYER = re.compile(
    r"^text_model_encoder_layers_(\d+)_(self_attn|mlp)_(q_proj|k_proj|v_proj|out_proj|fc1|fc2)$"
)


def layer_names(config: Mapping) -> list[str]:
    """Every linear layer of an SD 3 MMDiT with `config` a LoRA can target, in Stability's
    names (the last block's context stream has only its modulation and qkv)."""
    names = [*_TOP, _MODULATION]
    last, dual = config["num_layers"] - 1, set(config.get("dual_attention_layers") or ())
    for i in range(config["num_layers"]):
        for layer in (*_FUSED, *_IN_BLOCK):
            if (layer.startswith("x_block.attn2.") and i not in dual) or (
                i == last and layer in _NOT_IN_LAST
            ):
                continue
            names.append(f"joint_blocks.{i}.{layer}")
    return names


def _targets(name: str, up: torch.Tensor, config: Mapping) -> list[tuple[str, torch.Tensor]]:
    """The diffusers layers one Stability layer is, with their rows of the up weight."""
    if name == _MODULATION:
        return [("norm_out.linear", _swap_halves(up))]
    match = _BLOCK.match(name)
    if match is None:
        return [(_TOP[name], up)]
    index, layer = match.groups()
    target = f"transformer_blocks.{index}."
    if layer in _FUSED:
        start = _FUSED[layer]  # "attn.to_", "attn.add_", "attn2.to_"
        names = [f"attn.add_{x}_proj" if start == "attn.add_" else f"{start}{x}" for x in "qkv"]
        return [(target + n, rows) for n, rows in zip(names, up.chunk(3, dim=0), strict=True)]
    if layer == "context_block.adaLN_modulation.1" and int(index) == config["num_layers"] - 1:
        up = _swap_halves(up)  # the last context block's AdaLayerNormContinuous
    return [(target + _IN_BLOCK[layer], up)]


def _is_layer(name: str) -> bool:
    match = _BLOCK.match(name)
    if match is None:
        return name in _TOP or name == _MODULATION
    return match.group(2) in _FUSED or match.group(2) in _IN_BLOCK


def text_lora_state(text: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """kohya's CLIP-L and CLIP-G keys (`lora_te1_`, `lora_te2_`) as peft keys of the
    pipeline's `text_encoder` and `text_encoder_2` (alpha folded into the up weights)."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in text.items():
        module, part = split_key(key)
        modules.setdefault(module, {})[part] = value
    out: dict[str, torch.Tensor] = {}
    for module, parts in modules.items():
        prefix = next(p for p in _TEXT if module.startswith(p))
        name = _clip_name(module[len(prefix) :], module)
        out.update(converted_layer(name, parts, _same_layer, component=_TEXT[prefix]))
    return out


def _same_layer(name: str, up: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    return [(name, up)]


def _clip_name(flat: str, module: str) -> str:
    if flat == "text_projection":
        return flat
    match = _CLIP_LAYER.match(flat)
    if match is None:
        raise KeyError(f"LoRA key {module!r} names no layer of a CLIP text encoder")
    index, block, layer = match.groups()
    return f"text_model.encoder.layers.{index}.{block}.{layer}"


SD3_LORA = LoraLayout(
    label="SD 3.5",
    families=("SD 3", ""),
    names=layer_names,
    targets=_targets,
    is_layer=_is_layer,
    text_prefixes=("lora_te1_", "lora_te2_"),
    text=text_lora_state,
)
