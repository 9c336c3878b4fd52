"""VAE decoding for every mode: latents in, PIL images out, never a black image.

`decode_latents(pipe, latents)` decodes with VAE tiling when one image is at least
`tile_from`² pixels and image by image (slicing) when a batch is at least `slice_from`²
pixels, both from the settings of the job's `MemoryRun` (a low-memory retry tiles and
slices always). A half-precision VAE that produces NaN is moved to float32 for good and
the decode repeated; the job's infotext says so. NaN latents (from the UNet) or NaN from a
float32 VAE fail the job with a clear message instead of saving a black image.

A `MemoryRun` is the per-job memory context: what the job may do (thresholds, low-memory
retry) and the notes it collects for the infotext. The worker opens it around a job
(`memory_run`); without one the option defaults apply.

This module must never import a UI library.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from PIL import Image

from ..errors import UserError
from ..model_manager.optimize import upcast_vae

log = logging.getLogger(__name__)

DEFAULT_TILE_FROM = 1536  # px per side (of width x height): 2048² tiles, 1024² does not
DEFAULT_SLICE_FROM = 1024


class NanOutputError(RuntimeError, UserError):
    """The model produced NaN; the message says which part and what to try."""


@dataclass
class MemoryRun:
    """One job's memory settings, and the notes (infotext fields) its decoding added."""

    tile_from: int = DEFAULT_TILE_FROM  # 0: never tile
    slice_from: int = DEFAULT_SLICE_FROM  # 0: never slice
    low_memory: bool = False  # the "retry with lower memory" run
    token_merging_ratio: float = 0.0  # tomesd, 0: off
    notes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_options(cls, get) -> MemoryRun:
        """From an option getter (`options.get` or a job's snapshot)."""
        return cls(
            tile_from=int(get("vae_tiling_threshold")),
            slice_from=int(get("vae_slicing_threshold")),
            token_merging_ratio=float(get("token_merging_ratio")),
        )

    def messages(self) -> list[str]:
        return [f"{key}: {value}" for key, value in self.notes.items()]


_RUN: ContextVar[MemoryRun | None] = ContextVar("webui_memory_run", default=None)


@contextmanager
def memory_run(run: MemoryRun) -> Iterator[MemoryRun]:
    """Make `run` the current job's memory context (per thread / context)."""
    token = _RUN.set(run)
    try:
        yield run
    finally:
        _RUN.reset(token)


def current_run() -> MemoryRun:
    run = _RUN.get()
    return run if run is not None else MemoryRun()


def memory_fields() -> dict[str, str]:
    """Infotext fields the current job's memory handling added (e.g. a VAE upcast)."""
    return dict(current_run().notes)


def decode_latents(
    pipe, latents: torch.Tensor, *, run: MemoryRun | None = None
) -> list[Image.Image]:
    """Scaled latents (B, C, h, w) from a pipeline to RGB images, as diffusers would."""
    run = run or current_run()
    if not bool(torch.isfinite(latents).all()):
        raise NanOutputError(
            "The UNet produced NaN latents: the image would be black. Try another sampler or "
            "CFG scale, --no-half, or --upcast-sampling."
        )
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
    return pipe.image_processor.postprocess(
        pixels, output_type="pil", do_denormalize=[True] * pixels.shape[0]
    )


def unscale(vae, latents: torch.Tensor) -> torch.Tensor:
    """Undo the latent scaling (and the mean/std shift of VAEs that have one)."""
    config = vae.config
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        shape = (1, len(mean), 1, 1)
        mean_t = torch.tensor(mean).view(shape).to(latents.device, latents.dtype)
        std_t = torch.tensor(std).view(shape).to(latents.device, latents.dtype)
        return latents * std_t / config.scaling_factor + mean_t
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
    with torch.inference_mode(), _tiling(vae, tile):
        parts = z.split(1) if slice_ else (z,)
        decoded = [vae.decode(part, return_dict=False)[0] for part in parts]
    if tile or slice_:
        log.debug("VAE decode: tiling %s, slicing %s", tile, slice_)
    return decoded[0] if len(decoded) == 1 else torch.cat(decoded)


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
