"""SD 3.5 weights in diffusers' and transformers' classes, offline.

The layouts and configs are read by `sd3_keys` (shapes only); here each component's
tensors are read, renamed and built into `SD3Transformer2DModel`, `AutoencoderKL`,
`CLIPTextModelWithProjection` (CLIP-L, CLIP-G) and `T5EncoderModel` without allocating
the weights twice. Diffusers 0.42's SD 3 converters work at any width (their splits are
in thirds, the dual attention layers read from the keys), so the transformer goes through
`convert_sd3_transformer_checkpoint_to_diffusers` and the autoencoder through
`convert_ldm_vae_checkpoint`; the CLIP and T5 files are in transformers' names already
(T5's `encoder.embed_tokens` is tied to `shared` by `flux_files.build_t5`).

CLIP-L's pooled vector reaches SD 3 unprojected (as Stability's reference and ComfyUI
read it): its projection is the identity, whatever the file holds.

This module must never touch the network, never import `webui.core` or a UI library.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .flux_files import _assign, _empty, _in_dtype, build_t5, read_state
from .identify import Shapes
from .sd3_keys import clip_config, t5_config, vae_config

if TYPE_CHECKING:
    import torch

__all__ = ["build_component", "build_transformer", "read_state"]


def build_transformer(config: dict, state: dict[str, torch.Tensor], dtype: torch.dtype):
    """The MMDiT from Stability's key names (prefix removed); a GGUF file's quantized
    weights stay quantized (`flux_gguf`), fp8 ones fp8 (`weight_storage.keep_fp8`; ComfyUI's
    scaled fp8 with their scales, `fp8_scaled`)."""
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    from . import flux_gguf, fp8_scaled

    if flux_gguf.is_quantized(state):  # city96's GGUF: the weights stay quantized
        return flux_gguf.build_gguf_transformer(
            config, state, dtype, factory=SD3Transformer2DModel.from_config,
            convert=lambda s: convert_sd3_transformer_checkpoint_to_diffusers(dict(s)),
            label="SD 3 transformer",
        )  # fmt: skip
    model = _empty(SD3Transformer2DModel.from_config, config)
    state, scales = fp8_scaled.take_scales(state)  # ComfyUI's fp8_scaled files
    converted = convert_sd3_transformer_checkpoint_to_diffusers(dict(state))
    _assign(model, converted, "SD 3 transformer")
    scales = fp8_scaled.converted_scales(
        state, scales, lambda s: convert_sd3_transformer_checkpoint_to_diffusers(dict(s))
    )
    return _in_dtype(model, dtype, scales=scales)


def build_vae(config: dict, state: dict[str, torch.Tensor], dtype: torch.dtype):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from .fp8_scaled import folded

    model = _empty(AutoencoderKL.from_config, config)
    _assign(model, convert_ldm_vae_checkpoint(folded(state), config), "SD 3 autoencoder")
    return _in_dtype(model, dtype)


def build_clip(config: dict, state: dict[str, torch.Tensor], dtype: torch.dtype, kind: str):
    """CLIP-L or CLIP-G with its projection (CLIP-L's: the identity)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from .fp8_scaled import take_scales

    model = _empty(CLIPTextModelWithProjection, CLIPTextConfig(**config))
    wanted = model.state_dict().keys()
    if not any(k.startswith("text_model.") for k in wanted):  # transformers 5
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    state, scales = take_scales(state)  # a scaled-fp8 all-in-one file's (`fp8_scaled`)
    if kind == "clip_l" or "text_projection.weight" not in state:
        state["text_projection.weight"] = torch.eye(config["hidden_size"])
        scales.pop("text_projection", None)
    label = "CLIP-L text encoder" if kind == "clip_l" else "CLIP-G text encoder"
    _assign(model, state, label)
    return _in_dtype(model, dtype, scales=scales)


def build_component(kind: str, path: Path, prefix: str, shapes: Shapes, config: dict,
                    dtype: torch.dtype) -> Any:  # fmt: skip
    """One component of kind `kind` from `path`'s tensors under `prefix` (`config`: the
    transformer's, read by the caller; the others are read from `shapes` here)."""
    state = read_state(path, prefix)
    if kind == "transformer":
        return build_transformer(config, state, dtype)
    if kind == "vae":
        return build_vae(vae_config(shapes, prefix), state, dtype)
    if kind in ("clip_l", "clip_g"):
        return build_clip(clip_config(shapes, prefix, kind), state, dtype, kind)
    return build_t5(t5_config(shapes, prefix), state, dtype)
