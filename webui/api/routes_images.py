"""The A1111 image endpoints under /sdapi/v1: img2img, extras (upscaling), upscaler lists.

An APIRouter that `webui.api.routes.api_router` includes, so it shares its prefix, HTTP
Basic auth (--api-auth) and validation-error shape. Work goes through the shared job
queue like txt2img (the worker thread owns the models); endpoints are plain `def`, so the
wait happens in the threadpool. Bad input answers 422 naming the field and saves
nothing; a feature not built answers 501.

This module must never import torch or diffusers: it only talks to the AppContext.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse

from ..imaging.upscaler_list import LATENT_MODES, UpscalerCatalog
from . import mapping, mapping_images
from .auth import api_user
from .routes import _ApiRoute
from .routes_queue import ended_badly
from .schemas_images import (
    ExtrasBatchImagesRequest,
    ExtrasBatchImagesResponse,
    ExtrasSingleImageRequest,
    ExtrasSingleImageResponse,
    ImageToImageResponse,
    LatentUpscalerModeItem,
    UpscalerItem,
)
from .schemas_images import StableDiffusionImg2ImgProcessingAPI as Img2ImgRequest

if TYPE_CHECKING:
    from ..context import AppContext
else:  # the context module pulls in torch; routes only need its attributes
    AppContext = Any

log = logging.getLogger(__name__)


def get_ctx(request: Request) -> AppContext:
    return request.app.state.ctx


Ctx = Annotated[AppContext, Depends(get_ctx)]
User = Annotated[str, Depends(api_user)]


def catalog(ctx: AppContext) -> UpscalerCatalog:
    return UpscalerCatalog(ctx.flags.models_dir)


def images_router() -> APIRouter:
    """The image routes, without a prefix: `api_router` includes them under /sdapi/v1."""
    router = APIRouter(route_class=_ApiRoute)

    @router.post("/img2img", response_model=ImageToImageResponse)
    def img2img(req: Img2ImgRequest, ctx: Ctx, user: User) -> Any:
        try:
            params = mapping_images.img2img_params(
                req, models=ctx.models, options=ctx.options, upscalers=catalog(ctx)
            )
            options = mapping.job_options(req.override_settings or {}, ctx.options)
        except mapping.FieldError as exc:
            raise HTTPException(status_code=422, detail=exc.detail()) from None
        except mapping.NotBuiltError as exc:
            return _not_built(f"{exc.feature} ({exc.field})")
        if not ctx.models.checkpoints():
            raise HTTPException(
                503, f"no checkpoint: put a .safetensors file into {ctx.flags.ckpt_dir}"
            )
        job = _submit(ctx, "img2img", params, user, req.force_task_id, options)
        job.done.wait()
        if (error := ended_badly(job)) is not None:  # 500 failed, 503 stopped by shutdown
            return error
        return mapping_images.img2img_response(req, job, job.result)

    @router.post("/extra-single-image", response_model=ExtrasSingleImageResponse)
    def extra_single_image(req: ExtrasSingleImageRequest, ctx: Ctx, user: User) -> Any:
        if not req.image:
            raise HTTPException(422, mapping.FieldError(("image",), "no image sent").detail())
        job = _run_extras(ctx, req, [(req.image, "")], user)
        if isinstance(job, JSONResponse):
            return job
        images = job.result.images if job.result else []
        return {
            "html_info": mapping_images.extras_html_info(job.result),
            "image": mapping.encode_png(images[0].image, images[0].infotext) if images else None,
        }

    @router.post("/extra-batch-images", response_model=ExtrasBatchImagesResponse)
    def extra_batch_images(req: ExtrasBatchImagesRequest, ctx: Ctx, user: User) -> Any:
        if not req.imageList:
            raise HTTPException(422, mapping.FieldError(("imageList",), "no images sent").detail())
        job = _run_extras(ctx, req, [(f.data, f.name) for f in req.imageList], user)
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
        for item in catalog(ctx).model_files():
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

    return router


def _submit(ctx: AppContext, kind: str, params, user: str, task_id=None, options=None):
    try:
        return ctx.jobs.submit(kind, params, owner=user, job_id=task_id or None, options=options)
    except ValueError as exc:  # a bad or taken force_task_id
        detail = mapping.FieldError(("force_task_id",), str(exc)).detail()
        raise HTTPException(status_code=422, detail=detail) from None


def _run_extras(ctx: AppContext, req, images: list[tuple[str, str]], user: str):
    try:
        params = mapping_images.extras_params(req, images, catalog(ctx))
    except mapping.FieldError as exc:
        raise HTTPException(status_code=422, detail=exc.detail()) from None
    except mapping.NotBuiltError as exc:
        return _not_built(f"{exc.feature} ({exc.field})")
    job = _submit(ctx, "extras", params, user)
    job.done.wait()
    return ended_badly(job) or job


def _not_built(feature: str) -> JSONResponse:
    return JSONResponse(
        status_code=501, content={"detail": f"{feature} is not implemented yet", "feature": feature}
    )
