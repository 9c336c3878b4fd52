"""/webui/v1/queue and /webui/v1/jobs/{id} read finished jobs from the job store (issue 14):
paged and not capped at 20, also after a restart, with the per-owner privacy rules, and a
result whose file was deleted is counted as deleted instead of sent."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.core.test_job_store import Runner, _params
from webui.api.routes_queue import queue_router
from webui.core.job_store import JobStore
from webui.core.jobs import JobQueue
from webui.options import Options
from webui.settings import parse_flags


@pytest.fixture
def restarted(tmp_path):
    """ann ran 25 jobs and bob one, then the server restarted: a new queue on the file."""
    folder = tmp_path / "outputs"
    folder.mkdir()
    db = tmp_path / "jobs.sqlite3"
    store = JobStore(db)
    queue = JobQueue(Runner(folder), store=store)
    queue.start()
    jobs = [queue.submit("txt2img", _params(f"ann {i}", seed=i), owner="ann") for i in range(25)]
    jobs.append(queue.submit("txt2img", _params("bob's secret", seed=99), owner="bob"))
    assert all(j.done.wait(10) for j in jobs)
    queue.stop()
    store.close()
    again_store = JobStore(db)
    again = JobQueue(Runner(folder), store=again_store)
    options = Options()
    flags = parse_flags(["--api", "--api-auth", "ann:secret1,bob:secret2"])
    app = FastAPI()
    app.state.ctx = SimpleNamespace(jobs=again, options=options, flags=flags)
    app.include_router(queue_router())
    yield TestClient(app), jobs
    again.stop()
    again_store.close()


def _as(client: TestClient, user: str) -> tuple[str, str]:
    return user, {"ann": "secret1", "bob": "secret2"}[user]


def test_the_queue_pages_through_every_finished_job(restarted) -> None:
    client, jobs = restarted
    body = client.get("/webui/v1/queue", params={"limit": 30}, auth=_as(client, "ann")).json()
    assert body["finished_total"] == 26 and len(body["jobs"]) == 26
    anns = [j["prompt"] for j in body["jobs"] if j["owner"] == "ann"]
    assert anns == [f"ann {i}" for i in reversed(range(25))]  # newest first
    bobs = [j for j in body["jobs"] if j["owner"] == "bob"]
    assert [j["prompt"] for j in bobs] == [""]  # bob's prompt is not shown to ann
    page = client.get("/webui/v1/queue", params={"limit": 5, "offset": 20}, auth=_as(client, "ann"))
    assert page.json()["jobs"] == body["jobs"][20:25]
    assert client.get("/webui/v1/queue", auth=_as(client, "ann")).json()["jobs"].__len__() == 20
    too_many = client.get("/webui/v1/queue", params={"limit": 500}, auth=_as(client, "ann"))
    assert too_many.status_code == 422


def test_an_old_job_shows_its_files_and_says_which_were_deleted(restarted) -> None:
    client, jobs = restarted
    oldest = jobs[0]
    url = f"/webui/v1/jobs/{oldest.id}"
    body = client.get(url, params={"images": True}, auth=_as(client, "ann")).json()
    assert body["state"] == "done" and body["prompt"] == "ann 0"
    assert len(body["images"]) == 1 and body["infotexts"] == ["ann 0, Seed: 0"]
    assert body["deleted_images"] == 0
    others = client.get(url, params={"images": True}, auth=_as(client, "bob")).json()
    assert others["images"] == [] and others["prompt"] == ""  # never another user's pictures
    Path(oldest.saved[0]).unlink()
    body = client.get(url, params={"images": True}, auth=_as(client, "ann")).json()
    assert (body["images"], body["infotexts"], body["deleted_images"]) == ([], [], 1)
    assert client.get("/webui/v1/jobs/nope", auth=_as(client, "ann")).status_code == 404
