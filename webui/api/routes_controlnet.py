"""sd-webui-controlnet's own endpoints: /controlnet/version, model_list, module_list,
control_types and detect.

Clients written for the extension ask these before they send `alwayson_scripts:
{"controlnet": ...}`. Models are the files in `models/ControlNet` (read at each call:
ControlNets, T2I-Adapters, IP-Adapters; `control_types` lists a type's models that fit
the current checkpoint's family, as the extension, and a ControlNet Union under every
type it has a mode for),
modules the built-in preprocessors (`imaging/control_preprocessors.py`). `detect` runs a
preprocessor on the given images here (OpenCV on the CPU; the annotators with weights
through the context's annotator cache, which downloads missing weights when it can) and
answers the maps as base64 PNGs, as the extension does; missing annotator weights are a
422 naming the file and the folder. Included by the composition root with the API's auth.

This module must never import torch or diffusers: it only talks to the AppContext.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends
from PIL import Image
from pydantic import BaseModel

from ..core.controlnet_units import ControlUnit, UnitError, checked, detect
from ..errors import UserError
from ..imaging.codec import ImageInputError, decode_base64_image
from ..imaging.control_preprocessors import (
    CONTROL_TYPES,
    PREPROCESSORS,
    modules_of_type,
)
from ..model_manager.controlnet_files import list_controlnets
from ..services.controlnet import API_VERSION, checkpoint_family, listed_under
from .auth import api_user
from .deps import Ctx
from .mapping import FieldError


class DetectRequest(BaseModel):
    controlnet_module: str = "none"
    controlnet_input_images: list[str] = []
    controlnet_masks: list[str] | None = None
    controlnet_processor_res: int = 512
    controlnet_threshold_a: float = 64
    controlnet_threshold_b: float = 64


def _b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array[:, :, :3] if array.shape[2] == 4 else array).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _models(ctx) -> list[str]:
    return list(list_controlnets(ctx.generation.controlnet_dir))


def _control_types(ctx) -> dict[str, Any]:
    """As the extension's `select_control_type`: each type's models by name, those that
    fit the current checkpoint's family."""
    family = checkpoint_family(ctx.models, ctx.options.get("sd_model_checkpoint"))
    files = list_controlnets(ctx.generation.controlnet_dir).values()
    out = {}
    for name, default, word in CONTROL_TYPES:
        listed = [m.label for m in files if listed_under(m, name, family)]
        out[name] = {"module_list": modules_of_type(name), "model_list": ["None", *listed],
                     "default_option": default,
                     "default_model": listed[0] if listed and word else "None"}  # fmt: skip
    return out


def _detect(body: DetectRequest, annotate: Any = None) -> dict[str, Any]:
    try:
        unit = checked(ControlUnit(enabled=True, module=body.controlnet_module,
                                   processor_res=body.controlnet_processor_res,
                                   threshold_a=body.controlnet_threshold_a,
                                   threshold_b=body.controlnet_threshold_b))  # fmt: skip
    except UnitError as exc:
        raise FieldError(("controlnet_module",), exc.message) from None
    if not body.controlnet_input_images:
        raise FieldError(("controlnet_input_images",), "give at least one image")
    masks = body.controlnet_masks or []
    images = []
    for i, data in enumerate(body.controlnet_input_images):
        try:
            image = decode_base64_image(data, "controlnet_input_images")
            mask = decode_base64_image(masks[i], "controlnet_masks") if i < len(masks) else None
        except ImageInputError as exc:
            raise FieldError((exc.field, i), exc.message) from None
        size = (image.height, image.width)
        try:
            detected = detect(unit, image, mask, size, unit.resize_mode, annotate=annotate)
        except UnitError as exc:
            raise FieldError(("controlnet_module",), exc.message) from None
        except UserError as exc:  # annotator weights missing and not downloadable, unfit
            raise FieldError(("controlnet_module",), str(exc)) from None
        images.append(_b64(detected))
    return {"images": images, "info": "Success"}


def controlnet_router() -> APIRouter:
    router = APIRouter(prefix="/controlnet", tags=["controlnet"],
                       dependencies=[Depends(api_user)])  # fmt: skip

    @router.get("/version")
    def version() -> dict[str, int]:
        """The sd-webui-controlnet API version this server answers as."""
        return {"version": API_VERSION}

    @router.get("/model_list")
    def model_list(ctx: Ctx, update: bool = True) -> dict[str, list[str]]:
        """ControlNet models in models/ControlNet, as "name [hash]"."""
        return {"model_list": _models(ctx)}

    @router.get("/module_list")
    def module_list(alias_names: bool = False) -> dict[str, Any]:
        """Preprocessor names (or labels) and their sliders."""
        names = [p.title if alias_names else p.name for p in PREPROCESSORS.values()]
        details = [p.detail() for p in PREPROCESSORS.values()]
        return {"module_list": names, "module_detail": dict(zip(names, details, strict=True))}

    @router.get("/control_types")
    def control_types(ctx: Ctx) -> dict[str, Any]:
        """Control types with their preprocessors and models, as the extension groups them."""
        return {"control_types": _control_types(ctx)}

    @router.post("/detect")
    def detect(body: DetectRequest, ctx: Ctx) -> dict[str, Any]:
        """Run a preprocessor on images; the detected maps as base64 PNGs."""
        annotators = getattr(ctx, "annotators", None)
        return _detect(body, annotators.run if annotators is not None else None)

    return router
