"""The Train tab's "Textual inversion" part: create an embedding and train it, A1111's way.

"Create embedding" (Name, Initialization text, Number of vectors per token, Overwrite Old
Embedding) and "Train" (Embedding, Embedding Learning rate, Gradient Clipping, Batch size,
Gradient accumulation steps, Dataset directory, Log directory, Prompt template, Width,
Height, Do not resize images, Max steps, the save-every fields, Use PNG alpha channel as
loss weight, Save images with embedding in PNG chunks, Shuffle tags, Drop out tags, latent
sampling method) carry A1111's labels and `TrainEmbeddingParams` fields. Both queue a job
through `services.ti.TiService` (bad input: a message naming the field) and follow it
with `train_tab.follow_training`: the progress line (step, ETA, loss through live
progress), the loss curve, the preview images, the outcome. Interrupt stops training at
its next step; the embedding is saved where it stands. The embedding then shows in the
Extra Networks panel after its refresh.

This module must never import torch, diffusers or safetensors.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import gradio as gr

from ..core.jobs import QueueFullError
from ..core.ti_params import (
    CLIP_GRAD_MODES,
    LATENT_SAMPLING,
    CreateEmbeddingParams,
    TrainEmbeddingParams,
)
from ..services.errors import RequestError
from ..services.ti import TiService
from .common import checkpoint_choices, owner_of
from .icons import icon_button
from .job_stream import in_thread
from .train_tab import _message, follow_training, loss_frame

if TYPE_CHECKING:
    from ..context import AppContext

log = logging.getLogger(__name__)
TRAIN = TrainEmbeddingParams("")
LABELS = {
    "name": "Name",
    "init_text": "Initialization text",
    "num_vectors_per_token": "Number of vectors per token",
    "overwrite_old": "Overwrite Old Embedding",
    "checkpoint": "Checkpoint",
    "embedding_name": "Embedding",
    "learn_rate": "Embedding Learning rate",
    "clip_grad_mode": "Gradient Clipping",
    "clip_grad_value": "Gradient clipping value",
    "batch_size": "Batch size",
    "gradient_step": "Gradient accumulation steps",
    "data_root": "Dataset directory",
    "log_directory": "Log directory",
    "template_filename": "Prompt template",
    "training_width": "Width",
    "training_height": "Height",
    "varsize": "Do not resize images",
    "steps": "Max steps",
    "create_image_every": "Save an image to log directory every N steps, 0 to disable",
    "save_embedding_every": "Save a copy of embedding to log directory every N steps, 0 to disable",
    "use_weight": "Use PNG alpha channel as loss weight",
    "save_image_with_stored_embedding": "Save images with embedding in PNG chunks",
    "shuffle_tags": "Shuffle tags by ',' when creating prompts.",
    "tag_drop_out": "Drop out tags when creating prompts.",
    "latent_sampling_method": "Choose latent sampling method",
}
TRAIN_FIELDS = ["checkpoint", "embedding_name", "learn_rate", "clip_grad_mode",
                "clip_grad_value", "batch_size", "gradient_step", "data_root", "log_directory",
                "template_filename", "training_width", "training_height", "varsize", "steps",
                "create_image_every", "save_embedding_every", "use_weight",
                "save_image_with_stored_embedding", "shuffle_tags", "tag_drop_out",
                "latent_sampling_method"]  # fmt: skip
INTS = {"batch_size", "gradient_step", "training_width", "training_height", "steps",
        "create_image_every", "save_embedding_every"}  # fmt: skip


def _error(exc: RequestError | QueueFullError) -> str:
    if isinstance(exc, QueueFullError):
        return str(exc)
    field = LABELS.get(exc.loc[0], exc.loc[0]) if exc.loc else ""
    return f"{field}: {exc.message}" if field else exc.message


def _train_params(values: dict[str, Any]) -> TrainEmbeddingParams:
    out: dict[str, Any] = {}
    for name in TRAIN_FIELDS:
        value, default = values.get(name), getattr(TRAIN, name)
        if value is None or value == "":
            value = default
        if name in INTS:
            value = int(value)
        elif isinstance(default, float):
            value = float(value)
        elif isinstance(default, str):
            value = str(value).strip()
        out[name] = value
    return TrainEmbeddingParams(**out)


def _create_controls() -> dict[str, Any]:
    c: dict[str, Any] = {}
    c["name"] = gr.Textbox(label=LABELS["name"], elem_id="train_embedding_name_new")
    c["init_text"] = gr.Textbox("*", label=LABELS["init_text"], elem_id="train_embedding_init")
    c["num_vectors_per_token"] = gr.Slider(1, 75, value=1, step=1,
                                           label=LABELS["num_vectors_per_token"],
                                           elem_id="train_embedding_nvpt")  # fmt: skip
    c["overwrite_old"] = gr.Checkbox(False, label=LABELS["overwrite_old"],
                                     elem_id="train_embedding_overwrite")  # fmt: skip
    return c


def _train_controls(ctx: AppContext, service: TiService) -> dict[str, Any]:
    c: dict[str, Any] = {}
    titles, selected = checkpoint_choices(ctx)
    c["checkpoint"] = gr.Dropdown(titles, value=selected, label=LABELS["checkpoint"],
                                  elem_id="ti_checkpoint")  # fmt: skip
    with gr.Row():
        names = service.embedding_names()
        c["embedding_name"] = gr.Dropdown(names, value=names[0] if names else None,
                                          label=LABELS["embedding_name"],
                                          elem_id="train_embedding")  # fmt: skip
        c["refresh"] = icon_button("refresh", elem_id="train_embedding_refresh")
    with gr.Row():
        c["learn_rate"] = gr.Textbox(TRAIN.learn_rate, label=LABELS["learn_rate"],
                                     elem_id="train_embedding_learn_rate")  # fmt: skip
        c["clip_grad_mode"] = gr.Dropdown(list(CLIP_GRAD_MODES), value=TRAIN.clip_grad_mode,
                                          label=LABELS["clip_grad_mode"])  # fmt: skip
        c["clip_grad_value"] = gr.Textbox(TRAIN.clip_grad_value, label=LABELS["clip_grad_value"])
    with gr.Row():
        c["batch_size"] = gr.Number(TRAIN.batch_size, label=LABELS["batch_size"], precision=0)
        c["gradient_step"] = gr.Number(TRAIN.gradient_step, label=LABELS["gradient_step"],
                                       precision=0)  # fmt: skip
    c["data_root"] = gr.Textbox(label=LABELS["data_root"], elem_id="train_dataset_directory",
                                placeholder="Path to directory with input images")  # fmt: skip
    c["log_directory"] = gr.Textbox(TRAIN.log_directory, label=LABELS["log_directory"])
    templates = list(service.templates())
    c["template_filename"] = gr.Dropdown(templates, value=TRAIN.template_filename,
                                         label=LABELS["template_filename"],
                                         elem_id="train_template_file")  # fmt: skip
    with gr.Row():
        for name in ("training_width", "training_height"):
            c[name] = gr.Slider(64, 2048, value=getattr(TRAIN, name), step=8, label=LABELS[name])
    c["varsize"] = gr.Checkbox(TRAIN.varsize, label=LABELS["varsize"])
    c["steps"] = gr.Number(TRAIN.steps, label=LABELS["steps"], precision=0, elem_id="train_steps")
    with gr.Row():
        for name in ("create_image_every", "save_embedding_every"):
            c[name] = gr.Number(getattr(TRAIN, name), label=LABELS[name], precision=0)
    for name in ("use_weight", "save_image_with_stored_embedding", "shuffle_tags"):
        c[name] = gr.Checkbox(getattr(TRAIN, name), label=LABELS[name])
    c["tag_drop_out"] = gr.Slider(0, 1, value=TRAIN.tag_drop_out, step=0.1,
                                  label=LABELS["tag_drop_out"])  # fmt: skip
    c["latent_sampling_method"] = gr.Radio(list(LATENT_SAMPLING),
                                           value=TRAIN.latent_sampling_method,
                                           label=LABELS["latent_sampling_method"])  # fmt: skip
    return c


def build_ti_tab(ctx: AppContext) -> None:
    """The part's controls and events."""
    service = TiService.of(ctx)
    with gr.Row(equal_height=False):
        with gr.Column(variant="compact"):
            with gr.Accordion("Create embedding", open=True):
                create = _create_controls()
                create_button = gr.Button("Create embedding", elem_id="train_create_embedding")
                created = gr.HTML(elem_id="train_create_status")
            with gr.Accordion("Train", open=True):
                c = _train_controls(ctx, service)
                with gr.Row():
                    interrupt = gr.Button("Interrupt", elem_id="train_embedding_interrupt")
                    train = gr.Button("Train Embedding", variant="primary",
                                      elem_id="train_train_embedding")  # fmt: skip
        with gr.Column(variant="compact"):
            status = gr.HTML(elem_id="ti_status")
            plot = gr.LinePlot(loss_frame(None), x="step", y="loss", title="Loss",
                               elem_id="ti_loss_plot")  # fmt: skip
            gallery = gr.Gallery(label="Preview images", columns=4, elem_id="ti_previews")
    job_id = gr.State(None)
    embedding = c["embedding_name"]

    def names(current: str | None = None) -> Any:
        found = service.embedding_names()
        return gr.update(choices=found, value=current if current in found else None)

    async def run_create(request: gr.Request, name, init_text, count, overwrite, checkpoint):
        params = CreateEmbeddingParams(str(name or "").strip(), str(init_text or ""),
                                       int(count or 1), bool(overwrite), checkpoint or "")  # fmt: skip
        try:
            job = await in_thread(service.submit_create, params, owner_of(request))
        except (RequestError, QueueFullError) as exc:
            return _message(_error(exc), ok=False), gr.skip()
        views = [view async for view in follow_training(ctx, job)]
        return views[-1][0], names(params.name)

    async def run_train(request: gr.Request, *values):
        params = _train_params(dict(zip(TRAIN_FIELDS, values, strict=True)))
        try:
            job = await in_thread(service.submit_train, params, owner_of(request))
        except (RequestError, QueueFullError) as exc:
            log.info("embedding training refused: %s", exc)
            yield _message(_error(exc), ok=False), gr.skip(), gr.skip(), None
            return
        async for text, frame, samples in follow_training(ctx, job):
            yield text, frame, samples, job.id

    def stop(current: str | None, request: gr.Request) -> None:
        if current:
            ctx.jobs.interrupt(current, owner_of(request))

    create_inputs = [create[n] for n in ("name", "init_text", "num_vectors_per_token",
                                         "overwrite_old")] + [c["checkpoint"]]  # fmt: skip
    create_button.click(run_create, inputs=create_inputs, outputs=[created, embedding])
    c["refresh"].click(names, inputs=[embedding], outputs=[embedding])
    train.click(run_train, inputs=[c[n] for n in TRAIN_FIELDS],
                outputs=[status, plot, gallery, job_id])  # fmt: skip
    interrupt.click(stop, inputs=[job_id], outputs=[])
