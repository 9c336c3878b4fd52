"""The image browser's index: every picture in the output folders, with its infotext.

Tables of their own in the job store's SQLite file (`jobs.sqlite3` in the data folder:
one file to back up, WAL already on; the browser never touches the job store's tables):
`browser_images` (one row per file: path, mtime, size, pixels, the infotext's fields,
favourite), `browser_fts` (FTS5 over prompt and negative prompt, kept in step by
triggers) and `browser_embeddings` (one CLIP image embedding per image and model).

- `scan` is incremental: a file is opened only when its path is new or its mtime or size
  changed; rows of files that are gone, or no longer in a scanned folder, are dropped
  (their embeddings with them): the index holds the image files of the folders now.
- `search` filters by prompt words (FTS5), model, sampler, seed, size, date range and
  favourites, and pages by keyset (`Page.next_cursor`): every sort has an index ending in
  `id`, so a page costs the same at row 100,000 as at row 0.
- `trash` moves a file into the trash folder, never deletes it.

This module must never import torch, a UI library or a web framework; it reads pictures
with Pillow only.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..imaging.infotext import parse_infotext, read_infotext_from_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
SORTS = {"date": "mtime", "name": "path", "seed": "seed", "size": "pixels"}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS browser_images (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    mtime REAL NOT NULL,
    bytes INTEGER NOT NULL,
    width INTEGER NOT NULL DEFAULT 0,
    height INTEGER NOT NULL DEFAULT 0,
    pixels INTEGER NOT NULL DEFAULT 0,
    prompt TEXT NOT NULL DEFAULT '',
    negative TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL DEFAULT '',
    sampler TEXT NOT NULL DEFAULT '',
    seed INTEGER NOT NULL DEFAULT -1,
    infotext TEXT NOT NULL DEFAULT '',
    favourite INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS browser_by_mtime ON browser_images (mtime, id);
CREATE INDEX IF NOT EXISTS browser_by_seed ON browser_images (seed, id);
CREATE INDEX IF NOT EXISTS browser_by_pixels ON browser_images (pixels, id);
CREATE INDEX IF NOT EXISTS browser_by_path ON browser_images (path, id);
CREATE INDEX IF NOT EXISTS browser_by_model ON browser_images (model, mtime, id);
CREATE INDEX IF NOT EXISTS browser_by_sampler ON browser_images (sampler, mtime, id);
CREATE INDEX IF NOT EXISTS browser_by_favourite ON browser_images (favourite, mtime, id);
CREATE VIRTUAL TABLE IF NOT EXISTS browser_fts USING fts5(
    prompt, negative, content='browser_images', content_rowid='id');
CREATE TRIGGER IF NOT EXISTS browser_fts_ins AFTER INSERT ON browser_images BEGIN
    INSERT INTO browser_fts (rowid, prompt, negative) VALUES (new.id, new.prompt, new.negative);
END;
CREATE TRIGGER IF NOT EXISTS browser_fts_del AFTER DELETE ON browser_images BEGIN
    INSERT INTO browser_fts (browser_fts, rowid, prompt, negative)
        VALUES ('delete', old.id, old.prompt, old.negative);
    DELETE FROM browser_embeddings WHERE image_id = old.id;
END;
CREATE TRIGGER IF NOT EXISTS browser_fts_upd AFTER UPDATE OF prompt, negative, mtime, bytes
    ON browser_images BEGIN
    INSERT INTO browser_fts (browser_fts, rowid, prompt, negative)
        VALUES ('delete', old.id, old.prompt, old.negative);
    INSERT INTO browser_fts (rowid, prompt, negative) VALUES (new.id, new.prompt, new.negative);
    DELETE FROM browser_embeddings WHERE image_id = old.id;
END;
CREATE TABLE IF NOT EXISTS browser_embeddings (
    image_id INTEGER NOT NULL,
    model TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (model, image_id)
);
"""
_COLUMNS = "id, path, mtime, bytes, width, height, prompt, negative, model, sampler, seed, infotext, favourite"  # noqa: E501


@dataclass(frozen=True)
class IndexedImage:
    id: int
    path: str
    mtime: float
    bytes: int
    width: int
    height: int
    prompt: str
    negative: str
    model: str
    sampler: str
    seed: int
    infotext: str
    favourite: bool


@dataclass(frozen=True)
class Filters:
    """What `search` keeps; empty fields keep everything. Dates are Unix times."""

    words: str = ""  # prompt words (FTS5; every word must occur, a trailing * is a prefix)
    model: str = ""
    sampler: str = ""
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    since: float | None = None
    until: float | None = None
    favourites: bool = False
    ids: tuple[int, ...] | None = None  # only these images (a map cluster)


@dataclass(frozen=True)
class Page:
    images: list[IndexedImage]
    total: int
    next_cursor: tuple[Any, int] | None  # pass as `cursor` for the next page; None: last page


@dataclass
class ScanResult:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: list[str] = field(default_factory=list)  # files that are not readable images


class ImageIndex:
    """The index in one SQLite file; safe to share between threads (one lock)."""

    def __init__(self, path: Path | str):
        self.path = Path(path) if str(path) != ":memory:" else path
        self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- scanning -----------------------------------------------------------------------
    def scan(self, folders: Iterable[Path], skip: Iterable[Path] = ()) -> ScanResult:
        """Bring the index up to date with the image files under `folders` (recursively,
        except under `skip`: the trash). Opens only new and changed files."""
        roots = [Path(f).resolve() for f in folders if Path(f).is_dir()]
        skipped = {Path(s).resolve() for s in skip}
        with self._lock:
            known = {p: (m, b) for p, m, b in self._db.execute(
                "SELECT path, mtime, bytes FROM browser_images")}  # fmt: skip
        result, seen = ScanResult(), set()
        for root in roots:
            for path, stat in _walk(root, skipped):
                key = str(path)
                seen.add(key)
                old = known.get(key)
                if old == (stat.st_mtime, stat.st_size):
                    result.unchanged += 1
                    continue
                row = read_image_row(path, stat)
                if row is None:
                    result.failed.append(key)
                    continue
                self._upsert(row)
                if old is None:
                    result.added += 1
                else:
                    result.updated += 1
        gone = [p for p in known if p not in seen]  # deleted, or a folder no longer listed
        with self._lock, self._db:
            self._db.executemany("DELETE FROM browser_images WHERE path = ?", [(p,) for p in gone])
        result.removed = len(gone)
        return result

    def _upsert(self, row: dict[str, Any]) -> None:
        names = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        updates = ", ".join(f"{k} = excluded.{k}" for k in row if k != "path")
        sql = (f"INSERT INTO browser_images ({names}) VALUES ({marks}) "
               f"ON CONFLICT (path) DO UPDATE SET {updates}")  # fmt: skip
        with self._lock, self._db:
            self._db.execute(sql, row)

    # --- reading ------------------------------------------------------------------------
    def search(
        self,
        filters: Filters = Filters(),
        sort: str = "date",
        descending: bool = True,
        limit: int = 50,
        cursor: tuple[Any, int] | None = None,
    ) -> Page:
        """One page of images; `cursor` is the previous page's `next_cursor`."""
        where, args = _where(filters)
        with self._lock:
            total = self._db.execute(
                f"SELECT COUNT(*) FROM browser_images WHERE {where}", args
            ).fetchone()[0]
            sql, page_args = page_query(where, args, sort, descending, limit, cursor)
            rows = self._db.execute(sql, page_args).fetchall()
        images = [IndexedImage(*r[:-1], bool(r[-1])) for r in rows]
        next_cursor = None
        if len(images) == limit:
            last = images[-1]
            next_cursor = (getattr(last, _attribute(sort)), last.id)
        return Page(images, total, next_cursor)

    def explain(self, sql: str, args: list[Any]) -> list[str]:
        """SQLite's query plan for `sql` (tests check that pages use an index)."""
        with self._lock:
            return [r[-1] for r in self._db.execute(f"EXPLAIN QUERY PLAN {sql}", args)]

    def get(self, image_id: int) -> IndexedImage | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM browser_images WHERE id = ?", (image_id,)
            ).fetchone()
        return IndexedImage(*row[:-1], bool(row[-1])) if row else None

    def values(self, column: str) -> list[str]:
        """The distinct models or samplers in the index (for the filter lists)."""
        if column not in ("model", "sampler"):
            raise ValueError(f"no list of {column!r}")
        with self._lock:
            rows = self._db.execute(
                f"SELECT DISTINCT {column} FROM browser_images WHERE {column} != '' "
                f"ORDER BY {column}"
            ).fetchall()
        return [r[0] for r in rows]

    # --- changing -----------------------------------------------------------------------
    def set_favourite(self, image_id: int, favourite: bool) -> bool:
        with self._lock, self._db:
            cur = self._db.execute(
                "UPDATE browser_images SET favourite = ? WHERE id = ?", (int(favourite), image_id)
            )
        return cur.rowcount == 1

    def trash(self, image_id: int, trash_dir: Path) -> Path | None:
        """Move the image's file into `trash_dir` (never deleted) and drop its row; the
        new path, or None for an unknown id. A name taken in the trash gets a number."""
        image = self.get(image_id)
        if image is None:
            return None
        source = Path(image.path)
        trash_dir.mkdir(parents=True, exist_ok=True)
        target = _free_name(trash_dir / source.name)
        if source.exists():
            shutil.move(str(source), target)
        with self._lock, self._db:
            self._db.execute("DELETE FROM browser_images WHERE id = ?", (image_id,))
        return target

    # --- embeddings ---------------------------------------------------------------------
    def missing_embeddings(self, model: str) -> list[tuple[int, str]]:
        """(id, path) of the images without an embedding from `model`."""
        with self._lock:
            return self._db.execute(
                "SELECT id, path FROM browser_images WHERE id NOT IN "
                "(SELECT image_id FROM browser_embeddings WHERE model = ?) ORDER BY id",
                (model,),
            ).fetchall()

    def put_embeddings(self, model: str, rows: Iterable[tuple[int, np.ndarray]]) -> None:
        data = [(i, model, np.asarray(v, dtype=np.float32).tobytes()) for i, v in rows]
        with self._lock, self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO browser_embeddings (image_id, model, vector) "
                "SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM browser_images WHERE id = ?1)",
                data,
            )

    def embeddings(self, model: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors as an n x d float32 array) of every image embedded by `model`."""
        with self._lock:
            rows = self._db.execute(
                "SELECT image_id, vector FROM browser_embeddings WHERE model = ? ORDER BY image_id",
                (model,),
            ).fetchall()
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        return ids, np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])

    def embedding_models(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT model FROM browser_embeddings").fetchall()
        return [r[0] for r in rows]


def page_query(
    where: str, args: list[Any], sort: str, descending: bool, limit: int, cursor: Any
) -> tuple[str, list[Any]]:
    """The keyset-paged SELECT for one page (also used by tests to read its plan)."""
    if sort not in SORTS:
        raise ValueError(f"sort must be one of {', '.join(SORTS)}")
    column, op, order = SORTS[sort], ("<" if descending else ">"), ("DESC" if descending else "ASC")
    args = list(args)
    if cursor is not None:
        where += f" AND ({column}, id) {op} (?, ?)"
        args += [cursor[0], int(cursor[1])]
    sql = (f"SELECT {_COLUMNS} FROM browser_images WHERE {where} "
           f"ORDER BY {column} {order}, id {order} LIMIT ?")  # fmt: skip
    return sql, [*args, int(limit)]


def _attribute(sort: str) -> str:
    return {"date": "mtime", "name": "path", "seed": "seed", "size": "pixels"}[sort]


def _where(f: Filters) -> tuple[str, list[Any]]:
    parts, args = ["1"], []
    if f.words.strip():
        parts.append("id IN (SELECT rowid FROM browser_fts WHERE browser_fts MATCH ?)")
        args.append(fts_query(f.words))
    for column, value in (("model", f.model), ("sampler", f.sampler)):
        if value:
            parts.append(f"{column} = ?")
            args.append(value)
    for column, value in (("seed", f.seed), ("width", f.width), ("height", f.height)):
        if value is not None:
            parts.append(f"{column} = ?")
            args.append(int(value))
    if f.since is not None:
        parts.append("mtime >= ?")
        args.append(float(f.since))
    if f.until is not None:
        parts.append("mtime < ?")
        args.append(float(f.until))
    if f.favourites:
        parts.append("favourite = 1")
    if f.ids is not None:
        parts.append(f"id IN ({', '.join('?' * len(f.ids)) or 'NULL'})")
        args += [int(i) for i in f.ids]
    return " AND ".join(parts), args


def fts_query(words: str) -> str:
    """Words as an FTS5 query: each one quoted (no FTS syntax errors from user text), all
    required; a trailing * keeps its prefix meaning."""
    terms = []
    for word in words.split():
        prefix = word.endswith("*")
        word = word.rstrip("*").replace('"', '""')
        if word:
            terms.append(f'"{word}"' + ("*" if prefix else ""))
    return " ".join(terms) or '""'


def read_image_row(path: Path, stat: os.stat_result) -> dict[str, Any] | None:
    """The index row of one file (its infotext parsed), or None if it is no image."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            text = read_infotext_from_image(image) or ""
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as exc:
        log.info("not indexed: %s (%s)", path, exc)
        return None
    fields = parse_infotext(text) if text else {}
    seed = fields.get("Seed")
    return {
        "path": str(path), "mtime": stat.st_mtime, "bytes": stat.st_size,
        "width": width, "height": height, "pixels": width * height,
        "prompt": str(fields.get("Prompt", "")), "negative": str(fields.get("Negative prompt", "")),
        "model": str(fields.get("Model", "")), "sampler": str(fields.get("Sampler", "")),
        "seed": seed if isinstance(seed, int) else -1, "infotext": text,
    }  # fmt: skip


def _walk(root: Path, skipped: set[Path]) -> Iterator[tuple[Path, os.stat_result]]:
    stack = [root]
    while stack:
        folder = stack.pop()
        if folder in skipped:
            continue
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            log.info("cannot read %s: %s", folder, exc)
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
                yield Path(entry.path), entry.stat()


def _free_name(target: Path) -> Path:
    n = 1
    candidate = target
    while candidate.exists():
        candidate = target.with_name(f"{target.stem}-{n}{target.suffix}")
        n += 1
    return candidate
