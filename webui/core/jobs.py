"""The job queue: one worker thread owns the accelerator and runs jobs one at a time.

UI and API submit `Job`s and read their progress snapshots; nothing else touches the
model. A job carries everything it needs (its params), so running it changes nobody
else's settings. Interrupting a job only flags it; the runner checks the flag every step.

This module must never import torch, diffusers or a UI library: the work itself is the
`runner` callable handed in by the composition root.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, INTERRUPTED, CANCELLED = (
    "queued",
    "running",
    "done",
    "failed",
    "interrupted",
    "cancelled",
)
FINISHED = {DONE, FAILED, INTERRUPTED, CANCELLED}


@dataclass
class Progress:
    """A snapshot readers may copy at any time; the runner updates it in place."""

    step: int = 0  # steps done in the current image batch
    steps: int = 0  # steps of the current batch
    batch: int = 0  # index of the current batch (batch count)
    batches: int = 1
    started_at: float | None = None
    preview: Any = None  # a PIL image, refreshed every few steps
    preview_step: int = -1
    text: str = ""

    @property
    def fraction(self) -> float:
        if not self.steps:
            return 0.0
        done = self.batch * self.steps + min(self.step, self.steps)
        return min(1.0, done / (self.batches * self.steps))

    @property
    def eta_seconds(self) -> float | None:
        if self.started_at is None or self.fraction <= 0:
            return None
        elapsed = time.monotonic() - self.started_at
        return elapsed * (1 - self.fraction) / self.fraction


@dataclass
class Job:
    kind: str  # "txt2img"
    params: Any
    owner: str = "local"
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: str = QUEUED
    progress: Progress = field(default_factory=Progress)
    result: Any = None
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    interrupt_requested: bool = False
    done: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


class JobQueue:
    """FIFO queue with a single worker thread."""

    def __init__(self, runner: Callable[[Job], Any], *, keep_finished: int = 200):
        self._runner = runner
        self._jobs: dict[str, Job] = {}
        self._pending: list[Job] = []
        self._cond = threading.Condition()
        self._keep = keep_finished
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="job-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        with self._cond:
            self._stopping = True
            for job in self._jobs.values():
                if job.state == RUNNING:
                    job.interrupt_requested = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, kind: str, params: Any, owner: str = "local") -> Job:
        job = Job(kind=kind, params=params, owner=owner)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            self._jobs[job.id] = job
            self._pending.append(job)
            self._cond.notify_all()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._cond:
            return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        with self._cond:
            return list(self._jobs.values())

    def position(self, job: Job) -> int | None:
        """0 for the running job, 1.. for waiting ones, None when finished."""
        with self._cond:
            if job.state == RUNNING:
                return 0
            if job in self._pending:
                return self._pending.index(job) + 1
        return None

    def current(self) -> Job | None:
        with self._cond:
            return next((j for j in self._jobs.values() if j.state == RUNNING), None)

    def interrupt(self, job_id: str) -> bool:
        """Stop a running job after its current step, or cancel a waiting one."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None or job.finished:
                return False
            job.interrupt_requested = True
            if job.state == QUEUED:
                self._pending.remove(job)
                self._finish(job, CANCELLED)
            return True

    def interrupt_owner(self, owner: str) -> int:
        """Interrupt every unfinished job of one owner; returns how many."""
        ids = [j.id for j in self.jobs() if j.owner == owner and not j.finished]
        return sum(self.interrupt(i) for i in ids)

    def wait(self, job: Job, timeout: float | None = None) -> bool:
        return job.done.wait(timeout)

    # --- the worker -------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    for job in self._pending:
                        self._finish(job, CANCELLED)
                    self._pending.clear()
                    return
                job = self._pending.pop(0)
                job.state = RUNNING
                job.progress.started_at = time.monotonic()
            self._run(job)

    def _run(self, job: Job) -> None:
        try:
            job.result = self._runner(job)
            state = INTERRUPTED if job.interrupt_requested else DONE
        except Exception as exc:  # a failing job must never stop the worker
            log.exception("job %s failed", job.id)
            job.error = str(exc) or type(exc).__name__
            state = FAILED
        with self._cond:
            self._finish(job, state)

    def _finish(self, job: Job, state: str) -> None:
        job.state = state
        job.finished_at = time.time()
        job.done.set()
        finished = [j for j in self._jobs.values() if j.finished]
        for old in finished[: max(0, len(finished) - self._keep)]:
            del self._jobs[old.id]
