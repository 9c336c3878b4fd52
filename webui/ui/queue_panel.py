"""The queue panel and "My results": everyone's jobs, and this browser's own results.

The queue table lists every job (owner, mode, prompt start, position, state, the worker
that runs it, progress; other users' prompts only with the option
queue_show_others_prompts). Rows of the viewer's own jobs carry buttons: move up/down and
cancel while waiting, skip and interrupt while running, show when finished. Owners are
logged-in users, else browsers (see `common.owner_of`), so a reloaded page still owns its
jobs.

"My results" shows one of the viewer's own jobs: its live preview while it runs, its
images and infotext once done. It follows the newest job unless another one is chosen;
the chosen job's id is kept in the page URL (`?job=<id>`), so a reload shows it again.
Finished jobs come from the job store (however old, also after a restart), `MY_JOBS_PAGE`
at a time ("Older jobs", "Newer jobs"); their pictures are the saved files, and a file
that was deleted is said to be deleted. A job that runs again after a restart says so.
Nobody sees another user's previews or images here.

Both are pushed, never polled: each page runs one long-lived stream (`panel_stream`, an
async generator started at page load) that awaits the queue's job events and redraws only
what changed. Changes to the queue and to the viewer's own jobs show within
`MIN_GAP_SECONDS`; other users' events are looked at every `BUSY_GAP_SECONDS` while the
viewer has unfinished jobs, else every `IDLE_GAP_SECONDS`. Steps, ETAs and live previews
are not sent here: `live_progress` keeps the bars and previews current (every message of
a Gradio stream costs the page far more than one of its own), so this stream sends only
when a job changes state, moves, or starts another pass. An idle page receives a no-op
every `KEEPALIVE_SECONDS` on its open stream and makes no request. The stream ends when
the page closes (Gradio's unload event, or the next message finding the page gone).

This module must never import torch or diffusers.
"""

from __future__ import annotations

import html
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import gradio as gr

from ..core import events as ev
from ..core import jobs as job_states
from ..core.events import AsyncSubscription, JobEvent
from ..core.jobs import Job, JobAccessError, file_deleted, rerun_note
from . import live_progress
from .common import (
    gallery_items,
    infotext_html,
    owner_of,
    progress_html,
    progress_shape,
    result_gallery,
)
from .live_progress import PROGRESS_JS, ticket_for

if TYPE_CHECKING:
    from ..context import AppContext

MIN_GAP_SECONDS = 0.25  # queue changes and the viewer's own jobs
BUSY_GAP_SECONDS = 1.0  # others' progress while the viewer has jobs in the queue
IDLE_GAP_SECONDS = 5.0  # others' progress while the viewer has none
KEEPALIVE_SECONDS = 30.0
# Gradio runs at most this many events at once (40 unless launch(max_threads=...); this app
# is mounted, not launched). Every open page holds one for its stream and each of its waiting
# Generate clicks one more; they hold no thread (sync handlers still share 40 threads).
OPEN_EVENTS = 2048
FINISHED_SHOWN = 5  # finished jobs listed under the running and waiting ones
MY_JOBS_PAGE = 50  # jobs in the "My jobs" list at a time

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


def build_queue_panel(ctx: AppContext, demo: gr.Blocks) -> PageViews:
    """The queue table and the "My results" box, fed by one stream per page; call inside
    `demo`. Returns the open pages (their views), for tests and diagnostics."""
    with gr.Accordion("Queue", open=True, elem_id="queue_panel"):
        table = gr.HTML("", js_on_load=ACTIONS_JS, elem_id="queue_table")
        message = gr.Markdown("", elem_id="queue_message")
    with gr.Accordion("My results", open=True, elem_id="my_results"):
        picker = gr.Dropdown(label="My jobs", choices=[], value=None, elem_id="my_jobs")
        with gr.Row():
            newer = gr.Button("Newer jobs", size="sm", elem_id="my_jobs_newer")
            older = gr.Button("Older jobs", size="sm", elem_id="my_jobs_older")
        status = gr.HTML("", elem_id="my_job_status")
        gallery = result_gallery("Job images", "my_job_gallery", columns=4)
        info = gr.HTML("", elem_id="my_job_infotext")
    url_job = gr.HTML("", visible="hidden", js_on_load=URL_JS, elem_id="my_job_url")
    ticket = gr.HTML("", visible="hidden", js_on_load=PROGRESS_JS, elem_id="live_progress")
    outputs = [table, picker, status, gallery, info, url_job, message, ticket]
    pages = PageViews()

    async def stream(request: gr.Request):
        async for update in panel_stream(ctx, pages, request):
            yield update

    async def choose(job_id: str | None, request: gr.Request) -> None:
        view = pages.get(_page(request))
        if view is not None:
            view.show(job_id or None)

    async def act(evt: gr.EventData, request: gr.Request) -> str:
        data = getattr(evt, "_data", None) or {}
        action, job_id = str(data.get("action", "")), str(data.get("job", ""))
        text = _perform(ctx, owner_of(request), action, job_id)
        view = pages.get(_page(request))
        if view is not None and action == "show" and not text:
            view.show(job_id)
        return text  # the queue's own event redraws the table

    def page(step: int) -> Callable[[gr.Request], None]:
        def turn(request: gr.Request) -> None:
            view = pages.get(_page(request))
            if view is not None:
                view.turn(step)

        return turn

    def close(request: gr.Request) -> None:
        pages.close(_page(request))

    hidden = {"show_progress": "hidden", "concurrency_limit": None}
    _room_for_streams(demo)
    demo.load(stream, outputs=outputs, **hidden)
    demo.unload(close)
    picker.input(choose, inputs=picker, **hidden)
    newer.click(page(-MY_JOBS_PAGE), **hidden)
    older.click(page(+MY_JOBS_PAGE), **hidden)
    table.click(act, outputs=message, **hidden)
    return pages


def _room_for_streams(demo: gr.Blocks) -> None:
    """Let Gradio run `OPEN_EVENTS` events at once (see there); what launch(max_threads)
    does to the queue, without raising the number of threads."""
    queue = getattr(demo, "_queue", None)
    if queue is not None and queue.max_thread_count < OPEN_EVENTS:
        queue.max_thread_count = OPEN_EVENTS


class PageView:
    """What one page shows and what it was last sent; touched in the event loop only
    (`close` may come from a thread: it only sets a flag and wakes the stream)."""

    def __init__(self, owner: str):
        self.owner = owner
        self.pinned: str | None = None  # the job chosen in "My jobs" (else the newest)
        self.offset = 0  # the page of "My jobs": how many newer jobs are left out
        self.sent: dict[str, Any] = {}  # output name -> what the page shows now
        self.busy = False  # the viewer has unfinished jobs
        self.last_sent = 0.0  # monotonic time of the last message
        self.last_drawn = 0.0  # monotonic time of the last redraw, sent or not
        self.closed = False
        self.wake: Callable[[], None] = lambda: None  # set by the stream

    def show(self, job_id: str | None) -> None:
        """The user chose a job to show (None: follow the newest)."""
        self.pinned = job_id
        self.sent.pop("shown", None)  # redraw the pictures
        self.wake()

    def turn(self, step: int) -> None:
        """Show older (step > 0) or newer jobs in "My jobs"."""
        self.offset = max(0, self.offset + step)
        self.sent.pop("choices", None)
        self.wake()

    def close(self) -> None:
        self.closed = True
        self.wake()


Page = tuple[str, str]  # (Gradio session, owner): a request of another owner that names
# the session (it is sent by the browser) never reaches that page's view


class PageViews:
    """The open pages of one UI; a page's stream registers itself."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._views: dict[Page, PageView] = {}

    def open(self, page: Page) -> PageView:
        view = PageView(page[1])
        with self._lock:
            old = self._views.get(page)
            self._views[page] = view
        if old is not None:  # the same page started its stream again: one is enough
            old.close()
        return view

    def get(self, page: Page) -> PageView | None:
        with self._lock:
            return self._views.get(page)

    def close(self, page: Page, view: PageView | None = None) -> None:
        """The page went away (or `view`'s stream ended): end its stream."""
        with self._lock:
            current = self._views.get(page)
            if current is None or (view is not None and current is not view):
                return
            del self._views[page]
        current.close()

    def __len__(self) -> int:
        with self._lock:
            return len(self._views)


def _page(request: gr.Request | None) -> Page:
    return getattr(request, "session_hash", None) or "local", owner_of(request)


async def panel_stream(
    ctx: AppContext, pages: PageViews, request: gr.Request
) -> AsyncIterator[tuple]:
    """The page's outputs (table, picker, status, gallery, info, url job, message): first
    all of them, then what changed whenever the queue's events say so, until the page
    closes."""
    page = _page(request)
    view = pages.open(page)
    try:
        with ctx.jobs.events.subscribe_async() as events:
            view.wake = events.wake
            note = _pin_from_url(ctx, view, request)
            view.last_sent = view.last_drawn = time.monotonic()
            yield (*_render(ctx, view), note, ticket_for(view.owner))
            while True:
                keepalive = await _next_change(view, events)
                if view.closed or events.closed:
                    return
                update = _render(ctx, view)
                view.last_drawn = time.monotonic()  # the next tick waits from here
                if keepalive or any(not _is_skip(value) for value in update):
                    view.last_sent = time.monotonic()
                    yield (*update, gr.skip(), gr.skip())
    finally:
        pages.close(page, view)


def _pin_from_url(ctx: AppContext, view: PageView, request: gr.Request) -> str:
    """Show the job named in the page URL (?job=<id>) if it is the viewer's; the message."""
    wanted = _query_job(request)
    if not wanted:
        return ""
    job = ctx.jobs.get(wanted)
    if job is not None and job.owner == view.owner:
        view.pinned = job.id
        return ""
    shown = html.escape(wanted[:64].replace("`", ""))
    return f"Job `{shown}` is not one of yours, or it is no longer kept."


async def _next_change(view: PageView, events: AsyncSubscription) -> bool:
    """Wait until the page should be redrawn; True when nothing was sent for so long that a
    no-op is due (it lets Gradio notice a page that has gone). The gap counts from the last
    redraw, sent or not, so that events that change nothing shown (a step) are not
    redrawn more often than the gap allows."""
    due = math.inf  # when to redraw: the soonest any received event allows
    keepalive_at = view.last_sent + KEEPALIVE_SECONDS
    while True:
        now = time.monotonic()
        if due <= now:
            return False
        if keepalive_at <= now:
            return True
        received = await events.wait(min(due, keepalive_at) - now)
        if view.closed or events.closed or events.woken:
            return False
        for event in received:
            due = min(due, view.last_drawn + _gap(view, event))


def _gap(view: PageView, event: JobEvent) -> float:
    """How long after the last message an event may be shown (see the module doc)."""
    if event.owner == view.owner or event.kind in ev.LISTING:
        return MIN_GAP_SECONDS
    return BUSY_GAP_SECONDS if view.busy else IDLE_GAP_SECONDS


def _is_skip(value: Any) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update" and len(value) == 1


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


def _my_jobs(ctx: AppContext, view: PageView) -> list[Job]:
    """The page of the viewer's jobs "My jobs" lists, with the chosen job even when it is
    on another page (it is unpinned when it is no longer there)."""
    total = ctx.jobs.job_count(view.owner)
    if view.offset >= total:
        view.offset = max(0, (total - 1) // MY_JOBS_PAGE * MY_JOBS_PAGE)
    mine = ctx.jobs.owner_jobs(view.owner, limit=MY_JOBS_PAGE, offset=view.offset)
    if view.pinned and not any(j.id == view.pinned for j in mine):
        pinned = ctx.jobs.get(view.pinned)
        if pinned is not None and pinned.owner == view.owner:
            mine.insert(0, pinned)
        else:
            view.pinned = None
    return mine


def _render(ctx: AppContext, view: PageView) -> tuple:
    """(table, picker, status, gallery, info, url job) for one page; gr.skip() for what
    the page already shows."""
    mine = _my_jobs(ctx, view)
    view.busy = ctx.jobs.active(view.owner) is not None
    selected_id = view.pinned or (mine[0].id if mine else None)
    selected = next((j for j in mine if j.id == selected_id), None)
    choices = [(_label(j), j.id) for j in mine]
    picker = gallery = info = gr.skip()
    if _fresh(view, "choices", [choices, selected_id]):
        picker = gr.Dropdown(choices=choices, value=selected_id)
    if _fresh(view, "shown", _shown_key(selected)):
        gallery, info = _pictures(selected)
    status, shape = "", None
    if selected is not None:
        status = progress_html(ctx, selected) if not selected.finished else _finished(selected)
        shape = progress_shape(ctx, selected) if not selected.finished else status
    table = gr.skip()
    if _fresh(view, "table", table_html(ctx, view.owner, with_progress=False)):
        table = table_html(ctx, view.owner)
    url = selected_id or ""
    return (
        table,
        picker,
        status if _fresh(view, "status", shape) else gr.skip(),
        gallery,
        info,
        url if _fresh(view, "url", url) else gr.skip(),
    )


def _fresh(view: PageView, name: str, value: Any) -> bool:
    """Whether the page does not show `value` yet (it is remembered as shown)."""
    if name in view.sent and view.sent[name] == value:
        return False
    view.sent[name] = value
    return True


def _shown_key(job: Job | None) -> list | None:
    if job is None:
        return None
    deleted = sum(file_deleted(g) for g in job.images)
    return [job.id, job.state, len(job.images), deleted]


def _pictures(job: Job | None) -> tuple[Any, str]:
    """The gallery value and infotext of one of the viewer's own jobs."""
    if job is None:
        return [], ""
    if job.state in (job_states.RUNNING, job_states.QUEUED):  # the live preview: in the status
        return [], ""
    images = [g for g in job.images if not file_deleted(g)]  # the files are the truth
    gallery = gallery_items(
        g for g in images if getattr(g, "path", None) or getattr(g, "image", None)
    )
    return gallery, infotext_html(images[0].infotext if images else "")


def _finished(job: Job) -> str:
    text = {
        job_states.DONE: f"Done: {len(job.images)} image(s)",
        job_states.INTERRUPTED: f"Interrupted: {len(job.images)} image(s)",
        job_states.CANCELLED: "Cancelled",
        job_states.FAILED: f"Failed: {job.error or 'unknown error'}",
    }.get(job.state, job.state)
    notes = [text]
    deleted = sum(file_deleted(g) for g in job.images)
    if deleted:  # the files are the truth: say so instead of showing a broken picture
        notes.append(f"{deleted} image file(s) deleted")
    if job.rerun_reason:
        notes.append(rerun_note(job))
    spans = "".join(f"<span>{html.escape(n)}</span>" for n in notes)  # one text per span
    return f'<div class="job-status">{spans}</div>'


def _label(job: Job) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(job.created_at))
    prompt = " ".join(job.prompt.split())
    prompt = prompt[:40] + ("…" if len(prompt) > 40 else "")
    return f"{when} · {job.kind} · {prompt or '(no prompt)'} · {job.state}"


def table_html(ctx: AppContext, owner: str, with_progress: bool = True) -> str:
    """Every job as an HTML table; the viewer's own rows have action buttons. Without
    progress: what only a change of the queue changes (the page's live progress keeps
    the bars current)."""
    listing = ctx.jobs.listing(finished_limit=FINISHED_SHOWN)
    if not listing:
        return '<p class="queue-empty">The queue is empty.</p>'
    others = bool(ctx.options.get("queue_show_others_prompts"))
    rows = "".join(
        _row(job, position, job.owner == owner, others or job.owner == owner, with_progress)
        for job, position in listing
    )
    return (
        '<table class="queue-table" aria-label="Job queue"><thead><tr>'
        "<th>#</th><th>Owner</th><th>Mode</th><th>Prompt</th><th>State</th>"
        "<th>Worker</th><th>Progress</th><th>Actions</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


STARTUP_OWNER = "startup"  # webui.app.load_startup_checkpoint's load job


def _row(
    job: Job, position: int | None, mine: bool, show_prompt: bool, with_progress: bool = True
) -> str:
    e = html.escape
    where = "▶" if position == 0 else (str(position) if position else "")
    owner = e(job.owner) + (" (you)" if mine else "")
    prompt = " ".join(job.prompt.split()) if show_prompt else ""
    prompt = prompt[:60] + ("…" if len(prompt) > 60 else "")
    percent = job.progress.fraction * 100 if job.state == job_states.RUNNING else 0.0
    if job.state == job_states.DONE:
        percent = 100.0
    running = job.state == job_states.RUNNING
    steps = live_progress.row_steps(job) if running and with_progress else ""
    if not with_progress:
        percent = 0.0
    buttons = ""
    if mine:
        spec = _BUTTONS.get(job.state, _SHOW if job.finished and job.images else ())
        buttons = "".join(
            f'<button type="button" class="queue-action" data-action="{a}" data-job="{e(job.id)}" '
            f'aria-label="{label}: {e(prompt or job.id)}">{text}</button>'
            for a, text, label in spec
        )
    classes = f"queue-row {job.state}" + (" mine" if mine else "")
    state = e(job.state)
    if job.rerun_reason:  # it runs again after a restart
        state += f'<br><small class="queue-rerun">{e(rerun_note(job))}</small>'
    if job.owner == STARTUP_OWNER:  # everyone waits for the start-up checkpoint: name it
        prompt = job.prompt
        if job.state == job_states.FAILED:
            state += f'<br><small class="queue-error">{e(job.error or "")}</small>'
    return (
        f'<tr class="{classes}" data-job="{e(job.id) if mine else ""}" data-owner="{e(job.owner)}">'
        f"<td>{where}</td><td>{owner}</td><td>{e(job.kind)}</td>"
        f'<td class="queue-prompt" translate="no">{e(prompt)}</td><td>{state}</td>'
        f'<td class="queue-worker" translate="no">{e(job.worker or "")}</td>'
        f'<td><div class="job-progress" role="progressbar" aria-valuemin="0" '
        f'aria-valuemax="100" aria-valuenow="{percent:.0f}" aria-label="Progress" '
        f'data-progress="{live_progress.progress_key(job)}">'
        f'<div class="job-progress-fill" style="width:{percent:.1f}%"></div>'
        f'<span class="job-progress-text">{steps}</span></div></td>'
        f'<td class="queue-actions">{buttons}</td></tr>'
    )
