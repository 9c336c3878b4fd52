"""Out of memory during a job: a clear failure, memory given back, and optionally one retry.

`run_guarded` runs a job's generation. When it runs out of memory (CUDA or system RAM),
the references the failed attempt held are dropped, the allocator caches are emptied,
and then either the job fails with `OutOfMemoryError` (a message saying what ran out and
what to try), or, with the option "retry with lower memory", the generation runs once
more with VAE tiling and slicing, and on CUDA model offload, and the images' infotext
says so. Either way the next job starts with the memory free.

This module must never import a UI library.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from ..errors import UserError
from ..model_manager.cpu_precision import precision_notes
from ..model_manager.memory import MemoryPlan
from ..model_manager.optimize import lower_memory
from .run import MemoryRun
from .speed import speed_patches

log = logging.getLogger(__name__)

T = TypeVar("T")
_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory",
            "failed to allocate", "not enough memory")  # fmt: skip


class OutOfMemoryError(RuntimeError, UserError):
    """A job ran out of memory; the message is meant for the user."""


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError | torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _MARKERS)


def release_memory(device: str) -> None:
    """Give memory back after a failed attempt: Python garbage, CUDA cache, C heap."""
    gc.collect()
    if device == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if sys.platform.startswith("linux"):
        try:  # return freed heap pages to the system, so RSS falls back too
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def run_guarded(
    generate: Callable[[MemoryRun], T],
    *,
    memory: MemoryRun,
    pipe: Any,
    plan: MemoryPlan,
    medvram_sdxl: bool,
    retry: bool,
    what: str,
) -> T:
    """`generate(memory)` with the Speed switches on (`webui.core.speed`); on out-of-memory
    release the memory, then fail clearly or call `generate` once more with a lower-memory
    `MemoryRun` (whose notes end up in `memory`). `medvram_sdxl`: the model is one
    --medvram-sdxl offloads."""
    memory.notes.update(precision_notes(pipe))  # "UNet precision: bfloat16" (CPU bf16)
    try:
        with speed_patches(pipe, memory):  # token merging, DeepCache
            return generate(memory)
    except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled here
        if not is_out_of_memory(exc):
            raise
        first = _short(exc)
    # the failed attempt's frames (and their tensors) are gone once the except block ends
    release_memory(plan.device)
    log.warning("Out of memory while generating %s: %s", what, first)
    if not retry:
        raise OutOfMemoryError(_message(what, first, plan, retried=False))
    low = memory.lower()
    try:
        with (
            lower_memory(pipe, plan, medvram_sdxl) as measures,
            speed_patches(pipe, low),
        ):
            measures.insert(0, "VAE tiling and slicing")
            low.notes["Low-memory retry"] = " + ".join(measures)
            result = generate(low)
    except Exception as exc:  # noqa: BLE001
        if not is_out_of_memory(exc):
            raise
        second = _short(exc)
    else:
        memory.notes.update(low.notes)
        return result
    release_memory(plan.device)
    raise OutOfMemoryError(_message(what, second, plan, retried=True))


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _message(what: str, cause: str, plan: MemoryPlan, *, retried: bool) -> str:
    where = "GPU memory" if plan.device == "cuda" else "system RAM"
    tried = (
        " A retry with lower memory (VAE tiling and slicing"
        + (", model offload" if plan.device == "cuda" else "")
        + ") ran out too."
        if retried
        else ""
    )
    hints = "a smaller size or batch"
    if plan.device == "cuda":
        hints += ", --medvram or --lowvram"
    if not retried:
        hints += ", or the setting 'Retry with lower memory after running out of memory'"
    return f"Out of {where} while generating {what} ({cause}).{tried} The memory was released; try {hints}."
