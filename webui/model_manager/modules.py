"""Forge's "VAE / Text Encoder" modules: the separate files a partial checkpoint (a FLUX
transformer alone) is completed with, found in `models/VAE` and `models/text_encoder`
(and the extra folders the flags add: ComfyUI's `vae`, `text_encoders`, `clip`).

A module is named by its file name (`ae.safetensors`), its path relative to its folder,
its full path as Forge's `forge_additional_modules` option stores it, or its stem as an
infotext's `Module N` field writes it (`ae`); only files found
in the module folders are ever used (`ModuleFiles.resolve`). What each file is ("vae",
"clip_l", "t5xxl", Z-Image's "qwen3") is read from its safetensors header, or a GGUF text
encoder's header in transformers' names (`module_shapes`, `gguf_text`: city96's
`t5-v1_1-xxl-encoder-Q8_0.gguf`, `Qwen3-4B-Q8_0.gguf`).

This module must never import torch or a UI library, and never load weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .flux_keys import module_kind
from .gguf_names import gguf_shapes
from .identify import Shapes
from .sniff import HeaderError, read_header
from .zimage_keys import module_kind as zimage_module_kind

SUFFIXES = (".safetensors", ".sft", ".gguf")


class UnknownModuleError(LookupError, UserError):
    """A module name that is none of the module folders' files."""


@dataclass(frozen=True)
class ModuleFile:
    name: str  # the file name, as Forge lists it
    path: Path


class ModuleFiles:
    """The module files of some folders, listed afresh on every call (a folder listing)."""

    def __init__(self, folders: Iterable[Path]):
        self.folders = [Path(f) for f in dict.fromkeys(folders)]

    def list(self) -> list[ModuleFile]:
        found: list[ModuleFile] = []
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*")):
                if path.is_file() and path.suffix.lower() in SUFFIXES:
                    found.append(ModuleFile(path.name, path))
        return found

    def names(self) -> list[str]:
        return [module.name for module in self.list()]

    def resolve(self, values: Sequence[str]) -> list[Path]:
        """The files `values` name (file name, path relative to a module folder, or full
        path); UnknownModuleError names the first value that is none of them."""
        modules = self.list()
        paths: list[Path] = []
        for value in values:
            path = self._find(str(value), modules)
            if path is None:
                known = ", ".join(m.name for m in modules) or "none"
                raise UnknownModuleError(
                    f"no module file {value!r} in {', '.join(map(str, self.folders))} "
                    f"(found: {known})"
                )
            paths.append(path)
        return paths

    def _find(self, value: str, modules: list[ModuleFile]) -> Path | None:
        for module in modules:
            if value == module.name or Path(value) == module.path:
                return module.path
            if any(_relative(module.path, folder) == value for folder in self.folders):
                return module.path
        # the stem an infotext's `Module N` field names ("ae"), as Forge's paste matches it
        return next((m.path for m in modules if m.path.stem == value), None)


def _relative(path: Path, folder: Path) -> str | None:
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return None


def module_kinds(paths: Iterable[Path]) -> dict[str, Path]:
    """kind ("vae", "clip_l", "t5xxl", "qwen3") -> the first of `paths` that is one (headers only);
    files of no known kind are left out."""
    kinds: dict[str, Path] = {}
    for path in paths:
        try:
            shapes = module_shapes(path)
            kind = module_kind(shapes) or zimage_module_kind(shapes)
        except (OSError, HeaderError):
            continue
        if kind is not None:
            kinds.setdefault(kind, path)
    return kinds


def module_shapes(path: Path) -> Shapes:
    """A module file's tensor names and shapes (no weights): a safetensors header, or a
    GGUF file's (a text encoder's in transformers' names). HeaderError when unreadable."""
    if path.suffix.lower() != ".gguf":
        return read_header(path).shapes
    try:
        return gguf_shapes(path)
    except Exception as exc:  # a damaged or foreign file: the gguf package raises many kinds
        raise HeaderError(f"{path.name}: cannot read the GGUF header ({exc})") from exc
