"""The Models tab's catalog: every model file of every kind, indexed in SQLite.

`ModelCatalog.refresh()` walks the model folders (one `stat` per file, previews found in
the directory listing) and opens only the files that are new or whose size or mtime
changed: their safetensors header gives the family and the kohya `ss_*` metadata (trigger
words, base model), and an A1111 user-metadata file beside them (`name.json`) gives the
notes. Everything is kept in `models.sqlite3` in the data folder, keyed by path with size
and mtime, so a listing (`query`: filter by kind and family, search, one page) is one SQL
query that opens no model file, with 10,000 LoRAs as with ten. Hashes are computed on
request (`ensure_hash`) and kept until the file changes.

Rename, move and delete (to `<data>/trash/models/`) take the model's sidecar files
(previews, `.json`, `.civitai.info`) along; names are checked by `safe_name` and every
path must stay inside its kind's folder.

This module must never load weights, touch the network or import a UI library.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .registry import PREVIEW_EXTENSIONS, _sha256_of, addnet_hash
from .sniff import Header, HeaderError, gguf_family, read_header, sniff
from .user_metadata import flux_variant, set_flux_variant
from .user_metadata import read_user_metadata as _read_user_metadata

log = logging.getLogger(__name__)

SUFFIXES = {
    "checkpoint": (".safetensors", ".ckpt", ".gguf"),
    "lora": (".safetensors", ".pt", ".ckpt"),
    "embedding": (".safetensors", ".pt", ".bin"),
    "vae": (".safetensors", ".pt", ".ckpt"),
    "controlnet": (".safetensors", ".pth", ".ckpt"),
    "upscaler": (".pth", ".pt", ".ckpt", ".safetensors"),
    "text_encoder": (".safetensors", ".bin", ".gguf"),
    "clip_vision": (".safetensors", ".bin"),
}
SIDECAR_SUFFIXES = tuple(
    [
        *PREVIEW_EXTENSIONS,
        *(f".preview{e}" for e in PREVIEW_EXTENSIONS),
        ".json",
        ".civitai.info",
    ]  # fmt: skip
)
_DEVICE_NAMES = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$", re.IGNORECASE)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
  path TEXT PRIMARY KEY, kind TEXT NOT NULL, rel TEXT NOT NULL, size INTEGER, mtime REAL,
  family TEXT DEFAULT '', sha256 TEXT, addnet TEXT, metadata TEXT DEFAULT '{}',
  trigger TEXT DEFAULT '', base_model TEXT DEFAULT '', preview TEXT, notes TEXT DEFAULT '');
CREATE INDEX IF NOT EXISTS models_kind ON models (kind, family, rel);
CREATE TABLE IF NOT EXISTS civitai (sha256 TEXT PRIMARY KEY, info TEXT, fetched REAL);
"""
_LIST_COLUMNS = "path, kind, rel, size, mtime, family, sha256, trigger, base_model, preview, notes"


class CatalogError(ValueError, UserError):
    """A refused name or path, or a missing model; the message says which."""


def safe_name(name: str, what: str = "name") -> str:
    """One path component a user may give: no `..`, slashes, device names or controls."""
    name = (name or "").strip()
    if not name:
        raise CatalogError(f"the {what} is empty")
    if name in (".", "..") or "/" in name or "\\" in name or ".." in name:
        raise CatalogError(f"{what} {name!r}: no '..' or slashes allowed")
    if any(ord(c) < 32 or c in '<>:"|?*' for c in name) or len(name) > 200:
        raise CatalogError(f"{what} {name!r}: characters not allowed in a file name")
    if name.startswith(".") or name.endswith((".", " ")) or _DEVICE_NAMES.match(name):
        raise CatalogError(f"{what} {name!r} is not allowed as a file name")
    return name


@dataclass(frozen=True)
class ModelRow:
    path: str
    kind: str
    rel: str
    size: int
    mtime: float
    family: str
    sha256: str | None
    trigger: str
    base_model: str
    preview: str | None
    notes: str

    @property
    def name(self) -> str:
        return Path(self.rel).stem


class ModelCatalog:
    """Model files by kind (`roots`: kind -> folder), indexed in SQLite at `db_path`."""

    def __init__(self, roots: dict[str, Path], db_path: Path, trash: Path):
        self.roots = {kind: Path(folder) for kind, folder in roots.items()}
        self.trash = trash
        self.header_reads = 0  # files opened by refresh (the tests count them)
        self._lock = threading.RLock()
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(db_path), check_same_thread=False)
        self._db.executescript(_SCHEMA)
        self.refreshed = False

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- indexing ------------------------------------------------------------------
    def refresh(self) -> int:
        """Bring the index up to date with the folders; returns the number of files."""
        total = 0
        with self._lock:
            for kind, root in self.roots.items():
                total += self._refresh_kind(kind, root)
            self._db.commit()
            self.refreshed = True
        return total

    def ensure_fresh(self) -> None:
        if not self.refreshed:
            self.refresh()

    def _refresh_kind(self, kind: str, root: Path) -> int:
        known = {p: (s, m, v) for p, s, m, v in self._db.execute(
            "SELECT path, size, mtime, preview FROM models WHERE kind = ?", (kind,))}  # fmt: skip
        seen = set()
        for path, size, mtime, preview, has_json in _walk(root, SUFFIXES[kind]):
            seen.add(str(path))
            old = known.get(str(path))
            if old is not None and old[:2] == (size, mtime):
                if old[2] != preview:  # a preview was added or removed
                    self._db.execute("UPDATE models SET preview = ? WHERE path = ?",
                                     (preview, str(path)))  # fmt: skip
                continue
            self._index_file(kind, root, path, (size, mtime, preview), has_json)
        gone = [(p,) for p in known if p not in seen]
        self._db.executemany("DELETE FROM models WHERE path = ?", gone)
        return len(seen)

    def _index_file(self, kind: str, root: Path, path: Path, stat: tuple, has_json: bool) -> None:
        size, mtime, preview = stat
        header, family = Header({}), ""
        if path.suffix.lower() == ".safetensors":
            self.header_reads += 1
            try:
                header = read_header(path)
                family = sniff(header).family
            except (OSError, HeaderError) as exc:
                log.warning("%s", exc)
        elif path.suffix.lower() == ".gguf":
            family = gguf_family(path)
        user = _read_user_metadata(path) if has_json else {}
        trigger = user.get("activation text") or trigger_words(header.metadata)
        base = header.metadata.get("ss_sd_model_name") or header.metadata.get(
            "ss_base_model_version", "")  # fmt: skip
        family = family or str(user.get("sd version") or "")
        self._db.execute(
            "INSERT OR REPLACE INTO models (path, kind, rel, size, mtime, family, sha256, "
            "addnet, metadata, trigger, base_model, preview, notes) "
            "VALUES (?, ?, ?, ?, ?, ?, NULL, NULL, ?, ?, ?, ?, ?)",
            (str(path), kind, path.relative_to(root).as_posix(), size, mtime, family,
             json.dumps(header.metadata), trigger, base, preview,
             str(user.get("notes") or "")),
        )  # fmt: skip

    # --- reading -------------------------------------------------------------------
    def query(self, kind: str | None = None, family: str | None = None, search: str = "",
              offset: int = 0, limit: int = 100) -> tuple[int, list[ModelRow]]:  # fmt: skip
        """One page of models (sorted by kind and path) and how many match in all."""
        where, args = ["1 = 1"], []
        if kind:
            where.append("kind = ?")
            args.append(kind)
        if family:
            where.append("family = ?")
            args.append(family)
        for word in search.split():
            like = f"%{word}%"
            where.append("(rel LIKE ? OR trigger LIKE ? OR base_model LIKE ? OR notes LIKE ? "
                         "OR sha256 LIKE ?)")  # fmt: skip
            args += [like, like, like, like, f"{word}%"]
        sql = " AND ".join(where)
        with self._lock:
            (total,) = self._db.execute(f"SELECT COUNT(*) FROM models WHERE {sql}", args).fetchone()
            rows = self._db.execute(
                f"SELECT {_LIST_COLUMNS} FROM models WHERE {sql} "
                "ORDER BY kind, rel COLLATE NOCASE LIMIT ? OFFSET ?",
                [*args, max(1, min(limit, 1000)), max(0, offset)],
            ).fetchall()
        return total, [ModelRow(*row) for row in rows]

    def families(self, kind: str | None = None) -> list[str]:
        sql, args = "SELECT DISTINCT family FROM models WHERE family != ''", []
        if kind:
            sql, args = sql + " AND kind = ?", [kind]
        with self._lock:
            return sorted(f for (f,) in self._db.execute(sql, args))

    def details(self, kind: str, rel: str) -> dict:
        """Everything known of one model, with the full safetensors metadata."""
        path = self.path_of(kind, rel)
        with self._lock:
            row = self._db.execute(
                f"SELECT {_LIST_COLUMNS}, addnet, metadata FROM models WHERE path = ?",
                (str(path),),
            ).fetchone()
        if row is None:
            raise CatalogError(f"{kind} {rel!r} is not in the catalog; refresh the list")
        info = ModelRow(*row[:11]).__dict__ | {"addnet": row[11], "metadata": json.loads(row[12])}
        info["civitai"] = self.civitai_cached(info["sha256"]) if info["sha256"] else None
        if kind == "checkpoint":
            info["flux_variant"] = flux_variant(path)  # "kontext" when marked (user metadata)
        return info

    def path_of(self, kind: str, rel: str) -> Path:
        """The file of `rel` inside its kind's folder; refuses anything outside it."""
        root = self.roots.get(kind)
        if root is None:
            raise CatalogError(f"unknown model kind {kind!r}; one of {', '.join(self.roots)}")
        parts = [safe_name(part, "path") for part in (rel or "").split("/")]
        path = root.joinpath(*parts)
        if not path.is_file():
            raise CatalogError(f"{kind} {rel!r} does not exist; refresh the list")
        return path

    # --- hashes and notes ----------------------------------------------------------
    def ensure_hash(self, kind: str, rel: str) -> str:
        """sha256 of the file (and the LoRA "addnet" hash), computed once per version."""
        path = self.path_of(kind, rel)
        with self._lock:
            row = self._db.execute("SELECT sha256 FROM models WHERE path = ?",
                                   (str(path),)).fetchone()  # fmt: skip
        if row and row[0]:
            return row[0]
        digest = _sha256_of(path)
        addnet = addnet_hash(path) if kind == "lora" and path.suffix == ".safetensors" else None
        with self._lock:
            self._db.execute("UPDATE models SET sha256 = ?, addnet = ? WHERE path = ?",
                             (digest, addnet, str(path)))  # fmt: skip
            self._db.commit()
        return digest

    def set_notes(self, kind: str, rel: str, notes: str) -> None:
        """The user's notes, in the A1111 user-metadata file beside the model and here."""
        path = self.path_of(kind, rel)
        sidecar = path.with_suffix(".json")
        user = _read_user_metadata(path)
        user["notes"] = notes
        tmp = sidecar.with_name(f".{sidecar.name}.tmp")
        tmp.write_text(json.dumps(user, indent=4, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, sidecar)
        with self._lock:
            self._db.execute("UPDATE models SET notes = ? WHERE path = ?", (notes, str(path)))
            self._db.commit()

    def set_flux_variant(self, kind: str, rel: str, variant: str) -> None:
        """Mark a FLUX.1 checkpoint's variant ("kontext", or "" for what its name and
        metadata say) in its user metadata (`user_metadata.flux_variant`)."""
        path = self.path_of(kind, rel)
        with self._lock:
            row = self._db.execute("SELECT family FROM models WHERE path = ?",
                                   (str(path),)).fetchone()  # fmt: skip
        if row is None:
            raise CatalogError(f"{kind} {rel!r} is not in the catalog; refresh the list")
        if kind != "checkpoint" or not str(row[0]).startswith("FLUX"):
            raise CatalogError(f"{rel!r} is not a FLUX.1 checkpoint: it has no FLUX.1 variant")
        try:
            set_flux_variant(path, variant)
        except ValueError as exc:
            raise CatalogError(str(exc)) from None

    # --- Civitai cache ---------------------------------------------------------------
    def civitai_cached(self, sha256: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT info FROM civitai WHERE sha256 = ?",
                                   (sha256.lower(),)).fetchone()  # fmt: skip
        return json.loads(row[0]) if row else None

    def store_civitai(self, sha256: str, info: dict) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO civitai VALUES (?, ?, ?)",
                             (sha256.lower(), json.dumps(info), time.time()))  # fmt: skip
            self._db.commit()

    # --- file operations -------------------------------------------------------------
    def rename(self, kind: str, rel: str, new_name: str) -> str:
        """Give the model (and its sidecars) a new file name in the same folder."""
        path = self.path_of(kind, rel)
        new_name = safe_name(new_name)
        suffix = Path(new_name).suffix.lower()
        if suffix in SUFFIXES[kind] and suffix != path.suffix.lower():
            raise CatalogError(f"{new_name!r}: the file stays a {path.suffix} file; rename "
                               "keeps the format")  # fmt: skip
        if suffix != path.suffix.lower():
            new_name += path.suffix
        return self._move(kind, path, path.with_name(new_name))

    def move(self, kind: str, rel: str, folder: str) -> str:
        """Move the model (and its sidecars) to a subfolder of its kind's folder ("" = top)."""
        path = self.path_of(kind, rel)
        parts = [safe_name(p, "folder") for p in folder.strip().strip("/").split("/") if p]
        return self._move(kind, path, self.roots[kind].joinpath(*parts, path.name))

    def delete(self, kind: str, rel: str) -> Path:
        """Move the model and its sidecars to the trash folder; returns where it went."""
        path = self.path_of(kind, rel)
        target = self.trash / kind / time.strftime("%Y%m%d-%H%M%S") / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        for source, dest in _with_sidecars(path, target):
            shutil.move(source, dest)
        with self._lock:
            self._db.execute("DELETE FROM models WHERE path = ?", (str(path),))
            self._db.commit()
        return target

    def _move(self, kind: str, path: Path, target: Path) -> str:
        if target.exists():
            raise CatalogError(f"{target.name} exists already in that folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        moves = list(_with_sidecars(path, target))
        for _source, dest in moves:
            if dest.exists():
                raise CatalogError(f"{dest.name} exists already in that folder")
        for source, dest in moves:
            os.replace(source, dest)
        rel = target.relative_to(self.roots[kind]).as_posix()
        with self._lock:
            self._db.execute("UPDATE models SET path = ?, rel = ?, preview = NULL WHERE path = ?",
                             (str(target), rel, str(path)))  # fmt: skip
            self._db.commit()
        self.refresh()  # previews and sidecars under their new names
        return rel


def _walk(
    root: Path, suffixes: tuple[str, ...]
) -> Iterator[tuple[Path, int, float, str | None, bool]]:
    """(path, size, mtime, preview, has a .json sidecar) of each model file under root."""
    if not root.is_dir():
        return
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        names = set(files)
        for name in files:
            lower = name.lower()
            if name.startswith(".") or ".partial." in lower or not lower.endswith(suffixes):
                continue
            path = Path(folder, name)
            try:
                st = path.stat()
            except OSError:
                continue
            stem = name[: name.rfind(".")]
            preview = next((f"{folder}/{stem}{mid}{ext}" for mid in ("", ".preview")
                            for ext in PREVIEW_EXTENSIONS if f"{stem}{mid}{ext}" in names), None)  # fmt: skip
            yield path, st.st_size, st.st_mtime, preview, f"{stem}.json" in names


def preview_beside(path: Path) -> Path | None:
    """The preview image lying beside a model file (`name.png`, `name.preview.jpeg`, ...)."""
    for middle in ("", ".preview"):
        for ext in PREVIEW_EXTENSIONS:
            candidate = path.with_name(f"{path.stem}{middle}{ext}")
            if candidate.is_file():
                return candidate
    return None


def kind_roots(models_dir: Path, ckpt: Path, lora: Path, embeddings: Path, vae: Path) -> dict:
    """Each kind's folder, as A1111 and its extensions lay out `models/`."""
    return {"checkpoint": ckpt, "lora": lora, "embedding": embeddings, "vae": vae,
            "controlnet": models_dir / "ControlNet", "upscaler": models_dir / "ESRGAN",
            "text_encoder": models_dir / "text_encoder",
            "clip_vision": models_dir / "clip_vision"}  # fmt: skip


def _with_sidecars(path: Path, target: Path) -> Iterator[tuple[Path, Path]]:
    yield path, target
    for suffix in SIDECAR_SUFFIXES:
        side = path.with_name(path.stem + suffix)
        if side.is_file():
            yield side, target.with_name(target.stem + suffix)


def trigger_words(metadata: dict[str, str], top: int = 5) -> str:
    """The most frequent training tags of a kohya LoRA (`ss_tag_frequency`), comma-joined."""
    try:
        frequency = json.loads(metadata.get("ss_tag_frequency") or "{}")
    except ValueError:
        return ""
    counts: dict[str, int] = {}
    for tags in frequency.values() if isinstance(frequency, dict) else ():
        for tag, n in (tags or {}).items():
            counts[tag.strip()] = counts.get(tag.strip(), 0) + int(n)
    ranked = sorted(counts, key=lambda t: (-counts[t], t))
    return ", ".join(t for t in ranked[:top] if t)
