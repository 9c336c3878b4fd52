"""The job queue's read-only views (`JobQueue` inherits them): one job, the waiting ones
in run order, the listing the queue panel and the API page through (running, waiting, then
finished ones from the store when there is one), one owner's jobs, a job's position.

The round-robin order is computed here (`_schedule`): the owner served least recently
goes first, FIFO within one owner. Every method takes the queue's lock itself, except
`_schedule`, which its callers hold it for.

This module must never import torch, diffusers or a UI library.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from .job import QUEUED, RUNNING, Job
from .job_store import JobStore


class JobViews:
    """What `JobQueue` shows of its jobs; the state is `JobQueue`'s."""

    _cond: threading.Condition
    _jobs: dict[str, Job]
    _waiting: dict[str, list[Job]]
    _served: dict[str, int]
    _tick: int
    _store: JobStore | None

    def get(self, job_id: str) -> Job | None:
        """The job in memory, else (finished long ago) as the store recorded it."""
        with self._cond:
            job = self._jobs.get(job_id)
        if job is None and self._store is not None:
            stored = self._store.get(job_id)
            return stored.to_job() if stored is not None else None
        return job

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

    def listing(
        self, finished_limit: int = 20, finished_offset: int = 0
    ) -> list[tuple[Job, int | None]]:
        """(job, position) for the running job, the waiting ones in run order, then a page
        of the finished ones (newest first; from the store when there is one)."""
        with self._cond:
            running = [(j, 0) for j in self._jobs.values() if j.state == RUNNING]
            waiting = [(j, i + 1) for i, j in enumerate(self._schedule())]
            kept = dict(self._jobs)
        if self._store is not None:
            rows = self._store.page(finished=True, offset=finished_offset, limit=finished_limit)
            finished = [_kept_or_stored(kept, row) for row in rows]
        else:
            finished = sorted(
                (j for j in kept.values() if j.finished),
                key=lambda j: j.finished_at or 0,
                reverse=True,
            )[finished_offset : finished_offset + finished_limit]
        return running + waiting + [(j, None) for j in finished]

    def finished_count(self, owner: str | None = None) -> int:
        """How many finished jobs there are to page through (of one owner, or all)."""
        if self._store is not None:
            return self._store.count(owner, finished=True)
        with self._cond:
            return sum(1 for j in self._jobs.values() if j.finished and owner in (None, j.owner))

    def job_count(self, owner: str) -> int:
        """How many jobs one owner has (all states) to page through with owner_jobs."""
        if self._store is not None:
            return self._store.count(owner)
        with self._cond:
            return sum(1 for j in self._jobs.values() if j.owner == owner)

    def owner_jobs(self, owner: str, limit: int | None = None, offset: int = 0) -> list[Job]:
        """One owner's jobs, newest first (a page of them with `limit`); from the store,
        however old, when there is one, else the ones kept in memory."""
        with self._cond:
            kept = dict(self._jobs)
        if self._store is not None:
            rows = self._store.page(owner, offset=offset, limit=limit)
            return [_kept_or_stored(kept, row) for row in rows]
        mine = sorted((j for j in kept.values() if j.owner == owner), key=lambda j: j.seq,
                      reverse=True)  # fmt: skip
        return mine[offset : offset + limit if limit else None]

    def position(self, job: Job) -> int | None:
        """0 for a running job, 1.. for waiting ones, None when finished."""
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


def _kept_or_stored(kept: Mapping[str, Job], row: Any) -> Job:
    """The job still in memory (its pictures even when unsaved), else the stored one."""
    job = kept.get(row.id)
    return job if job is not None else row.to_job()
