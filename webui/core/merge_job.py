"""The worker's side of a "merge" job: checkpoints merged (A1111's Checkpoint Merger), or
LoRAs merged into a checkpoint; the new file lands in the checkpoint folder.

`run_merge` resolves the job's model names, refuses models of different families (or a
diffusers folder: the merger reads single files), and then:

- `CheckpointMergeParams`: `model_manager.merge.merge_checkpoints` streams the merge,
  with the VAE to bake in read from `models/VAE`;
- `LoraMergeParams`: the checkpoint is built as a diffusers pipeline on the CPU in
  float32, each LoRA is put on it by its model family's own loader (the same
  `Family.load_lora` a generation uses, so the same key mapping), activated at its weight
  and fused into the weights (peft), and the pipeline is written back in the A1111
  single-file layout (`model_manager.export`), streamed, with a recipe in the metadata.

The checkpoint list is scanned again afterwards. Runs on the queue's worker thread only
(it owns the memory); it never imports a UI library.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..model_manager.export import ldm_state_dict
from ..model_manager.loader import identify_file, load_checkpoint
from ..model_manager.manager import ModelManager
from ..model_manager.merge import (
    MergeError,
    MergeInterrupted,
    MergeModel,
    legacy_hash,
    merge_checkpoints,
    output_path_plain,
    temporary_path,
    vae_for_baking,
)
from ..model_manager.merge_params import (
    NO_VAE,
    CheckpointMergeParams,
    LoraMergeParams,
    default_lora_name,
)
from ..model_manager.tensor_io import TensorInfo, write_safetensors_streamed
from .extra_networks import Networks
from .families import Families
from .job import Job

log = logging.getLogger(__name__)

LABELS = {
    "primary_model_name": "Primary model (A)",
    "secondary_model_name": "Secondary model (B)",
    "tertiary_model_name": "Tertiary model (C)",
    "checkpoint": "Checkpoint",
}


@dataclass
class MergeResult:
    path: str | None  # None: interrupted, nothing written
    message: str
    title: str | None = None  # the new checkpoint's title in the list


def run_merge(
    job: Job, models: ModelManager, networks: Networks | None, families: Families
) -> MergeResult:
    params = job.params
    progress = job.progress

    def report(done: int, total: int, text: str) -> None:
        progress.batches, progress.batch = 1, 0
        progress.steps, progress.step, progress.text = total, done, text

    def should_stop() -> bool:
        job.raise_if_aborted()  # the server shuts down: stop writing
        return job.interrupt_requested

    try:
        if isinstance(params, LoraMergeParams):
            path = merge_loras(params, models, networks, families, report, should_stop)
        else:
            path = _merge_checkpoints(params, models, networks, report, should_stop)
    except MergeInterrupted:
        path = None
    if path is None:
        return MergeResult(None, "Interrupted: nothing was written")
    if path in models.loaded_paths():  # overwritten while loaded: the next job reads the file
        models.unload_all()
    models.refresh()
    info = models.registry.find(path.name)
    return MergeResult(str(path), f"Checkpoint saved to {path}", info.title if info else None)


def resolve_inputs(
    names: dict[str, str], models: ModelManager, *, hashes: bool
) -> dict[str, MergeModel]:
    """The checkpoints by field; MergeError naming the field for a missing one, a folder,
    or a mix of families."""
    resolved: dict[str, MergeModel] = {}
    families: dict[str, str] = {}
    for field, name in names.items():
        info = models.registry.find(name)
        if info is None or not info.path.exists():
            raise MergeError(f"{LABELS[field]}: checkpoint not found: {name}")
        if info.is_folder:
            raise MergeError(
                f"{LABELS[field]}: {info.rel} is a diffusers folder; the merger reads single-file checkpoints"
            )
        spec = identify_file(info.path, models.families)
        families[field] = spec.family_label
        sha = models.registry.ensure_hash(info) if hashes else info.sha256
        resolved[field] = MergeModel(info.path, info.rel, sha)
    if len(set(families.values())) > 1:
        listed = ", ".join(f"{LABELS[f]} is {label}" for f, label in families.items())
        raise MergeError(f"Cannot merge models of different families: {listed}")
    return resolved


def _merge_checkpoints(
    params: CheckpointMergeParams,
    models: ModelManager,
    networks: Networks | None,
    report,
    should_stop,
) -> Path | None:
    inputs = resolve_inputs(
        params.models(), models, hashes=params.save_metadata and params.add_merge_recipe
    )
    vae = None
    if params.bake_in_vae and params.bake_in_vae != NO_VAE:
        registry = networks.vaes if networks else None
        file = registry.find(params.bake_in_vae) if registry is not None else None
        if file is None:
            raise MergeError(f"Bake in VAE: VAE not found: {params.bake_in_vae}")
        vae = vae_for_baking(file.path, allow_unsafe_pickle=registry.allow_unsafe_pickle)
    outcome = merge_checkpoints(
        params, inputs, models.registry.folder, vae=vae, progress=report, should_stop=should_stop
    )
    return outcome.path if outcome else None


def merge_loras(
    params: LoraMergeParams,
    models: ModelManager,
    networks: Networks | None,
    families: Families,
    report,
    should_stop,
) -> Path | None:
    """Fuse the LoRAs into the checkpoint and write it as a new single file."""
    base = resolve_inputs({"checkpoint": params.checkpoint}, models, hashes=params.save_metadata)[
        "checkpoint"
    ]
    registry = networks.loras if networks else None
    files = []
    for name, weight in params.loras:
        file = registry.find(name) if registry is not None else None
        if file is None:
            raise MergeError(f"LoRA not found: {name}")
        files.append((file, weight))
    report(0, 1, "Loading the checkpoint")
    loaded = load_checkpoint(base.path, "cpu", torch.float32, models.families)
    pipe, family = loaded.pipe, families.of(loaded.spec)
    names = []
    for index, (file, _) in enumerate(files):
        report(index, len(files), f"Applying {file.name}")
        adapter = f"merge_{index}"
        try:
            family.load_lora(pipe, dict(registry.tensors(file)), adapter)
        except Exception as exc:
            raise MergeError(f"{file.filename}: does not fit this checkpoint ({exc})") from exc
        names.append(adapter)
    pipe.set_adapters(names, [weight for _, weight in files])
    components = [
        c for c in ("unet", "text_encoder", "text_encoder_2") if getattr(pipe, c, None) is not None
    ]
    pipe.fuse_lora(components=components, adapter_names=names, lora_scale=1.0)
    pipe.unload_lora_weights()  # the fused weights stay; the adapters go
    state = ldm_state_dict(pipe)
    name = params.custom_name or default_lora_name(params, base.name)
    path = output_path_plain(models.registry.folder, name, "safetensors", params.overwrite)
    dtype = torch.float16 if params.save_as_half else None
    metadata = _lora_metadata(params, base, files, registry) if params.save_metadata else {}
    write_streamed_state(path, state, dtype, metadata, params.overwrite, report, should_stop)
    return path


def write_streamed_state(
    path: Path,
    state: dict,
    dtype: torch.dtype | None,
    metadata: dict,
    overwrite: bool,
    report,
    should_stop,
) -> None:
    """Write an in-memory state dict tensor by tensor (float32 cast to `dtype`), atomically."""

    def cast(tensor: torch.Tensor) -> torch.dtype:
        return dtype if dtype is not None and tensor.dtype == torch.float32 else tensor.dtype

    plan = [(key, TensorInfo(cast(t), tuple(t.shape))) for key, t in state.items()]
    done = 0

    def produce(key: str) -> torch.Tensor:
        nonlocal done
        if should_stop():
            raise MergeInterrupted()
        done += 1
        report(done, len(plan), "Saving")
        return state[key].detach().to(cast(state[key]))

    tmp = temporary_path(path)
    try:
        write_safetensors_streamed(tmp, plan, produce, {"format": "pt", **metadata})
        if path.exists() and not overwrite:
            raise MergeError(f"{path.name} appeared while merging; nothing was replaced")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _lora_metadata(
    params: LoraMergeParams, base: MergeModel, files: list, registry
) -> dict[str, str]:
    recipe = {
        "type": "webui-lora",
        "primary_model_hash": base.sha256,
        "loras": [{"name": f.name, "weight": w, "hash": registry.shorthash(f)} for f, w in files],
        "save_as_half": params.save_as_half,
        "custom_name": params.custom_name,
    }
    models = {
        base.sha256: {
            "name": base.name,
            "legacy_hash": legacy_hash(base.path),
            "sd_merge_recipe": None,
        }
    }
    return {"sd_merge_recipe": json.dumps(recipe), "sd_merge_models": json.dumps(models)}
