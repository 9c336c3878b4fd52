"""A1111's "Send to img2img / inpaint / extras" buttons under every result gallery.

`send_buttons` adds the buttons to a tab and remembers which gallery image is selected;
`wire_send_to` (called by `blocks.build_ui` once every tab exists) connects them to the
target tabs: the selected image goes into the target's image input (the inpaint editor
gets it as its background), its prompt and negative prompt come along from the infotext,
and the target tab opens.

This module must never import torch or diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from ..imaging.infotext import parse_infotext

LABELS = {"img2img": "Send to img2img", "inpaint": "Send to inpaint", "extras": "Send to extras"}


@dataclass
class SendSource:
    gallery: Any
    infotexts: Any  # gr.State: infotext of every gallery image
    selected: Any  # gr.State: index of the selected image
    buttons: dict[str, Any] = field(default_factory=dict)


@dataclass
class SendTarget:
    tab_id: str
    image: Any  # gr.Image, or gr.ImageEditor when editor=True
    editor: bool = False
    prompt: Any = None
    negative: Any = None


def send_buttons(prefix: str, gallery, infotexts, targets=tuple(LABELS)) -> SendSource:
    selected = gr.State(0)
    with gr.Row(elem_id=f"{prefix}_send_row"):
        buttons = {
            name: gr.Button(LABELS[name], size="sm", elem_id=f"{prefix}_send_to_{name}")
            for name in targets
        }

    def remember(evt: gr.SelectData):
        return evt.index if isinstance(evt.index, int) else 0

    gallery.select(remember, outputs=selected, show_progress="hidden")
    gallery.change(lambda: 0, outputs=selected, show_progress="hidden")
    return SendSource(gallery, infotexts, selected, buttons)


def wire_send_to(tabs, sources: list[SendSource], targets: dict[str, SendTarget]) -> None:
    for source in sources:
        for name, button in source.buttons.items():
            target = targets.get(name)
            if target is None:
                continue
            outputs = [target.image, tabs]
            if target.prompt is not None:
                outputs += [target.prompt, target.negative]
            button.click(
                partial(_send, target),
                inputs=[source.gallery, source.selected, source.infotexts],
                outputs=outputs,
                show_progress="hidden",
            )


def _send(target: SendTarget, gallery_value, index, texts):
    if not gallery_value:
        raise gr.Error("Nothing to send: generate an image first")
    index = index if isinstance(index, int) and 0 <= index < len(gallery_value) else 0
    image = _image_of(gallery_value[index])
    value = {"background": image, "layers": [], "composite": image} if target.editor else image
    updates = [value, gr.Tabs(selected=target.tab_id)]
    if target.prompt is not None:
        text = texts[index] if texts and index < len(texts) else ""
        if text:
            fields = parse_infotext(text)
            updates += [fields.get("Prompt", ""), fields.get("Negative prompt", "")]
        else:
            updates += [gr.skip(), gr.skip()]
    return updates


def _image_of(item) -> Image.Image:
    media = item[0] if isinstance(item, tuple | list) else item
    if isinstance(media, Image.Image):
        return media
    with Image.open(Path(media)) as image:
        image.load()
        return image.copy()


def connect_send_buttons(tabs, txt2img_source: SendSource, img2img, inpaint, extras) -> None:
    """Wire every tab's send buttons to the img2img, Inpaint and Upscale tabs."""
    targets = {
        "img2img": SendTarget(
            "img2img", img2img.image, prompt=img2img.prompt, negative=img2img.negative
        ),
        "inpaint": SendTarget(
            "inpaint", inpaint.editor, editor=True, prompt=inpaint.prompt, negative=inpaint.negative
        ),
        "extras": SendTarget("extras", extras.image),
    }
    sources = [txt2img_source, img2img.output.send, inpaint.output.send, extras.output.send]
    wire_send_to(tabs, sources, targets)
