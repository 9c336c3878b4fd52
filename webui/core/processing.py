"""Generation: turn validated params and a leased pipeline into images with infotext.

One readable, linear function per mode, in the style of a diffusers pipeline call:
resolve the sampler, make each image's initial noise (`webui.core.noise`: its seed, the
variation seed and "resize seed from", with one CPU generator per image), run the pipeline
batch by batch, report progress and live previews (cheap or decoded) through the step
callback, and build the
A1111 infotext of every image. Everything a job runs with comes in its `RunContext`
(`webui.core.run`): the lease, progress, cancel token, networks, memory settings and
`save` (None: nothing is saved). What depends on the model family (sampler and
scheduler, prompt conditioning, its infotext fields, preview colours) is asked of
`run.family` (`webui.core.families`); this module never tests a family's name.

This module must never import a UI library, and never change global options: everything
comes in through its arguments.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image

from .. import __version__
from ..imaging.infotext import build_infotext
from ..model_manager.weight_storage import storage_fields
from .controlnet import infotext as control_infotext
from .controlnet_inpaint import kept_pixels
from .decode import NanOutputError, decode_latents
from .faces import face_fields, restored
from .firstpass import first_pass_from_image, has_first_pass_image
from .hires import hires_choice, hires_fields, hires_pass
from .hires_checkpoint import hires_checkpoint_fields
from .noise import NoiseSpec, initial_noise
from .params import Txt2ImgParams
from .params_detailer import infotext_fields
from .previews import SMALL_DECODERS, small_decoder_preview
from .refiner import RefinerRun, refiner_fields
from .run import RunContext
from .samplers import SchedulerChoice
from .schedulers import bind_sampler_params, set_noise_seed

log = logging.getLogger(__name__)


@dataclass
class GeneratedImage:
    image: Image.Image
    seed: int
    infotext: str
    path: str | None = None
    grid: bool = False  # the batch grid (webui.core.saving), shown before the images


def txt2img(run: RunContext, params: Txt2ImgParams) -> list[GeneratedImage]:
    """Generate `batch_count` batches of `batch_size` images; stop early when asked.

    `run.networks` brings the job's embeddings and the infotext fields of its LoRAs and
    VAE. With `params.hires`, every batch gets the hires. fix second pass
    (`webui.core.hires`; `run.upscalers` runs model upscalers)."""
    lease, pipe, progress, family = run.lease, run.pipe, run.progress, run.family
    family.check_mode("txt2img")  # the SDXL refiner only refines
    if params.hires is not None:
        family.check_mode("img2img")  # the second pass is an img2img pass
    refiner = RefinerRun.of(run, params)  # None: no refiner, or it never switches
    choice = family.sampler(params.sampler_name, params.scheduler)
    sampling, ngms = run.sampling(choice.sampler, params), run.ngms(params)
    base_config = {**lease.model.base_scheduler_config, **family.scheduler_options(params)}
    scheduler = family.scheduler(choice, base_config, params.steps)  # options: SD 3.5's shift
    pipe.scheduler = bind_sampler_params(scheduler, sampling)  # eta, sigma churn...
    seeds, subseeds = params.image_seeds(), params.image_subseeds()
    progress.batches = params.batch_count
    fields = base_fields(run, params, choice)
    on_step = step_callback(run)
    first_pass_step = refiner.stopping(on_step) if refiner else on_step  # stops at the switch
    conditioning = family.conditioning(
        pipe, params.prompt, params.negative_prompt, params.clip_skip,
        steps=params.steps, embeddings=run.networks.embeddings,
    )  # fmt: skip
    fields.update(run.networks.extra_fields(conditioning.used_embeddings))
    run.warn(conditioning.warnings)  # a clip skip or an embedding the encoders did not take
    if params.hires is None and refiner is None and run.release_text_encoders is not None:
        run.release_text_encoders()  # every batch shares these prompts: free T5 before sampling
    if params.hires is not None:
        fields.update(hires_fields(family, params, choice))
        if run.extra_noise > 0:
            fields["Extra noise"] = run.extra_noise
    fields.update(sampling.fields)
    if params.hires is not None:  # the second pass's sampler writes its own values (A1111)
        fields.update(run.sampling(hires_choice(family, params).sampler, params).fields)
    fields.update(ngms.fields())
    fields.update({**refiner_fields(run, params), **hires_checkpoint_fields(run, params)})
    results: list[GeneratedImage] = []
    for batch in range(params.batch_count):
        if run.should_stop():
            break
        progress.batch, progress.step = batch, 0
        if run.checkpoints is not None:  # a refiner or hires checkpoint may have taken the GPU
            run.checkpoints.use(lease)
        batch_slice = slice(batch * params.batch_size, (batch + 1) * params.batch_size)
        batch_seeds, batch_subseeds = seeds[batch_slice], subseeds[batch_slice]
        noise = NoiseSpec.of(params, batch_seeds, batch_subseeds, extra=run.extra_noise)
        start = initial_noise(noise, _latent_shape(pipe, params), pipe.vae_scale_factor)
        set_noise_seed(pipe.scheduler, batch_seeds)  # DPM++ SDE's noise follows the seeds too
        if batch == 0:
            progress.started_at = time.monotonic()  # the ETA counts sampling, not loading
        given = first_pass_from_image(run, params) if has_first_pass_image(params) else None
        if given is not None:  # the given first pass is not sampled (nor refined)
            latents = given.latents
        else:
            latents = _first_pass(run, params, conditioning, start, sampling, ngms,
                                  first_pass_step)  # fmt: skip
            if refiner is not None:
                latents = refiner.finish(latents, start.generators, sampling=sampling, ngms=ngms,
                                         on_step=on_step)  # fmt: skip
        if params.hires is None:
            images = decode_latents(pipe, latents, run.memory)
        else:
            images = hires_pass(run, params, latents, noise, conditioning=conditioning,
                                choice=choice, on_step=on_step,
                                first_images=given.images if given is not None else None)  # fmt: skip
        for image, seed, subseed in zip(images, batch_seeds, batch_subseeds, strict=True):
            image = kept_pixels(run.control, image)  # ControlNet's inpaint_only (unmasked)
            image = restored(run, params, image)  # "Restore faces": before saving (A1111)
            results.append(finish_image(run, params, image, seed, fields, subseed))
    return results


def _latent_shape(pipe, params: Txt2ImgParams) -> tuple[int, int, int]:
    """(channels, height, width) of one image's latents in the first pass."""
    factor = pipe.vae_scale_factor
    return pipe.vae.config.latent_channels, params.height // factor, params.width // factor


def finish_image(
    run: RunContext,
    params: Txt2ImgParams,
    image: Image.Image,
    seed: int,
    fields: dict,
    subseed: int | None = None,
) -> GeneratedImage:
    """The image's infotext (with the run's memory notes and its own seed and variation
    seed), saved when the job saves. The job's detailer units (ADetailer) run first."""
    own: dict = {"Seed": seed}
    if params.subseed_strength > 0:
        own["Variation seed"] = params.subseed if subseed is None else subseed
    detailer: dict = {}
    if params.adetailer:
        from .detailer import detail  # it builds on img2img, which builds on this module

        image = detail(run, params, image, seed, params.subseed if subseed is None else subseed)
        detailer = infotext_fields(params.adetailer)
    infotext = build_infotext(
        params.prompt,
        params.negative_prompt,
        {**fields, **detailer, **run.infotext_notes(), **own},
    )
    path = run.save(image, seed, infotext) if run.save else None
    return GeneratedImage(image=image, seed=seed, infotext=infotext, path=path)


def base_fields(run: RunContext, params: Txt2ImgParams, choice: SchedulerChoice) -> dict:
    """The A1111 infotext fields every mode shares, in A1111's order (Seed added per image)."""
    lease = run.lease
    return {
        "Steps": params.steps,
        "Sampler": choice.sampler,
        "Schedule type": choice.schedule,
        "CFG scale": params.cfg_scale,
        "Size": f"{params.width}x{params.height}",
        "Model hash": lease.info.shorthash,
        "Model": lease.info.name,
        **run.networks.vae_fields,
        **noise_fields(params),
        **face_fields(params),  # "Face restoration" (A1111 puts it after Seed)
        **run.family.infotext_fields(params),  # "Clip skip"
        **module_fields(lease.model),  # Forge's "Module 1: ae", ...
        **storage_fields(getattr(lease.model, "pipe", None)),  # fp8 / GGUF weights
        "RNG": "CPU",
        "Tiling": True if params.tiling else None,
        **control_infotext(run.control),  # "ControlNet 0" (sd-webui-controlnet's fields)
        "Version": f"v{__version__}",
    }


def module_fields(model) -> dict:
    """The module files a partial checkpoint was completed with (Forge's "VAE / Text
    Encoder"), by file stem: "Module 1: ae", "Module 2: clip_l", ..."""
    modules = getattr(model, "modules", ())
    return {f"Module {i}": Path(path).stem for i, path in enumerate(modules, 1)}


def noise_fields(params: Txt2ImgParams) -> dict:
    """A1111's "Variation seed strength" and "Seed resize from" (the variation seed itself
    is per image: `finish_image`)."""
    fields: dict = {}
    if params.subseed_strength > 0:
        fields["Variation seed strength"] = params.subseed_strength
    if params.seed_resize_from_w > 0 and params.seed_resize_from_h > 0:
        fields["Seed resize from"] = f"{params.seed_resize_from_w}x{params.seed_resize_from_h}"
    return fields


def step_callback(run: RunContext) -> Callable:
    """A diffusers `callback_on_step_end`: progress, live previews, interrupt."""
    progress, every = run.progress, run.preview_every

    def on_step(pipe, i, t, tensors):
        progress.advance(i + 1, pipe.num_timesteps)
        if every and (i + 1) % every == 0 and i + 1 < pipe.num_timesteps:
            step = progress.batch * progress.steps + i + 1
            progress.set_preview(preview_image(run, pipe, tensors["latents"]), step)
        if run.should_stop():
            pipe._interrupt = True  # diffusers skips the remaining steps, then decodes
        return {}

    return on_step


def preview_image(run: RunContext, pipe, latents: torch.Tensor) -> Image.Image:
    """The live preview of the first latent of a batch: decoded by the VAE with the
    "Full" method (`run.preview_full`, A1111's show_progress_type), by Approx NN or TAESD
    (`webui.core.previews`), else the family's cheap colour approximation (also when the
    full decode fails or a file is missing: a preview never ends a job).
    Nothing of it reaches the infotext."""
    if run.preview_full:
        try:
            with torch.inference_mode():
                full = replace(run.memory, notes={}, draft_vae=None)
                return decode_latents(pipe, latents[:1], full)[0]
        except (NanOutputError, RuntimeError) as exc:
            log.warning("full live preview failed (%s); showing the cheap one", exc)
    elif run.preview_method in SMALL_DECODERS:  # Approx NN, TAESD (None: file missing)
        image = small_decoder_preview(run, pipe, latents)
        if image is not None:
            return image
    return latent_preview(latents, run.family.latent_rgb)


def _first_pass(run: RunContext, params: Txt2ImgParams, conditioning, start, sampling,
                ngms, on_step: Callable) -> torch.Tensor:  # fmt: skip
    """Sample one batch's first pass from its start noise; returns latents."""
    pipe, family, lease = run.pipe, run.family, run.lease
    size, batch = (params.height, params.width), params.batch_size
    with family.follow_steps(pipe, conditioning, batch, ngms, size=size,
                             control=run.control) as follow_steps:  # fmt: skip
        latents = pipe(
            **family.pipeline_call_kwargs(conditioning, params),  # prompts, guidance
            num_inference_steps=params.steps,
            width=params.width,
            height=params.height,
            num_images_per_prompt=params.batch_size,
            latents=family.start_latents(pipe, start.noise),
            generator=start.generators,  # after the first draw: step noise goes on
            callback_on_step_end=follow_steps(on_step),  # prompt schedules move on too
            callback_on_step_end_tensor_inputs=["latents"],
            output_type="latent",  # decoded below: tiling, NaN check (decode.py)
            **sampling.pipeline_kwargs,  # DDIM's eta
            **_inpainting_model_inputs(lease.spec, params),
        ).images
    return family.finished_latents(pipe, latents, params.height, params.width)


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
def latent_preview(
    latents: torch.Tensor, coefficients: tuple[tuple[float, float, float], ...]
) -> Image.Image:
    """A cheap RGB approximation of the first latent of a batch, at 8x the latent size
    (`coefficients`: the family's map from latent channels to RGB)."""
    coefs = torch.tensor(coefficients, dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", latents[0].float().cpu(), coefs)
    pixels = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    image = Image.fromarray(pixels, "RGB")
    return image.resize((image.width * 8, image.height * 8), Image.Resampling.NEAREST)
