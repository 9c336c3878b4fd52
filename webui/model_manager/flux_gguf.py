"""GGUF transformer files (city96's FLUX files: Black Forest Labs' keys; ComfyUI-GGUF's Z-Image
files, architecture "lumina2": ComfyUI's keys; Q8_0, Q5_K, Q4_K, ... tensors), kept quantized
in memory and dequantized per layer at each call. city96's SD 3.5 files (Stability's keys,
`general.architecture` "sd3") go the same way with SD 3's class and converter
(`sd3_files.build_transformer`).

The file is read with diffusers' `load_gguf_checkpoint` (the `gguf` package): quantized
tensors become diffusers' `GGUFParameter`s (the raw blocks and their quantization type),
F32/F16 tensors plain tensors. The keys are renamed and the fused projections split by
`flux_files.transformer_state` at the model's own width (diffusers' GGUF single-file path
goes through its FLUX converter, which assumes FLUX.1's width 3072): a split along the
output rows keeps whole quantization blocks, since GGUF quantizes along a row. Then every
linear layer with a quantized weight becomes diffusers' `GGUFLinear` (dequantize, then
`linear` in the compute dtype); the rest is cast to the compute dtype (`quantized_model`,
also for Z-Image's transformer, whose keys `zimage_files` converts).

This module must never touch the network, never import `webui.core` or a UI library.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

SUFFIX = ".gguf"


def is_gguf(path: Path) -> bool:
    return path.suffix.lower() == SUFFIX


def gguf_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and their logical (torch-order) shapes, without reading the weights;
    a text encoder's in transformers' names (`gguf_names`)."""
    from .gguf_names import gguf_shapes as shapes

    return shapes(path)


def read_gguf_state(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors of `path` under `prefix` (prefix removed); quantized ones as
    `GGUFParameter`s; a text encoder's in transformers' names (`gguf_text`)."""
    from diffusers.models.model_loading_utils import load_gguf_checkpoint

    from .gguf_names import file_architecture, renamed

    state = renamed(file_architecture(path), load_gguf_checkpoint(str(path)))
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def is_quantized(state: dict[str, Any]) -> bool:
    return any(hasattr(v, "quant_type") for v in state.values())


def build_gguf_transformer(
    config: dict, state: dict[str, torch.Tensor], dtype: torch.dtype, *,
    factory: Callable | None = None, convert: Callable | None = None,
    label: str = "FLUX transformer",
):  # fmt: skip
    """A `FluxTransformer2DModel` whose quantized linear weights stay quantized; another
    family's transformer with its `factory` (config -> empty model) and `convert`
    (original names -> diffusers', splitting along rows: SD 3.5's, `sd3_files`)."""
    from diffusers import FluxTransformer2DModel

    from .flux_files import _empty, transformer_state

    model = _empty(factory or FluxTransformer2DModel.from_config, config)
    if convert is None:
        converted = transformer_state(
            state, config["num_attention_heads"] * config["attention_head_dim"]
        )
    else:
        converted = convert(state)
    return quantized_model(model, converted, dtype, label)


def quantized_model(model, converted: dict[str, torch.Tensor], dtype: torch.dtype, what: str):
    """`model` (built without weights) given `converted` (a GGUF file's tensors in the
    model's names): every linear layer with a quantized weight becomes a `GGUFLinear`
    keeping it quantized; any other quantized tensor (a pad token a converter quantized) is
    dequantized, and the rest cast to `dtype`. FLUX's, SD 3.5's and Z-Image's transformers."""
    from diffusers.quantizers.gguf.utils import _replace_with_gguf_linear

    from .identify import UnsupportedModelError

    _replace_with_gguf_linear(model, dtype, converted)
    wanted = set(model.state_dict())
    missing = sorted(wanted - set(converted))
    if missing:
        raise UnsupportedModelError(f"{what}: tensors missing ({', '.join(missing[:3])} ...)")
    for key in wanted:
        _set_tensor(model, key, converted[key], dtype)
    return model.eval().requires_grad_(False)


def dequantized(value):
    """A GGUF tensor's values as a plain tensor (a plain tensor as it is)."""
    import torch
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    if not hasattr(value, "quant_type"):
        return value
    return dequantize_gguf_tensor(value).as_subclass(torch.Tensor)


def _set_tensor(model, key: str, value, dtype) -> None:
    import torch

    owner, _, name = key.rpartition(".")
    module = model.get_submodule(owner)
    takes_quantized = type(module).__name__ in ("GGUFLinear", "GGUFEmbedding")  # gguf_text
    if hasattr(value, "quant_type") and (not takes_quantized or name != "weight"):
        value = dequantized(value)
    if not hasattr(value, "quant_type"):
        current = getattr(module, name)
        if (
            current is not None
            and value.shape != current.shape
            and value.numel() == current.numel()
        ):
            value = value.reshape(current.shape)  # a pad token stored 1-D ([D] for [1, D])
        value = torch.nn.Parameter(value.to(dtype), requires_grad=False)
    if name in module._parameters:
        module._parameters[name] = value
    else:
        module._buffers[name] = value


def quant_types(model) -> dict[str, int]:
    """How many weights of each GGUF quantization type `model` holds ({} if none)."""
    found = Counter(
        p.quant_type.name for p in model.parameters() if getattr(p, "quant_type", None) is not None
    )
    return dict(found)
