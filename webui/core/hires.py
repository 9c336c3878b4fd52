"""Hires. fix: txt2img at the first-pass size, upscale, then an img2img pass at the new size.

Called by `webui.core.processing.txt2img` with the first pass's latents. A latent
upscaler ("Latent", "Latent (bicubic antialiased)", ...) interpolates the latents; any
other upscaler (Lanczos, Nearest, a model from models/ESRGAN etc.) works on the decoded
images, which are then encoded again. With both "resize to" sides given, A1111 upscales
to cover the size and trims the latents to it. The second pass runs `steps` (or the first
pass's) at the hires denoising strength, with the hires sampler and prompt when given,
from the first pass's seeds (variation seeds included) at the new size, plus A1111's extra
noise when the job's `img2img_extra_noise` option asks for it, and with the hires
checkpoint when the job names one (`webui.core.hires_checkpoint`).

This module must never import a UI library, and never change global options.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from PIL import Image

from ..imaging.upscaler_list import LATENT_MODES
from .conditioning import Conditioning
from .decode import decode_latents
from .hires_checkpoint import hires_model
from .latents import (
    DenoiseRequest,
    denoise,
    effective_steps,
    pixels_tensor,
    resize_latents,
    vae_encode_pixels,
)
from .noise import NoiseSpec
from .params import Txt2ImgParams
from .run import RunContext
from .samplers import SchedulerChoice

if TYPE_CHECKING:
    from .families.base import Family

log = logging.getLogger(__name__)


def hires_choice(family: Family, params: Txt2ImgParams) -> SchedulerChoice:
    """The second pass's sampler and schedule (the first pass's unless chosen)."""
    hp = params.hires
    return family.sampler(hp.sampler_name or params.sampler_name, hp.scheduler or params.scheduler)


def hires_fields(family: Family, params: Txt2ImgParams, choice: SchedulerChoice) -> dict:
    """A1111's infotext fields of hires. fix, in A1111's order."""
    hp = params.hires
    fields: dict = {"Denoising strength": hp.denoising_strength}
    hr_choice = hires_choice(family, params)
    if hr_choice.sampler != choice.sampler:
        fields["Hires sampler"] = hr_choice.sampler
    if hp.prompt and hp.prompt != params.prompt:
        fields["Hires prompt"] = hp.prompt
    if hp.negative_prompt and hp.negative_prompt != params.negative_prompt:
        fields["Hires negative prompt"] = hp.negative_prompt
    if hr_choice.schedule != choice.schedule:
        fields["Hires schedule type"] = hr_choice.schedule
    if hp.resize_x or hp.resize_y:
        fields["Hires resize"] = f"{hp.resize_x}x{hp.resize_y}"
    else:
        fields["Hires upscale"] = hp.scale
    if hp.steps:
        fields["Hires steps"] = hp.steps
    fields["Hires upscaler"] = hp.upscaler.name
    return fields


def hires_pass(
    run: RunContext,
    params: Txt2ImgParams,
    latents: torch.Tensor,
    noise: NoiseSpec,
    *,
    conditioning: Conditioning,
    choice: SchedulerChoice,
    on_step: Callable,
    first_images: list[Image.Image] | None = None,
) -> list[Image.Image]:
    """The second pass over one batch's first-pass latents; returns PIL images.

    `conditioning` is the first pass's; a hires prompt gets its own. `noise` is the first
    pass's batch noise spec (seeds, variation, extra noise). `first_images`: the first
    pass's images when they were given (`webui.core.firstpass`), for image upscalers."""
    if run.should_stop():  # interrupted during the first pass: keep its images
        return decode_latents(run.pipe, latents, run.memory)
    run, conditioning = hires_model(run, params, conditioning)  # hr_checkpoint_name's
    pipe, hp, progress = run.pipe, params.hires, run.progress
    progress.text = "Hires fix: upscaling"
    latents, pixels = _upscaled(run, params, latents, first_images)
    steps = hp.steps or params.steps
    if effective_steps(steps, hp.denoising_strength) == 0:
        progress.text = ""
        return decode_latents(pipe, latents, run.memory)
    if (hp.prompt and hp.prompt != params.prompt) or (
        hp.negative_prompt and hp.negative_prompt != params.negative_prompt
    ):
        conditioning = run.family.conditioning(
            pipe,
            hp.prompt or params.prompt,
            hp.negative_prompt or params.negative_prompt,
            params.clip_skip,
            steps=steps,
            embeddings=run.networks.embeddings,
            fields=(
                "hr_prompt" if hp.prompt else "prompt",
                "hr_negative_prompt" if hp.negative_prompt else "negative_prompt",
            ),
        )
    hr_choice = hires_choice(run.family, params)
    progress.text = "Hires fix"
    progress.step = 0
    seeds = list(noise.seeds)
    ngms = run.ngms(params)
    factor = pipe.vae_scale_factor
    size = (latents.shape[-2] * factor, latents.shape[-1] * factor)  # FLUX's previews
    with run.family.follow_steps(pipe, conditioning, len(seeds), ngms, size=size,
                                 control=run.control) as follow_steps:  # fmt: skip
        request = DenoiseRequest(
            latents=latents,
            conditioning=run.family.pipeline_call_kwargs(conditioning, params),  # guidance
            choice=hr_choice,
            steps=steps,
            strength=hp.denoising_strength,
            cfg_scale=params.cfg_scale,
            seeds=seeds,
            pixels=pixels,
            noise=noise,
            sampling=run.sampling(hr_choice.sampler, params),
            scheduler_options=run.family.scheduler_options(params),  # SD 3.5's shift
        )
        images = denoise(run, request, follow_steps(on_step))
    progress.text = ""
    return images


def _upscaled(
    run: RunContext,
    params: Txt2ImgParams,
    latents: torch.Tensor,
    first_images: list[Image.Image] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(latents at the hires size, and their pixels when an image upscaler made them)."""
    pipe, hp = run.pipe, params.hires
    factor = pipe.vae_scale_factor
    size = hp.size(params.width, params.height)
    latent_h, latent_w, top, bottom, left, right = size.latent_box(factor)
    pixels = None
    if hp.upscaler.is_latent:
        mode, antialias = LATENT_MODES[hp.upscaler.name]
        latents = resize_latents(latents, latent_h, latent_w, mode, antialias)
    else:
        images = [
            run.upscalers.resize(image, latent_w * factor, latent_h * factor, hp.upscaler,
                                 should_stop=run.should_stop)
            for image in (first_images or decode_latents(pipe, latents, run.memory))
        ]  # fmt: skip
        pixels = pixels_tensor(images)
        latents = vae_encode_pixels(pipe, pixels, run.memory)
    latents = latents[:, :, top:bottom, left:right]
    if pixels is not None:
        pixels = pixels[:, :, top * factor : bottom * factor, left * factor : right * factor]
    elif run.lease.spec.inpainting:  # 9-channel models: the whole image is "masked"
        pixels = torch.zeros(
            latents.shape[0], 3, latents.shape[2] * factor, latents.shape[3] * factor
        )
    return latents, pixels
