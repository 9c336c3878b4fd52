"""A1111's textual-inversion routes, on the queue: create and train an embedding.

- `POST /sdapi/v1/create/embedding`: A1111's `name`, `init_text`, `num_vectors_per_token`,
  `overwrite_old` (and our optional `checkpoint`; empty: the server's). The job runs on
  the queue (the worker owns the model); the answer is A1111's
  `{"info": "create embedding filename: <path>"}`.
- `POST /sdapi/v1/train/embedding`: A1111's `train_embedding` arguments (`embedding_name`,
  `learn_rate`, `batch_size`, `gradient_step`, `data_root`, `log_directory`,
  `template_filename`, `steps`, ...; `id_task` is the job's id). As in A1111 the request
  waits until training ends (no thread is held) and answers
  `{"info": "train embedding complete: filename: <path> error: <None or the error>"}`;
  meanwhile `/sdapi/v1/progress` shows the caller's training job (step, ETA, loss) and
  `/sdapi/v1/interrupt` stops it (the embedding is saved where it stands).

A bad field, an unknown embedding or template, an empty dataset folder, a batch larger than
the images, or an existing name without `overwrite_old`: 422 naming the field, before any
job is queued. A job that fails later answers A1111's "... error: <message>" info.

This module must never import torch or diffusers.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from pydantic import BaseModel, ConfigDict, Field

from ..core.ti_params import CreateEmbeddingParams, TrainEmbeddingParams
from ..services.ti import TiService
from .auth import api_user
from .deps import Ctx, User
from .routes_queue import ended_badly, wait_for_job

_TRAIN = TrainEmbeddingParams("")


class CreateEmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt name is a 422, not ignored

    name: str
    init_text: str = "*"
    num_vectors_per_token: int = 1
    overwrite_old: bool = False
    checkpoint: str = Field("", description="not A1111's: the checkpoint; empty: the server's")


class TrainEmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id_task: str | None = Field(None, description="the job's id (A1111's task id)")
    embedding_name: str
    learn_rate: str | float = Field(_TRAIN.learn_rate, description='e.g. "0.005:100, 1e-3"')
    batch_size: int = _TRAIN.batch_size
    gradient_step: int = _TRAIN.gradient_step
    data_root: str
    log_directory: str = _TRAIN.log_directory
    training_width: int = _TRAIN.training_width
    training_height: int = _TRAIN.training_height
    varsize: bool = _TRAIN.varsize
    steps: int = _TRAIN.steps
    clip_grad_mode: str = _TRAIN.clip_grad_mode
    clip_grad_value: str | float = _TRAIN.clip_grad_value
    shuffle_tags: bool = _TRAIN.shuffle_tags
    tag_drop_out: float = _TRAIN.tag_drop_out
    latent_sampling_method: str = _TRAIN.latent_sampling_method
    use_weight: bool = _TRAIN.use_weight
    create_image_every: int = _TRAIN.create_image_every
    save_embedding_every: int = _TRAIN.save_embedding_every
    template_filename: str = _TRAIN.template_filename
    save_image_with_stored_embedding: bool = _TRAIN.save_image_with_stored_embedding
    preview_from_txt2img: bool = _TRAIN.preview_from_txt2img
    preview_prompt: str = _TRAIN.preview_prompt
    preview_negative_prompt: str = _TRAIN.preview_negative_prompt
    preview_steps: int = _TRAIN.preview_steps
    preview_sampler_name: str = _TRAIN.preview_sampler_name
    preview_cfg_scale: float = _TRAIN.preview_cfg_scale
    preview_seed: int = _TRAIN.preview_seed
    preview_width: int = _TRAIN.preview_width
    preview_height: int = _TRAIN.preview_height
    checkpoint: str = Field("", description="not A1111's: the checkpoint; empty: the server's")

    def params(self) -> TrainEmbeddingParams:
        values = self.model_dump(exclude={"id_task"})
        values["learn_rate"] = str(values["learn_rate"])
        values["clip_grad_value"] = str(values["clip_grad_value"])
        return TrainEmbeddingParams(**values)


class InfoResponse(BaseModel):
    info: str


def ti_router() -> APIRouter:
    """The routes, without a prefix (api_router adds /sdapi/v1)."""
    from .routes import _ApiRoute

    router = APIRouter(route_class=_ApiRoute, dependencies=[Depends(api_user)])

    @router.post("/create/embedding", response_model=InfoResponse)
    async def create_embedding(
        req: Annotated[CreateEmbeddingRequest, Body()], ctx: Ctx, user: User
    ) -> Any:
        params = CreateEmbeddingParams(**req.model_dump())
        job = TiService.of(ctx).submit_create(params, owner=user)  # 422 naming the field
        await wait_for_job(job)
        if job.abort_requested:
            return ended_badly(job)
        if job.result is None:
            return {"info": f"create embedding error: {job.error or 'interrupted'}"}
        return {"info": job.result.message}

    @router.post("/train/embedding", response_model=InfoResponse)
    async def train_embedding(
        req: Annotated[TrainEmbeddingRequest, Body()], ctx: Ctx, user: User
    ) -> Any:
        service = TiService.of(ctx)
        job = service.submit_train(req.params(), owner=user, job_id=req.id_task)
        await wait_for_job(job)
        if job.abort_requested:
            return ended_badly(job)
        if job.result is None:  # failed, or cancelled while waiting
            path = service.embedding_file(req.embedding_name) or ""
            error = job.error or "interrupted before training began"
            return {"info": f"train embedding complete: filename: {path} error: {error}"}
        return {"info": job.result.message}

    return router
