"""Latent-space stages shared by img2img, inpainting, SD upscale and hires. fix.

- `vae_encode`: pixels to scaled latents, with the fp32 upcast SDXL's VAE needs in half
  precision (decoding is `webui.core.decode.decode_latents`, shared with txt2img).
- `pipeline_for`: which diffusers pipeline a job needs, as a `from_pipe` view of the
  loaded checkpoint (never a second copy of the weights): img2img for plain models
  without a mask, the inpaint pipeline with a mask (diffusers then puts the noised
  original back outside the mask after every step) and always for 9-channel inpainting
  checkpoints, which also get the masked image as conditioning.
- `denoise`: one batch from given init latents, at a strength, with the sampler chosen,
  noised with the batch's own noise (`webui.core.noise`: seeds, variation seeds, resize
  seed from, noise multiplier, extra noise; one CPU generator per image, so a seed gives
  the same noise anywhere); with soft inpainting (`webui.core.soft_blend`) a 4-channel
  model runs the img2img pipeline and the soft blend replaces the hard 0/1 one.

This module must never import a UI library or change global options.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .decode import decode_latents
from .flow_samplers import heun_strength
from .noise import NoiseSpec, NoisyScheduler, initial_noise, pure_noise_latents
from .refiner import aesthetic_kwargs
from .run import MemoryRun, RunContext
from .sampler_params import SamplerRun
from .samplers import SchedulerChoice
from .schedulers import bind_sampler_params, set_noise_seed
from .soft_blend import SoftBlend, latent_mask_soft

log = logging.getLogger(__name__)


def _vae_dtype_for(vae) -> tuple[torch.dtype, bool]:
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    return (torch.float32 if upcast else vae.dtype), upcast


def pixels_tensor(images: list[Image.Image]) -> torch.Tensor:
    """RGB images of one size as a (B, 3, H, W) float tensor in [-1, 1]."""
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 127.5 - 1.0 for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@torch.inference_mode()
def vae_encode_pixels(pipe, pixels: torch.Tensor, memory: MemoryRun | None = None) -> torch.Tensor:
    """(B, 3, H, W) pixels in [-1, 1] to scaled latents (the distribution's mean); with the
    job's TAESD encoder (`memory.draft_encoder`, A1111's sd_vae_encode_method) a draft."""
    if memory is not None and memory.draft_encoder is not None:
        return _draft_encode(pipe, pixels, memory)
    vae = pipe.vae
    dtype, upcast = _vae_dtype_for(vae)
    if upcast:
        vae.to(torch.float32)
    try:
        dist = vae.encode(pixels.to(vae.device, dtype)).latent_dist
        latents = dist.mode() if hasattr(dist, "mode") else dist.mean
    finally:
        if upcast:
            vae.to(torch.float16)
    shift = getattr(vae.config, "shift_factor", None)  # FLUX's autoencoder
    if shift is not None:
        latents = latents - shift
    return (latents * vae.config.scaling_factor).to(denoiser_dtype(pipe))


def denoiser_dtype(pipe) -> torch.dtype:
    """The dtype of the pipeline's denoiser: its UNet, or its transformer (FLUX)."""
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    return denoiser.dtype


def _draft_encode(pipe, pixels: torch.Tensor, memory: MemoryRun) -> torch.Tensor:
    """Pixels to scaled latents by TAESD's encoder (its latents are the scaled ones), image
    by image, at the size the checkpoint's VAE gives (TAESD downscales 8x, as SD's VAEs
    do); the infotext says "VAE Encoder: TAESD" (A1111's field)."""
    tiny = memory.draft_encoder
    first = next(tiny.parameters())
    parts = pixels.to(first.device, first.dtype).split(1)
    latents = torch.cat([tiny.encode(part, return_dict=False)[0] for part in parts])
    factor = getattr(pipe, "vae_scale_factor", 8)
    size = (pixels.shape[-2] // factor, pixels.shape[-1] // factor)
    if tuple(latents.shape[-2:]) != size:
        latents = F.interpolate(latents.float(), size, mode="bilinear", antialias=True)
    memory.notes["VAE Encoder"] = "TAESD"
    return latents.to(denoiser_dtype(pipe))


def vae_encode(pipe, images: list[Image.Image], memory: MemoryRun | None = None) -> torch.Tensor:
    """Same-size RGB images (multiples of 8) to scaled latents (B, 4, H/f, W/f), f being
    the VAE's scale factor (8 for real models)."""
    return vae_encode_pixels(pipe, pixels_tensor(images), memory)


def resize_latents(
    latents: torch.Tensor, height: int, width: int, mode: str = "bilinear", antialias: bool = False
) -> torch.Tensor:
    """Latents interpolated to height x width latent pixels."""
    if tuple(latents.shape[-2:]) == (height, width):
        return latents
    kwargs = {"antialias": antialias} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(latents.float(), size=(height, width), mode=mode, **kwargs).to(
        latents.dtype
    )


def latent_mask(mask: Image.Image, latents: torch.Tensor) -> torch.Tensor:
    """A processing-size "L" mask at the latents' size, rounded to 0/1 (A1111's mask_round)."""
    height, width = latents.shape[-2:]
    small = np.asarray(mask.convert("L").resize((width, height)), dtype=np.float32) / 255
    return torch.from_numpy(np.around(small))[None, None].to(latents.device, latents.dtype)


def masked_content_latents(
    latents: torch.Tensor, mask: Image.Image, fill: int, seeds: list[int], rounded: bool = True
) -> torch.Tensor:
    """A1111's "latent noise" (2) and "latent nothing" (3) for the masked area (by the
    unrounded mask when not `rounded`: soft inpainting)."""
    if fill not in (2, 3):
        return latents
    if rounded:
        keep = 1 - latent_mask(mask, latents)
    else:
        keep = 1 - latent_mask_soft(mask, *latents.shape[-2:]).to(latents.device, latents.dtype)
    if fill == 3:
        return latents * keep
    noise = torch.stack(
        [
            torch.randn(latents.shape[1:], generator=torch.Generator("cpu").manual_seed(s))
            for s in seeds
        ]
    ).to(latents.device, latents.dtype)
    return latents * keep + noise * (1 - keep)


def generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per image: a seed gives the same noise on every machine."""
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def pipeline_for(run: RunContext, masked: bool):
    """The pipeline view a denoise needs (see the module docstring): the family names it."""
    lease = run.lease
    if lease.spec.inpainting:
        return lease.pipe
    pipe = lease.variant(run.family.pipeline_class("inpaint" if masked else "img2img", False))
    pipe.set_progress_bar_config(disable=True)  # a from_pipe view starts with the bars on
    return pipe


def effective_steps(steps: int, strength: float) -> int:
    """How many steps an img2img strength runs: diffusers' int(steps x strength), and one
    where that is 0 for a strength above 0 (A1111 always runs one step; a 1-step turbo
    img2img at strength 0.5 would otherwise return the init image untouched)."""
    if strength <= 0:
        return 0
    return max(1, min(int(steps * strength), steps))


def schedule_steps(steps: int, strength: float) -> int:
    """The schedule length the img2img pipeline is called with: `steps`, or, where
    int(steps x strength) is 0, the shortest schedule in which `strength` covers one step,
    so that the one step starts at the strength's noise level (diffusers' advice for
    turbo models: 2 steps at strength 0.5)."""
    length = steps
    while strength > 0 and int(length * strength) < 1:
        length += 1
    return length


@dataclass
class DenoiseRequest:
    """Everything one denoise of a batch needs besides the pipeline."""

    latents: torch.Tensor  # init latents, one per image
    conditioning: dict  # from encode_prompts
    choice: SchedulerChoice
    steps: int
    strength: float
    cfg_scale: float
    seeds: list[int]
    mask: Image.Image | None = None  # processing-size "L" mask; None: the whole image
    pixels: torch.Tensor | None = None  # processing-size pixels, for 9-channel models
    output_type: str = "pil"
    noise: NoiseSpec | None = None  # None: each seed's own noise, nothing more
    sampling: SamplerRun = field(default_factory=SamplerRun)  # eta, sigma churn, ...
    soft: SoftBlend | None = None  # soft inpainting: its blend replaces the hard one
    generators: list = field(default_factory=list)  # set by `denoise`: a refiner goes on with them
    reference: torch.Tensor | None = None  # the init image's latents (FLUX.1 Kontext reads them)
    scheduler_options: dict = field(default_factory=dict)  # the job's shift (flow matching)


def _hard_mask(req: DenoiseRequest) -> bool:
    """Whether the pipeline puts the original back outside a 0/1 mask after each step."""
    return req.mask is not None and req.soft is None


def denoise(run: RunContext, req: DenoiseRequest, on_step: Callable) -> list:
    """Run one batch; returns PIL images (or latents with output_type="latent")."""
    lease = run.lease
    inpaint_model = lease.spec.inpainting
    pipe = pipeline_for(run, _hard_mask(req))
    steps = schedule_steps(req.steps, req.strength)  # one step at least
    base_config = {**lease.model.base_scheduler_config, **req.scheduler_options}
    scheduler = run.family.scheduler(req.choice, base_config, steps)
    pipe.scheduler = bind_sampler_params(scheduler, req.sampling)
    if req.soft is not None:
        req.soft.install(pipe.scheduler)
    set_noise_seed(pipe.scheduler, req.seeds)
    latents = req.latents
    factor = pipe.vae_scale_factor
    height, width = latents.shape[-2] * factor, latents.shape[-1] * factor
    inpaint_pipe = inpaint_model or _hard_mask(req)
    kwargs = dict(
        **{"guidance_scale": req.cfg_scale, **req.conditioning},  # the family's guidance
        image=latents,
        strength=req.strength,
        num_inference_steps=steps,
        num_images_per_prompt=len(req.seeds),
        **_noise_inputs(pipe, req, inpaint_pipe),
        callback_on_step_end=on_step,
        callback_on_step_end_tensor_inputs=["latents"],
        output_type="latent",  # decoded by decode_latents: tiling, NaN check
        **req.sampling.pipeline_kwargs,  # DDIM's eta
        **aesthetic_kwargs(pipe, run.aesthetic_scores),  # the SDXL refiner's options
        **run.family.img2img_call_kwargs(height, width),  # FLUX: the size of its latents
    )
    if inpaint_pipe:
        mask = req.mask if req.mask is not None else Image.new("L", (width, height), 255)
        if inpaint_model:  # the family's conditioning (FLUX.1 Fill's), else SD's 9-channel
            masked_latents = run.family.masked_image_latents(pipe, req.pixels, mask)
            if masked_latents is None:
                masked_latents = _masked_image_latents(pipe, req.pixels, mask, run.memory)
        else:  # a 4-channel model never reads them; the pipeline wants the right shape
            masked_latents = latents
        kwargs.update(
            mask_image=mask, masked_image_latents=masked_latents, height=height, width=width
        )
    req.generators[:] = kwargs["generator"]
    with run.family.with_reference(pipe, req.reference), heun_strength(pipe):
        latents = run.family.finished_latents(pipe, pipe(**kwargs).images, height, width)
    return latents if req.output_type == "latent" else decode_latents(pipe, latents, run.memory)


def _noise_inputs(pipe, req: DenoiseRequest, inpaint_pipe: bool) -> dict:
    """The pipeline's `generator` (and `latents`) so that it starts from the batch's noise.

    The img2img and inpaint pipelines draw one noise from the generators and noise the
    init latents with `scheduler.add_noise`, which `NoisyScheduler` points at our noise.
    At strength 1 the inpaint pipeline starts from pure noise without `add_noise`: it is
    given the noise as `latents` and the generators after their first draw."""
    spec = req.noise or NoiseSpec(tuple(req.seeds))
    if spec.plain and spec.extra <= 0:
        return {"generator": generators(req.seeds)}  # the pipeline's own draw is the noise
    start = initial_noise(spec, req.latents.shape[1:], pipe.vae_scale_factor)
    if inpaint_pipe and req.strength >= 1.0:
        latents = pure_noise_latents(start.noise, pipe.scheduler, spec.extra)
        return {"generator": start.generators, "latents": latents.to(req.latents.dtype)}
    NoisyScheduler(pipe.scheduler, start.noise, spec.extra).install(pipe.scheduler)
    return {"generator": generators(req.seeds)}  # the pipeline's draw from them is replaced


def _masked_image_latents(
    pipe, pixels: torch.Tensor | None, mask: Image.Image, memory: MemoryRun
) -> torch.Tensor:
    """The 9-channel conditioning: the image with the masked area grey, encoded."""
    if pixels is None:
        raise ValueError("a 9-channel inpainting model needs the init pixels")
    keep = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) < 127.5)
    return vae_encode_pixels(pipe, pixels * keep[None, None].to(pixels.dtype), memory)
