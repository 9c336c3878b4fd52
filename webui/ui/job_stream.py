"""Following a tab's jobs: stream the progress and result of the jobs a page submitted.

Every click on Generate queues one more job. A tab shows the progress (and the live
preview) of its page's *lead* job, the one of its unfinished jobs that runs now or will
run first, and says how many more wait behind it; each job shows its images when it
finishes. So three clicks show the first job's steps while it runs, then the second's,
and never a stale "waiting" line for the newest one while an older one runs.

`follow_job` is an async generator: it awaits the job events of the queue's hub (its own
job's, and the queue changes that move it up) instead of polling, so a waiting click holds
no thread. It redraws the job's line when the job changes state, moves in the queue or
starts another pass, at most every `MIN_GAP_SECONDS`; its steps, ETA and live preview are
kept current on the page by `live_progress` (a message of a Gradio stream costs the page
far more). It sends a no-op every `KEEPALIVE_SECONDS` while nothing changes, so that
Gradio notices a closed page and ends the stream.

This module must never import torch or diffusers.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import gradio as gr

from ..core import events as ev
from ..core import jobs as job_states
from ..core.events import AsyncSubscription
from ..core.jobs import Job, QueueFullError
from ..services.generation import GenerationRequest, NoCheckpointError, RequestError
from .common import InputError, owner_of, progress_html, progress_shape

if TYPE_CHECKING:
    from ..context import AppContext

T = TypeVar("T")
MIN_GAP_SECONDS = 0.2  # at most five redraws a second, however fast the steps are
TICK_SECONDS = 1.0  # the merger tab redraws a running merge this often (ETA)
KEEPALIVE_SECONDS = 30.0  # a no-op this often while nothing changes


class TabJobs:
    """The unfinished jobs each page (Gradio session) has submitted from one tab."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pages: dict[str, list[Job]] = {}

    def add(self, page: str, job: Job) -> None:
        with self._lock:
            self._pages.setdefault(page, []).append(job)

    def remove(self, page: str, job: Job) -> None:
        with self._lock:
            jobs = self._pages.get(page, [])
            if job in jobs:
                jobs.remove(job)
            if not jobs:
                self._pages.pop(page, None)

    def lead(self, ctx: AppContext, page: str) -> tuple[Job | None, int]:
        """The page's job to show (running, else next to run) and how many others wait."""
        with self._lock:
            jobs = [j for j in self._pages.get(page, []) if not j.finished]
        if not jobs:
            return None, 0

        def order(job: Job) -> tuple[int, int]:
            position = ctx.jobs.position(job)
            return (position if position is not None else 1 << 30, job.seq)

        return min(jobs, key=order), len(jobs) - 1


@dataclass
class JobUpdate:
    """One update of a tab's output column: progress HTML, gallery value, finished job."""

    progress: Any = None  # HTML, or gr.skip()
    gallery: Any = None  # a list for the gallery, or gr.skip()
    finished: Job | None = None  # set once, with the job's final state and images
    waiting: int = 0  # the page's other unfinished jobs of this tab, when `finished` is set


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking preparation (validation, image checks, folder scans) in a worker thread,
    so that the event loop that streams every page's progress never waits for it."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args))


def submit_job(
    ctx: AppContext,
    request: gr.Request,
    kind: str,
    params: Any,
    *,
    script: str | None = None,
    script_args: Any = None,
    alwayson: Mapping[str, Any] | None = None,
    override_settings: Mapping[str, Any] | None = None,
) -> Job:
    """Submit a generation for this browser through the generation service (the same call
    the API makes): `params` as the tab read them, the Script list's choice and its args,
    the extension sections' args (`ExtensionInputs.request_fields`). Whatever the service
    refuses (a bad value, no checkpoint, a full queue) is a message to the user."""
    generation = GenerationRequest(kind, params, owner_of(request), script=script,
                                   script_args=script_args, alwayson=alwayson or {},
                                   override_settings=override_settings or {})  # fmt: skip
    try:
        return ctx.generation.submit(generation)
    except NoCheckpointError:
        raise InputError(
            "No checkpoint: add one to the models folder and press the refresh button next to the checkpoint list."
        ) from None
    except (RequestError, QueueFullError) as exc:
        raise InputError(str(exc)) from exc


async def follow_job(
    ctx: AppContext, request: gr.Request, tab_jobs: TabJobs, job: Job
) -> AsyncIterator[JobUpdate]:
    """Yield updates of a submitted job of this page until it ends (see module doc)."""
    page = request.session_hash or "local"
    tab_jobs.add(page, job)
    shown_shape: tuple | None = None
    sent = time.monotonic()

    def concerns(event: ev.JobEvent) -> bool:  # its own events; queue changes that move it
        return event.job_id == job.id or event.kind in ev.LISTING

    try:
        with ctx.jobs.events.subscribe_async(accept=concerns) as events:
            while not job.finished and not events.closed:
                update = None
                lead, behind = tab_jobs.lead(ctx, page)
                if lead is job:  # else another of this page's jobs is shown
                    shape = progress_shape(ctx, job, behind)
                    if shape != shown_shape:  # steps, ETA and preview: live_progress
                        html = progress_html(ctx, job, behind)
                        shown_shape, update = shape, JobUpdate(html, gr.skip())
                if update is None and time.monotonic() - sent >= KEEPALIVE_SECONDS:
                    update = JobUpdate(gr.skip(), gr.skip())  # a closed page ends here
                if update is not None:
                    sent = time.monotonic()
                    yield update
                await _next_change(events, job, sent)
    finally:
        tab_jobs.remove(page, job)
    if not job.finished:  # the server is stopping
        return
    if job.state == job_states.FAILED:
        raise InputError(f"Generation failed: {job.error}")
    lead, behind = tab_jobs.lead(ctx, page)
    yield JobUpdate(finished=job, waiting=0 if lead is None else behind + 1)


async def _next_change(events: AsyncSubscription, job: Job, sent: float) -> None:
    """Wait for something that may change the job's line, then keep the minimum gap."""
    await events.wait(KEEPALIVE_SECONDS)
    gap = MIN_GAP_SECONDS - (time.monotonic() - sent)
    if gap > 0 and not job.finished:
        await asyncio.sleep(gap)


def finished_status(job: Job, waiting: int = 0) -> str:
    """The line shown under a finished job: done or interrupted, images, what still waits."""
    status = "Interrupted" if job.state == job_states.INTERRUPTED else "Done"
    text = f'<div class="job-status"><span>{status}: {len(job.images)} image(s)</span>'
    if waiting:
        text += f" · <span>{waiting} more job(s) from this tab waiting</span>"
    return text + "</div>"
