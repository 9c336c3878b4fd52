"""One job: what it asks for, its state, its progress, and how listings describe it.

`Job` carries everything a run needs (kind, params, owner, options snapshot) and what it
produced (result, saved files). A job restored from the job store after a restart has
`attempts` (times started) and `rerun_reason`; a finished job read back from the store has
a `StoredResult` whose images are read from their files (`StoredImage`: the files on disk
stay the truth, a deleted file shows as deleted). `summary()` is the JSON-friendly row of
the queue listings.

This module must never import torch, diffusers or a UI library.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

from . import events as ev
from .progress import Progress

if TYPE_CHECKING:
    from .events import EventHub

QUEUED, RUNNING, DONE, FAILED, INTERRUPTED, CANCELLED = (
    "queued",
    "running",
    "done",
    "failed",
    "interrupted",
    "cancelled",
)
FINISHED = {DONE, FAILED, INTERRUPTED, CANCELLED}
# maintenance jobs (preload/unload a checkpoint) never count against the per-owner limit
UNLIMITED_KINDS = frozenset({"load", "unload"})
JOB_ID = re.compile(r"[A-Za-z0-9_\-.:()]{1,64}")
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_seq = itertools.count()


class QueueFullError(RuntimeError):
    """The owner already has as many unfinished jobs as the per-user limit allows."""

    def __init__(self, owner: str, limit: int):
        super().__init__(
            f"Queue limit reached: you already have {limit} job(s) waiting or running "
            f"(the limit per user is {limit}). Wait for one to finish or cancel one."
        )
        self.owner = owner
        self.limit = limit


SHUTDOWN_MESSAGE = "Stopped: the server is shutting down"


class JobAborted(Exception):
    """Raised in the runner when the server shuts down: the job's unfinished work is dropped."""


class ShuttingDownError(RuntimeError):
    """A job was submitted after the queue was stopped."""

    def __init__(self) -> None:
        super().__init__("The server is shutting down; no new jobs are taken.")


class JobAccessError(PermissionError):
    """Someone tried to act on another owner's job."""


class SaveRecorder(Protocol):
    """Where a job records each file it writes (the job store)."""

    def image_saved(
        self, job_id: str, index: int, path: str, seed: int | None, infotext: str
    ) -> None: ...


@dataclass
class StoredImage:
    """A saved image as the job store recorded it; the picture is read from its file."""

    path: str
    seed: int | None
    infotext: str
    _image: Any = field(default=None, repr=False)

    @property
    def deleted(self) -> bool:
        """The file is gone (deleted or moved since the job saved it)."""
        return not Path(self.path).is_file()

    @property
    def image(self) -> Image.Image | None:
        """The picture from its file, None when the file is gone or unreadable."""
        if self._image is None and not self.deleted:
            try:
                with Image.open(self.path) as opened:
                    opened.load()
                    self._image = opened
            except OSError:
                return None
        return self._image


@dataclass
class StoredResult:
    """The result of a job read back from the store: the files it saved."""

    images: list[StoredImage]


@dataclass
class Job:
    kind: str  # "txt2img", "img2img", "load", ... any kind the runner knows
    params: Any
    owner: str = "local"
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: str = QUEUED
    progress: Progress = field(default_factory=Progress)
    result: Any = None
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    interrupt_requested: bool = False
    abort_requested: bool = False  # ended by the server's shutdown: nothing more is saved
    skip_requested: bool = False
    skipped: int = 0  # images whose sampling was cut short by "skip"
    options: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, repr=False)  # snapshot
    seq: int = field(default_factory=lambda: next(_seq))
    done: threading.Event = field(default_factory=threading.Event, repr=False)
    saved: list[str] = field(default_factory=list, repr=False)  # files written so far
    attempts: int = 0  # times started (a restart or a lost worker runs a job again)
    worker: str | None = None  # the executor running it (or that ran it last)
    rerun_reason: str = ""  # why it runs again, shown in the queue ("" when it does not)
    # files an earlier attempt saved, by image index: a rerun reuses them (same seed)
    earlier: dict[int, StoredImage] = field(default_factory=dict, repr=False)
    saved_images: list[StoredImage] = field(default_factory=list, repr=False)  # this attempt
    # the hub of the queue the job was submitted to (None for a job never submitted)
    events: EventHub | None = field(default=None, repr=False, compare=False)
    recorder: SaveRecorder | None = field(default=None, repr=False, compare=False)
    # set by the queue while the job runs: `run_waiting(accept, around)` runs the waiting
    # jobs `accept` takes on this job's executor, inside `around()` (training lets them run
    # between its steps, `train_yield.py`); returns how many ran
    run_waiting: Callable[..., int] | None = field(default=None, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def prompt(self) -> str:
        """What the job is about, for listings: the prompt, or the checkpoint it loads."""
        text = getattr(self.params, "prompt", None)
        if text is None and isinstance(self.params, str):
            text = self.params
        return text if isinstance(text, str) else ""

    @property
    def images(self) -> list[Any]:
        """The result's images (objects with .image, .seed, .infotext), any job kind."""
        return list(getattr(self.result, "images", None) or [])

    def image_saved(self, path: str, *, seed: int | None = None, infotext: str = "") -> None:
        """The worker's save wrote one of this job's images to `path` (or found it written
        by an earlier attempt): record and publish it."""
        index = len(self.saved)
        self.saved.append(path)
        self.saved_images.append(StoredImage(path, seed, infotext))
        if self.recorder is not None:
            self.recorder.image_saved(self.id, index, path, seed, infotext)
        if self.events is not None:
            self.events.publish(ev.SAVED, self, path=path)

    def prepare_rerun(self, reason: str) -> None:
        """Before another attempt in this process (its worker was lost): what this attempt
        saved becomes `earlier`, so the rerun reuses those files instead of writing twice."""
        self.rerun_reason = reason
        self.earlier.update(enumerate(self.saved_images))
        self.saved.clear()
        self.saved_images.clear()

    def saved_earlier(self, seed: int | None) -> str | None:
        """The file an earlier attempt of this job saved for its next image, if that image
        had the same seed and the file is still there: the rerun writes no second file."""
        earlier = self.earlier.get(len(self.saved))
        if earlier is None or earlier.seed != seed or earlier.deleted:
            return None
        return earlier.path

    def should_stop(self) -> bool:
        """Asked by the runner every sampling step (and between batches).

        True after an interrupt. A skip ends the image being sampled now: it is consumed
        at the next sampling step (marking that batch's steps as done) and the job goes on
        with its next batch; asked while nothing is being sampled, it waits for the next.
        Raises JobAborted once the queue is stopping.
        """
        self.raise_if_aborted()
        if self.interrupt_requested:
            return True
        p = self.progress
        if self.skip_requested and p.step < p.steps:
            self.skip_requested = False
            self.skipped += 1
            p.step = p.steps
            return True
        return False

    def raise_if_aborted(self) -> None:
        """Raise JobAborted when the server is shutting down (asked before saving too)."""
        if self.abort_requested:
            raise JobAborted(SHUTDOWN_MESSAGE)


def file_deleted(image: Any) -> bool:
    """A result image that was saved to a file that is gone now (shown as deleted)."""
    path = getattr(image, "path", None)
    return bool(path) and not Path(path).is_file()


def rerun_note(job: Job) -> str:
    """ "" unless the job runs again after an attempt that did not end (a restart)."""
    if not job.rerun_reason:
        return ""
    if job.state == QUEUED:
        return f"will run again: {job.rerun_reason}"
    return f"run again: {job.rerun_reason} (attempt {job.attempts})"


def summary(
    job: Job, position: int | None = None, prompt_chars: int = 80, *, show_prompt: bool = True
) -> dict[str, Any]:
    """A JSON-friendly description of a job for queue listings (no images, no options).
    `show_prompt=False` leaves the prompt out (another user's job on a shared server)."""
    p = job.progress
    prompt = " ".join(job.prompt.split()) if show_prompt else ""
    if len(prompt) > prompt_chars:
        prompt = prompt[: prompt_chars - 1] + "…"
    eta = p.eta_seconds if job.state == RUNNING else None
    return {
        "id": job.id,
        "owner": job.owner,
        "kind": job.kind,
        "prompt": prompt,
        "state": job.state,
        "position": position,
        "progress": round(p.fraction if job.state == RUNNING else float(job.state == DONE), 4),
        "step": p.step,
        "steps": p.steps,
        "batch": p.batch,
        "batches": p.batches,
        "eta_seconds": round(eta, 1) if eta is not None else None,
        "text": p.text,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "interrupt_requested": job.interrupt_requested,
        "skipped": job.skipped,
        "image_count": len(job.images),
        "error": job.error,
        "worker": job.worker,
        "attempts": job.attempts,
        "rerun": rerun_note(job),
    }
