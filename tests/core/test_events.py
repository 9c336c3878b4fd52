"""Job events (webui/core/events.py): published once by the queue and its worker, handed to
thread and asyncio subscribers in order, never leaking subscriptions."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from webui.core import events as ev
from webui.core import jobs as J
from webui.core.events import EventHub, wait_finished
from webui.core.jobs import Job, JobQueue

WAIT = 60


def _job(job_id: str = "j1", owner: str = "alice") -> Job:
    return Job(kind="txt2img", params=SimpleNamespace(prompt="x"), owner=owner, id=job_id)


def _collect(sub, count: int) -> list[ev.JobEvent]:
    got = []
    while len(got) < count:
        event = sub.get(WAIT)
        assert event is not None, f"only {len(got)} of {count} events arrived"
        got.append(event)
    return got


# --- the hub ------------------------------------------------------------------------------


def test_events_arrive_in_publish_order_with_what_happened():
    hub = EventHub()
    job = _job()
    with hub.subscribe() as sub:
        hub.publish(ev.QUEUED, job)
        job.state = J.RUNNING
        job.progress.advance(3, 20)
        hub.publish(ev.STEP, job, preview=True)
        hub.publish(ev.SAVED, job, path="/out/1.png")
        got = _collect(sub, 3)
    assert [e.kind for e in got] == ["queued", "step", "saved"]
    assert [e.seq for e in got] == sorted(e.seq for e in got)
    assert got[0].state == "queued" and got[1].state == "running"
    assert (got[1].step, got[1].steps, got[1].preview) == (3, 20, True)
    assert got[2].path == "/out/1.png" and got[2].owner == "alice" and got[2].job_id == "j1"
    with pytest.raises(ValueError, match="unknown job event"):
        hub.publish("exploded", job)


def test_subscriptions_filter_by_job_kind_and_predicate():
    hub = EventHub()
    a, b = _job("a", "alice"), _job("b", "bob")
    only_a = hub.subscribe(job_id="a")
    listing = hub.subscribe(kinds=ev.LISTING)
    bobs = hub.subscribe(accept=lambda e: e.owner == "bob")
    for job in (a, b):
        hub.publish(ev.QUEUED, job)
        hub.publish(ev.STEP, job)
    assert [(e.job_id, e.kind) for e in _collect(only_a, 2)] == [("a", "queued"), ("a", "step")]
    assert [(e.job_id, e.kind) for e in _collect(listing, 2)] == [("a", "queued"), ("b", "queued")]
    assert [(e.job_id, e.kind) for e in _collect(bobs, 2)] == [("b", "queued"), ("b", "step")]
    for sub in (only_a, listing, bobs):
        assert sub.get(0) is None
        sub.close()
    assert hub.subscriber_count() == 0


def test_unsubscribe_stops_delivery_and_wakes_a_waiting_reader():
    hub = EventHub()
    sub = hub.subscribe()
    results = []
    reader = threading.Thread(target=lambda: results.append(sub.get(WAIT)))
    reader.start()
    time.sleep(0.05)
    sub.close()
    reader.join(WAIT)
    assert not reader.is_alive() and results == [None]
    hub.publish(ev.QUEUED, _job())
    assert sub.get(0) is None and sub.closed
    assert hub.subscriber_count() == 0
    sub.close()  # twice is harmless


def test_a_slow_reader_keeps_the_newest_events_and_counts_the_dropped_ones():
    hub = EventHub(maxsize=5)
    job = _job()
    with hub.subscribe() as sub:
        for step in range(12):
            job.progress.step = step
            hub.publish(ev.STEP, job)
        assert [e.step for e in _collect(sub, 5)] == [7, 8, 9, 10, 11]
        assert sub.dropped == 7


def test_many_threads_publish_while_readers_come_and_go():
    hub = EventHub(maxsize=100_000)
    jobs = [_job(f"j{i}") for i in range(4)]
    per_thread = 2000
    steady = hub.subscribe()
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:  # subscribe and unsubscribe while events fly
        try:
            while not stop.is_set():
                with hub.subscribe(job_id="j1"):
                    pass
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def publish(job: Job) -> None:
        for step in range(per_thread):
            job.progress.step = step
            hub.publish(ev.STEP, job)

    churner = threading.Thread(target=churn)
    churner.start()
    publishers = [threading.Thread(target=publish, args=(j,)) for j in jobs]
    for t in publishers:
        t.start()
    for t in publishers:
        t.join(WAIT)
    stop.set()
    churner.join(WAIT)
    got = _collect(steady, per_thread * len(jobs))
    assert not errors
    assert [e.seq for e in got] == sorted(e.seq for e in got)  # one order for everyone
    for job in jobs:  # each publisher's events arrive complete and in its own order
        assert [e.step for e in got if e.job_id == job.id] == list(range(per_thread))
    steady.close()
    assert hub.subscriber_count() == 0


# --- asyncio consumers -----------------------------------------------------------------------


def test_async_subscribers_get_events_from_other_threads_in_order():
    hub = EventHub()
    job = _job()

    async def main() -> list[ev.JobEvent]:
        got: list[ev.JobEvent] = []
        with hub.subscribe_async(job_id=job.id) as sub:

            def publish() -> None:
                for step in range(50):
                    job.progress.step = step
                    hub.publish(ev.STEP, job)
                hub.publish(ev.FINISHED, job)

            threading.Thread(target=publish).start()
            async for event in sub:
                got.append(event)
                if event.kind == ev.FINISHED:
                    break
        return got

    got = asyncio.run(asyncio.wait_for(main(), WAIT))
    assert [e.step for e in got[:-1]] == list(range(50)) and got[-1].kind == "finished"
    assert hub.subscriber_count() == 0


def test_async_wait_times_out_wakes_up_and_ends_when_closed():
    hub = EventHub()

    async def main() -> None:
        sub = hub.subscribe_async()
        started = time.monotonic()
        assert await sub.wait(0.05) == [] and not sub.woken
        assert time.monotonic() - started >= 0.04
        threading.Timer(0.05, sub.wake).start()
        assert await asyncio.wait_for(sub.wait(), WAIT) == [] and sub.woken
        threading.Timer(0.05, hub.close).start()
        assert await asyncio.wait_for(sub.wait(), WAIT) == [] and sub.closed
        assert hub.subscribe_async().closed  # a closed hub hands out closed subscriptions

    asyncio.run(main())
    assert hub.subscriber_count() == 0


def test_a_subscription_of_a_closed_loop_is_dropped_at_the_next_event():
    hub = EventHub()

    async def subscribe_and_leave():
        return hub.subscribe_async()  # never closed: its loop ends with asyncio.run

    asyncio.run(subscribe_and_leave())
    assert hub.subscriber_count() == 1
    hub.publish(ev.QUEUED, _job())
    assert hub.subscriber_count() == 0


def test_wait_finished_awaits_the_end_without_a_thread_or_a_poll():
    gate = threading.Event()
    queue = JobQueue(lambda job: gate.wait(WAIT))
    queue.start()
    try:
        job = queue.submit("txt2img", SimpleNamespace(prompt="x"))

        async def main() -> tuple[bool, bool, int]:
            early = await wait_finished(queue.events, job, timeout=0.1)
            threads = threading.active_count()
            waiter = asyncio.create_task(wait_finished(queue.events, job))
            await asyncio.sleep(0.1)
            during = threading.active_count()
            assert not waiter.done()
            gate.set()
            return early, await asyncio.wait_for(waiter, WAIT), during - threads

        early, finished, new_threads = asyncio.run(main())
    finally:
        gate.set()
        queue.stop()
    assert (early, finished, new_threads) == (False, True, 0)
    assert queue.events.subscriber_count() == 0


# --- what the queue publishes ---------------------------------------------------------------


def test_the_queue_publishes_each_change_of_a_job_once():
    release = threading.Event()

    def runner(job):
        p = job.progress
        p.advance(1, 2)
        p.set_preview("a preview", 1)
        release.wait(WAIT)
        p.advance(2, 2)
        job.image_saved("/out/00001.png")
        if job.params.prompt == "bad":
            raise RuntimeError("broken")
        return SimpleNamespace(images=[])

    queue = JobQueue(runner)
    sub = queue.events.subscribe()
    first = queue.submit("txt2img", SimpleNamespace(prompt="good"), owner="alice")
    second = queue.submit("txt2img", SimpleNamespace(prompt="bad"), owner="alice")
    third = queue.submit("txt2img", SimpleNamespace(prompt="gone"), owner="alice")
    assert queue.move(third.id, -1)
    assert queue.cancel(third.id)
    queue.start()
    try:
        # 3 queued, moved, finished (cancelled), started, the first job's two steps
        got = _collect(sub, 8)
        assert queue.interrupt(first.id) is True
        release.set()
        got += _collect(sub, 10)
    finally:
        release.set()
        queue.stop()
    seen = [(e.kind, e.job_id) for e in got]
    assert seen[:6] == [
        ("queued", first.id), ("queued", second.id), ("queued", third.id),
        ("moved", third.id), ("finished", third.id), ("started", first.id),
    ]  # fmt: skip
    assert got[4].state == "cancelled"
    mine = [(e.kind, e.preview, e.state) for e in got[6:] if e.job_id == first.id]
    assert mine == [
        ("step", False, "running"),  # advance(1, 2)
        ("step", True, "running"),  # set_preview
        ("stopping", False, "running"),  # interrupt asked
        ("step", False, "running"),  # advance(2, 2)
        ("saved", False, "running"),
        ("finished", False, "interrupted"),
    ]
    bad = [e for e in got if e.job_id == second.id]
    assert [e.kind for e in bad] == ["queued", "started", "step", "step", "step", "saved", "failed"]
    assert bad[-1].error == "broken" and bad[-1].state == "failed"
    assert [e.path for e in got if e.kind == "saved"] == ["/out/00001.png"] * 2
    assert first.saved == ["/out/00001.png"]
    assert sub.closed  # stopping the queue ends every subscription


# --- the API waits on the same events ------------------------------------------------------


def test_the_api_awaits_a_jobs_end_event_and_answers_503_if_the_server_stops(monkeypatch):
    from fastapi import HTTPException

    from webui.api.routes_queue import wait_for_job

    sleeps = []
    real_sleep = asyncio.sleep

    async def counting_sleep(delay, *args, **kwargs):
        sleeps.append(delay)
        return await real_sleep(delay, *args, **kwargs)

    monkeypatch.setattr(asyncio, "sleep", counting_sleep)
    gate = threading.Event()
    queue = JobQueue(lambda job: gate.wait(WAIT))
    queue.start()
    try:
        job = queue.submit("txt2img", SimpleNamespace(prompt="x"))
        threading.Timer(0.3, gate.set).start()
        asyncio.run(asyncio.wait_for(wait_for_job(job), WAIT))
        assert job.finished and sleeps == []  # woken by the event, no sleep loop
        gate.clear()
        stuck = queue.submit("txt2img", SimpleNamespace(prompt="y"))
        threading.Timer(0.3, queue.events.close).start()  # what stopping the server does
        with pytest.raises(HTTPException) as refused:
            asyncio.run(asyncio.wait_for(wait_for_job(stuck), WAIT))
        assert refused.value.status_code == 503
    finally:
        gate.set()
        queue.stop()


# --- the real worker ------------------------------------------------------------------------


def test_the_worker_publishes_steps_previews_and_each_saved_file(data_dir):
    from webui.context import build_context
    from webui.core.params import Txt2ImgParams
    from webui.settings import parse_flags

    ctx = build_context(parse_flags(["--data-dir", str(data_dir), "--no-download-sd-model"]))
    try:
        ctx.options.set("show_progress_every_n_steps", 1)
        sub = ctx.jobs.events.subscribe()
        params = Txt2ImgParams(prompt="a red cube", steps=2, width=64, height=64, seed=1,
                               batch_count=2).validated()  # fmt: skip
        job = ctx.jobs.submit("txt2img", params.with_seed(), owner="test")
        assert job.done.wait(300) and job.state == "done", job.error
        got = []
        while not got or got[-1].kind not in ev.ENDED:
            got.append(sub.get(WAIT))
    finally:
        ctx.close()
    kinds = [e.kind for e in got]
    assert kinds[:2] == ["queued", "started"] and kinds[-1] == "finished"
    assert [(e.step, e.steps) for e in got if e.kind == "step" and not e.preview][-1] == (2, 2)
    assert any(e.preview for e in got if e.kind == "step")
    saved = [e.path for e in got if e.kind == "saved"]
    grid, *images = job.result.images  # two images: the batch grid first, saved last
    assert grid.grid and "txt2img-grids" in grid.path
    assert saved == [g.path for g in images] + [grid.path] == job.saved and len(saved) == 3
    assert all(Path(path).exists() for path in saved)
