"""Jobs on a local Ray cluster (127.0.0.1, started and stopped here) with 2 CPU workers.

The tiny SD 1.x model; 8 jobs from 3 users finish on both workers; a worker's process
killed (SIGKILL) in the middle of a job: every job still ends with exactly one PNG or a
visible failure after its retry, the dead worker is replaced and takes work again.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

pytest.importorskip("ray")

from webui.app import create_app  # noqa: E402
from webui.cluster.pool import RayExecutor, wait_for_workers  # noqa: E402
from webui.context import AppContext, build_context  # noqa: E402
from webui.core.jobs import DONE, FAILED, Job  # noqa: E402
from webui.core.params import Txt2ImgParams  # noqa: E402
from webui.services.generation import GenerationRequest  # noqa: E402
from webui.settings import parse_flags  # noqa: E402

START_TIMEOUT = 240  # two worker processes import torch and diffusers on a busy machine
JOB_TIMEOUT = 240


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_files) -> Iterator[AppContext]:
    data = tmp_path_factory.mktemp("ray")
    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    shutil.copy(tiny_files["sd1"], folder / "tiny-sd1.safetensors")
    flags = parse_flags(["--nowebui", "--data-dir", str(data), "--no-download-sd-model",
                         "--ray-workers", "2"])  # fmt: skip
    ctx = build_context(flags)
    try:
        assert ctx.cluster is not None
        assert wait_for_workers(ctx.cluster, 2, START_TIMEOUT), "the Ray workers did not start"
        yield ctx
    finally:
        ctx.close()


def _submit(ctx: AppContext, owner: str, prompt: str, steps: int = 2, seed: int = 1) -> Job:
    params = Txt2ImgParams(prompt=prompt, steps=steps, width=64, height=64, seed=seed)
    return ctx.generation.submit(GenerationRequest("txt2img", params, owner))


def _pngs(ctx: AppContext) -> list[Path]:
    return sorted(ctx.store.root.rglob("*.png")) if ctx.store.root.exists() else []


def _assert_one_png_or_failure(job: Job) -> None:
    assert job.done.wait(JOB_TIMEOUT), f"job {job.id} never ended"
    if job.state == FAILED:
        assert job.error and "worker" in job.error, job.error
        return
    assert job.state == DONE, (job.state, job.error)
    assert len(set(job.saved)) == 1 and Path(job.saved[0]).is_file(), job.saved
    assert [g.path for g in job.images] == job.saved


def test_eight_jobs_from_three_users_run_on_both_workers(cluster):
    before = set(_pngs(cluster))
    jobs = [_submit(cluster, f"user{i % 3}", f"a fox number {i}", seed=i) for i in range(8)]
    for job in jobs:
        _assert_one_png_or_failure(job)
        assert job.state == DONE and job.attempts == 1
    assert {j.worker for j in jobs} == {w.name for w in cluster.cluster.workers()}
    assert len(set(_pngs(cluster)) - before) == 8  # the head wrote every file
    workers = TestClient(create_app(cluster.flags, cluster)).get("/webui/v1/workers").json()
    assert sorted(w["jobs_done"] for w in workers) != [0, 0]
    assert sum(w["jobs_done"] for w in workers) >= 8
    assert all(w["models"] == ["tiny-sd1.safetensors"] for w in workers if w["jobs_done"])


def test_progress_and_previews_reach_the_head(cluster):
    seen: list[tuple[int, int]] = []
    job = _submit(cluster, "viewer", "a slow fox", steps=12)
    job.progress.listeners.append(lambda p: seen.append((p.step, p.steps)))
    assert job.done.wait(JOB_TIMEOUT) and job.state == DONE
    assert seen and seen[-1][1] == 12 and max(s for s, _ in seen) >= 6


def _wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + JOB_TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_skip_and_interrupt_reach_the_job_on_its_worker(cluster):
    params = Txt2ImgParams(prompt="two foxes", steps=60, width=64, height=64, seed=5,
                           batch_count=3)  # fmt: skip
    job = cluster.generation.submit(GenerationRequest("txt2img", params, "dave"))
    _wait_until(lambda: job.state == "running" and job.progress.step >= 2, "the first steps")
    assert cluster.jobs.skip(job.id, "dave")
    _wait_until(lambda: job.progress.batch >= 1 and job.progress.step >= 2, "the second image")
    assert cluster.jobs.interrupt(job.id, "dave")
    assert job.done.wait(JOB_TIMEOUT)
    assert job.state == "interrupted" and job.skipped == 1
    assert job.progress.batch == 1  # the third image never started
    assert len([p for p in job.saved if "-grids" not in p]) <= 2  # and the batch grid


def _worker_of(ctx: AppContext, job: Job) -> RayExecutor:
    return next(w for w in ctx.cluster.workers() if w.name == job.worker)


def test_a_killed_worker_job_runs_again_elsewhere_and_the_worker_is_replaced(cluster):
    long_job = _submit(cluster, "alice", "a fox that outlives its worker", steps=20, seed=7)
    others = [_submit(cluster, f"user{i % 3}", f"bystander {i}", seed=100 + i) for i in range(3)]
    deadline = time.monotonic() + JOB_TIMEOUT
    while not (long_job.state == "running" and long_job.progress.step >= 2):
        assert time.monotonic() < deadline, "the long job did not start"
        time.sleep(0.05)
    victim = _worker_of(cluster, long_job)
    names_before = {w.name for w in cluster.cluster.workers()}
    assert victim.pid != os.getpid()
    os.kill(victim.pid, signal.SIGKILL)

    for job in [long_job, *others]:
        _assert_one_png_or_failure(job)
    assert long_job.state == DONE and long_job.attempts == 2
    assert long_job.worker != victim.name
    states = {w["name"]: w["state"] for w in cluster.jobs.workers()}
    assert states[victim.name] == "lost"
    # the watcher starts a new worker in the dead one's place; it takes jobs
    assert wait_for_workers(cluster.cluster, 2, START_TIMEOUT)
    replacement = next(w for w in cluster.cluster.workers() if w.name not in names_before)
    for _ in range(4):  # least recently used first: the newcomer gets one of these
        after = _submit(cluster, "bob", "after the crash")
        _assert_one_png_or_failure(after)
        assert after.state == DONE
        if after.worker == replacement.name:
            break
    assert after.worker == replacement.name


def test_a_checkpoint_no_worker_sees_is_refused_by_name(cluster):
    gone = cluster.flags.ckpt_dir / "only-on-the-head.safetensors"
    shutil.copy(cluster.flags.ckpt_dir / "tiny-sd1.safetensors", gone)
    cluster.models.refresh()
    try:
        for worker in cluster.cluster.workers():  # as if the folder were not shared
            worker.refresh({"held": worker.held(), "visible": ["tiny-sd1.safetensors"]})
        cluster.cluster._refresh = lambda: None  # type: ignore[method-assign]
        params = Txt2ImgParams(prompt="x", steps=2, width=64, height=64,
                               checkpoint="only-on-the-head.safetensors")  # fmt: skip
        job = cluster.generation.submit(GenerationRequest("txt2img", params, "carol"))
        assert job.done.wait(JOB_TIMEOUT)
        assert job.state == FAILED and "only-on-the-head.safetensors" in (job.error or "")
    finally:
        del cluster.cluster._refresh
        gone.unlink()
