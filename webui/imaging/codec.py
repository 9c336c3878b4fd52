"""Images in from the outside world: base64 and files to checked PIL images, and masks.

Every decoder names the field it reads in its error (`ImageInputError.field`), checks the
pixel count from the header before decoding the pixels (a small file can hold a huge
image), and loads the image fully so that a truncated file fails here, not in a job.
Masks are single-channel "L" images, white = repaint; `mask_from_upload` and
`mask_from_layers` turn an uploaded mask or the strokes of the browser's mask editor into
one and check it against the image: same size, not empty.

This module must never import torch, gradio or fastapi (Pillow and numpy only).
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 4096 * 4096  # one input image; matches params.MAX_SIDE squared
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


class ImageInputError(ValueError):
    """An input image or mask is unusable; `field` names where it came from."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def decode_base64_image(data: str, field: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A loaded image from base64 text; a `data:image/...;base64,` prefix is allowed."""
    if not isinstance(data, str):
        raise ImageInputError(field, "expected a base64-encoded image")
    text = data.strip()
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageInputError(field, "invalid base64") from None
    return decode_bytes(raw, field, max_pixels)


def decode_bytes(raw: bytes, field: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    if not raw:
        raise ImageInputError(field, "empty image")
    return _open(io.BytesIO(raw), field, max_pixels)


def load_image_file(path: str | Path, field: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A loaded image from a file (an upload or a batch folder)."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return _open(handle, f"{field} ({path.name})", max_pixels)
    except OSError as exc:
        raise ImageInputError(field, f"cannot read {path.name}: {exc.strerror or exc}") from None


def _open(handle, field: str, max_pixels: int) -> Image.Image:
    try:
        with Image.open(handle) as image:
            check_pixels(image, field, max_pixels)
            image.load()
            loaded = image.copy()
            loaded.info = dict(image.info)
            return loaded
    except ImageInputError:
        raise
    except Image.DecompressionBombError:
        raise ImageInputError(field, "image is too large") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageInputError(field, f"not an image ({_reason(exc)})") from None


def _reason(exc: Exception) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "unknown format"
    return str(exc) or type(exc).__name__


def check_pixels(image: Image.Image, field: str, max_pixels: int = MAX_PIXELS) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageInputError(field, "image has no pixels")
    if width * height > max_pixels:
        raise ImageInputError(
            field,
            f"image is {width}x{height}, over the limit of {max_pixels:,} pixels "
            f"(e.g. {int(max_pixels**0.5)}x{int(max_pixels**0.5)})",
        )


def to_rgb(image: Image.Image, background=(255, 255, 255)) -> Image.Image:
    """RGB pixels; transparency is flattened onto `background` (A1111's flatten)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, background)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def mask_from_upload(mask: Image.Image, size: tuple[int, int], field: str = "mask") -> Image.Image:
    """An uploaded mask as "L" (white = repaint), checked against the image size.

    A mask with real transparency is read from its alpha channel (strokes on a clear
    layer); an opaque one from its brightness.
    """
    if mask.size != tuple(size):
        raise ImageInputError(
            field,
            f"mask is {mask.width}x{mask.height} but the image is {size[0]}x{size[1]}; "
            "they must be the same size",
        )
    if "A" in mask.getbands():
        alpha = mask.getchannel("A")
        if alpha.getextrema()[0] < 255:
            return alpha
    return mask.convert("L")


def mask_from_layers(
    layers: Iterable[Image.Image | None], size: tuple[int, int], field: str = "mask"
) -> Image.Image | None:
    """The strokes of the mask editor's layers as one "L" mask; None when nothing is drawn."""
    combined = None
    for layer in layers:
        if layer is None:
            continue
        if layer.size != tuple(size):
            raise ImageInputError(field, "the mask layer is not the size of the image")
        alpha = np.asarray(layer.convert("RGBA").getchannel("A")) > 0
        combined = alpha if combined is None else (combined | alpha)
    if combined is None or not combined.any():
        return None
    return Image.fromarray(combined.astype(np.uint8) * 255, "L")


def prepare_mask(mask: Image.Image, *, invert: bool, field: str = "mask") -> Image.Image:
    """Invert if asked, then refuse a mask that selects nothing."""
    mask = mask.convert("L")
    if invert:
        mask = ImageOps.invert(mask)
    if mask.getextrema()[1] == 0:
        raise ImageInputError(
            field, "mask is empty: paint the area to change (white), or upload a mask"
        )
    return mask


def image_files(folder: str | Path, field: str) -> list[Path]:
    """The image files directly inside a folder, sorted by name."""
    path = Path(folder).expanduser()
    if not str(folder).strip():
        raise ImageInputError(field, "no folder given")
    if not path.is_dir():
        raise ImageInputError(field, f"{path} is not a folder")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImageInputError(field, f"no images in {path}")
    return files
