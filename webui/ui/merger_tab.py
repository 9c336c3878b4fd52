"""The Checkpoint Merger tab, as A1111's: primary, secondary and tertiary models, the
interpolation method and multiplier, checkpoint format, float16, config copy, a VAE to
bake in, weights to discard, and the metadata accordion; below it, "Merge LoRAs into a
checkpoint" (LoRAs at chosen weights fused into a new single file).

Both buttons queue a "merge" job through `services.merge.MergeService` (which refuses
bad fields, missing models and mixed families with a message) and follow it here; the
worker writes the file into the checkpoint folder. When it is written, every checkpoint
list of the page (this tab's and the checkpoint picker on top) is refreshed.

This module must never import torch, diffusers or safetensors.
"""

from __future__ import annotations

import html
import logging
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import gradio as gr

from ..core import jobs as job_states
from ..core.jobs import QueueFullError
from ..model_manager.merge_params import (
    CHECKPOINT_FORMATS,
    CONFIG_SOURCES,
    INTERP_METHODS,
    NO_VAE,
    WEIGHTED_SUM,
    CheckpointMergeParams,
    LoraMergeParams,
    parse_loras,
)
from ..services.errors import RequestError
from ..services.merge import MergeService
from .common import checkpoint_choices, owner_of, progress_html
from .icons import icon_button
from .job_stream import KEEPALIVE_SECONDS, TICK_SECONDS, in_thread

if TYPE_CHECKING:
    from ..context import AppContext

log = logging.getLogger(__name__)

FIELD_LABELS = {
    "primary_model_name": "Primary model (A)",
    "secondary_model_name": "Secondary model (B)",
    "tertiary_model_name": "Tertiary model (C)",
    "multiplier": "Multiplier (M)",
    "custom_name": "Custom Name (Optional)",
    "discard_weights": "Discard weights with matching name",
    "metadata_json": "Metadata in JSON format",
    "bake_in_vae": "Bake in VAE",
    "interp_method": "Interpolation Method",
    "checkpoint": "Checkpoint",
    "loras": "LoRAs",
}


def _vae_choices(ctx: AppContext) -> list[str]:
    vaes = getattr(ctx.networks, "vaes", None)
    return [NO_VAE, *(f.filename for f in vaes.list())] if vaes is not None else [NO_VAE]


def _title(ctx: AppContext, name: str | None) -> str | None:
    """The current title of the checkpoint a list shows, None when it is gone."""
    if not name:
        return None
    try:
        return ctx.models.resolve(name).title
    except LookupError:
        return None


def _message(text: str, ok: bool = True) -> str:
    style = "" if ok else ' style="color: var(--error-text-color, #b91c1c)"'
    return f'<p class="merge-{"ok" if ok else "error"}"{style}>{html.escape(text)}</p>'


async def follow_merge(ctx: AppContext, job: job_states.Job):
    """Yield the job's progress line until it ends, then its outcome (a message)."""
    with ctx.jobs.events.subscribe_async(accept=lambda e: e.job_id == job.id) as events:
        while not job.finished and not events.closed:
            yield progress_html(ctx, job)
            running = job.state == job_states.RUNNING
            await events.wait(TICK_SECONDS if running else KEEPALIVE_SECONDS)
    if job.state == job_states.FAILED:
        yield _message(f"Merge failed: {job.error}", ok=False)
        return
    result = job.result
    yield _message(result.message if result is not None else "Interrupted", result is not None)


def _submit(submit, params, request: gr.Request) -> job_states.Job | str:
    """The queued job, or what is wrong (shown in the result area, as A1111 does)."""
    try:
        return submit(params, owner=owner_of(request))
    except RequestError as exc:
        field = FIELD_LABELS.get(exc.loc[0], exc.loc[0]) if exc.loc else ""
        message = f"{field}: {exc.message}" if field else exc.message
    except QueueFullError as exc:
        message = str(exc)
    log.info("merge refused: %s", message)
    return message


def _model_lists(titles: list[str]) -> dict[str, Any]:
    with gr.Row(elem_id="modelmerger_models"):
        lists = {
            field: gr.Dropdown(
                titles, value=None, label=FIELD_LABELS[field], elem_id=f"modelmerger_{field}"
            )
            for field in ("primary_model_name", "secondary_model_name", "tertiary_model_name")
        }
        lists["refresh"] = icon_button("refresh", elem_id="modelmerger_refresh")
    return lists


def _merge_controls(ctx: AppContext, titles: list[str]) -> dict[str, Any]:
    """A1111's controls, by `CheckpointMergeParams` field (plus the buttons)."""
    c = _model_lists(titles)
    c["custom_name"] = gr.Textbox(label="Custom Name (Optional)", elem_id="modelmerger_custom_name")
    c["multiplier"] = gr.Slider(
        0.0,
        1.0,
        value=0.3,
        step=0.05,
        label="Multiplier (M) - set to 0 to get model A",
        elem_id="modelmerger_interp_amount",
    )
    c["interp_method"] = gr.Radio(
        list(INTERP_METHODS),
        value=WEIGHTED_SUM,
        label="Interpolation Method",
        elem_id="modelmerger_interp_method",
    )
    with gr.Row():
        c["checkpoint_format"] = gr.Radio(
            list(CHECKPOINT_FORMATS),
            value="safetensors",
            label="Checkpoint format",
            elem_id="modelmerger_checkpoint_format",
        )
        c["save_as_half"] = gr.Checkbox(
            False, label="Save as float16", elem_id="modelmerger_save_as_half"
        )
    with gr.Row():
        c["config_source"] = gr.Radio(
            list(CONFIG_SOURCES),
            value=CONFIG_SOURCES[0],
            label="Copy config from",
            elem_id="modelmerger_config_method",
        )
        c["bake_in_vae"] = gr.Dropdown(
            _vae_choices(ctx), value=NO_VAE, label="Bake in VAE", elem_id="modelmerger_bake_in_vae"
        )
    c["discard_weights"] = gr.Textbox(
        label="Discard weights with matching name", elem_id="modelmerger_discard_weights"
    )
    with gr.Accordion("Metadata", open=False):
        with gr.Row():
            for field, label in (
                ("save_metadata", "Save metadata"),
                ("add_merge_recipe", "Add merge recipe metadata"),
                ("copy_metadata_fields", "Copy metadata from merged models"),
            ):
                c[field] = gr.Checkbox(True, label=label, elem_id=f"modelmerger_{field}")
        c["metadata_json"] = gr.TextArea(
            "{}", label="Metadata in JSON format", elem_id="modelmerger_metadata_json"
        )
        c["read_metadata"] = gr.Button(
            "Read metadata from selected checkpoints", elem_id="modelmerger_read_metadata"
        )
    c["overwrite"] = gr.Checkbox(
        False, label="Overwrite an existing file", elem_id="modelmerger_overwrite"
    )
    c["merge"] = gr.Button("Merge", variant="primary", elem_id="modelmerger_merge")
    return c


def _lora_controls(titles: list[str]) -> dict[str, Any]:
    """ "Merge LoRAs into a checkpoint", by `LoraMergeParams` field (plus the button)."""
    c: dict[str, Any] = {}
    with gr.Accordion("Merge LoRAs into a checkpoint", open=False, elem_id="modelmerger_lora"):
        c["checkpoint"] = gr.Dropdown(
            titles, value=None, label="Checkpoint", elem_id="modelmerger_lora_checkpoint"
        )
        c["loras"] = gr.Textbox(
            label="LoRAs",
            placeholder="name:0.8, other:0.5 or <lora:name:0.8>",
            elem_id="modelmerger_loras",
        )
        c["custom_name"] = gr.Textbox(
            label="Custom Name (Optional)", elem_id="modelmerger_lora_custom_name"
        )
        with gr.Row():
            c["save_as_half"] = gr.Checkbox(
                False, label="Save as float16", elem_id="modelmerger_lora_half"
            )
            c["overwrite"] = gr.Checkbox(
                False, label="Overwrite an existing file", elem_id="modelmerger_lora_overwrite"
            )
        c["merge"] = gr.Button("Merge LoRAs", variant="primary", elem_id="modelmerger_lora_merge")
    return c


MERGE_FIELDS = [f.name for f in fields(CheckpointMergeParams)]


def _merge_params(values: dict[str, Any]) -> CheckpointMergeParams:
    """The controls' values as params: empty lists are "", the multiplier a float."""
    texts = {k: (v or "") for k, v in values.items() if isinstance(v, str) or v is None}
    params = {**values, **texts, "multiplier": float(values["multiplier"] or 0)}
    params["custom_name"] = params["custom_name"].strip()
    params["bake_in_vae"] = params["bake_in_vae"] or NO_VAE
    return CheckpointMergeParams(**params)


def build_merger_tab(ctx: AppContext, checkpoint: Any | None = None) -> None:
    """The tab's controls and events; `checkpoint` is the page's checkpoint picker."""
    service = MergeService.of(ctx)
    titles, _ = checkpoint_choices(ctx)
    with gr.Row(equal_height=False):
        with gr.Column(variant="compact"):
            gr.HTML(
                "<p>A merger of the two checkpoints will be generated in your checkpoint "
                "directory.</p>"
            )
            merge = _merge_controls(ctx, titles)
            lora = _lora_controls(titles)
        with gr.Column(variant="compact"):
            result = gr.HTML(elem_id="modelmerger_result")
    lists = [
        merge["primary_model_name"],
        merge["secondary_model_name"],
        merge["tertiary_model_name"],
        lora["checkpoint"],
    ]
    refreshed = [*lists, *([checkpoint] if checkpoint is not None else [])]
    skip_lists = [gr.skip()] * len(refreshed)

    def refresh_lists(*current: str | None) -> list[Any]:
        """New choices for this tab's checkpoint lists, each keeping its model (under its
        new title: a hash may have been computed), and for the page's checkpoint picker."""
        ctx.models.refresh()
        titles, selected = checkpoint_choices(ctx)
        updates = [gr.Dropdown(choices=titles, value=_title(ctx, value)) for value in current]
        if checkpoint is not None:
            updates.append(gr.Dropdown(choices=titles, value=selected))
        return updates

    async def run_merge(request: gr.Request, *values):
        named = dict(zip(MERGE_FIELDS, values, strict=False))
        job = await in_thread(_submit, service.submit_merge, _merge_params(named), request)
        async for update in _follow(job, values[-4:]):
            yield update

    async def run_lora_merge(request: gr.Request, base, text, name, half, overwrite, *shown):
        params = LoraMergeParams(
            base or "",
            parse_loras(text or ""),
            (name or "").strip(),
            bool(half),
            True,
            bool(overwrite),
        )
        job = await in_thread(_submit, service.submit_lora_merge, params, request)
        async for update in _follow(job, shown):
            yield update

    async def _follow(job, shown):
        if isinstance(job, str):
            yield _message(job, ok=False), *skip_lists
            return
        async for line in follow_merge(ctx, job):
            yield line, *skip_lists
        yield gr.skip(), *await in_thread(refresh_lists, *shown)

    merge["refresh"].click(refresh_lists, inputs=lists, outputs=refreshed)
    merge["refresh"].click(
        lambda: gr.Dropdown(choices=_vae_choices(ctx)), outputs=[merge["bake_in_vae"]]
    )
    merge_inputs = [merge[field] for field in MERGE_FIELDS] + lists
    merge["merge"].click(run_merge, inputs=merge_inputs, outputs=[result, *refreshed])
    lora_inputs = [
        lora[k] for k in ("checkpoint", "loras", "custom_name", "save_as_half", "overwrite")
    ]
    lora["merge"].click(run_lora_merge, inputs=lora_inputs + lists, outputs=[result, *refreshed])
    merge["read_metadata"].click(
        lambda *names: service.read_metadata([n or "" for n in names]),
        inputs=lists[:3],
        outputs=[merge["metadata_json"]],
    )
