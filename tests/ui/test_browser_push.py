"""Pushed progress in a real browser: an idle page makes (almost) no requests, the queue
table still follows the queue within about a second, and a closed page's stream ends.

The measured numbers (requests of an idle page, latency of a queue change) are printed;
run with `-s` to see them. The assertions use generous bounds, never tight timings.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ServerThread
from tests.ui.test_browser import _set_number
from webui.app import create_app
from webui.settings import parse_flags
from webui.ui import queue_panel

pytestmark = pytest.mark.browser
WAIT = 120_000  # ms, for Playwright
IDLE_SECONDS = 15
SETTLE_SECONDS = 3  # quiet for this long: "networkidle" never comes (open streams)
LONG_STEPS = 150


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_files) -> Iterator[tuple[ServerThread, object]]:
    data = tmp_path_factory.mktemp("browser-push")
    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    shutil.copy(tiny_files["sd1"], folder / "tiny-sd1.safetensors")
    (data / "config.json").write_text(json.dumps({"show_progress_every_n_steps": 1}))
    flags = parse_flags(["--data-dir", str(data), "--no-download-sd-model", "--api"])
    app = create_app(flags)
    with ServerThread(app) as srv:
        yield srv, app.state.ctx


def open_page(browser, url: str):
    context = browser.new_context(viewport={"width": 1400, "height": 1600})
    page = context.new_page()
    page.goto(url, wait_until="load")
    page.wait_for_function(
        "() => document.querySelector('#sd_checkpoint input')?.value.includes('tiny-sd1')",
        timeout=WAIT,
    )
    page.locator("#queue_table .queue-empty, #queue_table table").first.wait_for(timeout=WAIT)
    return context, page


def _wait_until(predicate, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _request_kind(srv: ServerThread, request) -> str:
    """What a request of the page is for: a file, or the event listener it runs."""
    if "/internal/progress-preview/" in request.url:
        return "preview image"
    if "/gradio_api/queue/join" not in request.url:
        return request.url
    blocks = srv.server.config.app.state.gradio_app.get_blocks()
    fn = blocks.fns[json.loads(request.post_data)["fn_index"]]
    events = {(type(blocks.blocks[block]).__name__, event) for block, event in fn.targets}
    return "gallery change" if events == {("Gallery", "change")} else f"{fn.name} {events}"


def _idle(ctx) -> None:
    _wait_until(lambda: all(j.finished for j in ctx.jobs.jobs()), "the queue to be idle", 300)


def _settle(page, requests: list[str], limit: float = 120) -> None:
    """Wait until the page has sent no request for SETTLE_SECONDS (at most `limit` s)."""
    deadline = time.monotonic() + limit
    seen = -1
    while len(requests) != seen and time.monotonic() < deadline:
        seen = len(requests)
        page.wait_for_timeout(SETTLE_SECONDS * 1000)


def test_an_idle_page_makes_at_most_3_requests_in_15_seconds(browser, server) -> None:
    srv, ctx = server
    _idle(ctx)
    context, page = open_page(browser, f"{srv.url}/")
    try:
        requests: list[str] = []
        page.on("request", lambda r: requests.append(f"{r.method} {r.url}"))
        _settle(page, requests)  # the page's own start-up requests (slower on a busy machine)
        requests.clear()
        page.wait_for_timeout(IDLE_SECONDS * 1000)
        print(f"\nidle page: {len(requests)} request(s) in {IDLE_SECONDS} s: {requests}")
        assert len(requests) <= 3, requests
    finally:
        context.close()


@pytest.mark.usefixtures("slow_steps")
def test_the_queue_table_follows_the_queue_within_about_a_second(browser, server) -> None:
    """The viewer has a job running; a job queued by someone else (the API) and the
    viewer's own steps show in the table without the page asking."""
    srv, ctx = server
    _idle(ctx)
    context, page = open_page(browser, f"{srv.url}/")
    try:
        page.get_by_label("Prompt", exact=True).fill("pushed lighthouse")
        _set_number(page, "Width", 64)
        _set_number(page, "Height", 64)
        _set_number(page, "Sampling steps", LONG_STEPS)
        clicked = time.monotonic()
        page.get_by_role("button", name="Generate", exact=True).click()
        mine = page.locator("#queue_table tr.queue-row.mine", has_text="pushed lighthouse")
        mine.wait_for(timeout=WAIT)
        own_row = time.monotonic() - clicked
        page.wait_for_function(
            "() => /\\d+\\/150/.test(document.querySelector('#queue_table tr.mine')"
            "?.textContent || '')",
            timeout=WAIT,
        )  # its steps are shown

        requests: list = []
        page.on("request", lambda r: requests.append(r))
        body = {"prompt": "api harbour", "steps": 2, "width": 64, "height": 64}
        started = time.monotonic()
        answer = httpx.post(f"{srv.url}/webui/v1/txt2img", json=body, timeout=60)
        assert answer.status_code == 202, answer.text
        page.locator('#queue_table tr.queue-row.queued[data-owner="api"]').wait_for(timeout=WAIT)
        latency = time.monotonic() - started

        step_text = page.locator("#queue_table tr.mine .job-progress-text")
        before = step_text.inner_text()
        started = time.monotonic()
        page.wait_for_function(
            "(before) => (document.querySelector('#queue_table tr.mine .job-progress-text')"
            "?.textContent || before) !== before",
            arg=before,
            timeout=WAIT,
        )
        step_latency = time.monotonic() - started
        kinds = [_request_kind(srv, r) for r in requests]
        print(
            f"\nown job in the table {own_row:.2f} s after the click; another user's job "
            f"{latency:.2f} s after its POST; next step shown after {step_latency:.2f} s; "
            f"meanwhile the page made {len(requests)} request(s): {sorted(set(kinds))}"
        )
        assert latency < 10 and step_latency < 10  # generous: measured values are printed
        # all of it arrived on the page's open streams: it only fetched its own previews
        assert set(kinds) <= {"preview image"}, kinds

        mine.get_by_role("button", name="Interrupt").click()
        page.locator("#queue_table tr.mine", has_text="interrupted").wait_for(timeout=WAIT)
    finally:
        context.close()
    _idle(ctx)


@pytest.mark.usefixtures("slow_steps")
def test_a_closed_page_ends_its_streams(browser, server) -> None:
    """The queue panel's stream, the live progress stream and a Generate click's follower
    end with their page (the pages of the tests above were closed too: nothing of theirs
    may be left)."""
    srv, ctx = server
    _idle(ctx)
    hub = ctx.jobs.events
    _wait_until(lambda: hub.subscriber_count() == 0, "the earlier pages' streams to end")
    context, page = open_page(browser, f"{srv.url}/")
    _wait_until(lambda: hub.subscriber_count() == 2, "the page's streams to subscribe")
    page.get_by_label("Prompt", exact=True).fill("closed page")
    _set_number(page, "Width", 64)
    _set_number(page, "Height", 64)
    _set_number(page, "Sampling steps", LONG_STEPS)
    page.get_by_role("button", name="Generate", exact=True).click()
    page.locator("#queue_table tr.running.mine", has_text="closed page").wait_for(timeout=WAIT)
    _wait_until(lambda: hub.subscriber_count() == 3, "the tab to follow its job")
    job = next(j for j in ctx.jobs.jobs() if j.prompt == "closed page")
    closed = time.monotonic()
    context.close()
    _wait_until(lambda: hub.subscriber_count() == 0, "the closed page's streams to end")
    print(
        f"\nthe closed page's streams ended {time.monotonic() - closed:.2f} s after it closed; "
        f"its job was {job.state} then"
    )
    ctx.jobs.interrupt(job.id)
    _idle(ctx)


def test_an_idle_closed_page_ends_its_stream_through_unload(browser, server, monkeypatch) -> None:
    """With the keepalive out of the way, only Gradio's unload event can end the queue
    panel's stream of an idle page that was closed (the server runs in this process, so the
    patch holds); the live progress stream sees its connection closed."""
    srv, ctx = server
    _idle(ctx)
    monkeypatch.setattr(queue_panel, "KEEPALIVE_SECONDS", 3600.0)
    hub = ctx.jobs.events
    _wait_until(lambda: hub.subscriber_count() == 0, "the earlier pages' streams to end")
    context, page = open_page(browser, f"{srv.url}/")
    _wait_until(lambda: hub.subscriber_count() == 2, "the page's streams to subscribe")
    page.wait_for_timeout(1000)
    closed = time.monotonic()
    context.close()
    _wait_until(lambda: hub.subscriber_count() == 0, "the closed page's streams to end")
    print(f"\nan idle page's streams ended {time.monotonic() - closed:.2f} s after it closed")
