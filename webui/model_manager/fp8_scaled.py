"""ComfyUI's "fp8_scaled" files: fp8 weights with a scale each, kept fp8 in memory.

Files such as `flux1-dev-kontext_fp8_scaled.safetensors`, `sd3.5_large_fp8_scaled.safetensors`,
Z-Image's `..._fp8_scaled` and `t5xxl_fp8_e4m3fn_scaled.safetensors` store each linear
layer's `weight` in `float8_e4m3fn` next to a `scale_weight` (a scalar, or one per output
row; newer ComfyUI files spell it `weight_scale` and say each layer's format in a
`comfy_quant` tensor: fp8 ones load, others are refused), sometimes a `scale_input`, and
carry a marker tensor `scaled_fp8`. The true weight is `weight.to(dtype) * scale_weight`.

`take_scales` removes the marker and the scale tensors from a state dict (the rest then
goes through the family's converter as a plain fp8 file does) and `converted_scales` runs
the same converter over the scales, so they follow the weights through renames and the
splits of fused projections (a per-row scale is split with its rows). `weight_storage.
keep_fp8` then gives each scaled layer `ScaledCastHook`: for its own forward the layer's
weight is the fp8 tensor cast to the compute dtype times its scale, and the fp8 tensor is
put back after, so no full bf16/fp32 copy of the model ever exists. A peft LoRA layer wraps
the hooked layer, so a LoRA adds to the scaled (true) weight.

`scale_input` is read and dropped: ComfyUI uses it to quantize activations for fp8 matrix
multiplication on GPUs that have it; here every layer computes in the compute dtype
(weight-only casting), where the input scale has no part.

This module must never import `webui.core` or a UI library.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from diffusers.hooks.hooks import ModelHook

from .identify import UnsupportedModelError

if TYPE_CHECKING:
    import torch

MARKER = "scaled_fp8"
WEIGHT_SCALES = (".scale_weight", ".weight_scale")
INPUT_SCALES = (".scale_input", ".input_scale")
_REFUSED = {  # ComfyUI's other quantized layouts: their values are not fp8 times a scale
    ".weight_scale_2": "NVFP4",
    ".pre_quant_scale": "AWQ",
}
QUANT_CONFIG = ".comfy_quant"  # newer files: a layer's format as JSON bytes


def is_scaled(keys) -> bool:
    """Keys (of a state dict or a file header) of a scaled-fp8 file."""
    return any(k == MARKER or k.endswith("." + MARKER) or k.endswith(WEIGHT_SCALES) for k in keys)


def take_scales(state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """(`state` without the marker and scale tensors, {layer: its weight scale as fp32}).

    A scale whose layer's weight is not fp8 is folded into that weight here (then an
    ordinary weight); another quantized layout raises `UnsupportedModelError`."""
    import torch

    from .weight_storage import FP8_DTYPES

    for key, value in state.items():
        found = next((kind for end, kind in _REFUSED.items() if key.endswith(end)), None)
        if key.endswith(QUANT_CONFIG):
            found = _quant_format(key, value)
        if found is not None:
            raise UnsupportedModelError(f"{found} layers ({key}) are not supported; use an fp8, "
                                        "bf16 or GGUF file")  # fmt: skip
    weights, scales = {}, {}
    for key, value in state.items():
        end = next((e for e in WEIGHT_SCALES if key.endswith(e)), None)
        if end is not None:
            scales[key[: -len(end)]] = value.to(torch.float32)
        elif not (key == MARKER or key.endswith(("." + MARKER, QUANT_CONFIG, *INPUT_SCALES))):
            weights[key] = value
    for layer, scale in list(scales.items()):
        weight = weights.get(layer + ".weight")
        if weight is None:
            raise UnsupportedModelError(f"scaled fp8: {layer} has a scale but no weight")
        if scale.numel() not in (1, weight.shape[0]):
            raise UnsupportedModelError(f"scaled fp8: the scale of {layer} has "
                                        f"{scale.numel()} values for {weight.shape[0]} rows")  # fmt: skip
        if weight.dtype not in FP8_DTYPES:  # a wide layer with a scale: fold it now
            weights[layer + ".weight"] = (weight.to(torch.float32) * _rows(scale, weight)).to(
                weight.dtype
            )
            del scales[layer]
    return weights, scales


def _quant_format(key: str, value: torch.Tensor) -> str | None:
    """None for a `comfy_quant` layer config of an fp8 format (fp8 times `weight_scale`, as
    above); else the format's name, refused."""
    import json

    try:
        config = json.loads(bytes(value.flatten().tolist()).decode("utf-8"))
        kind = str(config.get("format", ""))
    except (ValueError, AttributeError, TypeError):
        return "unreadable ComfyUI quantization"
    return None if kind in ("float8_e4m3fn", "float8_e5m2") else f"ComfyUI {kind or 'unknown'}"


def folded(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with every scale multiplied into its weight (fp32): for the autoencoder,
    small, whose converter reshapes weights (a scale column could not follow)."""
    import torch

    weights, scales = take_scales(state)
    for layer, scale in scales.items():
        weight = weights[layer + ".weight"]
        weights[layer + ".weight"] = weight.to(torch.float32) * _rows(scale, weight)
    return weights


def _rows(scale: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`scale` shaped to multiply `weight` (one value, or one per output row)."""
    if scale.numel() == 1:
        return scale.reshape(())
    return scale.reshape(weight.shape[0], *([1] * (weight.dim() - 1)))


def converted_scales(
    weights: dict[str, torch.Tensor],
    scales: dict[str, torch.Tensor],
    convert: Callable[[dict], dict] | None = None,
) -> dict[str, torch.Tensor]:
    """{model layer name: scale} after `convert` (the family's renaming of `weights`,
    scales taken out, to the model's names; None: the names are the model's already).

    The converter is run over `weights` with each scaled weight replaced by a float64
    column of its per-row scales: renames, splits and row swaps carry the scales with the
    rows, and the float64 tensors in the result are the scales (no weight is float64)."""
    import torch

    if not scales:
        return {}
    if convert is None:
        return dict(scales)
    columns = dict(weights)
    for layer, scale in scales.items():
        rows = weights[layer + ".weight"].shape[0]
        columns[layer + ".weight"] = scale.to(torch.float64).reshape(-1, 1).expand(rows, 1)
    out = {}
    for key, value in convert(columns).items():
        if key.endswith(".weight") and value.dtype == torch.float64:
            column = value.reshape(-1).to(torch.float32)
            same = bool((column == column[0]).all())
            out[key.removesuffix(".weight")] = column[:1].reshape(()) if same else column.clone()
    if len(out) < len(scales):
        raise UnsupportedModelError("scaled fp8: some scales were lost in the conversion")
    return out


class ScaledCastHook(ModelHook):
    """Registered as diffusers' "layerwise_casting" hook (so `set_compute_dtype` and
    diffusers' peft handling see it): the layer's fp8 weight cast to `compute_dtype` and
    multiplied by its scale for the layer's forward, the fp8 tensor put back after."""

    _is_stateful = False

    def __init__(self, scale: torch.Tensor, storage_dtype: torch.dtype, compute_dtype: torch.dtype):
        super().__init__()
        self.scale = scale
        self.storage_dtype = storage_dtype
        self.compute_dtype = compute_dtype
        self._stored: torch.Tensor | None = None

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any):
        # a forward that raised left the wide weight in place: start from the fp8 one again
        stored = self._stored if self._stored is not None else module.weight.data
        self._stored = stored
        scale = _rows(self.scale.to(stored.device, self.compute_dtype), stored)
        module.weight.data = stored.to(self.compute_dtype) * scale
        return args, kwargs

    def post_forward(self, module: torch.nn.Module, output: Any):
        if self._stored is not None:
            module.weight.data = self._stored
            self._stored = None
        return output


def hook_scaled(module: torch.nn.Module, scale: torch.Tensor, compute: torch.dtype) -> None:
    """`module` (fp8 weight) computing with its weight times `scale`; its other tensors (a
    bias) in `compute`."""
    import torch
    from diffusers.hooks.hooks import HookRegistry

    for name, param in list(module.named_parameters(recurse=False)):
        if name != "weight" and param.is_floating_point() and param.dtype != compute:
            module._parameters[name] = torch.nn.Parameter(param.to(compute), requires_grad=False)
    hook = ScaledCastHook(scale, module.weight.dtype, compute)
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, "layerwise_casting")


def widen_scaled(module: torch.nn.Module, scale: torch.Tensor, compute: torch.dtype) -> None:
    """A scaled layer the model keeps wide (T5's `wo`, Z-Image's embedders): its true
    weight stored in `compute`."""
    import torch

    weight = module.weight
    true = (weight.to(torch.float32) * _rows(scale.to(weight.device), weight)).to(compute)
    module.weight = torch.nn.Parameter(true, requires_grad=False)


def scale_of(module: torch.nn.Module) -> torch.Tensor | None:
    """The scale of a layer hooked by `hook_scaled` (None for any other layer)."""
    registry = getattr(module, "_diffusers_hook", None)
    hook = registry.get_hook("layerwise_casting") if registry is not None else None
    return hook.scale if isinstance(hook, ScaledCastHook) else None


def check_layers(model: torch.nn.Module, scales: dict[str, torch.Tensor]) -> None:
    """Refuse scales naming no layer of `model` (a scale is never dropped)."""
    names = {name for name, _ in model.named_modules()}
    unknown = sorted(set(scales) - names)
    if unknown:
        raise UnsupportedModelError(f"scaled fp8: the model has no layer {unknown[0]}")
