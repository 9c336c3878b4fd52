"""Ctrl+C and SIGTERM stop the server within seconds, also during a long job (issue 19).

The real server runs as a subprocess (`python -m webui.app`, as launch.py starts it) with
a job that would take minutes on this CPU while clients wait on it; after the signal the
process must be gone within STOP_SECONDS, the jobs unfinished and outputs/ empty (no
image, no temporary file). The event-stream test runs the server class in a thread.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
STOP_SECONDS = 30  # a step takes about 1 s here, the exit 1-5 s (a busy CPU: more)
START_SECONDS = 240
# 3 batches of 4 images, 150 steps each: the first batch (its images are saved when it
# ends) must still run when the signal comes, several seconds after the job started
LONG_JOB = {
    "prompt": "a lighthouse in a storm",
    "steps": 150,
    "width": 128,
    "height": 128,
    "batch_size": 4,
    "n_iter": 3,
    "sampler_name": "Euler",
    "save_images": True,  # the API saves nothing unless asked
}


def _default_sigint() -> None:
    """The server as a terminal starts it: Ctrl+C not ignored. A test run started in the
    background by a shell ignores SIGINT, and a child inherits that: its Python then
    keeps ignoring the Ctrl+C that uvicorn raises again after shutting down (exit 0)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(
    "sig, page",
    [
        pytest.param(signal.SIGTERM, False, id="SIGTERM"),
        pytest.param(signal.SIGINT, True, id="SIGINT-with-a-page", marks=pytest.mark.browser),
    ],
)
def test_a_signal_stops_the_running_job_and_the_server(data_dir, sig, page) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "webui.app", "--data-dir", str(data_dir), "--api",
         "--port", str(port), "--no-download-sd-model"],
        cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=_default_sigint,
    )  # fmt: skip
    output: list[str] = []
    threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True).start()
    browser = None
    try:
        _wait_until_up(proc, url, output)
        answers = {}
        if page:  # a page generates: its event stream stays open while the job runs
            browser = _generate_in_a_page(url, LONG_JOB)
        else:  # an API client waits for its job
            answers["first"] = _post_in_thread(url, {**LONG_JOB, "force_task_id": "first"})
        _wait_for(url, proc, output, lambda j: j["state"] == "running" and j["step"] >= 2)
        answers["second"] = _post_in_thread(url, {**LONG_JOB, "force_task_id": "second"})
        _wait_for(url, proc, output, lambda j: j["id"] == "second" and j["state"] == "queued")

        started = time.monotonic()
        proc.send_signal(sig)
        try:
            code = proc.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {STOP_SECONDS} s after {sig.name}:\n{''.join(output)}")
        stopped_in = time.monotonic() - started
    finally:
        if browser is not None:
            browser.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for name, (thread, answer) in answers.items():
        thread.join(10)
        # the running job and the waiting one: both ended by the shutdown, none finished
        assert answer.get("status") == 503, (name, answer)
        assert answer["body"]["error"] == "ShuttingDown"
    assert code == (130 if sig == signal.SIGINT else -signal.SIGTERM), "".join(output)
    log = "".join(output)
    assert "Shutting down: stopping the running job" in log
    assert "Traceback" not in log and "ERROR" not in log, log
    left = [p for p in (data_dir / "outputs").rglob("*") if p.is_file()]
    assert left == [], left  # no image of the unfinished jobs, no temporary file
    print(f"{sig.name}: exited {stopped_in:.1f} s after the signal")


def test_a_shutdown_while_decoding_saves_nothing(data_dir, monkeypatch) -> None:
    """The server stops while a batch is being decoded: its images are not written."""
    from webui.context import build_context
    from webui.core import jobs as job_states
    from webui.core import processing
    from webui.core.params import Txt2ImgParams
    from webui.settings import parse_flags

    ctx = build_context(parse_flags(["--data-dir", str(data_dir), "--no-download-sd-model"]))
    decode = processing.decode_latents

    def decode_then_stop(*args, **kwargs):
        images = decode(*args, **kwargs)
        ctx.jobs.shutdown()  # Ctrl+C arrives now
        return images

    monkeypatch.setattr(processing, "decode_latents", decode_then_stop)
    try:
        params = Txt2ImgParams(prompt="a boat", steps=2, width=64, height=64, batch_count=2)
        job = ctx.jobs.submit("txt2img", params)
        assert job.done.wait(300)
    finally:
        ctx.close()
    assert (job.state, job.result, job.error) == (
        job_states.INTERRUPTED,
        None,
        job_states.SHUTDOWN_MESSAGE,
    )
    assert [p for p in (data_dir / "outputs").rglob("*") if p.is_file()] == []


def test_open_event_streams_end_when_the_server_stops() -> None:
    """A page's event stream ends (cleanly) as soon as the server shuts down, instead of
    holding the shutdown until uvicorn's graceful timeout cuts it."""
    from webui.api.shutdown import DisconnectOnShutdown
    from webui.app import StoppingServer
    from webui.core.jobs import JobQueue

    app = FastAPI()
    jobs = JobQueue(lambda job: None)
    jobs.start()
    app.state.ctx = SimpleNamespace(jobs=jobs)
    app.state.stopping = asyncio.Event()
    app.add_middleware(DisconnectOnShutdown, stopping=app.state.stopping)

    @app.get("/events")
    async def events() -> StreamingResponse:
        async def ticks():
            while True:
                yield "data: tick\n\n"
                await asyncio.sleep(0.2)

        return StreamingResponse(ticks(), media_type="text/event-stream")

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            timeout_graceful_shutdown=120)  # fmt: skip
    server = StoppingServer(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _wait(lambda: server.started, "the server to start", 60)
    lines: list[str] = []
    reader = threading.Thread(target=_read_stream, args=(f"http://127.0.0.1:{port}/events", lines))
    reader.start()
    _wait(lambda: len(lines) >= 2, "the first events", 30)

    server.should_exit = True
    thread.join(10)
    assert not thread.is_alive(), "the open stream held the shutdown"
    reader.join(10)
    assert lines[-1] == "end", lines[-3:]  # the response ended properly, not cut off
    assert app.state.stopping.is_set() and jobs.stopped()


def test_a_client_that_goes_away_is_still_noticed() -> None:
    """Until the shutdown the middleware passes a real disconnect through, also to
    Request.is_disconnected (how Gradio's event stream notices a closed page)."""
    from tests.conftest import ServerThread
    from webui.api.shutdown import DisconnectOnShutdown

    app = FastAPI()
    app.add_middleware(DisconnectOnShutdown, stopping=asyncio.Event())
    noticed = threading.Event()

    @app.get("/wait")
    async def wait(request: Request) -> dict:
        while not await request.is_disconnected():
            await asyncio.sleep(0.05)
        noticed.set()
        return {}

    with ServerThread(app) as server:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes
            httpx.get(f"{server.url}/wait", timeout=1)
        assert noticed.wait(10), "the app did not notice that the client went away"


def test_two_tasks_waiting_for_the_disconnect_both_see_it() -> None:
    """A stream's disconnect watcher and the request may wait for the client at once;
    the first to take the disconnect must not break the other's wait (AttributeError on
    a page close before)."""
    from webui.api.shutdown import _Request

    async def run() -> list[dict]:
        gone = asyncio.Event()
        receive = _client(gone)
        request = _Request(receive, None, asyncio.Event())
        await request.receive()  # the body
        waiting = [asyncio.ensure_future(request.receive()) for _ in range(2)]
        await asyncio.sleep(0.05)
        gone.set()
        return await asyncio.wait_for(asyncio.gather(*waiting), 10)

    assert [m["type"] for m in asyncio.run(run())] == ["http.disconnect"] * 2


@pytest.mark.parametrize("started, stopping", [(True, False), (False, True)],
                         ids=["an-open-stream", "an-unanswered-request-in-the-shutdown"])  # fmt: skip
def test_a_request_waiting_for_its_client_leaves_the_cpu_idle(started, stopping) -> None:
    """A request waits for its client's disconnect without spinning: an open page's started
    event stream, and a request not answered yet while the server stops. The first once
    looped at full speed for as long as a page was open, and every open page slowed the
    jobs (a 2-step tiny job took 20 s instead of 1 s)."""
    from webui.api.shutdown import _Request

    async def run() -> float:
        gone = asyncio.Event()
        receive = _client(gone)

        async def send(message: dict) -> None:
            pass

        request = _Request(receive, send, asyncio.Event())
        await request.receive()  # the body
        if started:
            await request.send({"type": "http.response.start", "status": 200, "headers": []})
        if stopping:
            request._stopping.set()
        waiting = asyncio.ensure_future(request.receive())
        start = time.process_time()
        await asyncio.sleep(1.0)
        used = time.process_time() - start
        gone.set()
        assert (await asyncio.wait_for(waiting, 10))["type"] == "http.disconnect"
        return used

    assert asyncio.run(run()) < 0.3  # seconds of CPU in one second of waiting


def _client(gone: asyncio.Event):
    """A request's ASGI `receive`: its body, then the disconnect once `gone` is set."""
    messages = iter([{"type": "http.request", "body": b"", "more_body": False}])

    async def receive() -> dict:
        for message in messages:
            return message
        await gone.wait()
        return {"type": "http.disconnect"}

    return receive


def _read_stream(url: str, lines: list[str]) -> None:
    try:
        with httpx.stream("GET", url, timeout=30) as response:
            for line in response.iter_lines():
                if line:
                    lines.append(line)
        lines.append("end")
    except httpx.HTTPError as exc:
        lines.append(f"error: {exc!r}")


def _wait(predicate, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _wait_until_up(proc: subprocess.Popen, url: str, output: list[str]) -> None:
    deadline = time.monotonic() + START_SECONDS
    while True:
        assert proc.poll() is None, "".join(output)
        try:
            if httpx.get(f"{url}/sdapi/v1/progress", timeout=10).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not start:\n" + "".join(output)
        time.sleep(0.3)


def _post_in_thread(url: str, body: dict) -> tuple[threading.Thread, dict[str, Any]]:
    """POST a txt2img job and wait for its answer (the client A1111 scripts are)."""
    answer: dict[str, Any] = {}

    def post() -> None:
        try:
            response = httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=600)
            answer.update(status=response.status_code, body=response.json())
        except httpx.HTTPError as exc:
            answer["error"] = repr(exc)

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread, answer


def _queue(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/webui/v1/queue", timeout=10).json()


def _wait_for(url: str, proc: subprocess.Popen, output: list[str], wanted) -> None:
    """Until a txt2img job in the queue listing is as `wanted`."""
    deadline = time.monotonic() + START_SECONDS
    while True:
        assert proc.poll() is None, "".join(output)
        queue = _queue(url)
        if any(wanted(j) for j in queue["jobs"] if j["kind"] == "txt2img"):
            return
        assert time.monotonic() < deadline, f"timed out; the queue: {queue}"
        time.sleep(0.5)


def _generate_in_a_page(url: str, job: dict):
    """A browser page starts the long job from the txt2img tab; returns the browser."""
    from playwright.sync_api import sync_playwright

    from tests.ui.test_browser import CHROMIUM, CHROMIUM_FLAGS, _set_number

    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url, wait_until="load")
    page.get_by_label("Prompt", exact=True).fill(job["prompt"])
    for label, key in (("Width", "width"), ("Height", "height"), ("Sampling steps", "steps"),
                       ("Batch count", "n_iter"), ("Batch size", "batch_size")):  # fmt: skip
        _set_number(page, label, job[key])
    page.wait_for_function(
        "() => document.querySelector('#sd_checkpoint input')?.value.includes('tiny-sd1')",
        timeout=60_000,
    )
    page.get_by_role("button", name="Generate", exact=True).click()
    return _Closing(browser, playwright)


class _Closing:
    def __init__(self, browser, playwright) -> None:
        self._browser, self._playwright = browser, playwright

    def close(self) -> None:
        self._browser.close()
        self._playwright.stop()
