"""The A1111-compatible REST API under /sdapi/v1 (enabled by --api or --nowebui).

Every route gets the AppContext through a dependency (`webui.api.deps`); there is no
module-level state. A generation request is mapped to a `GenerationRequest`
(`webui.api.mapping`) and submitted through the generation service (owned by the caller:
its --api-auth user, else "api"), then waited for without holding a thread
(`routes_queue.wait_for_job`), so /progress stays free however many clients wait. Bad
input answers 422 in FastAPI's validation-error shape naming the field; endpoints and
features not built yet answer 501 with a JSON message naming the feature
(`webui.api.errors`).

This module must never import torch or diffusers: it only talks to the AppContext.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from ..context import AppContext
from ..core import jobs as job_states
from ..core import samplers
from ..services.options import checked_options
from . import mapping
from .auth import API_OWNER, api_user
from .deps import Ctx, User, get_ctx
from .errors import not_built_response
from .routes_queue import ended_badly, wait_for_job
from .schemas import (
    PNGInfoRequest,
    PNGInfoResponse,
    ProgressResponse,
    SamplerItem,
    SchedulerItem,
    SDModelItem,
    TextToImageResponse,
)
from .schemas import StableDiffusionTxt2ImgProcessingAPI as Txt2ImgRequest
from .submit import submit_generation

log = logging.getLogger(__name__)

PREFIX = "/sdapi/v1"
__all__ = ["API_OWNER", "Ctx", "User", "api_router", "api_user", "get_ctx"]

# path -> (HTTP method, feature named in the 501 answer)
NOT_BUILT: dict[str, tuple[str, str]] = {}
_SECRET_FLAGS = ("api_auth", "gradio_auth")


class _ApiRoute(APIRoute):
    """Answers request-validation errors with loc/msg/type only.

    FastAPI's default answer echoes the input, which fails to encode (500) for NaN.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                detail = [
                    {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")),
                     "type": str(e.get("type", "value_error"))}
                    for e in exc.errors()
                ]  # fmt: skip
                return JSONResponse(status_code=422, content={"detail": detail})

        return route


def api_router() -> APIRouter:
    """All /sdapi/v1 routes; the composition root includes it in the app."""
    router = APIRouter(
        prefix=PREFIX, tags=["sdapi"], route_class=_ApiRoute, dependencies=[Depends(api_user)]
    )
    _generation_routes(router)
    _model_routes(router)
    _settings_routes(router)
    from .routes_images import images_router  # img2img, extras, upscalers (it uses _ApiRoute)

    router.include_router(images_router())
    from .routes_networks import networks_router  # loras, embeddings, sd-vae, prompt-styles

    router.include_router(networks_router())
    from .routes_ext import extensions_router  # scripts, script-info, extensions

    router.include_router(extensions_router())
    from .routes_interrogate import interrogate_router  # interrogate: CLIP, DeepBooru, WD14

    router.include_router(interrogate_router())
    from .routes_ti import ti_router  # create/embedding, train/embedding (textual inversion)

    router.include_router(ti_router())
    for path, (method, feature) in NOT_BUILT.items():
        router.add_api_route(
            path, _not_built_endpoint(feature), methods=[method], status_code=501,
            summary=f"not implemented yet: {feature}", responses={501: {"description": feature}},
        )  # fmt: skip
    return router


def _not_built_endpoint(feature: str) -> Callable[[], JSONResponse]:
    def endpoint() -> JSONResponse:
        return not_built_response("", feature)

    return endpoint


# --- generation ---------------------------------------------------------------------------


def _generation_routes(router: APIRouter) -> None:
    @router.post("/txt2img", response_model=TextToImageResponse)
    async def txt2img(req: Txt2ImgRequest, ctx: Ctx, user: User) -> Any:
        # 422/501 (mapping, service), 503 (no checkpoint), 429 (queue limit): webui.api.errors
        request = await run_in_threadpool(mapping.txt2img_request, req, user, ctx.upscalers)
        job = await run_in_threadpool(submit_generation, ctx, req, request)
        await wait_for_job(job)  # waiting in the queue holds no thread of the pool
        if (error := ended_badly(job)) is not None:  # 500 failed, 503 stopped by shutdown
            return error
        return await run_in_threadpool(mapping.txt2img_response, req, job, job.result)

    @router.get("/progress", response_model=ProgressResponse)
    def progress(ctx: Ctx, user: User, skip_current_image: Annotated[bool, Query()] = False) -> Any:
        """The caller's own job (running, else their next waiting one); never another
        user's preview. Idle values when the caller has no unfinished job."""
        job = ctx.jobs.active(user)
        body = mapping.progress_response(job, skip_current_image=skip_current_image)
        if job is not None and job.state == job_states.QUEUED:
            body["textinfo"] = f"Waiting in queue: position {ctx.jobs.position(job)}"
        return body

    @router.post("/interrupt")
    def interrupt(ctx: Ctx, user: User) -> Any:
        """Stop the caller's running job (or cancel their next waiting one)."""
        job = ctx.jobs.active(user)
        if job is not None:
            ctx.jobs.interrupt(job.id, user)
        return None

    @router.post("/skip")
    def skip(ctx: Ctx, user: User) -> Any:
        """End the image the caller's running job is sampling; its next batch goes on."""
        job = ctx.jobs.active(user)
        if job is not None and job.state == job_states.RUNNING:
            ctx.jobs.skip(job.id, user)
        return None

    @router.post("/png-info", response_model=PNGInfoResponse)
    def png_info(req: PNGInfoRequest, ctx: Ctx) -> Any:
        return mapping.png_info(req.image, ctx.models.module_files.names())  # FieldError: 422


# --- models -------------------------------------------------------------------------------


def _model_routes(router: APIRouter) -> None:
    @router.get("/samplers", response_model=list[SamplerItem])
    def list_samplers() -> Any:
        return [
            {"name": name, "aliases": samplers.sampler_aliases(name), "options": {}}
            for name in samplers.SAMPLERS
        ]

    @router.get("/schedulers", response_model=list[SchedulerItem])
    def list_schedulers() -> Any:
        return [
            {"name": name, "label": label, "aliases": None, "default_rho": -1,
             "need_inner_model": False}
            for label, name in samplers.SCHEDULE_NAMES.items()
        ]  # fmt: skip

    @router.get("/sd-models", response_model=list[SDModelItem])
    def sd_models(ctx: Ctx) -> Any:
        return [
            {"title": i.title, "model_name": i.name, "hash": i.shorthash, "sha256": i.sha256,
             "filename": str(i.path), "config": None}
            for i in ctx.models.checkpoints()
        ]  # fmt: skip

    @router.post("/refresh-checkpoints")
    def refresh_checkpoints(ctx: Ctx) -> Any:
        ctx.models.refresh()
        return None

    @router.get("/sd-modules")
    def sd_modules(ctx: Ctx) -> Any:
        """Forge's "VAE / Text Encoder" files (models/VAE, models/text_encoder)."""
        files = ctx.models.module_files.list()
        return [{"model_name": m.name, "filename": str(m.path)} for m in files]

    @router.post("/unload-checkpoint")
    def unload_checkpoint(ctx: Ctx, user: User) -> Any:
        ctx.jobs.submit("unload", None, owner=user)  # only the worker touches the models
        return None

    @router.post("/reload-checkpoint")
    def reload_checkpoint(ctx: Ctx, user: User) -> Any:
        wanted = ctx.options.get("sd_model_checkpoint") or None
        try:
            title = ctx.models.resolve(wanted).title
        except LookupError as exc:
            raise HTTPException(404, str(exc.args[0] if exc.args else exc)) from None
        job = ctx.jobs.submit("load", title, owner=user)
        job.done.wait()
        if job.state == job_states.FAILED:
            raise HTTPException(500, f"could not load {title}: {job.error}")
        return None

    @router.get("/memory")
    def memory(ctx: Ctx) -> Any:
        # "memory_plan": device, precision, attention backend, offload, and why (notes)
        return {"ram": _ram(), "cuda": _cuda(ctx), "memory_plan": ctx.memory.as_dict()}


def _ram() -> dict[str, Any]:
    try:
        import psutil
    except ImportError:
        return _ram_from_proc()
    mem = psutil.virtual_memory()
    process = psutil.Process(os.getpid()).memory_info()
    return {"free": mem.available, "used": process.rss, "total": mem.total}


def _ram_from_proc() -> dict[str, Any]:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError as exc:
        return {"error": f"memory information not available: {exc}"}
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0]) * 1024
    total, free = values.get("MemTotal", 0), values.get("MemAvailable", 0)
    return {"free": free, "used": total - free, "total": total}


def _cuda(ctx: AppContext) -> dict[str, Any]:
    if ctx.memory.device != "cuda":
        return {"error": "no cuda"}
    from ..model_manager import memory as memory_module

    stats = getattr(memory_module, "cuda_memory_stats", None)
    if stats is None:
        return {"error": "cuda memory statistics are not implemented yet"}
    try:
        return stats()
    except Exception as exc:  # a stats failure must not fail the endpoint
        return {"error": str(exc)}


# --- settings -----------------------------------------------------------------------------


def _settings_routes(router: APIRouter) -> None:
    @router.get("/options")
    def get_options(ctx: Ctx) -> Any:
        return mapping.json_safe(ctx.options.public_dict())  # secrets masked

    @router.post("/options")
    def set_options(body: dict[str, Any], ctx: Ctx, user: User) -> Any:
        options = ctx.options
        if options.read_only:
            raise HTTPException(403, "settings are frozen (--freeze-settings)")
        unknown = sorted(key for key in body if key not in options.definitions)
        if unknown:
            log.info("POST /options: unknown options ignored: %s", ", ".join(unknown))
        changes = {k: v for k, v in body.items() if k in options.definitions}
        known = checked_options(changes, options, ctx.models)  # RequestError: 422
        checkpoint = known.get("sd_model_checkpoint")
        try:
            options.update(known)
        except PermissionError as exc:  # --freeze-settings, or a path option on a LAN
            raise HTTPException(403, str(exc)) from None
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        options.save()
        if checkpoint:  # A1111 loads the checkpoint an options change names
            ctx.jobs.submit("load", known["sd_model_checkpoint"], owner=user)
        return None

    @router.get("/cmd-flags")
    def cmd_flags(ctx: Ctx) -> Any:
        flags = ctx.flags.as_cmd_flags()
        for key in _SECRET_FLAGS:  # never a password, whatever as_cmd_flags does
            if flags.get(key):
                flags[key] = "***"
        return mapping.json_safe(flags)
