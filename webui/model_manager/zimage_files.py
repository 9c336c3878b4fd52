"""Z-Image weights in diffusers' and transformers' classes, offline.

The layouts and configs are read by `zimage_keys` (shapes only); here the tensors are
built into `ZImageTransformer2DModel` (ComfyUI's names converted by diffusers' own
single-file converter) and transformers' `Qwen3Model` (the text encoder: Z-Image reads its
hidden states, so the language-model head of `qwen_3_4b.safetensors` is left on disk),
without allocating the weights twice. The autoencoder is FLUX.1's (`flux_files.build_vae`).
fp8 and GGUF transformers keep their storage through FLUX's machinery (`weight_storage`,
`flux_gguf`), ComfyUI's scaled-fp8 files with their scales (`fp8_scaled`).

This module must never touch the network, never import `webui.core` or a UI library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .flux_files import _assign, _empty, _in_dtype

if TYPE_CHECKING:
    import torch


def transformer_state(state: dict[str, torch.Tensor], comfy: bool) -> dict[str, torch.Tensor]:
    """A transformer state dict (prefix removed) in diffusers' names: ComfyUI's fused
    `attention.qkv` split, `x_embedder` / `final_layer` renamed (diffusers' converter)."""
    if not comfy:
        return dict(state)
    from diffusers.loaders.single_file_utils import (
        convert_z_image_transformer_checkpoint_to_diffusers,
    )

    return convert_z_image_transformer_checkpoint_to_diffusers(dict(state))


def build_transformer(config: dict, state: dict[str, torch.Tensor], comfy: bool, dtype):
    """The transformer of a bf16/fp16/fp32, fp8 (kept fp8, `weight_storage`) or GGUF (kept
    quantized, `flux_gguf.quantized_model`) file's tensors."""
    from diffusers import ZImageTransformer2DModel

    from .flux_gguf import is_quantized, quantized_model
    from .fp8_scaled import converted_scales, take_scales

    model = _empty(ZImageTransformer2DModel.from_config, config)
    if is_quantized(state):
        return quantized_model(model, transformer_state(state, comfy), dtype, "Z-Image transformer")
    state, scales = take_scales(state)  # ComfyUI's fp8_scaled files
    _assign(model, transformer_state(state, comfy), "Z-Image transformer")
    scales = converted_scales(state, scales, lambda s: transformer_state(s, comfy))
    # its timestep embedder casts its input to its weight's dtype: fp8 would round it
    wide = tuple(getattr(model, "_skip_layerwise_casting_patterns", ()))
    return _in_dtype(model, dtype, wide, scales)


def build_qwen3(config: dict, state: dict[str, torch.Tensor], prefix: str, dtype):
    """Qwen3's decoder stack without the language-model head (`lm_head.weight` is unused)."""
    from transformers import Qwen3Config, Qwen3Model

    from . import gguf_text
    from .flux_gguf import is_quantized
    from .fp8_scaled import take_scales

    model = _empty(Qwen3Model, Qwen3Config(**config))
    state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if is_quantized(state):  # a GGUF file: the weights stay quantized
        return gguf_text.build_qwen3(model, state, dtype)
    state, scales = take_scales(state)  # a scaled-fp8 Qwen3 (`fp8_scaled`)
    _assign(model, state, "Qwen3 text encoder")
    return _in_dtype(model, dtype, scales=scales)
