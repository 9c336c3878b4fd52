"""A1111's Checkpoint Merger: two or three checkpoints into a new single file, streamed.

The formulas and rules are those of A1111's `modules/extras.py:run_modelmerger`:

- "Weighted sum": A * (1 - M) + B * M; "Add difference": A + (B - C) * M (a key C lacks
  adds nothing); "No interpolation": A as it is (to convert, bake a VAE, discard keys).
- Only keys whose name contains "model" and that B has are merged, never
  `SKIP_ON_MERGE`; the result has A's keys. A with a 9-channel (inpainting) or 8-channel
  (instruct-pix2pix) UNet input merged with a 4-channel B merges the 4 shared channels
  and names the result `.inpainting` / `.instruct-pix2pix`; the other way round is refused.
- "Save as float16" writes every float32 tensor as float16; "Bake in VAE" replaces the
  `first_stage_model.*` tensors A has with the VAE file's; "Discard weights with matching
  name" drops the keys the regular expression finds (`re.search`).
- The default name is A1111's ("0.7(a) + 0.3(b)", "a + 0.3(b - c)", "a"); the metadata
  (when "Save metadata") is the models' own (when "Copy metadata"), the user's JSON and
  A1111's `sd_merge_recipe` / `sd_merge_models` JSON strings.
- "Copy config from": `<model>.yaml` beside A, B or C copied beside the result.

Unlike A1111 it streams: the output's tensors are planned from the files' headers,
then computed and written one at a time (`tensor_io`), into a hidden temporary file in the
checkpoint folder that is renamed into place at the end (never a partial checkpoint in
the folder); an existing file is kept unless `overwrite`; an interrupt leaves nothing.

This module must never import a UI library, nor write outside the folder it is given.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from .merge_params import (
    ADD_DIFFERENCE,
    CONFIG_SOURCES,
    SKIP_ON_MERGE,
    CheckpointMergeParams,
    default_name,
    metadata_from_json,
    model_name,
)
from .tensor_io import TensorFile, TensorInfo, write_safetensors_streamed

log = logging.getLogger(__name__)

VAE_PREFIX = "first_stage_model."
Progress = Callable[[int, int, str], None]  # (done, total, text)


class MergeError(RuntimeError, UserError):
    """The models cannot be merged as asked; the message says why."""


class MergeInterrupted(Exception):
    """The user interrupted the merge; nothing was written."""


@dataclass(frozen=True)
class MergeModel:
    """One input checkpoint, as the merge and its recipe need it."""

    path: Path
    name: str  # A1111's checkpoint name: relative path with extension
    sha256: str | None = None

    @property
    def model_name(self) -> str:
        return model_name(self.name)


@dataclass(frozen=True)
class Rule:
    kind: str  # "a": A's tensor; "merge": the formula; "inpaint": the formula on 4 channels; "vae"
    info: TensorInfo


@dataclass(frozen=True)
class MergeOutcome:
    path: Path
    inpainting: bool = False
    instruct_pix2pix: bool = False
    config: Path | None = None


def _to_half(info_or_dtype: torch.dtype, half: bool) -> torch.dtype:
    return torch.float16 if half and info_or_dtype == torch.float32 else info_or_dtype


def _merged_shape(key: str, a: TensorInfo, b: TensorInfo) -> str:
    """ "merge", or "inpaint" for an inpainting/pix2pix A with a plain B; MergeError else."""
    if a.shape == b.shape:
        return "merge"
    same_but_channels = len(a.shape) == 4 and a.shape[:1] + a.shape[2:] == b.shape[:1] + b.shape[2:]
    if same_but_channels and a.shape[1] == 4 and b.shape[1] == 9:
        raise MergeError(
            "When merging an inpainting model with a normal one, A must be the inpainting model."
        )
    if same_but_channels and a.shape[1] == 4 and b.shape[1] == 8:
        raise MergeError(
            "When merging an instruct-pix2pix model with a normal one, A must be the instruct-pix2pix model."
        )
    if same_but_channels and a.shape[1] in (8, 9) and b.shape[1] == 4:
        return "inpaint"
    raise MergeError(f"the models do not fit together: {key} is {a.shape} in A, {b.shape} in B")


class _Merge:
    """One merge: the open files, the plan, and the tensor of each output key."""

    def __init__(
        self,
        params: CheckpointMergeParams,
        files: dict[str, TensorFile],
        vae: dict[str, torch.Tensor] | None,
    ):
        self.params, self.vae = params, vae or {}
        self.a = files["primary_model_name"]
        self.b = files.get("secondary_model_name")
        self.c = files.get("tertiary_model_name")
        self.m = float(params.multiplier)
        self.inpainting = self.pix2pix = False
        self.plan = self._plan()

    def _rule(self, key: str) -> Rule:
        a, half = self.a.info(key), self.params.save_as_half
        if key[len(VAE_PREFIX) :] in self.vae and key.startswith(VAE_PREFIX):
            v = self.vae[key[len(VAE_PREFIX) :]]
            if tuple(v.shape) != a.shape:
                raise MergeError(
                    f"the VAE does not fit: {key} is {tuple(v.shape)}, A has {a.shape}"
                )
            return Rule("vae", TensorInfo(_to_half(v.dtype, half), a.shape))
        b = self.b
        if (
            b is None
            or "model" not in key
            or key not in b
            or key in SKIP_ON_MERGE
            or not a.dtype.is_floating_point
        ):
            return Rule("a", TensorInfo(_to_half(a.dtype, half), a.shape))
        kind, dtype = (
            _merged_shape(key, a, b.info(key)),
            torch.promote_types(a.dtype, b.info(key).dtype),
        )
        if self.c is not None and key in self.c:
            if self.c.info(key).shape != b.info(key).shape:
                raise MergeError(
                    f"B and C do not fit together: {key} is {b.info(key).shape} in B, {self.c.info(key).shape} in C"
                )
            dtype = torch.promote_types(dtype, self.c.info(key).dtype)
        if kind == "inpaint":
            dtype = a.dtype
            self.inpainting |= a.shape[1] == 9
            self.pix2pix |= a.shape[1] == 8
        return Rule(kind, TensorInfo(_to_half(dtype, half), a.shape))

    def _plan(self) -> dict[str, Rule]:
        discard = re.compile(self.params.discard_weights) if self.params.discard_weights else None
        return {
            key: self._rule(key)
            for key in self.a.keys()
            if discard is None or not discard.search(key)
        }

    def tensor(self, key: str) -> torch.Tensor:
        rule = self.plan[key]
        if rule.kind == "vae":
            return self.vae[key[len(VAE_PREFIX) :]].to(rule.info.dtype)
        a = self.a.get(key)
        if rule.kind == "a":
            return a.to(rule.info.dtype)
        b = self.b.get(key)
        if self.params.interp_method == ADD_DIFFERENCE:
            diff = b - self.c.get(key) if key in self.c else torch.zeros_like(b)
            merge = lambda x: x + diff * self.m  # noqa: E731
        else:
            merge = lambda x: x * (1 - self.m) + b * self.m  # noqa: E731
        if rule.kind == "inpaint":
            out = a.clone()
            out[:, 0:4] = merge(a[:, 0:4])
            return out.to(rule.info.dtype)
        return merge(a).to(rule.info.dtype)


def vae_for_baking(path: Path, *, allow_unsafe_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A VAE file's tensors under LDM names without `first_stage_model.` (A1111's
    `load_vae_dict`: loss and EMA keys left out); diffusers-layout files are converted."""
    from .ldm_keys import vae_to_ldm
    from .network_files import load_tensors

    state = load_tensors(path, allow_unsafe_pickle=allow_unsafe_pickle)
    state = state.get("state_dict", state)
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if any(k.startswith(VAE_PREFIX) for k in state):
        state = {k[len(VAE_PREFIX) :]: v for k, v in state.items() if k.startswith(VAE_PREFIX)}
    if any(k.startswith("encoder.down_blocks.") for k in state):
        levels = 1 + max(
            int(k.split(".")[2]) for k in state if k.startswith("encoder.down_blocks.")
        )
        state = vae_to_ldm(state, levels)
    state = {k: v for k, v in state.items() if not k.startswith(("loss", "model_ema."))}
    if not any(k.startswith(("encoder.down.", "decoder.up.")) for k in state):
        raise MergeError(f"{path.name}: not a VAE (no encoder/decoder weights)")
    return state


def legacy_hash(path: Path) -> str:
    """A1111's old 8-digit model hash: sha256 of 64 KiB at 1 MiB into the file."""
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[0:8]


def recipe_metadata(
    params: CheckpointMergeParams,
    models: dict[str, MergeModel],
    files: dict[str, TensorFile],
    merge: _Merge,
) -> dict[str, str]:
    """The safetensors metadata A1111 writes with "Save metadata"."""
    metadata: dict[str, str] = {}
    if not params.save_metadata:
        return metadata
    if params.copy_metadata_fields:
        for field in models:
            metadata.update(files[field].metadata)
    metadata.update(metadata_from_json(params.metadata_json))
    metadata["format"] = "pt"
    if not params.add_merge_recipe:
        return metadata
    sha = {field: model.sha256 for field, model in models.items()}
    recipe = {
        "type": "webui",
        "primary_model_hash": sha["primary_model_name"],
        "secondary_model_hash": sha.get("secondary_model_name"),
        "tertiary_model_hash": sha.get("tertiary_model_name"),
        "interp_method": params.interp_method,
        "multiplier": params.multiplier,
        "save_as_half": params.save_as_half,
        "custom_name": params.custom_name,
        "config_source": CONFIG_SOURCES.index(params.config_source),
        "bake_in_vae": params.bake_in_vae,
        "discard_weights": params.discard_weights,
        "is_inpainting": merge.inpainting,
        "is_instruct_pix2pix": merge.pix2pix,
    }
    merged_models: dict = {}
    for field, model in models.items():
        own = files[field].metadata
        merged_models[model.sha256] = {
            "name": model.name,
            "legacy_hash": legacy_hash(model.path),
            "sd_merge_recipe": _json_or_none(own.get("sd_merge_recipe")),
        }
        merged_models.update(_json_or_none(own.get("sd_merge_models")) or {})
    metadata["sd_merge_recipe"] = json.dumps(recipe)
    metadata["sd_merge_models"] = json.dumps(merged_models)
    return metadata


def _json_or_none(text: str | None):
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


def temporary_path(path: Path) -> Path:
    """A hidden name beside `path` that no model listing picks up."""
    return path.with_name(f".{path.name}.merging.tmp")


def output_path(folder: Path, name: str, merge: _Merge, fmt: str, overwrite: bool) -> Path:
    name = name.removesuffix(f".{fmt}")
    name += ".inpainting" if merge.inpainting else ""
    name += ".instruct-pix2pix" if merge.pix2pix else ""
    return output_path_plain(folder, name, fmt, overwrite)


def output_path_plain(folder: Path, name: str, fmt: str, overwrite: bool) -> Path:
    """`folder/<name>.<fmt>`; MergeError for a name with folders or a file that exists."""
    name = name.removesuffix(f".{fmt}")
    path = folder / f"{name}.{fmt}"
    if path.parent != folder:
        raise MergeError(f"{name!r} is not a plain file name")
    if path.exists() and not overwrite:
        raise MergeError(
            f"{path.name} already exists in {folder}; choose another name or allow overwriting"
        )
    return path


def write_checkpoint(
    path: Path,
    merge: _Merge,
    metadata: dict[str, str],
    fmt: str,
    progress: Progress,
    should_stop: Callable[[], bool],
) -> None:
    """Write the merge to a temporary file, then rename it to `path`."""
    tmp = temporary_path(path)
    total, done = len(merge.plan), 0

    def produce(key: str) -> torch.Tensor:
        nonlocal done
        if should_stop():
            raise MergeInterrupted()
        tensor = merge.tensor(key)
        done += 1
        progress(done, total, "Merging")
        return tensor

    try:
        if fmt == "safetensors":
            plan = [(key, rule.info) for key, rule in merge.plan.items()]
            write_safetensors_streamed(tmp, plan, produce, metadata)
        else:  # a pickle needs the whole dict: A1111's "ckpt" choice, kept for old tools
            torch.save({key: produce(key) for key in merge.plan}, tmp)
        if path.exists() and not merge.params.overwrite:
            raise MergeError(f"{path.name} appeared while merging; nothing was replaced")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def copy_config(
    params: CheckpointMergeParams, models: dict[str, MergeModel], path: Path
) -> Path | None:
    """A1111's "Copy config from": the first `<model>.yaml` found beside A, B or C (or
    beside B, or C alone) copied to `<result>.yaml`."""
    order = {
        0: ["primary_model_name", "secondary_model_name", "tertiary_model_name"],
        1: ["secondary_model_name"],
        2: ["tertiary_model_name"],
        3: [],
    }
    for field in order[CONFIG_SOURCES.index(params.config_source)]:
        model = models.get(field)
        config = model.path.with_suffix(".yaml") if model else None
        if config is not None and config.is_file():
            target = path.with_suffix(".yaml")
            tmp = temporary_path(target)
            shutil.copyfile(config, tmp)
            os.replace(tmp, target)
            return target
    return None


def merge_checkpoints(
    params: CheckpointMergeParams,
    models: dict[str, MergeModel],
    folder: Path,
    *,
    vae: dict[str, torch.Tensor] | None = None,
    progress: Progress = lambda done, total, text: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> MergeOutcome | None:
    """Merge `models` (by field name, as `params.models()` lists them) into a new file in
    `folder`; `vae` is the VAE to bake in (LDM keys without `first_stage_model.`).
    Returns None when interrupted (nothing written)."""
    with ExitStack() as stack:
        files = {
            field: stack.enter_context(TensorFile(model.path)) for field, model in models.items()
        }
        progress(0, 1, "Planning")
        merge = _Merge(params, files, vae)
        names = {field: model.model_name for field, model in models.items()}
        name = params.custom_name or default_name(params, names)
        path = output_path(folder, name, merge, params.checkpoint_format, params.overwrite)
        metadata = recipe_metadata(params, models, files, merge)
        log.info("Merging %s into %s", ", ".join(m.name for m in models.values()), path)
        try:
            write_checkpoint(path, merge, metadata, params.checkpoint_format, progress, should_stop)
        except MergeInterrupted:
            log.info("Merge into %s interrupted; nothing written", path.name)
            return None
    config = copy_config(params, models, path)
    log.info("Checkpoint saved to %s", path)
    return MergeOutcome(path, merge.inpainting, merge.pix2pix, config)
