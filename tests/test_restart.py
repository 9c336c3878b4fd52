"""A crash loses no job (issue 14): SIGKILL the server while one job runs and three wait,
start it again on the same data folder, and every job finishes, each image in exactly one
PNG.

The real server runs as a subprocess (`python -m webui.app`, as launch.py starts it) with
the tiny SD 1.x model. The running job makes two images; it is killed after its first one
is saved, so the rerun must reuse that file (same seed, same picture) and write only the
second. The job store (`data/jobs.sqlite3`) is what survives the kill. An extension in the
data folder makes every sampling step last at least `STEP_SECONDS`, so that the kill lands
while the second image is sampled however fast the machine is.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
START_SECONDS = 240  # a busy 2-core machine; about 10 s when idle
JOB = {"prompt": "a lighthouse", "width": 64, "height": 64, "sampler_name": "Euler",
       "save_images": True}  # fmt: skip
STEP_SECONDS = 0.5
RUNNING = {**JOB, "steps": 3, "n_iter": 2, "seed": 1000, "force_task_id": "running"}
WAITING = [{**JOB, "steps": 1, "seed": seed, "force_task_id": f"waiting-{seed}"}
           for seed in (2000, 3000, 4000)]  # fmt: skip
SLOW_STEPS = f"""
import time

from webui.ext import Extension


def setup() -> Extension:
    return Extension(name="slow_steps", on_step=lambda step, args: time.sleep({STEP_SECONDS}))
"""


class Server:
    """`python -m webui.app` on a data folder; its output is kept for failure messages."""

    def __init__(self, data_dir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "webui.app", "--data-dir", str(data_dir), "--api",
             "--port", str(self.port), "--no-download-sd-model"],
            cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        threading.Thread(target=lambda: self.output.extend(self.proc.stdout), daemon=True).start()

    def log(self) -> str:
        return "".join(self.output)

    def wait_until_up(self) -> None:
        self.wait(lambda: self.get("/sdapi/v1/progress").status_code == 200, "start")

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=30)

    def job(self, job_id: str) -> dict[str, Any]:
        return self.get(f"/webui/v1/jobs/{job_id}").json()

    def wait(self, predicate, what: str, timeout: float = START_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log()
            try:
                if predicate():
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"timed out waiting to {what}:\n{self.log()}"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _pngs(data_dir: Path) -> list[Path]:
    """The images (batch grids are in <kind>-grids folders)."""
    return sorted(p for p in (data_dir / "outputs").rglob("*.png") if "-grids" not in str(p))


def _seed(path: Path) -> int:
    with Image.open(path) as image:
        infotext = image.info["parameters"]
    return int(infotext.split("Seed: ")[1].split(",")[0])


def test_a_killed_server_runs_every_accepted_job_after_a_restart(data_dir) -> None:
    (data_dir / "extensions" / "slow_steps").mkdir(parents=True)
    (data_dir / "extensions" / "slow_steps" / "extension.py").write_text(SLOW_STEPS)
    first = Server(data_dir)
    try:
        first.wait_until_up()
        for body in (RUNNING, *WAITING):
            response = httpx.post(f"{first.url}/webui/v1/txt2img", json=body, timeout=30)
            assert response.status_code == 202, f"{response.text}\n{first.log()}"
        # the running job has saved its first image and samples its second one
        first.wait(lambda: len(_pngs(data_dir)) == 1, "save the first image")
        time.sleep(0.2)  # the store records the file right after writing it
        states = {j["id"]: j["state"] for j in first.get("/webui/v1/queue").json()["jobs"]}
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(30)
    finally:
        first.stop()
    ids = ["running", *(w["force_task_id"] for w in WAITING)]
    assert [states.get(i) for i in ids] == ["running", "queued", "queued", "queued"], states
    assert [_seed(p) for p in _pngs(data_dir)] == [1000]

    second = Server(data_dir)
    try:
        second.wait_until_up()
        rerun = second.job("running")
        assert rerun["rerun"] and rerun["state"] in ("queued", "running"), rerun
        second.wait(lambda: all(second.job(i)["state"] == "done" for i in ids), "finish")
        jobs = {i: second.job(i) for i in ids}
        listing = second.get("/webui/v1/queue").json()
    finally:
        second.stop()
    assert jobs["running"]["attempts"] == 2
    assert jobs["running"]["rerun"] == "run again: the server restarted while it ran (attempt 2)"
    assert [jobs[i]["attempts"] for i in ids[1:]] == [1, 1, 1]
    assert [jobs[i]["image_count"] for i in ids] == [3, 1, 1, 1]  # 2 images and their grid
    assert len(list((data_dir / "outputs").rglob("*-grids/*/*.png"))) == 1  # one grid
    seeds = sorted(_seed(p) for p in _pngs(data_dir))
    assert seeds == [1000, 1001, 2000, 3000, 4000], seeds  # exactly one PNG per image
    finished = {j["id"]: j for j in listing["jobs"] if j["position"] is None}
    assert set(ids) <= set(finished) and finished["running"]["rerun"]
    log = second.log()
    assert "restored 4 unfinished job(s)" in log
    assert "Traceback" not in log, log
