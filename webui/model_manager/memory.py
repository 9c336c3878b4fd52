"""Device, precision and attention backend: decided once from the flags, applied per pipeline.

PyTorch's scaled-dot-product attention (SDPA, memory-efficient kernels) is the default;
`--xformers` uses xformers when it is installed and a CUDA device is present, and
otherwise says why it fell back; `--opt-split-attention` slices attention for the lowest
memory use.

This module must never import a UI library.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemoryPlan:
    device: str
    dtype: torch.dtype
    attention: str  # "sdpa", "xformers" or "sliced"
    notes: tuple[str, ...] = ()

    @property
    def description(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return f"{self.device} · {dtype} · attention: {self.attention}"


def plan_memory(
    *,
    use_cpu_all: bool = False,
    no_half: bool = False,
    precision: str = "autocast",
    xformers: bool = False,
    split_attention: bool = False,
    cuda_available: bool | None = None,
    xformers_installed: bool | None = None,
) -> MemoryPlan:
    """Pick device, dtype and attention from the A1111 flags; explain every fallback."""
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if xformers_installed is None:
        xformers_installed = importlib.util.find_spec("xformers") is not None
    notes: list[str] = []
    device = "cuda" if cuda_available and not use_cpu_all else "cpu"
    if device == "cpu":
        # half precision is slower than fp32 on most CPUs; A1111 also runs fp32 there
        dtype = torch.float32
    elif no_half or precision == "full":
        dtype = torch.float32
    else:
        dtype = torch.float16

    attention = "sdpa"
    if xformers:
        if device != "cuda":
            notes.append("--xformers ignored: xformers needs a CUDA device; using PyTorch SDPA")
        elif not xformers_installed:
            notes.append(
                "--xformers ignored: the xformers package is not installed "
                "(pip install xformers); using PyTorch SDPA"
            )
        else:
            attention = "xformers"
    if split_attention and attention == "sdpa":
        attention = "sliced"
    for note in notes:
        log.warning(note)
    return MemoryPlan(device=device, dtype=dtype, attention=attention, notes=tuple(notes))


def apply_attention(pipe, plan: MemoryPlan) -> None:
    """Set the attention implementation of a freshly loaded pipeline."""
    if plan.attention == "xformers":
        pipe.enable_xformers_memory_efficient_attention()
    elif plan.attention == "sliced":
        pipe.enable_attention_slicing()
    else:
        # diffusers' default processor on torch 2 is SDPA; make it explicit
        from diffusers.models.attention_processor import AttnProcessor2_0

        pipe.unet.set_attn_processor(AttnProcessor2_0())
        pipe.vae.set_attn_processor(AttnProcessor2_0())
