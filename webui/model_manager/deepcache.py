"""DeepCache for UNet models: reuse the UNet's deep features between denoiser calls.

DeepCache (Ma et al., 2023, "DeepCache: Accelerating Diffusion Models for Free") computes
the whole UNet every `interval` calls and, in the calls between, only the shallow branch
chosen by `branch` (the paper's cache branch id: 0 is the shallowest, the input conv
and the last layer of the last up block): every deeper block returns what it returned in
the last full call. The choice of which block is skipped is the `DeepCache` package's
(`DeepCacheSDHelper.is_skip_step`, version 0.1.1), rewritten here on diffusers' hook
registry (`diffusers.hooks.HookRegistry`) because the package

- keeps one cache whatever the batch: a call with other rows (NGMS leaves out the
  negative rows every other call) would join cached features of the wrong batch;
- finds the step from the index of the timestep in `pipe.scheduler.timesteps` of the one
  pipeline it was given (img2img, inpainting and the refiner run other pipeline objects);
- replaces `forward` attributes by hand instead of the registry's removable hooks.

Here the cache is kept per UNet input shape (rows, channels, height, width); a call whose
timestep is not lower than the last one starts a new run (a new batch, a hires pass, a
1-step job), whose first call is always full. On second-order samplers (Heun, DPM2) two
calls of a step may share a timestep, which also counts as a new run: they save less.

This module must never import a UI library, and never leave a hook on a UNet after
`deep_cache` ends (also when the generation fails).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)

HOOK = "webui_deepcache"
MAX_BRANCH = 11  # 4 down blocks x 3 layers: branch ids 0..11 (SD 1.x/2.x; SDXL: 0..8)


@dataclass
class DeepCacheStats:
    """What one `deep_cache` did: UNet calls, and those that reused the deep features."""

    calls: int = 0
    cached_calls: int = 0


@dataclass
class _State:
    interval: int
    block_id: int
    layer_id: int
    stats: DeepCacheStats = field(default_factory=DeepCacheStats)
    full: bool = True
    key: tuple[int, ...] = ()
    last_t: float | None = None
    counts: dict[tuple[int, ...], int] = field(default_factory=dict)
    cache: dict[tuple[tuple[int, ...], str], Any] = field(default_factory=dict)

    def begin(self, sample: torch.Tensor, timestep: Any) -> None:
        """Before a UNet call: a full call or one that reuses the cache."""
        t = float(timestep.flatten()[0]) if torch.is_tensor(timestep) else float(timestep)
        if self.last_t is not None and t >= self.last_t:  # a new run: nothing carries over
            self.counts.clear()
            self.cache.clear()
        self.last_t = t
        self.key = tuple(sample.shape)
        count = self.counts.get(self.key, -1) + 1
        self.counts[self.key] = count
        self.full = count % self.interval == 0
        self.stats.calls += 1
        self.stats.cached_calls += not self.full

    def deep(self, block: int, layer: int, kind: str) -> bool:
        """Whether a block lies below the cached branch (the package's rule)."""
        if kind == "mid" or block > self.block_id:
            return True
        if block < self.block_id:
            return False
        return layer >= self.layer_id if kind == "down" else layer > self.layer_id


def _hook_classes():
    """(UNet hook, block hook): diffusers' `ModelHook`s, which run inside the module's
    forward, after the torch pre-hooks that rebuild the batch (`webui.core.composable`)."""
    from diffusers.hooks import ModelHook

    class UNetHook(ModelHook):
        """On the UNet: decides, per call, whether the deep blocks run."""

        def __init__(self, state: _State):
            super().__init__()
            self.state = state

        def pre_forward(self, module, *args, **kwargs):
            sample = args[0] if args else kwargs["sample"]
            timestep = args[1] if len(args) > 1 else kwargs["timestep"]
            self.state.begin(sample, timestep)
            return args, kwargs

    class BlockHook(ModelHook):
        """On a block below the branch: its output of the last full call, when not full."""

        def __init__(self, state: _State, name: str):
            super().__init__()
            self.state, self.name = state, name

        def new_forward(self, module, *args, **kwargs):
            state = self.state
            slot = (state.key, self.name)
            if not state.full and slot in state.cache:
                return state.cache[slot]
            output = self.fn_ref.original_forward(*args, **kwargs)
            state.cache[slot] = output
            return output

    return UNetHook, BlockHook


def _deep_blocks(unet, state: _State) -> Iterator[tuple[str, torch.nn.Module]]:
    """(name, module) of every UNet part below the branch, in the package's numbering
    (down blocks from the input; up blocks and their layers from the output)."""
    for i, block in enumerate(unet.down_blocks):
        for j, part in enumerate(getattr(block, "attentions", None) or []):
            if state.deep(i, j, "down"):
                yield f"down{i}.attn{j}", part
        for j, part in enumerate(block.resnets):
            if state.deep(i, j, "down"):
                yield f"down{i}.resnet{j}", part
        for part in block.downsamplers or []:
            if state.deep(i, len(block.resnets), "down"):
                yield f"down{i}.down", part
        if state.deep(i, 0, "down"):
            yield f"down{i}", block
    yield "mid", unet.mid_block
    count = len(unet.up_blocks)
    for k, block in enumerate(unet.up_blocks):
        i, layers = count - k - 1, len(block.resnets)
        for j, part in enumerate(getattr(block, "attentions", None) or []):
            if state.deep(i, layers - j - 1, "up"):
                yield f"up{i}.attn{j}", part
        for j, part in enumerate(block.resnets):
            if state.deep(i, layers - j - 1, "up"):
                yield f"up{i}.resnet{j}", part
        for part in block.upsamplers or []:
            if state.deep(i, 0, "up"):
                yield f"up{i}.up", part
        if state.deep(i, 0, "up"):
            yield f"up{i}", block


def supports(pipe: Any) -> bool:
    """Whether the pipeline's denoiser is a UNet with down, mid and up blocks."""
    unet = getattr(pipe, "unet", None)
    return all(hasattr(unet, name) for name in ("down_blocks", "mid_block", "up_blocks"))


def highest_branch(pipe: Any) -> int:
    """The deepest branch id of the pipeline's UNet (its down blocks x 3 layers, less 1)."""
    return len(pipe.unet.down_blocks) * 3 - 1


def check_branch(pipe: Any, branch: int) -> None:
    """A branch id the UNet has; ValueError otherwise."""
    highest = highest_branch(pipe)
    if not 0 <= branch <= highest:
        raise ValueError(f"DeepCache branch {branch} does not exist in this UNet (0-{highest})")


@contextmanager
def deep_cache(pipe: Any, interval: int, branch: int = 0) -> Iterator[DeepCacheStats | None]:
    """DeepCache on the pipeline's UNet while the block runs; yields its call counts
    (None: off, an interval below 2). Hooks are removed on exit."""
    if interval < 2:
        yield None
        return
    from diffusers.hooks import HookRegistry

    check_branch(pipe, branch)
    unet = pipe.unet
    state = _State(interval, block_id=branch // 3, layer_id=branch % 3)
    unet_hook, block_hook = _hook_classes()
    registries = []
    try:
        for name, module in _deep_blocks(unet, state):
            registry = HookRegistry.check_if_exists_or_initialize(module)
            registries.append(registry)
            registry.register_hook(block_hook(state, name), HOOK)
        registry = HookRegistry.check_if_exists_or_initialize(unet)
        registries.append(registry)
        registry.register_hook(unet_hook(state), HOOK)
        yield state.stats
    finally:
        for registry in registries:
            registry.remove_hook(HOOK, recurse=False)
        state.cache.clear()
        log.debug("DeepCache: %d of %d UNet calls reused deep features",
                  state.stats.cached_calls, state.stats.calls)  # fmt: skip
