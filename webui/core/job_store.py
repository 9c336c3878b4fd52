"""The job store: every job and what it saved, in SQLite in the data folder.

`JobQueue` records each transition here (queued with its params and options, started,
an image saved with its infotext, finished/failed/interrupted/cancelled, moved), so that

- after a crash, `kill -9` or a power cut, `restore()` gives back every unfinished job:
  the waiting ones in their order, the one that was running queued again first and
  marked (`Job.rerun_reason`, `Job.attempts`) with the files its first attempt saved
  (`Job.earlier`: the rerun reuses them, see `Job.saved_earlier`), and a job that cannot
  be restored (an unknown kind, params that no longer fit) as FAILED with the reason;
- the queue's finished rows and "My results" are read from here, paged, not only the
  jobs still in memory; their pictures come from the files (`StoredImage`).

One connection writes (WAL, `synchronous=FULL`: a committed transition survives a power
cut), guarded by a lock; each write is one short transaction. Readers use their own
connection and lock, so a listing never waits for the worker's write. Params are encoded
by `job_codec` before the lock is taken (the PNGs of img2img inputs in the caller's
thread). A failing write is logged and never stops the worker.

This module must never import torch, diffusers or a UI library.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .job import FAILED, QUEUED, RUNNING, Job, StoredImage, StoredResult
from .job_codec import CodecError, decode, decode_params, encode

log = logging.getLogger(__name__)

FILE_NAME = "jobs.sqlite3"
SCHEMA_VERSION = 1
RESTARTED = "the server restarted while it ran"
NOT_RESTORED = "Could not be restored after a restart"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    position INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    rerun_reason TEXT NOT NULL DEFAULT '',
    prompt TEXT NOT NULL DEFAULT '',
    params TEXT,
    options TEXT,
    unstorable TEXT,
    error TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    skipped INTEGER NOT NULL DEFAULT 0,
    interrupt_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, n);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state);
CREATE INDEX IF NOT EXISTS jobs_by_finish ON jobs (finished_at);
CREATE TABLE IF NOT EXISTS images (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    path TEXT NOT NULL,
    seed INTEGER,
    infotext TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, idx)
);
CREATE TABLE IF NOT EXISTS blobs (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (job_id, idx)
);
"""
_UNFINISHED = (QUEUED, RUNNING)
_ROW = ("n, id, owner, kind, state, position, attempts, rerun_reason, prompt, error, "
        "created_at, started_at, finished_at, skipped, interrupt_requested")  # fmt: skip


@dataclass(frozen=True)
class Encoded:
    """A job's params and options as the store keeps them (see `encode_job`)."""

    params: str | None
    options: str | None
    blobs: list[bytes] = field(default_factory=list)
    unstorable: str | None = None  # why the params could not be written


def encode_job(job: Job) -> Encoded:
    """Encode before taking any lock; a value the codec cannot write is kept as the reason
    (the job runs now; after a restart it ends FAILED with that reason)."""
    try:
        params, blobs = encode(job.params)
        options, _ = encode(dict(job.options))
    except CodecError as exc:
        log.warning("job %s (%s) cannot be stored for a restart: %s", job.id, job.kind, exc)
        return Encoded(None, None, [], str(exc))
    return Encoded(params, options, blobs)


@dataclass
class StoredJob:
    """One row of the store (params only for unfinished jobs, see `unfinished`)."""

    n: int
    id: str
    owner: str
    kind: str
    state: str
    position: int
    attempts: int
    rerun_reason: str
    prompt: str
    error: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    skipped: int
    interrupt_requested: bool
    images: list[StoredImage] = field(default_factory=list)
    params: str | None = None
    options: str | None = None
    unstorable: str | None = None
    blobs: list[bytes] = field(default_factory=list)

    def to_job(self) -> Job:
        """The job as listings show it: its prompt, state, times and saved files."""
        job = Job(kind=self.kind, params=_Prompt(self.prompt), owner=self.owner, id=self.id,
                  state=self.state, error=self.error, created_at=self.created_at,
                  started_at=self.started_at, finished_at=self.finished_at,
                  interrupt_requested=self.interrupt_requested, skipped=self.skipped,
                  attempts=self.attempts, rerun_reason=self.rerun_reason)  # fmt: skip
        job.result = StoredResult(list(self.images))
        job.saved = [i.path for i in self.images]
        if job.finished:
            job.done.set()
        return job


@dataclass(frozen=True)
class _Prompt:
    """The params of a job read back for a listing: only what listings show."""

    prompt: str


class JobStore:
    """SQLite at `path` (WAL). Writes from any thread (one lock); reads on their own
    connection. `close()` when the program ends."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._closed = False
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._db = self._connect()
        with self._db:
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._reader = self._connect()

    @classmethod
    def open(cls, path: Path) -> JobStore:
        """The store at `path`; a file that is not a readable job store (corrupt, or not
        SQLite) is moved aside with an error in the log, and a new store is started, so
        the server still starts."""
        try:
            return cls(path)
        except sqlite3.DatabaseError as exc:
            aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                part = path.with_name(path.name + suffix)
                if part.exists():
                    part.replace(aside.with_name(aside.name + suffix))
            log.error("the job store %s cannot be read (%s): moved to %s; starting a new one",
                      path, exc, aside)  # fmt: skip
            return cls(path)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        return db

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            self._closed = True
            self._reader.close()
            self._db.close()

    # --- writes (each one short transaction; errors are logged) ------------------------
    def _write(self, what: str, work: Callable[[sqlite3.Connection], Any]) -> None:
        with self._write_lock:
            if self._closed:  # a job that outlived the shutdown's wait
                log.warning("job store closed: %s not recorded", what)
                return
            try:
                with self._db:
                    work(self._db)
            except sqlite3.Error:
                log.exception("job store: could not record %s", what)

    def add(self, job: Job, encoded: Encoded, order: Iterable[str] = ()) -> None:
        """A job was queued (a reused id replaces its finished namesake); `order`: its
        owner's waiting jobs, in order (their positions are rewritten)."""

        def work(db: sqlite3.Connection) -> None:
            _forget(db, job.id)
            db.execute(
                "INSERT INTO jobs (id, owner, kind, state, prompt, params, options, unstorable,"
                " created_at, attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job.id, job.owner, job.kind, job.state, job.prompt, encoded.params,
                 encoded.options, encoded.unstorable, job.created_at, job.attempts),
            )  # fmt: skip
            db.executemany("INSERT INTO blobs (job_id, idx, data) VALUES (?, ?, ?)",
                           [(job.id, i, b) for i, b in enumerate(encoded.blobs)])  # fmt: skip
            _positions(db, order)

        self._write(f"job {job.id}", work)

    def update(self, job: Job) -> None:
        """The job's state and what goes with it (started, requeued, finished); a finished
        job's input images are dropped (its params text stays)."""

        def work(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE jobs SET state = ?, attempts = ?, rerun_reason = ?, error = ?,"
                " started_at = ?, finished_at = ?, skipped = ?, interrupt_requested = ?"
                " WHERE id = ?",
                (job.state, job.attempts, job.rerun_reason, job.error, job.started_at,
                 job.finished_at, job.skipped, int(job.interrupt_requested), job.id),
            )  # fmt: skip
            if job.finished:
                db.execute("DELETE FROM blobs WHERE job_id = ?", (job.id,))

        self._write(f"job {job.id} {job.state}", work)

    def reorder(self, order: Iterable[str]) -> None:
        """An owner's waiting jobs were moved: their order now."""
        ids = list(order)
        self._write("the order of waiting jobs", lambda db: _positions(db, ids))

    def image_saved(
        self, job_id: str, index: int, path: str, seed: int | None, infotext: str
    ) -> None:
        """Image `index` of the job's current attempt is the file `path`."""
        self._write(
            f"an image of job {job_id}",
            lambda db: db.execute(
                "INSERT OR REPLACE INTO images (job_id, idx, path, seed, infotext)"
                " VALUES (?, ?, ?, ?, ?)",
                (job_id, index, path, seed, infotext),
            ),
        )

    # --- reads ----------------------------------------------------------------------
    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._read_lock:
            return self._reader.execute(sql, args).fetchall()

    def get(self, job_id: str) -> StoredJob | None:
        rows = self._rows(f"SELECT {_ROW} FROM jobs WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    def page(
        self, owner: str | None = None, *, finished: bool = False, offset: int = 0,
        limit: int | None = 20,
    ) -> list[StoredJob]:  # fmt: skip
        """Jobs newest first: finished ones by when they ended, else by submission
        (`limit` None: all of them)."""
        where, args = _where(owner, finished)
        order = "finished_at DESC, n DESC" if finished else "n DESC"
        return self._rows(
            f"SELECT {_ROW} FROM jobs {where} ORDER BY {order} LIMIT ? OFFSET ?",
            (*args, -1 if limit is None else max(0, int(limit)), max(0, int(offset))),
        )

    def count(self, owner: str | None = None, *, finished: bool = False) -> int:
        where, args = _where(owner, finished)
        return int(self._read(f"SELECT COUNT(*) FROM jobs {where}", args)[0][0])

    def unfinished(self) -> list[StoredJob]:
        """Queued and running jobs with their params, in submission order."""
        rows = self._rows(f"SELECT {_ROW} FROM jobs WHERE state IN (?, ?) ORDER BY n",
                          _UNFINISHED)  # fmt: skip
        for row in rows:
            (row.params, row.options, row.unstorable), = self._read(
                "SELECT params, options, unstorable FROM jobs WHERE id = ?", (row.id,)
            )  # fmt: skip
            row.blobs = [b for (b,) in self._read(
                "SELECT data FROM blobs WHERE job_id = ? ORDER BY idx", (row.id,))]  # fmt: skip
        return rows

    def owners_by_last_start(self) -> list[str]:
        """Owners in the order they were last served (least recently first)."""
        rows = self._read(
            "SELECT owner FROM jobs WHERE started_at IS NOT NULL GROUP BY owner"
            " ORDER BY MAX(started_at)"
        )
        return [owner for (owner,) in rows]

    def _rows(self, sql: str, args: tuple) -> list[StoredJob]:
        rows = [StoredJob(*row[:14], bool(row[14])) for row in self._read(sql, args)]
        if rows:
            marks = ", ".join("?" for _ in rows)
            images: dict[str, list[StoredImage]] = {}
            for job_id, path, seed, infotext in self._read(
                f"SELECT job_id, path, seed, infotext FROM images WHERE job_id IN ({marks})"
                " ORDER BY job_id, idx", tuple(r.id for r in rows),
            ):  # fmt: skip
                images.setdefault(job_id, []).append(StoredImage(path, seed, infotext))
            for row in rows:
                row.images = images.get(row.id, [])
        return rows


def _where(owner: str | None, finished: bool) -> tuple[str, tuple]:
    clauses, args = [], []
    if owner is not None:
        clauses.append("owner = ?")
        args.append(owner)
    if finished:
        clauses.append("state NOT IN (?, ?)")
        args.extend(_UNFINISHED)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", tuple(args)


def _forget(db: sqlite3.Connection, job_id: str) -> None:
    for table, key in (("jobs", "id"), ("images", "job_id"), ("blobs", "job_id")):
        db.execute(f"DELETE FROM {table} WHERE {key} = ?", (job_id,))


def _positions(db: sqlite3.Connection, order: Iterable[str]) -> None:
    db.executemany("UPDATE jobs SET position = ? WHERE id = ?",
                   [(i, job_id) for i, job_id in enumerate(order)])  # fmt: skip


def restore(store: JobStore) -> list[Job]:
    """Every job the store has as queued or running, ready to queue again: waiting jobs
    in their owner's order, the one that was running first (marked, with the files its
    first attempt saved); a job that cannot run again comes back FAILED with the reason.
    The store is updated to match."""
    rows = store.unfinished()  # in submission order: the jobs' seq keeps it
    jobs, order = [], {}
    for row in rows:
        job = row.to_job()
        order[job.id] = (row.state != RUNNING, row.position, job.seq)
        job.result, job.saved = None, []
        try:
            job.params, job.options = _decoded(row)
        except CodecError as exc:
            job.state, job.error = FAILED, f"{NOT_RESTORED}: {exc}"
            log.warning("job %s (%s): %s", job.id, job.kind, job.error)
        else:
            if row.state == RUNNING:
                job.rerun_reason = RESTARTED
                job.earlier = dict(enumerate(row.images))
            job.state, job.started_at = QUEUED, None
        jobs.append(job)
    return sorted(jobs, key=lambda j: order[j.id])


def _decoded(row: StoredJob) -> tuple[Any, Mapping[str, Any]]:
    if row.unstorable or row.params is None:
        raise CodecError(f"its settings could not be saved ({row.unstorable or 'none stored'})")
    params = decode_params(row.kind, row.params, row.blobs)
    options = decode(row.options, []) if row.options else {}
    if not isinstance(options, dict):
        raise CodecError("its stored options are not a mapping")
    return params, MappingProxyType(options)
