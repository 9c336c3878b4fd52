"""The page comes first (issue 16): `webui.boot.BootApp` answers while the app is built.

The build is a function the test controls with an event (never timing): while it waits,
GET / is the waiting page naming the phase, the API answers 503 with Retry-After and
A1111's error JSON, /internal/ping answers; when it returns, the real app's lifespan runs
and every request goes to it. A failed build shows its message; a shutdown stops the build
at its next phase.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from tests.conftest import ServerThread
from webui.api.subpath import SubpathMiddleware
from webui.boot import BootApp, Cancelled, Startup

WAIT = 60  # generous: the machine may be busy


def real_app(events: list[str], subpath: str | None = None) -> FastAPI:
    """Stands in for webui.app.create_app: a page, an API route, a lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        events.append("started")
        yield
        events.append("stopped")

    app = FastAPI(lifespan=lifespan)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return "<html><body><div id='real-ui'>the real UI</div></body></html>"

    @app.get("/sdapi/v1/progress")
    def progress() -> dict:
        return {"progress": 0}

    if subpath:
        app.add_middleware(SubpathMiddleware, subpath=subpath)
    return app


def gated_build(gate: threading.Event, app: FastAPI) -> Callable[[Startup], FastAPI]:
    def build(startup: Startup) -> FastAPI:
        startup.phase("Loading torch")
        startup.detail("Loading model tiny-sd1.safetensors")
        assert gate.wait(WAIT)
        startup.phase("Building the page")
        return app

    return build


@contextmanager
def serving(boot: BootApp) -> Iterator[str]:
    with ServerThread(boot) as server:
        boot.start()
        yield server.url


def wait_status(url: str, predicate: Callable[[dict], bool]) -> dict:
    deadline = time.monotonic() + WAIT
    while True:
        status = httpx.get(f"{url}/internal/startup", timeout=10).json()
        if predicate(status):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.05)


def test_the_page_comes_first_then_the_real_app() -> None:
    gate, events = threading.Event(), []
    boot = BootApp(gated_build(gate, real_app(events)))
    with serving(boot) as url:
        wait_status(url, lambda s: s["phase"] == "Loading torch")
        page = httpx.get(f"{url}/", timeout=10)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "Loading torch" in page.text and "Loading model tiny-sd1.safetensors" in page.text
        assert "real-ui" not in page.text and events == []

        api = httpx.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "a cat"}, timeout=10)
        assert api.status_code == 503 and api.headers["retry-after"] == "5"
        assert api.json()["error"] == "Starting" and "Loading torch" in api.json()["detail"]
        assert httpx.get(f"{url}/sdapi/v1/progress", timeout=10).status_code == 503
        docs = httpx.get(f"{url}/docs", headers={"accept": "text/html"}, timeout=10)
        assert docs.status_code == 503 and "Loading torch" in docs.text  # a browser's tab
        assert httpx.get(f"{url}/internal/ping", timeout=10).json() == {}

        gate.set()
        wait_status(url, lambda s: s["ready"])
        assert "real-ui" in httpx.get(f"{url}/", timeout=10).text
        assert httpx.get(f"{url}/sdapi/v1/progress", timeout=10).json() == {"progress": 0}
        assert httpx.get(f"{url}/internal/ping", timeout=10).json() == {}
        assert events == ["started"]
    assert events == ["started", "stopped"]  # the real app's lifespan ends with the server


def test_a_failed_start_up_is_shown_and_logged(caplog) -> None:
    def build(startup: Startup) -> FastAPI:
        startup.phase("Loading diffusers")
        raise ImportError("cannot import name 'UNet2DConditionModel'")

    with serving(BootApp(build)) as url:
        status = wait_status(url, lambda s: s["error"] is not None)
        assert "UNet2DConditionModel" in status["error"] and not status["ready"]
        page = httpx.get(f"{url}/", timeout=10).text
        assert "Start-up failed" in page and "UNet2DConditionModel" in page
        api = httpx.get(f"{url}/sdapi/v1/progress", timeout=10)
        assert api.status_code == 503 and "retry-after" not in api.headers
        assert api.json()["error"] == "StartupFailed"
        assert "UNet2DConditionModel" in api.json()["detail"]
    assert "Start-up failed" in caplog.text and "Traceback" in caplog.text


def test_with_a_login_the_failure_is_in_the_log_only() -> None:
    def build(startup: Startup) -> FastAPI:
        startup.detail("Loading model secret.safetensors")
        raise RuntimeError("secret path /home/me/models")

    with serving(BootApp(build, show_errors=False)) as url:
        status = wait_status(url, lambda s: s["error"] is not None)
        assert "secret" not in status["error"] and "log" in status["error"]
        assert "secret" not in httpx.get(f"{url}/", timeout=10).text


def test_the_waiting_page_lives_under_the_subpath() -> None:
    gate, events = threading.Event(), []
    boot = BootApp(gated_build(gate, real_app(events, "/sd")), subpath="/sd")
    with serving(boot) as url:
        wait_status(f"{url}/sd", lambda s: s["phase"] == "Loading torch")
        top = httpx.get(f"{url}/", timeout=10)
        assert top.status_code == 307 and top.headers["location"] == "/sd/"
        assert "Loading torch" in httpx.get(f"{url}/sd/", timeout=10).text
        assert "/sd/internal/startup" in httpx.get(f"{url}/sd/", timeout=10).text
        assert httpx.get(f"{url}/elsewhere", timeout=10).status_code == 404
        gate.set()
        wait_status(f"{url}/sd", lambda s: s["ready"])
        assert "real-ui" in httpx.get(f"{url}/sd/", timeout=10).text  # the real app's subpath


def test_a_shutdown_stops_the_build_at_its_next_phase() -> None:
    gate, closed = threading.Event(), threading.Event()

    def build(startup: Startup) -> FastAPI:
        startup.phase("Starting the worker")
        startup.holds_resources = True  # as build_server does from build_context on
        assert gate.wait(WAIT)
        try:  # what webui.app.build_server does with the context it built
            startup.phase("Loading Gradio")
        except Cancelled:
            closed.set()
            raise
        raise AssertionError("the build went on after the shutdown")

    boot = BootApp(build)
    server = ServerThread(boot)
    with server:
        boot.start()
        wait_status(server.url, lambda s: s["phase"] == "Starting the worker")
        server.server.should_exit = True  # the shutdown waits for the build's next phase
        deadline = time.monotonic() + WAIT
        while not boot._stopping:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        gate.set()
    assert closed.is_set() and not server.thread.is_alive()


@pytest.mark.browser
def test_the_waiting_page_turns_into_the_real_ui_without_a_reload() -> None:
    from playwright.sync_api import sync_playwright

    from tests.ui.test_browser import CHROMIUM, CHROMIUM_FLAGS

    gate, events = threading.Event(), []
    boot = BootApp(gated_build(gate, real_app(events)), language="zh_CN")
    with serving(boot) as url, sync_playwright() as playwright:
        wait_status(url, lambda s: s["phase"] == "Loading torch")
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(url, wait_until="load")
            page.wait_for_function(
                "() => document.querySelector('#phase').textContent.includes('正在加载 torch')",
                timeout=WAIT * 1000,
            )
            gate.set()  # the page reloads itself into the real UI
            page.wait_for_selector("#real-ui", timeout=WAIT * 1000)
        finally:
            browser.close()


def test_the_page_language_follows_the_flag_the_option_or_the_browser(tmp_path) -> None:
    from webui.app import _language
    from webui.boot_page import waiting_page
    from webui.settings import parse_flags

    flags = parse_flags(["--data-dir", str(tmp_path)])
    assert _language(flags) == "auto"
    flags.config_path.write_text('{"localization": "Auto"}', encoding="utf-8")  # A1111's
    assert _language(flags) == "auto"
    flags.config_path.write_text('{"localization": "zh_CN"}', encoding="utf-8")
    assert _language(flags) == "zh_CN"
    assert _language(parse_flags(["--data-dir", str(tmp_path), "--localization", "en"])) == "en"
    status = Startup().snapshot()
    assert "正在加载 torch" in waiting_page(status, "/internal/startup", "zh_CN")
    assert "正在加载 torch" in waiting_page(status, "/internal/startup", "auto")  # browser's
    assert "正在加载 torch" not in waiting_page(status, "/internal/startup", "en")
