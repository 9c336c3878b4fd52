"""Live progress: the steps, ETA and preview of running jobs, pushed to the page by the
server-sent events of one plain HTTP stream per page, outside Gradio's event queue.

Why not through Gradio: every message of a Gradio stream makes the page walk its whole
component tree once for each component any event of the page has used (Gradio 6's
`update_loading_stati_state`). With this UI's ~1,700 components and a Generate event of
~180 inputs, one message cost the browser 0.2-0.9 s of script, so a page that got a
message per step stopped answering clicks while a job ran. Gradio's streams now redraw
only when a job changes state (queued, running, done, moved, a new pass); the numbers in
between come from here and are written into the bars by `PROGRESS_JS`.

- Every progress bar (`progress_html`, the queue table's rows) carries
  `data-progress=<key>`: an HMAC of the job id, so other users' rows, which never show
  their job ids, can be updated too.
- The viewer's own running jobs get `<img class="live-preview">` under their line; its
  address names the job by a second key (`preview_key`), given only to the job's owner, and
  carries the preview's step so that a browser never shows a stale one.
- The page opens `/internal/progress-events?ticket=...`; the ticket (`ticket_for`) is
  the page owner's name signed with this process's secret, handed to the page by its
  queue-panel stream, so the route needs neither the login cookie nor the identity cookie.
- A message goes out when a running job's numbers change, at most every `GAP_SECONDS`
  (A1111's "progressbar and preview update period" is 1 s), and at least every
  `TICK_SECONDS` while one runs (the ETA counts down); an idle page gets a comment every
  `KEEPALIVE_SECONDS`. The stream ends when the page goes, or the server stops.

This module must never import torch or diffusers.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.requests import Request  # a runtime name: FastAPI reads the annotations
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..core import jobs as job_states
from ..core.jobs import Job

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ..context import AppContext

GAP_SECONDS = 0.5
TICK_SECONDS = 1.0
KEEPALIVE_SECONDS = 15.0
EVENTS_PATH = "/internal/progress-events"
PREVIEW_PATH = "/internal/progress-preview"
_SECRET = secrets.token_bytes(32)  # per process: keys and tickets end with the server


def _sign(kind: str, value: str) -> str:
    return hmac.new(_SECRET, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:20]


def progress_key(job: Job) -> str:
    """The key of a job's progress bars (shown to every viewer of the queue)."""
    return _sign("progress", job.id)


def preview_key(job: Job) -> str:
    """The key in the address of a job's live preview (given only to its owner)."""
    return _sign("preview", job.id)


def ticket_for(owner: str) -> str:
    """What a page of `owner` shows the events route to prove who it is."""
    name = base64.urlsafe_b64encode(owner.encode()).decode()
    return f"{name}.{_sign('ticket', owner)}"


def owner_of_ticket(ticket: str) -> str | None:
    name, _, signature = ticket.partition(".")
    try:
        owner = base64.urlsafe_b64decode(name.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return owner if hmac.compare_digest(signature, _sign("ticket", owner)) else None


def preview_src(job: Job) -> str:
    """The live preview's address, relative to the page (works under --subpath)."""
    return f"{PREVIEW_PATH.lstrip('/')}/{preview_key(job)}?step={job.progress.preview_step}"


def step_parts(job: Job) -> list[str]:
    """The words of a running job's line: stage, step, batch, ETA."""
    p = job.progress
    parts = [p.text] if p.text else []
    if p.steps:
        parts.append(f"Step {min(p.step, p.steps)}/{p.steps}")
        if p.batches > 1:
            parts.append(f"batch {p.batch + 1}/{p.batches}")
        eta = p.eta_seconds
        parts.append("ETA: estimating…" if eta is None else f"ETA {eta:.1f}s")
    return parts or ["Starting"]


def row_steps(job: Job) -> str:
    """The queue table's progress text of a running job."""
    p = job.progress
    return f"{min(p.step, p.steps)}/{p.steps}" if p.steps else ""


def snapshot(ctx: AppContext, owner: str) -> list[dict[str, Any]]:
    """What the bars of the running jobs show now; previews only of `owner`'s jobs."""
    shown = []
    for job in ctx.jobs.jobs():
        if job.state != job_states.RUNNING:
            continue
        item = {
            "key": progress_key(job),
            "percent": round(job.progress.fraction * 100, 1),
            "steps": row_steps(job),
            "line": step_parts(job),
        }
        if job.owner == owner and job.progress.preview is not None:
            item["preview"] = {"key": preview_key(job), "src": preview_src(job)}
        shown.append(item)
    return shown


async def _messages(ctx: AppContext, owner: str, request: Request) -> AsyncIterator[str]:
    """The page's messages; wakes at least every `TICK_SECONDS` (the ETA, and a server that
    stops ends the stream within a second even where no disconnect is delivered)."""
    stopping: asyncio.Event | None = getattr(request.app.state, "stopping", None)
    sent: Any = None
    last = 0.0
    with ctx.jobs.events.subscribe_async() as events:
        while not events.closed and not (stopping is not None and stopping.is_set()):
            if await request.is_disconnected():
                return
            jobs = snapshot(ctx, owner)
            if jobs != sent:
                sent, last = jobs, time.monotonic()
                yield f"data: {json.dumps({'jobs': jobs})}\n\n"
            elif time.monotonic() - last >= KEEPALIVE_SECONDS:
                last = time.monotonic()
                yield ": keep-alive\n\n"
            await events.wait(TICK_SECONDS)
            await asyncio.sleep(max(0.0, GAP_SECONDS - (time.monotonic() - last)))


async def progress_events(request: Request) -> Response:
    """`GET /internal/progress-events?ticket=...`: the event stream of one page."""
    owner = owner_of_ticket(request.query_params.get("ticket", ""))
    if owner is None:
        return JSONResponse({"detail": "ticket: not a ticket this server gave"}, 403)
    ctx = request.app.state.ctx
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(
        _messages(ctx, owner, request), media_type="text/event-stream", headers=headers
    )


async def progress_preview(request: Request) -> Response:
    """`GET /internal/progress-preview/<key>`: the live preview of a running job, as PNG."""
    key = request.path_params["key"]
    ctx = request.app.state.ctx
    job = next((j for j in ctx.jobs.jobs() if hmac.compare_digest(preview_key(j), key)), None)
    image = job.progress.preview if job is not None else None
    if image is None or not hasattr(image, "save"):
        return JSONResponse({"detail": "no live preview for this key"}, 404)
    data = io.BytesIO()
    image.save(data, format="PNG")
    return Response(data.getvalue(), media_type="image/png", headers={"Cache-Control": "no-store"})


def install_progress_routes(app: FastAPI) -> None:
    app.add_api_route(EVENTS_PATH, progress_events, methods=["GET"], include_in_schema=False)
    app.add_api_route(
        PREVIEW_PATH + "/{key}", progress_preview, methods=["GET"], include_in_schema=False
    )


PROGRESS_JS = (
    """
let source = null;
const base = () => (window.gradio_config?.root || '').replace(/\\/$/, '');
const spans = (parts) => {
  const nodes = [];
  parts.forEach((part, i) => {
    if (i) nodes.push(document.createTextNode(' · '));
    const span = document.createElement('span');
    span.textContent = part;
    nodes.push(span);
  });
  return nodes;
};
const show = (job) => {
  document.querySelectorAll(`.job-progress[data-progress="${job.key}"]`).forEach((bar) => {
    bar.setAttribute('aria-valuenow', String(Math.round(job.percent)));
    const fill = bar.querySelector('.job-progress-fill');
    if (fill) fill.style.width = `${job.percent}%`;
    const steps = bar.querySelector('.job-progress-steps');
    const text = bar.querySelector('.job-progress-text');
    if (steps) steps.replaceChildren(...spans(job.line));
    else if (text && text.textContent !== job.steps) text.textContent = job.steps;
  });
  if (!job.preview) return;
  document.querySelectorAll(`img.live-preview[data-preview="${job.preview.key}"]`)
    .forEach((img) => {
      if (img.getAttribute('src') !== job.preview.src) img.setAttribute('src', job.preview.src);
      img.hidden = false;
    });
};
const open = () => {
  const ticket = props.value;
  if (!ticket || source?.ticket === ticket) return;
  source?.close();
  source = new EventSource(`${base()}"""
    + EVENTS_PATH
    + """?ticket=${encodeURIComponent(ticket)}`);
  source.ticket = ticket;
  source.onmessage = (event) => JSON.parse(event.data).jobs.forEach(show);
};
window.addEventListener('pagehide', () => source?.close());
watch('value', open);
open();
"""
)
