"""The "Hires. fix" section of the txt2img tab, with A1111's labels.

`build_hires_controls` adds the accordion (enable, upscaler, hires steps, denoising
strength, upscale by / resize width and height to, hires sampler, schedule and prompts);
`HiresControls.params(values)` turns its values into `HiresParams` (None when off).

This module must never import torch or diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import gradio as gr

from ..core.params_img2img import HiresParams
from ..core.samplers import SAMPLERS, SCHEDULE_TYPES
from ..services.upscalers import UnknownUpscalerError, Upscalers
from .icons import icon_button
from .image_common import Named, whole

if TYPE_CHECKING:
    from ..context import AppContext

SAME_SAMPLER, SAME_SCHEDULE = "Use same sampler", "Use same scheduler"


@dataclass
class HiresControls:
    named: Named
    catalog: Upscalers

    @property
    def inputs(self) -> list:
        return self.named.inputs

    def params(self, values) -> HiresParams | None:
        """HiresParams from the section's values (in `inputs` order); ValueError if bad."""
        v = self.named.values(values)
        if not v["enable"]:
            return None
        try:
            upscaler = self.catalog.resolve(v["upscaler"], latent=True, field="Upscaler")
        except UnknownUpscalerError as exc:
            raise ValueError(str(exc)) from None
        sampler, schedule = v["sampler"], v["schedule"]
        return HiresParams(
            scale=float(v["scale"]),
            resize_x=whole(v["resize_x"], "Resize width to"),
            resize_y=whole(v["resize_y"], "Resize height to"),
            upscaler=upscaler,
            steps=whole(v["steps"], "Hires steps"),
            denoising_strength=float(v["denoising"]),
            sampler_name=None if sampler in (None, SAME_SAMPLER) else sampler,
            scheduler=None if schedule in (None, SAME_SCHEDULE) else schedule,
            prompt=v["prompt"] or "",
            negative_prompt=v["negative"] or "",
        )


def build_hires_controls(ctx: AppContext) -> HiresControls:
    named = Named()
    catalog = ctx.upscalers
    with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hires_fix"):
        named.add(
            "enable",
            gr.Checkbox(label="Enable hires. fix", value=False, elem_id="txt2img_enable_hr"),
        )
        with gr.Row():
            upscaler = named.add(
                "upscaler",
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
                "steps",
                gr.Slider(label="Hires steps", minimum=0, maximum=150, step=1, value=0, scale=3),
            )
            named.add(
                "denoising",
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
                "scale",
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
                "resize_x",
                gr.Slider(label="Resize width to", minimum=0, maximum=2048, step=8, value=0),
            )
            named.add(
                "resize_y",
                gr.Slider(label="Resize height to", minimum=0, maximum=2048, step=8, value=0),
            )
        with gr.Row():
            named.add(
                "sampler",
                gr.Dropdown(
                    label="Hires sampling method",
                    value=SAME_SAMPLER,
                    choices=[SAME_SAMPLER, *SAMPLERS],
                ),
            )
            named.add(
                "schedule",
                gr.Dropdown(
                    label="Hires schedule type",
                    value=SAME_SCHEDULE,
                    choices=[SAME_SCHEDULE, *SCHEDULE_TYPES],
                ),
            )
        with gr.Row():
            named.add(
                "prompt",
                gr.Textbox(label="Hires prompt", lines=2, placeholder="empty: the prompt above"),
            )
            named.add(
                "negative",
                gr.Textbox(
                    label="Hires negative prompt",
                    lines=2,
                    placeholder="empty: the negative prompt above",
                ),
            )
    refresh.click(lambda: gr.Dropdown(choices=catalog.names(latent=True)), outputs=upscaler)
    return HiresControls(named, catalog)
