"""Faults, end to end through the API of a real app on tiny models (issue 7, points 10-14).

Out of memory in a job, NaN from the VAE or UNet, interrupt by one of two users, broken
checkpoint and LoRA files, and a full disk while saving: each is injected into a running
app (torch hooks on the loaded model, a failing file in the output store), and each test
checks what the user is told, what is left on disk, and that the next job works.
Hostile prompts (point 18) are in tests/core/test_faults_prompts.py; 50 concurrent saves
(point 15) are tests/imaging/test_store.py::test_fifty_threads_one_store and
::test_fifty_threads_separate_stores.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from tests.api.test_api import _decode, golden_payload
from tests.conftest import ServerThread
from tests.tiny_networks import write_kohya_lora
from webui.app import create_app
from webui.context import build_context
from webui.core import oom
from webui.imaging import store as store_module
from webui.imaging.infotext import parse_infotext, read_infotext_from_image
from webui.settings import parse_flags

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _flags(data_dir: Path, *extra: str):
    return parse_flags(["--nowebui", "--data-dir", str(data_dir), "--no-download-sd-model",
                        *extra])  # fmt: skip


@contextmanager
def _app(data_dir: Path, *extra: str, prepare=None) -> Iterator[tuple[TestClient, Any]]:
    """A TestClient on a real app; `prepare(ctx)` runs before the app is built."""
    flags = _flags(data_dir, *extra)
    ctx = build_context(flags)
    if prepare is not None:
        prepare(ctx)
    with TestClient(create_app(flags, ctx)) as client:
        yield client, ctx


def _txt2img(client, **changes: Any) -> httpx.Response:
    payload = golden_payload(**{"save_images": True, **changes})
    return client.post("/sdapi/v1/txt2img", json=payload)


def _pixels(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(_decode(response.json()["images"][0]))


def _decode_info(response: httpx.Response) -> str:
    """The infotext of the first image of a txt2img answer."""
    return _decode(response.json()["images"][0]).info["parameters"]


def _pipe(ctx):
    """The loaded pipeline (the worker is idle: a job ran before, nothing is queued)."""
    assert ctx.jobs.current() is None
    return ctx.models.acquire(ctx.models.resolve(None)).pipe


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _assert_error(response: httpx.Response, *needles: str) -> str:
    """A structured JSON error (no traceback) whose message contains every needle."""
    assert response.status_code >= 400, response.text
    body = response.json()
    text = str(body.get("detail"))
    for needle in needles:
        assert needle in text, text
    assert "Traceback" not in response.text and 'File "' not in response.text
    return text


# --- 10. out of memory ------------------------------------------------------------------------


def test_out_of_memory_is_reported_released_and_the_next_job_succeeds(data_dir, monkeypatch):
    released: list[str] = []
    real_release = oom.release_memory

    def spy(device: str) -> None:
        released.append(device)
        real_release(device)

    monkeypatch.setattr(oom, "release_memory", spy)
    no_retry = {"override_settings": {"oom_retry_lower_memory": False}}
    with _app(data_dir) as (client, ctx):
        first = _txt2img(client, **no_retry)
        expected = _pixels(first)
        alive: list[weakref.ref] = []

        def out_of_memory(module, args):  # once: the first UNet call of the next job
            handle.remove()
            alive.append(weakref.ref(args[0]))  # a tensor of the failed attempt
            raise torch.OutOfMemoryError("CPU out of memory. Tried to allocate 9.00 GiB")

        handle = _pipe(ctx).unet.register_forward_pre_hook(out_of_memory)
        failed = _txt2img(client, force_task_id="oom-1", **no_retry)
        assert failed.status_code == 500
        message = _assert_error(failed, "Out of system RAM while generating 64x64", "released")
        assert failed.json()["error"] == "GenerationError"
        status = client.get("/webui/v1/jobs/oom-1").json()
        assert status["state"] == "failed" and status["error"] == message
        assert released == ["cpu"]
        assert alive and alive[0]() is None  # the failed attempt's tensors were freed
        assert ctx.jobs.current() is None and ctx.jobs.schedule() == []  # the worker is free
        outputs = ctx.store.root
        assert len([p for p in _files(outputs) if p.suffix == ".png"]) == 1  # the first job's
        again = _txt2img(client, **no_retry)
        assert np.array_equal(_pixels(again), expected)
        assert len([p for p in _files(outputs) if p.suffix == ".png"]) == 2


# --- 11. NaN from the VAE (and the UNet) ----------------------------------------------------


def _assert_no_black_image_saved(root: Path) -> None:
    for path in _files(root):
        assert path.suffix in IMAGE_SUFFIXES, path  # nothing else: no temporary file
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        assert pixels.max() > 0 and pixels.std() > 0, f"{path.name} is one flat colour"


def _half_vae(ctx) -> None:
    ctx.models.plan = dataclasses.replace(ctx.models.plan, vae_dtype=torch.float16)


def test_nan_from_the_vae_is_retried_in_fp32_or_fails_clearly_never_saved_black(data_dir):
    with _app(data_dir, prepare=_half_vae) as (client, ctx):
        reference = _pixels(_txt2img(client, save_images=False))  # this VAE decodes well
        pipe = _pipe(ctx)
        assert pipe.vae.dtype == torch.float16
        nan_in = {torch.float16}  # which VAE precision overflows

        def nan_decoder(module, args, output):
            return output * torch.nan if output.dtype in nan_in else output

        handle = pipe.vae.decoder.register_forward_hook(nan_decoder)
        try:
            retried = _txt2img(client)  # NaN in fp16: the decode is repeated in fp32
            assert np.abs(_pixels(retried).astype(int) - reference).max() <= 2
            fields = parse_infotext(_decode_info(retried))
            assert fields["VAE precision"] == "float32 retry (NaN in float16)"
            assert pipe.vae.dtype == torch.float32
            nan_in.add(torch.float32)  # a VAE broken even in fp32: a clear error
            failed = _txt2img(client)
            assert failed.status_code == 500
            _assert_error(failed, "The VAE produced NaN even in float32", "another VAE")
        finally:
            handle.remove()
        handle = pipe.unet.register_forward_hook(lambda m, a, out: (out[0] * torch.nan,))
        try:
            failed = _txt2img(client)
            _assert_error(failed, "The UNet produced NaN latents")
        finally:
            handle.remove()
        saved = _files(ctx.store.root)
        assert len(saved) == 1  # only the retried image
        _assert_no_black_image_saved(ctx.store.root)
        assert _pixels(_txt2img(client)).max() > 0
        assert len(_files(ctx.store.root)) == 2


# --- 12. interrupt: only the caller's job, within one step ----------------------------------

USERS = {"alice": "pw-alice-1", "bob": "pw-bob-2"}


@pytest.fixture(scope="module")
def two_users(tmp_path_factory, tiny_files) -> Iterator[tuple[ServerThread, Any]]:
    data = tmp_path_factory.mktemp("interrupt")
    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    shutil.copy(tiny_files["sd1"], folder / "tiny-sd1.safetensors")
    auth = ",".join(f"{u}:{p}" for u, p in USERS.items())
    flags = _flags(data, "--api-auth", auth)
    ctx = build_context(flags)
    with ServerThread(create_app(flags, ctx)) as server:
        yield server, ctx


def _wait_for(predicate, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.mark.parametrize("route", ["/sdapi/v1/interrupt", "/webui/v1/jobs/{id}/interrupt"])
def test_interrupt_stops_only_the_callers_job_within_one_step(two_users, route):
    server, ctx = two_users
    alice, bob = (httpx.Client(base_url=server.url, auth=(u, p), timeout=300)
                  for u, p in USERS.items())  # fmt: skip
    tag = "sd" if route.startswith("/sdapi") else "job"
    with alice, bob:
        assert alice.post("/sdapi/v1/txt2img", json=golden_payload(steps=2)).status_code == 200
        unet_calls: Counter[str] = Counter()  # job id -> UNet evaluations (one per step)

        def count(module, args):
            job = ctx.jobs.current()
            unet_calls[job.id if job else "?"] += 1
            time.sleep(0.02)  # a step long enough to act between two of them

        handle = _pipe(ctx).unet.register_forward_pre_hook(count)
        out: dict[str, httpx.Response] = {}
        long_id, short_id = f"long-{tag}", f"short-{tag}"
        payload = golden_payload(steps=150, force_task_id=long_id, seed=3)
        thread = threading.Thread(
            target=lambda: out.update(a=alice.post("/sdapi/v1/txt2img", json=payload))
        )
        try:
            thread.start()
            _wait_for(lambda: unet_calls[long_id] >= 2, "alice's job to sample")
            queued = bob.post("/webui/v1/txt2img",
                              json=golden_payload(steps=4, seed=4, force_task_id=short_id))  # fmt: skip
            assert queued.status_code == 202, queued.text
            answer = alice.post(route.format(id=long_id))
            assert answer.status_code == 200, answer.text
            at_interrupt = unet_calls[long_id]
            thread.join(300)
            _wait_for(lambda: ctx.jobs.get(short_id).finished, "bob's job")
        finally:
            handle.remove()
        assert unet_calls[long_id] - at_interrupt <= 1  # at most the step already running
        assert unet_calls[long_id] < 150
        assert out["a"].status_code == 200
        a_status = alice.get(f"/webui/v1/jobs/{long_id}").json()
        assert a_status["state"] == "interrupted"
        b_status = bob.get(f"/webui/v1/jobs/{short_id}", params={"images": True}).json()
        assert b_status["state"] == "done" and b_status["interrupt_requested"] is False
        assert b_status["step"] == b_status["steps"] == 4 and unet_calls[short_id] == 4
        assert parse_infotext(b_status["infotexts"][0])["Steps"] == 4
        assert len(b_status["images"]) == 1


# --- 13. broken checkpoints and LoRAs ---------------------------------------------------------


def _broken_copies(good: bytes, folder: Path, stem: str) -> dict[str, str]:
    """0 bytes, half a file, random bytes (and a random .ckpt): name -> file name."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        f"{stem}-empty.safetensors": b"",
        f"{stem}-half.safetensors": good[: len(good) // 2],
        f"{stem}-noise.safetensors": np.random.default_rng(0).bytes(64 * 1024),
        f"{stem}-pickle.ckpt": np.random.default_rng(1).bytes(64 * 1024),
    }
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return {Path(name).stem if name.endswith(".safetensors") else name: name for name in files}


def test_broken_checkpoints_and_loras_fail_clearly_and_keep_the_loaded_model(data_dir):
    models = data_dir / "models"
    good = (models / "Stable-diffusion" / "tiny-sd1.safetensors").read_bytes()
    with _app(data_dir) as (client, ctx):
        expected = _pixels(_txt2img(client))
        loaded = ctx.models.loaded_paths()
        # dropped into the folders while the app runs (they sort before the good file)
        checkpoints = _broken_copies(good, models / "Stable-diffusion", "bad")
        write_kohya_lora(models / "Lora" / "good.safetensors", _pipe(ctx))
        lora_good = (models / "Lora" / "good.safetensors").read_bytes()
        loras = _broken_copies(lora_good, models / "Lora", "lora")
        # the folder scans list the broken files without failing
        assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
        listed = {m["model_name"] for m in client.get("/sdapi/v1/sd-models").json()}
        assert {Path(n).stem for n in checkpoints.values()} <= listed
        assert client.post("/sdapi/v1/refresh-loras").status_code == 200
        response = client.get("/sdapi/v1/loras")
        assert response.status_code == 200
        assert {Path(n).stem for n in loras.values()} <= {i["name"] for i in response.json()}

        for name, filename in checkpoints.items():
            switch = {"override_settings": {"sd_model_checkpoint": name}}
            _assert_error(_txt2img(client, **switch), filename)
            assert ctx.models.loaded_paths() == loaded, filename  # still loaded
            refused = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": name})
            assert refused.status_code == 422
            _assert_error(refused, filename, "sd_model_checkpoint")
            assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == ""
            assert np.array_equal(_pixels(_txt2img(client)), expected), filename

        with_good = _txt2img(client, prompt="a red fox in the snow <lora:good:1>")
        assert not np.array_equal(_pixels(with_good), expected)  # a LoRA that loads does act
        for filename in loras.values():
            stem = Path(filename).stem
            response = _txt2img(client, prompt=f"a red fox in the snow <lora:{stem}:1>")
            assert np.array_equal(_pixels(response), expected), filename  # the LoRA is skipped
            warnings = json.loads(response.json()["info"])["warnings"]
            assert any(filename in w for w in warnings), warnings  # the warning names the file
            fields = parse_infotext(_decode_info(response))
            assert fields["Lora skipped"] == f"<lora:{stem}:1>"
        assert ctx.models.loaded_paths() == loaded
        assert np.array_equal(_pixels(_txt2img(client)), expected)


# --- 14. disk full while saving ---------------------------------------------------------------


class _FullDisk:
    """Stands in for the `os` module of the output store: writes run out of space."""

    def __init__(self, where: str):
        self.where = where

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def fdopen(self, fd: int, *args: Any, **kwargs: Any):
        handle = os.fdopen(fd, *args, **kwargs)
        if self.where != "write":
            return handle
        real_write = handle.write

        def write(data) -> int:
            real_write(bytes(data)[:100])  # part of the file reaches the disk
            raise OSError(errno.ENOSPC, "No space left on device")

        handle.write = write
        return handle

    def fsync(self, fd: int) -> None:
        if self.where == "fsync":
            raise OSError(errno.ENOSPC, "No space left on device")
        os.fsync(fd)


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_disk_full_while_saving_leaves_nothing_and_the_next_job_saves(data_dir, monkeypatch, where):
    with _app(data_dir) as (client, ctx):
        first = _txt2img(client, seed=1)
        assert first.status_code == 200
        before = _files(ctx.store.root)
        assert len(before) == 1
        with monkeypatch.context() as patch:
            patch.setattr(store_module, "os", _FullDisk(where))
            failed = _txt2img(client, seed=2, force_task_id=f"full-{where}")
        assert failed.status_code == 500
        message = _assert_error(failed, "No space left on device")
        status = client.get(f"/webui/v1/jobs/full-{where}").json()
        assert status["state"] == "failed" and status["error"] == message
        assert _files(ctx.store.root) == before  # no partial or temporary file
        assert ctx.jobs.current() is None
        again = _txt2img(client, seed=3)
        after = _files(ctx.store.root)
        assert len(after) == 2
        (new,) = set(after) - set(before)
        assert new.name.endswith("-3.png")
        with Image.open(new) as image:
            image.load()
            assert read_infotext_from_image(image) == _decode_info(again)
