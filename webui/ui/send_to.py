"""A1111's "Send to img2img / inpaint / Upscale" buttons under every result gallery.

`send_buttons` adds the buttons to a tab and remembers which gallery image is selected;
`connect_send_buttons` (called by `blocks.build_ui` once every tab exists) connects them
to the target tabs: the selected image goes into the target's image input (the inpaint
editor gets it as its background), the image's parameters fill the target's controls as
A1111 copies them (prompts, sampler, schedule, steps, CFG scale, seed, size, clip skip,
...: every field of the infotext the target tab has, through `paste.parameter_updates`),
and the target tab opens. The Upscale tab takes the image alone.

This module must never import torch or diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

from .common import InputError
from .paste import parameter_outputs, parameter_updates, tab_controls

if TYPE_CHECKING:
    from ..context import AppContext

LABELS = {"img2img": "Send to img2img", "inpaint": "Send to inpaint", "extras": "Send to Upscale"}


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
    controls: dict[str, Any] = field(default_factory=dict)  # label -> component (paste.py)

    @property
    def parameter_outputs(self) -> list[Any]:
        return parameter_outputs(self.controls) if self.controls else []


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


def wire_send_to(ctx, tabs, sources: list[SendSource], targets: dict[str, SendTarget]) -> None:
    for source in sources:
        for name, button in source.buttons.items():
            target = targets.get(name)
            if target is None:
                continue
            button.click(
                partial(_send, ctx, target),
                inputs=[source.gallery, source.selected, source.infotexts],
                outputs=[target.image, tabs, *target.parameter_outputs],
                show_progress="hidden",
            )


def _send(ctx, target: SendTarget, gallery_value, index, texts):
    if not gallery_value:
        raise InputError("Nothing to send: generate an image first")
    index = index if isinstance(index, int) and 0 <= index < len(gallery_value) else 0
    image = _image_of(gallery_value[index])
    value = {"background": image, "layers": [], "composite": image} if target.editor else image
    updates = [value, gr.Tabs(selected=target.tab_id)]
    outputs = target.parameter_outputs
    text = texts[index] if texts and index < len(texts) else ""
    if outputs and text:
        updates += parameter_updates(ctx, target.tab_id, target.controls, outputs, text)
    else:
        updates += [gr.skip()] * len(outputs)
    return updates


def _image_of(item) -> Image.Image:
    media = item[0] if isinstance(item, tuple | list) else item
    if isinstance(media, Image.Image):
        return media
    with Image.open(Path(media)) as image:
        image.load()
        return image.copy()


def connect_send_buttons(ctx: AppContext, demo, tabs, txt2img, img2img, inpaint, extras) -> None:
    """Wire every tab's send buttons to the img2img, Inpaint and Upscale tabs."""
    by_id = {b.id: b for b in demo.blocks.values() if isinstance(b, gr.Tab)}
    targets = {
        "img2img": SendTarget("img2img", img2img["image"], controls=tab_controls(by_id["img2img"])),
        "inpaint": SendTarget(
            "inpaint", inpaint["editor"], editor=True, controls=tab_controls(by_id["inpaint"])
        ),
        "extras": SendTarget("extras", extras.image),
    }
    sources = [tab.output.send for tab in (txt2img, img2img, inpaint, extras)]
    wire_send_to(ctx, tabs, sources, targets)
