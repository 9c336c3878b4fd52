"""The backends benchmark's table (`webui.bench.backends`) and the matmul "limit" of the
main benchmark: the fastest dtype of the machine. The runs themselves take minutes per
variant on the full-size model; their numbers are in the README."""

from __future__ import annotations

import pytest

from webui.bench.backends import rows_of


def test_rows_compare_each_variant_with_bare_diffusers_and_the_best_with_openvino():
    results = {
        "diffusers-fp32": {"first_s": 9.0, "runs": [8.0, 8.4]},
        "ours-bf16": {"first_s": 5.0, "runs": [4.0, 4.2], "difference": {"max": 9, "mean": 0.8}},
        "optimum-intel": {"first_s": 2.0, "runs": [2.0], "export_and_compile_s": 60.0},
        "openvino": {"error": "IndexError: list index out of range"},
    }
    rows = {row.measure: row for row in rows_of(results)}
    assert rows["image: ours-bf16"].ratio == pytest.approx(0.5)
    assert "pixels max 9" in rows["image: ours-bf16"].ours
    assert "first 62.0 s" in rows["image: optimum-intel"].ours  # export + first call
    assert rows["image: openvino"].ours.startswith("failed: IndexError")
    best = rows["best CPU backend (ours-bf16) vs OpenVINO (optimum-intel)"]
    assert best.ratio == pytest.approx(2.0) and best.met is False


def test_the_matmul_limit_is_the_fastest_dtype():
    from webui.bench.measure import fastest_matmul

    best, name, each = fastest_matmul(128, 0.05)
    assert set(each) == {"float32", "bfloat16"} and best == max(each.values()) == each[name]
