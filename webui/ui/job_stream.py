"""Following a tab's jobs: stream the progress and result of the jobs a page submitted.

Every click on Generate queues one more job. A tab shows the progress (and the live
preview) of its page's *lead* job, the one of its unfinished jobs that runs now or will
run first, and says how many more wait behind it; each job shows its images when it
finishes. So three clicks show the first job's steps while it runs, then the second's,
and never a stale "waiting" line for the newest one while an older one runs.

This module must never import torch or diffusers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from ..core import jobs as job_states
from ..core.jobs import Job, QueueFullError
from .common import InputError, owner_of, progress_html

if TYPE_CHECKING:
    from ..context import AppContext

POLL_SECONDS = 0.25


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


def submit_job(
    ctx: AppContext,
    request: gr.Request,
    kind: str,
    params: Any,
    *,
    script: str | None = None,
    script_args: Any = None,
    alwayson: Mapping[str, Any] | None = None,
) -> Job:
    """Queue a job for this browser with its script and extension args (by name); a bad
    value or a full queue is a message to the user."""
    try:
        checked = params.validated()
        host = getattr(ctx, "extensions", None)
        if kind != "extras":  # generation: scripts and extensions, then the seed is fixed
            if host is not None:
                checked = host.prepare(checked, script=script, script_args=script_args,
                                       alwayson=alwayson or {})  # fmt: skip
            checked = checked.with_seed()
        return ctx.jobs.submit(kind, checked, owner=owner_of(request))
    except (QueueFullError, ValueError) as exc:  # ParamError and ArgError are ValueErrors
        raise InputError(str(exc)) from exc


def follow_job(
    ctx: AppContext, request: gr.Request, tab_jobs: TabJobs, job: Job
) -> Iterator[JobUpdate]:
    """Yield updates of a submitted job of this page until it ends (see module doc)."""
    page = request.session_hash or "local"
    tab_jobs.add(page, job)
    shown_preview = -1
    try:
        while not job.done.wait(POLL_SECONDS):
            lead, behind = tab_jobs.lead(ctx, page)
            if lead is not job:  # another of this page's jobs is shown
                continue
            preview = job.progress.preview
            gallery = gr.skip()
            if preview is not None and job.progress.preview_step != shown_preview:
                shown_preview = job.progress.preview_step
                gallery = [preview]
            yield JobUpdate(progress_html(ctx, job, behind), gallery)
    finally:
        tab_jobs.remove(page, job)
    if job.state == job_states.FAILED:
        raise InputError(f"Generation failed: {job.error}")
    lead, behind = tab_jobs.lead(ctx, page)
    yield JobUpdate(finished=job, waiting=0 if lead is None else behind + 1)


def finished_status(job: Job, waiting: int = 0) -> str:
    """The line shown under a finished job: done or interrupted, images, what still waits."""
    status = "Interrupted" if job.state == job_states.INTERRUPTED else "Done"
    text = f'<div class="job-status"><span>{status}: {len(job.images)} image(s)</span>'
    if waiting:
        text += f" · <span>{waiting} more job(s) from this tab waiting</span>"
    return text + "</div>"
