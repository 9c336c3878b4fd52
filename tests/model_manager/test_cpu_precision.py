"""CPU precision: the start-up decision (faked CPU flags and matmul probe), the flags that
force it, the bf16 UNet it applies, and where it is reported (memory plan, footer, API,
infotext). This machine has no AMX, so the AMX answer is always a faked probe here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from webui.context import build_context
from webui.core.params import Txt2ImgParams
from webui.model_manager import cpu_precision
from webui.model_manager.cpu_precision import PROBE_FILE, decide_cpu_precision
from webui.model_manager.memory import plan_from_flags
from webui.settings import parse_flags

AMX = frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
ZEN4 = frozenset({"avx512f", "avx512_bf16"})  # this machine: bf16 instructions, no AMX


class FakeProbe:
    """GFLOP/s per dtype, as a machine would measure them; counts its calls."""

    def __init__(self, fp32: float, bf16: float):
        self.rates = {torch.float32: fp32, torch.bfloat16: bf16}
        self.calls = 0

    def __call__(self, dtype):
        self.calls += 1
        return self.rates[dtype]


AMX_PROBE = (363.0, 2445.0)  # measured on an AMX machine of this workplace (issue 16)
ZEN4_PROBE = (190.0, 95.0)  # this machine: bf16 about half of fp32


def test_amx_probe_chooses_bf16_and_is_cached_per_machine(tmp_path):
    probe, cache = FakeProbe(*AMX_PROBE), tmp_path / PROBE_FILE
    first = decide_cpu_precision(flags=AMX, cache_file=cache, probe=probe)
    assert first.dtype == torch.bfloat16 and "2445" in first.reason
    assert probe.calls == 2
    again = decide_cpu_precision(flags=AMX, cache_file=cache, probe=probe)
    assert again.dtype == torch.bfloat16 and "(cached)" in again.reason
    assert probe.calls == 2  # paid once: read from the data folder
    stored = json.loads(cache.read_text())
    assert list(stored.values())[0]["bfloat16"] == 2445.0


def test_bf16_that_loses_keeps_fp32_and_no_bf16_instructions_skip_the_probe(tmp_path):
    probe = FakeProbe(*ZEN4_PROBE)
    decision = decide_cpu_precision(flags=ZEN4, cache_file=tmp_path / PROBE_FILE, probe=probe)
    assert decision.dtype == torch.float32 and "95 vs fp32 190" in decision.reason
    old = FakeProbe(*AMX_PROBE)
    assert decide_cpu_precision(flags=frozenset({"avx2"}), probe=old).dtype == torch.float32
    assert old.calls == 0


def test_flags_force_the_precision_whatever_the_probe():
    probe = FakeProbe(*AMX_PROBE)
    assert decide_cpu_precision(forced_full=True, flags=AMX, probe=probe).dtype == torch.float32
    slow = FakeProbe(*ZEN4_PROBE)
    assert decide_cpu_precision(forced_bf16=True, flags=ZEN4, probe=slow).dtype == torch.bfloat16
    assert probe.calls == slow.calls == 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--precision", "full"], torch.float32),
        (["--no-half"], torch.float32),
        (["--precision", "bf16"], torch.bfloat16),
        (["--unet-in-bf16"], torch.bfloat16),
    ],
)
def test_flags_reach_the_plan(tmp_path, monkeypatch, args, expected):
    monkeypatch.setattr(cpu_precision, "cpu_flags", lambda: AMX)  # the probe would say bf16
    monkeypatch.setattr(cpu_precision, "probe_gflops", FakeProbe(*AMX_PROBE))
    plan = plan_from_flags(parse_flags(["--data-dir", str(tmp_path), *args]), cuda_available=False)
    assert plan.unet == expected and plan.dtype == torch.float32 and plan.vae == torch.float32
    assert plan.as_dict()["unet_dtype"] == str(expected).removeprefix("torch.")


def _run(ctx, **overrides):
    base = dict(prompt="a red cube", steps=2, width=64, height=64, seed=7, save_images=False)
    job = ctx.jobs.submit("txt2img", Txt2ImgParams(**{**base, **overrides}).validated(), "test")
    assert job.done.wait(300)
    assert job.state == "done", job.error
    return job


def _generate(ctx, **overrides):
    return _run(ctx, **overrides).result.images[0]


@pytest.fixture(scope="module")
def fp32_image(tmp_path_factory, tiny_files):
    from tests.conftest import with_tiny_sd1

    data = with_tiny_sd1(tmp_path_factory.mktemp("fp32"), tiny_files)
    ctx = build_context(parse_flags(["--data-dir", str(data), "--no-hashing", "--no-half"]))
    try:
        assert ctx.memory.unet == torch.float32
        return _generate(ctx)
    finally:
        ctx.close()


def test_faked_amx_machine_runs_a_bf16_unet_within_bf16_rounding(data_dir, monkeypatch,
                                                                   fp32_image):  # fmt: skip
    from fastapi.testclient import TestClient

    from webui.app import create_app
    from webui.ui.blocks import footer_text

    monkeypatch.setattr(cpu_precision, "cpu_flags", lambda: AMX)
    monkeypatch.setattr(cpu_precision, "probe_gflops", FakeProbe(*AMX_PROBE))
    flags = parse_flags(["--data-dir", str(data_dir), "--nowebui", "--no-hashing",
                         "--no-download-sd-model"])  # fmt: skip
    ctx = build_context(flags)
    try:
        job = _run(ctx)
        image, image_warnings = job.result.images[0], job.result.warnings
        pipe = ctx.models.acquire(ctx.models.resolve(None)).pipe
        assert pipe.unet.conv_in.weight.dtype == torch.bfloat16
        assert pipe.vae.decoder.conv_in.weight.dtype == torch.float32  # NaN-safe VAE path
        assert pipe.text_encoder.dtype == torch.float32
        with TestClient(create_app(flags, ctx)) as client:
            plan = client.get("/sdapi/v1/memory").json()["memory_plan"]
        assert plan["unet_dtype"] == "bfloat16" and plan["dtype"] == "float32"
        assert plan["cpu_precision"]["matmul_gflops"]["bfloat16"] == 2445.0
        assert "UNet bfloat16" in footer_text(ctx)
    finally:
        ctx.close()
    assert "UNet precision: bfloat16" in image.infotext
    assert not any("UNet precision" in w for w in image_warnings)  # no toast on every job
    assert "UNet precision" not in fp32_image.infotext
    ours = np.asarray(image.image, np.int16)
    full = np.asarray(fp32_image.image, np.int16)
    difference = np.abs(ours - full)
    assert difference.max() > 0  # bf16 really ran
    assert difference.mean() < 3 and np.percentile(difference, 99) < 16


def test_the_precision_note_is_infotext_only():
    from webui.core.run import INFOTEXT_ONLY_NOTES, MemoryRun

    assert cpu_precision.INFOTEXT_FIELD in INFOTEXT_ONLY_NOTES
    run = MemoryRun(notes={cpu_precision.INFOTEXT_FIELD: "bfloat16", "Low-memory retry": "x"})
    assert run.messages() == ["Low-memory retry: x"]
