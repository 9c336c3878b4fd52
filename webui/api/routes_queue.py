"""Our own API additions under /webui/v1: the shared job queue, job status, cancel & co.

- `GET /webui/v1/queue`: every job (running, waiting in run order, then a page of the
  finished ones, newest first: `offset`, `limit`; they come from the job store, so they
  outlive restarts) with owner, mode, prompt start, position, state, progress and `rerun`
  (why a job runs again); `mine` marks the caller's. Other users' prompts are left out
  unless the option queue_show_others_prompts is on.
- `GET /webui/v1/jobs/{id}`: one job's status, also long finished; its owner may ask for
  the live preview (`preview=true`) and, once finished, the images with their infotext
  (`images=true`; read from the saved files: a deleted file is counted in
  `deleted_images`, not sent). Others see the status only: never another user's previews
  or images.
- `POST /webui/v1/jobs/{id}/cancel` (a waiting job leaves the queue, a running one is
  interrupted), `/interrupt`, `/skip`, `/move` (reorder among the owner's waiting jobs).
- `GET /webui/v1/workers`: the executors that run jobs (one "local" worker, or the Ray
  workers with --ray): device, checkpoints held, jobs done, state, the job it runs.
- `POST /webui/v1/txt2img`: submit an A1111 txt2img payload without waiting; answers 202
  with the job, to be polled by id. `force_task_id` chooses the id.

Job ids come from the queue, or from A1111's `force_task_id` request field. The owner of a
request is its --api-auth user, else "api". This module must never import torch or
diffusers: it only talks to the AppContext.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ..context import AppContext
from ..core import jobs as job_states
from ..core.events import wait_finished
from ..core.jobs import (
    Job,
    JobAccessError,
    QueueFullError,
    ShuttingDownError,
    file_deleted,
    summary,
)
from . import mapping
from .auth import api_user
from .deps import Ctx, User
from .schemas import StableDiffusionTxt2ImgProcessingAPI as Txt2ImgRequest
from .submit import submit_generation

log = logging.getLogger(__name__)

PREFIX = "/webui/v1"
MAX_OFFSET = 2**31 - 1  # SQLite integers are 64-bit; no history is near this
MAX_PAGE = 200  # finished jobs per /queue page


class JobInfo(BaseModel):
    id: str
    owner: str
    kind: str = Field(description="txt2img, img2img, load, ...")
    prompt: str = Field(
        description="the start of the prompt (empty for other users' jobs "
        "unless the option queue_show_others_prompts is on)"
    )
    state: str = Field(description="queued, running, done, failed, interrupted, cancelled")
    position: int | None = Field(description="0 running, 1.. waiting, null finished")
    progress: float
    step: int
    steps: int
    batch: int
    batches: int
    eta_seconds: float | None
    text: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    interrupt_requested: bool
    skipped: int
    image_count: int
    error: str | None
    worker: str | None = Field(None, description="the worker running it (or that ran it)")
    attempts: int = Field(0, description="times started (more than 1: run again)")
    rerun: str = Field(
        "", description="why the job runs again (a restart, a lost worker), else empty"
    )
    mine: bool = Field(description="submitted by the caller")


class QueueInfo(BaseModel):
    running: str | None = Field(description="id of the running job (the first, with --ray)")
    running_jobs: list[str] = Field(
        default_factory=list, description="ids of every running job (one per busy worker)"
    )
    waiting: int
    limit_per_user: int = Field(description="0: no limit")
    finished_total: int = Field(0, description="finished jobs to page through")
    jobs: list[JobInfo]


class JobDetail(JobInfo):
    current_image: str | None = Field(None, description="live preview (base64 PNG), owner only")
    images: list[str] = Field(default_factory=list, description="base64 PNGs, owner only")
    infotexts: list[str] = Field(default_factory=list)
    deleted_images: int = Field(0, description="result images whose files were deleted")


class WorkerInfo(BaseModel):
    name: str
    device: str
    models: list[str] = Field(description="checkpoints it holds in memory")
    jobs_done: int
    state: str = Field(description="idle, running or lost (its process died)")
    job: str | None = Field(description="id of the job it runs")


class MoveRequest(BaseModel):
    offset: int = Field(description="places to move among your waiting jobs; negative: earlier")


def job_info(ctx: AppContext, job: Job, position: int | None, user: str) -> dict[str, Any]:
    """A job as the caller may see it: another user's prompt only with the option
    queue_show_others_prompts."""
    mine = job.owner == user
    shown = mine or bool(ctx.options.get("queue_show_others_prompts"))
    return {**summary(job, position, show_prompt=shown), "mine": mine}


def queue_router() -> APIRouter:
    """The /webui/v1 routes; the composition root includes it with --api."""
    router = APIRouter(prefix=PREFIX, tags=["webui"], dependencies=[Depends(api_user)])

    @router.get("/queue", response_model=QueueInfo)
    def queue(
        ctx: Ctx,
        user: User,
        offset: Annotated[
            int, Query(ge=0, le=MAX_OFFSET, description="finished jobs to leave out")
        ] = 0,
        limit: Annotated[int, Query(ge=0, le=MAX_PAGE, description="finished jobs")] = 20,
    ) -> Any:
        listing = ctx.jobs.listing(finished_limit=limit, finished_offset=offset)
        running = [j.id for j, pos in listing if pos == 0]
        return {
            "running": running[0] if running else None,
            "running_jobs": running,
            "waiting": sum(1 for _, pos in listing if pos),
            "limit_per_user": int(ctx.options.get("queue_limit_per_user")),
            "finished_total": ctx.jobs.finished_count(),
            "jobs": [job_info(ctx, j, pos, user) for j, pos in listing],
        }

    @router.get("/workers", response_model=list[WorkerInfo])
    def workers(ctx: Ctx) -> Any:
        return ctx.jobs.workers()

    @router.get("/jobs/{job_id}", response_model=JobDetail)
    def job_status(
        job_id: str,
        ctx: Ctx,
        user: User,
        images: Annotated[bool, Query(description="include the result images")] = False,
        preview: Annotated[bool, Query(description="include the live preview")] = False,
    ) -> Any:
        job = _job(ctx, job_id)
        body = job_info(ctx, job, ctx.jobs.position(job), user)
        if job.owner != user:  # status only: never another user's pictures
            return body
        if preview and job.state == job_states.RUNNING and job.progress.preview is not None:
            body["current_image"] = mapping.encode_png(job.progress.preview)
        kept = [g for g in job.images if not file_deleted(g) and g.image is not None]
        if images:
            body["images"] = [mapping.encode_png(g.image, g.infotext) for g in kept]
        body["infotexts"] = [g.infotext for g in kept]
        body["deleted_images"] = len(job.images) - len(kept)
        return body

    @router.post("/jobs/{job_id}/cancel", response_model=JobInfo)
    def cancel(job_id: str, ctx: Ctx, user: User) -> Any:
        return _act(ctx, user, job_id, ctx.jobs.interrupt, "it has already finished")

    @router.post("/jobs/{job_id}/interrupt", response_model=JobInfo)
    def interrupt(job_id: str, ctx: Ctx, user: User) -> Any:
        return _act(ctx, user, job_id, ctx.jobs.interrupt, "it has already finished")

    @router.post("/jobs/{job_id}/skip", response_model=JobInfo)
    def skip(job_id: str, ctx: Ctx, user: User) -> Any:
        return _act(ctx, user, job_id, ctx.jobs.skip, "only a running job can skip")

    @router.post("/jobs/{job_id}/move", response_model=JobInfo)
    def move(job_id: str, body: MoveRequest, ctx: Ctx, user: User) -> Any:
        def action(jid: str, owner: str) -> bool:
            return ctx.jobs.move(jid, body.offset, owner)

        return _act(ctx, user, job_id, action, "only a waiting job can move, within your jobs")

    @router.post("/txt2img", response_model=JobInfo, status_code=202)
    def submit_txt2img(req: Annotated[Txt2ImgRequest, Body()], ctx: Ctx, user: User) -> Any:
        request = mapping.txt2img_request(req, user, ctx.upscalers)  # 422/501
        job = submit_generation(ctx, req, request)  # 422/503/429
        return job_info(ctx, job, ctx.jobs.position(job), user)

    return router


async def wait_for_job(job: Job) -> None:
    """Wait for a job to finish without holding a thread or polling: await its end event
    on the queue's hub, so many API clients may wait in the queue at once while /progress
    and the queue listing stay responsive. 503 if the server stops first."""
    if job.events is None:
        raise ValueError(f"job {job.id} was never submitted to a queue")
    if not await wait_finished(job.events, job):
        raise HTTPException(503, "the server is shutting down; the job did not finish")


def ended_badly(job: Job) -> JSONResponse | None:
    """The answer for a finished job that failed (500) or that the server's shutdown
    stopped (503); None when it has a result to send."""
    if job.abort_requested:
        status, error = 503, "ShuttingDown"
    elif job.state == job_states.FAILED:
        status, error = 500, "GenerationError"
    else:
        return None
    return JSONResponse(
        status_code=status, content={"error": error, "detail": job.error, "errors": job.error}
    )


def _job(ctx: AppContext, job_id: str) -> Job:
    job = ctx.jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no such job: {job_id}")
    return job


def _act(ctx: AppContext, user: str, job_id: str, action, refusal: str) -> dict[str, Any]:
    job = _job(ctx, job_id)
    if not action(job_id, user):
        raise HTTPException(409, f"cannot do that with job {job_id}: {refusal}")
    return job_info(ctx, job, ctx.jobs.position(job), user)


def add_queue_error_handlers(app: FastAPI) -> None:
    """QueueFullError -> 429, JobAccessError -> 403 and ShuttingDownError -> 503, for every
    route that submits."""

    async def queue_full(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=429, content={"detail": str(exc), "error": "QueueFull"})

    async def shutting_down(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(exc), "error": "ShuttingDown"})

    async def not_yours(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=403, content={"detail": str(exc)})

    app.add_exception_handler(QueueFullError, queue_full)
    app.add_exception_handler(JobAccessError, not_yours)
    app.add_exception_handler(ShuttingDownError, shutting_down)
