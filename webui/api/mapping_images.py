"""A1111 request fields <-> internal params for img2img, hires. fix and extras.

The image half of `webui.api.mapping` (kept apart to keep both readable): img2img
requests to a `GenerationRequest` of `Img2ImgParams` (base64 init images, mask and latent
mask decoded and checked; the "soft inpainting" always-on script becomes the params' soft
inpainting settings; `script_name`/`script_args`, SD upscale included, and the other
`alwayson_scripts` go to the generation service as they are), the hires. fix fields of a txt2img request to
`HiresParams`, extras requests to `ExtrasParams`, and the responses. Bad input raises
`mapping.FieldError` naming the A1111 field; features not built raise `NotBuiltError`.

This module must never import torch, diffusers or fastapi, and never change global
options.
"""

from __future__ import annotations

import html
import json
from typing import Any

from ..core import soft_inpainting
from ..core.jobs import Job
from ..core.params_img2img import ExtrasParams, HiresParams, Img2ImgParams
from ..core.soft_inpainting import SoftInpainting
from ..imaging.codec import ImageInputError, decode_base64_image, mask_from_upload
from ..imaging.infotext import parse_infotext
from ..services.generation import GenerationRequest
from ..services.upscalers import UnknownUpscalerError, UpscalerRef, Upscalers
from . import mapping
from .mapping import FieldError, NotBuiltError
from .schemas_images import ExtrasBaseRequest
from .schemas_images import StableDiffusionImg2ImgProcessingAPI as Img2ImgRequest

_SAME = ("", "use same sampler", "use same scheduler", "use same checkpoint")
# (field, feature) requested by a truthy value, not built: refused, never faked
_NOT_BUILT: tuple[tuple[str, str], ...] = ()  # every A1111 img2img field is built


def _v(req, name: str) -> Any:
    """The request's value of a field; null means A1111's default."""
    value = getattr(req, name, None)
    if value is None and name in type(req).model_fields:
        value = type(req).model_fields[name].get_default(call_default_factory=True)
    return value


def _upscaler(upscalers: Upscalers, name: Any, field: str, *, latent: bool = False) -> UpscalerRef:
    """The upscaler a request field names (or gives the index of, as A1111 scripts do)."""
    try:
        return upscalers.resolve(name, latent=latent, field=field)
    except UnknownUpscalerError as exc:
        raise FieldError((field,), str(exc).removeprefix(f"{field}: ")) from None


# --- hires. fix (txt2img) ------------------------------------------------------------------


def hires_params(req, upscalers: Upscalers) -> HiresParams | None:
    """The hires. fix of a txt2img request; None unless `enable_hr`."""
    if not _v(req, "enable_hr"):
        if getattr(req, "firstpass_image", None):
            raise FieldError(("firstpass_image",), "a first pass image needs enable_hr: true")
        return None
    checkpoint = _v(req, "hr_checkpoint_name")
    name = _v(req, "hr_upscaler") or "Latent"
    sampler = _v(req, "hr_sampler_name")
    scheduler = _v(req, "hr_scheduler")
    strength = req.denoising_strength if req.denoising_strength is not None else 0.7
    return HiresParams(
        scale=_v(req, "hr_scale"),
        resize_x=_v(req, "hr_resize_x"),
        resize_y=_v(req, "hr_resize_y"),
        upscaler=_upscaler(upscalers, name, "hr_upscaler", latent=True),
        steps=_v(req, "hr_second_pass_steps"),
        denoising_strength=strength,
        sampler_name=None if str(sampler or "").lower() in _SAME else sampler,
        scheduler=None if str(scheduler or "").lower() in _SAME else scheduler,
        prompt=_v(req, "hr_prompt") or "",
        negative_prompt=_v(req, "hr_negative_prompt") or "",
        firstpass_image=_firstpass_image(req),
        checkpoint=None if str(checkpoint or "").strip().lower() in _SAME else checkpoint,
    )


def _firstpass_image(req) -> Any:
    """A1111 1.7's `firstpass_image`: the first pass, given (base64); None when not sent."""
    data = getattr(req, "firstpass_image", None)
    if not data:
        return None
    try:
        return decode_base64_image(data, "firstpass_image")
    except ImageInputError as exc:
        raise FieldError((exc.field,), exc.message) from None


# --- img2img -------------------------------------------------------------------------------


def img2img_request(req: Img2ImgRequest, owner: str) -> GenerationRequest:
    """The generation request an A1111 img2img body asks for; raises FieldError (an image
    that cannot be read) or NotBuiltError. Fields not sent come from `infotext`, as for
    txt2img."""
    req = mapping._with_infotext(req)
    _refuse_not_built(req)
    images = _init_images(req)
    mask = _decoded_mask(req.mask, "mask", images[0].size)
    latent_mask = _decoded_mask(req.latent_mask, "latent_mask", images[0].size)
    req, soft = _soft_inpainting(req)
    blur = req.mask_blur
    params = Img2ImgParams(
        prompt=_v(req, "prompt"),
        negative_prompt=_v(req, "negative_prompt"),
        styles=tuple(req.styles or ()),
        sampler_name=mapping._sampler_of(req)[1],
        scheduler=_v(req, "scheduler") or None,
        steps=_v(req, "steps"),
        cfg_scale=_v(req, "cfg_scale"),
        width=_v(req, "width"),
        height=_v(req, "height"),
        seed=_v(req, "seed"),
        **mapping.seed_fields(req),
        batch_count=_v(req, "n_iter"),
        batch_size=_v(req, "batch_size"),
        clip_skip=None,  # A1111: the option, unless override_settings sets it
        save_images=bool(_v(req, "save_images")) and not _v(req, "do_not_save_samples"),
        # A1111's API makes a batch grid only when it saves (do_not_save_grid = not save_images)
        grid=bool(_v(req, "save_images")) and not _v(req, "do_not_save_grid"),
        init_images=tuple(images),
        resize_mode=_v(req, "resize_mode"),
        denoising_strength=_v(req, "denoising_strength"),
        mask=mask,
        latent_mask=latent_mask,
        mask_round=_v(req, "mask_round") is not False,
        soft_inpainting=soft,
        mask_blur_x=blur if blur is not None else _v(req, "mask_blur_x"),
        mask_blur_y=blur if blur is not None else _v(req, "mask_blur_y"),
        inpainting_fill=_v(req, "inpainting_fill"),
        inpaint_full_res=bool(_v(req, "inpaint_full_res")),
        inpaint_full_res_padding=_v(req, "inpaint_full_res_padding"),
        inpainting_mask_invert=bool(_v(req, "inpainting_mask_invert")),
        initial_noise_multiplier=req.initial_noise_multiplier,  # None: the option's
        **mapping.sampling_fields(req),
        **mapping.refiner_fields(req),
        distilled_cfg_scale=_v(req, "distilled_cfg_scale"),  # FLUX (Forge's field)
        shift=_v(req, "shift"),  # SD 3.5, FLUX.1, Z-Image
        **mapping.skip_layer_guidance_fields(req),  # SD 3.5
    )
    return mapping.generation_request("img2img", req, params, owner)


def _soft_inpainting(req: Img2ImgRequest) -> tuple[Img2ImgRequest, SoftInpainting | None]:
    """The request without its "Soft Inpainting" always-on script (the key matched without
    case, as A1111 does) and that script's settings (None: not sent, or not enabled)."""
    scripts = req.alwayson_scripts or {}
    key = next((k for k in scripts if str(k).strip().lower() == soft_inpainting.API_KEY), None)
    if key is None:  # an `infotext` field brings it back as A1111 1.10 does
        try:
            return req, soft_inpainting.from_infotext(parse_infotext(req.infotext or ""))
        except ValueError as exc:
            raise FieldError(("infotext",), str(exc)) from None
    try:
        settings = soft_inpainting.from_args(scripts[key])
    except ValueError as exc:
        raise FieldError(("alwayson_scripts", str(key), "args"), str(exc)) from None
    rest = {k: v for k, v in scripts.items() if k != key}
    return req.model_copy(update={"alwayson_scripts": rest}), settings


def _decoded_mask(data: str | None, field: str, size: tuple[int, int]):
    """A base64 mask field as an "L" image of the init image's size; None when not sent."""
    if not data:
        return None
    try:
        return mask_from_upload(decode_base64_image(data, field), size, field)
    except ImageInputError as exc:
        raise FieldError((exc.field,), exc.message) from None


def _refuse_not_built(req: Img2ImgRequest) -> None:
    for field, feature in _NOT_BUILT:
        if getattr(req, field, None):
            raise NotBuiltError(field, feature)


def _init_images(req: Img2ImgRequest) -> list:
    if not req.init_images:
        raise FieldError(("init_images",), "no init image: send at least one base64 image")
    images = []
    for i, data in enumerate(req.init_images):
        try:
            images.append(decode_base64_image(data, "init_images"))
        except ImageInputError as exc:
            raise FieldError(("init_images", str(i)), exc.message) from None
    return images


def img2img_response(req: Img2ImgRequest, job: Job, result) -> dict[str, Any]:
    """A1111's img2img response; init images and mask are echoed only when asked."""
    images = result.images if result else []
    send = req.send_images is not False
    parameters = req.model_dump()
    if not req.include_init_images:
        parameters["init_images"] = None
        parameters["mask"] = None
    info = mapping.txt2img_info(req, job, result)
    params = result.params if result else job.params
    info["denoising_strength"] = params.denoising_strength
    info["all_seeds"] = [g.seed for g in images] or info["all_seeds"]
    return {
        "images": [mapping.encode_png(g.image, g.infotext) for g in images] if send else [],
        "parameters": mapping.json_safe(parameters),
        "info": json.dumps(info, ensure_ascii=False),
    }


# --- extras --------------------------------------------------------------------------------


def extras_params(
    req: ExtrasBaseRequest, images: list[tuple[str, str]], upscalers: Upscalers
) -> ExtrasParams:
    """Params of an extras request; `images` are (base64 data, name) pairs. The API saves
    nothing, as in A1111."""
    decoded = []
    field = "imageList" if "imageList" in type(req).model_fields else "image"
    for i, (data, name) in enumerate(images):
        try:
            decoded.append((decode_base64_image(data, field), name or f"image-{i}"))
        except ImageInputError as exc:
            loc = (field,) if field == "image" else (field, str(i), "data")
            raise FieldError(loc, exc.message) from None
    params = ExtrasParams(
        images=tuple(decoded),
        resize_mode=_v(req, "resize_mode"),
        upscaling_resize=_v(req, "upscaling_resize"),
        upscaling_resize_w=_v(req, "upscaling_resize_w"),
        upscaling_resize_h=_v(req, "upscaling_resize_h"),
        upscaling_crop=bool(_v(req, "upscaling_crop")),
        upscaler_1=_upscaler(upscalers, _v(req, "upscaler_1"), "upscaler_1"),
        upscaler_2=_upscaler(upscalers, _v(req, "upscaler_2"), "upscaler_2"),
        extras_upscaler_2_visibility=_v(req, "extras_upscaler_2_visibility"),
        gfpgan_visibility=_v(req, "gfpgan_visibility"),
        codeformer_visibility=_v(req, "codeformer_visibility"),
        codeformer_weight=_v(req, "codeformer_weight"),
        save_images=False,
    )
    return params  # validated by the generation service


def extras_html_info(result) -> str:
    """A1111's html_info: the infotext of the (first) image as a paragraph."""
    images = result.images if result else []
    text = images[0].infotext if images else ""
    return f"<p>{html.escape(text)}</p>" if text else ""
