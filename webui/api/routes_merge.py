"""The merge routes: A1111's Checkpoint Merger and a LoRA merge as API calls.

A1111 has no merge route; these accept the fields of its Checkpoint Merger tab under
their names (`run_modelmerger`'s arguments):

- `POST /webui/v1/merge`: primary/secondary/tertiary_model_name, interp_method,
  multiplier, save_as_half, custom_name, checkpoint_format, config_source (A1111's index
  0-3 or its label), bake_in_vae, discard_weights, save_metadata, add_merge_recipe,
  copy_metadata_fields, metadata_json, and `overwrite` (default false: an existing file
  is a 422).
- `POST /webui/v1/merge/lora`: checkpoint, loras ([{"name", "weight"}] or "name:0.8,
  other:0.5"), custom_name, save_as_half, save_metadata, overwrite.

Both queue a "merge" job through `services.merge.MergeService` (bad fields, missing
models and mixed families: 422 naming the field) and, with `?wait=true` (the default),
answer when it ends: `{"job", "state", "info", "path", "title"}` (a failed job: 500 with
the reason); with `?wait=false` at once (202) with the job to follow at
`/webui/v1/jobs/{id}`. This module must never import torch or diffusers.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ..core.job import Job
from ..model_manager.merge_params import (
    CONFIG_SOURCES,
    CheckpointMergeParams,
    LoraMergeParams,
    parse_loras,
)
from ..services.errors import RequestError
from ..services.merge import MergeService
from .auth import api_user
from .deps import Ctx, User
from .routes_queue import PREFIX, ended_badly, wait_for_job


class MergeRequest(BaseModel):
    primary_model_name: str = Field(description="Primary model (A): a checkpoint title or name")
    secondary_model_name: str = ""
    tertiary_model_name: str = ""
    interp_method: str = "Weighted sum"
    multiplier: float = Field(0.3, description="M, between 0 and 1")
    save_as_half: bool = False
    custom_name: str = ""
    checkpoint_format: str = "safetensors"
    config_source: int | str = Field(0, description="0-3 or 'A, B or C', 'B', 'C', \"Don't\"")
    bake_in_vae: str = "None"
    discard_weights: str = ""
    save_metadata: bool = True
    add_merge_recipe: bool = True
    copy_metadata_fields: bool = True
    metadata_json: str = "{}"
    overwrite: bool = False

    def params(self) -> CheckpointMergeParams:
        fields = self.model_dump()
        source = fields["config_source"]
        if isinstance(source, int):
            if not 0 <= source < len(CONFIG_SOURCES):
                raise RequestError(("config_source",), "must be 0, 1, 2 or 3")
            fields["config_source"] = CONFIG_SOURCES[source]
        return CheckpointMergeParams(**fields)


class LoraWeight(BaseModel):
    name: str
    weight: float = 1.0


class LoraMergeRequest(BaseModel):
    checkpoint: str
    loras: list[LoraWeight] | str
    custom_name: str = ""
    save_as_half: bool = False
    save_metadata: bool = True
    overwrite: bool = False

    def params(self) -> LoraMergeParams:
        loras = self.loras
        pairs = parse_loras(loras) if isinstance(loras, str) else tuple((lo.name, lo.weight) for lo in loras)  # fmt: skip
        return LoraMergeParams(
            self.checkpoint, pairs, self.custom_name, self.save_as_half, self.save_metadata,
            self.overwrite,
        )  # fmt: skip


async def _answer(job: Job, wait: bool) -> Any:
    if not wait:
        return JSONResponse(status_code=202, content={"job": job.id, "state": job.state})
    await wait_for_job(job)
    failed = ended_badly(job)
    if failed is not None:
        return failed
    result = job.result
    return {"job": job.id, "state": job.state, "info": result.message, "path": result.path,
            "title": result.title}  # fmt: skip


def merge_router() -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["webui"], dependencies=[Depends(api_user)])

    @router.post("/merge")
    async def merge(req: Annotated[MergeRequest, Body()], ctx: Ctx, user: User,
                    wait: Annotated[bool, Query()] = True) -> Any:  # fmt: skip
        job = MergeService.of(ctx).submit_merge(req.params(), owner=user)  # 422/429
        return await _answer(job, wait)

    @router.post("/merge/lora")
    async def merge_lora(req: Annotated[LoraMergeRequest, Body()], ctx: Ctx, user: User,
                         wait: Annotated[bool, Query()] = True) -> Any:  # fmt: skip
        job = MergeService.of(ctx).submit_lora_merge(req.params(), owner=user)
        return await _answer(job, wait)

    return router
