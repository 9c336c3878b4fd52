"""Open streams end as soon as the server shuts down, instead of holding the shutdown.

A UI page keeps an event stream open (Gradio's queue, fed by the queue panel's timer), and
uvicorn waits for open connections before the app's shutdown. Once `stopping` is set (by
`webui.app.StoppingServer` on Ctrl+C / SIGTERM), a request that has read its whole body and
waits for more from the client is told that the client has gone: a streaming response
listening for that ends at once. Requests still reading their body are left alone.

This module must never import torch or diffusers.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DISCONNECT: Message = {"type": "http.disconnect"}


class DisconnectOnShutdown:
    def __init__(self, app: ASGIApp, stopping: asyncio.Event) -> None:
        self.app = app
        self.stopping = stopping

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = _Request(receive, send, self.stopping)
        try:
            await self.app(scope, request.receive, request.send)
        finally:
            request.forget()
        if request.told and request.started and not request.complete:
            # the stream stopped as if the client had gone: end the response properly
            await send({"type": "http.response.body", "body": b"", "more_body": False})


class _Request:
    """One request's receive and send, watched for the shutdown."""

    def __init__(self, receive: Receive, send: Send, stopping: asyncio.Event) -> None:
        self._receive, self._send, self._stopping = receive, send, stopping
        self.body_read = self.told = self.started = self.complete = False
        self.streaming = False  # started without a Content-Length: it may never end
        self._started = asyncio.Event()
        self._pending: asyncio.Future[Message] | None = None

    async def receive(self) -> Message:
        if not self.body_read:
            message = await self._receive()
            more = message["type"] == "http.request" and message.get("more_body", False)
            self.body_read = not more
            return message
        # after the body only a disconnect can come; the wait for it is kept across calls
        # (Request.is_disconnected asks in a cancelled scope and must see one that came).
        # On shutdown only a stream is told the client has gone: a response of known length
        # (a file, an image) is short and ends by itself, whole.
        # Two tasks may wait at once (a stream's disconnect watcher and the request's own):
        # both wait for the same message, and the first to take it clears the wait.
        pending = self._pending
        if pending is None:
            pending = self._pending = asyncio.ensure_future(self._receive())
        while not pending.done():
            if self._stopping.is_set() and self.streaming:
                self.told = True
                return DISCONNECT
            if self._started.is_set() and not self.streaming:
                await asyncio.wait({pending})  # a whole response: its own disconnect
                break
            # only the events still to come (a set event's wait ends at once: waiting for
            # it again would spin the event loop)
            events = [e for e in (self._stopping, self._started) if not e.is_set()]
            waits = [asyncio.ensure_future(e.wait()) for e in events]
            try:
                await asyncio.wait({pending, *waits}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
        if self._pending is pending:
            self._pending = None
        return pending.result()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            headers = {bytes(k).lower() for k, _ in message.get("headers", [])}
            self.streaming = b"content-length" not in headers
            self._started.set()
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            self.complete = True
        await self._send(message)

    def forget(self) -> None:
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()
