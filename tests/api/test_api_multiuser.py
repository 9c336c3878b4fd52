"""Several API clients at once, over real HTTP on 127.0.0.1: per-job checkpoints and
options, one job at a time, per-user interrupt/skip/progress, the /webui/v1 queue API,
the per-user queue limit (429) and bad requests (422 naming the field).

One server with two tiny SD 1.x checkpoints and three --api-auth users serves the module.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.test_api import _decode, golden_payload
from tests.conftest import ServerThread
from webui.app import create_app
from webui.imaging.infotext import parse_infotext
from webui.settings import parse_flags

USERS = {"alice": "pw-alice-1", "bob": "pw-bob-2", "carol": "pw-carol-3"}
LONG = {"steps": 150, "n_iter": 3}  # long enough to act on while it runs; always stopped


@dataclass
class Server:
    url: str
    data_dir: Path
    clients: dict[str, httpx.Client]

    def __getitem__(self, user: str) -> httpx.Client:
        return self.clients[user]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, tiny_files) -> Iterator[Server]:
    import shutil

    from webui.model_manager.tiny import save_tiny_checkpoint

    data = tmp_path_factory.mktemp("multiuser")
    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    shutil.copy(tiny_files["sd1"], folder / "tiny-a.safetensors")
    save_tiny_checkpoint(folder / "tiny-b.safetensors", "sd1", seed=1)
    auth = ",".join(f"{u}:{p}" for u, p in USERS.items())
    flags = parse_flags(["--nowebui", "--data-dir", str(data), "--no-download-sd-model",
                         "--api-auth", auth])  # fmt: skip
    with ServerThread(create_app(flags)) as server:
        clients = {
            u: httpx.Client(base_url=server.url, auth=(u, p), timeout=300) for u, p in USERS.items()
        }
        try:
            yield Server(server.url, data, clients)
        finally:
            for client in clients.values():
                client.close()


def txt2img(client: httpx.Client, **changes: Any) -> httpx.Response:
    return client.post("/sdapi/v1/txt2img", json=golden_payload(**changes))


def in_thread(client: httpx.Client, **changes: Any) -> tuple[threading.Thread, dict]:
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.update(response=txt2img(client, **changes)))
    thread.start()
    return thread, out


def job(client: httpx.Client, job_id: str, **params: Any) -> dict[str, Any]:
    response = client.get(f"/webui/v1/jobs/{job_id}", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(predicate, timeout: float = 120, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def running_step(client: httpx.Client, job_id: str) -> bool:
    info = client.get(f"/webui/v1/jobs/{job_id}").json()
    return info.get("state") == "running" and info.get("step", 0) > 0


def submit(client: httpx.Client, **changes: Any) -> dict[str, Any]:
    """Queue a job without waiting (POST /webui/v1/txt2img, 202)."""
    response = client.post("/webui/v1/txt2img", json=golden_payload(**changes))
    assert response.status_code == 202, response.text
    return response.json()


def infotext_of(response: httpx.Response, index: int = 0) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return parse_infotext(_decode(response.json()["images"][index]).info["parameters"])


# --- per-job checkpoint and options ---------------------------------------------------------


def test_two_clients_with_their_own_checkpoint_and_clip_skip(srv: Server) -> None:
    wants = {
        "alice": {"sd_model_checkpoint": "tiny-a", "CLIP_stop_at_last_layers": 2},
        "bob": {"sd_model_checkpoint": "tiny-b", "CLIP_stop_at_last_layers": 1},
    }
    running_seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            jobs = srv["carol"].get("/webui/v1/queue").json()["jobs"]
            running_seen.append(sum(j["state"] == "running" for j in jobs))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = []
    for round_ in range(2):
        for user, overrides in wants.items():
            threads.append((user, round_, *in_thread(
                srv[user], seed=100 + round_, steps=3, override_settings=overrides,
                force_task_id=f"{user}-{round_}",
            )))  # fmt: skip
    for _, _, thread, _ in threads:
        thread.join(300)
    stop.set()
    watcher.join()
    for user, round_, _, out in threads:
        fields = infotext_of(out["response"])
        model = wants[user]["sd_model_checkpoint"]
        assert fields["Model"] == model, (user, fields)
        assert fields.get("Clip skip", 1) == wants[user]["CLIP_stop_at_last_layers"]
        assert json.loads(out["response"].json()["info"])["clip_skip"] == fields.get("Clip skip", 1)
        info = json.loads(out["response"].json()["info"])
        assert info["sd_model_name"] == model and info["seed"] == 100 + round_
    assert max(running_seen) == 1, "more than one job ran at a time"
    spans = sorted(
        (j["started_at"], j["finished_at"])
        for j in (job(srv[u], f"{u}-{r}") for u, r, _, _ in threads)
    )
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end <= start, "jobs overlapped"
    options = srv["carol"].get("/sdapi/v1/options").json()  # nobody's defaults changed
    assert options["sd_model_checkpoint"] == "" and options["CLIP_stop_at_last_layers"] == 1


def test_override_of_an_option_applies_to_that_job_only(srv: Server) -> None:
    response = txt2img(
        srv["alice"], seed=31, save_images=True, override_settings={"samples_format": "jpg"}
    )
    assert response.status_code == 200, response.text
    saved = sorted((srv.data_dir / "outputs" / "txt2img-images").glob("*/*-31.*"))
    assert [p.suffix for p in saved] == [".jpg"]
    assert srv["alice"].get("/sdapi/v1/options").json()["samples_format"] == "png"
    response = txt2img(srv["alice"], override_settings={"samples_format": "bmp"})
    assert response.status_code == 422
    assert "samples_format" in json.dumps(response.json()["detail"])


def test_a_queued_job_keeps_the_defaults_it_was_sent_under(srv: Server) -> None:
    alice, bob = srv["alice"], srv["bob"]
    assert (
        alice.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-a"}).status_code == 200
    )
    try:
        blocker = submit(bob, **LONG, seed=1)
        wait_for(lambda: running_step(bob, blocker["id"]), what="bob's job to run")
        thread, out = in_thread(alice, seed=41, steps=2, force_task_id="snap-1")
        wait_for(lambda: alice.get("/webui/v1/jobs/snap-1").status_code == 200, what="queued")
        # the server default changes while alice's job waits: her job keeps tiny-a
        assert (
            bob.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-b"}).status_code == 200
        )
        assert bob.post(f"/webui/v1/jobs/{blocker['id']}/cancel").status_code == 200
        thread.join(300)
        assert infotext_of(out["response"])["Model"] == "tiny-a"
        assert infotext_of(txt2img(alice, seed=42, steps=2))["Model"] == "tiny-b"
    finally:
        alice.post("/sdapi/v1/options", json={"sd_model_checkpoint": ""})


# --- interrupt, skip, progress per user -----------------------------------------------------


def test_interrupting_one_clients_job_leaves_the_others(srv: Server) -> None:
    alice, bob, carol = srv["alice"], srv["bob"], srv["carol"]
    a_thread, a_out = in_thread(alice, **LONG, seed=7, force_task_id="long-a")
    wait_for(lambda: alice.get("/sdapi/v1/progress").json()["progress"] > 0, what="progress")
    b_thread, b_out = in_thread(bob, steps=3, seed=8, force_task_id="short-b")
    wait_for(lambda: bob.get("/webui/v1/jobs/short-b").status_code == 200, what="bob queued")
    # bob sees his own waiting job, never alice's preview; carol sees nothing at all
    bob_view = bob.get("/sdapi/v1/progress").json()
    assert bob_view["current_image"] is None and bob_view["progress"] == 0
    assert "Waiting in queue" in bob_view["textinfo"]
    carol_view = carol.get("/sdapi/v1/progress").json()
    assert carol_view["state"]["job_count"] == 0 and carol_view["current_image"] is None
    assert carol.post("/sdapi/v1/interrupt").status_code == 200  # carol has no job: no effect
    assert bob.post("/webui/v1/jobs/long-a/cancel").status_code == 403  # not bob's
    assert job(alice, "long-a")["state"] == "running"
    seen = [alice.get("/sdapi/v1/progress").json()["progress"] for _ in range(3)]
    assert alice.post("/sdapi/v1/interrupt").status_code == 200
    a_thread.join(300)
    b_thread.join(300)
    assert a_out["response"].status_code == 200
    assert len(a_out["response"].json()["images"]) < 3
    assert job(alice, "long-a")["state"] == "interrupted"
    assert seen == sorted(seen) and seen[-1] > 0
    fields = infotext_of(b_out["response"])
    assert fields["Steps"] == 3 and fields["Seed"] == 8
    assert job(bob, "short-b")["state"] == "done"


def test_skip_ends_the_current_image_and_goes_on(srv: Server) -> None:
    alice = srv["alice"]
    thread, out = in_thread(alice, steps=150, n_iter=2, seed=50, force_task_id="skip-a")
    wait_for(lambda: running_step(alice, "skip-a"), what="the first image to sample")
    assert alice.post("/sdapi/v1/skip").status_code == 200
    wait_for(lambda: job(alice, "skip-a")["batch"] == 1, what="the second image")
    assert alice.post("/webui/v1/jobs/skip-a/interrupt").status_code == 200
    thread.join(300)
    info = job(alice, "skip-a")
    assert info["skipped"] == 1 and info["state"] == "interrupted"
    assert len(out["response"].json()["images"]) == 2  # the skipped one, the interrupted one


# --- the /webui/v1 queue API ----------------------------------------------------------------


def test_queue_listing_cancel_reorder_and_results(srv: Server) -> None:
    alice, bob = srv["alice"], srv["bob"]
    first = submit(alice, **LONG, seed=60, prompt="alice long")
    wait_for(lambda: running_step(alice, first["id"]), what="alice's first job to run")
    second = submit(alice, steps=2, seed=61, prompt="alice second")
    third = submit(alice, steps=2, seed=62, prompt="alice third")
    theirs = submit(bob, steps=2, seed=63, prompt="bob first")
    listing = alice.get("/webui/v1/queue").json()
    order = [
        (j["id"], j["position"], j["mine"]) for j in listing["jobs"] if j["position"] is not None
    ]
    # round-robin: bob has not been served yet, so his job goes before alice's others
    assert order == [(first["id"], 0, True), (theirs["id"], 1, False),
                     (second["id"], 2, True), (third["id"], 3, True)]  # fmt: skip
    assert listing["running"] == first["id"] and listing["waiting"] == 3
    row = next(j for j in listing["jobs"] if j["id"] == theirs["id"])
    # another user's prompt is not shown on a shared server (option queue_show_others_prompts)
    assert row["owner"] == "bob" and row["prompt"] == "" and row["kind"] == "txt2img"
    assert job(alice, theirs["id"])["prompt"] == ""
    assert next(j for j in listing["jobs"] if j["id"] == second["id"])["prompt"] == "alice second"
    assert alice.post("/sdapi/v1/options", json={"queue_show_others_prompts": True}).is_success
    try:
        shown = alice.get("/webui/v1/queue").json()["jobs"]
        assert next(j for j in shown if j["id"] == theirs["id"])["prompt"] == "bob first"
    finally:
        alice.post("/sdapi/v1/options", json={"queue_show_others_prompts": False})
    assert bob.post(f"/webui/v1/jobs/{second['id']}/cancel").status_code == 403
    moved = alice.post(f"/webui/v1/jobs/{third['id']}/move", json={"offset": -1})
    assert moved.status_code == 200 and moved.json()["position"] == 2
    assert (
        alice.post(f"/webui/v1/jobs/{second['id']}/move", json={"offset": "x"}).status_code == 422
    )
    cancelled = alice.post(f"/webui/v1/jobs/{second['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert alice.post(f"/webui/v1/jobs/{second['id']}/cancel").status_code == 409
    assert alice.post(f"/webui/v1/jobs/{first['id']}/cancel").status_code == 200  # interrupts
    wait_for(lambda: job(alice, third["id"])["state"] == "done", what="alice's third job")
    mine = job(alice, third["id"], images=True)
    assert len(mine["images"]) == 1 and "Seed: 62" in mine["infotexts"][0]
    assert "Seed: 62" in _decode(mine["images"][0]).info["parameters"]
    other = job(bob, third["id"], images=True, preview=True)  # bob: status only
    assert other["state"] == "done" and other["mine"] is False
    assert other["images"] == [] and other["infotexts"] == [] and other["current_image"] is None
    assert job(bob, theirs["id"])["state"] == "done"
    assert alice.get("/webui/v1/jobs/no-such-job").status_code == 404
    paths = alice.get("/openapi.json").json()["paths"]
    assert "/webui/v1/queue" in paths and "/webui/v1/jobs/{job_id}" in paths


def test_owner_sees_the_live_preview(srv: Server) -> None:
    alice, bob = srv["alice"], srv["bob"]
    started = submit(alice, **LONG, seed=70)
    try:
        wait_for(lambda: job(alice, started["id"], preview=True)["current_image"] is not None,
                 what="a preview")  # fmt: skip
        assert _decode(job(alice, started["id"], preview=True)["current_image"]).format == "PNG"
        assert job(bob, started["id"], preview=True)["current_image"] is None
    finally:
        alice.post(f"/webui/v1/jobs/{started['id']}/cancel")
    wait_for(lambda: job(alice, started["id"])["state"] == "interrupted", what="stop")


def test_per_user_queue_limit_is_429(srv: Server) -> None:
    alice, bob = srv["alice"], srv["bob"]
    bad = alice.post("/sdapi/v1/options", json={"queue_limit_per_user": -1})
    assert bad.status_code == 422 and "queue_limit_per_user" in bad.text
    assert alice.post("/sdapi/v1/options", json={"queue_limit_per_user": 2}).status_code == 200
    ids = []
    try:
        ids.append(submit(alice, **LONG)["id"])
        ids.append(submit(alice, steps=2)["id"])
        refused = alice.post("/webui/v1/txt2img", json=golden_payload(steps=2))
        assert refused.status_code == 429
        assert "limit per user is 2" in refused.json()["detail"]
        assert txt2img(alice, steps=2).status_code == 429  # the blocking endpoint too
        ids.append(submit(bob, steps=2)["id"])  # other users are not affected
        assert alice.get("/webui/v1/queue").json()["limit_per_user"] == 2
    finally:
        alice.post("/sdapi/v1/options", json={"queue_limit_per_user": 10})
        for job_id in ids:
            for user in ("alice", "bob"):
                srv[user].post(f"/webui/v1/jobs/{job_id}/cancel")
    wait_for(lambda: srv["carol"].get("/webui/v1/queue").json()["running"] is None, what="idle")


# --- bad requests ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"width": 100}, "width"),
        ({"steps": 0}, "steps"),
        ({"sampler_name": "Nope"}, "sampler_name"),
        ({"override_settings": {"sd_model_checkpoint": "missing"}}, "sd_model_checkpoint"),
        ({"override_settings": {"show_progress_every_n_steps": -1}}, "show_progress_every_n_steps"),
        ({"force_task_id": "bad id with spaces"}, "force_task_id"),
    ],
)
def test_bad_async_requests_name_the_field(srv: Server, changes: dict, field: str) -> None:
    response = srv["alice"].post("/webui/v1/txt2img", json=golden_payload(**changes))
    assert response.status_code == 422, response.text
    locs = [str(part) for item in response.json()["detail"] for part in item["loc"]]
    assert field in locs


def test_nan_cfg_is_422_on_the_queue_api(srv: Server) -> None:
    body = json.dumps(golden_payload()).replace('"cfg_scale": 7.0', '"cfg_scale": NaN')
    response = srv["alice"].post(
        "/webui/v1/txt2img", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert "cfg_scale" in response.text


def test_a_taken_task_id_is_422(srv: Server) -> None:
    submit(srv["alice"], steps=2, force_task_id="mine-only")
    response = srv["bob"].post("/webui/v1/txt2img", json=golden_payload(force_task_id="mine-only"))
    assert response.status_code == 422 and "already in use" in response.text


def test_many_waiting_clients_do_not_block_the_server(srv: Server) -> None:
    """More blocking txt2img calls than the server's thread pool (40) wait in the queue,
    and progress, listing and cancel still answer at once."""
    carol = srv["carol"]
    assert carol.post("/sdapi/v1/options", json={"queue_limit_per_user": 0}).status_code == 200
    blocker = submit(carol, **LONG)
    waiting = [in_thread(carol, steps=2, force_task_id=f"many-{i}") for i in range(45)]
    try:
        wait_for(
            lambda: carol.get("/webui/v1/queue").json()["waiting"] >= 45, what="45 waiting jobs"
        )
        started = time.monotonic()
        assert carol.get("/sdapi/v1/progress").status_code == 200
        assert carol.get("/sdapi/v1/options").status_code == 200
        assert time.monotonic() - started < 5
    finally:
        for i in range(45):
            carol.post(f"/webui/v1/jobs/many-{i}/cancel")
        carol.post(f"/webui/v1/jobs/{blocker['id']}/cancel")
        carol.post("/sdapi/v1/options", json={"queue_limit_per_user": 10})
    for thread, out in waiting:
        thread.join(60)
        assert out["response"].status_code == 200 and out["response"].json()["images"] == []


def test_workers_lists_the_local_worker_with_its_device_and_model(srv: Server) -> None:
    alice = srv["alice"]
    done = submit(alice, steps=2, seed=80, prompt="for the workers list")
    wait_for(lambda: job(alice, done["id"])["state"] == "done", what="the job")
    status = job(alice, done["id"])
    assert status["worker"] == "local" and status["attempts"] == 1
    workers = alice.get("/webui/v1/workers").json()
    assert len(workers) == 1
    local = workers[0]
    assert local["name"] == "local" and local["device"] == "cpu" and local["state"] == "idle"
    assert local["jobs_done"] >= 1 and local["job"] is None
    assert local["models"] and local["models"][0].startswith("tiny-")
    listing = alice.get("/webui/v1/queue").json()
    assert listing["running_jobs"] == [] and listing["running"] is None
