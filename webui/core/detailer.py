"""The detailer (ADetailer): detect regions in a finished image and inpaint each one.

For every active unit of the job (`params.adetailer`, in order, each working on the
previous unit's result), as the ADetailer extension does after an image is decoded and
before it is saved: the unit's detector finds boxes (`webui.imaging.detection`), the boxes
become masks (k largest, offset, dilate/erode, merge / invert), and each mask is
inpainted in turn through the img2img inpaint path (`webui.core.img2img`): "only masked"
at the unit's inpaint size (default: the job's width and height) with the unit's prompt
(empty: the job's; "[SEP]" gives each region its own, "[PROMPT]" inserts the job's,
"[SKIP]" leaves a region alone), negative prompt, denoising strength, mask blur, padding
and its steps, CFG scale, sampler, noise multiplier and CLIP skip when it has its own. Region j of an
image gets the image's seed + j and variation seed + j (ADetailer's seeds); masked content
is "original".

This module must never import a UI library, and never change global options.
"""

from __future__ import annotations

import logging
import re
from dataclasses import fields, replace

from PIL import Image

from ..imaging.detection import DetectorError, MaskSettings, detect, region_masks
from .errors import ParamError
from .img2img import Img2ImgJob, prepare
from .params import Txt2ImgParams
from .params_detailer import SAME_SCHEDULER, DetailerUnit
from .params_img2img import Img2ImgParams
from .run import RunContext

log = logging.getLogger(__name__)

_SEP = re.compile(r"\s*\[SEP\]\s*")
_SKIP = re.compile(r"^\s*\[SKIP\]\s*$")


def detail(
    run: RunContext, params: Txt2ImgParams, image: Image.Image, seed: int, subseed: int
) -> Image.Image:
    """`image` after every active unit of `params.adetailer` (the image itself when none
    finds anything). The pipeline's scheduler is put back afterwards."""
    units = [u for u in params.adetailer if u.active]
    if not units or run.should_stop():
        return image
    pipe = run.pipe
    scheduler = pipe.scheduler
    try:
        for n, unit in enumerate(units):
            if run.should_stop():
                break
            image = _detail_unit(run, params, image, unit, n, seed, subseed)
    finally:
        pipe.scheduler = scheduler
    return image


def _detail_unit(
    run: RunContext, params: Txt2ImgParams, image: Image.Image, unit: DetailerUnit,
    n: int, seed: int, subseed: int,
) -> Image.Image:  # fmt: skip
    image = image.convert("RGB")
    try:
        found = detect(unit.model_path, image, unit.ad_confidence)
    except DetectorError as exc:
        raise ParamError("adetailer", str(exc)) from None
    settings = MaskSettings(
        k_largest=unit.ad_mask_k_largest, min_ratio=unit.ad_mask_min_ratio,
        max_ratio=unit.ad_mask_max_ratio, x_offset=unit.ad_x_offset, y_offset=unit.ad_y_offset,
        dilate_erode=unit.ad_dilate_erode, merge_invert=unit.ad_mask_merge_invert,
    )  # fmt: skip
    masks = region_masks(found, image.size, settings)
    if not masks:
        log.info("ADetailer: nothing detected with unit %d (%s)", n + 1, unit.ad_model)
        return image
    prompts = unit_prompts(unit.ad_prompt, params.prompt)
    negatives = unit_prompts(unit.ad_negative_prompt, params.negative_prompt)
    for j, mask in enumerate(masks):
        if run.should_stop():
            break
        prompt = prompts[min(j, len(prompts) - 1)]
        if _SKIP.match(prompt):
            continue
        negative = negatives[min(j, len(negatives) - 1)]
        inpaint = region_params(params, unit, image, mask, prompt, negative)
        image = _inpaint(run, inpaint, seed + j, subseed + j)
    return image


def unit_prompts(text: str, main: str) -> list[str]:
    """The unit's prompt per region: "[SEP]" splits it, an empty part is the job's prompt,
    "[PROMPT]" is replaced by it (ADetailer's rules)."""
    parts = _SEP.split(text)
    out = []
    for part in parts:
        if not part:
            out.append(main)
        elif "[PROMPT]" in part:
            out.append(part.replace("[PROMPT]", f" {main} "))
        else:
            out.append(part)
    return out


def region_params(
    params: Txt2ImgParams, unit: DetailerUnit, image: Image.Image, mask: Image.Image,
    prompt: str, negative: str,
) -> Img2ImgParams:  # fmt: skip
    """The inpaint job of one region: the job's settings with the unit's own."""
    shared = {f.name: getattr(params, f.name) for f in fields(Txt2ImgParams)}
    width, height = params.width, params.height
    if unit.ad_use_inpaint_width_height:
        width, height = unit.ad_inpaint_width, unit.ad_inpaint_height
    sampler, scheduler = params.sampler_name, params.scheduler
    if unit.ad_use_sampler:
        sampler = unit.ad_sampler
        scheduler = scheduler if unit.ad_scheduler == SAME_SCHEDULER else unit.ad_scheduler
    noise = getattr(params, "initial_noise_multiplier", None)
    shared.update(
        prompt=prompt, negative_prompt=negative, width=width // 8 * 8, height=height // 8 * 8,
        steps=unit.ad_steps if unit.ad_use_steps else params.steps,
        cfg_scale=unit.ad_cfg_scale if unit.ad_use_cfg_scale else params.cfg_scale,
        sampler_name=sampler, scheduler=scheduler, batch_count=1, batch_size=1,
        hires=None, adetailer=(), adetailer_skip_img2img=False, save_images=False,
        grid=False, script=None,
        clip_skip=unit.ad_clip_skip if unit.ad_use_clip_skip else params.clip_skip,
    )  # fmt: skip
    return Img2ImgParams(
        **shared,
        init_images=(image,),
        resize_mode=0,
        denoising_strength=unit.ad_denoising_strength,
        mask=mask,
        mask_blur_x=unit.ad_mask_blur,
        mask_blur_y=unit.ad_mask_blur,
        inpainting_fill=1,
        inpaint_full_res=unit.ad_inpaint_only_masked,
        inpaint_full_res_padding=unit.ad_inpaint_only_masked_padding,
        initial_noise_multiplier=unit.ad_noise_multiplier if unit.ad_use_noise_multiplier
        else noise,
    )  # fmt: skip


def _inpaint(run: RunContext, params: Img2ImgParams, seed: int, subseed: int) -> Image.Image:
    """One region inpainted through the img2img path; its progress shows as steps."""
    prepared = prepare(params, params.init_images[0])
    job = Img2ImgJob(replace(run, control=None), params)  # ControlNet steers the image, not this
    result = job.run([prepared], [seed], [subseed])[0]
    return prepared.finish(result)
