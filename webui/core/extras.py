"""The Upscale tab's job (A1111 "Extras"): images through one or two upscalers, saved.

Scale by a factor, or to a width x height (the image is scaled to cover it and, with
"crop to fit", cut to it in the middle). A second upscaler runs on the original too and
is blended in at its visibility; then GFPGAN and CodeFormer restore the faces, each
blended in at its visibility (`webui.core.faces`). The infotext keeps the source image's own parameters
and adds A1111's "Postprocess ..." fields; the worker's `save` puts them in
outputs/extras-images, or under their own names into the output folder of a batch from a
folder.

This module must never import a UI library. It uses no checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..imaging.codec import to_rgb
from ..imaging.infotext import find_params, format_value, quote, read_infotext_from_image
from ..imaging.upscaler_list import NONE
from ..imaging.upscalers import UpscalerCache
from .faces import restore_faces_extras
from .params_img2img import ExtrasParams
from .processing import GeneratedImage
from .run import JobContext

log = logging.getLogger(__name__)


@dataclass
class ExtrasResult:
    images: list[GeneratedImage]
    params: ExtrasParams


NamedSaveFn = Callable[[Image.Image, str, str], "str | None"]  # (image, stem, infotext) -> path


def upscale_images(
    ctx: JobContext, params: ExtrasParams, save: NamedSaveFn | None
) -> list[GeneratedImage]:
    """Every image of the job through the upscalers; `save` (None: not saved) gets each
    with its source's file stem."""
    progress = ctx.progress
    progress.batches, progress.steps = len(params.images), 1
    progress.started_at = time.monotonic()
    results: list[GeneratedImage] = []
    for index, (source, name) in enumerate(params.images):
        if ctx.should_stop():
            break
        progress.batch, progress.step = index, 0
        progress.text = f"Upscaling {name or 'image'}" if len(params.images) > 1 else "Upscaling"
        image, fields = upscale_one(params, source, ctx.upscalers, ctx.should_stop)
        image = restore_faces_extras(ctx, params, image, fields)
        infotext = postprocess_infotext(read_infotext_from_image(source), fields)
        stem = Path(name).stem if name else "image"
        path = save(image, stem, infotext) if save else None
        results.append(GeneratedImage(image=image, seed=0, infotext=infotext, path=path))
        progress.step = 1
    progress.text = ""
    return results


def upscale_one(
    params: ExtrasParams,
    source: Image.Image,
    upscalers: UpscalerCache,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[Image.Image, dict]:
    """(upscaled image, its "Postprocess ..." infotext fields). Upscaler 1 "None" skips
    the upscaling (A1111), e.g. for face restoration alone."""
    image = to_rgb(source)
    fields: dict = {}
    if params.upscaler_1.name == NONE:
        return image, fields
    if params.resize_mode == 1:
        target_w, target_h = params.upscaling_resize_w, params.upscaling_resize_h
        scale = max(target_w / image.width, target_h / image.height)
        fields["Postprocess upscale to"] = f"{target_w}x{target_h}"
    else:
        scale = params.upscaling_resize
        fields["Postprocess upscale by"] = scale
    kwargs = {"tile": params.tile, "overlap": params.tile_overlap, "should_stop": should_stop}
    result = upscalers.upscale(image, scale, params.upscaler_1, **kwargs)
    fields["Postprocess upscaler"] = params.upscaler_1.name
    visibility = params.extras_upscaler_2_visibility
    if params.upscaler_2.name != NONE and visibility > 0:
        second = upscalers.resize(image, result.width, result.height, params.upscaler_2, **kwargs)
        result = Image.blend(result, second, visibility)
        fields["Postprocess upscaler 2"] = params.upscaler_2.name
        fields["Postprocess upscaler 2 visibility"] = round(visibility, 3)
    if params.resize_mode == 1 and params.upscaling_crop:
        cropped = Image.new("RGB", (target_w, target_h))
        cropped.paste(
            result, (target_w // 2 - result.width // 2, target_h // 2 - result.height // 2)
        )
        result = cropped
        fields["Postprocess crop to"] = f"{target_w}x{target_h}"
    return result, fields


def postprocess_infotext(original: str | None, fields: dict) -> str:
    """The source's infotext with the postprocess fields added to its parameter line."""
    line = ", ".join(f"{key}: {quote(format_value(value))}" for key, value in fields.items())
    if not original or not original.strip():
        return line
    lines = original.rstrip().split("\n")
    if len(find_params(lines[-1])) >= 3:
        lines[-1] = f"{lines[-1]}, {line}"
        return "\n".join(lines)
    return f"{original.rstrip()}\n{line}"
