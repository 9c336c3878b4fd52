"""Locust users for tests/test_load.py: LAN users polling progress and submitting tiny jobs.

Run by the test in a subprocess (locust monkey-patches the standard library with gevent,
which must never happen inside the pytest process):

    WEBUI_LOAD_USERS=u0:pw0,u1:pw1 WEBUI_LOAD_REPORT=report.json \\
        python -m locust -f tests/locustfile.py --headless -u 10 -r 5 -t 120s -H URL

Each simulated user logs in with its own --api-auth credentials (so each is its own queue
owner, as on a LAN), polls /sdapi/v1/progress and the queue, and submits tiny txt2img jobs
both ways: waiting (/sdapi/v1/txt2img, 200 with the images) and queued
(/webui/v1/txt2img, 202, then polled by id). Every job asks to be saved and has a unique
seed, so the test can find each accepted job's image in outputs/. At the end the users'
records go to WEBUI_LOAD_REPORT as JSON: every status code seen, connection errors, and
the accepted jobs (user, seed, job id, images).
"""

from __future__ import annotations

import itertools
import json
import os
import random
from collections import Counter
from typing import Any

from locust import HttpUser, between, events, task

USERS = [tuple(pair.split(":", 1)) for pair in os.environ["WEBUI_LOAD_USERS"].split(",")]
REPORT = os.environ["WEBUI_LOAD_REPORT"]
MAX_OUTSTANDING = 2  # queued jobs a user has not yet seen finish, as a person would

_accounts = itertools.cycle(USERS)
_statuses: Counter[str] = Counter()
_errors: list[str] = []
_accepted: list[dict[str, Any]] = []
_rng = random.Random()


@events.request.add_listener
def _record(name: str, response: Any, exception: BaseException | None, **_: Any) -> None:
    """Every request's outcome: its status code, or the connection error."""
    status = getattr(response, "status_code", 0) or 0
    if exception is not None and status == 0:
        _errors.append(f"{name}: {exception!r}")
    _statuses[str(status)] += 1


@events.quitting.add_listener
def _write_report(**_: Any) -> None:
    with open(REPORT, "w", encoding="utf-8") as f:
        json.dump({"statuses": _statuses, "errors": _errors, "accepted": _accepted}, f)


def _payload(seed: int) -> dict[str, Any]:
    return {
        "prompt": f"a load test fox, seed {seed}",
        "seed": seed,
        "steps": 2,
        "width": 64,
        "height": 64,
        "sampler_name": "Euler",
        "save_images": True,
    }


class WebUIUser(HttpUser):
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        self.user, password = next(_accounts)
        self.client.auth = (self.user, password)
        self.outstanding: list[dict[str, Any]] = []

    @task(6)
    def poll_progress(self) -> None:
        with self.client.get("/sdapi/v1/progress", catch_response=True) as r:
            if r.status_code == 200 and "progress" in r.json():
                r.success()
            else:
                r.failure(f"progress: {r.status_code}")

    @task(1)
    def poll_queue(self) -> None:
        with self.client.get("/webui/v1/queue", catch_response=True) as r:
            if r.status_code == 200:
                r.success()
            else:
                r.failure(f"queue: {r.status_code}")

    @task(2)
    def txt2img_waiting(self) -> None:
        seed = _rng.randrange(1, 2**32 - 2)
        with self.client.post(
            "/sdapi/v1/txt2img", json=_payload(seed), catch_response=True, timeout=300
        ) as r:
            images = r.json().get("images") if r.status_code == 200 else None
            if not images:
                r.failure(f"txt2img: {r.status_code} {r.text[:200]}")
                return
            r.success()
            _accepted.append({"user": self.user, "seed": seed, "id": None, "images": len(images)})

    @task(2)
    def txt2img_queued(self) -> None:
        if len(self.outstanding) >= MAX_OUTSTANDING:
            self.check_jobs()
            return
        seed = _rng.randrange(1, 2**32 - 2)
        with self.client.post(
            "/webui/v1/txt2img", json=_payload(seed), catch_response=True, timeout=60
        ) as r:
            if r.status_code != 202:
                r.failure(f"queued txt2img: {r.status_code} {r.text[:200]}")
                return
            r.success()
            job = {"user": self.user, "seed": seed, "id": r.json()["id"], "images": None}
            _accepted.append(job)
            self.outstanding.append(job)

    @task(2)
    def check_jobs(self) -> None:
        for job in list(self.outstanding):
            with self.client.get(
                f"/webui/v1/jobs/{job['id']}", name="/webui/v1/jobs/[id]", catch_response=True
            ) as r:
                if r.status_code != 200:
                    r.failure(f"job status: {r.status_code} {r.text[:200]}")
                    continue
                r.success()
                body = r.json()
                if body["state"] not in ("queued", "running"):
                    job["images"] = body["image_count"]
                    job["state"] = body["state"]
                    self.outstanding.remove(job)
