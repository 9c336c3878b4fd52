"""LoRA layers on the big text encoders: FLUX.1's and SD 3.5's T5-XXL, Z-Image's Qwen3.

diffusers' pipelines put LoRA on the transformer and the CLIP encoders only (FLUX's and
Z-Image's converters drop T5 / text-encoder keys with a log line), so a LoRA file's layers
of these encoders are applied here, in the layouts users have:

- kohya / sd-scripts / musubi-tuner: `lora_te2_encoder_block_0_layer_0_SelfAttention_q`
  (FLUX: CLIP-L is te1, T5 te2), `lora_te3_...` (SD 3.5: CLIP-L, CLIP-G, T5), `lora_te_` or
  `lora_te1_` + `layers_0_self_attn_q_proj` (Z-Image's Qwen3, with or without `model_`);
  `.lora_down`, `.lora_up`, `.alpha` (alpha / rank folded into the up weight);
- diffusers / peft (`text_encoder_2.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight`;
  SD 3.5's `text_encoder_3.`, Z-Image's `text_encoder.`) and ComfyUI's
  (`text_encoders.t5xxl.transformer.`, `text_encoders.qwen3_4b.transformer.`).

Each targeted linear layer gets a forward hook adding `weight * up(down(x))` for every
active adapter; the tensors live on the encoder model, not in its parameters, so they stay
when the encoder is freed after encoding and read back from its file
(`text_encoder_release`: the module objects and their hooks stay). `LoraManager` activates
them with the job's text-encoder multiplier (`activate`), disables them when the job ends
(`deactivate`) and deletes them with the adapter (`delete`). A file's layer that names no
layer of the encoder is a `KeyError` naming it, as the other converters do.

This module must never import `webui.core` or a UI library, and never touch the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .flux_lora import split_key

if TYPE_CHECKING:
    import torch

_LORAS = "_webui_encoder_loras"  # model attribute: {adapter: {layer: (down, up)}}
_ACTIVE = "_webui_encoder_lora_active"  # model attribute: {adapter: multiplier}
_HOOKED = "_webui_encoder_lora_hooked"  # model attribute: {layer: hook handle}
_NOTES = "_webui_encoder_lora_notes"  # pipeline attribute: {adapter: what was not applied}
_ATTRIBUTES = ("text_encoder", "text_encoder_2", "text_encoder_3")


@dataclass(frozen=True)
class BigEncoder:
    """One family's big text encoder: the pipeline attribute and its LoRA key prefixes."""

    attribute: str  # "text_encoder_2"
    label: str  # in messages: "T5-XXL"
    kohya: tuple[str, ...]  # "lora_te2_"
    prefixes: tuple[str, ...]  # "text_encoder_2.", "text_encoders.t5xxl.transformer."


FLUX_T5 = BigEncoder("text_encoder_2", "T5-XXL", ("lora_te2_",),
                     ("text_encoder_2.", "text_encoders.t5xxl.transformer."))  # fmt: skip
SD3_T5 = BigEncoder("text_encoder_3", "T5-XXL", ("lora_te3_",),
                    ("text_encoder_3.", "text_encoders.t5xxl.transformer."))  # fmt: skip
ZIMAGE_QWEN3 = BigEncoder("text_encoder", "Qwen3", ("lora_te_", "lora_te1_"),
                          ("text_encoder.", "text_encoders.qwen3_4b.transformer."))  # fmt: skip


def split(state: dict, encoder: BigEncoder) -> tuple[dict, dict]:
    """(the file's other tensors, its tensors of `encoder`)."""
    ours = (*encoder.kohya, *encoder.prefixes)
    mine = {k: v for k, v in state.items() if k.startswith(ours)}
    return {k: v for k, v in state.items() if k not in mine}, mine


def attach(pipe: Any, encoder: BigEncoder, state: dict, adapter: str) -> None:
    """Put `state` (from `split`) on the pipeline's encoder as adapter `adapter` (inactive
    until `activate`). When the model has no such encoder loaded (SD 3.5 without T5) those
    layers are not applied, and every job using the adapter says so (`notes`)."""
    if not state:
        return
    model = getattr(pipe, encoder.attribute, None)
    layers = _layers(state, encoder)
    if model is None:
        label = encoder.label
        note = f"{len(layers)} {label} layers not applied: the model has no {label}"
        pipe.__dict__.setdefault(_NOTES, {})[adapter] = note
        return
    linears = _linears(model)
    flat = {name.replace(".", "_"): name for name in linears}
    pairs = {}
    for layer, parts in layers.items():
        name = _module_name(layer, linears, flat)
        if name is None:
            raise KeyError(f"LoRA layer {layer!r} names no layer of the {encoder.label} encoder")
        pairs[name] = _pair(layer, parts)
    model.__dict__.setdefault(_LORAS, {})[adapter] = pairs
    model.__dict__.setdefault(_ACTIVE, {})
    hooked = model.__dict__.setdefault(_HOOKED, {})
    for name in pairs:
        if name not in hooked:
            hooked[name] = linears[name].register_forward_hook(_hook(model, name))


def notes(pipe: Any, adapter: str, filename: str) -> list[str]:
    """The job's warnings about `adapter`'s layers that `attach` could not apply."""
    note = pipe.__dict__.get(_NOTES, {}).get(adapter)
    return [f"{filename}: {note}"] if note else []


def _layers(state: dict, encoder: BigEncoder) -> dict[str, dict]:
    """{layer name as the file writes it, prefix removed: {down / up / alpha: tensor}}."""
    layers: dict[str, dict] = {}
    for key, value in state.items():
        module, part = split_key(key)
        prefix = next(p for p in (*encoder.kohya, *encoder.prefixes) if module.startswith(p))
        layers.setdefault(module[len(prefix) :], {})[part] = value
    return layers


def _linears(model) -> dict[str, torch.nn.Module]:
    import torch

    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def _module_name(layer: str, linears: dict, flat: dict) -> str | None:
    """The encoder's layer a file's name means: dotted (peft) or kohya's flattened one
    (`flat`: flattened -> dotted), with or without the `model.` of a causal-LM checkpoint
    (Qwen3)."""
    for candidate in (layer, layer.removeprefix("model.")):
        if candidate in linears:
            return candidate
    for candidate in (layer, layer.removeprefix("model_")):
        if candidate in flat:
            return flat[candidate]
    return None


def _pair(layer: str, parts: dict) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    down = parts.get("lora_down.weight", parts.get("lora_A.weight"))
    up = parts.get("lora_up.weight", parts.get("lora_B.weight"))
    if down is None or up is None:
        raise KeyError(f"LoRA layer {layer!r} lacks its down or up weight")
    up = up.to(torch.float32)
    if "alpha" in parts:
        up = up * (float(parts["alpha"]) / down.shape[0])
    return down.to(torch.float32), up


def _hook(model, name: str):
    import torch.nn.functional as F

    def add_loras(module, args, output):
        active = model.__dict__.get(_ACTIVE) or {}
        loras = model.__dict__.get(_LORAS) or {}
        x = args[0]
        for adapter, weight in active.items():
            pair = loras.get(adapter, {}).get(name)
            if pair is None or weight == 0:
                continue
            down, up = (t.to(x.device, output.dtype) for t in pair)
            output = output + weight * F.linear(F.linear(x.to(output.dtype), down), up)
        return output

    return add_loras


def _models(pipe: Any) -> list:
    return [m for a in _ATTRIBUTES if _LORAS in getattr(getattr(pipe, a, None), "__dict__", {})
            for m in [getattr(pipe, a)]]  # fmt: skip


def adapters(pipe: Any) -> set[str]:
    """The adapters on the pipeline's big encoders."""
    return {name for model in _models(pipe) for name in model.__dict__[_LORAS]}


def activate(pipe: Any, weights: dict[str, float]) -> None:
    """The job's adapters with their text-encoder multipliers (others inactive)."""
    for model in _models(pipe):
        loras = model.__dict__[_LORAS]
        model.__dict__[_ACTIVE] = {a: float(w) for a, w in weights.items() if a in loras}


def deactivate(pipe: Any) -> None:
    for model in _models(pipe):
        model.__dict__[_ACTIVE] = {}


def delete(pipe: Any, adapter: str) -> None:
    """Remove `adapter`'s layers (and the hooks no adapter needs any more)."""
    pipe.__dict__.get(_NOTES, {}).pop(adapter, None)
    for model in _models(pipe):
        loras = model.__dict__[_LORAS]
        loras.pop(adapter, None)
        model.__dict__[_ACTIVE].pop(adapter, None)
        needed = {name for pairs in loras.values() for name in pairs}
        hooked = model.__dict__[_HOOKED]
        for name in [n for n in hooked if n not in needed]:
            hooked.pop(name).remove()
