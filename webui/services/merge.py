"""The merge service: a Checkpoint Merger or LoRA merge request becomes a "merge" job.

The Checkpoint Merger tab and `POST /webui/v1/merge` (and `/webui/v1/merge/lora`) call
`MergeService.submit_merge` / `submit_lora_merge`, which check what can be checked
without the weights before the job is queued: the fields (`merge_params.check_merge`),
that every model the method uses exists and is a single file, that they are of one family
(read from the files' headers), that the VAE and the LoRAs exist, and that the default or
custom output name is free (unless overwriting is asked for). Each problem is a
`RequestError` naming the A1111 field (422 in the API, a message in the UI). The worker
does the merge (`webui.core.merge_job`) and checks again what only the tensors tell.

This module must never import torch, safetensors or a front end; it runs in request
threads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..core.jobs import Job, JobQueue
from ..errors import UserError
from ..model_manager.merge_params import (
    NO_VAE,
    CheckpointMergeParams,
    LoraMergeParams,
    MergeInputError,
    check_lora_merge,
    check_merge,
    default_lora_name,
    default_name,
    model_name,
    read_safetensors_metadata,
)
from ..model_manager.registry import CheckpointInfo
from .errors import RequestError
from .protocols import Models

KIND = "merge"


class MergeService:
    def __init__(self, *, models: Models, jobs: JobQueue, networks: Any | None,
                 checkpoint_dir: Path) -> None:  # fmt: skip
        self.models, self.jobs, self.networks = models, jobs, networks
        self.checkpoint_dir = Path(checkpoint_dir)  # where the merged file goes

    def submit_merge(self, params: CheckpointMergeParams, owner: str) -> Job:
        """Check and queue a Checkpoint Merger job; RequestError names the bad field."""
        _checked(check_merge, params)
        infos = {field: self._checkpoint(field, name) for field, name in params.models().items()}
        self._same_family(infos)
        if params.bake_in_vae and params.bake_in_vae != NO_VAE:
            vaes = getattr(self.networks, "vaes", None)
            if vaes is None or vaes.find(params.bake_in_vae) is None:
                raise RequestError(("bake_in_vae",), f"VAE not found: {params.bake_in_vae}")
        names = {field: model_name(info.rel) for field, info in infos.items()}
        name = params.custom_name or default_name(params, names)
        self._free(name, params.checkpoint_format, params.overwrite)
        return self.jobs.submit(KIND, params, owner=owner)

    def submit_lora_merge(self, params: LoraMergeParams, owner: str) -> Job:
        """Check and queue a LoRA merge job; RequestError names the bad field."""
        _checked(check_lora_merge, params)
        info = self._checkpoint("checkpoint", params.checkpoint)
        self._family(info, "checkpoint")
        loras = getattr(self.networks, "loras", None)
        for name, _ in params.loras:
            if loras is None or loras.find(name) is None:
                raise RequestError(("loras",), f"LoRA not found: {name}")
        self._free(params.custom_name or default_lora_name(params, info.rel), "safetensors",
                   params.overwrite)  # fmt: skip
        return self.jobs.submit(KIND, params, owner=owner)

    def read_metadata(self, names: list[str]) -> str:
        """A1111's "Read metadata from selected checkpoints": their safetensors metadata
        merged in order (A, B, C), as indented JSON; unknown names are left out."""
        metadata: dict[str, str] = {}
        for name in names:
            try:
                info = self.models.resolve(name) if name else None
            except LookupError:
                info = None
            if info is not None and not info.is_folder:
                metadata.update(read_safetensors_metadata(info.path))
        return json.dumps(metadata, indent=4, ensure_ascii=False)

    def _checkpoint(self, field: str, name: str) -> CheckpointInfo:
        try:
            info = self.models.resolve(name)
        except LookupError as exc:
            raise RequestError((field,), str(exc)) from None
        if info.is_folder:
            raise RequestError(
                (field,), f"{info.rel} is a diffusers folder; the merger reads single files"
            )
        return info

    def _family(self, info: CheckpointInfo, field: str) -> str:
        try:
            return self.models.family_label(info)
        except UserError as exc:
            raise RequestError((field,), str(exc)) from None

    def _same_family(self, infos: dict[str, CheckpointInfo]) -> None:
        labels = {field: self._family(info, field) for field, info in infos.items()}
        first = labels["primary_model_name"]
        for field, label in labels.items():
            if label != first:
                raise RequestError(
                    (field,),
                    f"cannot merge models of different families: {infos[field].rel} is "
                    f"{label}, the primary model {infos['primary_model_name'].rel} is {first}",
                )

    def _free(self, name: str, fmt: str, overwrite: bool) -> None:
        target = self.checkpoint_dir / f"{name.removesuffix('.' + fmt)}.{fmt}"
        if target.exists() and not overwrite:
            raise RequestError(
                ("custom_name",),
                f"{target.name} already exists in the checkpoint folder; choose another "
                "name or allow overwriting",
            )

    @classmethod
    def of(cls, ctx: Any) -> MergeService:
        """The service over an `AppContext`'s models, queue and networks."""
        return cls(models=ctx.models, jobs=ctx.jobs, networks=ctx.networks,
                   checkpoint_dir=ctx.generation.checkpoint_dir)  # fmt: skip


def _checked(check, params) -> None:
    try:
        check(params)
    except MergeInputError as exc:
        raise RequestError((exc.field,), exc.message) from None
