"""Generation: turn validated params and a leased pipeline into images with infotext.

One readable, linear function per mode, in the style of a diffusers pipeline call:
resolve the sampler, make one CPU generator per image (seed + i), run the pipeline batch
by batch, report progress and cheap previews through the step callback, and build the
A1111 infotext of every image. Saving is the caller's `save` callable.

This module must never import a UI library, and never change global options: everything
comes in through its arguments.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image

from .. import __version__
from ..imaging.infotext import build_infotext
from .composable import hooked
from .conditioning import prepare_conditioning
from .decode import decode_latents, memory_fields
from .hires import hires_fields, hires_pass
from .jobs import Progress
from .params import Txt2ImgParams
from .samplers import resolve
from .schedulers import make_scheduler, set_noise_seed

log = logging.getLogger(__name__)

# Linear maps from the 4 latent channels to RGB: a preview without running the VAE.
LATENT_RGB = {
    "sd": ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473)),
    "sdxl": ((0.3448, 0.4168, 0.4395), (-0.1953, -0.0290, 0.0250), (0.1074, 0.0886, -0.0163), (-0.3730, -0.2499, -0.2088)),
}  # fmt: skip


@dataclass
class GeneratedImage:
    image: Image.Image
    seed: int
    infotext: str
    path: str | None = None


SaveFn = Callable[[Image.Image, int, str], str | None]


def txt2img(
    lease,
    params: Txt2ImgParams,
    *,
    progress: Progress,
    should_stop: Callable[[], bool],
    save: SaveFn | None = None,
    preview_every: int = 0,
    networks=None,
    upscalers=None,
) -> list[GeneratedImage]:
    """Generate `batch_count` batches of `batch_size` images; stop early when asked.

    `networks` (extra_networks.ActiveNetworks) brings the job's embeddings and the
    infotext fields of its LoRAs and VAE. With `params.hires`, every batch gets the
    hires. fix second pass (`webui.core.hires`; `upscalers` runs model upscalers)."""
    choice = resolve(params.sampler_name, params.scheduler)
    pipe = lease.pipe
    pipe.scheduler = make_scheduler(choice, lease.model.base_scheduler_config, steps=params.steps)
    seeds = params.image_seeds()
    family = lease.spec.family
    progress.batches = params.batch_count
    fields = base_fields(lease, params, choice, networks)
    on_step = step_callback(progress, should_stop, preview_every, family)

    conditioning = prepare_conditioning(
        pipe, family, params.prompt, params.negative_prompt, params.clip_skip,
        steps=params.steps, embeddings=networks.embeddings if networks else None,
    )  # fmt: skip
    if networks is not None:
        fields.update(networks.extra_fields(conditioning.used_embeddings))
    if params.hires is not None:
        fields.update(hires_fields(params, choice))
    results: list[GeneratedImage] = []
    for batch in range(params.batch_count):
        if should_stop():
            break
        progress.batch, progress.step = batch, 0
        batch_seeds = seeds[batch * params.batch_size : (batch + 1) * params.batch_size]
        set_noise_seed(pipe.scheduler, batch_seeds)  # DPM++ SDE's noise follows the seeds too
        if batch == 0:
            progress.started_at = time.monotonic()  # the ETA counts sampling, not loading
        with hooked(pipe.unet, conditioning, params.batch_size) as follow_steps:
            latents = pipe(
                **conditioning.pipeline_kwargs(),
                num_inference_steps=params.steps,
                guidance_scale=params.cfg_scale,
                width=params.width,
                height=params.height,
                num_images_per_prompt=params.batch_size,
                generator=generators(batch_seeds),
                callback_on_step_end=follow_steps(on_step),  # prompt schedules move on too
                callback_on_step_end_tensor_inputs=["latents"],
                output_type="latent",  # decoded below: tiling, NaN check (decode.py)
                **_inpainting_model_inputs(lease.spec, params),
            ).images
        if params.hires is None:
            images = decode_latents(pipe, latents)
        else:
            images = hires_pass(lease, params, latents, batch_seeds, conditioning=conditioning,
                                choice=choice, on_step=on_step, progress=progress,
                                should_stop=should_stop, generators=generators,
                                upscalers=upscalers, networks=networks)  # fmt: skip
        for image, seed in zip(images, batch_seeds, strict=True):
            infotext = build_infotext(
                params.prompt, params.negative_prompt, {**fields, **memory_fields(), "Seed": seed}
            )
            path = save(image, seed, infotext) if save else None
            results.append(GeneratedImage(image=image, seed=seed, infotext=infotext, path=path))
    return results


def base_fields(lease, params, choice, networks=None) -> dict:
    """The A1111 infotext fields every mode shares, in A1111's order (Seed added per image)."""
    vae_fields = networks.vae_fields if networks is not None else {}
    return {
        "Steps": params.steps,
        "Sampler": choice.sampler,
        "Schedule type": choice.schedule,
        "CFG scale": params.cfg_scale,
        "Size": f"{params.width}x{params.height}",
        "Model hash": lease.info.shorthash,
        "Model": lease.info.name,
        **vae_fields,
        "Clip skip": params.clip_skip if params.clip_skip > 1 else None,
        "RNG": "CPU",
        "Version": f"v{__version__}",
    }


def generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per image: a seed gives the same noise on every machine."""
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def step_callback(
    progress: Progress, should_stop: Callable[[], bool], preview_every: int, family: str
):
    """A diffusers `callback_on_step_end`: progress, cheap previews, interrupt."""

    def on_step(pipe, i, t, tensors):
        progress.advance(i + 1, pipe.num_timesteps)
        if preview_every and (i + 1) % preview_every == 0 and i + 1 < pipe.num_timesteps:
            step = progress.batch * progress.steps + i + 1
            progress.set_preview(latent_preview(tensors["latents"], family), step)
        if should_stop():
            pipe._interrupt = True  # diffusers skips the remaining steps, then decodes
        return {}

    return on_step


def _inpainting_model_inputs(spec, params: Txt2ImgParams) -> dict:
    """A 9-channel inpainting model does txt2img as inpainting of a blank, fully masked canvas."""
    if not spec.inpainting:
        return {}
    size = (params.width, params.height)
    return {
        "image": Image.new("RGB", size, (127, 127, 127)),
        "mask_image": Image.new("L", size, 255),
        "strength": 1.0,
    }


@torch.inference_mode()
def latent_preview(latents: torch.Tensor, family: str) -> Image.Image:
    """A cheap RGB approximation of the first latent of a batch, at 8x the latent size."""
    coefs = torch.tensor(LATENT_RGB["sdxl" if family == "sdxl" else "sd"], dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", latents[0].float().cpu(), coefs)
    pixels = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    image = Image.fromarray(pixels, "RGB")
    return image.resize((image.width * 8, image.height * 8), Image.Resampling.NEAREST)
