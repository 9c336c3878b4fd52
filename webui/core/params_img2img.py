"""The internal contract of img2img, inpainting, SD upscale, hires. fix and extras jobs.

Frozen dataclasses like `Txt2ImgParams`, validated the same way (`ParamError` naming
the field). `Img2ImgParams` extends `Txt2ImgParams` with the init images, resize mode,
denoising strength and the inpainting fields (A1111 names); `HiresParams` is what
`Txt2ImgParams.hires` holds; `ExtrasParams` is the Upscale tab. Images travel inside the
params as PIL images, already decoded and size-checked by `webui.imaging.codec`.

This module must never import torch, diffusers or a UI library.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..imaging.codec import MAX_PIXELS, ImageInputError, check_pixels, image_files, prepare_mask
from ..imaging.face_restorer_list import FaceRestorerRef
from ..imaging.upscaler_list import LATENT_MODES, NONE, UpscalerRef
from .params import MAX_SIDE, MAX_STEPS, ParamError, Txt2ImgParams, _require_int
from .sampler_params import check_for_sampler
from .samplers import UnknownSamplerError, resolve
from .soft_inpainting import SoftInpainting

MAX_MASK_BLUR = 64
MAX_PADDING = 256
MAX_OUTPAINT = 1024
MAX_UPSCALE = 8.0
MAX_NOISE_MULTIPLIER = 1.5  # A1111's slider


def _require_float(obj, name: str, low: float, high: float) -> None:
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ParamError(name, f"must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise ParamError(name, f"must be between {low:g} and {high:g}, got {value:g}")


def _require_text(obj, name: str) -> None:
    value = getattr(obj, name)
    if not isinstance(value, str):
        raise ParamError(name, "must be text")
    if "\x00" in value:
        raise ParamError(name, "must not contain NUL characters")


def round_to_8(value: float) -> int:
    """The nearest multiple of 8 that is at least 64 (a size the models can take)."""
    return max(64, int(round(value / 8)) * 8)


def size_for_scale(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """A1111's "Resize by": the image size times `scale`, as multiples of 8."""
    if not math.isfinite(scale) or scale <= 0:
        raise ParamError("scale_by", f"must be a positive number, got {scale}")
    return round_to_8(size[0] * scale), round_to_8(size[1] * scale)


@dataclass(frozen=True)
class HiresSize:
    """Where hires. fix upscales to (width x height), and the size it then crops the
    centre to (A1111 trims latents when both resize sides are given)."""

    width: int
    height: int
    crop_width: int
    crop_height: int

    def latent_box(self, factor: int) -> tuple[int, int, int, int, int, int]:
        """(latent height, latent width, top, bottom, left, right) trims, A1111's way."""
        trim_x = (self.width - self.crop_width) // factor
        trim_y = (self.height - self.crop_height) // factor
        height, width = self.height // factor, self.width // factor
        return (
            height,
            width,
            trim_y // 2,
            height - (trim_y + 1) // 2,
            trim_x // 2,
            width - (trim_x + 1) // 2,
        )

    @property
    def final(self) -> tuple[int, int]:
        """The output size with real models (8 pixels per latent pixel)."""
        _, _, top, bottom, left, right = self.latent_box(8)
        return (right - left) * 8, (bottom - top) * 8


@dataclass(frozen=True)
class HiresParams:
    """Hires. fix: a second img2img pass over the upscaled txt2img result."""

    scale: float = 2.0  # A1111 hr_scale; used when resize_x and resize_y are 0
    resize_x: int = 0
    resize_y: int = 0
    upscaler: UpscalerRef = UpscalerRef("Latent")
    steps: int = 0  # 0: as many as the first pass
    denoising_strength: float = 0.7
    sampler_name: str | None = None  # None: the first pass's sampler
    scheduler: str | None = None
    prompt: str = ""  # "": the first pass's prompt
    negative_prompt: str = ""
    firstpass_image: Any = None  # PIL image: the first pass, not sampled (A1111 1.7)
    checkpoint: str | None = None  # A1111 hr_checkpoint_name; None: the first pass's

    def size(self, width: int, height: int) -> HiresSize:
        rx, ry = self.resize_x, self.resize_y
        if rx == 0 and ry == 0:
            to_x, to_y = int(width * self.scale), int(height * self.scale)
            return HiresSize(to_x, to_y, to_x, to_y)
        if ry == 0:
            return HiresSize(rx, rx * height // width, rx, rx * height // width)
        if rx == 0:
            return HiresSize(ry * width // height, ry, ry * width // height, ry)
        if width / height < rx / ry:
            to_x, to_y = rx, rx * height // width
        else:
            to_x, to_y = ry * width // height, ry
        return HiresSize(to_x, to_y, rx, ry)

    def check(self, base: Txt2ImgParams) -> None:
        """Validate against the first pass; raise ParamError with an hr_* field name."""
        for name, value in (("hr_resize_x", self.resize_x), ("hr_resize_y", self.resize_y)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ParamError(name, f"must be a whole number, got {value!r}")
            if value and not 64 <= value <= MAX_SIDE:
                raise ParamError(name, f"must be 0 or between 64 and {MAX_SIDE}, got {value}")
        try:
            _require_float(self, "scale", 1.0, MAX_UPSCALE)
            _require_int(self, "steps", 0, MAX_STEPS)
            _require_float(self, "denoising_strength", 0.0, 1.0)
            _require_text(self, "prompt")
            _require_text(self, "negative_prompt")
        except ParamError as exc:
            raise ParamError(_HR_FIELDS[exc.field], exc.message) from None
        size = self.size(base.width, base.height)
        final = size.final
        if min(final) < 64 or max(size.width, size.height, *final) > MAX_SIDE:
            field = "hr_scale" if not (self.resize_x or self.resize_y) else "hr_resize_x"
            raise ParamError(
                field, f"hires. fix size {size.width}x{size.height} is outside 64..{MAX_SIDE}"
            )
        if not isinstance(self.upscaler, UpscalerRef) or not (
            self.upscaler.is_latent
            or self.upscaler.is_model
            or self.upscaler.name in (NONE, "Lanczos", "Nearest")
        ):
            raise ParamError("hr_upscaler", f"unknown upscaler {self.upscaler!r}")
        try:
            choice = resolve(
                self.sampler_name or base.sampler_name, self.scheduler or base.scheduler
            )
        except UnknownSamplerError as exc:
            raise ParamError("hr_sampler_name", str(exc)) from None
        steps = self.steps or base.steps
        if choice.max_steps is not None and steps > choice.max_steps:
            raise ParamError(
                "hr_second_pass_steps",
                f"{choice.sampler} allows at most {choice.max_steps} steps",
            )
        check_for_sampler(choice.sampler, base)  # the second pass uses eta, s_churn, ... too
        if self.firstpass_image is not None:
            if not isinstance(self.firstpass_image, Image.Image):
                raise ParamError("firstpass_image", "is not an image")
            try:
                check_pixels(self.firstpass_image, "firstpass_image", MAX_PIXELS)
            except ImageInputError as exc:
                raise ParamError(exc.field, exc.message) from None


_HR_FIELDS = {
    "scale": "hr_scale",
    "steps": "hr_second_pass_steps",
    "prompt": "hr_prompt",
    "denoising_strength": "denoising_strength",
    "negative_prompt": "hr_negative_prompt",
}


@dataclass(frozen=True)
class SDUpscaleParams:
    """A1111's SD upscale script: upscale, then img2img in overlapping tiles."""

    upscaler: UpscalerRef = UpscalerRef("Lanczos")
    scale: float = 2.0
    overlap: int = 64


@dataclass(frozen=True)
class Img2ImgParams(Txt2ImgParams):
    """img2img and inpainting. `width`/`height` are the processing size."""

    init_images: tuple[Any, ...] = ()  # PIL images
    resize_mode: int = 0  # 0 just resize, 1 crop and resize, 2 resize and fill, 3 latent
    denoising_strength: float = 0.75
    mask: Any = None  # PIL "L" image, white = repaint; None = plain img2img
    # A1111's latent_mask: the mask of the per-step latent blending (and latent masked
    # content); `mask` still makes the final composite. None: `mask` for both
    latent_mask: Any = None
    soft_inpainting: SoftInpainting | None = None  # A1111's Soft Inpainting; None: off
    # A1111's mask_round (API): False blends every step by the blurred latent mask as it
    # is, not rounded to 0/1 (soft inpainting never rounds)
    mask_round: bool = True
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    inpainting_fill: int = 1  # 0 fill, 1 original, 2 latent noise, 3 latent nothing
    inpaint_full_res: bool = False  # "Only masked"
    inpaint_full_res_padding: int = 32
    inpainting_mask_invert: bool = False
    initial_noise_multiplier: float | None = None  # None: the job's option (A1111's)
    outpaint: tuple[int, int, int, int] = (0, 0, 0, 0)  # pixels left, right, up, down
    sd_upscale: SDUpscaleParams | None = None
    # A1111's Batch tab: every image of a folder instead of init_images
    batch_input_dir: str = ""
    batch_output_dir: str = ""  # "": outputs/img2img-images
    batch_mask_dir: str = ""  # a mask per image (same file stem), or one mask for all

    def validated(self) -> Img2ImgParams:
        super().validated()
        if self.hires is not None:
            raise ParamError("enable_hr", "hires. fix is for txt2img; use img2img's own size")
        if self.refiner_checkpoint and (self.mask is not None or self.batch_mask_dir):
            raise ParamError("refiner_checkpoint", "the refiner does not inpaint: no mask with it")
        if self.batch_input_dir or self.batch_output_dir or self.batch_mask_dir:
            return self._check_batch()
        if not self.init_images:
            raise ParamError("init_images", "no init image: upload an image")
        for i, image in enumerate(self.init_images):
            if not isinstance(image, Image.Image):
                raise ParamError("init_images", f"image {i + 1} is not an image")
            self._checked(check_pixels, image, "init_images")
        _require_int(self, "resize_mode", 0, 3)
        _require_float(self, "denoising_strength", 0.0, 1.0)
        _require_int(self, "mask_blur_x", 0, MAX_MASK_BLUR)
        _require_int(self, "mask_blur_y", 0, MAX_MASK_BLUR)
        _require_int(self, "inpainting_fill", 0, 3)
        _require_int(self, "inpaint_full_res_padding", 0, MAX_PADDING)
        self._check_noise_multiplier()
        self._check_outpaint()
        if self.mask is not None:
            self._check_mask()
        if self.latent_mask is not None:
            self._check_latent_mask()
        if self.soft_inpainting is not None:
            self._check_soft_inpainting()
        if self.sd_upscale is not None:
            self._check_sd_upscale()
        return self

    def _check_batch(self) -> Img2ImgParams:
        for name in ("batch_input_dir", "batch_output_dir", "batch_mask_dir"):
            _require_text(self, name)
        own_masks = self.mask is not None or self.latent_mask is not None
        if own_masks or self.sd_upscale is not None or any(self.outpaint):
            raise ParamError(
                "batch_input_dir", "a batch folder takes masks from its mask folder only"
            )
        _require_int(self, "resize_mode", 0, 3)
        _require_float(self, "denoising_strength", 0.0, 1.0)
        _require_int(self, "inpainting_fill", 0, 3)
        _require_int(self, "mask_blur_x", 0, MAX_MASK_BLUR)
        _require_int(self, "mask_blur_y", 0, MAX_MASK_BLUR)
        _require_int(self, "inpaint_full_res_padding", 0, MAX_PADDING)
        self._check_noise_multiplier()
        if self.soft_inpainting is not None and not self.batch_mask_dir.strip():
            raise ParamError("soft_inpainting", "soft inpainting needs a mask folder")
        try:
            if self.soft_inpainting is not None:
                self.soft_inpainting.validated()
        except ValueError as exc:
            raise ParamError("soft_inpainting", str(exc)) from None
        try:
            image_files(self.batch_input_dir, "batch_input_dir")
            if self.batch_mask_dir.strip():
                image_files(self.batch_mask_dir, "batch_mask_dir")
        except ImageInputError as exc:
            raise ParamError(exc.field, exc.message) from None
        if self.batch_output_dir.strip() and Path(self.batch_output_dir).expanduser().is_file():
            raise ParamError("batch_output_dir", f"{self.batch_output_dir} is a file, not a folder")
        return self

    def _check_noise_multiplier(self) -> None:
        if self.initial_noise_multiplier is not None:
            _require_float(self, "initial_noise_multiplier", 0.0, MAX_NOISE_MULTIPLIER)

    def _checked(self, check, image, field):
        try:
            check(image, field, MAX_PIXELS)
        except ImageInputError as exc:
            raise ParamError(exc.field, exc.message) from None

    def _check_outpaint(self) -> None:
        values = self.outpaint
        if len(values) != 4 or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise ParamError("outpaint", "expected four whole numbers: left, right, up, down")
        if any(not 0 <= v <= MAX_OUTPAINT for v in values):
            raise ParamError("outpaint", f"each side must be between 0 and {MAX_OUTPAINT} pixels")
        first = self.init_images[0]
        width = first.width + values[0] + values[1]
        height = first.height + values[2] + values[3]
        if width > MAX_SIDE or height > MAX_SIDE:
            raise ParamError("outpaint", f"the canvas {width}x{height} is over {MAX_SIDE} pixels")

    def _check_mask(self) -> None:
        if not isinstance(self.mask, Image.Image):
            raise ParamError("mask", "is not an image")
        for image in self.init_images:
            if image.size != self.mask.size:
                raise ParamError(
                    "mask",
                    f"mask is {self.mask.width}x{self.mask.height} but the image is "
                    f"{image.width}x{image.height}; they must be the same size",
                )
        if not any(self.outpaint):
            try:
                prepare_mask(self.mask, invert=self.inpainting_mask_invert)
            except ImageInputError as exc:
                raise ParamError(exc.field, exc.message) from None
        if self.sd_upscale is not None:
            raise ParamError("script_name", "SD upscale works on whole images, not with a mask")

    def _check_latent_mask(self) -> None:
        if self.mask is None:
            raise ParamError("latent_mask", "a latent mask needs a mask (it is for inpainting)")
        if not isinstance(self.latent_mask, Image.Image):
            raise ParamError("latent_mask", "is not an image")
        if self.latent_mask.size != self.init_images[0].size:
            raise ParamError(
                "latent_mask",
                f"latent mask is {self.latent_mask.width}x{self.latent_mask.height} but the "
                f"image is {self.init_images[0].width}x{self.init_images[0].height}",
            )

    def _check_soft_inpainting(self) -> None:
        if not isinstance(self.soft_inpainting, SoftInpainting):
            raise ParamError("soft_inpainting", "expected soft inpainting settings")
        if self.mask is None and not any(self.outpaint):
            raise ParamError("soft_inpainting", "soft inpainting needs a mask (it is inpainting)")
        try:
            self.soft_inpainting.validated()
        except ValueError as exc:
            raise ParamError("soft_inpainting", str(exc)) from None

    def _check_sd_upscale(self) -> None:
        sd = self.sd_upscale
        if not isinstance(sd.upscaler, UpscalerRef) or sd.upscaler.is_latent:
            raise ParamError("sd_upscale_upscaler", "choose an image upscaler (not a latent mode)")
        _require_float(sd, "scale", 1.0, MAX_UPSCALE)
        _require_int(sd, "overlap", 0, min(self.width, self.height) - 8)
        first = self.init_images[0]
        width, height = int(first.width * sd.scale), int(first.height * sd.scale)
        if width < self.width or height < self.height:
            raise ParamError(
                "sd_upscale_scale",
                f"the upscaled image ({width}x{height}) is smaller than one tile "
                f"({self.width}x{self.height}): raise the scale or lower Width/Height",
            )


@dataclass(frozen=True)
class ExtrasParams:
    """The Upscale tab (A1111 "Extras"): one or more images through one or two upscalers."""

    images: tuple[tuple[Any, str], ...] = ()  # (PIL image, source name)
    resize_mode: int = 0  # 0 scale by, 1 scale to
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: UpscalerRef = UpscalerRef(NONE)
    upscaler_2: UpscalerRef = UpscalerRef(NONE)
    extras_upscaler_2_visibility: float = 0.0
    tile: int = 192
    tile_overlap: int = 8
    output_dir: str = ""  # "": outputs/extras-images
    save_images: bool = True
    # face restoration after the upscalers (A1111's order: GFPGAN, then CodeFormer)
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0  # 0 = strongest effect, 1 = weakest
    gfpgan: FaceRestorerRef | None = None  # resolved by the service when visibility > 0
    codeformer: FaceRestorerRef | None = None

    def validated(self) -> ExtrasParams:
        if not self.images:
            raise ParamError("image", "no image: upload an image")
        for image, _name in self.images:
            if not isinstance(image, Image.Image):
                raise ParamError("image", "is not an image")
        _require_int(self, "resize_mode", 0, 1)
        _require_float(self, "upscaling_resize", 1.0, MAX_UPSCALE)
        _require_int(self, "upscaling_resize_w", 1, 4 * MAX_SIDE)
        _require_int(self, "upscaling_resize_h", 1, 4 * MAX_SIDE)
        _require_float(self, "extras_upscaler_2_visibility", 0.0, 1.0)
        _require_int(self, "tile", 0, 2048)
        _require_int(self, "tile_overlap", 0, 256)
        for name in ("upscaler_1", "upscaler_2"):
            ref = getattr(self, name)
            if not isinstance(ref, UpscalerRef) or ref.name in LATENT_MODES:
                raise ParamError(name, "latent upscalers work only in hires. fix")
        if self.upscaler_1.name == NONE and not self.restores_faces:
            raise ParamError("upscaler_1", "choose an upscaler")
        _require_text(self, "output_dir")
        for name in ("gfpgan_visibility", "codeformer_visibility", "codeformer_weight"):
            _require_float(self, name, 0.0, 1.0)
        for name in ("gfpgan", "codeformer"):  # the service resolves them (their files)
            if not isinstance(getattr(self, name), FaceRestorerRef | None):
                raise ParamError(f"{name}_visibility", f"no {name} model was chosen")
        return self

    @property
    def restores_faces(self) -> bool:
        visible = (self.gfpgan_visibility, self.codeformer_visibility)
        return any(isinstance(v, int | float) and v > 0 for v in visible)
