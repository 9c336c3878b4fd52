"""The training routes: a LoRA trained on the queue, under kohya's argument names.

- `POST /webui/v1/train/lora`: kohya's `train_network.py` fields (`checkpoint`,
  `train_data_dir`, `output_name`, `network_dim`, `unet_lr`, ...; see `LoraTrainRequest`).
  The job is checked and queued by `services.training.TrainingService` (a bad field, a
  missing checkpoint, an empty folder, an unreadable image, a batch larger than the
  images: 422 naming the field) and the answer comes at once (202): `{"job", "state"}`.
  Progress, ETA and the loss line are at `/webui/v1/jobs/{id}` and in `/webui/v1/queue`;
  interrupting is `POST /webui/v1/jobs/{id}/interrupt` (the LoRA and resume state are
  saved where the run stands).
- `GET /webui/v1/train/lora/{job}`: the run's losses per step, sample images (paths),
  notes, and at the end the saved file and message.
- `GET /webui/v1/train/states`: saved states to resume from (`resume`).

This module must never import torch or diffusers.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ..core.train_params import LoraTrainParams
from ..services.training import TrainingService
from .auth import api_user
from .deps import Ctx, User
from .routes_queue import PREFIX

_DEFAULTS = LoraTrainParams("", "", "")


class LoraTrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt kohya name is a 422, not ignored

    checkpoint: str = Field(description="checkpoint title or name in models/Stable-diffusion")
    train_data_dir: str = Field(description="folder of images with same-name .txt captions; "
                                "N_name subfolders repeat N times")  # fmt: skip
    output_name: str = Field(description="models/Lora/<output_name>.safetensors")
    resolution: int = _DEFAULTS.resolution
    enable_bucket: bool = _DEFAULTS.enable_bucket
    network_dim: int = _DEFAULTS.network_dim
    network_alpha: float = _DEFAULTS.network_alpha
    conv_dim: int = Field(_DEFAULTS.conv_dim, description="LoCon rank of 3x3 convolutions; 0: off")
    conv_alpha: float = _DEFAULTS.conv_alpha
    unet_lr: float = _DEFAULTS.unet_lr
    text_encoder_lr: float = Field(_DEFAULTS.text_encoder_lr, description="0: not trained")
    lr_scheduler: str = _DEFAULTS.lr_scheduler
    lr_warmup_steps: int = _DEFAULTS.lr_warmup_steps
    lr_scheduler_num_cycles: int = _DEFAULTS.lr_scheduler_num_cycles
    lr_scheduler_power: float = _DEFAULTS.lr_scheduler_power
    optimizer_type: str = _DEFAULTS.optimizer_type
    max_train_epochs: int = _DEFAULTS.max_train_epochs
    max_train_steps: int = Field(_DEFAULTS.max_train_steps, description="0: the epochs decide")
    train_batch_size: int = _DEFAULTS.train_batch_size
    gradient_accumulation_steps: int = _DEFAULTS.gradient_accumulation_steps
    gradient_checkpointing: bool = _DEFAULTS.gradient_checkpointing
    mixed_precision: str = Field(_DEFAULTS.mixed_precision, description="no, fp16, bf16 (GPU)")
    save_precision: str = _DEFAULTS.save_precision
    caption_extension: str = _DEFAULTS.caption_extension
    caption_dropout_rate: float = _DEFAULTS.caption_dropout_rate
    shuffle_caption: bool = _DEFAULTS.shuffle_caption
    keep_tokens: int = _DEFAULTS.keep_tokens
    noise_offset: float = _DEFAULTS.noise_offset
    min_snr_gamma: float = Field(_DEFAULTS.min_snr_gamma, description="0: off")
    seed: int = _DEFAULTS.seed
    cache_latents: bool = _DEFAULTS.cache_latents
    save_every_n_epochs: int = _DEFAULTS.save_every_n_epochs
    sample_every_n_steps: int = _DEFAULTS.sample_every_n_steps
    sample_prompts: str = Field(_DEFAULTS.sample_prompts, description="one prompt per line")
    sample_steps: int = _DEFAULTS.sample_steps
    resume: str = Field(_DEFAULTS.resume, description="a saved state's name")
    overwrite: bool = _DEFAULTS.overwrite
    training_comment: str = _DEFAULTS.training_comment

    def params(self) -> LoraTrainParams:
        return LoraTrainParams(**self.model_dump())


def train_router() -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["webui"], dependencies=[Depends(api_user)])

    @router.post("/train/lora", status_code=202)
    def train_lora(req: Annotated[LoraTrainRequest, Body()], ctx: Ctx, user: User) -> Any:
        job = TrainingService.of(ctx).submit_lora(req.params(), owner=user)  # 422/429
        return JSONResponse(status_code=202, content={"job": job.id, "state": job.state})

    @router.get("/train/lora/{job_id}")
    def training_log(job_id: str, ctx: Ctx, user: User) -> Any:
        job = ctx.jobs.get(job_id)
        if job is None or job.owner != user or job.kind != "train_lora":
            raise HTTPException(404, f"no training job {job_id}")
        result = job.result
        log = getattr(result, "log", None) or job.progress.details
        return {
            "job": job.id, "state": job.state, "error": job.error,
            "losses": [list(x) for x in getattr(log, "losses", [])],
            "samples": list(getattr(log, "samples", [])),
            "notes": list(getattr(log, "notes", [])),
            "path": getattr(result, "path", None), "info": getattr(result, "message", None),
        }  # fmt: skip

    @router.get("/train/states")
    def states(ctx: Ctx) -> list[str]:
        return TrainingService.of(ctx).saved_states()

    return router
