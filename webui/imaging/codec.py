"""Images in from the outside world: base64 and files to checked PIL images, and masks.

Every decoder names the field it reads in its error (`ImageInputError.field`), checks the
pixel count from the header before decoding the pixels (a small file can hold a huge
image), and loads the image fully so that a truncated file fails here, not in a job.
A URL sent instead of base64 is refused, never fetched; SVG and HTML are refused by name.
Masks are single-channel "L" images, white = repaint; `mask_from_upload` and
`mask_from_layers` turn an uploaded mask or the strokes of the browser's mask editor into
one and check it against the image: same size, not empty.

This module must never import torch, gradio or fastapi (Pillow and numpy only).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserError

MAX_PIXELS = 4096 * 4096  # one input image; matches params.MAX_SIDE squared
# any image this program decodes (PNG Info reads big upscaled outputs too); Pillow's own
# decompression-bomb limit is set to it by `limit_decoding`
MAX_DECODE_PIXELS = 8192 * 8192
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
_URL = re.compile(r"[a-z][a-z0-9+.-]*://", re.IGNORECASE)  # http://, https://, file://, ...


class ImageInputError(ValueError, UserError):
    """An input image or mask is unusable; `field` names where it came from."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def limit_decoding() -> None:
    """Pillow refuses images over 2 x MAX_DECODE_PIXELS (its default allows ~179 million),
    for every decoder in the process, Gradio's uploads included."""
    Image.MAX_IMAGE_PIXELS = MAX_DECODE_PIXELS


def decode_base64_image(
    data: str, field: str, max_pixels: int = MAX_PIXELS, *, load: bool = True
) -> Image.Image:
    """A loaded image from base64 text; a `data:image/...;base64,` prefix is allowed.

    URLs are refused, never fetched. With `load=False` only the header is read (the size
    is checked all the same): for reading metadata without decoding the pixels.
    """
    if not isinstance(data, str):
        raise ImageInputError(field, "expected a base64-encoded image")
    text = data.strip()
    if _URL.match(text):
        raise ImageInputError(
            field, "URLs are not fetched by this server: send the image itself, base64-encoded"
        )
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageInputError(field, "invalid base64") from None
    if not load:
        return _open_header(raw, field, max_pixels)
    return decode_bytes(raw, field, max_pixels)


def decode_bytes(raw: bytes, field: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    if not raw:
        raise ImageInputError(field, "empty image")
    return _open(io.BytesIO(raw), field, max_pixels)


def _open_header(raw: bytes, field: str, max_pixels: int) -> Image.Image:
    if not raw:
        raise ImageInputError(field, "empty image")
    handle = io.BytesIO(raw)
    try:
        image = Image.open(handle)
    except Image.DecompressionBombError:
        raise ImageInputError(field, "image is too large") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageInputError(field, _not_an_image(handle, exc)) from None
    check_pixels(image, field, max_pixels)
    return image


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
        raise ImageInputError(field, _not_an_image(handle, exc)) from None


def _not_an_image(handle, exc: Exception) -> str:
    """Why the bytes are not an image; SVG and HTML (markup a browser would run) by name."""
    try:
        handle.seek(0)
        head = handle.read(1024).lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    except (OSError, ValueError):
        head = b""
    if head.startswith(b"<"):
        kind = "SVG" if b"<svg" in head else "HTML/XML"
        return f"{kind} is not accepted as an image: send a PNG, JPEG or WebP image"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image (unknown format)"
    return f"not an image ({str(exc) or type(exc).__name__})"


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
