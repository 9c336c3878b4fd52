"""The Ray worker: one actor per device, running jobs with its own model cache.

`WorkerActor` (made a Ray actor by `webui.cluster.pool`, threaded so that polls reach it
while a job runs) builds the worker stack in its own process from the server's flags: the
model manager on the shared models folder, the `Worker`, the extension runner. `run(spec)`
runs one `JobSpec` (kind, params, options, id, owner). Nothing is written here: the
store is a `HandBackStore` whose saves wait until the head has written the image with its
real `OutputStore` and answered the path, so files, names, events and hooks are the same
as in one process. `poll` hands the head the progress, a new preview (PNG bytes) and the
images to save, and takes the job's interrupt, skip and abort flags.

This module must never import a UI library; it imports ray only through the pool.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..core.jobs import Job, JobAborted
from ..errors import UserError
from ..settings import Flags

log = logging.getLogger(__name__)

SAVE_TIMEOUT = 300.0  # seconds an image waits for the head to write it


@dataclass(frozen=True)
class JobSpec:
    """What a worker needs to run a job (picklable)."""

    kind: str
    params: Any
    options: Mapping[str, Any]
    id: str
    owner: str

    @classmethod
    def of(cls, job: Job) -> JobSpec:
        return cls(job.kind, job.params, dict(job.options), job.id, job.owner)


@dataclass
class SaveRequest:
    """One image for the head to write: `grid` picks OutputStore.save_grid."""

    token: str
    grid: bool
    image: Any  # PIL image
    args: dict[str, Any]


@dataclass
class Outcome:
    """How `run` ended: the result, or the error as the head should raise it."""

    result: Any = None
    error: str | None = None
    error_kind: str = ""  # "user" (UserError), "aborted" (JobAborted), "bug"
    skipped: int = 0
    seconds: float = 0.0  # spent running the job, less the waits for the head's saves
    held: list[str] = field(default_factory=list)
    visible: list[str] = field(default_factory=list)


class HandBackStore:
    """An OutputStore stand-in: each save waits for the head to write the image."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._outbox: list[SaveRequest] = []
        self._answers: dict[str, tuple[str, str | None]] = {}  # token -> (path, error)
        self.waited = 0.0  # seconds saves waited for the head (the benchmark's overhead)

    def save(self, image: Any, **args: Any) -> Path:
        return self._hand_back(image, args, grid=False)

    def save_grid(self, image: Any, **args: Any) -> Path:
        return self._hand_back(image, args, grid=True)

    def _hand_back(self, image: Any, args: dict[str, Any], *, grid: bool) -> Path:
        token = uuid.uuid4().hex
        started = time.perf_counter()
        with self._cond:
            self._outbox.append(SaveRequest(token, grid, image, args))
            answered = self._cond.wait_for(lambda: token in self._answers, SAVE_TIMEOUT)
            self.waited += time.perf_counter() - started
            if not answered:
                raise RuntimeError("the web UI server did not save the image in time")
            path, error = self._answers.pop(token)
        if error is not None:  # the head could not write it (disk full, ...): the job fails
            raise OSError(error)
        return Path(path)

    def take(self) -> list[SaveRequest]:
        with self._cond:
            out, self._outbox = self._outbox, []
            return out

    def answer(self, token: str, path: str, error: str | None = None) -> None:
        with self._cond:
            self._answers[token] = (path, error)
            self._cond.notify_all()


class WorkerActor:
    """One device's worker stack (see the module docstring)."""

    def __init__(self, flags: Flags, name: str, device: str):
        from ..context import build_networks
        from ..core.families import default_families
        from ..core.worker import make_runner
        from ..ext.host import ExtensionHost
        from ..ext.runner import wrap_runner
        from ..model_manager.manager import ModelManager
        from ..model_manager.memory import plan_from_flags
        from ..model_manager.registry import CheckpointRegistry, HashCache, transformer_folders
        from ..options import Options

        self.name, self.device = name, device
        options = Options.from_flags(flags)
        hashes = HashCache(Path(tempfile.mkdtemp(prefix="webui-worker-")) / "cache.json")
        extra = [Path(flags.ckpt)] if flags.ckpt else []
        self.registry = CheckpointRegistry(flags.ckpt_dir, hashes, extra,
                                           transformer_folders(flags.models_dir))  # fmt: skip
        families = default_families()
        memory = plan_from_flags(flags)
        self.models = ModelManager(self.registry, memory, families=families,
                                   hashing=not flags.no_hashing)  # fmt: skip
        self.store = HandBackStore()
        networks = build_networks(flags, hashes)
        host = ExtensionHost(flags, options, models=self.models, networks=networks)
        from ..model_manager.annotator_files import annotator_folder
        from ..model_manager.annotators import AnnotatorCache

        annotators = AnnotatorCache(annotator_folder(flags.controlnet_dir), device)
        worker = make_runner(self.models, self.store, options, networks, families=families,  # type: ignore[arg-type]
                             annotators=annotators)  # fmt: skip
        self.runner = wrap_runner(host, worker, self.store)
        self.job: Job | None = None
        self._sent_preview = -1

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "device": self.device, "pid": os.getpid(),
                "host": socket.gethostname(), "held": self._held(),
                "visible": [i.rel for i in self.registry.refresh()]}  # fmt: skip

    def pid(self) -> int:
        return os.getpid()

    def _held(self) -> list[str]:
        from ..context import held_checkpoints

        return held_checkpoints(self.models)

    def run(self, spec: JobSpec) -> Outcome:
        job = Job(kind=spec.kind, params=spec.params, owner=spec.owner, id=spec.id,
                  options=MappingProxyType(dict(spec.options)))  # fmt: skip
        self.job, self._sent_preview = job, -1
        outcome = Outcome()
        started, self.store.waited = time.perf_counter(), 0.0
        try:
            outcome.result = self.runner(job)
        except JobAborted as exc:
            outcome.error, outcome.error_kind = str(exc), "aborted"
        except UserError as exc:
            outcome.error, outcome.error_kind = str(exc), "user"
        except Exception as exc:  # the head logs it as the job's failure
            log.exception("job %s failed on worker %s", job.id, self.name)
            outcome.error, outcome.error_kind = f"{type(exc).__name__}: {exc}", "bug"
        outcome.seconds = time.perf_counter() - started - self.store.waited
        outcome.skipped = job.skipped
        outcome.held = self._held()
        outcome.visible = [i.rel for i in self.registry.list()]
        return outcome

    def poll(self, job_id: str, interrupt: bool, skip: bool, abort: bool) -> dict[str, Any]:
        """The running job's progress and images to save; passes on the head's flags."""
        job = self.job
        if job is None or job.id != job_id:
            return {"saves": self.store.take()}
        job.interrupt_requested |= interrupt
        job.abort_requested |= abort
        if skip:
            job.skip_requested = True
        p = job.progress
        preview = None
        if p.preview is not None and p.preview_step != self._sent_preview:
            self._sent_preview = p.preview_step
            buffer = io.BytesIO()
            p.preview.save(buffer, format="PNG")
            preview = buffer.getvalue()
        return {
            "step": p.step, "steps": p.steps, "batch": p.batch, "batches": p.batches,
            "text": p.text, "preview": preview, "preview_step": p.preview_step,
            "skipped": job.skipped, "saves": self.store.take(),
        }  # fmt: skip

    def saved(self, token: str, path: str, error: str | None = None) -> None:
        self.store.answer(token, path, error)


def worker_flags(flags: Flags, kind: str) -> Flags:
    """The flags a worker is built from: the server's, without its passwords (a worker
    serves nothing), and for a CPU worker (`--ray-workers`) everything on the CPU."""
    flags = dataclasses.replace(flags, api_auth=None, gradio_auth=None, gradio_auth_path=None)
    return dataclasses.replace(flags, use_cpu=("all",)) if kind == "cpu" else flags
