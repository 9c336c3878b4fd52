"""`python -m webui.bench.flux_memory --tiny`: the FLUX memory rows (issue 12) end to end.

A tiny block stack (width 64) is written as bf16, fp8, GGUF Q8_0 and Q4_K files, each is
loaded by a child process through our FLUX loader and runs a forward. Only the shape of
the output and that the numbers are real measurements are checked, never their values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from webui.bench.flux_memory import STORAGES
from webui.bench.report import COLUMNS

ROOT = Path(__file__).resolve().parents[2]
ROW_KINDS = ("peak RSS, load + forward", "parameter bytes as stored", "seconds per forward",
             "per double+single block pair", "full FLUX.1 (19 double + 38 single), extrapolated")  # fmt: skip


def test_tiny_flux_memory_prints_the_rows_and_writes_json(tmp_path):
    out = tmp_path / "flux.json"
    cmd = [sys.executable, "-m", "webui.bench.flux_memory", "--tiny", "--json", str(out),
           "--workdir", str(tmp_path)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    data = json.loads(out.read_text())
    assert data["columns"] == list(COLUMNS)
    names = [row["measure"] for row in data["rows"]]
    assert len(names) == len(STORAGES) * len(ROW_KINDS)
    for storage in STORAGES:
        for kind in ROW_KINDS:
            assert sum(f"FLUX {storage} file" in n and kind in n for n in names) == 1, (
                storage,
                kind,
            )
    assert all(name in proc.stdout for name in names)  # every row is in the printed table
    assert all(row["ratio"] > 0 for row in data["rows"])

    results = {r["storage"]: r for r in data["raw"]["results"]}
    assert set(results) == set(STORAGES)
    for r in results.values():
        assert r["peak_rss"] >= r["rss_after_load"] >= r["rss_after_imports"] > 0
        assert r["blocks"] == {"double": 1, "single": 1}
        assert r["forward_median"] > 0 and r["double_block_seconds"] > 0
        assert r["single_block_seconds"] > 0 and r["double_block_bytes"] > 0
    # the files kept their storage through our loader (nothing widened to the compute dtype)
    assert results["fp8_e4m3fn"]["stored_as"] == "fp8_e4m3fn"
    assert set(results["gguf_q8_0"]["gguf_types"]) == {"Q8_0"}
    assert "Q4_K" in results["gguf_q4_k"]["gguf_types"]
    bf16 = results["bf16"]["parameter_bytes"]
    assert results["fp8_e4m3fn"]["parameter_bytes"] < bf16 / 3  # fp32 compute: bf16 is widened
    assert results["gguf_q4_k"]["parameter_bytes"] < results["gguf_q8_0"]["parameter_bytes"]
    full = data["raw"]["full_model"]["bf16"]
    assert full["parameter_bytes"] > bf16 and full["forward_seconds"] > 0
    assert data["conditions"]["tiny"] is True and not list(tmp_path.glob("flux-memory-*"))
