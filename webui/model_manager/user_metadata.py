"""A1111's user metadata beside a model file: `name.json` (what Extra Networks' "Edit
metadata" and the Models tab's notes write: description, activation text, notes, sd
version, preferred weight), and the one field this program reads from it when loading:
`flux_variant`.

- `flux_variant: "kontext"` marks a FLUX.1 checkpoint as FLUX.1 Kontext when neither its
  file name nor its safetensors metadata says so (Kontext's tensors are FLUX.1 dev's);
  "" or no field: told by the name and metadata (`core.families.flux_kontext`).
- The sidecar of a file is its path with `.json` (A1111's); of a diffusers folder, the
  folder's name with `.json` beside it.
- Writing keeps every other field and replaces the file atomically.

This module must never import a UI library or touch the network.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

FLUX_VARIANT = "flux_variant"
FLUX_VARIANTS = ("", "kontext")  # "": from the file name and metadata


def sidecar(path: Path) -> Path:
    """Where a model's user metadata lives."""
    if path.is_dir():
        return path.with_name(path.name + ".json")
    return path.with_suffix(".json")


def read_user_metadata(path: Path) -> dict:
    """A model's user metadata; {} when there is none or it is unreadable."""
    side = sidecar(path)
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable user metadata (%s)", side.name, exc)
        return {}


def flux_variant(path: Path) -> str:
    """The FLUX.1 variant a user marked the checkpoint as ("kontext"), else ""."""
    value = read_user_metadata(path).get(FLUX_VARIANT, "")
    return value.strip().lower() if isinstance(value, str) else ""


def set_flux_variant(path: Path, variant: str) -> None:
    """Mark (or with "" unmark) a checkpoint's FLUX.1 variant; ValueError for an unknown one."""
    if variant not in FLUX_VARIANTS:
        raise ValueError(f"unknown FLUX.1 variant {variant!r} (known: kontext, or empty)")
    data = read_user_metadata(path)
    if variant:
        data[FLUX_VARIANT] = variant
    else:
        data.pop(FLUX_VARIANT, None)
    side = sidecar(path)
    tmp = side.with_name(f".{side.name}.tmp")
    tmp.write_text(json.dumps(data, indent=4, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, side)
