"""The parts of the running program that the front ends and services use, as Protocols.

`webui.context.AppContext` types its fields with these where the real class imports torch
(the model manager, the memory plan): the UI, the API routes and the services can then
name the context's types at run time (FastAPI resolves route annotations) without loading
torch. The real classes satisfy them structurally; nothing here subclasses anything.

This module must never import torch, diffusers, gradio or fastapi.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from ..model_manager.modules import ModuleFiles
from ..model_manager.registry import CheckpointInfo


class Models(Protocol):
    """What is asked of `webui.model_manager.manager.ModelManager` outside the worker.

    Only the worker loads or switches models (through jobs); these calls read the
    checkpoint folder and the registry."""

    module_files: ModuleFiles  # Forge's "VAE / Text Encoder" files

    def checkpoints(self) -> list[CheckpointInfo]:
        """Every checkpoint found, in listing order."""
        ...

    def refresh(self) -> list[CheckpointInfo]:
        """Scan the checkpoint folder again."""
        ...

    def resolve(self, name: str | None) -> CheckpointInfo:
        """A checkpoint by title, name, file name or hash (None: the default one);
        LookupError when there is none."""
        ...

    def unreadable(self, info: CheckpointInfo) -> str | None:
        """Why a checkpoint file cannot load (read from its header), else None."""
        ...

    def distilled_guidance(self, info: CheckpointInfo) -> bool:
        """Whether the checkpoint takes FLUX's distilled guidance scale (header only)."""
        ...

    def flow_shift(self, info: CheckpointInfo) -> float | None:
        """The default flow-matching shift of such a checkpoint (0: FLUX.1 dev's automatic
        one), else None: the checkpoint takes no shift (header only)."""
        ...

    def latent_space(self, info: CheckpointInfo) -> str | None:
        """The latent space of the checkpoint's family (header only); None: unknown."""
        ...

    def skip_layer_guidance(self, info: CheckpointInfo) -> bool:
        """Whether the checkpoint's family runs Skip Layer Guidance (SD 3.5; header only)."""
        ...

    def family_preset(self, info: CheckpointInfo) -> dict:
        """The generation defaults the checkpoint's family asks for when it is chosen
        (Z-Image Turbo: steps, CFG scale, sampler, schedule), read from its header or its
        folder's model_index.json; {} for none."""
        ...

    def module_problem(self, info: CheckpointInfo, modules: Sequence[str]) -> str | None:
        """Why Forge's "VAE / Text Encoder" files cannot complete the checkpoint, else None."""
        ...

    def family_problem(
        self, info: CheckpointInfo, modes: Sequence[str], sampler: str | None,
        schedule: str | None, params: Any = None,
    ) -> str | None:  # fmt: skip
        """Why the checkpoint's family cannot run these modes with this sampler (or these
        params), else None."""
        ...

    def family_label(self, info: CheckpointInfo) -> str:
        """A single file's family ("SD 1.x") from its header; a UserError when unknown."""
        ...

    def unload_all(self) -> None:
        """Free every loaded model (at shutdown)."""
        ...


class MemoryInfo(Protocol):
    """What is shown of `webui.model_manager.memory.MemoryPlan`: device and choices made."""

    device: str
    notes: tuple[str, ...]

    @property
    def description(self) -> str: ...

    def as_dict(self) -> dict[str, Any]: ...


class Annotators(Protocol):
    """`webui.model_manager.annotators.AnnotatorCache`: ControlNet's annotators with
    weights (/controlnet/detect and the UI's 💥 run them through it)."""

    def run(self, module: str, image: Any, res: int, a: float, b: float,
            report: Any = None) -> Any: ...  # fmt: skip

    def clear(self) -> None: ...
