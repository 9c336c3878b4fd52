"""The queue panel and "My results": everyone's jobs, and this browser's own results.

The queue table lists every job (owner, mode, prompt start, position, state, progress;
other users' prompts only with the option queue_show_others_prompts),
refreshed every second. Rows of the viewer's own jobs carry buttons: move up/down and
cancel while waiting, skip and interrupt while running, show when finished. Owners are
logged-in users, else browsers (see `common.owner_of`), so a reloaded page still owns
its jobs.

"My results" shows one of the viewer's own jobs: its live preview while it runs, its
images and infotext once done. It follows the newest job unless another one is chosen;
the chosen job's id is kept in the page URL (`?job=<id>`), so a reload shows it again.
Nobody sees another user's previews or images here.

This module must never import torch or diffusers.
"""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING, Any

import gradio as gr

from ..core import jobs as job_states
from ..core.jobs import Job, JobAccessError
from .common import gallery_items, infotext_html, owner_of, progress_html, result_gallery

if TYPE_CHECKING:
    from ..context import AppContext

REFRESH_SECONDS = 1.0
FINISHED_SHOWN = 5  # finished jobs listed under the running and waiting ones

ACTIONS_JS = """
element.addEventListener('click', (event) => {
  const button = event.target.closest('button[data-action]');
  if (button) trigger('click', {action: button.dataset.action, job: button.dataset.job});
});
"""
URL_JS = """
const sync = () => {
  const id = props.value;
  if (!id) return;
  const url = new URL(window.location.href);
  if (url.searchParams.get('job') !== id) {
    url.searchParams.set('job', id);
    window.history.replaceState(window.history.state, '', url);
  }
};
watch('value', sync);
sync();
"""
_BUTTONS = {
    job_states.QUEUED: (("up", "↑", "Move up"), ("down", "↓", "Move down"),
                        ("cancel", "Cancel", "Cancel")),
    job_states.RUNNING: (("skip", "Skip", "Skip"), ("interrupt", "Interrupt", "Interrupt")),
}  # fmt: skip
_SHOW = (("show", "Show", "Show result"),)


def build_queue_panel(ctx: AppContext, demo: gr.Blocks) -> None:
    """The queue table, the "My results" box and their timer; call inside `demo`."""
    with gr.Accordion("Queue", open=True, elem_id="queue_panel"):
        table = gr.HTML("", js_on_load=ACTIONS_JS, elem_id="queue_table")
        message = gr.Markdown("", elem_id="queue_message")
    with gr.Accordion("My results", open=True, elem_id="my_results"):
        picker = gr.Dropdown(label="My jobs", choices=[], value=None, elem_id="my_jobs")
        status = gr.HTML("", elem_id="my_job_status")
        gallery = result_gallery("Job images", "my_job_gallery", columns=4)
        info = gr.HTML("", elem_id="my_job_infotext")
    url_job = gr.HTML("", visible="hidden", js_on_load=URL_JS, elem_id="my_job_url")
    view = gr.State({})  # pinned job id (chosen by the user), what is shown now
    timer = gr.Timer(REFRESH_SECONDS)
    outputs = [table, picker, status, gallery, info, url_job, view]

    def refresh(state: dict, request: gr.Request):
        return _render(ctx, owner_of(request), dict(state or {}))

    def on_load(state: dict, request: gr.Request):
        state = dict(state or {})
        wanted = _query_job(request)
        note = ""
        if wanted:
            job = ctx.jobs.get(wanted)
            if job is not None and job.owner == owner_of(request):
                state["pinned"] = job.id
            else:
                shown = html.escape(wanted[:64].replace("`", ""))
                note = f"Job `{shown}` is not one of yours, or it is no longer kept."
        return (*_render(ctx, owner_of(request), state), note)

    def choose(job_id: str | None, state: dict, request: gr.Request):
        state = dict(state or {})
        state["pinned"] = job_id or None
        state["shown"] = None  # redraw
        return _render(ctx, owner_of(request), state)

    def act(state: dict, evt: gr.EventData, request: gr.Request):
        data = getattr(evt, "_data", None) or {}
        owner = owner_of(request)
        state = dict(state or {})
        text = _perform(ctx, owner, str(data.get("action", "")), str(data.get("job", "")))
        if data.get("action") == "show":
            state["pinned"], state["shown"] = str(data.get("job")), None
        return (*_render(ctx, owner, state), text)

    hidden = {"show_progress": "hidden", "concurrency_limit": None}
    timer.tick(refresh, inputs=view, outputs=outputs, **hidden)
    demo.load(on_load, inputs=view, outputs=[*outputs, message], **hidden)
    picker.input(choose, inputs=[picker, view], outputs=outputs, **hidden)
    table.click(act, inputs=view, outputs=[*outputs, message], **hidden)


def _query_job(request: gr.Request | None) -> str | None:
    params = getattr(request, "query_params", None) if request is not None else None
    value = params.get("job") if params is not None else None
    return str(value) if value else None


def _perform(ctx: AppContext, owner: str, action: str, job_id: str) -> str:
    """Run one row button's action for `owner`; the message to show."""
    jobs = ctx.jobs
    actions = {
        "cancel": lambda: jobs.cancel(job_id, owner),
        "interrupt": lambda: jobs.interrupt(job_id, owner),
        "skip": lambda: jobs.skip(job_id, owner),
        "up": lambda: jobs.move(job_id, -1, owner),
        "down": lambda: jobs.move(job_id, +1, owner),
        "show": lambda: jobs.get(job_id) is not None,
    }
    if action not in actions:
        return f"Unknown action: {html.escape(action)}"
    try:
        done = actions[action]()
    except JobAccessError:
        return "That job belongs to another user."
    if action == "show":
        return "" if done else "That job is no longer kept."
    return "" if done else f"Could not {action} job `{job_id}`: its state has changed."


def _render(ctx: AppContext, owner: str, state: dict) -> tuple:
    """Outputs (table, picker, status, gallery, info, url job, state) for one viewer."""
    mine = ctx.jobs.owner_jobs(owner)
    newest = mine[0].id if mine else None
    pinned = state.get("pinned")
    if pinned and not any(j.id == pinned for j in mine):
        pinned = None
    selected_id = pinned or newest
    selected = next((j for j in mine if j.id == selected_id), None)
    choices = [(_label(j), j.id) for j in mine]
    choices_key = [c[1] + c[0] for c in choices] + [selected_id]
    picker = gr.skip()
    if choices_key != state.get("choices"):
        picker = gr.Dropdown(choices=choices, value=selected_id)
    shown_key = _shown_key(selected)
    status, gallery, info = gr.skip(), gr.skip(), gr.skip()
    if selected is not None:
        status = progress_html(ctx, selected) if not selected.finished else _finished(selected)
    if shown_key != state.get("shown"):
        gallery, info = _pictures(selected)
    new_state = {"pinned": pinned, "shown": shown_key, "choices": choices_key}
    table = table_html(ctx, owner)
    return table, picker, status, gallery, info, selected_id or "", new_state


def _shown_key(job: Job | None) -> list | None:
    if job is None:
        return None
    return [job.id, job.state, job.progress.preview_step, len(job.images)]


def _pictures(job: Job | None) -> tuple[Any, str]:
    """The gallery value and infotext of one of the viewer's own jobs."""
    if job is None:
        return [], ""
    if job.state in (job_states.RUNNING, job_states.QUEUED):
        preview = job.progress.preview
        return ([(preview, "Preview")] if preview is not None else []), ""
    images = job.images
    gallery = gallery_items(g for g in images if getattr(g, "image", None))
    return gallery, infotext_html(images[0].infotext if images else "")


def _finished(job: Job) -> str:
    text = {
        job_states.DONE: f"Done: {len(job.images)} image(s)",
        job_states.INTERRUPTED: f"Interrupted: {len(job.images)} image(s)",
        job_states.CANCELLED: "Cancelled",
        job_states.FAILED: f"Failed: {job.error or 'unknown error'}",
    }.get(job.state, job.state)
    return f'<div class="job-status">{html.escape(text)}</div>'


def _label(job: Job) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(job.created_at))
    prompt = " ".join(job.prompt.split())
    prompt = prompt[:40] + ("…" if len(prompt) > 40 else "")
    return f"{when} · {job.kind} · {prompt or '(no prompt)'} · {job.state}"


def table_html(ctx: AppContext, owner: str) -> str:
    """Every job as an HTML table; the viewer's own rows have action buttons."""
    listing = ctx.jobs.listing(finished_limit=FINISHED_SHOWN)
    if not listing:
        return '<p class="queue-empty">The queue is empty.</p>'
    others = bool(ctx.options.get("queue_show_others_prompts"))
    rows = "".join(
        _row(job, position, job.owner == owner, others or job.owner == owner)
        for job, position in listing
    )
    return (
        '<table class="queue-table" aria-label="Job queue"><thead><tr>'
        "<th>#</th><th>Owner</th><th>Mode</th><th>Prompt</th><th>State</th>"
        "<th>Progress</th><th>Actions</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def _row(job: Job, position: int | None, mine: bool, show_prompt: bool) -> str:
    e = html.escape
    where = "▶" if position == 0 else (str(position) if position else "")
    owner = e(job.owner) + (" (you)" if mine else "")
    prompt = " ".join(job.prompt.split()) if show_prompt else ""
    prompt = prompt[:60] + ("…" if len(prompt) > 60 else "")
    percent = job.progress.fraction * 100 if job.state == job_states.RUNNING else 0.0
    if job.state == job_states.DONE:
        percent = 100.0
    p = job.progress
    steps = (
        f"{min(p.step, p.steps)}/{p.steps}" if job.state == job_states.RUNNING and p.steps else ""
    )
    buttons = ""
    if mine:
        spec = _BUTTONS.get(job.state, _SHOW if job.finished and job.images else ())
        buttons = "".join(
            f'<button type="button" class="queue-action" data-action="{a}" data-job="{e(job.id)}" '
            f'aria-label="{label}: {e(prompt or job.id)}">{text}</button>'
            for a, text, label in spec
        )
    classes = f"queue-row {job.state}" + (" mine" if mine else "")
    return (
        f'<tr class="{classes}" data-job="{e(job.id) if mine else ""}" data-owner="{e(job.owner)}">'
        f"<td>{where}</td><td>{owner}</td><td>{e(job.kind)}</td>"
        f'<td class="queue-prompt" translate="no">{e(prompt)}</td><td>{e(job.state)}</td>'
        f'<td><div class="job-progress" role="progressbar" aria-valuemin="0" '
        f'aria-valuemax="100" aria-valuenow="{percent:.0f}" aria-label="Progress">'
        f'<div class="job-progress-fill" style="width:{percent:.1f}%"></div>'
        f'<span class="job-progress-text">{steps}</span></div></td>'
        f'<td class="queue-actions">{buttons}</td></tr>'
    )
