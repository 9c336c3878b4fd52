"""Export a diffusers Stable Diffusion pipeline to a single-file A1111/LDM checkpoint.

The written ``.safetensors`` uses the original key layout, so A1111, ComfyUI and
diffusers' own ``from_single_file`` read it:

- ``model.diffusion_model.*``  UNet (input_blocks / middle_block / output_blocks ...)
- ``first_stage_model.*``      VAE (encoder.down.N.block.M ..., attention as 1x1 convs)
- SD1:  ``cond_stage_model.transformer.text_model.*``   (HF CLIP layout)
- SD2:  ``cond_stage_model.model.*``                    (OpenCLIP layout)
- SDXL: ``conditioner.embedders.0.transformer.text_model.*`` and
        ``conditioner.embedders.1.model.*``             (OpenCLIP layout)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from webui.model_manager.ldm_keys import (
    StateDict,
    clip_to_ldm,
    clip_to_open_clip,
    unet_to_ldm,
    vae_to_ldm,
)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_CLIP_PREFIX = "cond_stage_model.transformer."
SD2_OPEN_CLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."
SDXL_REFINER_OPEN_CLIP_PREFIX = "conditioner.embedders.0.model."
SUFFIX = ".safetensors"


def _prefixed(prefix: str, state_dict: StateDict) -> StateDict:
    return {prefix + k: v for k, v in state_dict.items()}


def _is_open_clip(text_encoder) -> bool:
    # OpenAI CLIP (SD1, SDXL embedder 0) uses quick_gelu; the OpenCLIP towers use gelu.
    return getattr(text_encoder.config, "hidden_act", "quick_gelu") != "quick_gelu"


def _text_encoder_keys(pipe) -> StateDict:
    text_encoder = getattr(pipe, "text_encoder", None)
    text_encoder_2 = getattr(pipe, "text_encoder_2", None)
    if text_encoder_2 is not None:  # SDXL (or the refiner, which only has the OpenCLIP tower)
        big = clip_to_open_clip(text_encoder_2.state_dict())
        if text_encoder is None:
            return _prefixed(SDXL_REFINER_OPEN_CLIP_PREFIX, big)
        small = clip_to_ldm(text_encoder.state_dict())
        return {**_prefixed(SDXL_CLIP_PREFIX, small), **_prefixed(SDXL_OPEN_CLIP_PREFIX, big)}
    if text_encoder is None:
        raise ValueError("pipeline has no text encoder to export")
    if _is_open_clip(text_encoder):
        return _prefixed(SD2_OPEN_CLIP_PREFIX, clip_to_open_clip(text_encoder.state_dict()))
    return _prefixed(SD1_CLIP_PREFIX, clip_to_ldm(text_encoder.state_dict()))


def ldm_state_dict(pipe) -> StateDict:
    """The whole pipeline as one state dict in the LDM single-file key layout."""
    unet = unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config.layers_per_block)
    vae = vae_to_ldm(pipe.vae.state_dict(), len(pipe.vae.config.block_out_channels))
    return {
        **_prefixed(UNET_PREFIX, unet),
        **_prefixed(VAE_PREFIX, vae),
        **_text_encoder_keys(pipe),
    }


def _prepare(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    tensor = tensor.detach().to("cpu")
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return tensor.contiguous()


def partial_path(path: str | os.PathLike) -> Path:
    """``dir/name.partial.safetensors`` for ``dir/name.safetensors``.

    diffusers decides by suffix whether a file is safetensors, so the temporary file
    keeps the ``.safetensors`` suffix.
    """
    path = Path(path)
    stem = path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else path.stem
    return path.with_name(f"{stem}.partial{SUFFIX}")


def write_safetensors_atomic(
    state_dict: StateDict, path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> Path:
    """Write ``state_dict`` to a ``.partial.safetensors`` file, then rename it into place."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = partial_path(path)
    try:
        save_file(state_dict, str(tmp), metadata={"format": "pt", **(metadata or {})})
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def export_single_file(pipe, path: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Write ``pipe`` (SD1, SD1 inpaint, SD2, SDXL) as a single-file LDM checkpoint.

    ``dtype`` casts floating-point tensors (e.g. ``torch.float16``); ``None`` keeps them.
    Returns the written path.
    """
    path = Path(path)
    if path.suffix != SUFFIX:
        raise ValueError(f"single-file checkpoints are written as {SUFFIX}, got {path.name!r}")
    state_dict = {k: _prepare(v, dtype) for k, v in ldm_state_dict(pipe).items()}
    return write_safetensors_atomic(state_dict, path)
