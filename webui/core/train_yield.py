"""Other jobs between training steps: the option `training_yield_to_jobs`.

A training job (LoRA, `train_lora.py`; textual inversion, `ti_train.py`) holds the worker
for minutes or hours. With the option on (the default: on a shared server nobody expects a
ten-second picture to wait behind someone's two-hour training), the training loop calls
`TrainingYield.between_steps()` after each optimizer step; it asks the queue
(`Job.run_waiting`, set by `JobQueue` while the job runs on its own executor) to run the
jobs that were waiting at that moment and that `accepts` takes, one after the other, on
the same thread and device, each through the normal runner (its own states, progress,
events, saved files, infotext, interrupt; a failing one fails alone), then training goes
on. Jobs submitted while they run wait for the next step, so training always advances.

Which jobs run between steps: txt2img, img2img, extras and interrogate jobs whose
checkpoint (and refiner, hires and X/Y/Z checkpoints) is the one being trained on, and
whose prompts do not use the network being trained (`<lora:its name>`, the embedding's
name: those get the finished file after training). Every other job (another checkpoint:
loading it beside the training model could run out of memory; load/unload, merges, other
training) stays queued, with its position shown, until training ends.

While they run, `generation_state` puts the shared model as a generation job expects it
and gives it back exactly: every peft adapter disabled (the LoRA being trained included;
generation LoRAs that stay resident were disabled already), every module in eval mode,
gradient checkpointing off, no autograd, the RNG of the device forked; afterwards each
module's training flag, each parameter's `requires_grad`, each adapter layer's active
adapters, enabled flag and scales, and the checkpointing flags are as they were. The
optimizer, LR schedule and the trained tensors are never touched, so the run ends with
the same weights as one with no job in between. A textual-inversion embedding lives in the
trainer's prompt encoder, never in the text encoder, so jobs in between cannot see it.

This module must never import a UI library, and never changes what a job computes: it
only chooses which waiting jobs may run now and restores the model around them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from ..option_defs import OPTION_DEFS
from .job import Job
from .prompts import extract_extra_networks, lora_requests

log = logging.getLogger(__name__)

KEY = "training_yield_to_jobs"
DEFAULT = next(d.default for d in OPTION_DEFS if d.key == KEY)
INLINE_KINDS = frozenset({"txt2img", "img2img", "extras", "interrogate"})
CHECKPOINT_KINDS = frozenset({"txt2img", "img2img"})
PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@dataclass
class Trained:
    """What a training run holds: the checkpoint's path and how its network is named in
    prompts (a LoRA's output name, an embedding's name)."""

    checkpoint: Path
    lora: str | None = None
    embedding: str | None = None


class TrainingYield:
    """Runs waiting jobs between the steps of one training job (see the module doc)."""

    def __init__(self, job: Job, models: Any, pipe: Any, trained: Trained):
        self.job, self.models, self.pipe, self.trained = job, models, pipe, trained
        self.ran = 0  # jobs run between this training's steps

    @classmethod
    def of(cls, job: Job, models: Any, pipe: Any, trained: Trained) -> TrainingYield | None:
        """None when the job's option is off or it does not run on a queue's local
        executor (a Ray worker's copy of the job: the other workers take other jobs)."""
        if job.run_waiting is None or not bool(job.options.get(KEY, DEFAULT)):
            return None
        return cls(job, models, pipe, trained)

    def between_steps(self) -> int:
        """Run the jobs waiting now that may run on this model; returns how many ran."""
        run_waiting = self.job.run_waiting
        if run_waiting is None or self.job.interrupt_requested:
            return 0
        ran = run_waiting(self.accepts, self._paused)
        self.ran += ran
        return ran

    @contextmanager
    def _paused(self) -> Iterator[None]:
        progress = self.job.progress
        text, started = progress.text, time.monotonic()
        progress.note(f"{text} (paused: running waiting jobs)" if text else "Paused")
        try:
            with generation_state([getattr(self.pipe, n, None) for n in PARTS], self._device()):
                yield
        finally:
            progress.note(text)
            progress.exclude(time.monotonic() - started)  # the ETA counts training only

    def _device(self) -> torch.device:
        return torch.device(getattr(self.pipe, "_execution_device", "cpu"))

    # --- which jobs ---------------------------------------------------------------------
    def accepts(self, job: Job) -> bool:
        """True for a job that may run between steps now (see the module doc)."""
        if job is self.job or job.kind not in INLINE_KINDS:
            return False
        if job.kind not in CHECKPOINT_KINDS:
            return True
        try:
            return self._same_checkpoint(job) and not self._uses_trained(job.params)
        except Exception:  # a name that does not resolve: it waits and fails normally later
            log.debug("job %s waits for the training to end", job.id, exc_info=True)
            return False

    def _same_checkpoint(self, job: Job) -> bool:
        params = job.params
        main = getattr(params, "checkpoint", None) or job.options.get("sd_model_checkpoint")
        hires = getattr(getattr(params, "hires", None), "checkpoint", None)
        names = [main or None, getattr(params, "refiner_checkpoint", None), hires]
        if _script_changes_checkpoint(params):
            return False
        for index, name in enumerate(names):
            if index and not name:
                continue  # no refiner, hires on the first pass's checkpoint
            if Path(self.models.resolve(name).path) != Path(self.trained.checkpoint):
                return False
        return True

    def _uses_trained(self, params: Any) -> bool:
        texts = _prompts(params)
        if self.trained.lora:
            wanted = self.trained.lora.lower()
            for text in texts:
                requests, _ = lora_requests(extract_extra_networks(text)[1])
                if any(Path(r.name).stem.lower() == wanted or r.name.lower() == wanted
                       for r in requests):  # fmt: skip
                    return True
        name = (self.trained.embedding or "").lower()
        return bool(name) and any(name in text.lower() for text in texts)


def _prompts(params: Any) -> list[str]:
    hires = getattr(params, "hires", None)
    found = [getattr(params, "prompt", ""), getattr(params, "negative_prompt", ""),
             getattr(hires, "prompt", ""), getattr(hires, "negative_prompt", "")]  # fmt: skip
    return [text for text in found if isinstance(text, str) and text]


def _script_changes_checkpoint(params: Any) -> bool:
    """An X/Y/Z plot (or any script) with an axis of checkpoints."""
    script = getattr(params, "script", None)
    if not script:
        return False
    args = (getattr(params, "extension_args", None) or {}).get(script) or {}
    return any(str(key).endswith("_type") and "checkpoint" in str(value).lower()
               for key, value in dict(args).items())  # fmt: skip


# --- the model as generation expects it, and back ---------------------------------------
@dataclass
class ModelState:
    """Everything `generation_state` changes on the model's parts, to put back exactly."""

    modes: list[tuple[torch.nn.Module, bool]] = field(default_factory=list)
    grads: list[tuple[torch.nn.Parameter, bool]] = field(default_factory=list)
    layers: list[tuple[BaseTunerLayer, list[str], bool, dict]] = field(default_factory=list)
    checkpointing: list[tuple[torch.nn.Module, bool]] = field(default_factory=list)

    @classmethod
    def capture(cls, parts: Sequence[torch.nn.Module]) -> ModelState:
        state = cls()
        for part in parts:
            for module in part.modules():
                state.modes.append((module, module.training))
                if isinstance(module, BaseTunerLayer):
                    scales = dict(getattr(module, "scaling", {}) or {})
                    state.layers.append((module, list(module.active_adapters),
                                         module.disable_adapters, scales))  # fmt: skip
                if isinstance(getattr(module, "gradient_checkpointing", None), bool):
                    state.checkpointing.append((module, module.gradient_checkpointing))
            state.grads += [(q, q.requires_grad) for q in part.parameters()]
        return state

    def for_generation(self) -> None:
        """Adapters off, eval mode, no gradient checkpointing."""
        for layer, *_ in self.layers:
            layer.enable_adapters(False)
        for module, _ in self.modes:
            module.training = False
        for module, _ in self.checkpointing:
            module.gradient_checkpointing = False

    def restore(self, parts: Sequence[torch.nn.Module]) -> None:
        """As captured; adapter layers a job added since (its LoRAs) stay disabled and
        parameters it added stay frozen."""
        known = {id(layer) for layer, *_ in self.layers}
        for part in parts:
            for module in part.modules():
                if isinstance(module, BaseTunerLayer) and id(module) not in known:
                    module.enable_adapters(False)
            for q in part.parameters():
                q.requires_grad_(False)
        for layer, active, disabled, scales in self.layers:
            layer.set_adapter(active)
            layer.enable_adapters(not disabled)
            scaling = getattr(layer, "scaling", None)
            if isinstance(scaling, dict):
                scaling.update(scales)
        for q, flag in self.grads:
            q.requires_grad_(flag)
        for module, mode in self.modes:
            module.training = mode
        for module, flag in self.checkpointing:
            module.gradient_checkpointing = flag


@contextmanager
def generation_state(parts: Sequence[Any], device: torch.device | None = None) -> Iterator[None]:
    """The model parts (None: absent) as a generation job expects them for the block,
    without autograd and with the RNG of the CPU (and the CUDA device) forked; then
    exactly as they were."""
    modules = [p for p in parts if isinstance(p, torch.nn.Module)]
    state = ModelState.capture(modules)
    cuda = [device.index or 0] if device is not None and device.type == "cuda" else []
    try:
        state.for_generation()
        with torch.no_grad(), torch.random.fork_rng(devices=cuda):
            yield
    finally:
        state.restore(modules)


__all__ = ["DEFAULT", "INLINE_KINDS", "KEY", "Trained", "TrainingYield", "generation_state"]
