"""First Block Cache and TaylorSeer on a transformer denoiser (FLUX), through diffusers'
cache hooks (`CacheMixin.enable_cache`), for one pipeline call at a time.

- First Block Cache (ParaAttention's "dynamic caching"): every call runs the first block;
  when its output moved less than `threshold` (relative mean absolute change) since the
  last full call, the other blocks are skipped and their cached residual is added.
- TaylorSeer (Liu et al. 2025): every `interval`-th step runs the attention layers, the
  steps in between predict their outputs from a first-order Taylor series of the earlier
  ones; the first steps (`WARMUP`) always run, to gather the series.

The hooks are put on when the block starts and taken off when it ends, so every job (and
hires pass) starts with empty caches and a job without a cache runs the plain model.
Only one cache at a time: with both asked for, First Block Cache runs (`choose`).

This module must never import `webui.core` or a UI library.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

WARMUP = 3  # TaylorSeer's full steps before it predicts (diffusers' default)


def supports(pipe: Any) -> bool:
    """The pipeline's denoiser is a transformer that takes diffusers' cache hooks."""
    return hasattr(getattr(pipe, "transformer", None), "enable_cache")


def choose(first_block: float, taylorseer: int) -> dict[str, str]:
    """The infotext field of the cache that runs ({} for none)."""
    if first_block > 0:
        return {"First Block Cache": f"{first_block:g}"}
    if taylorseer >= 2:
        return {"TaylorSeer": str(taylorseer)}
    return {}


@contextmanager
def transformer_cache(pipe: Any, first_block: float, taylorseer: int) -> Iterator[None]:
    """The cache `choose` picks on `pipe.transformer` while the block runs."""
    from diffusers import FirstBlockCacheConfig, TaylorSeerCacheConfig

    transformer = pipe.transformer
    if first_block > 0:
        config: Any = FirstBlockCacheConfig(threshold=first_block)
    elif taylorseer >= 2:
        config = TaylorSeerCacheConfig(cache_interval=taylorseer, disable_cache_before_step=WARMUP,
                                       taylor_factors_dtype=transformer.dtype)  # fmt: skip
    else:
        yield
        return
    transformer.enable_cache(config)
    try:
        yield
    finally:
        transformer.disable_cache()
