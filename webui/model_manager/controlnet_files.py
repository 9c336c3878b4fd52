"""The ControlNet models of `models/ControlNet` (`--controlnet-dir`), as the extension lists them.

Files (`.safetensors`, `.pth`, `.ckpt`, `.pt`; lllyasviel's layout or diffusers') and
diffusers folders (`config.json` of a `ControlNetModel` with its weights), in subfolders
too, each listed as `name [hash]`: the name is the file stem (a folder's name), the hash
A1111's legacy `model_hash` (sha256 of 64 KiB at offset 1 MiB, 8 hex digits), which is
what sd-webui-controlnet shows (`control_v11p_sd15_canny [d14c016b]`). A request may name
a model by that label or by the bare name. The cross-attention width read from a
safetensors header tells the family (768: SD 1.x, 1024: SD 2.x, 2048: SDXL), for filtering.

This module must never import torch, diffusers or a UI library (the services list and
resolve names with it).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .sniff import HeaderError, read_header

SUFFIXES = (".safetensors", ".pth", ".ckpt", ".pt")
_WIDTH_FAMILY = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
_LABEL = re.compile(r"^(.*) \[([0-9a-fA-F]{8}|NOFILE)\]$")


@dataclass(frozen=True)
class ControlNetFile:
    name: str
    path: Path
    hash: str
    context_width: int | None  # cross-attention width; None: not read (.pth)

    @property
    def label(self) -> str:
        return f"{self.name} [{self.hash}]"

    @property
    def family(self) -> str:
        return _WIDTH_FAMILY.get(self.context_width or 0, "")


def legacy_hash(path: Path) -> str:
    """A1111's `sd_models.model_hash`: 8 hex digits of sha256(64 KiB at offset 1 MiB)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0x100000)
            return hashlib.sha256(handle.read(0x10000)).hexdigest()[:8]
    except OSError:
        return "NOFILE"


def _weights_of_folder(folder: Path) -> Path | None:
    config = folder / "config.json"
    try:
        if json.loads(config.read_text()).get("_class_name") != "ControlNetModel":
            return None
    except (OSError, ValueError, AttributeError):
        return None
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return None


def _context_width(path: Path) -> int | None:
    if path.suffix != ".safetensors":
        return None
    try:
        shapes = read_header(path).shapes
    except (HeaderError, OSError):
        return None
    for key, shape in shapes.items():
        if key.endswith("attn2.to_k.weight") and len(shape) == 2:
            return shape[1]
    return None


def list_controlnets(folder: Path) -> dict[str, ControlNetFile]:
    """Every ControlNet model under `folder`, by label, sorted by name."""
    found: list[ControlNetFile] = []
    if not folder.is_dir():
        return {}
    for path in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if path.is_dir():
            weights = _weights_of_folder(path)
            if weights is not None:
                found.append(ControlNetFile(path.name, path, legacy_hash(weights),
                                            _context_width(weights)))  # fmt: skip
        elif path.suffix.lower() in SUFFIXES and _weights_of_folder(path.parent) is None:
            found.append(ControlNetFile(path.stem, path, legacy_hash(path), _context_width(path)))
    found.sort(key=lambda f: f.name.lower())
    return {f.label: f for f in found}


def find_controlnet(models: dict[str, ControlNetFile], name: str) -> ControlNetFile | None:
    """By label, by bare name, or by a label whose hash changed (the name decides)."""
    if name in models:
        return models[name]
    match = _LABEL.match(name)
    bare = match[1] if match else name
    for model in models.values():
        if model.name == bare:
            return model
    return None


def fits(model: ControlNetFile, family_label: str) -> bool:
    """Whether a model is listed for a checkpoint family (unknown widths always are)."""
    return not model.family or not family_label or model.family == family_label
