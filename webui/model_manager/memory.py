"""Device, precision, attention backend and offloading: decided once from the flags.

`plan_memory` turns the A1111 flags into a `MemoryPlan` and explains every fallback in its
notes (CUDA-only features asked for on the CPU never fail: they say why they do nothing);
`optimize.prepare_pipeline` applies the plan to a freshly loaded pipeline.

- Attention: PyTorch SDPA (default, `--opt-sdp-attention`), `--opt-sdp-no-mem-attention`
  (SDPA without the memory-efficient kernel: deterministic), `--xformers` (installed and
  on CUDA), `--opt-split-attention` (sliced attention).
- Offload: `--medvram` (model CPU offload), `--medvram-sdxl` (the same for SDXL only),
  `--lowvram` (sequential offload); all need a CUDA device.
- `--lowram`: at most one checkpoint in RAM; on the CPU also 16-bit weights in RAM that
  each layer casts to float32 when it runs (about half the RAM).
- Precision: fp16 on CUDA (`--no-half`/`--precision full`: fp32), its VAE in bf16 where
  the GPU has it (bf16 has fp32's range, so the VAE does not overflow to NaN) unless
  `--no-half-vae` (fp32); fp32 on the CPU. `--upcast-sampling` keeps the sampler's
  latents and the text encoder in fp32 around an fp16 UNet.
- Speed: `--opt-channelslast`, `--compile` (torch.compile of the UNet).
- CPU precision: the UNet in bf16 where this CPU's bf16 matmul clearly wins (AMX), else
  fp32; `--precision bf16` / `--unet-in-bf16` force bf16, `--no-half` / `--precision full`
  force fp32 (`cpu_precision.py` decides; `unet_dtype` and `cpu_precision` say what).

This module must never import a UI library.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch

from .cpu_precision import PROBE_FILE, CpuPrecision, decide_cpu_precision

log = logging.getLogger(__name__)

ATTENTION_LABELS = {
    "sdpa": "PyTorch SDPA",
    "sdpa-no-mem": "SDPA without the memory-efficient kernel",
    "xformers": "xformers",
    "sliced": "sliced (split attention)",
}
OFFLOADS = ("none", "model", "sequential")


@dataclass(frozen=True)
class MemoryPlan:
    device: str
    dtype: torch.dtype
    attention: str  # a key of ATTENTION_LABELS
    notes: tuple[str, ...] = ()
    vae_dtype: torch.dtype | None = None  # None: the same as dtype
    offload: str = "none"  # one of OFFLOADS
    offload_sdxl_only: bool = False  # --medvram-sdxl
    lowram: bool = False
    half_storage: bool = False  # CPU --lowram: fp16 weights in RAM, fp32 compute
    upcast_sampling: bool = False
    channels_last: bool = False
    compile: bool = False
    flags: tuple[str, ...] = field(default=(), compare=False)  # the flags that made it
    unet_dtype: torch.dtype | None = None  # None: the same as dtype (CPU bf16: bfloat16)
    cpu_precision: CpuPrecision | None = field(default=None, compare=False)  # and why

    @property
    def unet(self) -> torch.dtype:
        return self.unet_dtype or self.dtype

    @property
    def vae(self) -> torch.dtype:
        return self.vae_dtype or self.dtype

    @property
    def description(self) -> str:
        parts = [self.device, dtype_name(self.dtype), f"attention: {self.attention}"]
        if self.unet != self.dtype:
            parts.append(f"UNet {dtype_name(self.unet)}")
        if self.vae != self.dtype:
            parts.append(f"VAE {dtype_name(self.vae)}")
        if self.offload != "none":
            parts.append(f"offload: {self.offload}" + (" (SDXL)" if self.offload_sdxl_only else ""))
        if self.half_storage:
            parts.append("weights fp16 in RAM")
        if self.upcast_sampling:
            parts.append("upcast sampling")
        if self.channels_last:
            parts.append("channels-last")
        if self.compile:
            parts.append("compiled UNet")
        return " · ".join(parts)

    @property
    def load_device(self) -> str:
        """Where the loader puts the weights: offloading starts from the CPU."""
        return "cpu" if self.offload != "none" else self.device

    @property
    def load_dtype(self) -> torch.dtype:
        return torch.float16 if self.half_storage else self.dtype

    def offload_for(self, medvram_sdxl: bool) -> str:
        """The offload mode for a model; `medvram_sdxl`: its family is one that
        --medvram-sdxl offloads (the family module says so)."""
        if self.offload_sdxl_only and not medvram_sdxl:
            return "none"
        return self.offload

    def as_dict(self) -> dict:
        """JSON-friendly: what /sdapi/v1/memory and the benchmark report."""
        return {
            "device": self.device,
            "dtype": dtype_name(self.dtype),
            "vae_dtype": dtype_name(self.vae),
            "attention": self.attention,
            "attention_label": ATTENTION_LABELS[self.attention],
            "offload": self.offload,
            "offload_sdxl_only": self.offload_sdxl_only,
            "lowram": self.lowram,
            "half_storage": self.half_storage,
            "upcast_sampling": self.upcast_sampling,
            "channels_last": self.channels_last,
            "compile": self.compile,
            "description": self.description,
            "notes": list(self.notes),
            "unet_dtype": dtype_name(self.unet),
            "cpu_precision": self.cpu_precision.as_dict() if self.cpu_precision else None,
        }


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def plan_memory(
    *,
    use_cpu_all: bool = False,
    no_half: bool = False,
    no_half_vae: bool = False,
    precision: str = "autocast",
    vae_in_bf16: bool = False,
    xformers: bool = False,
    split_attention: bool = False,
    sdp_attention: bool = False,
    sdp_no_mem_attention: bool = False,
    medvram: bool = False,
    medvram_sdxl: bool = False,
    lowvram: bool = False,
    lowram: bool = False,
    upcast_sampling: bool = False,
    channels_last: bool = False,
    compile: bool = False,
    cuda_available: bool | None = None,
    xformers_installed: bool | None = None,
    bf16_supported: bool | None = None,
    cpu_precision: Callable[[], CpuPrecision] | None = None,
) -> MemoryPlan:
    """Pick device, precision, attention and offloading from the A1111 flags.

    Never raises for a combination of flags: what cannot work here is noted and skipped.
    """
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if xformers_installed is None:
        xformers_installed = importlib.util.find_spec("xformers") is not None
    if bf16_supported is None:
        bf16_supported = bool(
            cuda_available and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        )
    notes: list[str] = []
    if use_cpu_all and cuda_available:
        notes.append("--use-cpu all: running on the CPU although a CUDA device is present")
    device = "cuda" if cuda_available and not use_cpu_all else "cpu"
    dtype, vae_dtype = _precision(device, no_half, no_half_vae, precision, bf16_supported, notes)
    vae_dtype = _vae_in_bf16(device, vae_dtype, vae_in_bf16, no_half_vae, bf16_supported, notes)
    attention = _attention(
        device, xformers, xformers_installed, split_attention, sdp_attention,
        sdp_no_mem_attention, notes,
    )  # fmt: skip
    offload, sdxl_only = _offload(device, medvram, medvram_sdxl, lowvram, notes)
    half_storage = lowram and device == "cpu"
    if half_storage and vae_in_bf16:  # fp16 storage computes every layer in float32
        notes.append("--vae-in-bf16 ignored: --lowram on the CPU computes in float32")
        vae_dtype = torch.float32
    cpu_decision = cpu_precision() if device == "cpu" and cpu_precision is not None else None
    unet_dtype = _cpu_unet_dtype(cpu_decision, half_storage, notes)
    if lowram:
        notes.append(
            "--lowram: one checkpoint in RAM at a time; "
            + (
                "weights stay float16 in RAM and each layer computes in float32 "
                "(about half the RAM, slower)"
                if half_storage
                else "weights are memory-mapped from the file and moved to the GPU"
            )
        )
    if upcast_sampling and dtype != torch.float16:
        notes.append(
            f"--upcast-sampling has no effect: the model already runs in {dtype_name(dtype)}"
        )
        upcast_sampling = False
    for note in notes:
        log.warning(note)
    given = {
        "--use-cpu all": use_cpu_all, "--no-half": no_half, "--no-half-vae": no_half_vae,
        "--xformers": xformers, "--opt-split-attention": split_attention,
        "--opt-sdp-attention": sdp_attention, "--opt-sdp-no-mem-attention": sdp_no_mem_attention,
        "--medvram": medvram, "--medvram-sdxl": medvram_sdxl, "--lowvram": lowvram,
        "--lowram": lowram, "--upcast-sampling": upcast_sampling,
        "--opt-channelslast": channels_last, "--compile": compile, "--vae-in-bf16": vae_in_bf16,
    }  # fmt: skip
    return MemoryPlan(
        device=device,
        dtype=dtype,
        attention=attention,
        notes=tuple(notes),
        vae_dtype=vae_dtype if vae_dtype != dtype else None,
        offload=offload,
        offload_sdxl_only=sdxl_only,
        lowram=lowram,
        half_storage=half_storage,
        upcast_sampling=upcast_sampling,
        channels_last=channels_last,
        compile=compile,
        flags=tuple(name for name, on in given.items() if on),
        unet_dtype=unet_dtype,
        cpu_precision=cpu_decision,
    )


def plan_from_flags(flags, **overrides) -> MemoryPlan:
    """`plan_memory` from a `settings.Flags` (overrides: e.g. cuda_available for tests)."""
    return plan_memory(
        use_cpu_all=flags.cpu_only,
        no_half=flags.no_half,
        no_half_vae=flags.no_half_vae,
        vae_in_bf16=getattr(flags, "vae_in_bf16", False),
        precision="bf16" if getattr(flags, "unet_in_bf16", False) else flags.precision,
        xformers=flags.xformers,
        split_attention=flags.opt_split_attention,
        sdp_attention=flags.opt_sdp_attention,
        sdp_no_mem_attention=flags.opt_sdp_no_mem_attention,
        medvram=flags.medvram,
        medvram_sdxl=flags.medvram_sdxl,
        lowvram=flags.lowvram,
        lowram=getattr(flags, "lowram", False),
        upcast_sampling=getattr(flags, "upcast_sampling", False),
        channels_last=getattr(flags, "opt_channelslast", False),
        compile=getattr(flags, "compile", False),
        **{"cpu_precision": cpu_precision_of(flags), **overrides},
    )


def cpu_precision_of(flags) -> Callable[[], CpuPrecision]:
    """The CPU precision decision for these flags (called only when the plan is the CPU's);
    the matmul probe is cached in the data folder."""
    return partial(
        decide_cpu_precision,
        forced_full=flags.no_half or flags.precision == "full",
        forced_bf16=flags.precision == "bf16" or getattr(flags, "unet_in_bf16", False),
        cache_file=flags.data_dir / PROBE_FILE,
    )


def _cpu_unet_dtype(decision: CpuPrecision | None, half_storage: bool, notes: list[str]):
    """The UNet's dtype on the CPU, None when it is float32 like the rest."""
    if decision is None:
        return None
    log.info("CPU precision: %s", decision.reason)
    if decision.dtype == torch.float32:
        return None
    if half_storage:
        notes.append("--lowram: the UNet keeps fp16 weights computed in float32, not bfloat16")
        return None
    return decision.dtype


def _precision(device, no_half, no_half_vae, precision, bf16_supported, notes):
    if device == "cpu":
        # half precision is much slower than fp32 on CPUs without AMX; A1111 also runs fp32
        if precision == "half":
            notes.append("--precision half ignored on the CPU: float32 is faster there")
        return torch.float32, torch.float32  # the UNet's dtype: _cpu_unet_dtype
    if no_half or precision == "full":
        return torch.float32, torch.float32
    if precision == "bf16":
        if bf16_supported:
            return torch.bfloat16, torch.bfloat16
        notes.append("--precision bf16 ignored: this GPU has no bfloat16; using float16")
    if no_half_vae:
        return torch.float16, torch.float32
    # bf16 has the exponent range of fp32: an SD VAE does not overflow in it as in fp16
    return torch.float16, (torch.bfloat16 if bf16_supported else torch.float16)


def _vae_in_bf16(device, vae_dtype, wanted: bool, no_half_vae: bool, bf16_supported: bool,
                 notes) -> torch.dtype:  # fmt: skip
    """Forge's --vae-in-bf16: the VAE in bfloat16 on the CPU (which keeps it in float32
    otherwise) or on a GPU with bfloat16. bf16 has float32's exponent range, so the VAE does
    not overflow to NaN in it as it does in float16."""
    if not wanted:
        return vae_dtype
    if no_half_vae:
        notes.append("--vae-in-bf16 ignored: --no-half-vae keeps the VAE in float32")
        return vae_dtype
    if device == "cuda" and not bf16_supported:
        notes.append("--vae-in-bf16 ignored: this GPU has no bfloat16")
        return vae_dtype
    return torch.bfloat16


def _attention(device, xformers, installed, split, sdp, sdp_no_mem, notes) -> str:
    wanted = [
        name
        for name, on in (
            ("xformers", xformers),
            ("sdpa-no-mem", sdp_no_mem),
            ("sliced", split),
            ("sdpa", sdp),
        )  # fmt: skip
        if on
    ]
    attention = "sdpa"
    for name in wanted:
        if name == "xformers":
            if device != "cuda":
                notes.append("--xformers ignored: xformers needs a CUDA device; using PyTorch SDPA")
                continue
            if not installed:
                notes.append(
                    "--xformers ignored: the xformers package is not installed "
                    "(pip install xformers); using PyTorch SDPA"
                )
                continue
        if name == "sdpa-no-mem" and device != "cuda":
            notes.append(
                "--opt-sdp-no-mem-attention: the memory-efficient SDPA kernel exists only on "
                "CUDA, so on the CPU this is plain SDPA (already deterministic)"
            )
        attention = name
        break
    others = [n for n in wanted if n != attention and n != "xformers"]
    if attention != "sdpa" and others:
        notes.append(f"several attention flags given; using {ATTENTION_LABELS[attention]}")
    return attention


def _offload(device, medvram, medvram_sdxl, lowvram, notes) -> tuple[str, bool]:
    asked = [f for f, on in (("--lowvram", lowvram), ("--medvram", medvram),
                             ("--medvram-sdxl", medvram_sdxl)) if on]  # fmt: skip
    if not asked:
        return "none", False
    if device != "cuda":
        notes.append(
            f"{' '.join(asked)} ignored: offloading moves model parts between system RAM and "
            "GPU memory; on the CPU the whole model is in RAM already"
        )
        return "none", False
    if lowvram:
        return "sequential", False
    return "model", medvram_sdxl and not medvram


def cuda_memory_stats() -> dict:
    """CUDA memory in A1111's /sdapi/v1/memory shape (bytes)."""
    free, total = torch.cuda.mem_get_info()
    stats = torch.cuda.memory_stats()
    return {
        "system": {"free": free, "used": total - free, "total": total},
        "active": {"current": stats.get("active_bytes.all.current", 0),
                   "peak": stats.get("active_bytes.all.peak", 0)},
        "allocated": {"current": stats.get("allocated_bytes.all.current", 0),
                      "peak": stats.get("allocated_bytes.all.peak", 0)},
        "reserved": {"current": stats.get("reserved_bytes.all.current", 0),
                     "peak": stats.get("reserved_bytes.all.peak", 0)},
        "inactive": {"current": stats.get("inactive_split_bytes.all.current", 0),
                     "peak": stats.get("inactive_split_bytes.all.peak", 0)},
        "events": {"retries": stats.get("num_alloc_retries", 0),
                   "oom": stats.get("num_ooms", 0)},
    }  # fmt: skip
