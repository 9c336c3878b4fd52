"""Run upscalers: spandrel models (ESRGAN, Real-ESRGAN, SwinIR, DAT, ...) and Lanczos/Nearest.

`UpscalerCache` belongs to the job worker (the one owner of the accelerator); it keeps the
last used model in memory. Model passes are tiled: the image is cut into `tile`-pixel
squares, each run with `overlap` pixels of context on every side, and only the tile's own
area of the output is kept, so tiles join without seams and large images fit in memory.
With enough overlap for the model's receptive field the result equals an untiled run.

Scaling follows A1111: a model is run (at most 3 passes) until the image is at least the
wanted size, then Lanczos brings it to the exact size.

This module must never import a UI library. Model files are read with spandrel's
restricted unpickler or safetensors; a TorchScript `.pt` file is never executed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .upscaler_list import LANCZOS, NEAREST, NONE, UpscalerRef

log = logging.getLogger(__name__)

DEFAULT_TILE = 192  # A1111's ESRGAN_tile
DEFAULT_OVERLAP = 8  # A1111's ESRGAN_tile_overlap
MAX_MODEL_PASSES = 3
MAX_OUTPUT_PIXELS = 8192 * 8192


class UpscalerError(RuntimeError):
    """An upscaler model cannot be loaded or run; the message names the file."""


class UpscaleInterrupted(RuntimeError):
    """The job was interrupted between two tiles."""


class UpscalerCache:
    """Loaded upscaler models, most recent last; used by the worker thread only."""

    def __init__(self, device: str = "cpu", half: bool = False, keep: int = 1):
        self.device = device
        self.half = half
        self.keep = keep
        self._models: dict[str, object] = {}

    def load(self, path: str | Path):
        """The spandrel model descriptor of a file (cached)."""
        key = str(path)
        if key in self._models:
            self._models[key] = self._models.pop(key)  # most recent last
            return self._models[key]
        descriptor = _load_descriptor(Path(path))
        dtype = torch.float16 if self.half and descriptor.supports_half else torch.float32
        descriptor.to(self.device).eval()
        descriptor.to(dtype)
        while len(self._models) >= self.keep:
            self._models.pop(next(iter(self._models)))
        self._models[key] = descriptor
        log.info(
            "Loaded upscaler %s (%s, %dx)",
            Path(path).name,
            descriptor.architecture.name,
            descriptor.scale,
        )
        return descriptor

    def clear(self) -> None:
        self._models.clear()

    def upscale(
        self,
        image: Image.Image,
        scale: float,
        ref: UpscalerRef,
        *,
        tile: int = DEFAULT_TILE,
        overlap: int = DEFAULT_OVERLAP,
        should_stop: Callable[[], bool] | None = None,
    ) -> Image.Image:
        """`image` scaled by `scale` (size rounded to whole pixels) with one upscaler."""
        width = max(1, round(image.width * scale))
        height = max(1, round(image.height * scale))
        return self.resize(
            image, width, height, ref, tile=tile, overlap=overlap, should_stop=should_stop
        )

    def resize(
        self,
        image: Image.Image,
        width: int,
        height: int,
        ref: UpscalerRef,
        *,
        tile: int = DEFAULT_TILE,
        overlap: int = DEFAULT_OVERLAP,
        should_stop: Callable[[], bool] | None = None,
    ) -> Image.Image:
        """`image` at exactly width x height; a model runs only when enlarging."""
        check_output_size(width, height)
        image = image.convert("RGB")
        if ref.name == NONE or ref.name == LANCZOS or not ref.is_model:
            resample = Image.Resampling.NEAREST if ref.name == NEAREST else Image.Resampling.LANCZOS
            if ref.name not in (NONE, LANCZOS, NEAREST):
                raise UpscalerError(f"{ref.name} is not an image upscaler")
            return (
                image if image.size == (width, height) else image.resize((width, height), resample)
            )
        descriptor = self.load(ref.path)
        for _ in range(MAX_MODEL_PASSES):
            if image.width >= width and image.height >= height:
                break
            before = image.size
            image = run_tiled(descriptor, image, tile, overlap, should_stop)
            if image.size == before:  # a 1x model: more passes change nothing
                break
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.LANCZOS)
        return image


def check_output_size(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise ValueError(f"upscaled size must be at least 1x1, got {width}x{height}")
    if width * height > MAX_OUTPUT_PIXELS:
        raise ValueError(
            f"upscaled size {width}x{height} is over the limit of "
            f"{MAX_OUTPUT_PIXELS // 1_000_000} megapixels"
        )


def _load_descriptor(path: Path):
    import spandrel

    if not path.is_file():
        raise UpscalerError(f"{path.name}: file not found")
    loader = spandrel.ModelLoader()
    try:
        if path.suffix.lower() == ".pt":  # never torch.jit.load: read it as plain tensors
            state = torch.load(path, map_location="cpu", weights_only=True)
            descriptor = loader.load_from_state_dict(spandrel.canonicalize_state_dict(state))
        else:
            descriptor = loader.load_from_file(path)
    except spandrel.UnsupportedModelError:
        raise UpscalerError(f"{path.name}: not an upscaler architecture spandrel knows") from None
    except Exception as exc:
        raise UpscalerError(f"{path.name}: cannot be read: {exc}") from exc
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise UpscalerError(f"{path.name}: {descriptor.architecture.name} is not an image upscaler")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise UpscalerError(f"{path.name}: needs an RGB model (3 channels in and out)")
    return descriptor


def _to_tensor(pixels: np.ndarray, descriptor) -> torch.Tensor:
    param = next(descriptor.model.parameters())
    tensor = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None]
    return tensor.to(device=param.device, dtype=param.dtype) / 255.0


@torch.inference_mode()
def run_tiled(
    descriptor,
    image: Image.Image,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    should_stop: Callable[[], bool] | None = None,
) -> Image.Image:
    """One model pass over `image`, in tiles of `tile` px with `overlap` px of context.

    `tile` <= 0 runs the whole image at once.
    """
    pixels = np.array(image.convert("RGB"))  # a writable copy: torch shares its memory
    height, width = pixels.shape[:2]
    scale = descriptor.scale
    check_output_size(width * scale, height * scale)
    tile = tile if tile > 0 else max(width, height)
    overlap = max(0, overlap)
    out = np.empty((height * scale, width * scale, 3), dtype=np.uint8)
    for y0 in range(0, height, tile):
        for x0 in range(0, width, tile):
            if should_stop is not None and should_stop():
                raise UpscaleInterrupted("interrupted")
            y1, x1 = min(y0 + tile, height), min(x0 + tile, width)
            cy0, cx0 = max(0, y0 - overlap), max(0, x0 - overlap)
            cy1, cx1 = min(height, y1 + overlap), min(width, x1 + overlap)
            result = descriptor(_to_tensor(pixels[cy0:cy1, cx0:cx1], descriptor))
            core = result[
                0,
                :,
                (y0 - cy0) * scale : (y1 - cy0) * scale,
                (x0 - cx0) * scale : (x1 - cx0) * scale,
            ]
            core = (core.float().clamp(0, 1) * 255).round().to(torch.uint8)
            out[y0 * scale : y1 * scale, x0 * scale : x1 * scale] = (
                core.permute(1, 2, 0).cpu().numpy()
            )
    return Image.fromarray(out, "RGB")


def tile_count(width: int, height: int, tile: int) -> int:
    """How many tiles one pass over a width x height image takes."""
    if tile <= 0:
        return 1
    return math.ceil(width / tile) * math.ceil(height / tile)
