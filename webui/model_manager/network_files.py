"""Folders of small model files (LoRA, embeddings, VAE): scanned once, refreshed on demand.

A scan walks the folder recursively (following links, skipping hidden entries and
`.partial.` downloads), notes each file's size and mtime and the preview image lying
beside it (`name.png`, `name.preview.png`, also .jpg/.jpeg/.webp) from the directory
listing, without opening any file. Thousands of files scan in milliseconds; nothing is
hashed or loaded until it is used.

Also: loading tensors from such a file (safetensors, or a pickle through torch's
tensors-only unpickler unless the user disabled safe unpickling) and the LoRA "addnet"
hash (sha256 of a safetensors file after its header), cached like file hashes.

This module must never import a UI library.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .registry import PREVIEW_EXTENSIONS, HashCache, _stamp, addnet_hash

log = logging.getLogger(__name__)


class NetworkFileError(RuntimeError, UserError):
    """A LoRA, embedding or VAE file cannot be used; the message names the file."""


@dataclass(frozen=True)
class NetworkFile:
    path: Path
    rel: str  # relative to the folder, "/"-separated
    size: int
    mtime: float
    preview: Path | None = None

    @property
    def name(self) -> str:
        """A1111's name: the file stem (`add_detail` for `sub/add_detail.safetensors`)."""
        return Path(self.rel).stem

    @property
    def filename(self) -> str:
        return Path(self.rel).name


def scan_folder(folder: Path, suffixes: tuple[str, ...]) -> list[NetworkFile]:
    if not folder.is_dir():
        return []
    found: list[NetworkFile] = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        names = set(files)
        root_path = Path(root)
        for name in sorted(files):
            lower = name.lower()
            if name.startswith(".") or ".partial." in lower or not lower.endswith(suffixes):
                continue
            path = root_path / name
            try:
                st = path.stat()
            except OSError:
                continue
            stem = name[: -len(next(s for s in suffixes if lower.endswith(s)))]
            rel = path.relative_to(folder).as_posix()
            found.append(
                NetworkFile(path, rel, st.st_size, st.st_mtime, _preview(root_path, stem, names))
            )
    found.sort(key=lambda f: f.rel.lower())
    return found


def _preview(root: Path, stem: str, names: set[str]) -> Path | None:
    for middle in ("", ".preview"):
        for ext in PREVIEW_EXTENSIONS:
            candidate = f"{stem}{middle}{ext}"
            if candidate in names:
                return root / candidate
    return None


class FileIndex:
    """The files of one folder, by name; `refresh()` rescans."""

    def __init__(self, folder: Path, suffixes: tuple[str, ...], extra_folders=()):
        self.folder = folder
        self.suffixes = suffixes
        self.extra_folders = tuple(extra_folders)
        self._lock = threading.Lock()
        self._files: list[NetworkFile] = []
        self._by_name: dict[str, NetworkFile] = {}
        self.refresh()

    def refresh(self) -> list[NetworkFile]:
        files = scan_folder(self.folder, self.suffixes)
        for folder, suffixes in self.extra_folders:
            files += scan_folder(folder, suffixes)
        by_name: dict[str, NetworkFile] = {}
        for f in files:
            if f.name in by_name:
                log.warning(
                    "%s: another file is also named %s; using %s",
                    f.rel,
                    f.name,
                    by_name[f.name].rel,
                )
                continue
            by_name[f.name] = f
        with self._lock:
            self._files, self._by_name = files, by_name
        return list(files)

    def list(self) -> list[NetworkFile]:
        with self._lock:
            return list(self._files)

    def find(self, name: str) -> NetworkFile | None:
        with self._lock:
            found = self._by_name.get(name)
            if found is None:  # a relative path or file name works too
                found = next((f for f in self._files if name in (f.rel, f.filename)), None)
            return found


def load_tensors(path: Path, *, allow_unsafe_pickle: bool = False) -> dict:
    """The tensors of a .safetensors file, or the dict of a pickled .pt/.ckpt/.bin file."""
    import torch

    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        try:
            return torch.load(str(path), map_location="cpu", weights_only=not allow_unsafe_pickle)
        except Exception as exc:
            if "weights_only" in str(exc) or "Unsupported global" in str(exc):
                raise NetworkFileError(
                    f"{path.name}: refused, the pickle holds more than tensors (it could run "
                    "code). Convert it to .safetensors, or start with --disable-safe-unpickle "
                    "if you trust it."
                ) from None
            raise
    except NetworkFileError:
        raise
    except Exception as exc:
        raise NetworkFileError(f"{path.name}: cannot read the file ({exc})") from exc


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors header (training info of kohya LoRAs)."""
    if path.suffix.lower() != ".safetensors":
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # an unreadable header: no metadata, the load will say why
        log.warning("%s: cannot read the metadata (%s)", path.name, exc)
        return {}


class AddnetHashCache(HashCache):
    """A1111's LoRA hash: sha256 of a safetensors file after its header ("addnet")."""

    def sha256(self, path: Path) -> str:
        found = self.cached(path)
        if found:
            return found
        digest = addnet_hash(path)
        with self._lock:
            self._data[str(path)] = {"stamp": _stamp(path), "sha256": digest}
            self._save()
        return digest
