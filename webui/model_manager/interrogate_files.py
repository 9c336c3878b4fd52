"""Where the interrogate models live, found without loading them.

A1111 keeps its interrogate files in `models/interrogate` and DeepBooru in
`models/torch_deepdanbooru`; this project reads the same folders, offline:

- "clip" (A1111's Interrogate CLIP): a transformers BLIP captioning folder
  (`config.json` with `model_type` "blip", e.g. Salesforce/blip-image-captioning-large as
  `save_pretrained` or a Hugging Face download writes it) and a transformers CLIP folder
  (`model_type` "clip", e.g. openai/clip-vit-large-patch14), both somewhere in
  `models/interrogate/<folder>/`; the category lists are the user's
  `models/interrogate/*.txt` (A1111's artists/flavors/mediums/movements files; a name
  ending in `.topN` gives N matches);
- "deepdanbooru": a DeepDanbooru model exported to ONNX (`*.onnx`) with its `tags.txt`
  in `models/torch_deepdanbooru/`;
- a WD14-style tagger: `models/interrogate/<name>/` with `model.onnx` (or one `*.onnx`)
  and `selected_tags.csv`.

A missing file raises `MissingModelError` naming the file and the folder it belongs in.
This module must never import torch, transformers or onnxruntime (the services call it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

CLIP, DEEPBOORU = "clip", "deepdanbooru"
TAGS_CSV = "selected_tags.csv"
DEEPBOORU_TAGS = "tags.txt"
_TOPN = re.compile(r"\.top(\d+)$")
RATING, GENERAL, CHARACTER = 9, 0, 4  # WD14 selected_tags.csv categories


class MissingModelError(LookupError, UserError):
    """An interrogate model's file is not where it must be; the message says which."""


class BadModelFileError(ValueError, UserError):
    """An interrogate model's files are there but unusable; the message says which."""


@dataclass(frozen=True)
class Tag:
    name: str
    category: int  # WD14 category; DeepDanbooru tags are GENERAL ("rating:" ones RATING)


@dataclass(frozen=True)
class Category:
    """One CLIP ranking list (a `models/interrogate/*.txt` file)."""

    name: str
    path: Path
    topn: int


@dataclass(frozen=True)
class ClipFiles:
    blip: Path  # transformers BLIP captioning folder
    clip: Path  # transformers CLIP folder
    categories: tuple[Category, ...]


@dataclass(frozen=True)
class OnnxTaggerFiles:
    model: Path  # the .onnx file
    tags: Path  # selected_tags.csv (WD14) or tags.txt (DeepDanbooru)


def _model_type(folder: Path) -> str:
    try:
        return str(json.loads((folder / "config.json").read_text("utf-8")).get("model_type", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def _folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def categories(interrogate_dir: Path) -> list[Category]:
    """The category lists in `models/interrogate`, by name."""
    if not interrogate_dir.is_dir():
        return []
    found = []
    for path in sorted(interrogate_dir.glob("*.txt")):
        match = _TOPN.search(path.stem)
        found.append(Category(path.stem, path, int(match.group(1)) if match else 1))
    return found


def clip_files(interrogate_dir: Path) -> ClipFiles:
    """The BLIP and CLIP folders and the category lists; raises MissingModelError."""
    by_type: dict[str, Path] = {}
    for folder in _folders(interrogate_dir):
        by_type.setdefault(_model_type(folder), folder)
    for kind, example in (
        ("blip", "blip-image-captioning-large"),
        ("clip", "clip-vit-large-patch14"),
    ):
        if kind not in by_type:
            raise MissingModelError(
                f"Interrogate CLIP needs a transformers {kind.upper()} model folder (config.json "
                f'with "model_type": "{kind}", e.g. {example}) in {interrogate_dir}'
            )
    return ClipFiles(by_type["blip"], by_type["clip"], tuple(categories(interrogate_dir)))


def _one_onnx(folder: Path) -> Path | None:
    if (folder / "model.onnx").is_file():
        return folder / "model.onnx"
    found = sorted(folder.glob("*.onnx")) if folder.is_dir() else []
    return found[0] if found else None


def deepbooru_files(deepbooru_dir: Path) -> OnnxTaggerFiles:
    """The DeepDanbooru ONNX model and tags.txt; raises MissingModelError."""
    model = _one_onnx(deepbooru_dir)
    if model is None:
        pt = deepbooru_dir / "model-resnet_custom_v3.pt"
        note = (
            f" ({pt.name} is A1111's state dict for its own network class, which this "
            "project does not include: use the DeepDanbooru model exported to ONNX)"
            if pt.is_file()
            else ""
        )
        raise MissingModelError(
            f"Interrogate DeepBooru needs a DeepDanbooru model.onnx and {DEEPBOORU_TAGS} "
            f"in {deepbooru_dir}{note}"
        )
    tags = deepbooru_dir / DEEPBOORU_TAGS
    if not tags.is_file():
        raise MissingModelError(f"Interrogate DeepBooru needs {DEEPBOORU_TAGS} in {deepbooru_dir}")
    return OnnxTaggerFiles(model, tags)


def tagger_names(interrogate_dir: Path) -> list[str]:
    """The WD14-style tagger folders: `<name>/` with an .onnx file and selected_tags.csv."""
    return [
        folder.name
        for folder in _folders(interrogate_dir)
        if (folder / TAGS_CSV).is_file() and _one_onnx(folder) is not None
    ]


def tagger_files(interrogate_dir: Path, name: str) -> OnnxTaggerFiles:
    """The tagger `name` (a folder of models/interrogate); raises MissingModelError."""
    folder = interrogate_dir / name
    if not name or "/" in name or "\\" in name or name in (".", "..") or not folder.is_dir():
        raise MissingModelError(
            f"no tagger folder {name!r} in {interrogate_dir} (a WD14 tagger is a folder "
            f"with model.onnx and {TAGS_CSV})"
        )
    model = _one_onnx(folder)
    if model is None:
        raise MissingModelError(f"the tagger {name!r} needs model.onnx in {folder}")
    if not (folder / TAGS_CSV).is_file():
        raise MissingModelError(f"the tagger {name!r} needs {TAGS_CSV} in {folder}")
    return OnnxTaggerFiles(model, folder / TAGS_CSV)
