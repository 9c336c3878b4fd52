"""The job queue: one worker thread owns the accelerator and runs jobs one at a time.

UI and API submit `Job`s and read their progress snapshots; nothing else touches the
model. A job carries everything it needs: its params and a snapshot of the options taken
when it was submitted (plus its own overrides), so running it changes nobody else's
settings. Waiting jobs are taken round-robin between owners (the user who has been served
least recently goes first), FIFO within one owner; an owner may reorder, cancel,
interrupt or skip their own jobs. A per-owner limit refuses new jobs with
`QueueFullError`. Finished jobs stay retrievable (the last few per owner).

Interrupting or skipping only sets a flag; the runner asks `Job.should_stop()` every step.
Stopping the queue (the server shuts down) cancels the waiting jobs at once and aborts the
running one: its next `should_stop()` raises `JobAborted`, so nothing more is sampled,
decoded or saved, and the job ends as interrupted.

Every change is published once on `JobQueue.events` (see `events.py`): queued, started,
step (from the progress listeners), saved (`Job.image_saved`, called by the worker's save),
finished, failed, moved and stopping. Pages and API routes await those events; nothing
needs to poll a job.

This module must never import torch, diffusers or a UI library: the work itself is the
`runner` callable handed in by the composition root.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..errors import UserError
from . import events as ev
from .events import EventHub, StepPublisher

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
# maintenance jobs (preload/unload a checkpoint) never count against the per-owner limit
UNLIMITED_KINDS = frozenset({"load", "unload"})
JOB_ID = re.compile(r"[A-Za-z0-9_\-.:()]{1,64}")
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_seq = itertools.count()


class QueueFullError(RuntimeError):
    """The owner already has as many unfinished jobs as the per-user limit allows."""

    def __init__(self, owner: str, limit: int):
        super().__init__(
            f"Queue limit reached: you already have {limit} job(s) waiting or running "
            f"(the limit per user is {limit}). Wait for one to finish or cancel one."
        )
        self.owner = owner
        self.limit = limit


SHUTDOWN_MESSAGE = "Stopped: the server is shutting down"


class JobAborted(Exception):
    """Raised in the runner when the server shuts down: the job's unfinished work is dropped."""


class ShuttingDownError(RuntimeError):
    """A job was submitted after the queue was stopped."""

    def __init__(self) -> None:
        super().__init__("The server is shutting down; no new jobs are taken.")


class JobAccessError(PermissionError):
    """Someone tried to act on another owner's job."""


@dataclass
class Progress:
    """A snapshot readers may copy at any time; the runner updates it in place.

    The ETA comes from measured steps only: until one step has finished there is none
    ("estimating…"); then it is the remaining steps times the mean step time, counting
    down while a step runs and never growing before the next step ends."""

    step: int = 0  # steps done in the current image batch
    steps: int = 0  # steps of the current batch
    batch: int = 0  # index of the current batch (batch count)
    batches: int = 1
    started_at: float | None = None  # when sampling began (monotonic), not the queue wait
    preview: Any = None  # a PIL image, refreshed every few steps
    preview_step: int = -1
    text: str = ""
    _measured: tuple[int, float] = (0, 0.0)  # steps timed, seconds they took
    _last_step_at: float | None = None
    # called (in the worker) after every advance() and set_preview(): event publishing,
    # extensions' on_step hooks
    listeners: list[Callable[[Progress], None]] = field(default_factory=list, repr=False)

    def advance(self, step: int, steps: int) -> None:
        """A sampling step ended: `step` of `steps` done in the current batch."""
        now = time.monotonic()
        since = self._last_step_at if self._last_step_at is not None else self.started_at
        if since is not None and step > 0:
            count, seconds = self._measured
            self._measured = (count + 1, seconds + max(0.0, now - since))
        self._last_step_at = now
        self.steps = steps
        self.step = step
        self._notify()

    def set_preview(self, image: Any, step: int) -> None:
        """A new live preview, made after `step` steps of the whole job."""
        self.preview, self.preview_step = image, step
        self._notify()

    def _notify(self) -> None:
        for listener in list(self.listeners):
            listener(self)

    @property
    def fraction(self) -> float:
        if not self.steps:
            return 0.0
        done = self.batch * self.steps + min(self.step, self.steps)
        return min(1.0, done / (self.batches * self.steps))

    @property
    def seconds_per_step(self) -> float | None:
        count, seconds = self._measured
        return seconds / count if count else None

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left, or None while no step has been measured yet."""
        per_step = self.seconds_per_step
        if per_step is None or not self.steps:
            return None
        remaining = self.batches * self.steps - (
            self.batch * self.steps + min(self.step, self.steps)
        )
        if remaining <= 0:
            return 0.0
        running_for = time.monotonic() - (self._last_step_at or time.monotonic())
        return max((remaining - 1) * per_step, remaining * per_step - running_for)


@dataclass
class Job:
    kind: str  # "txt2img", "img2img", "load", ... any kind the runner knows
    params: Any
    owner: str = "local"
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: str = QUEUED
    progress: Progress = field(default_factory=Progress)
    result: Any = None
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    interrupt_requested: bool = False
    abort_requested: bool = False  # ended by the server's shutdown: nothing more is saved
    skip_requested: bool = False
    skipped: int = 0  # images whose sampling was cut short by "skip"
    options: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, repr=False)  # snapshot
    seq: int = field(default_factory=lambda: next(_seq))
    done: threading.Event = field(default_factory=threading.Event, repr=False)
    saved: list[str] = field(default_factory=list, repr=False)  # files written so far
    # the hub of the queue the job was submitted to (None for a job never submitted)
    events: EventHub | None = field(default=None, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def prompt(self) -> str:
        """What the job is about, for listings: the prompt, or the checkpoint it loads."""
        text = getattr(self.params, "prompt", None)
        if text is None and isinstance(self.params, str):
            text = self.params
        return text if isinstance(text, str) else ""

    @property
    def images(self) -> list[Any]:
        """The result's images (objects with .image, .seed, .infotext), any job kind."""
        return list(getattr(self.result, "images", None) or [])

    def image_saved(self, path: str) -> None:
        """The worker's save wrote one of this job's images to `path`: record and publish it."""
        self.saved.append(path)
        if self.events is not None:
            self.events.publish(ev.SAVED, self, path=path)

    def should_stop(self) -> bool:
        """Asked by the runner every sampling step (and between batches).

        True after an interrupt. A skip ends the image being sampled now: it is consumed
        at the next sampling step (marking that batch's steps as done) and the job goes on
        with its next batch; asked while nothing is being sampled, it waits for the next.
        Raises JobAborted once the queue is stopping.
        """
        self.raise_if_aborted()
        if self.interrupt_requested:
            return True
        p = self.progress
        if self.skip_requested and p.step < p.steps:
            self.skip_requested = False
            self.skipped += 1
            p.step = p.steps
            return True
        return False

    def raise_if_aborted(self) -> None:
        """Raise JobAborted when the server is shutting down (asked before saving too)."""
        if self.abort_requested:
            raise JobAborted(SHUTDOWN_MESSAGE)


def summary(
    job: Job, position: int | None = None, prompt_chars: int = 80, *, show_prompt: bool = True
) -> dict[str, Any]:
    """A JSON-friendly description of a job for queue listings (no images, no options).
    `show_prompt=False` leaves the prompt out (another user's job on a shared server)."""
    p = job.progress
    prompt = " ".join(job.prompt.split()) if show_prompt else ""
    if len(prompt) > prompt_chars:
        prompt = prompt[: prompt_chars - 1] + "…"
    eta = p.eta_seconds if job.state == RUNNING else None
    return {
        "id": job.id,
        "owner": job.owner,
        "kind": job.kind,
        "prompt": prompt,
        "state": job.state,
        "position": position,
        "progress": round(p.fraction if job.state == RUNNING else float(job.state == DONE), 4),
        "step": p.step,
        "steps": p.steps,
        "batch": p.batch,
        "batches": p.batches,
        "eta_seconds": round(eta, 1) if eta is not None else None,
        "text": p.text,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "interrupt_requested": job.interrupt_requested,
        "skipped": job.skipped,
        "image_count": len(job.images),
        "error": job.error,
    }


class JobQueue:
    """Round-robin between owners, FIFO per owner, one worker thread.

    `options_snapshot()` gives the options a new job starts from; `limit_per_owner()`
    the most unfinished jobs one owner may have (0: no limit). `events` is where every
    change of a job is published (a new hub unless one is given).
    """

    def __init__(
        self,
        runner: Callable[[Job], Any],
        *,
        keep_finished: int = 200,
        keep_per_owner: int = 20,
        options_snapshot: Callable[[], Mapping[str, Any]] | None = None,
        limit_per_owner: Callable[[], int] | int = 0,
        events: EventHub | None = None,
    ):
        self.events = events if events is not None else EventHub()
        self._runner = runner
        self._jobs: dict[str, Job] = {}
        self._waiting: dict[str, list[Job]] = {}  # owner -> their waiting jobs, in order
        self._served: dict[str, int] = {}  # owner -> tick of their last started job
        self._tick = 0
        self._cond = threading.Condition()
        self._keep = keep_finished
        self._keep_per_owner = keep_per_owner
        self._snapshot = options_snapshot
        self._limit = limit_per_owner
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="job-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def shutdown(self) -> None:
        """Refuse new jobs, cancel the waiting ones and abort the running one; returns at
        once (the running job stops at its next step, see Job.should_stop)."""
        with self._cond:
            self._stopping = True
            for job in [j for js in self._waiting.values() for j in js]:
                job.interrupt_requested = job.abort_requested = True
                job.error = SHUTDOWN_MESSAGE
                self._finish(job, CANCELLED)
            self._waiting.clear()
            for job in self._jobs.values():
                if job.state == RUNNING:
                    job.interrupt_requested = job.abort_requested = True
            self._cond.notify_all()

    def stopped(self) -> bool:
        """True once the worker has ended (after shutdown())."""
        return not self._thread.is_alive()

    def stop(self, timeout: float = 10) -> None:
        """`shutdown()`, then wait up to `timeout` seconds for the worker to end."""
        self.shutdown()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the running job did not stop within %.0f s", timeout)
        self.events.close()  # every page's and client's stream ends

    # --- submitting --------------------------------------------------------------------
    def submit(
        self,
        kind: str,
        params: Any,
        owner: str = "local",
        *,
        job_id: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> Job:
        """Queue a job. `options` override the snapshot of the current options for this
        job alone. Raises QueueFullError over the per-owner limit, ValueError for a bad
        or taken `job_id`."""
        snapshot = dict(self._snapshot() if self._snapshot else {})
        snapshot.update(options or {})
        job = Job(kind=kind, params=params, owner=owner, options=MappingProxyType(snapshot))
        job.events = self.events
        job.progress.listeners.append(StepPublisher(self.events, job))
        if job_id is not None:
            if not JOB_ID.fullmatch(job_id):
                raise ValueError("job id: 1-64 characters of A-Z a-z 0-9 _ - . : ( )")
            job.id = job_id
        with self._cond:
            if self._stopping:
                raise ShuttingDownError()
            old = self._jobs.get(job.id)
            if old is not None:
                if old.owner != owner or not old.finished:
                    raise ValueError(f"job id {job.id!r} is already in use")
                del self._jobs[old.id]
            limit = self._current_limit()
            if limit and kind not in UNLIMITED_KINDS:
                mine = sum(
                    1
                    for j in self._jobs.values()
                    if j.owner == owner and not j.finished and j.kind not in UNLIMITED_KINDS
                )
                if mine >= limit:
                    raise QueueFullError(owner, limit)
            self._jobs[job.id] = job
            self._waiting.setdefault(owner, []).append(job)
            self._cond.notify_all()
            self.events.publish(ev.QUEUED, job)
        return job

    def _current_limit(self) -> int:
        try:
            value = self._limit() if callable(self._limit) else self._limit
            return max(0, int(value))
        except (TypeError, ValueError, KeyError):
            return 0

    # --- reading ------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        with self._cond:
            return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        with self._cond:
            return list(self._jobs.values())

    def schedule(self) -> list[Job]:
        """Waiting jobs in the order they will run if nothing else is submitted."""
        with self._cond:
            return self._schedule()

    def _schedule(self) -> list[Job]:
        queues = {o: list(js) for o, js in self._waiting.items() if js}
        served = dict(self._served)
        tick = self._tick
        order: list[Job] = []
        while queues:
            owner = min(queues, key=lambda o: (served.get(o, -1), queues[o][0].seq))
            order.append(queues[owner].pop(0))
            tick += 1
            served[owner] = tick
            if not queues[owner]:
                del queues[owner]
        return order

    def listing(self, finished_limit: int = 20) -> list[tuple[Job, int | None]]:
        """(job, position) for the running job, the waiting ones in run order, then the
        most recently finished ones (newest first)."""
        with self._cond:
            running = [(j, 0) for j in self._jobs.values() if j.state == RUNNING]
            waiting = [(j, i + 1) for i, j in enumerate(self._schedule())]
            finished = sorted(
                (j for j in self._jobs.values() if j.finished),
                key=lambda j: j.finished_at or 0,
                reverse=True,
            )[:finished_limit]
        return running + waiting + [(j, None) for j in finished]

    def owner_jobs(self, owner: str) -> list[Job]:
        """Every kept job of one owner, newest first."""
        with self._cond:
            mine = [j for j in self._jobs.values() if j.owner == owner]
        return sorted(mine, key=lambda j: j.seq, reverse=True)

    def position(self, job: Job) -> int | None:
        """0 for the running job, 1.. for waiting ones, None when finished."""
        with self._cond:
            if job.state == RUNNING:
                return 0
            if job.state == QUEUED:
                order = self._schedule()
                if job in order:
                    return order.index(job) + 1
        return None

    def current(self) -> Job | None:
        with self._cond:
            return next((j for j in self._jobs.values() if j.state == RUNNING), None)

    def active(self, owner: str) -> Job | None:
        """The owner's running job, else the one of theirs that will run first."""
        with self._cond:
            running = next(
                (j for j in self._jobs.values() if j.state == RUNNING and j.owner == owner), None
            )
            if running is not None:
                return running
            return next((j for j in self._schedule() if j.owner == owner), None)

    # --- acting on jobs -------------------------------------------------------------------
    def _own(self, job_id: str, owner: str | None) -> Job | None:
        job = self._jobs.get(job_id)
        if job is not None and owner is not None and job.owner != owner:
            raise JobAccessError(f"job {job_id} belongs to another user")
        return job

    def cancel(self, job_id: str, owner: str | None = None) -> bool:
        """Remove a waiting job from the queue; False when it is not waiting."""
        with self._cond:
            job = self._own(job_id, owner)
            if job is None or job.state != QUEUED:
                return False
            job.interrupt_requested = True
            self._unqueue(job)
            self._finish(job, CANCELLED)
            return True

    def interrupt(self, job_id: str, owner: str | None = None) -> bool:
        """Stop a running job after its current step, or cancel a waiting one."""
        with self._cond:
            job = self._own(job_id, owner)
            if job is None or job.finished:
                return False
            if job.state == QUEUED:
                return self.cancel(job_id, owner)
            job.interrupt_requested = True
            self.events.publish(ev.STOPPING, job)
            return True

    def skip(self, job_id: str, owner: str | None = None) -> bool:
        """End the image a running job is sampling now and go on with its next batch."""
        with self._cond:
            job = self._own(job_id, owner)
            if job is None or job.state != RUNNING:
                return False
            job.skip_requested = True
            self.events.publish(ev.STOPPING, job)
            return True

    def move(self, job_id: str, offset: int, owner: str | None = None) -> bool:
        """Move a waiting job `offset` places among its owner's waiting jobs
        (negative: earlier). False when it is not waiting or cannot move."""
        with self._cond:
            job = self._own(job_id, owner)
            if job is None or job.state != QUEUED:
                return False
            mine = self._waiting.get(job.owner, [])
            index = mine.index(job)
            target = max(0, min(len(mine) - 1, index + offset))
            if target == index:
                return False
            mine.insert(target, mine.pop(index))
            self._cond.notify_all()
            self.events.publish(ev.MOVED, job)
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
                while not any(self._waiting.values()) and not self._stopping:
                    self._cond.wait()
                if self._stopping:  # shutdown() has cancelled the waiting jobs
                    return
                job = self._schedule()[0]
                self._unqueue(job)
                self._tick += 1
                self._served[job.owner] = self._tick
                job.state = RUNNING
                job.started_at = time.time()
                job.progress.started_at = time.monotonic()
                self.events.publish(ev.STARTED, job)
            self._run(job)

    def _run(self, job: Job) -> None:
        try:
            job.result = self._runner(job)
            state = INTERRUPTED if job.interrupt_requested else DONE
        except JobAborted as exc:  # the server shuts down: nothing of the job is kept
            job.result, job.error = None, str(exc)
            state = INTERRUPTED
        except Exception as exc:  # a failing job must never stop the worker
            if isinstance(exc, UserError):  # bad input or an unusable file: one line
                log.warning("job %s failed: %s", job.id, exc)
            else:  # a bug: the traceback is what finds it
                log.exception("job %s failed", job.id)
            job.error = str(exc) or type(exc).__name__
            state = FAILED
        with self._cond:
            job.skip_requested = False
            self._finish(job, state)

    def _unqueue(self, job: Job) -> None:
        mine = self._waiting.get(job.owner)
        if mine and job in mine:
            mine.remove(job)
        if not mine:
            self._waiting.pop(job.owner, None)

    def _finish(self, job: Job, state: str) -> None:
        job.state = state
        job.finished_at = time.time()
        job.done.set()
        self._prune()
        kind = ev.FAILED if state == FAILED else ev.FINISHED
        self.events.publish(kind, job, error=job.error if state == FAILED else None)

    def _prune(self) -> None:
        """Forget the oldest finished jobs beyond the per-owner and overall limits."""
        finished = sorted((j for j in self._jobs.values() if j.finished), key=lambda j: j.seq)
        per_owner: dict[str, int] = {}
        for job in reversed(finished):
            per_owner[job.owner] = per_owner.get(job.owner, 0) + 1
            if per_owner[job.owner] > self._keep_per_owner:
                del self._jobs[job.id]
        finished = [j for j in finished if j.id in self._jobs]
        for old in finished[: max(0, len(finished) - self._keep)]:
            del self._jobs[old.id]
        owners = {j.owner for j in self._jobs.values()}
        for owner in [o for o in self._served if o not in owners]:
            del self._served[owner]
