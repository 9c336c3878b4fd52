"""The txt2img tab: A1111's controls, a Generate button that queues a job, live progress.

Every control carries its A1111 label as its accessible name. The handler validates the
params, submits a job for this browser's owner, and streams progress and previews until
the job ends; Interrupt stops only this owner's jobs.

This module must never import torch or diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from ..core.params import MAX_SEED, ParamError, Txt2ImgParams
from ..core.samplers import SAMPLERS, SCHEDULE_TYPES
from .common import (
    InputError,
    gallery_items,
    infotext_html,
    owner_of,
    result_gallery,
)
from .ext_ui import extension_inputs
from .extra_networks import build_prompt_tools, job_warnings
from .hires_controls import build_hires_controls
from .icons import icon_button
from .job_stream import TabJobs, finished_status, follow_job, in_thread, submit_job
from .send_to import SendSource, send_buttons

if TYPE_CHECKING:
    from ..context import AppContext

DEFAULT_SAMPLER = "DPM++ 2M" if "DPM++ 2M" in SAMPLERS else SAMPLERS[0]


def build_txt2img_tab(ctx: AppContext, checkpoint: gr.Dropdown) -> SendSource:
    with gr.Row():
        with gr.Column(scale=6):
            prompt = gr.Textbox(
                label="Prompt", lines=3, placeholder="Prompt", elem_id="txt2img_prompt"
            )
            negative = gr.Textbox(
                label="Negative prompt",
                lines=2,
                placeholder="Negative prompt",
                elem_id="txt2img_neg_prompt",
            )
            tools = build_prompt_tools(ctx, prompt, negative, checkpoint, "txt2img")
        with gr.Column(scale=1, min_width=160):
            generate = gr.Button("Generate", variant="primary", elem_id="txt2img_generate")
            interrupt = gr.Button("Interrupt", variant="stop", elem_id="txt2img_interrupt")
            icon_button(
                "paste", elem_id="txt2img_paste", scale=None
            )  # read parameters: webui.ui.paste
    with gr.Row():
        with gr.Column(scale=1):
            with gr.Row():
                sampler = gr.Dropdown(
                    label="Sampling method", choices=SAMPLERS, value=DEFAULT_SAMPLER
                )
                schedule = gr.Dropdown(
                    label="Schedule type", choices=SCHEDULE_TYPES, value="Automatic"
                )
            steps = gr.Slider(label="Sampling steps", minimum=1, maximum=150, step=1, value=20)
            with gr.Row():
                width = gr.Slider(label="Width", minimum=64, maximum=2048, step=8, value=512)
                height = gr.Slider(label="Height", minimum=64, maximum=2048, step=8, value=512)
            with gr.Row():
                batch_count = gr.Slider(
                    label="Batch count", minimum=1, maximum=100, step=1, value=1
                )
                batch_size = gr.Slider(label="Batch size", minimum=1, maximum=8, step=1, value=1)
            cfg = gr.Slider(label="CFG Scale", minimum=1, maximum=30, step=0.5, value=7)
            with gr.Row():
                seed = gr.Number(
                    label="Seed", value=-1, precision=0, minimum=-1, maximum=MAX_SEED, scale=4
                )
                random_seed = icon_button("random", elem_id="txt2img_random_seed")
                reuse_seed = icon_button("reuse", elem_id="txt2img_reuse_seed")
            clip_skip = gr.Slider(label="Clip skip", minimum=1, maximum=12, step=1, value=1)
            hires = build_hires_controls(ctx)
            ext = extension_inputs(ctx, "txt2img")  # extension sections and the Script list
        with gr.Column(scale=1):
            progress = gr.HTML("", elem_id="txt2img_progress")
            gallery = result_gallery("Output", "txt2img_gallery")
            send = send_buttons("txt2img", gallery, None)  # wired by blocks.build_ui
            info = gr.HTML("", elem_id="txt2img_infotext")
    last_seed = gr.State(None)
    tab_jobs = TabJobs()  # this tab's unfinished jobs, per page
    infotexts = gr.State([])
    send.infotexts = infotexts

    controls = [checkpoint, prompt, negative, sampler, schedule, steps, cfg, width, height, seed,
                batch_count, batch_size, clip_skip, *tools.inputs, *hires.inputs, *ext.inputs]  # fmt: skip

    def prepare(title, prompt_, negative_, sampler_, schedule_, steps_, cfg_, width_, height_,
                seed_, count_, size_, clip_skip_, styles_, vae_, *hires_values):  # fmt: skip
        try:
            params = Txt2ImgParams(
                prompt=prompt_ or "",
                negative_prompt=negative_ or "",
                sampler_name=sampler_,
                scheduler=schedule_,
                steps=_int(steps_),
                cfg_scale=float(cfg_),
                width=_int(width_),
                height=_int(height_),
                seed=_int(-1 if seed_ is None else seed_),
                batch_count=_int(count_),
                batch_size=_int(size_),
                clip_skip=_int(clip_skip_),
                checkpoint=title or None,
                hires=hires.params(hires_values[: len(hires.inputs)]),
                **tools.params(styles_, vae_),  # styles.csv names, SD VAE
            ).validated()
            params = ext.prepare(params, hires_values[len(hires.inputs) :]).with_seed()
        except (ParamError, TypeError, ValueError) as exc:  # ArgError is a ValueError
            raise InputError(str(exc)) from exc
        if not ctx.models.checkpoints():
            raise InputError(
                "No checkpoint: add one to the models folder and press the refresh button next to the checkpoint list."
            )
        return params

    async def run(request: gr.Request, *values):
        params = await in_thread(prepare, *values)  # validation holds no event-loop time
        job = submit_job(ctx, request, "txt2img", params)
        async for update in follow_job(ctx, request, tab_jobs, job):
            job = update.finished
            if job is None:
                yield update.progress, update.gallery, gr.skip(), gr.skip(), gr.skip()
                continue
            images = job.images
            texts = [g.infotext for g in images]
            yield (
                finished_status(job, update.waiting) + job_warnings(job.result),
                gallery_items(images),
                infotext_html(texts[0] if texts else ""),
                job.result.params.seed if job.result else None,
                texts,
            )

    def interrupt_mine(request: gr.Request):
        ctx.jobs.interrupt_owner(owner_of(request))

    def show_selected(texts: list[str], evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else 0
        return infotext_html(texts[index] if 0 <= index < len(texts) else "")

    generate.click(
        run,
        inputs=controls,
        outputs=[progress, gallery, info, last_seed, infotexts],
        concurrency_limit=None,  # our job queue orders the work, not Gradio's
        show_progress="hidden",
        trigger_mode="multiple",  # every click queues another job
    )
    prompt.submit(
        run, inputs=controls, outputs=[progress, gallery, info, last_seed, infotexts],
        concurrency_limit=None, show_progress="hidden", trigger_mode="multiple",
    )  # fmt: skip
    interrupt.click(interrupt_mine, concurrency_limit=None, show_progress="hidden")
    random_seed.click(lambda: -1, outputs=seed, show_progress="hidden")
    reuse_seed.click(lambda s, cur: cur if s is None else s, inputs=[last_seed, seed], outputs=seed)
    gallery.select(show_selected, inputs=infotexts, outputs=info)
    return send


def _int(value) -> int:
    number = float(value)
    if not number.is_integer():
        raise ValueError(f"expected a whole number, got {value}")
    return int(number)
