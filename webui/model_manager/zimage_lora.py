"""Z-Image LoRA files in the layouts users have, as the diffusers/peft state
`ZImagePipeline.load_lora_weights` takes, checked against the loaded transformer.

Layouts:
- diffusers / peft (`transformer.layers.0.attention.to_q.lora_A.weight`, or without the
  `transformer.` prefix), ai-toolkit (the same under `diffusion_model.`, with `.alpha`),
  kohya / musubi-tuner (`lora_unet_layers_0_attention_to_q.lora_down.weight`, `.alpha`; also
  the fused `..._attention_qkv`), DiffSynth-Studio (`...lora_A.default.weight`): diffusers'
  own converter reads them (`ZImageLoraLoaderMixin.lora_state_dict`).
- ComfyUI's own names for the model (NextDiT's `layers.0.attention.qkv`,
  `attention.out`, `x_embedder`, `final_layer`, with lora_A/lora_B or lora_down/lora_up, under
  `diffusion_model.` or not), which diffusers' converter passes through unsplit: converted
  here with the FLUX converter's machinery (`flux_lora.converted_layer`; the fused
  projection's up weight split in thirds, alpha / rank folded in).

Every layer the file names must exist in the loaded transformer: a file of another
family (a FLUX or SDXL LoRA) is a `ValueError` naming the family its keys look like,
never an adapter that matches nothing. Text-encoder parts (`lora_te_*`, `text_encoder.`:
Qwen3) are taken out before (`encoder_lora`, which applies them to Qwen3).

This module must never import `webui.core` or a UI library, and never touch the network.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .flux_lora import converted_layer, split_key

if TYPE_CHECKING:
    import torch

PREFIXES = ("diffusion_model.", "transformer.", "")
_COMFY_RENAMES = (  # ComfyUI's (NextDiT's) layer names -> diffusers' ZImageTransformer2DModel's
    ("x_embedder", "all_x_embedder.2-1"),
    ("final_layer.", "all_final_layer.2-1."),
)


def is_comfy_layout(state: dict) -> bool:
    """A LoRA in ComfyUI's names for Z-Image (fused `attention.qkv`, `attention.out`)."""
    return any(
        _module(key).endswith((".attention.qkv", ".attention.out"))
        for key in state
        if not key.startswith("lora_unet_")
    )


def _module(key: str) -> str:
    try:
        module, _ = split_key(key)
    except KeyError:
        return key
    for prefix in PREFIXES:
        if prefix and module.startswith(prefix):
            return module[len(prefix) :]
    return module


def _targets(name: str, up: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """The diffusers layers one ComfyUI-named layer is, with their rows of `up`."""
    if name.endswith(".attention.qkv"):  # Z-Image: as many key/value heads as heads
        block = name.removesuffix("qkv")
        return [(f"{block}to_{x}", part) for x, part in zip("qkv", up.chunk(3, dim=0), strict=True)]
    if name.endswith(".attention.out"):
        return [(name.removesuffix("out") + "to_out.0", up)]
    for old, new in _COMFY_RENAMES:
        if name.startswith(old):
            return [(new + name[len(old) :], up)]
    return [(name, up)]


def _from_comfy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        _, part = split_key(key)
        modules.setdefault(_module(key), {})[part] = value
    out: dict[str, torch.Tensor] = {}
    for name, parts in modules.items():
        out.update(converted_layer(name, parts, _targets))
    return out


def diffusers_lora_state(pipe: Any, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` (a LoRA file's tensors) as `transformer.<layer>.lora_A/B.weight` of the
    pipeline's Z-Image transformer. ValueError when the file is another family's; KeyError
    naming a key that names no layer of this model."""
    if is_comfy_layout(state):
        state = _from_comfy(state)
    elif any(k.endswith(".alpha") for k in state):  # diffusers' converter adds the prefix
        state = {k.removeprefix("transformer."): v for k, v in state.items()}
    elif not any(k.startswith("transformer.") for k in state) and _names_layers(pipe, state):
        state = {f"transformer.{k}": v for k, v in state.items()}  # peft without the prefix
    try:
        converted = type(pipe).lora_state_dict(dict(state))
    except Exception as exc:  # diffusers' converter on a foreign file raises many kinds
        raise ValueError(_foreign(state) or f"not a Z-Image LoRA ({exc})") from exc
    _check_layers(pipe, converted, state)
    return converted


def _names_layers(pipe: Any, state: dict) -> bool:
    layers = dict(pipe.transformer.named_modules())
    return any(_module(key) in layers for key in state)


def _check_layers(pipe: Any, converted: dict, original: dict) -> None:
    layers = dict(pipe.transformer.named_modules())
    names = {key.removeprefix("transformer.").rsplit(".", 2)[0] for key in converted}
    found = [name for name in names if name in layers or name.removesuffix(".base_layer") in layers]
    if not found or not all(key.startswith("transformer.") for key in converted):
        raise ValueError(_foreign(original) or "no layer of this Z-Image model matches the file")
    unknown = sorted(set(names) - set(found))
    if unknown:
        raise KeyError(f"LoRA layer {unknown[0]!r} names no layer of this Z-Image model")


def _foreign(state: dict) -> str | None:
    """A message naming the family a LoRA's keys look like, when it is not Z-Image."""
    from .sniff import lora_family

    family = lora_family({k: tuple(getattr(v, "shape", ())) for k, v in state.items()})
    if family and family != "Z-Image":
        return f"a {family} LoRA: it does not fit a Z-Image model"
    return None
