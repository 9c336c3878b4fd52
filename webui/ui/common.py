"""Widgets and helpers shared by the tabs: checkpoint picker, progress bar, owner identity.

This module must never import torch or diffusers: it talks to the AppContext only.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from ..core import jobs as job_states
from ..owners import owner_from_cookies
from . import live_progress
from .icons import icon_button

if TYPE_CHECKING:
    from ..context import AppContext

log = logging.getLogger(__name__)


class InputError(gr.Error):
    """A message to the user about what they entered: shown in the page, logged as one
    line. Tracebacks in the log are for bugs, not for a missing image or a bad value."""

    def __init__(self, message: str):
        super().__init__(message, print_exception=False)
        log.info("refused: %s", message)


def owner_of(request: gr.Request | None) -> str:
    """Who submits a job: the logged-in user, else this browser (its identity cookie,
    so a reload keeps its jobs), else this page session."""
    if request is None:
        return "local"
    user = getattr(request, "username", None)
    if user:
        return user
    return (
        owner_from_cookies(getattr(request, "cookies", None)) or f"session-{request.session_hash}"
    )


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
        f"diffusers folder) into `{ctx.flags.ckpt_dir}` and press the refresh button next to the checkpoint "
        "list, or restart with `--demo` to try the UI with a small random-weight model."
    )


def checkpoint_picker(ctx: AppContext, *, visible: bool = True):
    """The checkpoint dropdown and its refresh button, in a row where this is called; the
    'no checkpoint' notice goes below (`checkpoint_notice`). What a choice does is up to
    the caller (`quicksettings.py`).

    Returns (dropdown, refresh button).
    """
    with gr.Row(elem_id="checkpoint_row", visible=visible):
        dropdown = gr.Dropdown(
            label="Stable Diffusion checkpoint",
            choices=[],
            value=None,
            allow_custom_value=False,
            scale=4,
            elem_id="sd_checkpoint",
        )
        refresh = icon_button("refresh", elem_id="refresh_checkpoints")
    return dropdown, refresh


def checkpoint_notice(ctx: AppContext, dropdown: gr.Dropdown, refresh: gr.Button):
    """The 'no checkpoint' notice; the refresh button rescans the models folder.

    Returns (notice, refresh function giving the dropdown and the notice their state)."""
    notice = gr.Markdown(no_checkpoint_message(ctx), visible=False, elem_id="no_checkpoint")

    def refresh_list():
        ctx.models.refresh()
        titles, selected = checkpoint_choices(ctx)
        return gr.Dropdown(choices=titles, value=selected), gr.Markdown(visible=not titles)

    refresh.click(refresh_list, outputs=[dropdown, notice])
    return notice, refresh_list


def progress_html(ctx: AppContext, job: job_states.Job, waiting_after: int = 0) -> str:
    """A progress bar with step count, ETA and queue position, and the live preview of a
    running job (call it for the viewer's own jobs only); `waiting_after` counts the page's
    other jobs that wait behind this one. Each part is its own element, so the page's
    translation finds it. The steps, ETA and preview are kept current on the page by
    `live_progress` (the bar's `data-progress` key)."""
    p = job.progress
    preview = ""
    if job.state == job_states.QUEUED:
        position = ctx.jobs.position(job)
        steps = [f"Waiting in queue (position {position})" if position else "Waiting in queue"]
        percent = 0.0
    else:
        percent = p.fraction * 100
        steps = live_progress.step_parts(job)
    if job.state == job_states.RUNNING:
        shown = p.preview is not None and hasattr(p.preview, "save")
        src = f' src="{html.escape(live_progress.preview_src(job))}"' if shown else " hidden"
        preview = (f'<img class="live-preview" data-preview="{live_progress.preview_key(job)}" '
                   f'alt="Live preview"{src}>')  # fmt: skip
    text = f'<span class="job-progress-steps">{_spans(steps)}</span>'
    if waiting_after:
        text += f" · <span>{waiting_after} more job(s) from this tab waiting</span>"
    return (
        f'<div class="job-progress" role="progressbar" aria-valuemin="0" aria-valuemax="100" '
        f'aria-valuenow="{percent:.0f}" aria-label="Progress" '
        f'data-progress="{live_progress.progress_key(job)}">'
        f'<div class="job-progress-fill" style="width:{percent:.1f}%"></div>'
        f'<span class="job-progress-text">{text}</span></div>{preview}'
    )


def progress_shape(ctx: AppContext, job: job_states.Job, waiting_after: int = 0) -> tuple:
    """What `progress_html` shows that the live progress does not update: when it changes,
    the line is drawn again."""
    p = job.progress
    position = ctx.jobs.position(job) if job.state == job_states.QUEUED else None
    has_preview = p.preview is not None
    return (job.id, job.state, position, waiting_after, p.steps, p.batches, has_preview)


def _spans(parts: list[str]) -> str:
    return " · ".join(f"<span>{html.escape(part)}</span>" for part in parts)


def infotext_html(text: str | None) -> str:
    if not text:
        return ""
    return f'<pre class="infotext" aria-label="Generation parameters">{html.escape(text)}</pre>'


def result_gallery(label: str, elem_id: str, *, columns: int = 2):
    """A gallery that shows results: whole images fitted into their cells (never cropped;
    see the `.result-gallery` rules in blocks.CSS), no upload area, PNG for pictures that
    have no file (previews, unsaved results)."""
    return gr.Gallery(
        label=label,
        columns=columns,
        object_fit="contain",
        format="png",
        interactive=False,
        show_label=True,
        elem_id=elem_id,
        elem_classes=["result-gallery"],
    )


def gallery_items(images: Iterable[Any]) -> list[tuple[Any, str | None]]:
    """Gallery values for generated images (objects with .image, .seed, .infotext, .path).

    An image saved to disk is shown from its file, so the gallery's download gives that
    file as it was saved (PNG, JPEG or WebP, with its parameters). An image without a file
    (the API's unsaved results, a grid that was not saved) becomes a PNG carrying its
    infotext in the "parameters" chunk, as A1111 writes it."""
    items: list[tuple[Any, str | None]] = []
    for generated in images:
        seed = getattr(generated, "seed", None)
        caption = f"seed {seed}" if seed else None
        path = getattr(generated, "path", None)
        if path and Path(path).is_file():
            items.append((str(path), caption))
            continue
        picture = generated.image.copy()
        infotext = getattr(generated, "infotext", "") or ""
        if infotext:
            picture.info["parameters"] = infotext
        items.append((picture, caption))
    return items
