"""The one place that knows both A1111's API fields and the internal names.

Request -> `GenerationRequest` for the generation service (n_iter -> batch_count,
sampler_name / legacy sampler_index, scheduler label or lowercase name, the `infotext`
field, script_name/script_args/alwayson_scripts/override_settings passed on as they are),
the service's error locations -> A1111 request fields (`a1111_loc`), job result -> A1111
response (base64 PNGs with the infotext embedded, the `info` JSON string), and job
progress -> A1111 progress. Bad input raises `FieldError` naming the A1111 field; a
request for a feature that is not built yet raises `NotBuiltError`.

Validation, scripts, extension args and override_settings are the generation service's
(`webui.services.generation`): this module only maps fields. It must never import torch,
diffusers or fastapi, and never change global options.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from PIL import Image

from .. import __version__
from ..core import skip_layer_guidance as slg
from ..core.infotext_modules import INFOTEXT_KEY as MODULES_KEY
from ..core.infotext_modules import infotext_modules, pasted_modules
from ..core.jobs import Job
from ..core.params import Txt2ImgParams
from ..core.sampler_params import INFOTEXT_FIELDS as SAMPLER_INFOTEXT_FIELDS
from ..core.sampler_params import MIN_UNCOND, STEP_PARAMS
from ..imaging.codec import MAX_DECODE_PIXELS, ImageInputError, decode_base64_image
from ..imaging.infotext import parse_infotext, pnginfo_for, read_infotext_from_image
from ..services.errors import RequestError
from ..services.generation import GenerationRequest
from ..services.options import CHECKPOINT, CLIP_SKIP, OVERRIDES
from ..services.upscalers import Upscalers
from .schemas import StableDiffusionTxt2ImgProcessingAPI as Txt2ImgRequest

if TYPE_CHECKING:  # the worker module imports torch; only its result type is needed here
    from ..core.worker import JobResult

log = logging.getLogger(__name__)

# the generation service's name -> where it comes from in an A1111 request
_PARAM_TO_REQUEST: dict[str, tuple[str, ...]] = {
    "batch_count": ("n_iter",),
    "clip_skip": (OVERRIDES, CLIP_SKIP),
    "checkpoint": (OVERRIDES, CHECKPOINT),
    "job_id": ("force_task_id",),
    "adetailer": ("alwayson_scripts", "ADetailer", "args"),
    "soft_inpainting": ("alwayson_scripts", "soft inpainting", "args"),
}
# (field, feature) requested by a truthy value, not built yet: refused, never faked
_NOT_BUILT: tuple[tuple[str, str], ...] = ()  # every A1111 txt2img field is built
# infotext field -> request field, for the `infotext` request field (A1111 1.10)
_INFOTEXT_FIELDS: dict[str, str] = {
    "Prompt": "prompt",
    "Negative prompt": "negative_prompt",
    "Steps": "steps",
    "Sampler": "sampler_name",
    "Schedule type": "scheduler",
    "CFG scale": "cfg_scale",
    "Seed": "seed",
    "Size-1": "width",
    "Size-2": "height",
    "Variation seed": "subseed",
    "Variation seed strength": "subseed_strength",
    "Seed resize from-1": "seed_resize_from_w",
    "Seed resize from-2": "seed_resize_from_h",
    "Tiling": "tiling",
    **SAMPLER_INFOTEXT_FIELDS,  # Eta, Sigma churn, NGMS...
    "Refiner": "refiner_checkpoint",
    "Refiner switch at": "refiner_switch_at",
    "Hires checkpoint": "hr_checkpoint_name",
    "Distilled CFG Scale": "distilled_cfg_scale",  # Forge's FLUX guidance
    "Shift": "shift",  # the flow-matching shift (SD 3.5, FLUX.1, Z-Image)
    **slg.INFOTEXT_FIELDS,  # SD 3.5's Skip Layer Guidance
}
MODULES_OPTION = "forge_additional_modules"  # set by the infotext's `Module N` (Forge's)
# infotext field -> the option it sets for the job (A1111's infotext_to_setting_name_mapping)
_INFOTEXT_OPTIONS: dict[str, str] = {
    "Clip skip": CLIP_SKIP,
    "Noise multiplier": "initial_noise_multiplier",
    "Extra noise": "img2img_extra_noise",
    "Face restoration": "face_restoration_model",  # and restore_faces (_with_infotext)
    "VAE Decoder": "sd_vae_decode_method",  # A1111's infotext name of the option
    "VAE Encoder": "sd_vae_encode_method",
    "Token merging ratio": "token_merging_ratio",  # the Speed section (webui.core.speed)
    "DeepCache": "deepcache_interval",
    "DeepCache branch": "deepcache_branch",
    "First Block Cache": "first_block_cache_threshold",
    "TaylorSeer": "taylorseer_interval",
}
_STANDARD_INFO_KEYS = frozenset(
    {"Prompt", "Negative prompt", "Steps", "Sampler", "CFG scale", "Seed", "Size", "Size-1",
     "Size-2", "Width", "Height", "Model hash", "Model", "VAE hash", "VAE", "Clip skip",
     "RNG", "Version", "Denoising strength", "Variation seed", "Variation seed strength",
     "Seed resize from", "Seed resize from-1", "Seed resize from-2", "Tiling",
     "Face restoration"}
)  # fmt: skip


class FieldError(RequestError):
    """A request field has a bad value; `loc` is its path in the A1111 JSON body."""


class NotBuiltError(Exception):
    """The request asks for a feature this server does not have yet."""

    def __init__(self, field: str, feature: str):
        super().__init__(f"{feature} ({field}) is not implemented yet")
        self.field = field
        self.feature = feature


# --- request -> params -------------------------------------------------------------------


def txt2img_request(req: Txt2ImgRequest, owner: str, upscalers: Upscalers) -> GenerationRequest:
    """The generation request an A1111 txt2img body asks for; raises FieldError (a field
    that cannot be read) or NotBuiltError. `upscalers` resolves the hires. fix upscaler."""
    from .mapping_images import hires_params  # it builds on this module

    req = _with_infotext(req)
    _refuse_not_built(req)
    params = Txt2ImgParams(
        prompt=_value(req, "prompt"),
        negative_prompt=_value(req, "negative_prompt"),
        sampler_name=_sampler_of(req)[1],
        scheduler=_value(req, "scheduler") or None,
        steps=_value(req, "steps"),
        cfg_scale=_value(req, "cfg_scale"),
        width=_value(req, "width"),
        height=_value(req, "height"),
        seed=_value(req, "seed"),
        **seed_fields(req),
        batch_count=_value(req, "n_iter"),
        batch_size=_value(req, "batch_size"),
        save_images=bool(_value(req, "save_images")) and not _value(req, "do_not_save_samples"),
        # A1111's API makes a batch grid only when it saves (do_not_save_grid = not save_images)
        grid=bool(_value(req, "save_images")) and not _value(req, "do_not_save_grid"),
        hires=hires_params(req, upscalers),
        styles=_styles_of(req),
        clip_skip=None,  # A1111: the option, unless override_settings sets it
        **sampling_fields(req),
        **refiner_fields(req),
        distilled_cfg_scale=_value(req, "distilled_cfg_scale"),  # FLUX (Forge's field)
        shift=_value(req, "shift"),  # SD 3.5, FLUX.1, Z-Image
        **skip_layer_guidance_fields(req),  # SD 3.5
    )
    return generation_request("txt2img", req, params, owner)


def skip_layer_guidance_fields(req: Any) -> dict[str, Any]:
    """SD 3.5's Skip Layer Guidance fields; a layer list that cannot be read is a FieldError."""
    layers = _value(req, "skip_guidance_layers")
    try:
        layers = slg.DEFAULT_LAYERS if layers is None else slg.parse_layers(layers)
    except slg.LayersError as exc:
        raise FieldError(("skip_guidance_layers",), str(exc)) from None
    return {"skip_layer_guidance_scale": _value(req, "skip_layer_guidance_scale"),
            "skip_guidance_layers": layers,
            "skip_layer_guidance_start": _value(req, "skip_layer_guidance_start"),
            "skip_layer_guidance_stop": _value(req, "skip_layer_guidance_stop")}  # fmt: skip


def seed_fields(req: Any) -> dict[str, Any]:
    """Variation seed, its strength and "resize seed from" (A1111: -1 or 0 is off)."""
    fields = {
        "subseed": _value(req, "subseed"),
        "subseed_strength": _value(req, "subseed_strength"),
    }
    for side in ("seed_resize_from_w", "seed_resize_from_h"):
        value = _value(req, side)
        fields[side] = 0 if isinstance(value, int | float) and value <= 0 else value
    return fields


def sampling_fields(req: Any) -> dict[str, Any]:
    """Tiling, "Restore faces" and the sampler parameters (eta, s_churn, ...,
    s_min_uncond; None: the job's option), for txt2img and img2img alike."""
    return {
        "tiling": bool(req.tiling),
        "restore_faces": bool(req.restore_faces),  # the job's face_restoration_model
        **{name: getattr(req, name) for name in (*STEP_PARAMS, MIN_UNCOND)},
    }


def refiner_fields(req: Any) -> dict[str, Any]:
    """A1111's refiner: a checkpoint ("" or "None": none) and the switch point (0.8)."""
    name = req.refiner_checkpoint
    switch_at = req.refiner_switch_at
    return {
        "refiner_checkpoint": None if str(name or "").strip().lower() in ("", "none") else name,
        "refiner_switch_at": 0.8 if switch_at is None else switch_at,
    }


def generation_request(kind: str, req: Any, params: Any, owner: str) -> GenerationRequest:
    """The request's params with its script, extension args, overrides and task id."""
    return GenerationRequest(
        kind=kind,
        params=params,
        owner=owner,
        script=req.script_name or None,
        script_args=req.script_args,
        alwayson=req.alwayson_scripts or {},
        override_settings=req.override_settings or {},
        job_id=req.force_task_id or None,
    )


def a1111_loc(loc: tuple[str, ...], req: Any) -> tuple[str, ...]:
    """Where a value the generation service refused sits in the A1111 body `req`."""
    if not loc:
        return loc
    if loc[0] == "sampler_name":
        return (_sampler_of(_with_infotext(req))[0], *loc[1:])
    sent = getattr(req, "override_settings", None) or {}
    if loc == ("override_settings", MODULES_OPTION) and MODULES_OPTION not in sent:
        return ("infotext",)  # the modules came from its `Module N` fields
    return (*_PARAM_TO_REQUEST.get(loc[0], loc[:1]), *loc[1:])


def _styles_of(req: Txt2ImgRequest) -> tuple[str, ...]:
    """The styles.csv names to apply (unknown ones are skipped with a warning, as A1111)."""
    styles = req.styles or []
    if isinstance(styles, str) or not all(isinstance(s, str) for s in styles):
        raise FieldError(("styles",), "expected a list of style names")
    return tuple(styles)


def _value(req: Txt2ImgRequest, name: str) -> Any:
    """The request's value of a field; null means A1111's default."""
    value = getattr(req, name)
    if value is None:
        field = Txt2ImgRequest.model_fields[name]
        value = field.get_default(call_default_factory=True)
    return value


def _with_infotext(req: Txt2ImgRequest) -> Txt2ImgRequest:
    """A1111 1.10: fields not sent explicitly are taken from the `infotext` field."""
    if not req.infotext:
        return req
    parsed = parse_infotext(req.infotext)
    updates = {
        field: parsed[key]
        for key, field in _INFOTEXT_FIELDS.items()
        if key in parsed and field not in req.model_fields_set
    }
    overrides = dict(req.override_settings or {})
    for key, option in _INFOTEXT_OPTIONS.items():
        if key in parsed and option not in overrides:
            overrides[option] = parsed[key]
            updates["override_settings"] = overrides
    stems = infotext_modules(parsed)  # Forge's `Module N`: the job's "VAE / Text Encoder"
    if stems and MODULES_OPTION not in overrides:
        updates["override_settings"] = {**overrides, MODULES_OPTION: stems}
    if "Face restoration" in parsed and "restore_faces" not in req.model_fields_set:
        updates["restore_faces"] = True
    merged = {**req.model_dump(), **updates}
    try:
        return type(req).model_validate(merged)
    except ValueError as exc:
        raise FieldError(("infotext",), f"could not use the infotext: {exc}") from None


def _refuse_not_built(req: Txt2ImgRequest) -> None:
    for field, feature in _NOT_BUILT:
        if getattr(req, field, None):
            raise NotBuiltError(field, feature)


def _sampler_of(req: Txt2ImgRequest) -> tuple[str, str | None]:
    """(field it came from, sampler): sampler_name if given, else the legacy sampler_index."""
    if req.sampler_name:
        return "sampler_name", req.sampler_name
    return "sampler_index", _value(req, "sampler_index") or None


# --- result -> response -------------------------------------------------------------------


def encode_png(image: Image.Image, infotext: str | None = None) -> str:
    """Base64 PNG (no data: prefix) with the infotext in the "parameters" chunk."""
    buffer = io.BytesIO()
    pnginfo = pnginfo_for(infotext) if infotext else None
    image.save(buffer, format="PNG", pnginfo=pnginfo)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def txt2img_response(req: Txt2ImgRequest, job: Job, result: JobResult | None) -> dict[str, Any]:
    """A1111's txt2img response for a finished (or interrupted) job."""
    images = result.images if result else []
    send = req.send_images is not False
    return {
        "images": [encode_png(g.image, g.infotext) for g in images] if send else [],
        "parameters": json_safe(req.model_dump()),
        "info": json.dumps(txt2img_info(req, job, result), ensure_ascii=False),
    }


def txt2img_info(req: Txt2ImgRequest, job: Job, result: JobResult | None) -> dict[str, Any]:
    """The dict A1111 returns as the `info` JSON string (Processed.js())."""
    params: Txt2ImgParams = result.params if result else job.params
    images = result.images if result else []
    infotexts = [g.infotext for g in images]
    first = parse_infotext(infotexts[0]) if infotexts else {}
    total = params.batch_count * params.batch_size
    sampler = first.get("Sampler") or params.sampler_name
    extra = {k: v for k, v in first.items() if k not in _STANDARD_INFO_KEYS}
    return {
        "prompt": params.prompt,
        "all_prompts": [params.prompt] * total,
        "negative_prompt": params.negative_prompt,
        "all_negative_prompts": [params.negative_prompt] * total,
        "seed": params.seed,
        "all_seeds": params.image_seeds(),
        "subseed": params.subseed,
        "all_subseeds": params.image_subseeds(),
        "subseed_strength": params.subseed_strength,
        "width": params.width,
        "height": params.height,
        "sampler_name": sampler,
        "cfg_scale": params.cfg_scale,
        "steps": params.steps,
        "batch_size": params.batch_size,
        "restore_faces": bool(getattr(params, "restore_faces", False)),
        "face_restoration_model": first.get("Face restoration"),
        "sd_model_name": first.get("Model") or _model_name(result),
        "sd_model_hash": first.get("Model hash"),
        "sd_vae_name": first.get("VAE"),
        "sd_vae_hash": first.get("VAE hash"),
        "seed_resize_from_w": params.seed_resize_from_w or _value(req, "seed_resize_from_w"),
        "seed_resize_from_h": params.seed_resize_from_h or _value(req, "seed_resize_from_h"),
        # only hires. fix uses it in txt2img
        "denoising_strength": params.hires.denoising_strength if params.hires else None,
        "extra_generation_params": json_safe(extra),
        "index_of_first_image": sum(1 for g in images if getattr(g, "grid", False)),
        "infotexts": infotexts,
        "styles": list(req.styles or []),
        "job_timestamp": _timestamp(job.created_at),
        "clip_skip": params.clip_skip,
        "is_using_inpainting_conditioning": bool(result and "inpaint" in result.model_family),
        "version": f"v{__version__}",
        # not in A1111: what the job skipped and why (unusable LoRA files, unknown styles)
        "warnings": list(result.warnings) if result else [],
    }


def _model_name(result: JobResult | None) -> str | None:
    if result is None:
        return None
    return result.checkpoint_title.rsplit(" [", 1)[0].rsplit("/", 1)[-1].rsplit(".", 1)[0]


def _timestamp(when: float | None) -> str:
    return datetime.fromtimestamp(when).strftime("%Y%m%d%H%M%S") if when else "0"


def json_safe(value: Any) -> Any:
    """`value` with non-finite floats as None, so strict JSON encoding never fails."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


# --- progress -----------------------------------------------------------------------------


def progress_response(job: Job | None, *, skip_current_image: bool = False) -> dict[str, Any]:
    """A1111's /progress body for the running job (idle values when there is none)."""
    if job is None:
        return {"progress": 0.0, "eta_relative": 0.0, "state": _state(None),
                "current_image": None, "textinfo": None}  # fmt: skip
    p = job.progress
    preview = p.preview
    current = None
    if preview is not None and not skip_current_image:
        current = encode_png(preview)
    return {
        "progress": round(p.fraction, 4),
        "eta_relative": round(p.eta_seconds or 0.0, 2),
        "state": _state(job),
        "current_image": current,
        "textinfo": p.text or None,
    }


def _state(job: Job | None) -> dict[str, Any]:
    if job is None:
        return {"skipped": False, "interrupted": False, "job": "", "job_count": 0,
                "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}  # fmt: skip
    p = job.progress
    text = f"Batch {p.batch + 1} out of {p.batches}" if p.batches > 1 else job.kind
    return {
        "skipped": bool(job.skip_requested),
        "interrupted": bool(job.interrupt_requested),
        "job": text,
        "job_count": p.batches,
        "job_timestamp": _timestamp(job.created_at),
        "job_no": p.batch,
        "sampling_step": p.step,
        "sampling_steps": p.steps,
    }


# --- png-info -----------------------------------------------------------------------------


def decode_image(data: str, field: str = "image") -> Image.Image:
    """An image from base64 (a data: URL prefix is allowed), its header read and its size
    checked but its pixels not decoded; FieldError naming `field`."""
    try:
        return decode_base64_image(data or "", field, MAX_DECODE_PIXELS, load=False)
    except ImageInputError as exc:
        raise FieldError((field,), exc.message) from None


def png_info(data: str, module_names: Sequence[str] = ()) -> dict[str, Any]:
    """A1111's /png-info body: the infotext, other image info items, parsed parameters;
    with Forge's `Module N` fields also Forge's "VAE/TE": those of `module_names` (the
    server's module files) they name by stem, and the stems of those it lacks."""
    image = decode_image(data)
    text = read_infotext_from_image(image) or ""
    items = {
        str(k): v
        for k, v in (image.info or {}).items()
        if k != "parameters" and isinstance(v, str | int | float | bool)
    }
    parameters = parse_infotext(text)
    modules = pasted_modules(parameters, module_names)
    if modules is not None:
        parameters[MODULES_KEY] = modules.shown()
    return {"info": text, "items": json_safe(items), "parameters": json_safe(parameters)}
