"""The "Hires. fix" section of the txt2img tab, with A1111's labels.

`add_hires_controls` adds the accordion (enable, upscaler, hires steps, denoising
strength, upscale by / resize width and height to, hires sampler, schedule, prompts and
checkpoint) to
a tab's named controls as hr_<name>; `hires_params(ctx, values)` turns the tab's values
into `HiresParams` (None when off).

This module must never import torch or diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from ..core.params_img2img import HiresParams
from ..core.samplers import SAMPLERS, SCHEDULE_TYPES
from ..services.upscalers import UnknownUpscalerError
from .icons import icon_button
from .image_common import Named, whole
from .refiner_controls import add_hires_checkpoint, hires_checkpoint

if TYPE_CHECKING:
    from ..context import AppContext

SAME_SAMPLER, SAME_SCHEDULE = "Use same sampler", "Use same scheduler"


def hires_params(ctx: AppContext, v: dict) -> HiresParams | None:
    """HiresParams from a tab's values by name (the hr_* controls); None when off;
    ValueError for a bad value."""
    if not v["hr_enable"]:
        return None
    try:
        upscaler = ctx.upscalers.resolve(v["hr_upscaler"], latent=True, field="Upscaler")
    except UnknownUpscalerError as exc:
        raise ValueError(str(exc)) from None
    sampler, schedule = v["hr_sampler"], v["hr_schedule"]
    return HiresParams(
        scale=float(v["hr_scale"]),
        resize_x=whole(v["hr_resize_x"], "Resize width to"),
        resize_y=whole(v["hr_resize_y"], "Resize height to"),
        upscaler=upscaler,
        steps=whole(v["hr_steps"], "Hires steps"),
        denoising_strength=float(v["hr_denoising"]),
        sampler_name=None if sampler in (None, SAME_SAMPLER) else sampler,
        scheduler=None if schedule in (None, SAME_SCHEDULE) else schedule,
        prompt=v["hr_prompt"] or "",
        negative_prompt=v["hr_negative"] or "",
        checkpoint=hires_checkpoint(v),
    )


def add_hires_controls(ctx: AppContext, named: Named) -> None:
    """The Hires. fix accordion; its controls go into the tab's `named` as hr_<name>."""
    catalog = ctx.upscalers
    with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hires_fix"):
        named.add(
            "hr_enable",
            gr.Checkbox(label="Enable hires. fix", value=False, elem_id="txt2img_enable_hr"),
        )
        with gr.Row():
            upscaler = named.add(
                "hr_upscaler",
                gr.Dropdown(
                    label="Upscaler",
                    choices=catalog.names(latent=True),
                    value="Latent",
                    scale=3,
                    elem_id="txt2img_hr_upscaler",
                ),
            )
            refresh = icon_button("refresh", elem_id="txt2img_hr_refresh")
        with gr.Row():
            named.add(
                "hr_steps",
                gr.Slider(label="Hires steps", minimum=0, maximum=150, step=1, value=0, scale=3),
            )
            named.add(
                "hr_denoising",
                gr.Slider(
                    label="Denoising strength",
                    minimum=0,
                    maximum=1,
                    step=0.01,
                    value=0.7,
                    scale=3,
                    elem_id="txt2img_hr_denoising",
                ),
            )
        with gr.Row():
            named.add(
                "hr_scale",
                gr.Slider(
                    label="Upscale by",
                    minimum=1,
                    maximum=4,
                    step=0.05,
                    value=2,
                    elem_id="txt2img_hr_scale",
                ),
            )
            named.add(
                "hr_resize_x",
                gr.Slider(label="Resize width to", minimum=0, maximum=2048, step=8, value=0),
            )
            named.add(
                "hr_resize_y",
                gr.Slider(label="Resize height to", minimum=0, maximum=2048, step=8, value=0),
            )
        with gr.Row():
            named.add(
                "hr_sampler",
                gr.Dropdown(
                    label="Hires sampling method",
                    value=SAME_SAMPLER,
                    choices=[SAME_SAMPLER, *SAMPLERS],
                ),
            )
            named.add(
                "hr_schedule",
                gr.Dropdown(
                    label="Hires schedule type",
                    value=SAME_SCHEDULE,
                    choices=[SAME_SCHEDULE, *SCHEDULE_TYPES],
                ),
            )
        with gr.Row():
            named.add(
                "hr_prompt",
                gr.Textbox(label="Hires prompt", lines=2, placeholder="empty: the prompt above"),
            )
            named.add(
                "hr_negative",
                gr.Textbox(
                    label="Hires negative prompt",
                    lines=2,
                    placeholder="empty: the negative prompt above",
                ),
            )
        add_hires_checkpoint(ctx, named)  # "Use same checkpoint" or another one
    refresh.click(lambda: gr.Dropdown(choices=catalog.names(latent=True)), outputs=upscaler)
