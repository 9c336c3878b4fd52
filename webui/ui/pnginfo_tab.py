"""The PNG Info tab: drop any image, read its generation parameters, send them on.

Reads the A1111 infotext from the PNG `parameters` chunk or the JPEG/WebP EXIF
UserComment (`webui.imaging.infotext`), and, for images from other tools, any other text
item that holds an A1111-style parameter line. Shows it with the image's other metadata;
the "Send to" buttons fill every control of txt2img / img2img / inpaint, checkpoint
included (`webui.ui.paste`), and send the image along to img2img and inpaint.

This module must never import torch or diffusers.
"""

from __future__ import annotations

import html
import logging
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image, UnidentifiedImageError

from ..imaging.infotext import find_params, read_infotext_from_image
from .common import InputError
from .paste import TARGETS, send_to_buttons

if TYPE_CHECKING:
    from ..context import AppContext

log = logging.getLogger(__name__)

MAX_ITEM_CHARS = 2000
_SKIPPED_ITEMS = {"parameters", "exif", "icc_profile", "dpi", "xmp", "transparency"}


def read_any_infotext(image: Image.Image) -> str | None:
    """A1111 infotext from the usual places, else from any text item that carries an
    A1111-style parameter line (images written by other tools)."""
    text = read_infotext_from_image(image)
    if text:
        return text
    items = dict(getattr(image, "info", None) or {})
    try:
        items.update(getattr(image, "text", None) or {})  # PNG chunks after the image data
    except Exception:  # a damaged chunk: keep what we have
        log.debug("could not read text chunks", exc_info=True)
    for key, value in items.items():
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if isinstance(value, str) and key not in _SKIPPED_ITEMS:
            last = value.strip().split("\n")[-1]
            if len(find_params(last)) >= 3:
                return value
    return None


def describe(path: str | None) -> tuple[str, str]:
    """(HTML to show, the raw infotext) for an uploaded file."""
    if not path:
        return "", ""
    try:
        with Image.open(path) as image:
            image.load()
            text = read_any_infotext(image) or ""
            items = _other_items(image)
            size, mode, fmt = image.size, image.mode, image.format
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise InputError(f"Not an image: {exc}") from exc
    parts = [f'<p class="pnginfo-size">{fmt} · {size[0]}x{size[1]} · {mode}</p>']
    if text:
        parts.append("<h4>parameters</h4>")
        parts.append(
            f'<pre class="infotext" aria-label="Generation parameters">{html.escape(text)}</pre>'
        )
    else:
        parts.append('<p class="pnginfo-none">No generation parameters in this image.</p>')
    for key, value in items.items():
        parts.append(f"<h4>{html.escape(key)}</h4>")
        parts.append(f'<pre class="infotext">{html.escape(value)}</pre>')
    return "\n".join(parts), text


def _other_items(image: Image.Image) -> dict[str, str]:
    out = {}
    for key, value in (image.info or {}).items():
        if key in _SKIPPED_ITEMS:
            continue
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if isinstance(value, str | int | float):
            text = str(value)
            out[str(key)] = text if len(text) <= MAX_ITEM_CHARS else text[:MAX_ITEM_CHARS] + "…"
    return out


def build_pnginfo_tab(ctx: AppContext) -> dict[str, Any]:
    with gr.Row():
        with gr.Column(scale=1):
            image = gr.Image(label="Source", type="filepath", image_mode=None,
                             sources=["upload", "clipboard"], height=420,
                             elem_id="pnginfo_image_source")  # fmt: skip
        with gr.Column(scale=1):
            shown = gr.HTML("", elem_id="pnginfo_html")
            raw = gr.Textbox(visible=False, elem_id="pnginfo_infotext_source")
            buttons = send_to_buttons("pnginfo", raw, TARGETS)
    image.change(describe, inputs=image, outputs=[shown, raw], show_progress="hidden")
    return {"image": image, "html": shown, "infotext": raw, "buttons": buttons}
