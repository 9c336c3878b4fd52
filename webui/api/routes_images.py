"""The A1111 image endpoints under /sdapi/v1: img2img, extras (upscaling and face
restoration), upscaler and face restorer lists.

An APIRouter that `webui.api.routes.api_router` includes, so it shares its prefix, HTTP
Basic auth (--api-auth) and validation-error shape. Work goes through the shared job
queue through the generation service like txt2img (the worker thread owns the models):
img2img takes `script_name`/`script_args` for every img2img script (X/Y/Z plot, Prompt
matrix, Prompts from file, SD upscale) and `alwayson_scripts`, as the img2img tab runs
them. Decoding and checking the images run in the threadpool; the wait for the job awaits
its end event and holds no thread. Bad input answers 422 naming the field and saves
nothing; a feature not built answers 501.

This module must never import torch or diffusers: it only talks to the AppContext.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..context import AppContext
from ..services.generation import GenerationRequest
from ..services.upscalers import LATENT_MODES
from . import mapping, mapping_images
from .deps import Ctx, User
from .routes import _ApiRoute
from .routes_queue import ended_badly, wait_for_job
from .schemas_images import (
    ExtrasBatchImagesRequest,
    ExtrasBatchImagesResponse,
    ExtrasSingleImageRequest,
    ExtrasSingleImageResponse,
    FaceRestorerItem,
    ImageToImageResponse,
    LatentUpscalerModeItem,
    UpscalerItem,
)
from .schemas_images import StableDiffusionImg2ImgProcessingAPI as Img2ImgRequest
from .submit import submit_generation

log = logging.getLogger(__name__)


def images_router() -> APIRouter:
    """The image routes, without a prefix: `api_router` includes them under /sdapi/v1."""
    router = APIRouter(route_class=_ApiRoute)

    @router.post("/img2img", response_model=ImageToImageResponse)
    async def img2img(req: Img2ImgRequest, ctx: Ctx, user: User) -> Any:
        request = await run_in_threadpool(mapping_images.img2img_request, req, user)  # 422/501
        job = await run_in_threadpool(submit_generation, ctx, req, request)  # 422/503/429
        await wait_for_job(job)  # waiting in the queue holds no thread of the pool
        if (error := ended_badly(job)) is not None:  # 500 failed, 503 stopped by shutdown
            return error
        return await run_in_threadpool(mapping_images.img2img_response, req, job, job.result)

    @router.post("/extra-single-image", response_model=ExtrasSingleImageResponse)
    async def extra_single_image(req: ExtrasSingleImageRequest, ctx: Ctx, user: User) -> Any:
        if not req.image:
            raise mapping.FieldError(("image",), "no image sent")
        job = await _run_extras(ctx, req, [(req.image, "")], user)
        if isinstance(job, JSONResponse):
            return job
        images = job.result.images if job.result else []
        return {
            "html_info": mapping_images.extras_html_info(job.result),
            "image": mapping.encode_png(images[0].image, images[0].infotext) if images else None,
        }

    @router.post("/extra-batch-images", response_model=ExtrasBatchImagesResponse)
    async def extra_batch_images(req: ExtrasBatchImagesRequest, ctx: Ctx, user: User) -> Any:
        if not req.imageList:
            raise mapping.FieldError(("imageList",), "no images sent")
        job = await _run_extras(ctx, req, [(f.data, f.name) for f in req.imageList], user)
        if isinstance(job, JSONResponse):
            return job
        images = job.result.images if job.result else []
        return {
            "html_info": mapping_images.extras_html_info(job.result),
            "images": [mapping.encode_png(g.image, g.infotext) for g in images],
        }

    @router.get("/upscalers", response_model=list[UpscalerItem])
    def upscalers(ctx: Ctx) -> Any:
        items = [{"name": name} for name in ("None", "Lanczos", "Nearest")]
        for item in ctx.upscalers.model_files():
            items.append(
                {
                    "name": item.name,
                    "model_name": item.folder,
                    "model_path": str(item.path),
                    "scale": item.scale_guess,
                }
            )
        return items

    @router.get("/latent-upscale-modes", response_model=list[LatentUpscalerModeItem])
    def latent_upscale_modes() -> Any:
        return [{"name": name} for name in LATENT_MODES]

    @router.get("/face-restorers", response_model=list[FaceRestorerItem])
    def face_restorers(ctx: Ctx) -> Any:
        faces = ctx.generation.faces
        if faces is None:
            return []
        return [{"name": name, "cmd_dir": str(folder)} for name, folder in faces.available()]

    return router


async def _run_extras(ctx: AppContext, req, images: list[tuple[str, str]], user: str):
    """Decode and check the images, queue the extras job and await its end (no thread)."""

    def submit():
        params = mapping_images.extras_params(req, images, ctx.upscalers)  # 422/501
        return submit_generation(ctx, req, GenerationRequest("extras", params, user))

    job = await run_in_threadpool(submit)
    await wait_for_job(job)
    return ended_badly(job) or job
