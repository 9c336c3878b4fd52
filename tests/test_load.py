"""Whole-API robustness: schemathesis over the OpenAPI schema, and a locust load run.

Issue 7, point 19.

- `test_openapi_no_server_errors`: schemathesis generates requests (valid and invalid)
  for every operation of the app's own OpenAPI schema and sends them in-process (ASGI) to
  an app with the tiny SD 1.x checkpoint. No answer may be a 5xx, and every answer with a
  documented status must match its documented schema. Values the server would accept but
  that would make a long job (sizes, steps, batches) are shrunk before sending, so the
  jobs that run stay tiny; values it must refuse are sent as generated and must get a 4xx.
  Real images, sampler, schedule, upscaler and option names are put in for part of the
  cases, so that requests get past the first check and run. A 501 that names a feature
  not built yet is a documented answer, not a crash. WEBUI_SCHEMATHESIS_EXAMPLES sets the
  examples per operation and mode (default 15, about a minute); the cases are the same
  every run unless WEBUI_SCHEMATHESIS_RANDOM=1.
- `test_locust_load_nothing_lost`: locust (headless, in a subprocess: its gevent
  monkey-patching must stay out of pytest) with 10 users against a real server on
  127.0.0.1 for WEBUI_LOCUST_SECONDS (default 60); see tests/locustfile.py. No 5xx, no
  connection failure, no failed request, and every job the API accepted has its image,
  complete and with its own infotext, in outputs/.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import response_schema_conformance

from tests.conftest import ServerThread
from webui.app import create_app
from webui.core.samplers import SAMPLERS, SCHEDULE_NAMES
from webui.imaging.infotext import read_infotext_from_image
from webui.imaging.upscaler_list import LATENT_MODES
from webui.options import OPTION_DEFS, PATH_OPTIONS
from webui.settings import parse_flags

# --- schemathesis -------------------------------------------------------------------------

# per operation and mode; the txt2img, img2img and extras ones run real (tiny) jobs
MAX_EXAMPLES = int(os.environ.get("WEBUI_SCHEMATHESIS_EXAMPLES", "15"))
CHEAPENED_PATHS = (
    "/sdapi/v1/txt2img",
    "/sdapi/v1/img2img",
    "/webui/v1/txt2img",
    "/sdapi/v1/extra-single-image",
    "/sdapi/v1/extra-batch-images",
)
OPTION_KEYS = sorted(d.key for d in OPTION_DEFS if d.key not in PATH_OPTIONS)
# name fields that hold free text in the schema -> names the server knows
_NAMES: dict[str, list[str]] = {
    "sampler_name": SAMPLERS,
    "hr_sampler_name": SAMPLERS,
    "scheduler": list(SCHEDULE_NAMES),
    "hr_scheduler": list(SCHEDULE_NAMES),
    "hr_upscaler": [*LATENT_MODES, "Lanczos", "Nearest"],
}
# request field -> (accepted range, value it is shrunk to when inside that range)
_CHEAP: dict[str, tuple[float, float, Any]] = {
    "width": (64, 4096, 64),
    "height": (64, 4096, 64),
    "steps": (1, 150, 2),  # Euler with Uniform needs 2
    "batch_size": (1, 8, 1),
    "n_iter": (1, 100, 1),
    "hr_second_pass_steps": (1, 150, 2),
    "hr_resize_x": (1, 4096, 0),
    "hr_resize_y": (1, 4096, 0),
    "hr_scale": (1.0, 8.0, 1.0),
    "upscaling_resize": (0.0, 8.0, 1.0),
    "upscaling_resize_w": (1, 16384, 64),
    "upscaling_resize_h": (1, 16384, 64),
}


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


TINY_PNG = _png(Image.new("RGB", (64, 64), (200, 80, 40)))
TINY_MASK = _png(_mask())


def _cheap(body: Any) -> None:
    """Shrink accepted values (and missing ones: the defaults) that would make a slow job;
    leave the values the server must refuse as they are."""
    if not isinstance(body, dict):
        return
    for field, (low, high, small) in _CHEAP.items():
        value = body.get(field)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if value is None or (number and low <= value <= high):
            body[field] = small


def _pick(text: str, names: list[str]) -> str:
    """One of `names`, chosen by the generated text (the same text, the same name)."""
    return names[zlib.crc32(text.encode("utf-8", "surrogatepass")) % len(names)]


def _real_names(body: Any) -> None:
    """Half the generated sampler, schedule and upscaler names become real ones, so the
    combinations run (a generated word only meets the 422 of an unknown name)."""
    if not isinstance(body, dict):
        return
    for field, names in _NAMES.items():
        value = body.get(field)
        if isinstance(value, str) and len(value) % 2:
            body[field] = _pick(value, names)


def _real_option_names(case) -> None:
    """Generated option keys are random words: make them real option names (not the
    folders: a generated folder would be made wherever the tests run)."""
    body = case.body
    if case.path == "/sdapi/v1/options" and isinstance(body, dict):
        case.body = {_pick(k, OPTION_KEYS): v for k, v in body.items()}
    elif isinstance(body, dict) and isinstance(body.get("override_settings"), dict):
        settings = body["override_settings"]
        body["override_settings"] = {_pick(k, OPTION_KEYS): v for k, v in settings.items()}


def _with_images(path: str, body: Any) -> None:
    """Real images where images belong (sent or not), so img2img and extras get past
    decoding and run; a generated mask stays random one time in three."""
    if not isinstance(body, dict):
        return
    if path.endswith("/img2img"):
        images = body.get("init_images")
        if images is None:
            body["init_images"] = [TINY_PNG]
        elif isinstance(images, list):
            body["init_images"] = [TINY_PNG if isinstance(i, str) else i for i in images[:2]]
        if isinstance(body.get("mask"), str) and len(body["mask"]) % 3:
            body["mask"] = TINY_MASK
        return
    if body.get("upscaler_1") in (None, "None"):  # extras: "choose an upscaler" otherwise
        body["upscaler_1"] = "Lanczos"
    if path.endswith("/extra-single-image"):
        if body.get("image") is None or isinstance(body["image"], str):
            body["image"] = TINY_PNG
    elif path.endswith("/extra-batch-images"):
        listing = body.get("imageList")
        if listing is None:
            body["imageList"] = [{"data": TINY_PNG, "name": "tiny.png"}]
        elif isinstance(listing, list):
            body["imageList"] = listing[:2]
            for item in body["imageList"]:
                if isinstance(item, dict) and isinstance(item.get("data"), str):
                    item["data"] = TINY_PNG


def _not_built(response) -> bool:
    """501 with a `feature`: a documented answer for a feature not built yet, not a crash."""
    if response.status_code != 501:
        return False
    try:
        return "feature" in response.json()
    except ValueError:
        return False


@pytest.fixture
def api_app(data_dir):
    app = create_app(parse_flags(["--data-dir", str(data_dir), "--api", "--no-download-sd-model"]))
    yield app
    from schemathesis.python import asgi

    asgi.shutdown_lifespans()  # the app's lifespan stops its job worker
    app.state.ctx.close()


def test_openapi_no_server_errors(api_app):
    """Every operation, valid and invalid requests: no 5xx, documented answers conform."""
    api = schemathesis.openapi.from_asgi("/openapi.json", api_app)
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) > 30
    failures: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            started = time.monotonic()
            try:
                _fuzz(operation, mode)
            except Exception as exc:  # noqa: BLE001 - every operation is tried, then reported
                failures.append(f"{operation.label} ({mode}): {exc}")
            print(f"{operation.label} {mode}: {time.monotonic() - started:.1f}s", flush=True)
    assert not failures, "\n\n".join(failures)


def _fuzz(operation, mode: GenerationMode) -> None:
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        # the same cases every run (a failure is a regression); WEBUI_SCHEMATHESIS_RANDOM=1
        # explores new ones
        derandomize=not os.environ.get("WEBUI_SCHEMATHESIS_RANDOM"),
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: it would run many jobs
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        if case.path in CHEAPENED_PATHS:
            _cheap(case.body)
            _with_images(case.path, case.body)
            _real_names(case.body)
        _real_option_names(case)
        if case.headers:  # random credentials only meet the 401 of HTTP Basic (no --api-auth)
            case.headers.pop("Authorization", None)
        response = case.call(timeout=120)
        if response.status_code >= 500 and not _not_built(response):
            raise AssertionError(
                f"{response.status_code} for {case.as_curl_command()}\n{response.text[:2000]}"
            )
        case.validate_response(response, checks=[response_schema_conformance])

    run()


def test_unwritable_output_folder_is_422_not_500(api_app, tmp_path):
    """Found by the fuzzing above: a folder that cannot be made failed the job when it
    saved (500). It is refused up front, naming the field, and nothing runs or changes."""
    from fastapi.testclient import TestClient

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    client = TestClient(api_app)
    body = {"prompt": "x", "steps": 2, "width": 64, "height": 64, "save_images": True}
    body["override_settings"] = {"outdir_samples": str(blocker / "images")}
    for path in ("/sdapi/v1/txt2img", "/webui/v1/txt2img", "/sdapi/v1/img2img"):
        sent = {**body, "init_images": [TINY_PNG]} if "img2img" in path else body
        r = client.post(path, json=sent)
        assert r.status_code == 422, (path, r.text)
        assert r.json()["detail"][0]["loc"] == ["body", "override_settings", "outdir_samples"]
    r = client.post("/sdapi/v1/options", json={"outdir_samples": str(blocker / "images")})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "outdir_samples"]
    assert client.get("/sdapi/v1/options").json()["outdir_samples"] == ""
    assert not api_app.state.ctx.jobs.listing()


# --- locust -------------------------------------------------------------------------------

LOCUST_SECONDS = int(os.environ.get("WEBUI_LOCUST_SECONDS", "60"))
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
LOAD_USERS = {f"user{i}": f"pw-load-{i}" for i in range(10)}


def test_locust_load_nothing_lost(tmp_path, data_dir):
    """10 users on a real server for WEBUI_LOCUST_SECONDS (default 60): progress polls
    and tiny jobs, waited for and queued. No 5xx, no connection failure, no failed
    request; every accepted job's image is complete on disk in outputs/."""
    auth = ",".join(f"{u}:{p}" for u, p in LOAD_USERS.items())
    flags = parse_flags(
        ["--nowebui", "--data-dir", str(data_dir), "--no-download-sd-model", "--api-auth", auth]
    )
    report_path = tmp_path / "locust-report.json"
    env = {
        **os.environ,
        "WEBUI_LOAD_USERS": auth,
        "WEBUI_LOAD_REPORT": str(report_path),
    }
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "-u", str(len(LOAD_USERS)), "-r", "5", "-t", f"{LOCUST_SECONDS}s",
        "--stop-timeout", "30", "--only-summary", "--loglevel", "WARNING",
    ]  # fmt: skip
    app = create_app(flags)
    with ServerThread(app) as server:
        started = time.monotonic()
        run = subprocess.run(
            [*command, "--host", server.url],
            env=env,
            cwd=tmp_path,  # no locust.conf or pyproject.toml of ours is read
            capture_output=True,
            text=True,
            timeout=LOCUST_SECONDS + 120,
        )
        elapsed = time.monotonic() - started
        _wait_for_idle_queue(app.state.ctx, timeout=60)
        jobs = app.state.ctx.jobs
        output = f"locust exit {run.returncode}\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
        assert report_path.exists(), output
        report = json.loads(report_path.read_text())
        finished = {j["id"]: jobs.get(j["id"]) for j in report["accepted"] if j["id"]}

    statuses = {int(code): n for code, n in report["statuses"].items()}
    print(f"locust: {elapsed:.0f}s, statuses {statuses}, {len(report['accepted'])} jobs")
    assert not report["errors"], output
    assert 0 not in statuses, output
    assert not [code for code in statuses if code >= 500], output
    assert run.returncode == 0, output  # locust counts every failed request
    assert statuses.get(200, 0) > LOCUST_SECONDS, output  # the run really ran

    accepted = report["accepted"]
    assert len(accepted) >= LOCUST_SECONDS / 10, output
    assert any(j["id"] for j in accepted) and any(not j["id"] for j in accepted), output
    for job in accepted:
        if job["id"]:
            state = finished[job["id"]]
            assert state is None or state.state == "done", (job, state and state.error)
    files = {}
    for path in (data_dir / "outputs").rglob("*.png"):
        files.setdefault(path.stem.rsplit("-", 1)[-1], []).append(path)
    for job in accepted:
        found = files.get(str(job["seed"]), [])
        assert len(found) == 1, f"job {job} has {len(found)} files in outputs/"
        with Image.open(found[0]) as image:
            image.load()  # a complete PNG
            infotext = read_infotext_from_image(image) or ""
        assert f"seed {job['seed']}" in infotext and f"Seed: {job['seed']}" in infotext


def _wait_for_idle_queue(ctx, timeout: float) -> None:
    """Wait until no job is waiting or running (the ones queued last are still running)."""
    deadline = time.monotonic() + timeout
    while any(pos is not None for _, pos in ctx.jobs.listing()):
        assert time.monotonic() < deadline, "the queue did not drain"
        time.sleep(0.2)
