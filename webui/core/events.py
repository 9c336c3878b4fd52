"""Job events: what happened to a job, published once, read by every page and API client.

The queue publishes `queued`, `started`, `finished` (done, interrupted or cancelled),
`failed`, `moved` (reordered) and `stopping` (interrupt or skip asked); the worker's
progress publishes `step` (with `preview=True` when a new live preview was made) and the
worker's save publishes `saved` (`Job.image_saved`). An event names its job and owner and
carries numbers only: never a prompt, a preview or an image, so a consumer that forwards
events can leak nothing; whoever may see a job's pictures reads them from the job.

`EventHub` hands events to subscriptions, in publish order, from any thread:
- a thread waits with `Subscription.get(timeout)`;
- asyncio code (Gradio streams, FastAPI routes) uses `subscribe_async()`: events are put
  into the subscriber's loop with `loop.call_soon_threadsafe`, and it awaits them with
  `await sub.wait(timeout)` or `async for event in sub`. No thread is held and nothing
  polls.
A subscription holds at most `maxsize` unread events (the oldest are dropped and counted
in `dropped`: consumers re-read the jobs' state, so a dropped step only skips a frame).
Close a subscription (it is a context manager) when done; `subscriber_count()` shows leaks.

This module must never import torch, diffusers or a web framework, and never calls back
into the queue: publishing only appends to queues, so the queue may publish holding its lock.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .jobs import Job, Progress

log = logging.getLogger(__name__)

QUEUED, STARTED, STEP, SAVED, FINISHED, FAILED, MOVED, STOPPING = (
    "queued",
    "started",
    "step",
    "saved",
    "finished",
    "failed",
    "moved",
    "stopping",
)
KINDS = frozenset({QUEUED, STARTED, STEP, SAVED, FINISHED, FAILED, MOVED, STOPPING})
ENDED = frozenset({FINISHED, FAILED})  # the job is over: its state says how
# events that change who is listed where, or in which state (everything but progress)
LISTING = frozenset({QUEUED, STARTED, FINISHED, FAILED, MOVED, STOPPING})
DEFAULT_MAXSIZE = 1000


@dataclass(frozen=True)
class JobEvent:
    kind: str
    job_id: str
    owner: str
    seq: int  # hub-wide publish order
    state: str  # the job's state after the event
    step: int = 0  # steps done in the current batch (step events)
    steps: int = 0
    preview: bool = False  # a step event that brought a new live preview
    path: str | None = None  # saved: where the image was written
    error: str | None = None  # failed: what went wrong
    at: float = 0.0  # time.monotonic() when published


Accept = Callable[[JobEvent], bool]


class _Subscription(ABC):
    """What the hub needs of a subscription: a filter, and a way to hand an event over."""

    def __init__(
        self, hub: EventHub, job_id: str | None, kinds: Iterable[str] | None, accept: Accept | None
    ):
        self._hub = hub
        self.job_id = job_id
        self.kinds = frozenset(kinds) if kinds is not None else None
        self._accept = accept
        self.maxsize = hub.maxsize
        self.dropped = 0
        self.closed = False

    def wants(self, event: JobEvent) -> bool:
        if self.kinds is not None and event.kind not in self.kinds:
            return False
        return self._accept is None or self._accept(event)

    @abstractmethod
    def deliver(self, event: JobEvent) -> bool:
        """Hand over one event (any thread, under the hub's lock); False: gone for good."""

    @abstractmethod
    def notify_closed(self) -> None:
        """The subscription ended: wake its consumer (any thread)."""

    def close(self) -> None:
        """Stop receiving events (idempotent); a waiting consumer wakes up."""
        self._hub.unsubscribe(self)

    def _push(self, pending: deque[JobEvent], event: JobEvent) -> None:
        if len(pending) >= self.maxsize:
            pending.popleft()
            self.dropped += 1
        pending.append(event)


SubscriptionT = TypeVar("SubscriptionT", bound=_Subscription)


class Subscription(_Subscription):
    """Events for a thread: `get(timeout)` blocks until one arrives."""

    def __init__(
        self, hub: EventHub, job_id: str | None, kinds: Iterable[str] | None, accept: Accept | None
    ):
        super().__init__(hub, job_id, kinds, accept)
        self._cond = threading.Condition()
        self._pending: deque[JobEvent] = deque()

    def deliver(self, event: JobEvent) -> bool:
        with self._cond:
            self._push(self._pending, event)
            self._cond.notify_all()
        return True

    def notify_closed(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> JobEvent | None:
        """The next event, or None after `timeout` seconds or once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._pending or self.closed, timeout)
            return self._pending.popleft() if self._pending else None

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncSubscription(_Subscription):
    """Events for asyncio code, delivered into its loop; await `wait()` or iterate."""

    def __init__(
        self,
        hub: EventHub,
        job_id: str | None,
        kinds: Iterable[str] | None,
        accept: Accept | None,
        loop: asyncio.AbstractEventLoop,
    ):
        super().__init__(hub, job_id, kinds, accept)
        self._loop = loop
        self._pending: deque[JobEvent] = deque()  # touched in the loop's thread only
        self._ready = asyncio.Event()
        self._woken = False
        self.woken = False  # whether the last wait() returned because of wake()

    def deliver(self, event: JobEvent) -> bool:
        try:
            self._loop.call_soon_threadsafe(self._put, event)
        except RuntimeError:  # the loop is closed: its consumer is gone
            return False
        return True

    def _put(self, event: JobEvent) -> None:
        if not self.closed:
            self._push(self._pending, event)
            self._ready.set()

    def notify_closed(self) -> None:
        self._in_loop(self._mark_closed)

    def wake(self) -> None:
        """Make a pending `wait()` return now (from any thread), e.g. the page's view changed."""
        self._in_loop(self._mark_woken)

    def _mark_closed(self) -> None:
        self.closed = True
        self._ready.set()

    def _mark_woken(self) -> None:
        self._woken = True
        self._ready.set()

    def _in_loop(self, action: Callable[[], None]) -> None:
        """Run `action` in the subscriber's loop: now when called from it, else soon."""
        try:
            here = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            here = False
        if here:
            action()
            return
        try:
            self._loop.call_soon_threadsafe(action)
        except RuntimeError:  # the loop is closed: nobody waits any more
            self.closed = True

    async def wait(self, timeout: float | None = None) -> list[JobEvent]:
        """Every event received so far; waits up to `timeout` seconds (None: no limit) for
        the first one. Returns early with what there is (maybe nothing) on `wake()` or when
        closed; `woken` says whether it was woken."""
        if not self._pending and not self._woken and not self.closed:
            if timeout is None or timeout > 0:
                try:
                    await asyncio.wait_for(self._ready.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
        self._ready.clear()
        events = list(self._pending)
        self._pending.clear()
        self.woken, self._woken = self._woken, False
        return events

    def __aiter__(self) -> AsyncIterator[JobEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[JobEvent]:
        while True:
            events = await self.wait()
            for event in events:
                yield event
            if self.closed and not self._pending:
                return

    def __enter__(self) -> AsyncSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventHub:
    """Publish job events to subscriptions; thread-safe, never blocks the publisher."""

    def __init__(self, maxsize: int = DEFAULT_MAXSIZE):
        self.maxsize = maxsize
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._all: list[_Subscription] = []  # subscriptions to every job
        self._by_job: dict[str, list[_Subscription]] = {}  # subscriptions to one job
        self.closed = False

    # --- subscribing --------------------------------------------------------------------
    def subscribe(
        self,
        *,
        job_id: str | None = None,
        kinds: Iterable[str] | None = None,
        accept: Accept | None = None,
    ) -> Subscription:
        """Events for a thread: of one job (`job_id`) or all, of some `kinds` or all, and
        only those `accept` (called under the hub's lock: keep it short) lets through."""
        return self._add(Subscription(self, job_id, kinds, accept))

    def subscribe_async(
        self,
        *,
        job_id: str | None = None,
        kinds: Iterable[str] | None = None,
        accept: Accept | None = None,
    ) -> AsyncSubscription:
        """Like `subscribe`, for the running asyncio loop (call it from inside the loop)."""
        loop = asyncio.get_running_loop()
        return self._add(AsyncSubscription(self, job_id, kinds, accept, loop))

    def _add(self, sub: SubscriptionT) -> SubscriptionT:
        with self._lock:
            if self.closed:
                sub.notify_closed()
            elif sub.job_id is None:
                self._all.append(sub)
            else:
                self._by_job.setdefault(sub.job_id, []).append(sub)
        return sub

    def unsubscribe(self, sub: _Subscription) -> None:
        with self._lock:
            self._remove(sub)
        sub.notify_closed()

    def _remove(self, sub: _Subscription) -> None:
        if sub.job_id is None:
            if sub in self._all:
                self._all.remove(sub)
            return
        subs = self._by_job.get(sub.job_id, [])
        if sub in subs:
            subs.remove(sub)
        if not subs:
            self._by_job.pop(sub.job_id, None)

    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._all) + sum(len(s) for s in self._by_job.values())

    # --- publishing -----------------------------------------------------------------------
    def publish(self, kind: str, job: Job, **fields: Any) -> JobEvent:
        """Tell every interested subscription what happened to `job` (any thread)."""
        if kind not in KINDS:
            raise ValueError(f"unknown job event kind: {kind!r}")
        p = job.progress
        with self._lock:
            event = JobEvent(
                kind=kind,
                job_id=job.id,
                owner=job.owner,
                seq=next(self._seq),
                state=job.state,
                step=p.step,
                steps=p.steps,
                at=time.monotonic(),
                **fields,
            )
            gone = [
                sub
                for sub in [*self._all, *self._by_job.get(job.id, ())]
                if sub.wants(event) and not sub.deliver(event)
            ]
            for sub in gone:
                self._remove(sub)
        return event

    def close(self) -> None:
        """The server stops: end every subscription and refuse new ones (they start closed)."""
        with self._lock:
            self.closed = True
            subs = [*self._all, *(s for subs in self._by_job.values() for s in subs)]
            self._all, self._by_job = [], {}
        for sub in subs:
            sub.notify_closed()


class StepPublisher:
    """The `Progress` listener that publishes `step` events for one job."""

    def __init__(self, hub: EventHub, job: Job):
        self._hub = hub
        self._job = job
        self._preview_step = job.progress.preview_step

    def __call__(self, progress: Progress) -> None:
        new_preview = progress.preview is not None and progress.preview_step != self._preview_step
        self._preview_step = progress.preview_step
        self._hub.publish(STEP, self._job, preview=new_preview)


async def wait_finished(hub: EventHub, job: Job, timeout: float | None = None) -> bool:
    """Await the end of `job` (its `finished` or `failed` event) without holding a thread;
    False after `timeout` seconds or when the hub closes before the job ends."""
    deadline = math.inf if timeout is None else time.monotonic() + timeout
    with hub.subscribe_async(job_id=job.id, kinds=ENDED) as sub:
        while not job.finished and not sub.closed:  # subscribed first: no end is missed
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await sub.wait(None if math.isinf(left) else left)
    return job.finished
