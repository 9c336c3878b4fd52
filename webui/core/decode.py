"""VAE decoding for every mode: latents in, PIL images out, never a black image.

`decode_latents(pipe, latents)` decodes with VAE tiling when one image is at least
`tile_from`² pixels and image by image (slicing) when a batch is at least `slice_from`²
pixels, both from the settings of the job's `MemoryRun` (a low-memory retry tiles and
slices always). A half-precision VAE that produces NaN is moved to float32 for good and
the decode repeated; the job's infotext says so. NaN latents (from the UNet) or NaN from a
float32 VAE fail the job with a clear message instead of saving a black image.

The job's `MemoryRun` (`webui.core.run`, carried by the run context) says what it may do
(thresholds, low-memory retry) and collects the notes for the infotext; without one the
option defaults apply. With its `draft_vae` (A1111's sd_vae_decode_method "TAESD",
`webui.core.previews.draft_decoder`) TAESD decodes instead of the VAE, and the infotext
says "VAE Decoder: TAESD".

A tiling (seamless) job's VAE pads circularly (`webui.core.tiling`). diffusers' tiled
decode would wrap each tile around itself, so with VAE tiling the latents are extended
circularly by `WRAP_MARGIN` on every side, decoded in tiles with ordinary padding, and the
margin cut off again: the edges are decoded with their neighbours from the other side.

This module must never import a UI library.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import UserError
from ..model_manager.optimize import upcast_vae
from .run import MemoryRun
from .tiling import is_circular, padding_mode

WRAP_MARGIN = 8  # latent pixels taken from the other side for a seamless tiled decode

log = logging.getLogger(__name__)


class NanOutputError(RuntimeError, UserError):
    """The model produced NaN; the message says which part and what to try."""


def decode_latents(
    pipe, latents: torch.Tensor, memory: MemoryRun | None = None
) -> list[Image.Image]:
    """Scaled latents (B, C, h, w) from a pipeline to RGB images, as diffusers would.

    `memory` is the job's (`RunContext.memory`); without one the option defaults apply."""
    run = memory if memory is not None else MemoryRun()
    if not bool(torch.isfinite(latents).all()):
        raise NanOutputError(
            "The UNet produced NaN latents: the image would be black. Try another sampler or "
            "CFG scale, --no-half, or --upcast-sampling."
        )
    if run.draft_vae is not None:  # sd_vae_decode_method "TAESD": a draft
        return _postprocess(pipe, _draft_decode(run, latents, _image_size(pipe, latents)))
    pixels = _decode(pipe, latents, run)
    if not bool(torch.isfinite(pixels).all()):
        dtype = pipe.vae.dtype
        if dtype == torch.float32:
            raise NanOutputError(
                "The VAE produced NaN even in float32: the checkpoint's VAE is broken; "
                "choose another VAE."
            )
        name = str(dtype).removeprefix("torch.")
        log.warning("The VAE produced NaN in %s; it now runs in float32 (use --no-half-vae)", name)
        upcast_vae(pipe)
        run.notes["VAE precision"] = f"float32 retry (NaN in {name})"
        pixels = _decode(pipe, latents, run)
        if not bool(torch.isfinite(pixels).all()):
            raise NanOutputError("The VAE produced NaN in float32 too: the VAE is broken.")
    return _postprocess(pipe, pixels)


def _postprocess(pipe, pixels: torch.Tensor) -> list[Image.Image]:
    return pipe.image_processor.postprocess(
        pixels, output_type="pil", do_denormalize=[True] * pixels.shape[0]
    )


def _image_size(pipe, latents: torch.Tensor) -> tuple[int, int]:
    """(height, width) the checkpoint's VAE would decode these latents to."""
    factor = getattr(pipe, "vae_scale_factor", 8)
    return latents.shape[-2] * factor, latents.shape[-1] * factor


def _draft_decode(run: MemoryRun, latents: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Scaled latents decoded by the job's TAESD (image by image: it needs little memory),
    at `size` (TAESD upscales 8x, as SD's VAEs do); the infotext says "VAE Decoder: TAESD"
    (A1111's field of sd_vae_decode_method)."""
    tiny = run.draft_vae
    first = next(tiny.parameters())
    with torch.inference_mode():
        parts = latents.to(first.device, first.dtype).split(1)
        pixels = torch.cat([tiny.decode(part, return_dict=False)[0] for part in parts])
        if tuple(pixels.shape[-2:]) != size:
            pixels = F.interpolate(pixels.float(), size, mode="bilinear", antialias=True)
    if not bool(torch.isfinite(pixels).all()):
        raise NanOutputError("TAESD produced NaN: use the full VAE (VAE for Decoding: Full).")
    run.notes["VAE Decoder"] = "TAESD"
    return pixels.clamp(-1, 1)


def unscale(vae, latents: torch.Tensor) -> torch.Tensor:
    """Undo the latent scaling (and the mean/std shift of VAEs that have one)."""
    config = vae.config
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        shape = (1, len(mean), 1, 1)
        mean_t = torch.tensor(mean).view(shape).to(latents.device, latents.dtype)
        std_t = torch.tensor(std).view(shape).to(latents.device, latents.dtype)
        return latents * std_t / config.scaling_factor + mean_t
    shift = getattr(config, "shift_factor", None)  # FLUX's autoencoder
    if shift:
        return latents / config.scaling_factor + shift
    return latents / config.scaling_factor


def plan_decode(vae_scale: int, latents: torch.Tensor, run: MemoryRun) -> tuple[bool, bool]:
    """(tile, slice) for these latents under the run's thresholds."""
    height, width = (side * vae_scale for side in latents.shape[-2:])
    pixels = height * width
    tile = run.low_memory or (run.tile_from > 0 and pixels >= run.tile_from**2)
    batch = latents.shape[0]
    slice_ = batch > 1 and (
        run.low_memory or (run.slice_from > 0 and batch * pixels >= run.slice_from**2)
    )
    return tile, slice_


def _decode(pipe, latents: torch.Tensor, run: MemoryRun) -> torch.Tensor:
    vae = pipe.vae
    tile, slice_ = plan_decode(getattr(pipe, "vae_scale_factor", 8), latents, run)
    z = unscale(vae, latents.to(vae.dtype))
    seamless = tile and is_circular(getattr(vae, "decoder", vae))
    wrap = min(WRAP_MARGIN, *z.shape[-2:]) if seamless else 0
    with torch.inference_mode(), _tiling(vae, tile), _wrapped(vae, wrap):
        if wrap:
            z = F.pad(z, (wrap, wrap, wrap, wrap), mode="circular")
        parts = z.split(1) if slice_ else (z,)
        decoded = [vae.decode(part, return_dict=False)[0] for part in parts]
    if tile or slice_:
        log.debug("VAE decode: tiling %s, slicing %s, seamless margin %d", tile, slice_, wrap)
    pixels = decoded[0] if len(decoded) == 1 else torch.cat(decoded)
    if wrap:
        cut = wrap * (pixels.shape[-1] // z.shape[-1])
        pixels = pixels[..., cut:-cut, cut:-cut]
    return pixels


@contextmanager
def _wrapped(vae, wrap: int) -> Iterator[None]:
    """Ordinary (zero) padding while latents extended by `wrap` are decoded in tiles."""
    if not wrap:
        yield
        return
    with padding_mode((vae,), "zeros"):
        yield


@contextmanager
def _tiling(vae, on: bool) -> Iterator[None]:
    before = bool(getattr(vae, "use_tiling", False))
    if on != before:
        vae.enable_tiling() if on else vae.disable_tiling()
    try:
        yield
    finally:
        if on != before:
            vae.enable_tiling() if before else vae.disable_tiling()
