"""Jobs run inside a running one (`Job.run_waiting`, what training does between its steps):
each gets its own states, events and result, fails or stops alone, runs in schedule order
on the host's thread; jobs `accept` refuses keep their place; jobs submitted meanwhile wait
for the next call. A fake runner: no model."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from webui.core import events as ev
from webui.core.job import CANCELLED, DONE, FAILED, INTERRUPTED, QUEUED, Job
from webui.core.jobs import JobQueue
from webui.core.progress import Progress
from webui.core.train_yield import KEY, Trained, TrainingYield


class Host:
    """A runner whose "train" jobs call run_waiting after each of their steps."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.queue: JobQueue | None = None
        self.seen: dict[str, object] = {}  # what a job's run saw, by job id
        self.during: dict[str, Callable[[Job], object]] = {}  # done while a job runs
        self.events: list[tuple[str, object]] = []

    def accept(self, job: Job) -> bool:
        return job.kind == "gen"

    @contextmanager
    def around(self):
        self.log.append("pause")
        yield
        self.log.append("resume")

    def __call__(self, job: Job):
        if job.kind == "train":
            for step in range(job.params):
                self.log.append(f"step {step}")
                job.run_waiting(self.accept, self.around)
                if job.interrupt_requested:
                    break
            return "trained"
        self.log.append(f"run {job.params}")
        self.seen[job.params] = (threading.current_thread().name,
                                 [j.params for j, p in self.queue.listing() if p == 0])  # fmt: skip
        action = self.during.get(job.params)
        if action is not None:
            action(job)
        if job.params == "boom":
            raise RuntimeError("this job fails alone")
        if job.should_stop():
            return "stopped"
        return f"image of {job.params}"


@pytest.fixture
def host():
    runner = Host()
    queue = JobQueue(runner)
    runner.queue = queue
    queue.events.publish = lambda kind, job, **_: runner.events.append((kind, job.params))
    yield runner, queue
    queue.stop()


def submit_all(queue: JobQueue, *jobs: tuple[str, object, str]) -> list[Job]:
    """Submitted before the queue starts: the training job (first) runs first."""
    made = [queue.submit(kind, params, owner) for kind, params, owner in jobs]
    queue.start()
    for job in made:
        assert queue.wait(job, 60)
    return made


def test_waiting_jobs_run_between_steps_with_their_own_states(host):
    runner, queue = host
    train, a, other, b = submit_all(queue, ("train", 2, "trainer"), ("gen", "a", "u1"),
                                    ("load", "ckpt", "u2"), ("gen", "b", "u2"))  # fmt: skip
    # both waiting jobs ran after the first step, inside one pause; "load" waited its turn
    assert runner.log == ["step 0", "pause", "run a", "run b", "resume", "step 1", "run ckpt"]
    assert (train.state, a.state, b.state, other.state) == (DONE, DONE, DONE, DONE)
    assert (a.result, b.result, train.result) == ("image of a", "image of b", "trained")
    assert train.started_at < a.started_at < b.finished_at < train.finished_at < other.started_at
    assert a.attempts == b.attempts == 1 and a.worker == train.worker == "local"
    # on the host's thread; the queue lists the training job and the inline job as running
    thread, running = runner.seen["a"]
    assert thread == "job-worker" and set(running) == {2, "a"}
    order = [e for e in runner.events if e[1] in ("a", 2)]
    assert order == [(ev.QUEUED, 2), (ev.QUEUED, "a"), (ev.STARTED, 2), (ev.STARTED, "a"),
                     (ev.FINISHED, "a"), (ev.FINISHED, 2)]  # fmt: skip


def test_a_failing_inline_job_fails_alone(host):
    runner, queue = host
    train, boom, after = submit_all(queue, ("train", 2, "t"), ("gen", "boom", "u"),
                                    ("gen", "after", "u"))  # fmt: skip
    assert boom.state == FAILED and boom.error == "this job fails alone"
    assert after.state == DONE and train.state == DONE and train.result == "trained"


def test_interrupting_one_never_interrupts_the_other(host):
    runner, queue = host
    runner.during["x"] = lambda job: queue.interrupt(job.id)  # the inline job's user stops it
    train, x, y = submit_all(queue, ("train", 2, "t"), ("gen", "x", "u"), ("gen", "y", "u"))
    assert x.state == INTERRUPTED and y.state == DONE and train.state == DONE
    assert "step 1" in runner.log

    runner2 = Host()
    queue2 = JobQueue(runner2)
    runner2.queue = queue2
    train2 = queue2.submit("train", 3, "t")
    runner2.during["z"] = lambda job: queue2.interrupt(train2.id)  # the trainer stops training
    z = queue2.submit("gen", "z", "u")
    queue2.start()
    try:
        assert queue2.wait(train2, 60) and queue2.wait(z, 60)
        assert z.state == DONE and z.result == "image of z"
        assert train2.state == INTERRUPTED and "step 1" not in runner2.log
    finally:
        queue2.stop()


def test_jobs_submitted_during_the_pause_wait_for_the_next_step(host):
    runner, queue = host
    late: list[Job] = []
    runner.during["first"] = lambda job: late.append(queue.submit("gen", "late", "u"))
    train, first = submit_all(queue, ("train", 3, "t"), ("gen", "first", "u"))
    assert queue.wait(late[0], 60) and late[0].state == DONE
    assert runner.log == ["step 0", "pause", "run first", "resume", "step 1", "pause",
                          "run late", "resume", "step 2"]  # fmt: skip


def test_nothing_waiting_means_no_pause_and_a_refused_job_keeps_its_position(host):
    runner, queue = host
    positions: list[int | None] = []
    runner.during["g"] = lambda job: positions.append(queue.position(waiting))
    train = queue.submit("train", 2, "t")
    waiting = queue.submit("other", "o", "u")
    g = queue.submit("gen", "g", "u")
    queue.start()
    assert queue.wait(waiting, 60) and queue.wait(g, 60) and train.state == DONE
    assert positions == [1]  # while g ran between steps, "o" was first in line
    assert runner.log == ["step 0", "pause", "run g", "resume", "step 1", "run o"]


def test_shutdown_during_an_inline_job_stops_both(host):
    runner, queue = host
    runner.during["s"] = lambda job: queue.shutdown()
    train = queue.submit("train", 3, "t")
    s = queue.submit("gen", "s", "u")
    later = queue.submit("gen", "later", "u")
    queue.start()
    for job in (train, s, later):
        assert queue.wait(job, 60)
    assert later.state == CANCELLED and s.state in (INTERRUPTED, DONE)
    assert train.state == INTERRUPTED
    assert "run later" not in runner.log


def test_the_option_turns_it_off_and_a_job_off_the_queue_never_yields():
    job = Job(kind="train_lora", params=None, options={KEY: False})
    job.run_waiting = lambda accept, around: 0
    assert TrainingYield.of(job, None, None, Trained(checkpoint=None)) is None
    on = Job(kind="train_lora", params=None, options={KEY: True})
    assert TrainingYield.of(on, None, None, Trained(checkpoint=None)) is None  # not queued
    on.run_waiting = job.run_waiting
    assert TrainingYield.of(on, None, None, Trained(checkpoint=None)) is not None
    default = Job(kind="train_lora", params=None, options={})
    default.run_waiting = job.run_waiting
    assert TrainingYield.of(default, None, None, Trained(checkpoint=None)) is not None


def test_a_job_accept_refuses_stays_queued_without_a_pause():
    calls: list[tuple[int, str]] = []
    paused: list[bool] = []

    @contextmanager
    def around():
        paused.append(True)
        yield

    def runner(job: Job):
        if job.kind == "train":
            calls.append((job.run_waiting(lambda j: False, around), other.state))
        return None

    queue = JobQueue(runner)
    train = queue.submit("train", 1, "t")
    other = queue.submit("gen", "g", "u")
    queue.start()
    try:
        assert queue.wait(train, 60) and queue.wait(other, 60)
    finally:
        queue.stop()
    assert calls == [(0, QUEUED)] and not paused and other.state == DONE


class FakeModels:
    def resolve(self, name: str | None):
        if name == "missing":
            raise LookupError(name)
        return SimpleNamespace(path=Path(f"/models/{name or 'a'}.safetensors"))


def gen(kind: str = "txt2img", **fields) -> Job:
    base = {"prompt": "a cat", "negative_prompt": "", "checkpoint": None, "hires": None,
            "refiner_checkpoint": None, "script": None, "extension_args": {}}  # fmt: skip
    return Job(kind=kind, params=SimpleNamespace(**{**base, **fields}),
               options={"sd_model_checkpoint": "a"})  # fmt: skip


@pytest.mark.parametrize(
    "job, runs",
    [(gen(), True), (gen(checkpoint="a"), True), (gen(checkpoint="b"), False),
     (gen(checkpoint="missing"), False), (gen(refiner_checkpoint="b"), False),
     (gen(hires=SimpleNamespace(checkpoint="b", prompt="", negative_prompt="")), False),
     (gen(hires=SimpleNamespace(checkpoint=None, prompt="x <lora:mine>", negative_prompt="")),
      False),
     (gen(hires=SimpleNamespace(checkpoint="a", prompt="", negative_prompt="")), True),
     (gen(script="xyz", extension_args={"xyz": {"x_type": "Checkpoint name"}}), False),
     (gen(script="xyz", extension_args={"xyz": {"x_type": "Seed", "y_type": "Nothing"}}), True),
     (gen(prompt="a cat <lora:mine:0.5>"), False), (gen(prompt="<lora:sub/Mine>"), False),
     (gen(prompt="a cat <lora:other:1>"), True), (gen(negative_prompt="tiemb, ugly"), False),
     (gen("img2img", checkpoint="a"), True), (gen("extras"), True), (gen("interrogate"), True),
     (gen("load"), False), (gen("unload"), False), (gen("merge"), False),
     (gen("train_lora"), False), (gen("train_embedding"), False)],
)  # fmt: skip
def test_which_jobs_run_between_training_steps(job, runs):
    """The same checkpoint everywhere in the job, not the network being trained, a kind
    that generates; anything else waits for the end of the training."""
    trained = Trained(Path("/models/a.safetensors"), lora="mine", embedding="tiemb")
    host = Job(kind="train_lora", params=None, options={KEY: True})
    host.run_waiting = lambda accept, around: 0
    assert TrainingYield.of(host, FakeModels(), None, trained).accepts(job) is runs


def test_a_pause_is_not_counted_in_the_training_step_time(monkeypatch):
    now = [0.0]
    monkeypatch.setattr("webui.core.progress.time.monotonic", lambda: now[0])
    progress = Progress(started_at=0.0)
    now[0] = 1.0
    progress.advance(1, 10)
    now[0] = 101.0
    progress.note("paused")  # told to the listeners, not a step
    progress.exclude(100.0)  # the last 100 seconds ran other jobs
    now[0] = 102.0
    progress.advance(2, 10)
    assert progress.seconds_per_step == pytest.approx(1.0) and progress.text == "paused"
