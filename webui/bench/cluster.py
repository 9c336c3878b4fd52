"""The benchmark's cluster rows (`python -m webui.bench --ray`): jobs per minute on a
local Ray runtime with 1 and 2 CPU workers, against the one-process queue, and the
head's overhead per job.

Each case builds the server's context in this process (`--ray-workers N` starts Ray on
127.0.0.1 and stops it at the end), lets every worker load the checkpoint with one job,
then times `jobs` txt2img jobs from 3 users from submission to the last end. The head's
overhead per job is its running time on the head (dispatch to end, the images written by
the head included) less the time the worker itself spent generating it.

This module must never import a UI library; it needs the `ray` extra.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from .report import Row

OWNERS = ("alice", "bob", "carol")
START_TIMEOUT = 600.0
JOB_TIMEOUT = 1800.0


def cluster_rows(checkpoint: Path, config: dict, raw: dict, jobs: int = 8) -> list[Row]:
    """Rows: jobs/min in one process, with 1 and with 2 Ray workers; head ms per job."""
    results = {label: _case(checkpoint, config, workers, jobs)
               for label, workers in (("local", 0), ("ray-1", 1), ("ray-2", 2))}  # fmt: skip
    raw["cluster"] = results
    local = results["local"]["jobs_per_minute"]
    size = f"{config['width']}x{config['height']}, {config['steps']} steps, {jobs} jobs"
    rows = [Row(f"jobs/min, one process ({size})", f"{local:.1f}")]
    for label, name in (("ray-1", "1 Ray CPU worker"), ("ray-2", "2 Ray CPU workers")):
        rate = results[label]["jobs_per_minute"]
        rows.append(Row(f"jobs/min, {name} ({size})", f"{rate:.1f}",
                        f"one process {local:.1f}", rate / local))  # fmt: skip
    overhead = results["ray-2"]["head_overhead_ms"]
    rows.append(Row("head overhead per Ray job (dispatch, polls, transfer, PNG write)",
                    f"{overhead['median']:.0f} ms (median; max {overhead['max']:.0f} ms)"))  # fmt: skip
    return rows


def _case(checkpoint: Path, config: dict, workers: int, jobs: int) -> dict[str, Any]:
    from ..context import build_context
    from ..core.params import Txt2ImgParams
    from ..services.generation import GenerationRequest
    from ..settings import parse_flags

    with tempfile.TemporaryDirectory(prefix="webui-bench-ray-") as tmp:
        folder = Path(tmp) / "models" / "Stable-diffusion"
        folder.mkdir(parents=True)
        (folder / checkpoint.name).symlink_to(checkpoint)
        argv = ["--nowebui", "--data-dir", tmp, "--no-download-sd-model"]
        ctx = build_context(
            parse_flags([*argv, "--ray-workers", str(workers)] if workers else argv)
        )
        try:
            if ctx.cluster is not None:
                from ..cluster.pool import wait_for_workers

                if not wait_for_workers(ctx.cluster, workers, START_TIMEOUT):  # type: ignore[arg-type]
                    raise RuntimeError(f"{workers} Ray workers did not start")

            def submit(i: int, owner: str) -> Any:
                params = Txt2ImgParams(prompt=f"a lighthouse, take {i}", steps=config["steps"],
                                       width=config["width"], height=config["height"], seed=i)  # fmt: skip
                return ctx.generation.submit(GenerationRequest("txt2img", params, owner))

            _wait([submit(10_000 + i, OWNERS[i % 3]) for i in range(max(workers, 1))])  # warm-up
            started = time.perf_counter()
            done = _wait([submit(i, OWNERS[i % 3]) for i in range(jobs)])
            elapsed = time.perf_counter() - started
            result: dict[str, Any] = {"workers": workers, "jobs": jobs, "seconds": elapsed,
                                      "jobs_per_minute": jobs / elapsed * 60,
                                      "by_worker": _count(j.worker for j in done)}  # fmt: skip
            if ctx.cluster is not None:
                worked = ctx.cluster.run_seconds  # type: ignore[attr-defined]
                ms = [((j.finished_at - j.started_at) - worked[j.id]) * 1000 for j in done]
                result["head_overhead_ms"] = {"median": statistics.median(ms), "max": max(ms),
                                              "all": ms}  # fmt: skip
            return result
        finally:
            ctx.close()


def _wait(jobs: list[Any]) -> list[Any]:
    for job in jobs:
        if not job.done.wait(JOB_TIMEOUT) or job.state != "done":
            raise RuntimeError(f"benchmark job {job.id} ended {job.state}: {job.error}")
    return jobs


def _count(names: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return counts
