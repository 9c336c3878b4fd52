"""Face restoration in jobs: after decoding in txt2img/img2img, after upscaling in extras.

A generation with `restore_faces` runs the job's restorer (`params.face_restorer`, which
the generation service resolved from the job's `face_restoration_model` and
`code_former_weight` options) on every image after decoding and before saving, as A1111's
`process_images` does (img2img: before the original is pasted back outside the mask), and
writes A1111's "Face restoration: <name>" infotext field. The Upscale tab runs GFPGAN and
then CodeFormer, each blended over the image at its visibility, and writes A1111's
"GFPGAN visibility", "CodeFormer visibility" and "CodeFormer weight" fields.

The models run in `webui.imaging.face_restoration` through the worker's
`FaceRestorerCache` (`ctx.faces`). This module must never import a UI library.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from PIL import Image

from ..imaging.face_restoration import blend
from ..imaging.face_restorer_list import FaceRestorerRef
from .run import JobContext

log = logging.getLogger(__name__)

FIELD = "Face restoration"  # A1111's infotext field (after Seed)


def face_fields(params: Any) -> dict:
    """The generation's "Face restoration" infotext field (none when it is off)."""
    ref = getattr(params, "face_restorer", None)
    if not getattr(params, "restore_faces", False) or ref is None:
        return {}
    return {FIELD: ref.name}


def restored(ctx: JobContext, params: Any, image: Image.Image) -> Image.Image:
    """One generated image with its faces restored when the job asks for it."""
    ref = getattr(params, "face_restorer", None)
    if not getattr(params, "restore_faces", False) or ref is None:
        return image
    ctx.progress.text = f"Restoring faces ({ref.name})"
    try:
        result, found = ctx.faces.restore(image, ref)
    finally:
        ctx.progress.text = ""
    log.info("%s restored %d face(s)", ref.name, found)
    return result


def restore_faces_extras(
    ctx: JobContext, params: Any, image: Image.Image, fields: dict
) -> Image.Image:
    """The Upscale tab's GFPGAN and CodeFormer steps (A1111's postprocessing scripts)."""
    steps: list[tuple[FaceRestorerRef | None, float, dict]] = [
        (params.gfpgan, params.gfpgan_visibility,
         {"GFPGAN visibility": round(params.gfpgan_visibility, 3)}),
        (params.codeformer and replace(params.codeformer, weight=params.codeformer_weight),
         params.codeformer_visibility,
         {"CodeFormer visibility": round(params.codeformer_visibility, 3),
          "CodeFormer weight": round(params.codeformer_weight, 3)}),
    ]  # fmt: skip
    for ref, visibility, step_fields in steps:
        if visibility <= 0 or ctx.should_stop():
            continue
        if ref is None:  # the generation service resolves the file of every visible one
            raise ValueError(f"face restoration at visibility {visibility} without a model")
        ctx.progress.text = f"Restoring faces ({ref.name})"
        result, found = ctx.faces.restore(image, ref)
        log.info("%s restored %d face(s)", ref.name, found)
        image = blend(image, result, visibility)
        fields.update(step_fields)
    return image
