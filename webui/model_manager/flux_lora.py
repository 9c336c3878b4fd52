"""FLUX LoRA files in the layouts users have, as the diffusers/peft state `load_lora_weights`
takes, for a transformer of any width.

Layouts:
- kohya / sd-scripts / Forge (`lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`,
  `.lora_up.weight`, `.alpha`; CLIP-L as `lora_te1_...`) and Black Forest Labs' module
  names (ComfyUI: `diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight` or
  `lora_down`): converted here. diffusers 0.42's kohya converter splits
  `single_blocks.N.linear1` at FLUX.1's width 3072 whatever the model's width, so the
  fused projections are split here at the width of the loaded transformer; the alpha
  scale (alpha / rank) is folded into the up weights. CLIP-L keys go through diffusers'
  own text-encoder key converter.
- ai-toolkit / diffusers / peft (`transformer.transformer_blocks.0.attn.to_q.lora_A.weight`)
  and XLabs (`double_blocks.0.processor.qkv_lora1.down.weight`): returned as they are;
  diffusers converts them (its XLabs converter splits by thirds, not by a fixed width).

`split_key` and `converted_layer` (one fused or renamed layer's down / up / alpha as
diffusers' lora_A / lora_B) also convert Z-Image's ComfyUI-named files (`zimage_lora`), and
`widen_fp8_lora` serves both families' fp8 models.
Other transformer families reuse the conversion with their own `LoraLayout` (their
original layer names, how each maps onto diffusers' layers, their text-encoder keys):
SD 3.5's is `sd3_lora.SD3_LORA`. A file whose header says it was made for another family
(`sniff`: an SDXL LoRA on FLUX) is refused with a message naming both.

This module must never import `webui.core` or a UI library, and never touch the network.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .flux_files import _DIRECT, _DOUBLE, _QKV, _SINGLE
from .sniff import Header, sniff

if TYPE_CHECKING:
    import torch

KOHYA_PREFIX = "lora_unet_"
BFL_PREFIXES = ("diffusion_model.", "transformer.", "")
_DOWN = ("lora_down.weight", "lora_A.weight")
_UP = ("lora_up.weight", "lora_B.weight")
_BLOCK = re.compile(r"^(double_blocks|single_blocks)\.(\d+)\.(.+)$")
_MODULATION = "final_layer.adaLN_modulation.1"
Targets = Callable[[str, "torch.Tensor"], list[tuple[str, "torch.Tensor"]]]
_LAYER_NAMES = (  # BFL's linear layers inside a block (the targets of a LoRA)
    ("double_blocks", (*_QKV, *(k for k in _DOUBLE if not k.endswith(".scale")))),
    ("single_blocks", ("linear1", *(k for k in _SINGLE if not k.endswith(".scale")))),
)


@dataclass(frozen=True)
class LoraLayout:
    """One transformer family's LoRA files in its original layer names (kohya's
    `lora_unet_<name>`, ComfyUI's `diffusion_model.<name>`) and diffusers' names for them."""

    label: str  # in messages: "FLUX", "SD 3.5"
    families: tuple[str, ...]  # `sniff`'s labels of its LoRA files ("" : unknown)
    names: Callable[[Mapping], list[str]]  # transformer config -> every layer a LoRA targets
    # (layer name, up weight, config) -> diffusers layers with their rows of the up weight
    targets: Callable[[str, torch.Tensor, Mapping], list[tuple[str, torch.Tensor]]]
    is_layer: Callable[[str], bool]  # a layer name of the original layout
    text_prefixes: tuple[str, ...]  # kohya's text-encoder key prefixes
    text: Callable[[dict], dict]  # those keys in diffusers' names


def is_bfl_layout(state: dict, layout: LoraLayout | None = None) -> bool:
    """A kohya or original-named LoRA of the layout's family (what this module converts)."""
    layout = layout or FLUX_LORA
    kohya = (KOHYA_PREFIX, *layout.text_prefixes)
    return any(k.startswith(kohya) for k in state) or any(
        _bfl_name(k.rsplit(".", 2)[0], layout) is not None for k in state if k.endswith(_DOWN)
    )


def check_family(state: dict, layout: LoraLayout) -> None:
    """Refuse a LoRA whose keys say it was made for another family (`ValueError`)."""
    found = sniff(Header({key: tuple(value.shape) for key, value in state.items()})).family
    if found not in layout.families:
        raise ValueError(f"a LoRA made for {found}, not for {layout.label}")


def bfl_module_names(num_layers: int, num_single_layers: int) -> list[str]:
    """Every linear layer a FLUX LoRA can target, in BFL's names."""
    names = [*_DIRECT, _MODULATION]
    counts = {"double_blocks": num_layers, "single_blocks": num_single_layers}
    for block, layers in _LAYER_NAMES:
        names += [f"{block}.{i}.{layer}" for i in range(counts[block]) for layer in layers]
    return names


def diffusers_lora_state(
    state: dict[str, torch.Tensor], config: Any, layout: LoraLayout | None = None
) -> dict[str, torch.Tensor]:
    """`state` (a LoRA file's tensors) in diffusers' names for the layout's transformer
    (default FLUX's `FluxTransformer2DModel`) with `config`; layouts diffusers reads itself
    are returned unchanged. A key of a kohya/original-named file that names no layer of
    this model raises `KeyError` naming it; a file of another family `ValueError`."""
    layout = layout or FLUX_LORA
    check_family(state, layout)
    if not is_bfl_layout(state, layout):
        return state
    names = layout.names(config)
    kohya = {KOHYA_PREFIX + name.replace(".", "_"): name for name in names}
    modules: dict[str, dict[str, torch.Tensor]] = {}
    text: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(layout.text_prefixes):
            text[key] = value
            continue
        module, part = split_key(key)
        name = (kohya.get(module) if module.startswith(KOHYA_PREFIX)
                else _bfl_name(module, layout))  # fmt: skip
        if name is None or name not in names:
            raise KeyError(f"LoRA key {key!r} names no layer of this {layout.label} model")
        modules.setdefault(name, {})[part] = value
    out: dict[str, torch.Tensor] = {}
    for name, parts in modules.items():
        out.update(converted_layer(name, parts, lambda n, up: layout.targets(n, up, config)))
    if text:
        out.update(layout.text(text))
    return out


def widen_fp8_lora(pipe: Any, state: dict[str, torch.Tensor], adapter: str) -> None:
    """On a pipeline with fp8 weights (`weight_storage`), the adapter's LoRA layers in the
    compute dtype with the file's own values (peft makes them fp8 like their base layer).
    FLUX's and Z-Image's pipelines alike (a text encoder freed after encoding is skipped)."""
    import torch

    from .weight_storage import has_fp8, widen_fp8_adapters

    names = ("transformer", "text_encoder", "text_encoder_2")  # SD 3.5: CLIP-G's LoRA too
    components = {name: getattr(pipe, name, None) for name in names}
    components = {k: v for k, v in components.items() if isinstance(v, torch.nn.Module)}
    if not any(has_fp8(model) for model in components.values()):
        return
    converted = type(pipe).lora_state_dict(dict(state))  # the layouts diffusers converts
    for prefix, model in components.items():
        widen_fp8_adapters(model, adapter, converted, f"{prefix}.")


def split_key(key: str) -> tuple[str, str]:
    """(module name, part) of a LoRA key; part is a down, an up or an alpha tensor."""
    for part in (*_DOWN, *_UP, "alpha"):
        if key.endswith("." + part):
            return key[: -len(part) - 1], part
    raise KeyError(f"LoRA key {key!r} is neither a down, an up nor an alpha tensor")


def _bfl_name(module: str, layout: LoraLayout) -> str | None:
    for prefix in BFL_PREFIXES:
        if module.startswith(prefix):
            rest = module[len(prefix) :]
            if layout.is_layer(rest):
                return rest
    return None


def converted_layer(
    name: str, parts: dict, targets: Targets, component: str = "transformer"
) -> dict[str, torch.Tensor]:
    """One fused or renamed layer's (down, up, alpha) as the pipeline `component`'s layers'
    lora_A / lora_B weights: `targets(name, up)` names the diffusers layers with their rows
    of `up`."""
    down = next((parts[k] for k in _DOWN if k in parts), None)
    up = next((parts[k] for k in _UP if k in parts), None)
    if down is None or up is None:
        raise KeyError(f"LoRA layer {name!r} lacks its down or up weight")
    if "alpha" in parts:
        up = up * (float(parts["alpha"]) / down.shape[0])
    return {
        key: tensor.contiguous()
        for target, part_up in targets(name, up)
        for key, tensor in ((f"{component}.{target}.lora_A.weight", down),
                            (f"{component}.{target}.lora_B.weight", part_up))
    }  # fmt: skip


def _targets(name: str, up: torch.Tensor, width: int) -> list[tuple[str, torch.Tensor]]:
    """The diffusers layers one BFL layer is, with their rows of the up weight."""
    import torch

    if name == _MODULATION:  # BFL (shift, scale) -> diffusers (scale, shift)
        shift, scale = up.chunk(2, dim=0)
        return [("norm_out.linear", torch.cat([scale, shift], dim=0))]
    match = _BLOCK.match(name)
    if match is None:
        return [(_DIRECT[name], up)]
    block, index, layer = match.groups()
    if block == "double_blocks":
        target = f"transformer_blocks.{index}."
        if layer in _QKV:
            return [(target + n, t) for n, t in zip(_QKV[layer], up.chunk(3, dim=0), strict=True)]
        return [(target + _DOUBLE[layer], up)]
    target = f"single_transformer_blocks.{index}."
    if layer == "linear1":
        split = up.split([width, width, width, up.shape[0] - 3 * width], dim=0)
        names = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
        return [(target + n, t) for n, t in zip(names, split, strict=True)]
    return [(target + _SINGLE[layer], up)]


def _is_flux_layer(name: str) -> bool:
    return bool(_BLOCK.match(name)) or name in _DIRECT or name == _MODULATION


def _flux_text(text: dict) -> dict:
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    return _convert_kohya_flux_lora_to_diffusers(text)


FLUX_LORA = LoraLayout(
    label="FLUX",
    families=("FLUX", ""),
    names=lambda config: bfl_module_names(config["num_layers"], config["num_single_layers"]),
    targets=lambda name, up, config: _targets(
        name, up, config["num_attention_heads"] * config["attention_head_dim"]
    ),
    is_layer=_is_flux_layer,
    text_prefixes=("lora_te_", "lora_te1_"),
    text=_flux_text,
)
