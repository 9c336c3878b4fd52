"""Live previews by A1111's methods, and the TAESD decoder for draft decodes.

A1111's `show_progress_type`: "Full" (the VAE), "Approx NN" (its small net,
`models/VAE-approx/model.pt` or `vaeapprox-sdxl.pt`), "Approx cheap" (the family's linear
colour map) and "TAESD" (`taesd_decoder.*`, `taesdxl_decoder.*`, ...: the files the job's
family names, `Family.vae_approx` / `Family.taesd`). `small_decoder_preview` draws the
Approx NN and TAESD previews; a missing or unusable file gives None (the caller shows the
cheap preview) and a warning: logged once per process, in the job's warnings once per job.
A preview never fails a job.

A1111's `sd_vae_decode_method` "TAESD" decodes the final images with TAESD (drafts):
`draft_decoder` gives the job's decoder, which `webui.core.decode` uses instead of the VAE
and records as "VAE Decoder: TAESD" in the infotext; a missing file fails the job with a
message naming the file and the folder (the generation service refuses the request
earlier when no TAESD decoder is there at all). `sd_vae_encode_method` "TAESD" likewise
encodes img2img, inpaint and hires-fix images with TAESD's encoder (`draft_encoder`,
`webui.core.latents`, "VAE Encoder: TAESD").

This module must never import a UI library.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from ..model_manager.network_files import NetworkFileError
from ..model_manager.vae_approx import ApproxFileMissing, ApproxModels

if TYPE_CHECKING:
    from .families.base import Family
    from .run import RunContext

log = logging.getLogger(__name__)

FULL, APPROX_NN, APPROX_CHEAP, TAESD = "Full", "Approx NN", "Approx cheap", "TAESD"
PREVIEW_METHODS = (FULL, APPROX_NN, APPROX_CHEAP, TAESD)  # A1111's names and order
SMALL_DECODERS = (APPROX_NN, TAESD)
DECODE_METHODS = (FULL, TAESD)  # A1111's sd_vae_decode_method
DECODER_FIELD = "VAE Decoder"  # A1111's infotext name of sd_vae_decode_method


def small_decoder_preview(run: RunContext, pipe, latents: torch.Tensor) -> Image.Image | None:
    """The first latent of a batch decoded by the job's Approx NN or TAESD (by
    `run.preview_method`), at the size the VAE would give (Approx NN decodes at 2x the
    latents); None when the family has no such file or it is missing."""
    try:
        model = _preview_model(run, latents)
        with torch.inference_mode():
            first = latents[:1]
            if run.preview_method == TAESD:
                pixels = model.decode(first, return_dict=False)[0]
            else:
                pixels = model(first)
    except (ApproxFileMissing, NetworkFileError) as exc:
        _warn(run, f"{run.preview_method} live preview: {exc}; showing Approx cheap")
        return None
    factor = getattr(pipe, "vae_scale_factor", 8)
    size = (latents.shape[-1] * factor, latents.shape[-2] * factor)
    image = to_image(pixels[0])
    return image if image.size == size else image.resize(size, Image.Resampling.BILINEAR)


def _preview_model(run: RunContext, latents: torch.Tensor) -> Any:
    approx: ApproxModels | None = getattr(run, "approx", None)
    family = run.family
    stem = family.taesd if run.preview_method == TAESD else family.vae_approx
    if approx is None or stem is None:
        raise ApproxFileMissing(f"no {run.preview_method} model for {family.label}")
    if run.preview_method == TAESD:
        return approx.taesd(stem, latents.device, latents.dtype)
    return approx.approx_nn(stem, latents.device, latents.dtype)


def to_image(pixels: torch.Tensor) -> Image.Image:
    """One (3, H, W) image in [-1, 1] as a PIL image."""
    rgb = ((pixels.float().cpu().permute(1, 2, 0) + 1) * 127.5).clamp(0, 255)
    return Image.fromarray(rgb.round().to(torch.uint8).numpy(), "RGB")


def draft_decoder(
    method: str, family: Family, approx: ApproxModels | None, device: Any, dtype: torch.dtype
) -> Any:
    """The job's TAESD (an `AutoencoderTiny`) when `method` is "TAESD", else None.
    Raises ApproxFileMissing (the file and folder) when it cannot be had."""
    return _draft_model(method, "VAE for Decoding", family, approx, device, dtype)


def draft_encoder(
    method: str, family: Family, approx: ApproxModels | None, device: Any, dtype: torch.dtype
) -> Any:
    """The job's TAESD with its encoder when `method` (A1111's sd_vae_encode_method) is
    "TAESD", else None. Raises ApproxFileMissing (the file and folder) when it cannot be had."""
    return _draft_model(method, "VAE type for encode", family, approx, device, dtype,
                        encoder=True)  # fmt: skip


def _draft_model(method: str, what: str, family: Family, approx: ApproxModels | None,
                 device: Any, dtype: torch.dtype, *, encoder: bool = False) -> Any:  # fmt: skip
    if method != TAESD:
        return None
    if family.taesd is None:
        raise ApproxFileMissing(f"{what}: TAESD has no model for {family.label}")
    if approx is None:
        raise ApproxFileMissing(f"{what}: TAESD: no models/VAE-approx folder known")
    return approx.taesd(family.taesd, torch.device(device), dtype, encoder=encoder)


def _warn(run: RunContext, message: str) -> None:
    approx = getattr(run, "approx", None)
    if approx is None or approx.first_warning(message):
        log.warning("%s", message)
    if message not in run.warnings:
        run.warnings.append(message)
