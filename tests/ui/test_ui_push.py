"""Pushed updates without a browser: the queue panel's per-page stream and a tab's job
follower await job events, show only the viewer's own pictures, and end (unsubscribed,
no thread left) when the page goes away."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import gradio as gr
import pytest

from webui.core.jobs import JobQueue
from webui.options import Options
from webui.ui import job_stream, live_progress, queue_panel
from webui.ui.job_stream import TabJobs, follow_job
from webui.ui.queue_panel import PageViews, panel_stream

WAIT = 60
SKIP = gr.skip()
TABLE, PICKER, STATUS, GALLERY, INFO, URL, MESSAGE, TICKET = range(8)


class Runner:
    """Each job takes one step, makes a preview, then waits for its gate."""

    def __init__(self) -> None:
        self.gates: dict[str, threading.Event] = {}
        self.preview = object()

    def gate(self, prompt: str) -> threading.Event:
        return self.gates.setdefault(prompt, threading.Event())

    def __call__(self, job):
        p = job.progress
        p.advance(1, 4)
        p.set_preview(f"preview of {job.params.prompt}", 1)
        self.gate(job.params.prompt).wait(WAIT)
        p.advance(4, 4)
        return SimpleNamespace(images=[], warnings=[], params=job.params)

    def open_all(self) -> None:
        for gate in self.gates.values():
            gate.set()


@pytest.fixture
def setup():
    runner = Runner()
    queue = JobQueue(runner)
    queue.start()
    ctx = SimpleNamespace(jobs=queue, options=Options())
    yield ctx, runner
    runner.open_all()
    queue.stop()


def _request(user: str, page: str, **query) -> SimpleNamespace:
    return SimpleNamespace(username=user, session_hash=page, cookies={}, query_params=query)


async def _next(stream, timeout: float = WAIT):
    return await asyncio.wait_for(stream.__anext__(), timeout)


async def _until(stream, predicate, what: str) -> list[tuple]:
    """Updates until one satisfies `predicate` (all of them, that one last)."""
    seen = []
    while True:
        try:
            update = await _next(stream)
        except asyncio.TimeoutError:
            raise AssertionError(f"no update with {what}") from None
        seen.append(update)
        if predicate(update):
            return seen


def _submit(ctx, owner: str, prompt: str):
    return ctx.jobs.submit("txt2img", SimpleNamespace(prompt=prompt), owner=owner)


def test_the_panel_shows_queue_changes_and_only_the_viewers_own_pictures(setup):
    ctx, runner = setup
    pages = PageViews()

    async def main() -> None:
        stream = panel_stream(ctx, pages, _request("alice", "page-a"))
        first = await _next(stream)
        assert "The queue is empty" in first[TABLE] and first[MESSAGE] == ""
        assert ctx.jobs.events.subscriber_count() == 1 and len(pages) == 1

        bobs = _submit(ctx, "bob", "bob secret harbour")  # runs at once; its preview is his
        seen = await _until(stream, lambda u: u[TABLE] != SKIP and "bob" in u[TABLE], "bob")
        alices = _submit(ctx, "alice", "alice castle")  # waits behind bob's
        seen += await _until(
            stream, lambda u: u[TABLE] != SKIP and "alice castle" in u[TABLE], "alice's job"
        )
        runner.gate("bob secret harbour").set()
        # the live preview's place (live_progress fills it): in alice's status, for her job
        seen += await _until(stream, lambda u: "live-preview" in str(u[STATUS]), "a preview")
        assert f'data-preview="{live_progress.preview_key(alices)}"' in seen[-1][STATUS]
        for update in seen:
            assert update[TABLE] == SKIP or "bob secret harbour" not in update[TABLE]
            assert update[GALLERY] in (SKIP, [])  # results only
            assert "bob" not in str(update[STATUS]) + str(update[INFO]) + str(update[PICKER])
            assert live_progress.preview_key(bobs) not in str(update)
        runner.gate("alice castle").set()
        await _until(stream, lambda u: "Done" in str(u[STATUS]), "alice's job done")
        await stream.aclose()

    asyncio.run(main())
    assert ctx.jobs.events.subscriber_count() == 0 and len(pages) == 0


def test_a_closed_page_ends_its_panel_stream(setup):
    ctx, _ = setup
    pages = PageViews()
    threads = threading.active_count()

    async def main() -> None:
        stream = panel_stream(ctx, pages, _request("alice", "page-a"))
        await _next(stream)
        pending = asyncio.ensure_future(stream.__anext__())  # waits for the next change
        await asyncio.sleep(0.1)
        assert not pending.done()
        assert threading.active_count() == threads  # the waiting page holds no thread
        pages.close(("page-a", "bob"))  # another user naming alice's page session: nothing
        await asyncio.sleep(0.1)
        assert not pending.done() and len(pages) == 1
        await asyncio.to_thread(pages.close, ("page-a", "alice"))  # Gradio's unload, from a thread
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(pending, WAIT)

    asyncio.run(main())
    assert ctx.jobs.events.subscriber_count() == 0 and len(pages) == 0


def test_a_page_gradio_drops_unsubscribes_and_a_second_stream_replaces_the_first(setup):
    ctx, _ = setup
    pages = PageViews()

    async def main() -> None:
        first = panel_stream(ctx, pages, _request("alice", "page-a"))
        await _next(first)
        await first.aclose()  # what Gradio does with the stream of a page that has gone
        assert ctx.jobs.events.subscriber_count() == 0 and len(pages) == 0

        old = panel_stream(ctx, pages, _request("alice", "page-b"))
        await _next(old)
        new = panel_stream(ctx, pages, _request("alice", "page-b"))
        await _next(new)
        with pytest.raises(StopAsyncIteration):
            await _next(old)
        assert ctx.jobs.events.subscriber_count() == 1 and len(pages) == 1
        await new.aclose()

    asyncio.run(main())
    assert ctx.jobs.events.subscriber_count() == 0


def test_an_idle_page_gets_nothing_but_a_rare_keepalive(setup, monkeypatch):
    ctx, runner = setup
    monkeypatch.setattr(queue_panel, "IDLE_GAP_SECONDS", 3600.0)
    monkeypatch.setattr(queue_panel, "KEEPALIVE_SECONDS", 3600.0)
    pages = PageViews()

    async def main() -> None:
        stream = panel_stream(ctx, pages, _request("alice", "page-a"))
        await _next(stream)
        job = _submit(ctx, "bob", "bob's job")
        await _until(stream, lambda u: u[TABLE] != SKIP and "running" in u[TABLE], "bob's job")
        for step in range(2, 4):  # bob's steps: the idle viewer is not told at once
            job.progress.advance(step, 4)
        pending = asyncio.ensure_future(stream.__anext__())
        done, _ = await asyncio.wait({pending}, timeout=1.0)
        assert not done  # (a timeout that cancelled __anext__ would end the stream)
        runner.gate("bob's job").set()  # bob's job ends: a queue change, shown at once
        update = await asyncio.wait_for(pending, WAIT)
        if "done" not in str(update[TABLE]):
            await _until(stream, lambda u: u[TABLE] != SKIP and "done" in u[TABLE], "done")
        await stream.aclose()

        monkeypatch.setattr(queue_panel, "KEEPALIVE_SECONDS", 0.2)
        stream = panel_stream(ctx, pages, _request("alice", "page-a"))
        await _next(stream)
        assert await _next(stream) == (SKIP,) * 8  # the keepalive: a no-op
        await stream.aclose()

    asyncio.run(main())
    assert ctx.jobs.events.subscriber_count() == 0


def test_the_page_follows_the_job_chosen_in_my_jobs(setup):
    ctx, runner = setup
    runner.gate("older").set()
    older = _submit(ctx, "alice", "older")
    assert older.done.wait(WAIT)
    newer = _submit(ctx, "alice", "newer")
    pages = PageViews()

    async def main() -> None:
        stream = panel_stream(ctx, pages, _request("alice", "page-a", job=older.id))
        first = await _next(stream)
        assert first[URL] == older.id and "Done" in first[STATUS]  # pinned by the URL
        pages.get(("page-a", "alice")).show(None)  # "My jobs": back to the newest
        update = await _until(stream, lambda u: u[URL] != SKIP, "the newest job")
        assert update[-1][URL] == newer.id
        await stream.aclose()
        stranger = panel_stream(ctx, pages, _request("bob", "page-b", job=newer.id))
        assert "not one of yours" in (await _next(stranger))[MESSAGE]
        await stranger.aclose()

    asyncio.run(main())


def test_a_tab_follower_awaits_events_and_unsubscribes_when_dropped(setup, monkeypatch):
    ctx, runner = setup
    monkeypatch.setattr(job_stream, "KEEPALIVE_SECONDS", 3600.0)
    tab_jobs = TabJobs()
    request = _request("alice", "page-a")
    threads = threading.active_count()

    async def main() -> None:
        job = _submit(ctx, "alice", "followed")
        updates = follow_job(ctx, request, tab_jobs, job)
        shown = await _next(updates)
        while "Step 1/4" not in str(shown.progress):  # "waiting", "starting", the first step
            assert shown.finished is None
            shown = await _next(updates)
        # the line has the place of the live preview, which live_progress fills and keeps
        # current like the steps; the gallery waits for the result
        assert 'class="live-preview"' in shown.progress and shown.gallery == SKIP
        assert threading.active_count() == threads  # no thread per waiting click
        assert ctx.jobs.events.subscriber_count() == 1
        await updates.aclose()  # Gradio drops the stream of a page that has gone
        assert ctx.jobs.events.subscriber_count() == 0 and tab_jobs.lead(ctx, "page-a")[0] is None

        runner.gate("followed").set()
        again = _submit(ctx, "alice", "second")
        runner.gate("second").set()
        seen = [u async for u in follow_job(ctx, request, tab_jobs, again)]
        assert seen[-1].finished is again and again.state == "done"

    asyncio.run(main())
    assert ctx.jobs.events.subscriber_count() == 0


# --- many open pages ---------------------------------------------------------------------------


def test_many_open_pages_do_not_block_the_ui(tmp_path):
    """Every open page holds one Gradio event (its stream) for as long as it is open; more
    pages than Gradio's default 40 running events must still leave room for a click.
    41 pages are one more than that: with the default, the 41st stream and the click would
    wait for good. (Each new page costs the server a copy of the whole UI's config, about
    a second on a busy machine: more pages only make the test longer.)"""
    import json as _json
    import uuid

    import httpx

    from tests.conftest import ServerThread
    from webui.app import create_app
    from webui.settings import parse_flags

    pages = 41
    app = create_app(parse_flags(["--data-dir", str(tmp_path), "--no-download-sd-model"]))
    blocks = app.state.gradio_app.get_blocks()
    stream = next(i for i, f in blocks.fns.items() if f.name == "stream")
    refresh = next(i for i, f in blocks.fns.items() if f.name == "refresh_list")

    async def join(client: httpx.AsyncClient, fn_index: int, session: str) -> None:
        body = {"data": [], "fn_index": fn_index, "session_hash": session, "event_data": None}
        answer = await client.post("/gradio_api/queue/join", json=body)
        assert answer.status_code == 200, answer.text

    async def first_message(client, session: str, wanted: str, opened: asyncio.Event | None):
        """Read the session's event stream until a `wanted` message; keep it open after."""
        params = {"session_hash": session}
        async with client.stream("GET", "/gradio_api/queue/data", params=params) as sse:
            async for line in sse.aiter_lines():
                if line.startswith("data:") and _json.loads(line[5:])["msg"] == wanted:
                    if opened is None:
                        return
                    opened.set()
                    await asyncio.sleep(3600)  # the page stays open

    async def main(url: str) -> None:
        limits = httpx.Limits(max_connections=pages + 10)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=WAIT) as client:
            opened = [asyncio.Event() for _ in range(pages)]
            readers = []
            for event in opened:
                session = uuid.uuid4().hex[:11]
                await join(client, stream, session)
                readers.append(
                    asyncio.create_task(first_message(client, session, "process_generating", event))
                )
            try:
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in opened)), WAIT)
                session = uuid.uuid4().hex[:11]
                await join(client, refresh, session)  # a click on a page among them all
                await asyncio.wait_for(
                    first_message(client, session, "process_completed", None), WAIT
                )
            finally:
                for reader in readers:
                    reader.cancel()
                await asyncio.gather(*readers, return_exceptions=True)

    with ServerThread(app) as srv:
        asyncio.run(main(srv.url))


def test_steps_that_change_nothing_shown_are_not_redrawn_more_often_than_the_gap(
    setup, monkeypatch
):
    """A running job's steps change nothing the panel's stream shows (live_progress shows
    them), so nothing is sent; and a flood of step events is looked at no more often than
    the gap allows: a redraw that sends nothing must still wait (a loop that never awaited
    held the event loop: no request was answered, not even SIGTERM)."""
    ctx, runner = setup
    renders = []
    real_render = queue_panel._render

    def counted(*args):
        renders.append(time.monotonic())
        if len(renders) > 100:
            raise AssertionError("the panel redraws without waiting")
        return real_render(*args)

    monkeypatch.setattr(queue_panel, "_render", counted)
    pages = PageViews()

    async def main() -> None:
        stream = panel_stream(ctx, pages, _request("alice", "page-a"))
        await _next(stream)
        job = _submit(ctx, "alice", "alice's job")  # one step, then it waits for its gate
        await _until(stream, lambda u: u[TABLE] != SKIP and "running" in u[TABLE], "running")
        pending = asyncio.ensure_future(stream.__anext__())
        await asyncio.wait({pending}, timeout=1.0)
        before = len(renders)
        for _ in range(50):  # steps: events of the viewer's own job, every 10 ms
            job.progress.advance(1, 4)
            await asyncio.sleep(0.01)
        assert len(renders) - before <= 0.5 / queue_panel.MIN_GAP_SECONDS + 2
        assert not pending.done()  # nothing shown changed: nothing sent
        runner.gate("alice's job").set()
        await asyncio.wait_for(pending, WAIT)
        await stream.aclose()

    asyncio.run(main())
