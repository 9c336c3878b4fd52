"""The Train tab: a LoRA trained on a folder of images, on the queue, watched live.

The controls are kohya's `train_network.py` settings (`LoraTrainParams` fields): the
checkpoint, the dataset folder (same-name `.txt` captions, `N_name` subfolders repeat N
times), resolution and buckets, network rank/alpha (LoCon: conv rank/alpha), learning
rates, schedule and warm-up, optimizer, epochs or steps, batch and accumulation,
precision, caption dropout, tag shuffle, noise offset, min-SNR, seed, saving and sampling
every N, resuming a saved state. Train queues a "train_lora" job through
`services.training.TrainingService` (bad input: a message naming the field); the tab
then follows it from the queue's events: the progress line (step, ETA, loss), the loss
curve (a line plot of the job's `TrainingLog`), the sample images as they are drawn, and
at the end where the LoRA was saved. Interrupt stops the job at its next step; the LoRA
and its resume state are saved where it stands.

This module must never import torch, diffusers or safetensors.
"""

from __future__ import annotations

import html
import logging
import time
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import gradio as gr
import pandas as pd

from ..core import jobs as job_states
from ..core.jobs import QueueFullError
from ..core.train_params import (
    LR_SCHEDULERS,
    MIXED_PRECISION,
    OPTIMIZERS,
    SAVE_PRECISION,
    LoraTrainParams,
)
from ..services.errors import RequestError
from ..services.training import TrainingService
from .common import checkpoint_choices, owner_of, progress_html, progress_shape
from .job_stream import KEEPALIVE_SECONDS, in_thread

if TYPE_CHECKING:
    from ..context import AppContext

log = logging.getLogger(__name__)
DEFAULTS = LoraTrainParams("", "", "")
FIELDS = [f.name for f in fields(LoraTrainParams)]
PLOT_EVERY = 5.0  # seconds between two redraws of the loss curve and samples
LABELS = {
    "checkpoint": "Checkpoint",
    "train_data_dir": "Dataset folder",
    "output_name": "LoRA name",
    "resolution": "Resolution",
    "enable_bucket": "Aspect-ratio buckets",
    "network_dim": "Network rank (dim)",
    "network_alpha": "Network alpha",
    "conv_dim": "Conv rank (LoCon, 0: off)",
    "conv_alpha": "Conv alpha",
    "unet_lr": "UNet learning rate",
    "text_encoder_lr": "Text encoder learning rate (0: off)",
    "lr_scheduler": "LR scheduler",
    "lr_warmup_steps": "Warm-up steps",
    "lr_scheduler_num_cycles": "Scheduler cycles",
    "lr_scheduler_power": "Scheduler power",
    "optimizer_type": "Optimizer",
    "max_train_epochs": "Epochs",
    "max_train_steps": "Max steps (0: the epochs decide)",
    "train_batch_size": "Batch size",
    "gradient_accumulation_steps": "Gradient accumulation steps",
    "gradient_checkpointing": "Gradient checkpointing",
    "mixed_precision": "Mixed precision (GPU)",
    "save_precision": "Save precision",
    "caption_extension": "Caption extension",
    "caption_dropout_rate": "Caption dropout rate",
    "shuffle_caption": "Shuffle tags",
    "keep_tokens": "Keep first tags",
    "noise_offset": "Noise offset",
    "min_snr_gamma": "Min-SNR gamma (0: off)",
    "seed": "Seed",
    "cache_latents": "Cache latents",
    "save_every_n_epochs": "Save every N epochs (0: at the end)",
    "sample_every_n_steps": "Sample every N steps (0: never)",
    "sample_prompts": "Sample prompts (one a line; empty: the first caption)",
    "sample_steps": "Sample steps",
    "resume": "Resume from",
    "overwrite": "Overwrite an existing file",
    "training_comment": "Comment",
}


def _message(text: str, ok: bool = True) -> str:
    style = "" if ok else ' style="color: var(--error-text-color, #b91c1c)"'
    return f'<p class="train-{"ok" if ok else "error"}"{style}>{html.escape(text)}</p>'


def _number(name: str, precision: int = 0, **kw) -> gr.Number:
    return gr.Number(getattr(DEFAULTS, name), label=LABELS[name], precision=precision,
                     elem_id=f"train_{name}", **kw)  # fmt: skip


def _check(name: str) -> gr.Checkbox:
    return gr.Checkbox(getattr(DEFAULTS, name), label=LABELS[name], elem_id=f"train_{name}")


def _choice(name: str, choices) -> gr.Dropdown:
    return gr.Dropdown(list(choices), value=getattr(DEFAULTS, name), label=LABELS[name],
                       elem_id=f"train_{name}")  # fmt: skip


def _controls(ctx: AppContext, states: list[str]) -> dict[str, Any]:
    titles, selected = checkpoint_choices(ctx)
    c: dict[str, Any] = {}
    c["checkpoint"] = gr.Dropdown(titles, value=selected, label=LABELS["checkpoint"],
                                  elem_id="train_checkpoint")  # fmt: skip
    c["train_data_dir"] = gr.Textbox(label=LABELS["train_data_dir"], elem_id="train_data_dir",
                                     placeholder="/path/to/images (10_name subfolders repeat)")  # fmt: skip
    with gr.Row():
        c["output_name"] = gr.Textbox(label=LABELS["output_name"], elem_id="train_output_name")
        c["resolution"] = _number("resolution", step=64)
        c["enable_bucket"] = _check("enable_bucket")
    with gr.Row():
        for name in ("network_dim", "network_alpha", "conv_dim", "conv_alpha"):
            c[name] = _number(name, precision=None if "alpha" in name else 0)
    with gr.Row():
        c["unet_lr"] = _number("unet_lr", precision=None)
        c["text_encoder_lr"] = _number("text_encoder_lr", precision=None)
        c["optimizer_type"] = _choice("optimizer_type", OPTIMIZERS)
    with gr.Row():
        c["lr_scheduler"] = _choice("lr_scheduler", LR_SCHEDULERS)
        c["lr_warmup_steps"] = _number("lr_warmup_steps")
        c["lr_scheduler_num_cycles"] = _number("lr_scheduler_num_cycles")
        c["lr_scheduler_power"] = _number("lr_scheduler_power", precision=None)
    with gr.Row():
        for name in ("max_train_epochs", "max_train_steps", "train_batch_size",
                     "gradient_accumulation_steps"):  # fmt: skip
            c[name] = _number(name)
    with gr.Accordion("Dataset and regularisation", open=False):
        with gr.Row():
            c["caption_extension"] = gr.Textbox(DEFAULTS.caption_extension,
                                                label=LABELS["caption_extension"])  # fmt: skip
            c["caption_dropout_rate"] = _number("caption_dropout_rate", precision=None)
            c["shuffle_caption"] = _check("shuffle_caption")
            c["keep_tokens"] = _number("keep_tokens")
        with gr.Row():
            c["noise_offset"] = _number("noise_offset", precision=None)
            c["min_snr_gamma"] = _number("min_snr_gamma", precision=None)
            c["seed"] = _number("seed")
    with gr.Accordion("Precision and memory", open=False):
        with gr.Row():
            c["mixed_precision"] = _choice("mixed_precision", MIXED_PRECISION)
            c["save_precision"] = _choice("save_precision", SAVE_PRECISION)
            c["gradient_checkpointing"] = _check("gradient_checkpointing")
            c["cache_latents"] = _check("cache_latents")
    with gr.Row():
        c["save_every_n_epochs"] = _number("save_every_n_epochs")
        c["sample_every_n_steps"] = _number("sample_every_n_steps")
        c["sample_steps"] = _number("sample_steps")
    c["sample_prompts"] = gr.TextArea(label=LABELS["sample_prompts"], lines=2,
                                      elem_id="train_sample_prompts")  # fmt: skip
    with gr.Row():
        c["resume"] = gr.Dropdown(["", *states], value="", label=LABELS["resume"],
                                  elem_id="train_resume")  # fmt: skip
        c["overwrite"] = _check("overwrite")
        c["training_comment"] = gr.Textbox(label=LABELS["training_comment"])
    return c


def _params(values: dict[str, Any]) -> LoraTrainParams:
    """The controls' values as params (an empty number is the default)."""
    out = {}
    for name in FIELDS:
        value, default = values.get(name), getattr(DEFAULTS, name)
        if value is None or value == "":
            value = default if not isinstance(default, str) else ""
        if isinstance(default, bool):
            value = bool(value)
        elif isinstance(default, int):
            value = int(value)
        elif isinstance(default, float):
            value = float(value)
        else:
            value = str(value).strip() if name != "sample_prompts" else str(value)
        out[name] = value
    return LoraTrainParams(**out)


def _submit(service: TrainingService, params, request: gr.Request) -> job_states.Job | str:
    try:
        return service.submit_lora(params, owner=owner_of(request))
    except RequestError as exc:
        field = LABELS.get(exc.loc[0], exc.loc[0]) if exc.loc else ""
        return f"{field}: {exc.message}" if field else exc.message
    except QueueFullError as exc:
        return str(exc)


def loss_frame(details: Any) -> pd.DataFrame:
    losses = list(getattr(details, "losses", []) or [])
    return pd.DataFrame({"step": [s for s, _ in losses], "loss": [v for _, v in losses]})


def _view(ctx: AppContext, job: job_states.Job, text: str) -> tuple:
    details = getattr(job.result, "log", None) or job.progress.details
    samples = list(getattr(details, "samples", []) or [])
    return text, loss_frame(details), samples[-8:]


async def follow_training(ctx: AppContext, job: job_states.Job):
    """Yield (progress or outcome, loss curve, samples) until the job ends: the curve and
    samples every `PLOT_EVERY` seconds, the line when the job changes state (its steps,
    loss and ETA are kept current by `live_progress`)."""
    drawn, shape = 0.0, None
    with ctx.jobs.events.subscribe_async(accept=lambda e: e.job_id == job.id) as events:
        while not job.finished and not events.closed:
            now = time.monotonic()
            if now - drawn >= PLOT_EVERY:
                drawn, shape = now, progress_shape(ctx, job)
                yield _view(ctx, job, progress_html(ctx, job))
            elif progress_shape(ctx, job) != shape:
                shape = progress_shape(ctx, job)
                yield (progress_html(ctx, job), gr.skip(), gr.skip())
            running = job.state == job_states.RUNNING
            await events.wait(PLOT_EVERY if running else KEEPALIVE_SECONDS)
    if job.state == job_states.FAILED:
        yield _view(ctx, job, _message(f"Training failed: {job.error}", ok=False))
        return
    result = job.result
    text = result.message if result is not None else f"Stopped: {job.error or 'interrupted'}"
    yield _view(ctx, job, _message(text, result is not None))


def build_train_tab(ctx: AppContext) -> None:
    """The tab's controls and events."""
    service = TrainingService.of(ctx)
    with gr.Row(equal_height=False):
        with gr.Column(variant="compact"):
            c = _controls(ctx, service.saved_states())
            with gr.Row():
                train = gr.Button("Train", variant="primary", elem_id="train_lora_button")
                interrupt = gr.Button("Interrupt", elem_id="train_interrupt")
        with gr.Column(variant="compact"):
            status = gr.HTML(elem_id="train_status")
            plot = gr.LinePlot(loss_frame(None), x="step", y="loss", title="Loss",
                               elem_id="train_loss_plot")  # fmt: skip
            gallery = gr.Gallery(label="Samples", columns=4, elem_id="train_samples")
    job_id = gr.State(None)
    inputs = [c[name] for name in FIELDS]

    async def run(request: gr.Request, *values):
        params = _params(dict(zip(FIELDS, values, strict=True)))
        job = await in_thread(_submit, service, params, request)
        if isinstance(job, str):
            log.info("training refused: %s", job)
            yield _message(job, ok=False), gr.skip(), gr.skip(), None
            return
        async for text, frame, samples in follow_training(ctx, job):
            yield text, frame, samples, job.id

    def stop(current: str | None, request: gr.Request) -> None:
        if current:
            ctx.jobs.interrupt(current, owner_of(request))

    train.click(run, inputs=inputs, outputs=[status, plot, gallery, job_id])
    interrupt.click(stop, inputs=[job_id], outputs=[])
