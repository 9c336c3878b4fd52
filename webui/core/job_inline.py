"""Jobs run inside a running one (`JobQueue` inherits this): while a job runs,
`Job.run_waiting(accept, around)` starts, runs and finishes (with their own states and
events) the jobs waiting at that moment that `accept` takes, on the running job's executor
(its thread and device). Training does this between its steps when the option
`training_yield_to_jobs` is on (`train_yield.py`).

This module must never import torch, diffusers or a UI library.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from typing import TYPE_CHECKING

from .executors import Executor, Slot, WorkerLost
from .job import FAILED, QUEUED, RUNNING, Job


class InlineRuns:
    """`_run_waiting`, bound per running job as `Job.run_waiting`; the state and the
    start/finish bookkeeping are `JobQueue`'s."""

    _cond: threading.Condition
    _waiting: dict[str, list[Job]]
    _served: dict[str, int]
    _tick: int
    _stopping: bool

    if TYPE_CHECKING:  # JobQueue's and JobViews' (no stubs at run time: they would win)

        def _schedule(self) -> list[Job]: ...
        def _unqueue(self, job: Job) -> None: ...
        def _mark_started(self, job: Job) -> None: ...
        def _execute(self, executor: Executor, job: Job) -> str: ...
        def _finish(self, job: Job, state: str) -> None: ...

    def _run_waiting(
        self,
        slot: Slot,
        host: Job,
        accept: Callable[[Job], bool],
        around: Callable[[], AbstractContextManager] = nullcontext,
    ) -> int:
        """Run the jobs waiting now that `accept` takes, in schedule order, one after the
        other on `host`'s executor (its thread and device), inside `around()` (entered
        before the first, left after the last). Each is started, run and finished as any
        job; jobs submitted meanwhile wait for the next call. Returns how many ran."""
        with self._cond:
            last = max((j.seq for js in self._waiting.values() for j in js), default=-1)
        ran = 0
        with ExitStack() as paused:
            while (job := self._take_waiting(slot, host, accept, last)) is not None:
                if not ran:
                    self._enter(paused, around, job)
                ran += 1
                try:
                    state = self._execute(slot.executor, job)
                except WorkerLost as exc:
                    job.error, state = str(exc), FAILED
                with self._cond:
                    job.skip_requested = False
                    self._finish(job, state)
                    self._cond.notify_all()
        return ran

    def _enter(
        self, stack: ExitStack, around: Callable[[], AbstractContextManager], job: Job
    ) -> None:
        """Enter `around()` for the started `job`; if that fails (a bug), the job fails."""
        try:
            stack.enter_context(around())
        except Exception as exc:
            with self._cond:
                job.error = f"could not pause the running job for it: {exc}"
                self._finish(job, FAILED)
                self._cond.notify_all()
            raise

    def _take_waiting(
        self, slot: Slot, host: Job, accept: Callable[[Job], bool], last: int
    ) -> Job | None:
        """The first waiting job (queued by `last`) that `accept` takes, started; `accept`
        is asked outside the lock (it may resolve checkpoint names)."""
        with self._cond:
            if self._stopping or host.abort_requested:
                return None
            candidates = [j for j in self._schedule() if j.seq <= last]
        for job in candidates:
            if not accept(job):
                continue
            with self._cond:
                if job.state != QUEUED or self._stopping:
                    continue
                self._unqueue(job)
                self._tick += 1
                self._served[job.owner] = self._tick
                job.state, job.worker = RUNNING, slot.executor.name
                self._mark_started(job)
            return job
        return None
