"""The UNet's dtype on this CPU: bfloat16 where its matmuls are clearly faster, else float32.

On CPUs with AMX (Intel Sapphire Rapids and later, flag `amx_bf16`) a bf16 matmul runs
several times faster than an fp32 one; on CPUs with only `avx512_bf16` (AMD Zen 4, Intel
Cooper Lake) or none at all, bf16 is slower than fp32. `decide_cpu_precision` picks:

1. `--no-half` / `--precision full`: float32;
2. `--precision bf16` / `--unet-in-bf16` (Forge's name): bfloat16, whatever the probe says;
3. otherwise a CPU without bf16 instructions runs float32 (no probe: emulated bf16 loses),
   and one with them gets a short matmul probe (fp32 and bf16, ~0.2 s each, n=1024) whose
   result is cached per machine in the data folder (`cpu-precision.json`, keyed by CPU
   model, thread count and torch version), so it is paid once: bf16 when it is at least
   `BF16_WINS` times faster.

`run_denoiser_in` applies a bf16 decision to a loaded pipeline: the UNet's weights become
bf16, and hooks cast its sample and conditioning in and its output back to float32, so
the text encoders, the sampler's latents and the VAE (with its NaN retry) stay float32.
The timestep is never cast (bf16 would round 999 to 1000). `precision_notes` is the
infotext field of a pipeline whose UNet runs in bf16.

This module must never import a UI library, and never change a dtype on a GPU plan.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .weight_storage import FP8_DTYPES, is_narrow, set_compute_dtype

log = logging.getLogger(__name__)

PROBE_FILE = "cpu-precision.json"
BF16_WINS = 1.3  # bf16 matmul must be this much faster than fp32 to be chosen
BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")  # x86 AMX / AVX-512, aarch64 BF16
PROBE_N = 1024
PROBE_SECONDS = 0.2
INFOTEXT_FIELD = "UNet precision"
_MEASURED: dict[str, tuple[float, float]] = {}  # per process, besides the file


@dataclass(frozen=True)
class CpuPrecision:
    """The decision and why: `dtype` is the UNet's, the rest of the model stays float32."""

    dtype: torch.dtype
    reason: str
    fp32_gflops: float | None = None
    bf16_gflops: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "unet_dtype": str(self.dtype).removeprefix("torch."),
            "reason": self.reason,
            "matmul_gflops": {"float32": self.fp32_gflops, "bfloat16": self.bf16_gflops},
        }


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key() -> str:
    return f"{cpu_model()} | {torch.get_num_threads()} threads | torch {torch.__version__}"


def probe_gflops(dtype: torch.dtype, seconds: float = PROBE_SECONDS, n: int = PROBE_N) -> float:
    """Best GFLOP/s of an n x n matmul in `dtype` over about `seconds`."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up: oneDNN picks and builds its kernel
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9


_REAL_PROBE = probe_gflops  # only its results are kept per process (never a test's fake)


def cached_probe(cache_file: Path | None, probe=None) -> tuple[float, float, bool]:
    """(fp32, bf16) GFLOP/s of this machine, from `cache_file` or measured and stored;
    the last item says whether they came from the cache."""
    probe = probe or probe_gflops
    key = machine_key()
    known: dict[str, Any] = {}
    if cache_file is not None and cache_file.exists():
        try:
            known = json.loads(cache_file.read_text())
            entry = known[key]
            return float(entry["float32"]), float(entry["bfloat16"]), True
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable or another machine's: measure
    if probe is _REAL_PROBE and key in _MEASURED:  # this process measured it already
        fp32, bf16 = _MEASURED[key]
    else:
        fp32, bf16 = probe(torch.float32), probe(torch.bfloat16)
        if probe is _REAL_PROBE:
            _MEASURED[key] = (fp32, bf16)
    if cache_file is not None:
        known = known if isinstance(known, dict) else {}
        known[key] = {"float32": fp32, "bfloat16": bf16, "measured": time.strftime("%Y-%m-%d")}
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(cache_file.name + ".tmp")
            tmp.write_text(json.dumps(known, indent=1))
            os.replace(tmp, cache_file)
        except OSError as exc:
            log.warning("could not cache the matmul probe in %s: %s", cache_file, exc)
    return fp32, bf16, False


def decide_cpu_precision(
    *,
    forced_full: bool = False,
    forced_bf16: bool = False,
    flags: frozenset[str] | None = None,
    cache_file: Path | None = None,
    probe=None,
) -> CpuPrecision:
    """The UNet's dtype on this CPU (see the module docstring for the order of the rules).

    `flags` and `probe` stand in for /proc/cpuinfo and the matmul probe in tests."""
    if forced_full:
        return CpuPrecision(torch.float32, "float32 forced (--no-half / --precision full)")
    if forced_bf16:
        return CpuPrecision(torch.bfloat16, "bfloat16 forced (--precision bf16)")
    flags = cpu_flags() if flags is None else flags
    found = [flag for flag in BF16_FLAGS if flag in flags]
    if not found:
        return CpuPrecision(torch.float32, "float32: the CPU has no bf16 instructions")
    fp32, bf16, cached = cached_probe(cache_file, probe)
    measured = f"matmul bf16 {bf16:.0f} vs fp32 {fp32:.0f} GFLOP/s" + (" (cached)" * cached)
    if bf16 >= BF16_WINS * fp32:
        return CpuPrecision(torch.bfloat16, f"bfloat16: {measured}", fp32, bf16)
    return CpuPrecision(torch.float32, f"float32: {measured}", fp32, bf16)


def denoiser(pipe) -> torch.nn.Module | None:
    """The pipeline's UNet (or a transformer family's transformer)."""
    return getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)


def compute_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype a denoiser computes in: `run_denoiser_in`'s (CPU bf16; narrow models), else
    that of its first floating weight (fp8 weights are cast when they run)."""
    dtype = getattr(model, "_webui_compute_dtype", None)
    if dtype is not None:
        return dtype
    floating = (p.dtype for p in model.parameters() if p.is_floating_point())
    return next((d for d in floating if d not in FP8_DTYPES), torch.float32)


CAST_KWARGS = ("encoder_hidden_states", "pooled_projections", "down_block_additional_residuals",
               "mid_block_additional_residual", "down_intrablock_additional_residuals")  # fmt: skip


def run_denoiser_in(pipe, dtype: torch.dtype) -> bool:
    """The denoiser's weights in `dtype`, float32 tensors in and out (see the docstring).

    Returns False (and changes nothing) for a pipeline without a denoiser. Idempotent."""
    model = denoiser(pipe)
    if model is None:
        return False
    if is_narrow(model):  # fp8 / GGUF weights stay as stored, their layers compute in dtype
        set_compute_dtype(model, dtype)
    else:
        torch.nn.Module.to(model, dtype)  # (diffusers' .to warns about fp32 modules it has none of)
    if getattr(model, "_webui_compute_dtype", None) is not None:
        model._webui_compute_dtype = dtype
        return True

    def cast(value):
        if isinstance(value, (tuple, list)):
            return type(value)(cast(v) for v in value)
        if torch.is_tensor(value) and value.is_floating_point():
            return value.to(model._webui_compute_dtype)
        return value

    def cast_in(module, args, kwargs):
        if args:  # the sample (latents) is the first argument; lists of tensors (Z-Image's
            # latents and captions) too, never a lone tensor after it (the timestep)
            args = tuple(cast(a) if i == 0 or isinstance(a, list) else a
                         for i, a in enumerate(args))  # fmt: skip
        if "sample" in kwargs:
            kwargs["sample"] = cast(kwargs["sample"])
        if "hidden_states" in kwargs:  # transformer families
            kwargs["hidden_states"] = cast(kwargs["hidden_states"])
        for name in CAST_KWARGS:
            if kwargs.get(name) is not None:
                kwargs[name] = cast(kwargs[name])
        return args, kwargs

    def cast_out(module, args, kwargs, output):
        if hasattr(output, "sample"):
            output.sample = output.sample.float()
            return output
        if isinstance(output, tuple):  # (sample,) or Z-Image's ([sample per image],)
            first = output[0]
            return (first.float() if torch.is_tensor(first) else [t.float() for t in first],
                    *output[1:])  # fmt: skip
        return output.float() if torch.is_tensor(output) else output

    model._webui_compute_dtype = dtype
    model.register_forward_pre_hook(cast_in, with_kwargs=True)
    model.register_forward_hook(cast_out, with_kwargs=True)
    return True


def precision_notes(pipe) -> dict[str, str]:
    """The infotext field of a pipeline whose denoiser runs in another dtype than float32
    through `run_denoiser_in` (nothing otherwise: float32 is the CPU's default)."""
    model = denoiser(pipe)
    dtype = getattr(model, "_webui_compute_dtype", None) if model is not None else None
    if dtype is None or dtype == torch.float32:
        return {}
    return {INFOTEXT_FIELD: str(dtype).removeprefix("torch.")}
