"""The Speed section of a job: switches that trade exactness of the image for time.

Token merging (tomesd) and the denoiser's cache, applied around one generation (and its
low-memory retry) by `webui.core.oom.run_guarded`. Each switch that is on writes its
infotext field into the job's memory notes: "Token merging ratio" (A1111's), "DeepCache"
(the interval) and "DeepCache branch" (when not 0). The cache depends on the denoiser:
UNet families (SD 1.x, 2.x, XL) get DeepCache (`webui.model_manager.deepcache`);
transformer families (FLUX) First Block Cache or TaylorSeer
(`webui.model_manager.transformer_cache`; infotext "First Block Cache" with the threshold,
"TaylorSeer" with the interval).

CFG scale 1 and the negative guidance minimum sigma, the other per-step savings, are
done by the conditioning hooks (`webui.core.composable`).

This module must never import a UI library, and never leave a patch on a pipeline after
its context ends.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..model_manager import deepcache, transformer_cache
from ..model_manager.optimize import token_merging
from .run import MemoryRun

log = logging.getLogger(__name__)


@contextmanager
def speed_patches(pipe: Any, memory: MemoryRun) -> Iterator[None]:
    """The job's token merging and denoiser cache on `pipe` while the block runs."""
    if memory.token_merging_ratio > 0:
        memory.notes["Token merging ratio"] = f"{memory.token_merging_ratio:g}"
    with token_merging(pipe, memory.token_merging_ratio), denoiser_cache(pipe, memory), \
            transformer_denoiser_cache(pipe, memory):  # fmt: skip
        yield


@contextmanager
def denoiser_cache(pipe: Any, memory: MemoryRun) -> Iterator[None]:
    """DeepCache on a UNet, when the job asks for it (an interval of 2 or more)."""
    interval, branch = memory.deepcache_interval, memory.deepcache_branch
    if interval < 2:
        yield
        return
    if not deepcache.supports(pipe):
        log.warning("DeepCache is for UNet models; %s has none: off for this job",
                    type(pipe).__name__)  # fmt: skip
        yield
        return
    highest = deepcache.highest_branch(pipe)
    if branch > highest:
        log.warning("DeepCache branch %d is deeper than this UNet has: %d", branch, highest)
        branch = highest
    memory.notes["DeepCache"] = str(interval)
    if branch:
        memory.notes["DeepCache branch"] = str(branch)
    with deepcache.deep_cache(pipe, interval, branch):
        yield


@contextmanager
def transformer_denoiser_cache(pipe: Any, memory: MemoryRun) -> Iterator[None]:
    """First Block Cache or TaylorSeer on a transformer, when the job asks for one."""
    first_block, taylorseer = memory.first_block_cache_threshold, memory.taylorseer_interval
    fields = transformer_cache.choose(first_block, taylorseer)
    if not fields:
        yield
        return
    if not transformer_cache.supports(pipe):
        log.warning("First Block Cache and TaylorSeer are for transformer models (FLUX); "
                    "%s has none: off for this job", type(pipe).__name__)  # fmt: skip
        yield
        return
    if first_block > 0 and taylorseer >= 2:
        log.warning("First Block Cache and TaylorSeer both asked for: First Block Cache runs")
    memory.notes.update(fields)
    with transformer_cache.transformer_cache(pipe, first_block, taylorseer):
        yield
