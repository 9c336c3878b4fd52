"""Live progress outside Gradio's event stream: the page's ticket, the event stream of
running jobs' numbers (previews only for their owner), and the live preview route."""

from __future__ import annotations

import io
import json
import threading
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

from tests.conftest import ServerThread
from webui.core.jobs import JobQueue
from webui.options import Options
from webui.ui import live_progress
from webui.ui.common import progress_html

WAIT = 60


class Runner:
    """Each job takes one step, makes a 24x16 preview, then waits for its gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.previewed = threading.Event()

    def __call__(self, job):
        job.progress.advance(1, 4)
        job.progress.set_preview(Image.new("RGB", (24, 16), (10, 200, 30)), 1)
        self.previewed.set()
        self.gate.wait(WAIT)
        return SimpleNamespace(images=[], warnings=[], params=job.params)


@pytest.fixture
def running():
    """(server url, the running job of alice): the routes on a bare app."""
    runner = Runner()
    queue = JobQueue(runner)
    queue.start()
    app = FastAPI()
    app.state.ctx = SimpleNamespace(jobs=queue, options=Options())
    live_progress.install_progress_routes(app)
    job = queue.submit("txt2img", SimpleNamespace(prompt="alice's castle"), owner="alice")
    assert runner.previewed.wait(WAIT)
    try:
        with ServerThread(app) as srv:
            yield srv.url, job, app.state.ctx
    finally:
        runner.gate.set()
        queue.stop()


def _first_message(url: str, ticket: str) -> dict:
    path = f"{url}{live_progress.EVENTS_PATH}"
    with httpx.stream("GET", path, params={"ticket": ticket}, timeout=WAIT) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines():
            if line.startswith("data: "):
                return json.loads(line[len("data: ") :])
    raise AssertionError("the stream ended without a message")


def test_a_ticket_names_its_owner_and_cannot_be_made_up():
    ticket = live_progress.ticket_for("alice")
    assert live_progress.owner_of_ticket(ticket) == "alice"
    name, _, signature = ticket.partition(".")
    forged = live_progress.ticket_for("bob").partition(".")[0] + "." + signature
    assert live_progress.owner_of_ticket(forged) is None
    assert live_progress.owner_of_ticket("not a ticket") is None


def test_everyone_sees_the_steps_only_the_owner_the_preview(running):
    url, job, ctx = running
    mine = _first_message(url, live_progress.ticket_for("alice"))["jobs"]
    theirs = _first_message(url, live_progress.ticket_for("bob"))["jobs"]
    key = live_progress.progress_key(job)
    assert [j["key"] for j in mine] == [key] == [j["key"] for j in theirs]
    assert mine[0]["steps"] == "1/4" and mine[0]["percent"] == 25.0
    assert mine[0]["line"][0] == "Step 1/4" and mine[0]["line"][1].startswith("ETA")
    assert "preview" not in theirs[0]
    preview = mine[0]["preview"]
    assert preview["key"] == live_progress.preview_key(job) != key

    # the bar the page shows carries the key; the line has the preview's place
    html = progress_html(ctx, job)
    assert f'data-progress="{key}"' in html and f'data-preview="{preview["key"]}"' in html
    assert preview["src"] in html.replace("&amp;", "&")

    answer = httpx.get(f"{url}/{preview['src']}", timeout=WAIT)
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(answer.content)).size == (24, 16)


def test_bad_tickets_and_unknown_previews_are_refused(running):
    url, _, _ = running
    answer = httpx.get(f"{url}{live_progress.EVENTS_PATH}", params={"ticket": "x.y"})
    assert answer.status_code == 403 and "ticket" in answer.json()["detail"]
    answer = httpx.get(f"{url}{live_progress.PREVIEW_PATH}/{'0' * 20}")
    assert answer.status_code == 404
