"""Weights kept in the precision their file stores them in: fp8 (`float8_e4m3fn`,
`float8_e5m2`) layers cast per layer to the compute dtype at each call, and what a
pipeline's components are stored in (the infotext's "Weight storage").

`keep_fp8(model, compute)`: every linear, convolution and embedding layer whose weight
the file gave in fp8 stays in fp8 and gets diffusers' layerwise-casting hook (its weights
cast to the compute dtype for its own forward, back to fp8 after), so a FLUX transformer
or T5-XXL in fp8 never exists as a full bf16/fp32 copy; every other tensor (norm scales,
layers the file stores wider) is cast to the compute dtype, as before. GGUF layers
(`flux_gguf`) say their quantization types. `set_compute_dtype` changes the dtype such a
narrow model computes in (the CPU's bf16 decision) without touching its stored weights;
`widen_fp8_adapters` gives LoRA layers on fp8 layers the compute dtype and the file's
values (peft creates them in fp8).

This module must never import `webui.core` or a UI library.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
_COMPONENTS = (("transformer", "transformer"), ("text_encoder_2", "t5xxl"),
               ("text_encoder", "clip_l"), ("vae", "vae"))  # fmt: skip
_SD3_COMPONENTS = (("transformer", "transformer"), ("text_encoder_3", "t5xxl"),
                   ("text_encoder", "clip_l"), ("text_encoder_2", "clip_g"), ("vae", "vae"))  # fmt: skip


def has_fp8(model: torch.nn.Module) -> bool:
    return any(p.dtype in FP8_DTYPES for p in model.parameters())


def keep_fp8(
    model: torch.nn.Module,
    compute: torch.dtype,
    keep_wide: tuple[str, ...] = (),
    scales: dict[str, torch.Tensor] | None = None,
) -> torch.nn.Module:
    """`model` with its fp8 layers stored in fp8 and computed in `compute` (see above);
    `scales` ({layer name: scale}, a scaled-fp8 file's, `fp8_scaled`): those layers'
    weights are multiplied by their scale where they are cast.

    Layers the model class keeps in fp32 (`_keep_in_fp32_modules`: T5's `wo`, whose
    block casts its input to `wo`'s weight dtype before calling it) are computed and stored
    in `compute`: in fp8 their input would be rounded to fp8 first. So are layers whose name
    holds one of `keep_wide` (Z-Image's `t_embedder`, which casts its input to its weight's
    dtype, and `cap_embedder`: the class's `_skip_layerwise_casting_patterns`)."""
    from diffusers.hooks._common import _GO_LC_SUPPORTED_PYTORCH_LAYERS
    from diffusers.hooks.layerwise_casting import apply_layerwise_casting_hook

    from .fp8_scaled import check_layers, hook_scaled, widen_scaled

    wide = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    scales = scales or {}
    check_layers(model, scales)
    hooked: set[int] = set()
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        narrow = isinstance(module, _GO_LC_SUPPORTED_PYTORCH_LAYERS) and weight is not None and (
            weight.dtype in FP8_DTYPES and name.rsplit(".", 1)[-1] not in wide
            and not any(pattern in name for pattern in keep_wide)
        )  # fmt: skip
        if name in scales and not narrow:  # a layer kept wide: its true weight stored
            widen_scaled(module, scales[name], compute)
        elif name in scales:
            hook_scaled(module, scales[name], compute)
            hooked.add(id(module))
        elif narrow:
            apply_layerwise_casting_hook(module, weight.dtype, compute, non_blocking=False)
            hooked.add(id(module))
    for module in model.modules():
        if id(module) in hooked:
            continue
        for name, param in list(module.named_parameters(recurse=False)):
            if param.dtype != compute and param.is_floating_point():
                module._parameters[name] = torch.nn.Parameter(param.to(compute),
                                                              requires_grad=False)  # fmt: skip
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer.dtype in FP8_DTYPES:  # SD 3's position embedding: added, not multiplied
                module._buffers[name] = buffer.to(compute)
    return model.eval()


def storage(model: torch.nn.Module) -> str | None:
    """How `model`'s weights are stored when not all in one ordinary dtype: "fp8_e4m3fn"
    (the dtype most of its parameters have), "GGUF Q4_K+Q8_0"; None otherwise."""
    quant = Counter(
        p.quant_type.name for p in model.parameters() if getattr(p, "quant_type", None) is not None
    )
    if quant:
        return "GGUF " + "+".join(sorted(quant))
    counts: Counter = Counter()
    for param in model.parameters():
        counts[param.dtype] += param.numel()
    fp8 = [d for d in counts if d in FP8_DTYPES]
    if not fp8:
        return None
    return "fp8_" + str(max(fp8, key=counts.__getitem__)).removeprefix("torch.float8_")


def storage_fields(pipe: Any) -> dict[str, str]:
    """The infotext's "Weight storage" ("transformer fp8_e4m3fn, t5xxl fp8_e4m3fn"; Z-Image's
    text encoder is "qwen3"), for the components not stored in the compute dtype; {} when
    all are."""
    parts = []
    sd3 = "text_encoder_3" in getattr(pipe, "components", {})  # SD 3.5: T5 is the third
    for attribute, label in _SD3_COMPONENTS if sd3 else _COMPONENTS:
        component = getattr(pipe, attribute, None)
        if isinstance(component, torch.nn.Module):
            found = storage(component)
            if found:
                label = "qwen3" if type(component).__name__.startswith("Qwen3") else label
                parts.append(f"{label} {found}")
    return {"Weight storage": ", ".join(parts)} if parts else {}


def parameter_bytes(model: torch.nn.Module) -> int:
    """The bytes `model`'s parameters and buffers take as stored."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def compute_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype `model` computes in: that of its first floating tensor not stored in fp8."""
    for param in model.parameters():
        if param.is_floating_point() and param.dtype not in FP8_DTYPES:
            return param.dtype
    return torch.float32


def widen_fp8_adapters(model: torch.nn.Module, adapter: str, state: dict, prefix: str) -> int:
    """LoRA layers of `adapter` that peft created in their fp8 base layer's dtype, made
    compute-dtype layers holding the file's values (`state`: diffusers' names under
    `prefix`, as `lora_state_dict` gives them); fp8 LoRA weights cannot be multiplied and
    would have lost the file's precision. Returns how many layers were widened."""
    dtype = compute_dtype(model)
    widened = 0
    for name, module in model.named_modules():
        for part in ("lora_A", "lora_B"):
            layers = getattr(module, part, None)
            layer = layers[adapter] if layers is not None and adapter in layers else None
            if layer is None or layer.weight.dtype not in FP8_DTYPES:
                continue
            source = state.get(f"{prefix}{name}.{part}.weight")
            weight = source if source is not None else layer.weight
            layer.weight = torch.nn.Parameter(weight.to(layer.weight.device, dtype),
                                              requires_grad=False)  # fmt: skip
            widened += 1
    return widened


def is_narrow(model: torch.nn.Module) -> bool:
    """`model` holds fp8 or GGUF-quantized weights (which a plain `.to(dtype)` would expand
    or, for GGUF blocks, corrupt)."""
    return any(p.dtype in FP8_DTYPES or hasattr(p, "quant_type") for p in model.parameters())


def set_compute_dtype(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """A narrow model computed in `dtype`: its fp8 and GGUF weights stay as stored (their
    layers cast to `dtype` when they run), every other floating tensor becomes `dtype`."""
    for module in model.modules():
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.get_hook("layerwise_casting") if registry is not None else None
        if hook is not None:
            hook.compute_dtype = dtype
        if hasattr(module, "compute_dtype") and type(module).__name__ in ("GGUFLinear",
                                                                          "GGUFEmbedding"):  # fmt: skip
            module.compute_dtype = dtype
        for name, param in list(module.named_parameters(recurse=False)):
            narrow = param.dtype in FP8_DTYPES or hasattr(param, "quant_type")
            if param.is_floating_point() and not narrow and param.dtype != dtype:
                module._parameters[name] = torch.nn.Parameter(param.to(dtype), requires_grad=False)
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer.is_floating_point() and buffer.dtype != dtype:
                module._buffers[name] = buffer.to(dtype)
