"""Widgets and helpers shared by the tabs: checkpoint picker, progress bar, owner identity.

This module must never import torch or diffusers: it talks to the AppContext only.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import gradio as gr

from ..api.auth import owner_from_cookies
from ..core import jobs as job_states

if TYPE_CHECKING:
    from ..context import AppContext


def owner_of(request: gr.Request | None) -> str:
    """Who submits a job: the logged-in user, else this browser (its identity cookie,
    so a reload keeps its jobs), else this page session."""
    if request is None:
        return "local"
    user = getattr(request, "username", None)
    if user:
        return user
    return owner_from_cookies(getattr(request, "cookies", None)) or f"session-{request.session_hash}"


def checkpoint_choices(ctx: AppContext) -> tuple[list[str], str | None]:
    """Titles for the dropdown, and the one to show selected."""
    items = ctx.models.checkpoints()
    titles = [i.title for i in items]
    if not items:
        return [], None
    try:
        current = ctx.models.resolve(ctx.options.get("sd_model_checkpoint") or None)
    except LookupError:
        current = ctx.models.resolve(None)
    return titles, current.title


def no_checkpoint_message(ctx: AppContext) -> str:
    return (
        "**No checkpoint found.** Put a Stable Diffusion checkpoint (`.safetensors`, or a "
        f"diffusers folder) into `{ctx.flags.ckpt_dir}` and press 🔄 next to the checkpoint "
        "list, or restart with `--demo` to try the UI with a small random-weight model."
    )


def checkpoint_picker(ctx: AppContext):
    """The checkpoint dropdown, its refresh button and the 'no checkpoint' notice.

    Returns (dropdown, notice, refresh function giving both their current state).
    """
    with gr.Row(elem_id="checkpoint_row"):
        dropdown = gr.Dropdown(
            label="Stable Diffusion checkpoint",
            choices=[],
            value=None,
            allow_custom_value=False,
            scale=4,
            elem_id="sd_checkpoint",
        )
        refresh = gr.Button("🔄", scale=0, min_width=40, elem_id="refresh_checkpoints")
    notice = gr.Markdown(no_checkpoint_message(ctx), visible=False, elem_id="no_checkpoint")

    def refresh_list():
        ctx.models.refresh()
        titles, selected = checkpoint_choices(ctx)
        return gr.Dropdown(choices=titles, value=selected), gr.Markdown(visible=not titles)

    def preload(title: str | None):
        if title:
            ctx.jobs.submit("load", title, owner="ui-preload")

    refresh.click(refresh_list, outputs=[dropdown, notice])
    dropdown.input(preload, inputs=dropdown)
    return dropdown, notice, refresh_list


def progress_html(ctx: AppContext, job: job_states.Job) -> str:
    """A progress bar with step count, ETA and queue position."""
    p = job.progress
    if job.state == job_states.QUEUED:
        position = ctx.jobs.position(job)
        text = f"Waiting in queue (position {position})" if position else "Waiting in queue"
        percent = 0.0
    else:
        percent = p.fraction * 100
        parts = [p.text] if p.text else []
        if p.steps:
            parts.append(f"Step {min(p.step, p.steps)}/{p.steps}")
            if p.batches > 1:
                parts.append(f"batch {p.batch + 1}/{p.batches}")
        eta = p.eta_seconds
        if eta is not None and p.step:
            parts.append(f"ETA {eta:.1f}s")
        text = " · ".join(parts) or "Starting"
    return (
        f'<div class="job-progress" role="progressbar" aria-valuemin="0" aria-valuemax="100" '
        f'aria-valuenow="{percent:.0f}" aria-label="Progress">'
        f'<div class="job-progress-fill" style="width:{percent:.1f}%"></div>'
        f'<span class="job-progress-text">{html.escape(text)}</span></div>'
    )


def infotext_html(text: str | None) -> str:
    if not text:
        return ""
    return f'<pre class="infotext" aria-label="Generation parameters">{html.escape(text)}</pre>'
