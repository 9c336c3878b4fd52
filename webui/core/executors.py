"""Executors: what the job queue hands a job to, and which idle one gets it.

The queue (`webui.core.jobs.JobQueue`) runs one thread per executor. The default is one
`LocalExecutor`: the worker in this process, exactly as before. With `--ray` the cluster
package (`webui.cluster`) adds one executor per Ray worker; each owns one device and its
own model cache.

When a job waits and executors are idle, the queue takes the job round-robin between
owners, then `choose_executor` picks among the idle executors that can see the job's
checkpoint: one that already holds it, else the least recently used. An executor whose
process died raises `WorkerLost` from `run`; the queue runs the job once more elsewhere,
then fails it with a clear message, and drops an executor that says it is `gone`.

This module must never import torch, diffusers or a UI library.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .jobs import Job

MAX_ATTEMPTS = 2  # a job whose worker died runs once more, then fails


class WorkerLost(RuntimeError):
    """The process running a job died (killed, out of memory, machine gone)."""


class Executor(Protocol):
    """Runs jobs on one device. `run` blocks the queue's thread for this executor."""

    name: str  # shown in the queue panel and GET /webui/v1/workers
    device: str
    gone: bool  # True once the executor can take no more jobs (the queue drops it)

    def run(self, job: Job) -> Any: ...

    def held(self) -> Sequence[str]:
        """The checkpoints (relative names) it holds in memory now."""
        ...

    def sees(self, checkpoint: str) -> bool:
        """True when the checkpoint is in the models folder this executor reads."""
        ...


class LocalExecutor:
    """The worker in this process (the default: one executor, today's behaviour)."""

    gone = False

    def __init__(
        self,
        runner: Callable[[Job], Any],
        *,
        name: str = "local",
        device: str = "",
        held: Callable[[], Sequence[str]] | None = None,
    ):
        self.runner, self.name, self.device = runner, name, device
        self._held = held

    def run(self, job: Job) -> Any:
        return self.runner(job)

    def held(self) -> Sequence[str]:
        return list(self._held()) if self._held is not None else []

    def sees(self, checkpoint: str) -> bool:
        return True  # the server's own models folder: the service checked the name


@dataclass
class Slot:
    """The queue's record of one executor."""

    executor: Executor
    job: Job | None = None  # the job it runs now
    used: int = 0  # queue tick of its last start (least recently used: smallest)
    done: int = 0  # jobs it has finished (any end but a lost worker)
    lost: bool = False  # dropped: its process died or cannot be reached

    @property
    def idle(self) -> bool:
        return self.job is None and not self.lost

    def state(self) -> str:
        if self.lost:
            return "lost"
        return "running" if self.job is not None else "idle"


def choose_executor(checkpoint: str | None, idle: Sequence[Slot]) -> Slot | None:
    """Among idle slots: those that can see the checkpoint; of those, one that already
    holds it, else the least recently used. None when no idle slot can run the job."""
    able = [s for s in idle if checkpoint is None or s.executor.sees(checkpoint)]
    if not able:
        return None
    holding = [s for s in able if checkpoint is not None and checkpoint in s.executor.held()]
    return min(holding or able, key=lambda s: s.used)
