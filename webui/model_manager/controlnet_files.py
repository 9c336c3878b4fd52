"""The ControlNet models of `models/ControlNet` (`--controlnet-dir`), as the extension lists them.

Files (`.safetensors`, `.pth`, `.ckpt`, `.pt`; lllyasviel's layout or diffusers') and
diffusers folders (`config.json` of a `ControlNetModel` with its weights), in subfolders
too (not `annotators/`: the preprocessors' weights), each listed as `name [hash]`: the name is the file stem (a folder's name), the hash
A1111's legacy `model_hash` (sha256 of 64 KiB at offset 1 MiB, 8 hex digits), which is
what sd-webui-controlnet shows (`control_v11p_sd15_canny [d14c016b]`). A request may name
a model by that label or by the bare name. The cross-attention width read from a
safetensors header tells the family (768: SD 1.x, 1024: SD 2.x, 2048: SDXL), for filtering.
A ControlNet Union (`task_embedding` and `control_add_embedding.*` keys, or a
`ControlNetUnionModel` folder) has `union_modes`, the number of its control modes.
FLUX ControlNets (diffusers' `FluxControlNetModel` files and folders, XLabs' files; kind
"flux-controlnet", `flux_control_keys.layout_of`) are family FLUX, SD 3.5 ControlNets
(diffusers' `SD3ControlNetModel` files and folders, Stability's files; kind
"sd3-controlnet", `sd3_layout_of`) family SD 3. Otherwise the keys tell
the kind (`kind_of_keys`): a ControlNet, an IP-Adapter (`image_proj.*`,
`ip_adapter.*`; its width from `to_k_ip`), a T2I-Adapter (TencentARC's `body.N.block1`
/ `conv_in`, or diffusers' `adapter.*`) or the T2I style adapter (`style_embedding`; its
width from `proj`); a pickled file's kind comes from its name.

`find_clip_vision` finds an IP-Adapter preprocessor's CLIP vision encoder in
`models/clip_vision` as sd-webui-controlnet names it (`clip_h.pth`, `clip_g.pth`), or
under the names the files are published with (`CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors`,
...), or else by its width (ViT-H: 1280, ViT-bigG: 1664, ViT-L: 1024) read from a
`.safetensors` header; the style adapter's ViT-L/14 as the extension names it (`clip_vitl.pth`).

This module must never import torch, diffusers or a UI library (the services list and
resolve names with it).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .flux_control_keys import ip_text_width as flux_text_width
from .flux_control_keys import is_flux_ip_adapter, sd3_layout_of
from .flux_control_keys import layout_of as flux_layout_of
from .sniff import HeaderError, read_header

FOLDER_CLASSES = ("ControlNetModel", "T2IAdapter", "ControlNetUnionModel", "FluxControlNetModel",
                  "SD3ControlNetModel")  # fmt: skip
SUFFIXES = (".safetensors", ".pth", ".ckpt", ".pt", ".bin")
_KIND_FAMILY = {"flux-controlnet": "FLUX", "sd3-controlnet": "SD 3"}  # from their layouts
_WIDTH_FAMILY = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL", 4096: "FLUX"}  # 4096: T5-XXL
_LABEL = re.compile(r"^(.*) \[([0-9a-fA-F]{8}|NOFILE)\]$")


@dataclass(frozen=True)
class ControlNetFile:
    name: str
    path: Path
    hash: str
    context_width: int | None  # cross-attention width; None: not read (.pth)
    kind: str = "controlnet"  # "controlnet", "ip-adapter", "t2i-adapter" or "t2i-style"
    union_modes: int = 0  # a ControlNet Union's control modes (its task embeddings); 0: none

    @property
    def label(self) -> str:
        return f"{self.name} [{self.hash}]"

    @property
    def family(self) -> str:
        if self.kind in _KIND_FAMILY:  # a transformer's ControlNet: its layout's family
            return _KIND_FAMILY[self.kind]
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
        if json.loads(config.read_text()).get("_class_name") not in FOLDER_CLASSES:
            return None
    except (OSError, ValueError, AttributeError):
        return None
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return None


def kind_of_keys(keys) -> str:
    """ "ip-adapter", "t2i-adapter", "t2i-style" or "controlnet", from a state dict's key
    names."""
    keys = list(keys)
    if any(k.removeprefix("adapter.") == "style_embedding" for k in keys):
        return "t2i-style"
    if any(k.startswith(("image_proj.", "ip_adapter.")) for k in keys) or is_flux_ip_adapter(keys):
        return "ip-adapter"
    if any(k.startswith("adapter.body.") for k in keys) or (
        any(k.startswith("body.") for k in keys) and not any("time_embed" in k for k in keys)
    ):
        return "t2i-adapter"
    return "controlnet"


def kind_of_name(name: str) -> str:
    """The kind a file's name says (for pickles, whose keys are not read when listing)."""
    lower = name.lower()
    if any(w in lower for w in ("ip-adapter", "ip_adapter", "ipadapter")):
        return "ip-adapter"
    if any(w in lower for w in ("t2i-adapter", "t2i_adapter", "t2iadapter")):
        return "t2i-style" if "style" in lower else "t2i-adapter"
    return "controlnet"


def _width_of_name(name: str) -> int | None:
    """The family an adapter's name says (the extension's `detect_from_model_name`)."""
    lower = name.lower()
    if "flux" in lower:
        return 4096
    if "xl" in lower:
        return 2048
    return 768 if any(w in lower for w in ("sd15", "sd14", "sd1.5", "sd_15")) else None


def _adapter_width(shapes: dict) -> int | None:
    """A T2I-Adapter's family from its pixel unshuffle (SDXL's: 16, 256 x channels)."""
    for key in ("adapter.conv_in.weight", "conv_in.weight"):
        if key in shapes:
            return 2048 if shapes[key][1] in (256, 768) else 768
    return 768 if any(k.endswith("out_conv.weight") for k in shapes) else None  # light: SD 1.x


def _read_kind(path: Path) -> tuple[int | None, str]:
    """(the cross-attention width of the UNet it fits, kind) of a file."""
    if path.parent.joinpath("config.json").is_file() and _weights_of_folder(path.parent):
        config = path.parent.joinpath("config.json").read_text()
        if "T2IAdapter" in config:
            return _width_of_name(path.parent.name), "t2i-adapter"
        if '"SD3ControlNetModel"' in config:
            return None, "sd3-controlnet"
    if path.suffix != ".safetensors":
        kind = kind_of_name(path.name)
        return (_width_of_name(path.name) if kind != "controlnet" else None), kind
    try:
        shapes = read_header(path).shapes
    except (HeaderError, OSError):
        return None, kind_of_name(path.name)
    if flux_layout_of(shapes) is not None:  # InstantX / Shakker-Labs / XLabs FLUX ControlNets
        return shapes.get("context_embedder.weight", shapes.get("txt_in.weight", (0, 0)))[1], (
            "flux-controlnet")  # fmt: skip
    if sd3_layout_of(shapes) is not None:  # InstantX / Stability SD 3.5 ControlNets
        return shapes.get("context_embedder.weight", (0, None))[1], "sd3-controlnet"
    kind = kind_of_keys(shapes)
    if kind == "ip-adapter":  # a width of no family (a test's tiny model): the name's
        shape = shapes.get("ip_adapter.1.to_k_ip.weight")
        width = int(shape[1]) if shape and len(shape) == 2 else flux_text_width(shapes)
        return (width if width in _WIDTH_FAMILY else _width_of_name(path.name)), kind
    if kind == "t2i-adapter":
        return _adapter_width(shapes), kind
    if kind == "t2i-style":  # its tokens' width: the text encoder's
        shape = shapes.get("proj", shapes.get("adapter.proj", ()))
        width = int(shape[1]) if len(shape) == 2 else None
        return (width if width in _WIDTH_FAMILY else _width_of_name(path.name)), kind
    for key, shape in shapes.items():
        if key.endswith("attn2.to_k.weight") and len(shape) == 2:
            return shape[1], kind
    return None, kind


def union_modes(path: Path) -> int:
    """How many control modes a ControlNet Union file (`task_embedding`,
    `control_add_embedding.*` keys) or folder has (its config's `num_control_type`:
    xinsir's configs name the class `ControlNetModel`, diffusers' `ControlNetUnionModel`);
    0 for other models. For a folder, `path` is its weights (any of its files will do)."""
    config = path.parent / "config.json"
    if config.is_file() and _weights_of_folder(path.parent) is not None:
        try:
            values = json.loads(config.read_text())
        except (OSError, ValueError):
            return 0
        if not isinstance(values, dict):
            return 0
        if values.get("_class_name") == "ControlNetUnionModel" or "num_control_type" in values:
            return int(values.get("num_control_type", 6))
        return 0
    if path.suffix != ".safetensors":
        return 0
    try:
        shapes = read_header(path).shapes
    except (HeaderError, OSError):
        return 0
    shape = shapes.get("task_embedding")
    if shape and "control_add_embedding.linear_1.weight" in shapes:
        return int(shape[0])
    return 0


def _context_width(path: Path) -> int | None:
    return _read_kind(path)[0]


def list_controlnets(folder: Path) -> dict[str, ControlNetFile]:
    """Every ControlNet model under `folder`, by label, sorted by name."""
    found: list[ControlNetFile] = []
    if not folder.is_dir():
        return {}
    for path in sorted(folder.rglob("*")):
        parts = path.relative_to(folder).parts
        if any(part.startswith(".") for part in parts) or parts[0] == "annotators":
            continue  # hidden; the preprocessors' weights (annotator_files.py)
        if path.is_dir():
            weights = _weights_of_folder(path)
            if weights is not None:
                found.append(ControlNetFile(path.name, path, legacy_hash(weights),
                                            *_read_kind(weights), union_modes(weights)))  # fmt: skip
        elif path.suffix.lower() in SUFFIXES and _weights_of_folder(path.parent) is None:
            found.append(ControlNetFile(path.stem, path, legacy_hash(path), *_read_kind(path),
                                        union_modes(path)))  # fmt: skip
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


# the extension's CLIP configs: file names it uses first, then the published ones
CLIP_NAMES = {
    "clip_h": ("clip_h.pth", "clip_h.safetensors", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
               "clip_vision_h.safetensors", "clip-vit-h-14.safetensors"),
    "clip_g": ("clip_g.pth", "clip_g.safetensors", "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors",
               "clip_vision_g.safetensors", "clip-vit-bigg-14.safetensors"),
    # FLUX IP-Adapter (XLabs): openai/clip-vit-large-patch14
    "clip_l": ("clip_vision_l.safetensors", "clip-vit-large-patch14.safetensors",
               "clip-vit-large-patch14", "CLIP-ViT-L-14.safetensors"),
    # the T2I style adapter (t2ia_style_clipvision): the same model, the extension's name
    "clip_vitl": ("clip_vitl.pth", "clip_vitl.safetensors", "clip_vision_l.safetensors",
                  "clip-vit-large-patch14.safetensors", "clip-vit-large-patch14",
                  "CLIP-ViT-L-14.safetensors"),
}  # fmt: skip
CLIP_TITLES = {"clip_h": "CLIP ViT-H", "clip_g": "CLIP ViT-bigG", "clip_l": "CLIP ViT-L/14",
               "clip_vitl": "CLIP ViT-L/14"}  # fmt: skip
_CLIP_WIDTHS = {"clip_h": 1280, "clip_g": 1664, "clip_l": 1024, "clip_vitl": 1024}


# an IP-Adapter's image projection reads CLIP's projected embedding (the base adapters,
# XLabs' FLUX one) or its penultimate hidden states (plus, full-face): their widths
_IP_INPUTS = (("image_proj.proj_in.weight", {1280: "clip_h", 1664: "clip_g"}),
              ("image_proj.proj.0.weight", {1280: "clip_h", 1664: "clip_g"}),
              ("image_proj.proj.weight", {1024: "clip_h", 1280: "clip_g"}),
              ("ip_adapter_proj_model.proj.weight", {768: "clip_l"}))  # fmt: skip


def ip_adapter_clip(found: ControlNetFile) -> str:
    """The CLIP vision encoder ("clip_h", "clip_g", "clip_l") an IP-Adapter file was
    trained with, read off its image projection's input width; for a file whose width is
    no CLIP's (a pickle, a test's tiny model): its name's ("vit-h", "vit-g") or its
    family's, as the extension's IP-Adapter presets pick them."""
    try:
        shapes = read_header(found.path).shapes if found.path.suffix == ".safetensors" else {}
    except (HeaderError, OSError):
        shapes = {}
    for key, widths in _IP_INPUTS:
        shape = shapes.get(key)
        if shape and len(shape) == 2 and shape[1] in widths:
            return widths[shape[1]]
    lower = found.name.lower().replace("_", "-")
    if "vit-h" in lower:
        return "clip_h"
    if "vit-g" in lower or "vit-bigg" in lower:
        return "clip_g"
    return {"FLUX": "clip_l", "SDXL": "clip_g"}.get(found.family, "clip_h")


def find_clip_vision(folder: Path, config: str, preprocessor: str) -> Path:
    """The CLIP vision file of `config` ("clip_h", "clip_g", ...) in `folder`; a UserError
    naming the file and the folder when there is none."""
    names = CLIP_NAMES[config]
    if folder.is_dir():
        by_name = {p.name.lower(): p for p in folder.iterdir()}
        for name in names:
            if name.lower() in by_name:
                return by_name[name.lower()]
        for path in sorted(folder.glob("*.safetensors")):
            if _width(path) == _CLIP_WIDTHS[config]:
                return path
    raise UserError(f"{preprocessor} needs the {CLIP_TITLES[config]} vision model: put "
                    f"{names[0]} (or {names[2]}) into {folder}")  # fmt: skip


def _width(path: Path) -> int | None:
    try:
        shape = read_header(path).shapes.get("vision_model.embeddings.patch_embedding.weight")
    except (HeaderError, OSError):
        return None
    return int(shape[0]) if shape else None
