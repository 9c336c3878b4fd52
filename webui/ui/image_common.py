"""Pieces the tabs share: named controls, checks of entered values, the output column.

`Named` holds a tab's components by name (handlers read values by name, never by
position); `whole`, `checked_image` and `require_server_folders` turn bad input into a
message; `output_panel` is the right-hand column (progress, gallery, send-to buttons, Save and
Zip (`save_files`), infotext) and `stream_job` streams a submitted job of this browser into that column
(the Upscale tab; the generation tabs use `generation_tab`).

This module must never import torch or diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradio as gr

from ..imaging.codec import ImageInputError, check_pixels
from .common import (
    InputError,
    gallery_items,
    infotext_html,
    result_gallery,
)
from .extra_networks import job_warnings
from .job_stream import TabJobs, finished_status, follow_job
from .save_files import save_images, zip_images
from .send_to import SendSource, send_buttons

if TYPE_CHECKING:
    from ..context import AppContext


@dataclass
class Named:
    """Components with names: `inputs` for an event, `values(*args)` back to a dict."""

    components: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, component):
        self.components[name] = component
        return component

    def __getitem__(self, name: str):
        return self.components[name]

    @property
    def inputs(self) -> list:
        return list(self.components.values())

    def values(self, args) -> dict[str, Any]:
        return dict(zip(self.components, args, strict=True))


def require_server_folders(allowed: bool) -> None:
    """Batch jobs on server folders (img2img Batch, Upscale "Batch from Directory") are
    refused when `Flags.server_folders_allowed` is off, also for events sent directly."""
    if not allowed:
        raise InputError(
            "Batch from server folders is off while the UI is reachable from the "
            "network (--listen); --enable-insecure-extension-access allows it."
        )


def whole(value, name: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected a number, got {value!r}") from None
    if not number.is_integer():
        raise InputError(f"{name}: expected a whole number, got {value}")
    return int(number)


def checked_image(image, field: str):
    """An uploaded PIL image within the pixel limit, else gr.Error."""
    if image is None:
        return None
    try:
        check_pixels(image, field)
    except ImageInputError as exc:
        raise InputError(str(exc)) from None
    return image


@dataclass
class OutputPanel:
    progress: Any
    gallery: Any
    info: Any
    infotexts: Any
    shown: Any  # gr.State: the finished job's images (set by the server, never the browser)
    send: SendSource

    @property
    def outputs(self) -> list:
        return [self.progress, self.gallery, self.info, self.infotexts, self.shown]


def output_panel(
    ctx: AppContext, prefix: str, *, send_targets=("img2img", "inpaint", "extras")
) -> OutputPanel:
    progress = gr.HTML("", elem_id=f"{prefix}_progress")
    gallery = result_gallery("Output", f"{prefix}_gallery")
    infotexts = gr.State([])
    shown = gr.State([])
    send = send_buttons(prefix, gallery, infotexts, send_targets)
    _save_buttons(ctx, prefix, gallery, shown)
    info = gr.HTML("", elem_id=f"{prefix}_infotext")

    def show_selected(texts: list[str], evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else 0
        return infotext_html(texts[index] if 0 <= index < len(texts) else "")

    gallery.select(show_selected, inputs=infotexts, outputs=info, show_progress="hidden")
    return OutputPanel(progress, gallery, info, infotexts, shown, send)


def _save_buttons(ctx: AppContext, prefix: str, gallery, shown) -> None:
    """Save (the selected image, else all) and Zip (all), with a download of the result."""
    picked = gr.State(None)  # the selected image; None: none selected (Save saves all)
    with gr.Row(elem_id=f"{prefix}_save_row"):
        save = gr.Button("Save", size="sm", elem_id=f"{prefix}_save")
        zip_button = gr.Button("Zip", size="sm", elem_id=f"{prefix}_zip")
    download = gr.File(label="Download", file_count="multiple", interactive=False,
                       visible=False, elem_id=f"{prefix}_download")  # fmt: skip

    def remember(evt: gr.SelectData):
        return evt.index if isinstance(evt.index, int) else None

    def save_files(images: list, index: int | None):
        paths = save_images(ctx, images, index)
        gr.Info(f"Saved: {', '.join(p.name for p in paths)}")
        return gr.File(value=[str(p) for p in paths], visible=True)

    def zip_files(images: list):
        return gr.File(value=[str(zip_images(ctx, images))], visible=True)

    gallery.select(remember, outputs=picked, show_progress="hidden")
    gallery.change(lambda: None, outputs=picked, show_progress="hidden")
    save.click(save_files, inputs=[shown, picked], outputs=download, concurrency_limit=None)
    zip_button.click(zip_files, inputs=shown, outputs=download, concurrency_limit=None)


async def stream_job(ctx: AppContext, request: gr.Request, tab_jobs: TabJobs, job):
    """Yield (progress, gallery, info, infotexts, shown) updates of a submitted job of
    this page."""
    async for update in follow_job(ctx, request, tab_jobs, job):
        job = update.finished
        if job is None:
            yield update.progress, update.gallery, gr.skip(), gr.skip(), gr.skip()
            continue
        yield (finished_status(job, update.waiting) + job_warnings(job.result),
               *finished_outputs(job.images))  # fmt: skip


def finished_outputs(images: list[Any]) -> tuple[Any, str, list[str], list[Any]]:
    """Gallery, infotext, infotexts and the shown images of a finished job."""
    texts = [g.infotext for g in images]
    return gallery_items(images), infotext_html(texts[0] if texts else ""), texts, list(images)
