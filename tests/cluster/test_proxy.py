"""The head's proxy of a Ray worker and the worker's hand-back store, without Ray: fakes
stand in for `ray.get`/`ray.wait` and the actor handle."""

from __future__ import annotations

import io
import threading
from types import SimpleNamespace

import pytest
from PIL import Image

from webui.cluster.actor import HandBackStore, Outcome, SaveRequest
from webui.cluster.pool import RayExecutor
from webui.core.executors import WorkerLost
from webui.core.jobs import Job


class Died(Exception):
    """Stands in for ray.exceptions.ActorDiedError."""


class Call:
    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def remote(self, *args):
        self.calls.append(args)
        return self.fn(*args)


class FakeRay:
    """`wait` says the run is ready after `polls` polls; `get` returns the value."""

    def __init__(self, polls: int):
        self.polls = polls

    def wait(self, refs, timeout=None, num_returns=1):
        self.polls -= 1
        return (refs, []) if self.polls < 0 else ([], refs)

    def get(self, value, timeout=None):
        if isinstance(value, Exception):
            raise value
        return value


def _png(color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _executor(states, outcome, polls, save=None):
    saved_paths = []
    pool = SimpleNamespace(
        ray=FakeRay(polls), lost_errors=(Died,), forget=lambda e: None,
        record=lambda job, seconds: None, save=save or (lambda job, req: saved_paths.append(req) or "/out/1.png"),
    )  # fmt: skip
    states = iter(states)
    actor = SimpleNamespace(
        run=Call(lambda spec: outcome), poll=Call(lambda *a: next(states)),
        saved=Call(lambda *a: None),
    )  # fmt: skip
    info = {"name": "w1", "device": "cpu", "pid": 1, "held": [], "visible": ["m.safetensors"]}
    return RayExecutor(pool, actor, info), actor


def _state(step, **extra):
    return {"step": step, "steps": 4, "batch": 0, "batches": 1, "text": "", "preview": None,
            "preview_step": -1, "skipped": 0, "saves": [], **extra}  # fmt: skip


def test_progress_previews_and_skip_reach_the_head_job():
    job = Job(kind="txt2img", params=SimpleNamespace(prompt="p"))
    job.skip_requested = True
    states = [_state(1), _state(2, preview=_png("red"), preview_step=2), _state(3)]
    executor, actor = _executor(
        states, Outcome(result="R", held=["m.safetensors"], visible=["m.safetensors"]), polls=3
    )
    assert executor.run(job) == "R"
    assert job.progress.step == 3 and job.progress.preview_step == 2
    assert job.progress.preview.getpixel((0, 0)) == (255, 0, 0)
    assert actor.poll.calls[0][2] is True and actor.poll.calls[1][2] is False  # skip sent once
    assert not job.skip_requested
    assert executor.held() == ["m.safetensors"] and executor.sees("m.safetensors")


def test_images_are_written_by_the_head_and_a_failed_write_fails_the_worker_save():
    job = Job(kind="txt2img", params=SimpleNamespace(prompt="p"))
    request = SaveRequest("t1", False, Image.new("RGB", (8, 8)), {"kind": "txt2img", "seed": 1})

    def disk_full(job, req):
        raise OSError("No space left on device")

    executor, actor = _executor([_state(1, saves=[request])], Outcome(), polls=1, save=disk_full)
    executor.run(job)
    assert actor.saved.calls == [("t1", "", "saving the image failed: No space left on device")]


def test_errors_come_back_as_the_job_error_and_a_dead_actor_as_worker_lost():
    job = Job(kind="txt2img", params=SimpleNamespace(prompt="p"))
    executor, _ = _executor([], Outcome(error="steps: bad", error_kind="user"), polls=0)
    with pytest.raises(Exception, match="steps: bad"):
        executor.run(job)
    executor, _ = _executor([], Died("gone"), polls=0)
    with pytest.raises(WorkerLost, match="w1 died"):
        executor.run(job)
    assert executor.gone


def test_the_hand_back_store_waits_for_the_head_path_or_error():
    store = HandBackStore()
    results: list = []

    def save():
        try:
            results.append(store.save(Image.new("RGB", (4, 4)), kind="txt2img", seed=3))
        except OSError as exc:
            results.append(exc)

    for answer in (("/out/00001.png", None), ("", "disk full")):
        thread = threading.Thread(target=save)
        thread.start()
        while not (pending := store.take()):
            thread.join(0.01)
        assert pending[0].args == {"kind": "txt2img", "seed": 3}
        store.answer(pending[0].token, *answer)
        thread.join(10)
    assert str(results[0]) == "/out/00001.png" and "disk full" in str(results[1])


def test_workers_are_built_without_the_servers_passwords(tmp_path):
    from webui.cluster.actor import worker_flags
    from webui.settings import parse_flags

    flags = parse_flags(["--data-dir", str(tmp_path), "--api-auth", "a:secret-1",
                         "--gradio-auth", "b:secret-2", "--ray-workers", "2"])  # fmt: skip
    cpu = worker_flags(flags, "cpu")
    assert cpu.api_auth is None and cpu.gradio_auth is None and cpu.cpu_only
    assert cpu.ckpt_dir == flags.ckpt_dir
    gpu = worker_flags(flags, "gpu")
    assert gpu.api_auth is None and gpu.use_cpu == ()
