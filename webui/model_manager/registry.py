"""Find checkpoints on disk and remember their hashes.

Scans the checkpoint folder recursively for single files (`.safetensors`, `.ckpt`, `.gguf`)
and diffusers folders (a folder holding model_index.json), then ComfyUI's transformer
folders (`models/unet`, `models/diffusion_models`: `transformer_folders`) for single files.
Names and titles follow A1111: name = file stem, title = "relative/path.safetensors
[shorthash]". The sha256 of a file is computed once and kept in cache.json, keyed by path,
size and mtime.

This module must never load model weights or import a UI library.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIXES = (".safetensors", ".ckpt", ".gguf")  # .gguf: FLUX transformers (flux_gguf)
PREVIEW_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")  # previews beside model files


@dataclass
class CheckpointInfo:
    path: Path
    rel: str  # path relative to the checkpoint folder, "/"-separated
    is_folder: bool
    sha256: str | None = field(default=None)

    @property
    def name(self) -> str:
        """A1111's model name: the file stem (infotext "Model")."""
        return Path(self.rel).stem if not self.is_folder else Path(self.rel).name

    @property
    def shorthash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    @property
    def title(self) -> str:
        return f"{self.rel} [{self.shorthash}]" if self.shorthash else self.rel


class HashCache:
    """sha256 of files, persisted in a JSON file and valid while size and mtime match."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, dict] = {}
        try:
            self._data = json.loads(path.read_text()).get("hashes", {})
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("ignoring unreadable hash cache %s: %s", path, exc)

    def cached(self, path: Path) -> str | None:
        entry = self._data.get(str(path))
        if entry and entry.get("stamp") == _stamp(path):
            return entry["sha256"]
        return None

    def sha256(self, path: Path) -> str:
        found = self.cached(path)
        if found:
            return found
        log.info("Calculating sha256 for %s", path.name)
        digest = _sha256_of(path)
        with self._lock:
            self._data[str(path)] = {"stamp": _stamp(path), "sha256": digest}
            self._save()
        return digest

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"hashes": self._data}, indent=1))
        os.replace(tmp, self.path)


def _stamp(path: Path) -> list:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return [[str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime] for p in files]
    st = path.stat()
    return [st.st_size, st.st_mtime]


def _sha256_of(path: Path) -> str:
    """sha256 of a file; of a folder, over its files' relative names and contents in order."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def addnet_hash(path: Path) -> str:
    """A1111's LoRA hash: sha256 of a safetensors file after its header ("addnet")."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        header = int.from_bytes(f.read(8), "little")
        f.seek(8 + header)
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class CheckpointRegistry:
    """The list of checkpoints the user can pick, rebuilt on refresh()."""

    def __init__(self, folder: Path, hashes: HashCache, extra: list[Path] | None = None,
                 extra_folders: tuple[Path, ...] = ()):  # fmt: skip
        self.folder = folder
        self.hashes = hashes
        self.extra = extra or []
        self.extra_folders = tuple(extra_folders)  # scanned for single files after `folder`
        self._lock = threading.Lock()
        self._items: list[CheckpointInfo] = []
        self.refresh()

    def refresh(self) -> list[CheckpointInfo]:
        found = _scan(self.folder)
        for folder in self.extra_folders:
            known = {i.path for i in found}
            found += [i for i in _scan(folder) if not i.is_folder and i.path not in known]
        for path in self.extra:
            if path.exists() and all(i.path != path.resolve() for i in found):
                found.append(CheckpointInfo(path.resolve(), path.name, path.is_dir()))
        for info in found:
            info.sha256 = self.hashes.cached(info.path)
        with self._lock:
            self._items = found
        return list(found)

    def list(self) -> list[CheckpointInfo]:
        with self._lock:
            return list(self._items)

    def find(self, name: str) -> CheckpointInfo | None:
        """Look up by title, relative path, stem, short hash or full sha256 (A1111 accepts all)."""
        wanted = name.strip()
        items = self.list()
        for key in (
            lambda i: i.title,
            lambda i: i.rel,
            lambda i: i.name,
            lambda i: i.shorthash,
            lambda i: i.sha256,
            lambda i: Path(i.rel).name,
        ):
            for info in items:
                if key(info) and key(info) == wanted:
                    return info
        without_hash = wanted.rsplit(" [", 1)[0]
        if not without_hash:
            return None
        # "name [hash]" (A1111's short title, as infotext "Refiner" writes it) or "rel [old hash]"
        return next((i for i in items if without_hash in (i.rel, i.name)), None)

    def ensure_hash(self, info: CheckpointInfo) -> str:
        if info.sha256 is None:
            info.sha256 = self.hashes.sha256(info.path)
        return info.sha256


def _scan(folder: Path) -> list[CheckpointInfo]:
    if not folder.is_dir():
        return []
    found: list[CheckpointInfo] = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        root_path = Path(root)
        if "model_index.json" in files and root_path != folder:
            found.append(CheckpointInfo(root_path.resolve(), _rel(root_path, folder), True))
            dirs.clear()  # a diffusers folder's subfolders are its components
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.endswith(SUFFIXES) and not name.startswith(".") and ".partial." not in name:
                path = root_path / name
                found.append(CheckpointInfo(path.resolve(), _rel(path, folder), False))
    found.sort(key=lambda i: i.rel.lower())
    return found


def _rel(path: Path, folder: Path) -> str:
    return path.relative_to(folder).as_posix()


def transformer_folders(models_dir: Path) -> tuple[Path, ...]:
    """ComfyUI's folders of transformer-only files (FLUX .safetensors and .gguf) under
    `models_dir`, scanned with the checkpoint folder."""
    return (models_dir / "unet", models_dir / "diffusion_models")
