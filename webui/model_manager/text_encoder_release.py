"""Releasing a loaded model's big text encoders once a job's prompts are encoded.

FLUX.1's T5-XXL (4.7 B parameters, ~9.5 GB in bf16), SD 3.5's T5-XXL and Z-Image's
Qwen3-4B are needed only to encode prompts; the option `text_encoder_release`
(Settings > Optimizations) frees them afterwards, as Forge and ComfyUI do on a machine
short of RAM:

- "Always": after every job (and, in txt2img without hires. fix, as soon as the prompts
  are encoded, before the denoising loop); "Never": keep them; "Auto" (the default):
  "Always" when this machine has less than `AUTO_TOTAL_RAM` (48 GiB: FLUX.1's bf16
  transformer and T5 together need ~34 GB, so below that the encoder's 9.5 GB decide
  whether the job fits) and the model's big encoders hold at least `AUTO_MIN_BYTES`
  (1 GiB; freeing a small encoder saves little and costs a reload every job).
- On CUDA (without --medvram/--lowvram, whose offload hooks already move them) the
  encoders are moved to the CPU; on the CPU their parameters are emptied in place (the
  module objects, their hooks and every `from_pipe` view sharing them stay), and `restore`
  reads them back from the checkpoint file, its module files or its diffusers folder
  (the family's `text_encoder_from_file`), logging the time it took.
- The model manager restores them whenever a model is leased (`ModelManager.acquire`),
  so nothing ever runs an emptied encoder; CLIP-L and CLIP-G (small) are never released.

This module must never import a UI library.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from .loader import LoadedModel
from .memory import MemoryPlan

log = logging.getLogger(__name__)

RELEASE_CHOICES = ("Auto", "Always", "Never")
AUTO_TOTAL_RAM = 48 * 2**30
AUTO_MIN_BYTES = 2**30
ON_CPU, FROM_FILE = "cpu", "file"  # how a released encoder comes back


def parameter_bytes(module: torch.nn.Module) -> int:
    """The bytes the module's parameters hold (tied ones once)."""
    return sum(p.numel() * p.element_size() for p in module.parameters())


def big_encoders(model: LoadedModel) -> list[tuple[str, torch.nn.Module]]:
    """The model's big text encoders that are loaded (the family's `big_text_encoders`)."""
    names = getattr(model.family, "big_text_encoders", ())
    found = [(name, getattr(model.pipe, name, None)) for name in names]
    return [(name, module) for name, module in found if isinstance(module, torch.nn.Module)]


def total_ram() -> int:
    """This machine's RAM in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def wants_release(mode: str, model: LoadedModel, ram: int | None = None) -> bool:
    """Whether the option's `mode` frees this model's big encoders (see the docstring)."""
    if mode not in RELEASE_CHOICES:
        raise ValueError(f"text_encoder_release must be one of {RELEASE_CHOICES}: {mode!r}")
    held = sum(parameter_bytes(m) for name, m in big_encoders(model) if name not in model.released)
    if mode == "Never" or held == 0:
        return False
    if mode == "Always":
        return True
    return held >= AUTO_MIN_BYTES and (ram if ram is not None else total_ram()) < AUTO_TOTAL_RAM


def release(model: LoadedModel, plan: MemoryPlan) -> int:
    """Free the model's big text encoders (see the docstring); the bytes released."""
    freed = 0
    for name, module in big_encoders(model):
        if name in model.released:
            continue
        if plan.device != "cpu" and plan.offload != "none":
            continue  # the offload hooks keep it on the CPU between uses already
        size = parameter_bytes(module)
        if plan.device != "cpu":
            module.to("cpu")
            model.released[name] = ON_CPU
        else:
            for parameter in module.parameters():
                parameter.data = torch.empty(0, dtype=parameter.dtype, device=parameter.device)
            model.released[name] = FROM_FILE
        freed += size
        log.info("Released the text encoder %s of %s (%.1f MB)", name, model.path.name, size / 1e6)
    return freed


def restore(model: LoadedModel, plan: MemoryPlan) -> None:
    """Bring back the encoders `release` freed, logging what each reload cost."""
    for name, how in list(model.released.items()):
        started = time.perf_counter()
        module = getattr(model.pipe, name)
        if how == ON_CPU:
            module.to(plan.device)
        else:
            _refill(module, _from_file(model, name, plan.load_dtype))
        del model.released[name]
        log.info("Reloaded the text encoder %s of %s in %.1fs", name, model.path.name,
                 time.perf_counter() - started)  # fmt: skip


def _from_file(model: LoadedModel, name: str, dtype: torch.dtype) -> Any:
    """A fresh copy of the encoder `name`, from the folder or the family's files."""
    if model.path.is_dir():
        module_class = type(getattr(model.pipe, name))
        return module_class.from_pretrained(
            model.path, subfolder=name, torch_dtype=dtype, local_files_only=True
        )
    return model.family.text_encoder_from_file(model.path, model.spec, model.modules, name, dtype)


@torch.no_grad()
def _refill(module: torch.nn.Module, fresh: torch.nn.Module) -> None:
    """Put `fresh`'s weights into the emptied `module`, each in the dtype and on the device
    its emptied parameter kept (what the memory plan made of it after loading)."""
    weights = dict(fresh.named_parameters())
    for name, parameter in module.named_parameters():
        parameter.data = weights[name].data.to(parameter.device, parameter.dtype)


@dataclass
class JobRelease:
    """One job's use of the option: `release` once its prompts are encoded (nothing when
    the option keeps them), `restore` before it encodes them again (an out-of-memory
    retry); decided once, when the job has leased its model."""

    model: LoadedModel
    plan: MemoryPlan
    enabled: bool

    @classmethod
    def of(cls, mode: str, model: LoadedModel, plan: MemoryPlan) -> JobRelease:
        return cls(model, plan, wants_release(mode, model))

    def release(self) -> None:
        if self.enabled:
            release(self.model, self.plan)

    def restore(self) -> None:
        restore(self.model, self.plan)
