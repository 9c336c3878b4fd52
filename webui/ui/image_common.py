"""Widgets and the job loop shared by the img2img and Inpaint tabs.

`generation_settings` builds A1111's controls (sampler, steps, resize mode, "Resize to" /
"Resize by", batch, CFG, denoising strength, seed, clip skip) as named components;
`settings_kwargs` turns their values into `Img2ImgParams` fields. `output_panel` is the
right-hand column (progress, gallery, send-to buttons, infotext), and `stream_job` submits
a job for this browser and streams its progress and previews until it ends. Handlers take
their inputs by name (`Named`), never by position.

This module must never import torch or diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradio as gr

from ..core.params import MAX_SEED, ParamError
from ..core.params_img2img import size_for_scale
from ..core.samplers import SAMPLERS, SCHEDULE_TYPES
from ..imaging.codec import ImageInputError, check_pixels
from ..imaging.masks import RESIZE_MODES
from .common import (
    InputError,
    gallery_items,
    infotext_html,
    result_gallery,
)
from .extra_networks import job_warnings
from .icons import icon_button
from .job_stream import TabJobs, finished_status, follow_job, submit_job
from .send_to import SendSource, send_buttons

if TYPE_CHECKING:
    from ..context import AppContext

DEFAULT_SAMPLER = "DPM++ 2M" if "DPM++ 2M" in SAMPLERS else SAMPLERS[0]


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


def prompt_row(named: Named, prefix: str):
    """Prompt, negative prompt, Generate and Interrupt, as in txt2img."""
    with gr.Row():
        with gr.Column(scale=6):
            named.add(
                "prompt",
                gr.Textbox(
                    label="Prompt", lines=3, placeholder="Prompt", elem_id=f"{prefix}_prompt"
                ),
            )
            named.add(
                "negative",
                gr.Textbox(
                    label="Negative prompt",
                    lines=2,
                    placeholder="Negative prompt",
                    elem_id=f"{prefix}_neg_prompt",
                ),
            )
        with gr.Column(scale=1, min_width=160):
            generate = gr.Button("Generate", variant="primary", elem_id=f"{prefix}_generate")
            interrupt = gr.Button("Interrupt", variant="stop", elem_id=f"{prefix}_interrupt")
    return generate, interrupt


def generation_settings(named: Named, prefix: str, *, denoising: float = 0.75) -> None:
    """The shared controls, added to `named` (see the module docstring)."""
    named.add(
        "resize_mode",
        gr.Radio(
            label="Resize mode",
            choices=list(RESIZE_MODES),
            value=RESIZE_MODES[0],
            type="index",
            elem_id=f"{prefix}_resize_mode",
        ),
    )
    with gr.Row():
        named.add(
            "sampler", gr.Dropdown(label="Sampling method", choices=SAMPLERS, value=DEFAULT_SAMPLER)
        )
        named.add(
            "schedule",
            gr.Dropdown(label="Schedule type", choices=SCHEDULE_TYPES, value="Automatic"),
        )
    named.add("steps", gr.Slider(label="Sampling steps", minimum=1, maximum=150, step=1, value=20))
    size_tab = named.add("size_tab", gr.State(0))
    with gr.Tabs():
        with gr.Tab("Resize to", id=f"{prefix}_resize_to") as to_tab:
            with gr.Row():
                named.add(
                    "width", gr.Slider(label="Width", minimum=64, maximum=2048, step=8, value=512)
                )
                named.add(
                    "height", gr.Slider(label="Height", minimum=64, maximum=2048, step=8, value=512)
                )
        with gr.Tab("Resize by", id=f"{prefix}_resize_by") as by_tab:
            named.add(
                "scale_by",
                gr.Slider(label="Scale", minimum=0.05, maximum=4.0, step=0.05, value=1.0),
            )
    to_tab.select(lambda: 0, outputs=size_tab, show_progress="hidden")
    by_tab.select(lambda: 1, outputs=size_tab, show_progress="hidden")
    with gr.Row():
        named.add(
            "batch_count", gr.Slider(label="Batch count", minimum=1, maximum=100, step=1, value=1)
        )
        named.add(
            "batch_size", gr.Slider(label="Batch size", minimum=1, maximum=8, step=1, value=1)
        )
    named.add("cfg", gr.Slider(label="CFG Scale", minimum=1, maximum=30, step=0.5, value=7))
    named.add(
        "denoising",
        gr.Slider(
            label="Denoising strength",
            minimum=0,
            maximum=1,
            step=0.01,
            value=denoising,
            elem_id=f"{prefix}_denoising",
        ),
    )
    with gr.Row():
        seed = named.add(
            "seed",
            gr.Number(label="Seed", value=-1, precision=0, minimum=-1, maximum=MAX_SEED, scale=4),
        )
        random_seed = icon_button("random", elem_id=f"{prefix}_random_seed")
    random_seed.click(lambda: -1, outputs=seed, show_progress="hidden")
    named.add("clip_skip", gr.Slider(label="Clip skip", minimum=1, maximum=12, step=1, value=1))


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


def settings_kwargs(v: dict, image_size: tuple[int, int] | None) -> dict:
    """Img2ImgParams fields from the generation settings' values."""
    if v["size_tab"] == 1:
        if image_size is None:
            raise InputError(
                "Resize by: upload an image first (the size is the image's times the scale)"
            )
        try:
            width, height = size_for_scale(image_size, float(v["scale_by"]))
        except ParamError as exc:
            raise InputError(str(exc)) from None
    else:
        width, height = whole(v["width"], "Width"), whole(v["height"], "Height")
    return dict(
        checkpoint=v["checkpoint"] or None,
        prompt=v["prompt"] or "",
        negative_prompt=v["negative"] or "",
        sampler_name=v["sampler"],
        scheduler=v["schedule"],
        steps=whole(v["steps"], "Sampling steps"),
        cfg_scale=float(v["cfg"]),
        width=width,
        height=height,
        seed=whole(-1 if v["seed"] is None else v["seed"], "Seed"),
        batch_count=whole(v["batch_count"], "Batch count"),
        batch_size=whole(v["batch_size"], "Batch size"),
        clip_skip=whole(v["clip_skip"], "Clip skip"),
        resize_mode=int(v["resize_mode"] or 0),
        denoising_strength=float(v["denoising"]),
    )


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
    send: SendSource

    @property
    def outputs(self) -> list:
        return [self.progress, self.gallery, self.info, self.infotexts]


def output_panel(prefix: str, *, send_targets=("img2img", "inpaint", "extras")) -> OutputPanel:
    progress = gr.HTML("", elem_id=f"{prefix}_progress")
    gallery = result_gallery("Output", f"{prefix}_gallery")
    infotexts = gr.State([])
    send = send_buttons(prefix, gallery, infotexts, send_targets)
    info = gr.HTML("", elem_id=f"{prefix}_infotext")

    def show_selected(texts: list[str], evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else 0
        return infotext_html(texts[index] if 0 <= index < len(texts) else "")

    gallery.select(show_selected, inputs=infotexts, outputs=info, show_progress="hidden")
    return OutputPanel(progress, gallery, info, infotexts, send)


async def stream_job(ctx: AppContext, request: gr.Request, tab_jobs: TabJobs, kind: str, params):
    """Submit a job for this browser; yield (progress, gallery, info, infotexts) updates."""
    job = submit_job(ctx, request, kind, params)
    async for update in follow_job(ctx, request, tab_jobs, job):
        job = update.finished
        if job is None:
            yield update.progress, update.gallery, gr.skip(), gr.skip()
            continue
        texts = [g.infotext for g in job.images]
        yield (
            finished_status(job, update.waiting) + job_warnings(job.result),
            gallery_items(job.images),
            infotext_html(texts[0] if texts else ""),
            texts,
        )
