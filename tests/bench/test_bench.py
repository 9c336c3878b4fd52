"""The benchmark runs end to end (`--tiny`): server, bare diffusers, UNet, RSS processes.

Only the shape of the output is checked: which rows and columns there are, and that the
numbers are real measurements (positive). Speed targets are measured by the benchmark
itself, never asserted by a test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from webui.bench.report import COLUMNS

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_benchmark_prints_the_table_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "webui.bench", "--tiny", "--cache", str(tmp_path / "cache"),
           "--json", str(out)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    header = next(line for line in proc.stdout.splitlines() if line.startswith("| measure"))
    assert [cell.strip() for cell in header.strip("|").split("|")] == list(COLUMNS)

    data = json.loads(out.read_text())
    assert data["columns"] == list(COLUMNS)
    rows = {row["measure"]: row for row in data["rows"]}
    assert all(set(COLUMNS) <= set(row) for row in rows.values())
    names = " | ".join(rows)
    for expected in ("txt2img via API + queue vs bare diffusers", "UNet step", "channels-last",
                     "peak RSS 64x64", "lowram", "start to page served", "start to UI ready",
                     "start to model ready", "checkpoint load",
                     "switch from the RAM cache"):  # fmt: skip
        assert expected in names, expected
    for row in rows.values():
        assert row["measure"] in proc.stdout  # every row is in the printed table
    assert all(row["ratio"] > 0 for row in rows.values() if row["ratio"] is not None)

    raw = data["raw"]
    assert raw["matmul_gflops"] > 0 and raw["unet"]["gflop_per_step"] > 0
    assert len(raw["txt2img"]["ours"]["runs"]) == len(raw["txt2img"]["diffusers"]["runs"]) == 2
    assert {r["variant"] for r in raw["rss"]} == {"diffusers", "ours", "ours-lowmem"}
    assert all(r["peak_rss"] >= r["peak_rss_after_load"] > 0 for r in raw["rss"])
    # same checkpoint, seed, size, steps and sampler: our image is diffusers' image
    assert raw["max_pixel_difference"] <= 2
    conditions = data["conditions"]
    assert conditions["width"] == 64 and conditions["steps"] == 2
    assert len(conditions["load_before"]) == 3 and len(conditions["load_after"]) == 3


def test_cluster_rows_compare_ray_workers_with_one_process(monkeypatch):
    from webui.bench import cluster

    measured = {0: 6.0, 1: 5.0, 2: 9.0}  # jobs per minute per worker count

    def case(checkpoint, config, workers, jobs):
        result = {"workers": workers, "jobs": jobs, "jobs_per_minute": measured[workers]}
        if workers:
            result["head_overhead_ms"] = {"median": 40.0, "max": 90.0, "all": [40.0, 90.0]}
        return result

    monkeypatch.setattr(cluster, "_case", case)
    raw: dict = {}
    rows = cluster.cluster_rows(Path("x"), {"width": 64, "height": 64, "steps": 2}, raw, jobs=8)
    by_name = {row.measure.split(" (")[0]: row for row in rows}
    assert by_name["jobs/min, one process"].ours == "6.0"
    assert by_name["jobs/min, 2 Ray CPU workers"].ratio == 9.0 / 6.0
    assert by_name["jobs/min, 1 Ray CPU worker"].reference == "one process 6.0"
    assert rows[-1].ours.startswith("40 ms") and set(raw["cluster"]) == {"local", "ray-1", "ray-2"}


def test_taesd_rows_time_ours_and_diffusers_full_and_taesd(tmp_path):
    """`--taesd`: two rows (full VAE, TAESD decode), each ours (a fake server here) against
    bare diffusers; the bench's TAESD file is one our loader reads as the same model (the
    full-size one is made narrow here: 64 channels at this size take minutes on 2 cores)."""
    import base64
    import io

    import torch
    from PIL import Image

    from tests.tiny_approx import tiny_taesd
    from webui.bench.taesd import taesd_rows
    from webui.model_manager.approx_files import approx_folders
    from webui.model_manager.tiny import build_tiny_pipeline
    from webui.model_manager.vae_approx import ApproxModels

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(buffer, "PNG")
    sent = []

    class Server:
        def call(self, method, path, body):
            sent.append(body)
            return {"images": [base64.b64encode(buffer.getvalue()).decode()]}, 1.0

    bare = build_tiny_pipeline("sd1")
    request = {"prompt": "a barn", "negative_prompt": "", "steps": 2, "cfg_scale": 7.0,
               "width": 64, "height": 64, "seed": 1}  # fmt: skip
    raw: dict = {}
    model = tiny_taesd(0)
    rows = taesd_rows(Server(), bare, request, 1, tmp_path / "models", raw, model=model)
    assert [r.measure.split(":")[0] for r in rows] == [
        "4 steps, CFG 1, full VAE",
        "4 steps, CFG 1, TAESD decode",
    ]
    assert all(r.ratio and r.ratio > 0 for r in rows)
    assert [b.get("override_settings") for b in sent] == [None] * 2 + [
        {"sd_vae_decode_method": "TAESD"}] * 2  # warm-up and one round each  # fmt: skip
    assert all(b["steps"] == 4 and b["cfg_scale"] == 1.0 for b in sent)
    assert raw["cfg1_taesd_speedup_ours"] == 1.0 and raw["cfg1_taesd_speedup_diffusers"] > 0
    loaded = ApproxModels(approx_folders(tmp_path / "models")).taesd(
        "taesd", torch.device("cpu"), torch.float32)  # fmt: skip
    latents = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert torch.allclose(loaded.decode(latents).sample, model.decode(latents).sample)
