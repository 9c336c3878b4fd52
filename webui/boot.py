"""The page that comes first: the server answers at once while the program loads behind it.

`python -m webui.app` serves a `BootApp` with uvicorn as soon as its flags are parsed. The
BootApp starts a thread that builds the real server (`webui.app.build_server`: torch,
diffusers, the worker, the job queue, Gradio and the page) and, until that is done,
answers every request itself:

- `GET /` (and any page a browser asks for): a small page that says what the server is
  waiting for ("Loading torch", "Loading model X", ...) and turns into the real UI without
  a manual reload when it is ready (`boot_page.py`);
- `/internal/ping` (A1111's health route): `{}` at once, before and after;
  `/internal/startup`: the state as JSON (`ready`, `phase`, `detail`, `error`);
- any other request (the API): 503 with `Retry-After` and A1111's error JSON.

When the real app is built, the BootApp runs its lifespan (Gradio's start-up events, the
context's close at the end) and hands every request to it. A failure of the build (an import
error, a broken install) is logged with its traceback and shown by the page and the 503s;
the page never waits forever. On shutdown the build stops at its next phase (`Cancelled`)
and closes what it built; while it only imports, the process exits at once.

This module must never import torch, diffusers, gradio or fastapi (it is what makes the
first page quick); it imports the standard library and the ASGI types only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .boot_page import waiting_page

log = logging.getLogger("webui")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

RETRY_AFTER_SECONDS = 5
BUILD_STOP_SECONDS = 30  # on shutdown, how long to wait for the build to reach its next phase
PING = "/internal/ping"
STATUS = "/internal/startup"


class Cancelled(Exception):
    """The server is shutting down: the build stops here (and closes what it built)."""


class Startup:
    """What the background build is doing now. Written by the build thread (`phase`,
    `detail`), read by requests (`snapshot`); `cancel` makes the next `phase` raise."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._began = time.monotonic()
        self._phase = "Starting"
        self._detail: Callable[[], str] | str = ""
        self._error: str | None = None
        self._cancelled = False
        self.ready = False
        # the build holds something to close (files, threads, a job store): a shutdown
        # waits for its next phase; before that (imports only) the process just exits
        self.holds_resources = False

    def phase(self, text: str) -> None:
        """The build goes on with `text` ("Loading torch"); raises Cancelled on shutdown."""
        with self._lock:
            if self._cancelled:
                raise Cancelled
            self._phase = text
        log.info("Start-up: %s (%.1f s)", text, time.monotonic() - self._began)

    def detail(self, text: Callable[[], str] | str) -> None:
        """A second line (e.g. the model being loaded meanwhile); a callable is read on use."""
        self._detail = text

    def fail(self, message: str) -> None:
        with self._lock:
            self._error = message

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True

    def snapshot(self) -> dict[str, Any]:
        detail = self._detail() if callable(self._detail) else self._detail
        with self._lock:
            seconds = round(time.monotonic() - self._began, 1)
            return {"ready": self.ready, "phase": self._phase, "detail": detail,
                    "error": self._error, "seconds": seconds}  # fmt: skip


class BootApp:
    """The ASGI app uvicorn serves: the waiting answers, then the real app.

    `build(startup)` runs in a thread (`start()`) and returns the real ASGI app.
    `subpath` is --subpath (the real app handles it itself; the waiting page lives under it
    too); `show_errors=False` (a login is required) shows a failure's message and the
    second line (a checkpoint's name) in the log only; `language` is the localization (a
    language file name, or "auto": the browser's).
    """

    def __init__(
        self,
        build: Callable[[Startup], ASGIApp],
        *,
        subpath: str | None = None,
        show_errors: bool = True,
        language: str = "auto",
    ) -> None:
        self.startup = Startup()
        self._build = build
        self._subpath = "/" + subpath.strip("/") if subpath and subpath.strip("/") else ""
        self._show_errors = show_errors
        self._language = language
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.app: ASGIApp | None = None  # the real app, once built and started
        self._lifespan_state: dict[str, Any] = {}
        self._lifespan_input: asyncio.Queue[Message] | None = None
        self._lifespan_task: asyncio.Task | None = None
        self._lifespan_done: asyncio.Future | None = None

    # --- the build ------------------------------------------------------------------------

    def start(self) -> None:
        """Begin building the real app (once), after the server has started (its lifespan
        start-up tells the event loop the build hands the app to)."""
        if self._thread is not None:
            return
        if self._loop is None:
            raise RuntimeError("BootApp.start() before the server's lifespan start-up")
        self._thread = threading.Thread(target=self._run_build, name="webui-build", daemon=True)
        self._thread.start()

    def _run_build(self) -> None:
        try:
            app = self._build(self.startup)
        except Cancelled:
            log.info("Start-up stopped: the server is shutting down")
            return
        except Exception as exc:  # an import error, a broken install: shown, never a hang
            log.exception("Start-up failed")
            self.startup.fail(f"{type(exc).__name__}: {exc}")
            return
        assert self._loop is not None
        try:
            asyncio.run_coroutine_threadsafe(self._start_app(app), self._loop).result()
        except Exception as exc:
            log.exception("Start-up failed: the app did not start")
            self.startup.fail(f"{type(exc).__name__}: {exc}")

    async def _start_app(self, app: ASGIApp) -> None:
        """Run the real app's lifespan start-up, then serve it (on the event loop)."""
        started = asyncio.get_running_loop().create_future()
        self._lifespan_done = asyncio.get_running_loop().create_future()
        self._lifespan_input = asyncio.Queue()

        async def send(message: Message) -> None:
            kind, text = message["type"], message.get("message") or "lifespan failed"
            future = started if kind.startswith("lifespan.startup") else self._lifespan_done
            if future is not None and not future.done():
                if kind.endswith(".failed"):
                    future.set_exception(RuntimeError(text))
                else:
                    future.set_result(None)

        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"},
                 "state": self._lifespan_state}  # fmt: skip
        self._lifespan_task = asyncio.create_task(app(scope, self._lifespan_input.get, send))
        self._lifespan_input.put_nowait({"type": "lifespan.startup"})
        await asyncio.wait([started, self._lifespan_task], return_when=asyncio.FIRST_COMPLETED)
        if not started.done():  # the lifespan ended without starting: its exception
            self._lifespan_task.result()
            raise RuntimeError("the app's lifespan ended before it started")
        started.result()
        if self._stopping:  # the server stopped meanwhile: close what was built
            await self._stop_app()
            return
        self.app = app
        self.startup.ready = True
        log.info("Start-up: the page is ready (%.1f s)", self.startup.snapshot()["seconds"])

    async def _stop_app(self) -> None:
        if self._lifespan_task is None or self._lifespan_input is None:
            return
        self._lifespan_input.put_nowait({"type": "lifespan.shutdown"})
        waits: list[asyncio.Future] = [self._lifespan_task]
        if self._lifespan_done is not None:
            waits.append(self._lifespan_done)
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        self._lifespan_task = None

    def stop(self) -> ASGIApp | None:
        """The server shuts down: the build stops at its next phase. Returns the real app
        when it is serving (its work is stopped by the caller, then by its lifespan)."""
        self._stopping = True
        self.startup.cancel()
        return self.app

    async def _shutdown(self) -> None:
        self.stop()
        thread = self._thread
        if thread is not None and thread.is_alive() and self.startup.holds_resources:
            await asyncio.to_thread(thread.join, BUILD_STOP_SECONDS)
            if thread.is_alive():
                log.warning("Start-up still busy (%s); exiting without it", self.startup._phase)
        await self._stop_app()

    # --- ASGI -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        path = self._route_path(scope)
        if scope["type"] == "http" and path in (PING, STATUS):
            body = {} if path == PING else self._status()
            await _send_json(send, 200, body)
        elif self.app is not None:
            state = {**self._lifespan_state, **scope.get("state", {})}
            await self.app({**scope, "state": state}, receive, send)
        elif scope["type"] == "http":
            await self._waiting(scope, path, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1013})  # try again later

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._loop = asyncio.get_running_loop()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self._shutdown()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return

    def _route_path(self, scope: Scope) -> str | None:
        """The path below the root path and --subpath; None outside the subpath."""
        path, root = scope.get("path", ""), scope.get("root_path", "")
        prefix = root + self._subpath
        if path.startswith(prefix + "/"):
            return path[len(prefix) :]
        if not self._subpath and path.startswith(root):  # uvicorn --root-path
            return path[len(root) :] or "/"
        return None

    def _status(self) -> dict[str, Any]:
        status = self.startup.snapshot()
        if not self._show_errors:  # a login is required: no file names before it
            status["detail"] = ""
            if status["error"]:
                status["error"] = "Start-up failed; see the server's log."
        return status

    async def _waiting(self, scope: Scope, path: str | None, send: Send) -> None:
        root = scope.get("root_path", "") + self._subpath
        if path is None:  # outside --subpath: / goes to the page under it, as in the real app
            top = scope.get("root_path", "")
            if scope.get("path") in (root, top + "/", top):
                await _send(send, 307, b"", [(b"location", (root + "/").encode())])
            else:
                await _send(send, 404, f"Not found: this server lives under {root}/".encode(), [])
            return
        status = self._status()
        accept = dict(scope.get("headers", [])).get(b"accept", b"").decode("latin-1")
        if scope.get("method") in ("GET", "HEAD") and (path == "/" or "text/html" in accept):
            page = waiting_page(status, root + STATUS, self._language)
            code = 200 if path == "/" else 503
            await _send(send, code, page.encode(), [(b"content-type", b"text/html; charset=utf-8"),
                                                    *_retry(status)])  # fmt: skip
            return
        if status["error"]:
            detail = f"The server could not start: {status['error']}"
        else:
            detail = f"The server is starting ({status['phase']}); try again in a few seconds."
        body = {"error": "StartupFailed" if status["error"] else "Starting", "detail": detail,
                "errors": detail, "phase": status["phase"]}  # fmt: skip
        await _send_json(send, 503, body, _retry(status))


def _retry(status: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """Retry-After while starting; a failed start-up will not be ready later."""
    return [] if status["error"] else [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())]


async def _send_json(
    send: Send, code: int, body: dict, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    data = json.dumps(body).encode()
    await _send(send, code, data, [(b"content-type", b"application/json"), *(headers or [])])


async def _send(send: Send, code: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store")]  # fmt: skip
    await send({"type": "http.response.start", "status": code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
