"""The job queue: executors (one per device) run jobs; by default one, in this process.

UI and API submit `Job`s (`job.py`) and read their progress snapshots (`progress.py`);
nothing else touches the model. A job carries everything it needs: its params and a
snapshot of the options taken when it was submitted (plus its own overrides), so running it
changes nobody else's settings. Waiting jobs are taken round-robin between owners (the user
who has been served least recently goes first), FIFO within one owner; an owner may
reorder, cancel, interrupt or skip their own jobs. A per-owner limit refuses new jobs with
`QueueFullError`. The last few finished jobs per owner stay in memory.

With a `JobStore` (`job_store.py`; the composition root opens one in the data folder)
every transition is recorded, the jobs a crash left unfinished are queued again when the
queue is made (the running one first, marked), and finished jobs are listed from the store,
paged, however old. Without one (tests that build a queue directly) nothing outlives the
process.

Interrupting or skipping only sets a flag; the runner asks `Job.should_stop()` every step.
Stopping the queue (the server shuts down) cancels the waiting jobs at once and aborts the
running one: its next `should_stop()` raises `JobAborted`, so nothing more is sampled,
decoded or saved, and the job ends as interrupted.

The queue runs one thread per executor (`executors.py`): the default is a single
`LocalExecutor` (one job at a time, the accelerator owned by that thread); with `--ray`
there is one per Ray worker and several jobs may run at once. A job waiting while an
executor is idle goes to one that can see its checkpoint and already holds it, else to the
least recently used; `Job.worker` names it. A job whose worker died (`WorkerLost`) runs
once more on another one (`Job.attempts` counts the starts), then fails.

A running job may let waiting jobs run inside it: while it runs, `Job.run_waiting(accept,
around)` starts, runs and finishes (with their own states and events) the jobs waiting at
that moment that `accept` takes, on its executor's thread. Training does this between its
steps when the option `training_yield_to_jobs` is on (`train_yield.py`); the queue panel
then lists both as running. That part is `job_inline.py`; the read-only views (listing,
round-robin order, positions) are `job_views.py`; `JobQueue` inherits both.

Every change is published once on `JobQueue.events` (see `events.py`): queued, started,
step (from the progress listeners), saved (`Job.image_saved`, called by the worker's save),
finished, failed, moved and stopping. Pages and API routes await those events; nothing
needs to poll a job.

This module must never import torch, diffusers or a UI library: the work itself is the
`runner` callable handed in by the composition root.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial
from types import MappingProxyType
from typing import Any

from ..errors import UserError
from . import events as ev
from .events import EventHub, StepPublisher
from .executors import MAX_ATTEMPTS, Executor, LocalExecutor, Slot, WorkerLost, choose_executor
from .job import (
    CANCELLED,
    DONE,
    FAILED,
    FINISHED,
    INTERRUPTED,
    JOB_ID,
    QUEUED,
    RUNNING,
    SHUTDOWN_MESSAGE,
    UNLIMITED_KINDS,
    Job,
    JobAborted,
    JobAccessError,
    QueueFullError,
    ShuttingDownError,
    StoredImage,
    StoredResult,
    file_deleted,
    rerun_note,
    summary,
)
from .job_inline import InlineRuns
from .job_store import JobStore, encode_job, restore
from .job_views import JobViews
from .progress import Progress

__all__ = [
    "CANCELLED", "DONE", "FAILED", "FINISHED", "INTERRUPTED", "QUEUED", "RUNNING",
    "SHUTDOWN_MESSAGE", "UNLIMITED_KINDS", "Job", "JobAborted", "JobAccessError", "JobQueue",
    "Progress", "QueueFullError", "ShuttingDownError", "StoredImage", "StoredResult",
    "file_deleted", "rerun_note", "summary",
]  # fmt: skip

log = logging.getLogger(__name__)


class JobQueue(JobViews, InlineRuns):
    """Round-robin between owners, FIFO per owner, one thread per executor.

    `runner` runs jobs in this process (one `LocalExecutor`); `executors` replaces it (the
    Ray workers; more can join with `add_executor`). `checkpoint_of(job)` names the
    checkpoint a job needs (None: any executor will do) for the choice of executor.
    `options_snapshot()` gives the options a new job starts from; `limit_per_owner()`
    the most unfinished jobs one owner may have (0: no limit). `events` is where every
    change of a job is published (a new hub unless one is given). `store` records every
    job (None: memory only); the jobs it holds as unfinished are queued again at once.
    """

    def __init__(
        self,
        runner: Callable[[Job], Any] | None = None,
        *,
        executors: list[Executor] | None = None,
        checkpoint_of: Callable[[Job], str | None] | None = None,
        keep_finished: int = 200,
        keep_per_owner: int = 20,
        options_snapshot: Callable[[], Mapping[str, Any]] | None = None,
        limit_per_owner: Callable[[], int] | int = 0,
        events: EventHub | None = None,
        store: JobStore | None = None,
    ):
        self.events = events if events is not None else EventHub()
        if executors is None:
            if runner is None:
                raise ValueError("JobQueue needs a runner or executors")
            executors = [LocalExecutor(runner)]
        self._checkpoint_of = checkpoint_of
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
        self._started = False
        self._slots: list[Slot] = []
        self._threads: list[threading.Thread] = []
        for executor in executors:
            self.add_executor(executor)
        self._store = store
        if store is not None:
            self._restore(store)

    def _restore(self, store: JobStore) -> None:
        """Queue again what a crash left unfinished (see job_store.restore); owners keep
        their round-robin turn (least recently served first), the interrupted job runs
        first."""
        reruns = []
        for job in restore(store):
            self._attach(job, store)
            self._jobs[job.id] = job
            if job.state == FAILED:
                self._finish(job, FAILED)
                continue
            if job.rerun_reason and job.attempts:
                reruns.append(job.owner)
            self._waiting.setdefault(job.owner, []).append(job)
            store.update(job)
            self.events.publish(ev.QUEUED, job)
        for tick, owner in enumerate(store.owners_by_last_start(), start=1):
            self._served[owner] = self._tick = tick
        for owner in reruns:
            self._served[owner] = -2  # before anyone never served (-1)
        if self._jobs:
            log.info("restored %d unfinished job(s) from %s", len(self._jobs), store.path)

    def _attach(self, job: Job, store: JobStore | None) -> None:
        job.events = self.events
        job.recorder = store
        job.progress.listeners.append(StepPublisher(self.events, job))

    def start(self) -> None:
        with self._cond:
            self._started = True
            threads = list(self._threads)
        for thread in threads:
            thread.start()

    def add_executor(self, executor: Executor) -> None:
        """One more executor (a Ray worker that joined); it takes work at once."""
        slot = Slot(executor)
        name = "job-worker" if not self._slots else f"job-worker-{executor.name}"
        thread = threading.Thread(target=self._work, args=(slot,), name=name, daemon=True)
        with self._cond:
            self._slots.append(slot)
            self._threads.append(thread)
            started = self._started
            self._cond.notify_all()
        if started:
            thread.start()

    def remove_executor(self, executor: Executor) -> None:
        """An idle executor whose process died: it takes no more jobs (a busy one is
        dropped when its job reports `WorkerLost`)."""
        with self._cond:
            for slot in self._slots:
                if slot.executor is executor and slot.job is None:
                    slot.lost = True
            self._cond.notify_all()

    def workers(self) -> list[dict[str, Any]]:
        """Every executor: name, device, checkpoints held, jobs done, state, its job."""
        with self._cond:
            slots = list(self._slots)
        return [
            {
                "name": s.executor.name,
                "device": s.executor.device,
                "models": [] if s.lost else list(s.executor.held()),
                "jobs_done": s.done,
                "state": s.state(),
                "job": s.job.id if s.job is not None else None,
            }
            for s in slots
        ]

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
        """True once every executor's thread has ended (after shutdown())."""
        with self._cond:
            threads = list(self._threads)
        return not any(t.is_alive() for t in threads)

    def stop(self, timeout: float = 10) -> None:
        """`shutdown()`, then wait up to `timeout` seconds for the executors to end."""
        self.shutdown()
        deadline = time.monotonic() + timeout
        with self._cond:
            threads = [t for t in self._threads if t.ident is not None]
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in threads):
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
        self._attach(job, self._store)
        if job_id is not None:
            if not JOB_ID.fullmatch(job_id):
                raise ValueError("job id: 1-64 characters of A-Z a-z 0-9 _ - . : ( )")
            job.id = job_id
            stored = self._store.get(job_id) if self._store is not None else None
            if stored is not None and stored.owner != owner:  # never another user's record
                raise ValueError(f"job id {job_id!r} is already in use")
        encoded = encode_job(job) if self._store is not None else None  # no lock held
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
            mine = self._waiting.setdefault(owner, [])
            mine.append(job)
            if self._store is not None and encoded is not None:
                self._store.add(job, encoded, order=[j.id for j in mine])
            self._cond.notify_all()
            self.events.publish(ev.QUEUED, job)
        return job

    def _current_limit(self) -> int:
        try:
            value = self._limit() if callable(self._limit) else self._limit
            return max(0, int(value))
        except (TypeError, ValueError, KeyError):
            return 0

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
            if self._store is not None:
                self._store.reorder(j.id for j in mine)
            self._cond.notify_all()
            self.events.publish(ev.MOVED, job)
            return True

    def interrupt_owner(self, owner: str) -> int:
        """Interrupt every unfinished job of one owner; returns how many."""
        ids = [j.id for j in self.jobs() if j.owner == owner and not j.finished]
        return sum(self.interrupt(i) for i in ids)

    def wait(self, job: Job, timeout: float | None = None) -> bool:
        return job.done.wait(timeout)

    # --- the executors ----------------------------------------------------------------
    def _work(self, slot: Slot) -> None:
        """One executor's thread: run what `_dispatch` gives this slot, until stopped."""
        while True:
            with self._cond:
                while slot.job is None and not self._stopping and not slot.lost:
                    self._dispatch()
                    if slot.job is None:
                        self._cond.wait()
                job = slot.job
                if job is None:  # stopping (shutdown() has cancelled the waiting jobs)
                    return
            self._run(slot, job)

    def _dispatch(self) -> None:
        """Give waiting jobs to idle executors (holding the lock): jobs round-robin between
        owners, each to an idle executor that can see its checkpoint (`choose_executor`).
        A job no live executor can see fails with a message naming the checkpoint."""
        idle = [s for s in self._slots if s.idle]
        for job in self._schedule() if idle else []:
            checkpoint = self._checkpoint_of(job) if self._checkpoint_of else None
            slot = choose_executor(checkpoint, idle)
            if slot is None:
                live = [s for s in self._slots if not s.lost]
                if live and not any(s.executor.sees(checkpoint or "") for s in live):
                    self._unqueue(job)
                    job.error = (f"Checkpoint {checkpoint} is not in the models folder of any "
                                 "worker: put it in the shared models folder")  # fmt: skip
                    self._finish(job, FAILED)
                continue
            idle.remove(slot)
            self._start(slot, job)
            if not idle:
                break
        self._cond.notify_all()

    def _start(self, slot: Slot, job: Job) -> None:
        self._unqueue(job)
        self._tick += 1
        self._served[job.owner] = self._tick
        slot.job, slot.used = job, self._tick
        job.run_waiting = partial(self._run_waiting, slot, job)
        job.state, job.worker = RUNNING, slot.executor.name
        self._mark_started(job)

    def _mark_started(self, job: Job) -> None:
        job.attempts += 1
        job.started_at = time.time()
        job.progress.started_at = time.monotonic()
        if self._store is not None:
            self._store.update(job)  # recorded before any file is written
        self.events.publish(ev.STARTED, job)

    def _run(self, slot: Slot, job: Job) -> None:
        try:
            state = self._execute(slot.executor, job)
        except WorkerLost as exc:
            job.run_waiting = None
            self._lost(slot, job, exc)
            return
        with self._cond:
            job.skip_requested = False
            job.run_waiting = None
            slot.job = None
            slot.done += 1
            self._finish(job, state)
            self._cond.notify_all()

    def _execute(self, executor: Executor, job: Job) -> str:
        """Run the job; its end state (`WorkerLost` goes to the caller)."""
        try:
            job.result = executor.run(job)
            return INTERRUPTED if job.interrupt_requested else DONE
        except WorkerLost:
            raise
        except JobAborted as exc:  # the server shuts down: nothing of the job is kept
            job.result, job.error = None, str(exc)
            return INTERRUPTED
        except Exception as exc:  # a failing job must never stop the worker
            if isinstance(exc, UserError):  # bad input or an unusable file: one line
                log.warning("job %s failed: %s", job.id, exc)
            else:  # a bug: the traceback is what finds it
                log.exception("job %s failed", job.id)
            job.error = str(exc) or type(exc).__name__
            return FAILED

    def _lost(self, slot: Slot, job: Job, exc: WorkerLost) -> None:
        """The executor died under the job: run it once more elsewhere, else fail it."""
        log.warning("worker %s lost while running job %s: %s", slot.executor.name, job.id, exc)
        with self._cond:
            slot.job = None
            slot.lost = slot.lost or slot.executor.gone
            job.skip_requested = False
            if job.abort_requested or job.interrupt_requested:
                job.error = job.error or str(exc)
                self._finish(job, INTERRUPTED)
            elif job.attempts < MAX_ATTEMPTS and not self._stopping:
                job.state, job.worker = QUEUED, None
                job.prepare_rerun("its worker stopped while it ran")
                job.progress = Progress(listeners=job.progress.listeners)
                mine = self._waiting.setdefault(job.owner, [])
                mine.insert(0, job)  # first of its owner's
                if self._store is not None:
                    self._store.update(job)
                    self._store.reorder(j.id for j in mine)
                self.events.publish(ev.QUEUED, job)
            else:
                job.error = (f"The worker running this job stopped ({exc}), "
                             f"{job.attempts} times; the job was given up")  # fmt: skip
                self._finish(job, FAILED)
            self._cond.notify_all()

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
        if self._store is not None:
            self._store.update(job)
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
