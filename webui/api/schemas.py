"""Pydantic models of the A1111-compatible REST API: exact A1111 field names and defaults.

Requests accept every field A1111's schema has (clients send all of them) and any extra
field; what does not apply is ignored by `webui.api.mapping`, which is the only module
that turns these models into internal params. Like A1111's generated models, every
request field may be sent as null, which means "the default".

This module must never import torch, diffusers or the core: it only describes JSON.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ProcessingAPIBase(BaseModel):
    """The fields txt2img and img2img requests share (A1111's StableDiffusionProcessing)."""

    model_config = ConfigDict(extra="allow")

    prompt: str | None = ""
    negative_prompt: str | None = ""
    styles: list[str] | None = None
    seed: int | None = -1
    subseed: int | None = -1
    subseed_strength: float | None = 0
    seed_resize_from_h: int | None = -1
    seed_resize_from_w: int | None = -1
    sampler_name: str | None = None
    scheduler: str | None = None
    batch_size: int | None = 1
    n_iter: int | None = 1
    steps: int | None = 50
    cfg_scale: float | None = 7.0
    width: int | None = 512
    height: int | None = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool | None = False
    do_not_save_grid: bool | None = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool | None = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool | None = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    force_task_id: str | None = None
    sampler_index: str | None = "Euler"
    script_name: str | None = None
    script_args: list[Any] | dict[str, Any] | None = Field(default_factory=list)  # dict: by name
    send_images: bool | None = True
    save_images: bool | None = False
    alwayson_scripts: dict[str, Any] | None = Field(default_factory=dict)
    infotext: str | None = None
    distilled_cfg_scale: float | None = 3.5  # Forge: FLUX's guidance ("Distilled CFG Scale")
    shift: float | None = None  # flow-matching shift: SD 3.5, FLUX.1, Z-Image (None: the model's)
    # SD 3.5's Skip Layer Guidance (diffusers' names; scale 0: off; layers "7,8,9" or a list)
    skip_layer_guidance_scale: float | None = 0.0
    skip_guidance_layers: list[int] | str | int | None = None  # None: 7, 8, 9 (ComfyUI's)
    skip_layer_guidance_start: float | None = 0.01
    skip_layer_guidance_stop: float | None = 0.15


class StableDiffusionTxt2ImgProcessingAPI(ProcessingAPIBase):
    """POST /sdapi/v1/txt2img request (A1111 v1.10 field names and defaults)."""

    model_config = ConfigDict(extra="allow", title="StableDiffusionProcessingTxt2Img")

    enable_hr: bool | None = False
    firstphase_width: int | None = 0
    firstphase_height: int | None = 0
    hr_scale: float | None = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int | None = 0
    hr_resize_x: int | None = 0
    hr_resize_y: int | None = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str | None = ""
    hr_negative_prompt: str | None = ""


class TextToImageResponse(BaseModel):
    images: list[str] | None = Field(default=None, description="base64 PNG images, no data: prefix")
    parameters: dict[str, Any]
    info: str = Field(description="JSON string with the generation info")


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressResponse(BaseModel):
    progress: float = Field(description="0..1 of the running job")
    eta_relative: float = Field(description="estimated seconds left")
    state: ProgressState
    current_image: str | None = Field(default=None, description="base64 PNG preview")
    textinfo: str | None = None


class PNGInfoRequest(BaseModel):
    image: str = Field(description="base64 image, a data: URL prefix is allowed")


class PNGInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float = -1
    need_inner_model: bool = False


class NotImplementedBody(BaseModel):
    detail: str
    feature: str
