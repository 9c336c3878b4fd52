"""The head's side of a Ray cluster: start or join Ray, keep one worker per device.

`RayPool.start(flags, jobs)` starts a local Ray runtime on 127.0.0.1 (`--ray`) or joins a
cluster (`--ray-address HOST:PORT`, whose other machines join with `ray start --address`)
and keeps, on every node, one `WorkerActor` per GPU (`--ray-workers N`: N CPU workers per
node instead). A watcher thread looks at the cluster every `WATCH_SECONDS`: a node that
joined gets its workers, a worker that died is replaced, and each new worker is added to
the job queue as a `RayExecutor` as soon as it answers.

`RayExecutor.run(job)` sends the job's `JobSpec` to its actor and, while it runs, polls it:
progress and previews go into the head's `Job.progress` (whose listeners publish the
usual events), images are written here with the real `OutputStore` (then `Job.image_saved`)
and the path goes back; interrupt, skip and the shutdown's abort go to the actor. When the
actor dies, `run` raises `WorkerLost` and the executor is `gone` (the queue retries the
job once elsewhere).

ray is imported here only, and only when one of the Ray flags is given. This module must
never import a UI library or a web framework.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from PIL import Image

from ..core.executors import WorkerLost
from ..core.jobs import Job, JobAborted, JobQueue
from ..errors import UserError
from ..imaging.store import OutputStore
from ..settings import Flags
from .actor import JobSpec, Outcome, SaveRequest, WorkerActor, worker_flags

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1  # how often a running job's actor is asked for progress and images
WATCH_SECONDS = 2.0  # how often the cluster is looked at for new nodes and dead workers
CALL_TIMEOUT = 120.0  # an actor that does not answer a poll this long counts as lost
ACTOR_CONCURRENCY = 4  # run + polls + saved answers at the same time


class RayExecutor:
    """The head's proxy of one worker actor (an `Executor` for the job queue)."""

    def __init__(self, pool: RayPool, actor: Any, info: dict[str, Any]):
        self.pool, self.actor = pool, actor
        self.name, self.device, self.pid = info["name"], info["device"], info["pid"]
        self._held: list[str] = list(info["held"])
        self._visible: set[str] = set(info["visible"])
        self.gone = False
        self.node_id: str = info.get("node_id", "")

    def held(self) -> list[str]:
        return list(self._held)

    def sees(self, checkpoint: str) -> bool:
        return checkpoint in self._visible

    def refresh(self, info: dict[str, Any]) -> None:
        self._held, self._visible = list(info["held"]), set(info["visible"])

    def run(self, job: Job) -> Any:
        ray = self.pool.ray
        try:
            ref = self.actor.run.remote(JobSpec.of(job))
            while not ray.wait([ref], timeout=POLL_SECONDS)[0]:
                self._poll(job)
            outcome: Outcome = ray.get(ref, timeout=CALL_TIMEOUT)
        except self.pool.lost_errors as exc:
            self.gone = True
            self.pool.forget(self)
            raise WorkerLost(f"worker {self.name} died: {type(exc).__name__}") from exc
        self._held, self._visible = outcome.held, set(outcome.visible)
        self.pool.record(job, outcome.seconds)
        job.skipped = outcome.skipped
        if outcome.error_kind == "aborted":
            raise JobAborted(outcome.error)
        if outcome.error_kind == "user":
            raise UserError(outcome.error)
        if outcome.error is not None:
            raise RuntimeError(f"{outcome.error} (on worker {self.name})")
        return outcome.result

    def _poll(self, job: Job) -> None:
        skip = job.skip_requested
        call = self.actor.poll.remote(job.id, job.interrupt_requested, skip, job.abort_requested)
        state = self.pool.ray.get(call, timeout=CALL_TIMEOUT)
        if skip:
            job.skip_requested = False  # handed over: the worker's job consumes it
        for request in state["saves"]:
            try:
                path, error = self.pool.save(job, request), None
            except Exception as exc:  # the worker's job fails with it, as in one process
                log.warning("saving an image of job %s failed: %s", job.id, exc)
                path, error = "", f"saving the image failed: {exc}"
            self.actor.saved.remote(request.token, path, error)
        if "step" not in state:
            return
        p = job.progress
        p.batch, p.batches, p.text, job.skipped = (state["batch"], state["batches"],
                                                   state["text"], state["skipped"])  # fmt: skip
        if (state["step"], state["steps"]) != (p.step, p.steps):
            p.advance(state["step"], state["steps"])  # publishes the step event
        if state["preview"] is not None:
            p.set_preview(Image.open(io.BytesIO(state["preview"])), state["preview_step"])


class RayPool:
    """Ray started or joined, its worker actors, and the watcher that keeps them."""

    def __init__(self, ray: Any, flags: Flags, jobs: JobQueue, store: OutputStore):
        from ray import exceptions as rex

        self.ray, self.flags, self.jobs, self.store = ray, flags, jobs, store
        self.lost_errors: tuple[type[BaseException], ...] = (
            rex.RayActorError, rex.WorkerCrashedError, rex.GetTimeoutError,
            rex.ObjectLostError, rex.NodeDiedError, rex.OutOfMemoryError,
        )  # fmt: skip
        self._actor_class = ray.remote(max_concurrency=ACTOR_CONCURRENCY)(WorkerActor)
        self._executors: list[RayExecutor] = []
        self._pending: list[tuple[str, Any, Any]] = []  # (node id, actor, info ref)
        self._names = itertools.count(1)
        self.run_seconds: dict[str, float] = {}  # job id -> seconds its worker worked on it
        self._save_lock = threading.Lock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="ray-watcher", daemon=True)

    @classmethod
    def start(cls, flags: Flags, jobs: JobQueue, store: OutputStore) -> RayPool:
        import ray

        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # no warning
        root = str(Path(__file__).resolve().parents[2])  # workers import this webui
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH", "")) if p
        )
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "configure_logging": False}  # fmt: skip
        if flags.ray_address:
            ray.init(address=flags.ray_address, **kwargs)
        else:
            cpus = max(flags.ray_workers or 0, os.cpu_count() or 1)
            ray.init(address="local", num_cpus=cpus, _node_ip_address="127.0.0.1", **kwargs)
        pool = cls(ray, flags, jobs, store)
        if not pool.targets():
            where = "this cluster" if flags.ray_address else "this machine"
            message = (f"--ray: {where} has no GPU for a worker; add --ray-workers N for N "
                       "CPU workers")  # fmt: skip
            if not flags.ray_address:
                ray.shutdown()
                raise UserError(message)
            log.warning("%s (machines that join later get workers)", message)
        pool.fill()
        pool._watcher.start()
        return pool

    # --- keeping the workers --------------------------------------------------------------
    def targets(self) -> dict[str, tuple[int, str]]:
        """node id -> (workers wanted on it, "cpu" or "gpu"), for the alive nodes."""
        wanted = {}
        for node in self.ray.nodes():
            if not node.get("Alive"):
                continue
            if self.flags.ray_workers:
                wanted[node["NodeID"]] = (self.flags.ray_workers, "cpu")
            elif gpus := int(node.get("Resources", {}).get("GPU", 0)):
                wanted[node["NodeID"]] = (gpus, "gpu")
        return wanted

    def fill(self) -> None:
        """Start the missing workers on every node; add those that answered to the queue."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        with self._lock:
            have: dict[str, int] = {}
            for node_id in [e.node_id for e in self._executors] + [p[0] for p in self._pending]:
                have[node_id] = have.get(node_id, 0) + 1
            for node_id, (count, kind) in self.targets().items():
                for _ in range(count - have.get(node_id, 0)):
                    strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
                    name = f"worker-{next(self._names)}"
                    flags = worker_flags(self.flags, kind)
                    actor = self._actor_class.options(
                        num_cpus=1 if kind == "cpu" else 0, num_gpus=1 if kind == "gpu" else 0,
                        scheduling_strategy=strategy,
                    ).remote(flags, name, kind)  # fmt: skip
                    self._pending.append((node_id, actor, actor.info.remote()))
        self._admit()

    def _admit(self) -> None:
        """Workers whose stack is built join the queue; failed starts are dropped."""
        with self._lock:
            refs = [p[2] for p in self._pending]
            ready = set(self.ray.wait(refs, num_returns=len(refs), timeout=0)[0]) if refs else set()
            pending, joined = [], []
            for node_id, actor, ref in self._pending:
                if ref not in ready:
                    pending.append((node_id, actor, ref))
                    continue
                try:
                    info = dict(self.ray.get(ref), node_id=node_id)
                except self.lost_errors + (self.ray.exceptions.RayTaskError,) as exc:
                    log.warning("a Ray worker did not start: %s", exc)
                    continue
                executor = RayExecutor(self, actor, info)
                executor.device = f"{info['device']} on {info['host']}"
                self._executors.append(executor)
                joined.append(executor)
            self._pending = pending
        for executor in joined:
            log.info("Ray worker %s (%s) takes jobs", executor.name, executor.device)
            self.jobs.add_executor(executor)

    def forget(self, executor: RayExecutor) -> None:
        """A dead worker: the watcher starts a new one on its node if the node lives."""
        with self._lock:
            if executor in self._executors:
                self._executors.remove(executor)

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_SECONDS if not self._pending else POLL_SECONDS * 5):
            try:
                self.fill()
                self._refresh()
            except Exception:  # the watcher must keep going
                log.exception("watching the Ray cluster failed")

    def _refresh(self) -> None:
        """What each worker holds and sees (a checkpoint put in the shared folder); a
        worker that died while idle leaves the queue before a job is sent to it."""
        with self._lock:
            executors = list(self._executors)
        refs = {e: e.actor.info.remote() for e in executors}
        if not refs:
            return
        ready = self.ray.wait(list(refs.values()), num_returns=len(refs), timeout=10)[0]
        for executor, ref in refs.items():
            if ref not in ready:
                continue  # busy or slow: asked again next time
            try:
                executor.refresh(self.ray.get(ref))
            except self.lost_errors:
                log.warning("Ray worker %s died while idle; replacing it", executor.name)
                executor.gone = True
                self.forget(executor)
                self.jobs.remove_executor(executor)

    def workers(self) -> list[RayExecutor]:
        with self._lock:
            return list(self._executors)

    # --- the head saves --------------------------------------------------------------------
    def save(self, job: Job, request: SaveRequest) -> str:
        """Write one image a worker made, recorded and published as the worker does in one
        process; the same image again (a rerun after a lost worker or a restart) is not
        written twice (`Job.saved_earlier`)."""
        seed = None if request.grid else request.args.get("seed")
        with self._save_lock:
            path = job.saved_earlier(seed)
            if path is None:
                write = self.store.save_grid if request.grid else self.store.save
                path = str(write(request.image, **request.args))
            job.image_saved(path, seed=seed, infotext=request.args.get("infotext", ""))
        return path

    def record(self, job: Job, seconds: float) -> None:
        """How long the worker itself worked on a job (the benchmark's head overhead is
        the rest of the job's running time)."""
        self.run_seconds[job.id] = seconds
        while len(self.run_seconds) > 1000:
            self.run_seconds.pop(next(iter(self.run_seconds)))

    def close(self) -> None:
        """Stop the watcher, then Ray (a local runtime ends; a joined cluster's workers
        of this server end with it)."""
        self._stop.set()
        if self._watcher.is_alive():
            self._watcher.join(WATCH_SECONDS + 10)
        try:
            self.ray.shutdown()
        except Exception:
            log.exception("stopping Ray failed")


def checkpoint_of(models: Any, job: Job) -> str | None:
    """The checkpoint (relative name) a job needs, for the choice of worker; None when
    any worker will do. A name the head does not know is returned as it is (a worker
    that cannot see it refuses it)."""
    if job.kind == "load":
        name = job.params
    elif job.kind in ("txt2img", "img2img"):
        name = getattr(job.params, "checkpoint", None) or job.options.get("sd_model_checkpoint")
    else:
        return None
    if not name or not isinstance(name, str):
        return None
    info = models.registry.find(name)  # a name lookup only: this runs under the queue's lock
    return info.rel if info is not None else name


def wait_for_workers(pool: RayPool, count: int, timeout: float) -> bool:
    """Until `count` workers take jobs (tests, start-up); False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pool.fill()
        if len(pool.workers()) >= count:
            return True
        time.sleep(0.2)
    return False
