"""The checkpoints one job uses besides its main one: the refiner and the hires. fix one.

The worker gives every generation a `JobCheckpoints` (`RunContext.checkpoints`). `lease`
resolves and loads a checkpoint through the model manager, so its RAM cache rules apply
(`sd_checkpoints_limit`, --lowram), and finds its model family; a checkpoint the job
already holds is not loaded twice. `use` is called before a pass with one of them: when
the cache keeps fewer models than the job holds and the models sit whole on a GPU (no
offloading), the job's other models wait in system RAM, so that the main model and the
refiner are never both on the GPU unless the cache would keep both. `close` puts the
models the cache still keeps back on the GPU at the end of the job.

A transformer-only file (FLUX.1, SD 3.5, Z-Image) is completed from the job's module
files (Forge's "VAE / Text Encoder", `modules`), each checkpoint taking the kinds it lacks.

`networks` (from the worker) puts the job's LoRAs and VAE on each other checkpoint it
leases, as on the main one, for the job only: `close` takes them off again (A1111 applies
the job's networks to whichever model runs, the refiner and the hires one too).

This module must never import a UI library or change global options.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:
    from ..model_manager.manager import Lease, ModelManager
    from ..model_manager.registry import CheckpointInfo
    from .families import Families, Family

log = logging.getLogger(__name__)


class IncompatibleCheckpointError(ValueError, UserError):
    """A refiner or hires. checkpoint that cannot continue the job's latents."""


class JobCheckpoints:
    """The leases of one job (the main checkpoint's first); only the worker thread uses it."""

    def __init__(
        self,
        models: ModelManager,
        families: Families,
        main: Lease,
        family: Family,
        networks: Callable[[Lease, Family], AbstractContextManager[Any]] | None = None,
        modules: Sequence[str] = (),
    ):
        self.models, self.families = models, families
        self._modules = tuple(modules)  # the job's "VAE / Text Encoder" files (Forge's)
        self._held: dict[Path, tuple[Lease, Family]] = {main.info.path: (main, family)}
        self._networks = networks  # the job's LoRAs and VAE, put on another checkpoint
        self._applied = ExitStack()  # those networks, taken off when the job ends

    def info(self, name: str) -> CheckpointInfo:
        """The checkpoint `name` means, hashed (for the infotext) but not loaded."""
        info = self.models.resolve(name)
        if self.models.hashing:
            self.models.registry.ensure_hash(info)
        return info

    def lease(self, name: str) -> tuple[Lease, Family]:
        """The loaded checkpoint `name` (a title, name or hash) and its family."""
        info = self.models.resolve(name)
        held = self._held.get(info.path)
        if held is not None:
            return held
        needed = self.models.needed_modules(info, self._modules) if self._modules else ()
        lease = self.models.acquire(info, needed) if needed else self.models.acquire(info)
        found = (lease, self.families.of(lease.spec))
        self._held[info.path] = found
        if self._networks is not None:
            self._applied.enter_context(self._networks(*found))
        return found

    def use(self, lease: Lease) -> None:
        """Before a pass with `lease`: see the module docstring."""
        plan = self.models.plan
        if plan.device == "cpu" or plan.offload != "none":
            return
        if self.models.effective_limit >= len(self._held):
            return  # the cache keeps them all: they may all stay on the GPU
        for other, _ in self._held.values():
            if other is not lease and not _on(other.pipe, "cpu"):
                other.pipe.to("cpu")
        if not _on(lease.pipe, plan.device):
            lease.pipe.to(plan.device)

    def __enter__(self) -> JobCheckpoints:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """The job ends: the job's networks come off the other checkpoints, and the models
        the cache keeps go back where the plan puts them."""
        self._applied.close()
        plan = self.models.plan
        if plan.device == "cpu" or plan.offload != "none" or len(self._held) < 2:
            return
        kept = set(self.models.loaded_paths())
        for path, (lease, _) in self._held.items():
            if path in kept and not _on(lease.pipe, plan.device):
                lease.pipe.to(plan.device)


def _on(pipe, device: str) -> bool:
    """Whether a pipeline is on `device` ("cuda" is "cuda:0" too)."""
    return str(pipe.device).split(":")[0] == device.split(":")[0]


def check_compatible(main: Family, other: Family, main_spec, other_spec, field: str) -> None:
    """`other` must read and write the latents `main` made: same latent space and the same
    prediction type (the sampler's state is continued, not rebuilt)."""
    if main.latent_space != other.latent_space:
        raise IncompatibleCheckpointError(
            f"{field}: a {other.label} checkpoint cannot continue the latents of a "
            f"{main.label} checkpoint (different latent spaces)"
        )
    if (main_spec.prediction_type or "epsilon") != (other_spec.prediction_type or "epsilon"):
        raise IncompatibleCheckpointError(
            f"{field}: its prediction type ({other_spec.prediction_type}) differs from the "
            f"main checkpoint's ({main_spec.prediction_type})"
        )
