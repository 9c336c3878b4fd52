"""The txt2img tab: A1111's controls, a Generate button that queues a job, live progress.

Every control carries its A1111 label as its accessible name. The handler validates the
params, submits a job for this browser's owner, and streams progress and previews until
the job ends; Interrupt stops only this owner's jobs.

This module must never import torch or diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from ..core import jobs as job_states
from ..core.jobs import QueueFullError
from ..core.params import MAX_SEED, ParamError, Txt2ImgParams
from ..core.samplers import SAMPLERS, SCHEDULE_TYPES
from .common import infotext_html, owner_of, progress_html
from .ext_ui import extension_inputs
from .extra_networks import build_prompt_tools, job_warnings
from .hires_controls import build_hires_controls
from .send_to import SendSource, send_buttons

if TYPE_CHECKING:
    from ..context import AppContext

POLL_SECONDS = 0.25
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
            gr.Button("↙️", size="sm", elem_id="txt2img_paste")  # read parameters: webui.ui.paste
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
                random_seed = gr.Button("🎲", min_width=40, scale=0, elem_id="txt2img_random_seed")
                reuse_seed = gr.Button("♻️", min_width=40, scale=0, elem_id="txt2img_reuse_seed")
            clip_skip = gr.Slider(label="Clip skip", minimum=1, maximum=12, step=1, value=1)
            hires = build_hires_controls(ctx)
            ext = extension_inputs(ctx, "txt2img")  # extension sections and the Script list
        with gr.Column(scale=1):
            progress = gr.HTML("", elem_id="txt2img_progress")
            gallery = gr.Gallery(
                label="Output",
                columns=2,
                height=512,
                object_fit="contain",
                elem_id="txt2img_gallery",
            )
            send = send_buttons("txt2img", gallery, None)  # wired by blocks.build_ui
            info = gr.HTML("", elem_id="txt2img_infotext")
    last_seed = gr.State(None)
    latest: dict[str, str] = {}  # page session -> id of the newest job it submitted
    infotexts = gr.State([])
    send.infotexts = infotexts

    controls = [checkpoint, prompt, negative, sampler, schedule, steps, cfg, width, height, seed,
                batch_count, batch_size, clip_skip, *tools.inputs, *hires.inputs, *ext.inputs]  # fmt: skip

    def run(title, prompt_, negative_, sampler_, schedule_, steps_, cfg_, width_, height_, seed_,
            count_, size_, clip_skip_, styles_, vae_, request: gr.Request, *hires_values):  # fmt: skip
        try:
            params = (
                Txt2ImgParams(
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
                )
                .validated()
            )
            params = ext.prepare(params, hires_values[len(hires.inputs) :]).with_seed()
        except (ParamError, TypeError, ValueError) as exc:  # ArgError is a ValueError
            raise gr.Error(str(exc)) from exc
        if not ctx.models.checkpoints():
            raise gr.Error("No checkpoint: add one to the models folder and press 🔄.")
        try:
            job = ctx.jobs.submit("txt2img", params, owner=owner_of(request))
        except QueueFullError as exc:
            raise gr.Error(str(exc)) from exc
        page = request.session_hash
        latest[page] = job.id  # each click queues a job; this page shows its newest one
        shown_preview = -1
        while not job.done.wait(POLL_SECONDS):
            if latest.get(page) != job.id:
                continue  # an older job of this page: its result goes to "My results"
            preview = job.progress.preview
            if preview is not None and job.progress.preview_step != shown_preview:
                shown_preview = job.progress.preview_step
                yield progress_html(ctx, job), [preview], gr.skip(), gr.skip(), gr.skip()
            else:
                yield progress_html(ctx, job), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        if latest.get(page) != job.id:
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        latest.pop(page, None)
        yield _finished(job)

    def _finished(job):
        if job.state == job_states.FAILED:
            raise gr.Error(f"Generation failed: {job.error}")
        images = job.result.images if job.result else []
        texts = [g.infotext for g in images]
        status = "Interrupted" if job.state == job_states.INTERRUPTED else "Done"
        done = f'<div class="job-status">{status}: {len(images)} image(s)</div>'
        done += job_warnings(job.result)  # skipped LoRA tags, unknown styles (also as toasts)
        gallery_value = [(g.image, f"seed {g.seed}") for g in images]
        first = texts[0] if texts else ""
        return (
            done,
            gallery_value,
            infotext_html(first),
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
