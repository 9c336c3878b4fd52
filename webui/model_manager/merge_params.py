"""What a merge job asks for: A1111's Checkpoint Merger fields, and a LoRA merge.

`CheckpointMergeParams` carries the fields of A1111's "Checkpoint Merger" tab under their
A1111 names (`run_modelmerger`'s arguments); `LoraMergeParams` asks for LoRAs to be
merged into a checkpoint at given weights. Both are the params of a job of kind "merge"
(`webui.core.merge_job` runs them on the worker, `webui.model_manager.merge` does the
tensor work). The checks here need no model file: names, the multiplier, the pattern.

Standard library only: the services and the job store's codec import it. This module
must never import torch, safetensors or a UI library.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

WEIGHTED_SUM, ADD_DIFFERENCE, NO_INTERPOLATION = (
    "Weighted sum",
    "Add difference",
    "No interpolation",
)
INTERP_METHODS = (NO_INTERPOLATION, WEIGHTED_SUM, ADD_DIFFERENCE)  # A1111's radio order
CHECKPOINT_FORMATS = ("ckpt", "safetensors")
CONFIG_SOURCES = ("A, B or C", "B", "C", "Don't")  # A1111's "Copy config from", by index
NO_VAE = "None"
# A1111's checkpoint_dict_skip_on_merge: kept as the primary model has it
SKIP_ON_MERGE = frozenset({"cond_stage_model.transformer.text_model.embeddings.position_ids"})
_WINDOWS_DEVICES = {
    "con",
    "prn",
    "aux",
    "nul",
    *(f"com{i}" for i in range(10)),
    *(f"lpt{i}" for i in range(10)),
}


class MergeInputError(ValueError):
    """A bad merge field; `field` is its A1111 name."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class CheckpointMergeParams:
    primary_model_name: str
    secondary_model_name: str = ""
    tertiary_model_name: str = ""
    interp_method: str = WEIGHTED_SUM
    multiplier: float = 0.3
    save_as_half: bool = False
    custom_name: str = ""
    checkpoint_format: str = "safetensors"
    config_source: str = CONFIG_SOURCES[0]
    bake_in_vae: str = NO_VAE
    discard_weights: str = ""
    save_metadata: bool = True
    add_merge_recipe: bool = True
    copy_metadata_fields: bool = True
    metadata_json: str = "{}"
    overwrite: bool = False  # A1111 overwrites silently; here it must be asked for

    @property
    def prompt(self) -> str:
        """What the queue lists for the job."""
        return f"Merge ({self.interp_method}): " + ", ".join(self.models().values())

    def models(self) -> dict[str, str]:
        """The models the method uses, by field name (A always; B, C when needed)."""
        used = {"primary_model_name": self.primary_model_name}
        if self.interp_method in (WEIGHTED_SUM, ADD_DIFFERENCE):
            used["secondary_model_name"] = self.secondary_model_name
        if self.interp_method == ADD_DIFFERENCE:
            used["tertiary_model_name"] = self.tertiary_model_name
        return used


@dataclass(frozen=True)
class LoraMergeParams:
    checkpoint: str
    loras: tuple[tuple[str, float], ...]  # (LoRA name, weight), applied in this order
    custom_name: str = ""
    save_as_half: bool = False
    save_metadata: bool = True
    overwrite: bool = False

    @property
    def prompt(self) -> str:
        """What the queue lists for the job."""
        loras = ", ".join(f"{name}:{weight}" for name, weight in self.loras)
        return f"Merge LoRA into {self.checkpoint}: {loras}"


def check_merge(params: CheckpointMergeParams) -> None:
    """Raise MergeInputError for a field that is wrong whatever the files are."""
    if params.interp_method not in INTERP_METHODS:
        raise MergeInputError("interp_method", f"must be one of {', '.join(INTERP_METHODS)}")
    for field, name in params.models().items():
        if not name.strip():
            model = {
                "primary_model_name": "a primary",
                "secondary_model_name": "a secondary",
                "tertiary_model_name": "a tertiary",
            }[field]
            raise MergeInputError(field, f"{params.interp_method} requires {model} model")
    check_multiplier(params.multiplier)
    if params.checkpoint_format not in CHECKPOINT_FORMATS:
        raise MergeInputError("checkpoint_format", "must be ckpt or safetensors")
    if params.config_source not in CONFIG_SOURCES:
        raise MergeInputError("config_source", f"must be one of {', '.join(CONFIG_SOURCES)}")
    if params.discard_weights:
        try:
            re.compile(params.discard_weights)
        except re.error as exc:
            raise MergeInputError("discard_weights", f"not a regular expression ({exc})") from None
    check_name(params.custom_name)
    if params.save_metadata:
        metadata_from_json(params.metadata_json)


def model_name(rel: str) -> str:
    """A1111's model_name of a checkpoint: its relative path without the extension, the
    folders joined by "_"."""
    return os.path.splitext(rel.replace("/", "_").replace("\\", "_"))[0]


def default_name(params: CheckpointMergeParams, names: dict[str, str]) -> str:
    """A1111's file name (no extension) for a merge with no custom name; `names` are the
    models' `model_name`s by field."""
    a = names["primary_model_name"]
    if params.interp_method == WEIGHTED_SUM:
        m, b = params.multiplier, names["secondary_model_name"]
        return f"{round(1 - m, 2)}({a}) + {round(m, 2)}({b})"
    if params.interp_method == ADD_DIFFERENCE:
        b, c = names["secondary_model_name"], names["tertiary_model_name"]
        return f"{a} + {round(params.multiplier, 2)}({b} - {c})"
    return a


def default_lora_name(params: LoraMergeParams, checkpoint: str) -> str:
    """ "<checkpoint> + 0.8(lora) + 0.5(other)" for a LoRA merge with no custom name."""
    loras = " + ".join(f"{round(weight, 2)}({name})" for name, weight in params.loras)
    return f"{model_name(checkpoint)} + {loras}"


def check_lora_merge(params: LoraMergeParams) -> None:
    if not params.checkpoint.strip():
        raise MergeInputError("checkpoint", "choose the checkpoint to merge the LoRAs into")
    if not params.loras:
        raise MergeInputError("loras", "name at least one LoRA")
    for name, weight in params.loras:
        if not name.strip():
            raise MergeInputError("loras", "a LoRA name is empty")
        if not isinstance(weight, int | float) or not math.isfinite(weight):
            raise MergeInputError("loras", f"the weight of {name} is not a number")
    check_name(params.custom_name)


def check_multiplier(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MergeInputError("multiplier", "must be a number between 0 and 1")
    if not 0.0 <= value <= 1.0:
        raise MergeInputError("multiplier", f"must be between 0 and 1, got {value}")
    return float(value)


def check_name(name: str) -> None:
    """A file name for the checkpoint folder: no folders, no '..', no device names."""
    if not name:
        return
    stripped = name.strip()
    if stripped != name or not stripped:
        raise MergeInputError("custom_name", "must not start or end with spaces")
    if any(c in name for c in "/\\:\0") or name in (".", "..") or name.startswith("."):
        raise MergeInputError("custom_name", f"{name!r} is not a plain file name (no folders)")
    if any(ord(c) < 32 for c in name) or any(c in name for c in '<>"|?*'):
        raise MergeInputError("custom_name", f"{name!r} has characters a file name cannot have")
    if name.split(".")[0].lower() in _WINDOWS_DEVICES:
        raise MergeInputError("custom_name", f"{name!r} is a device name")
    if len(name.encode()) > 200:
        raise MergeInputError("custom_name", "is too long (at most 200 bytes)")


def metadata_from_json(text: str) -> dict[str, str]:
    """The user's "Metadata in JSON format": an object; values become strings."""
    import json

    try:
        value = json.loads(text or "{}")
    except ValueError as exc:
        raise MergeInputError("metadata_json", f"not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise MergeInputError("metadata_json", "must be a JSON object")
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The `__metadata__` of a `.safetensors` header, read with the standard library (the
    services and the UI may call it); {} for other files or an unreadable header."""
    import json
    import struct

    if not str(path).lower().endswith(".safetensors"):
        return {}
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100_000_000:
                return {}
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error):
        return {}
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}


def parse_loras(text: str) -> tuple[tuple[str, float], ...]:
    """ "name:0.8, other:0.5" or A1111 tags "<lora:name:0.8>" (weight 1 when left out)."""
    items = re.findall(r"<lora:([^>]+)>", text) or [p for p in re.split(r"[,\n]", text)]
    loras = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        name, sep, weight = item.rpartition(":")
        if not sep:
            name, weight = item, "1"
        try:
            value = float(weight)
        except ValueError:
            name, value = item, 1.0  # a colon inside the name, no weight
        loras.append((name.strip(), value))
    return tuple(loras)
