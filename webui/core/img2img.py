"""img2img and inpainting: init images (and a mask) plus a prompt to new images.

A1111's steps, in order: outpainting canvas; mask inversion and blur; for "only masked"
the crop around the mask (plus padding, grown to the processing aspect ratio) else the
resize mode; the masked content (fill / original / latent noise / latent nothing); the
denoise at the strength asked for (`webui.core.latents`), from the batch's noise
(`webui.core.noise`: seeds, variation seeds, resize seed from, times the initial noise
multiplier, plus the job's extra noise); and finally the overlay that
puts the original back outside the mask, softly at the blurred edge, pasting an "only
masked" result back where it was cut out. A1111's `latent_mask` (when given) is the mask of
the latent blending and latent masked content instead of the mask. Soft inpainting
(`webui.core.soft_blend`) blends by the unrounded mask at every step and composites by
how much each region changed. Denoising strength 0 returns the prepared init image
without touching the model; any strength above 0 runs one step at least
(`webui.core.latents.effective_steps`: 1-step turbo img2img).

This module must never import a UI library, and never change global options.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from PIL import Image

from ..imaging import masks as geometry
from ..imaging.codec import prepare_mask, to_rgb
from . import soft_blend
from .conditioning import Conditioning
from .controlnet_inpaint import kept_pixels
from .decode import decode_latents
from .faces import restored
from .latents import (
    DenoiseRequest,
    denoise,
    effective_steps,
    masked_content_latents,
    pipeline_for,
    pixels_tensor,
    resize_latents,
    vae_encode,
    vae_encode_pixels,
)
from .noise import NoiseSpec
from .params_img2img import Img2ImgParams
from .processing import GeneratedImage, base_fields, finish_image, step_callback
from .refiner import RefinerRun, refiner_fields
from .run import RunContext
from .samplers import SchedulerChoice

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """One init image made ready for the model, and how to put the result back."""

    image: Image.Image  # processing-size RGB, masked content applied
    source: Image.Image  # processing-size RGB before the masked content (strength 0)
    mask: Image.Image | None = None  # processing-size "L" mask
    overlay: Image.Image | None = None  # the original, transparent where repainted
    paste_to: tuple[int, int, int, int] | None = None  # "only masked": x, y, w, h
    latent_resize: bool = False  # resize mode 3: encode at own size, resize the latents
    latent_mask: Image.Image | None = None  # processing-size "L": A1111's latent_mask

    @property
    def blend_mask(self) -> Image.Image | None:
        """The mask of the latent blending and latent masked content."""
        return self.latent_mask if self.latent_mask is not None else self.mask

    def finish(self, result: Image.Image) -> Image.Image:
        if self.overlay is None:
            return result
        return geometry.apply_overlay(result, self.overlay, self.paste_to)


def prepare(params: Img2ImgParams, image: Image.Image) -> Prepared:
    """A1111's img2img/inpaint preprocessing of one init image."""
    image = to_rgb(image)
    width, height, mode = params.width, params.height, params.resize_mode
    mask = None
    if params.mask is not None:
        mask = prepare_mask(params.mask, invert=params.inpainting_mask_invert)
    latent = params.latent_mask.convert("L") if params.latent_mask is not None else None
    if any(params.outpaint):
        overlap = 2 * max(params.mask_blur_x, params.mask_blur_y)
        if latent is not None:
            _, latent = geometry.outpaint_canvas(image, latent, *params.outpaint, overlap=overlap)
        image, mask = geometry.outpaint_canvas(image, mask, *params.outpaint, overlap=overlap)
    if mask is None:
        if mode == geometry.LATENT_RESIZE:
            return Prepared(image, image, latent_resize=True)
        resized = geometry.resize_image(mode, image, width, height)
        return Prepared(resized, resized)
    mode = geometry.JUST_RESIZE if mode == geometry.LATENT_RESIZE else mode
    mask = geometry.blur_mask(mask, params.mask_blur_x, params.mask_blur_y)
    paste_to = None
    if params.inpaint_full_res:
        box = geometry.crop_region(mask, params.inpaint_full_res_padding)
        if box is None:  # cannot happen after prepare_mask; kept as a clear failure
            raise ValueError("mask: the mask is empty")
        box = geometry.expand_crop_region(box, width, height, mask.width, mask.height)
        x1, y1, x2, y2 = box
        overlay = geometry.make_overlay(image, mask)
        mask_small = geometry.resize_image(geometry.RESIZE_AND_FILL, mask.crop(box), width, height)
        image = geometry.resize_image(geometry.RESIZE_AND_FILL, image.crop(box), width, height)
        if latent is not None:
            latent = geometry.resize_image(
                geometry.RESIZE_AND_FILL, latent.crop(box), width, height
            )
        paste_to = (x1, y1, x2 - x1, y2 - y1)
    else:
        mask_small = geometry.resize_image(mode, mask, width, height)
        image = geometry.resize_image(mode, image, width, height)
        overlay = geometry.make_overlay(image, mask_small.point(lambda v: min(255, v * 2)))
        if latent is not None:
            latent = geometry.resize_image(mode, latent, width, height)
    source = image
    if params.inpainting_fill != 1:  # A1111 fills by the latent mask when there is one
        image = geometry.fill_masked(image, latent if latent is not None else mask_small)
    return Prepared(image, source, mask_small, overlay, paste_to, latent_mask=latent)


def extra_fields(params: Img2ImgParams) -> dict:
    """Infotext fields of img2img and inpainting, A1111's names (after the base fields)."""
    fields: dict = {"Denoising strength": params.denoising_strength}
    if params.mask is not None or any(params.outpaint):
        if params.mask_blur_x == params.mask_blur_y:
            fields["Mask blur"] = params.mask_blur_x or None
        else:
            fields["Mask blur X"], fields["Mask blur Y"] = params.mask_blur_x, params.mask_blur_y
        if params.inpainting_mask_invert:
            fields["Mask mode"] = "Inpaint not masked"
        if params.inpainting_fill != 1:
            fields["Masked content"] = geometry.MASKED_CONTENT[params.inpainting_fill]
        if params.inpaint_full_res:
            fields["Inpaint area"] = "Only masked"
            fields["Masked area padding"] = params.inpaint_full_res_padding
        for name, value in zip(("left", "right", "up", "down"), params.outpaint, strict=True):
            fields[f"Outpaint {name}"] = value or None
        if params.soft_inpainting is not None:
            fields.update(params.soft_inpainting.infotext_fields())
    return fields


def img2img(run: RunContext, params: Img2ImgParams) -> list[GeneratedImage]:
    """`batch_count` batches of `batch_size` images; image i starts from init image i
    (cycling through the init images) with seed + i (the seed and variation seed + i with
    a variation strength). A batch folder or SD upscale in the params hands over to those
    modes."""
    if params.batch_input_dir:
        from .img2img_batch import img2img_folder

        return img2img_folder(run, params)
    if params.sd_upscale is not None:
        from .sd_upscale import sd_upscale

        return sd_upscale(run, params)
    job = Img2ImgJob(run, params)
    prepared = [prepare(params, image) for image in params.init_images]
    seeds, subseeds = params.image_seeds(), params.image_subseeds()
    progress = run.progress
    progress.batches = params.batch_count
    results: list[GeneratedImage] = []
    for batch in range(params.batch_count):
        if run.should_stop():
            break
        progress.batch, progress.step = batch, 0
        start = batch * params.batch_size
        batch_seeds = seeds[start : start + params.batch_size]
        batch_subseeds = subseeds[start : start + params.batch_size]
        items = [prepared[(start + i) % len(prepared)] for i in range(len(batch_seeds))]
        if batch == 0:
            progress.started_at = time.monotonic()
        if skip_img2img(params):  # ADetailer's "Skip img2img": detail the init images
            images = [item.source for item in items]
        else:
            images = job.run(items, batch_seeds, batch_subseeds)
        for item, image, seed, subseed in zip(
            items, images, batch_seeds, batch_subseeds, strict=True
        ):
            image = kept_pixels(run.control, image)  # ControlNet's inpaint_only (unmasked)
            image = restored(run, params, image)  # faces before the overlay
            final = image if job.composited else item.finish(image)
            results.append(finish_image(run, params, final, seed, job.fields, subseed))
    return results


class Img2ImgJob:
    """The parts of an img2img job that every batch shares: sampler, prompts, fields."""

    def __init__(self, run: RunContext, params: Img2ImgParams, fields: dict | None = None):
        self.run_context, self.params = run, params
        self.choice = run.family.sampler(params.sampler_name, params.scheduler)
        self.fields = {**base_fields(run, params, self.choice), **extra_fields(params)}
        self.fields.update(fields or {})
        self.steps_run = effective_steps(params.steps, params.denoising_strength)
        self.conditioning: Conditioning | None = None
        if self.steps_run > 0:
            self.conditioning = run.family.conditioning(
                run.pipe,
                params.prompt,
                params.negative_prompt,
                params.clip_skip,
                steps=params.steps,
                embeddings=run.networks.embeddings,
            )
            self.fields.update(run.networks.extra_fields(self.conditioning.used_embeddings))
            run.warn(self.conditioning.warnings)  # what the text encoders did not take
            self.fields.update(sampling_noise_fields(run, params))
            self.fields.update(run.sampling(self.choice.sampler, params).fields)
            self.fields.update(run.ngms(params).fields())
            self.fields.update(refiner_fields(run, params))
        self.refiner = RefinerRun.of(run, params, self.steps_run) if self.conditioning else None
        self.on_step = step_callback(run)
        # soft inpainting composites each image itself (its mask comes from the result)
        self.composited = params.soft_inpainting is not None and self.conditioning is not None

    def run(
        self, items: list[Prepared], seeds: list[int], subseeds: list[int] | None = None
    ) -> list[Image.Image]:
        """One batch: the model's images, or the prepared ones when no step would run.
        `subseeds`: the images' variation seeds (default: the params' one for all)."""
        if self.conditioning is None:
            return [item.source for item in items]
        run = self.run_context
        params = self.params
        noise = NoiseSpec.of(params, seeds, subseeds, extra=run.extra_noise,
                             multiplier=noise_multiplier(params))  # fmt: skip
        ngms = run.ngms(params)
        refiner, generators = self.refiner, []
        size = (params.height, params.width)  # FLUX unpacks its latents for previews
        with run.family.follow_steps(run.pipe, self.conditioning, len(seeds), ngms, size=size,
                                     control=run.control) as follow_steps:  # fmt: skip
            on_step = follow_steps(self.on_step)
            images = run_batch(
                run,
                self.params,
                items,
                seeds,
                run.family.pipeline_call_kwargs(self.conditioning, params),  # with guidance
                self.choice,
                refiner.stopping(on_step) if refiner else on_step,  # stops at the switch
                output_type="latent" if refiner else "pil",
                noise=noise,
                generators=generators,
            )
        if refiner is None:
            return images
        main_pipe = pipeline_for(run, masked=False)  # the view the main pass ran
        sampling = run.sampling(self.choice.sampler, params)
        latents = refiner.finish(images, generators, sampling=sampling, ngms=ngms,
                                 on_step=self.on_step, main_pipe=main_pipe)  # fmt: skip
        return decode_latents(main_pipe, latents, run.memory)


def skip_img2img(params: Img2ImgParams) -> bool:
    """ADetailer's "Skip img2img": the detailer works on the init image itself."""
    return params.adetailer_skip_img2img and any(u.active for u in params.adetailer)


def noise_multiplier(params: Img2ImgParams) -> float:
    """The initial noise multiplier (the worker fills in the option when the job has none)."""
    value = params.initial_noise_multiplier
    return 1.0 if value is None else float(value)


def sampling_noise_fields(run: RunContext, params: Img2ImgParams) -> dict:
    """A1111's "Noise multiplier" (when not 1) and "Extra noise" (when on) of a denoise."""
    fields: dict = {}
    if noise_multiplier(params) != 1.0:
        fields["Noise multiplier"] = noise_multiplier(params)
    if run.extra_noise > 0:
        fields["Extra noise"] = run.extra_noise
    return fields


def run_batch(
    run: RunContext,
    params: Img2ImgParams,
    items: list[Prepared],
    seeds: list[int],
    conditioning: dict,
    choice: SchedulerChoice,
    on_step: Callable,
    output_type: str = "pil",
    noise: NoiseSpec | None = None,
    generators: list | None = None,
) -> list:
    """Encode the prepared images of one batch and denoise them together (from `noise`;
    None: each seed's own noise); `generators` gets the pipeline's (for a refiner)."""
    pipe = run.pipe
    latent_h, latent_w = (
        params.height // pipe.vae_scale_factor,
        params.width // pipe.vae_scale_factor,
    )
    pixels = None
    if items[0].latent_resize:
        latents = torch.cat(
            [_encode_own_size(run, item.image, latent_h, latent_w) for item in items]
        )
    else:
        pixels = pixels_tensor([item.image for item in items])
        latents = vae_encode_pixels(pipe, pixels, run.memory)
    reference = latents  # before the masked content (FLUX.1 Kontext's reference image)
    mask = items[0].blend_mask
    if mask is not None:
        soft_on = params.soft_inpainting is not None  # A1111: mask_round off
        latents = masked_content_latents(
            latents, mask, params.inpainting_fill, seeds,
            rounded=params.mask_round and not soft_on,
        )  # fmt: skip
    if run.lease.spec.inpainting:  # a 9-channel model is conditioned on the image mask
        mask = items[0].mask
    if run.lease.spec.inpainting and pixels is None:
        pixels = pixels_tensor([item.image.resize((params.width, params.height)) for item in items])
    soft = _soft_blend(params, items[0], latents)
    request = DenoiseRequest(
        latents=latents,
        conditioning=conditioning,
        choice=choice,
        steps=params.steps,
        strength=params.denoising_strength,
        cfg_scale=params.cfg_scale,
        seeds=seeds,
        mask=mask,
        pixels=pixels,
        output_type=output_type,
        noise=noise,
        sampling=run.sampling(choice.sampler, params),
        soft=soft,
        generators=[] if generators is None else generators,
        reference=reference,
        scheduler_options=run.family.scheduler_options(params),  # the flow-matching shift
    )
    if soft is None or params.soft_inpainting is None:  # hard, or mask_round off
        return denoise(run, request, on_step)
    return _soft_composites(run, request, items, on_step, output_type)


def _soft_blend(
    params: Img2ImgParams, item: Prepared, latents: torch.Tensor
) -> soft_blend.SoftBlend | None:
    """The per-step blend of a batch: soft inpainting's, or the linear one of mask_round
    off; None: plain inpainting (rounded mask), or no mask."""
    mask = item.blend_mask
    if mask is None or (params.soft_inpainting is None and params.mask_round):
        return None
    repaint = soft_blend.latent_mask_soft(mask, *latents.shape[-2:])
    if params.soft_inpainting is None:  # mask_round off: a linear blend, not rounded
        return soft_blend.UnroundedBlend(latents, repaint)
    return soft_blend.SoftBlend(params.soft_inpainting, latents, repaint)


def _soft_composites(run: RunContext, request: DenoiseRequest, items: list[Prepared],
                     on_step: Callable, output_type: str) -> list:  # fmt: skip
    """Soft inpainting's images: decoded, the original put back where little changed."""
    if output_type != "pil":
        raise ValueError("soft inpainting makes finished images only")
    result = denoise(run, replace(request, output_type="latent"), on_step)
    masks = soft_blend.composite_masks(
        request.soft.settings, request.soft.repaint, request.latents, result
    )
    images = decode_latents(run.pipe, result, run.memory)
    return [
        soft_blend.composite(image, item.overlay, mask, item.paste_to)
        for image, item, mask in zip(images, items, masks, strict=True)
    ]


def _encode_own_size(run: RunContext, image: Image.Image, latent_h: int, latent_w: int
                     ) -> torch.Tensor:  # fmt: skip
    """Resize mode 3: encode at the image's own size (multiple of 8), resize the latents."""
    width, height = max(8, image.width // 8 * 8), max(8, image.height // 8 * 8)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return resize_latents(vae_encode(run.pipe, [image], run.memory), latent_h, latent_w)
