"""Pydantic models of A1111's img2img, extras and upscaler endpoints: exact names, defaults.

As in `webui.api.schemas`, every request field may be null ("the default") and unknown
fields are accepted; `webui.api.mapping_images` turns these into internal params.

This module must never import torch, diffusers or the core: it only describes JSON.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .schemas import ProcessingAPIBase, TextToImageResponse


class StableDiffusionImg2ImgProcessingAPI(ProcessingAPIBase):
    """POST /sdapi/v1/img2img request (A1111 v1.10 field names and defaults)."""

    model_config = ConfigDict(extra="allow", title="StableDiffusionProcessingImg2Img")

    denoising_strength: float | None = 0.75
    init_images: list[str] | None = None
    resize_mode: int | None = 0
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int | None = 4
    mask_blur_y: int | None = 4
    mask_blur: int | None = None
    mask_round: bool | None = True
    inpainting_fill: int | None = 0
    inpaint_full_res: bool | None = True
    inpaint_full_res_padding: int | None = 0
    inpainting_mask_invert: int | None = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool | None = False


class ImageToImageResponse(TextToImageResponse):
    """POST /sdapi/v1/img2img response: the same shape as txt2img's."""


class ExtrasBaseRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    resize_mode: int | None = Field(
        0, description="0: scale by upscaling_resize, 1: scale to w x h"
    )
    show_extras_results: bool | None = True
    gfpgan_visibility: float | None = 0
    codeformer_visibility: float | None = 0
    codeformer_weight: float | None = 0
    upscaling_resize: float | None = 2
    upscaling_resize_w: int | None = 512
    upscaling_resize_h: int | None = 512
    upscaling_crop: bool | None = True
    upscaler_1: str | None = "None"
    upscaler_2: str | None = "None"
    extras_upscaler_2_visibility: float | None = 0
    upscale_first: bool | None = False


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    image: str | None = Field("", description="base64 image, a data: URL prefix is allowed")


class FileData(BaseModel):
    data: str = Field(description="base64 image")
    name: str = Field("", description="file name")


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    imageList: list[FileData] = Field(default_factory=list)  # noqa: N815 (A1111's name)


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str | None = None


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class FaceRestorerItem(BaseModel):
    name: str
    cmd_dir: str | None = None


class LatentUpscalerModeItem(BaseModel):
    name: str
