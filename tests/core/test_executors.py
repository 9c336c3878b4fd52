"""The queue with several executors (no Ray): the choice of executor, lost workers."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from webui.core.executors import LocalExecutor, Slot, WorkerLost, choose_executor
from webui.core.jobs import DONE, FAILED, JobQueue, summary


class FakeExecutor:
    """Holds some checkpoints, sees some; runs a job by calling `behaviour(job)`."""

    def __init__(self, name, held=(), sees=None, behaviour=None):
        self.name, self.device, self.gone = name, "cpu", False
        self._held, self._sees = list(held), sees
        self.behaviour = behaviour or (lambda job: job.id)
        self.ran: list[str] = []

    def run(self, job):
        self.ran.append(job.id)
        return self.behaviour(job)

    def held(self):
        return self._held

    def sees(self, checkpoint):
        return self._sees is None or checkpoint in self._sees


def test_choice_prefers_the_one_holding_the_checkpoint():
    a, b, c = (Slot(FakeExecutor(n, held=h)) for n, h in (("a", []), ("b", ["x"]), ("c", [])))
    a.used, b.used, c.used = 1, 5, 2
    assert choose_executor("x", [a, b, c]) is b


def test_choice_falls_back_to_the_least_recently_used():
    a, b = Slot(FakeExecutor("a", held=["y"])), Slot(FakeExecutor("b"))
    a.used, b.used = 3, 2
    assert choose_executor("x", [a, b]) is b
    assert choose_executor(None, [a, b]) is b  # no checkpoint named: LRU


def test_choice_skips_executors_that_cannot_see_the_checkpoint():
    a, b = Slot(FakeExecutor("a", sees={"y"})), Slot(FakeExecutor("b", sees={"x"}))
    a.used, b.used = 1, 9
    assert choose_executor("x", [a, b]) is b
    assert choose_executor("z", [a, b]) is None


def _queue(executors, checkpoints=None):
    q = JobQueue(executors=executors, checkpoint_of=lambda job: (checkpoints or {}).get(job.id))
    q.start()
    return q


def test_jobs_go_to_the_worker_holding_their_checkpoint():
    a, b = FakeExecutor("a", held=["m1"]), FakeExecutor("b", held=["m2"])
    q = _queue([a, b], {"j1": "m2", "j2": "m2", "j3": "m1"})
    try:
        for jid in ("j1", "j2", "j3"):
            job = q.submit("txt2img", SimpleNamespace(prompt=jid), job_id=jid)
            assert q.wait(job, 10)
            assert job.state == DONE
        assert q.get("j1").worker == q.get("j2").worker == "b" and q.get("j3").worker == "a"
        assert summary(q.get("j1"))["worker"] == "b"
        assert {w["name"]: w["jobs_done"] for w in q.workers()} == {"a": 1, "b": 2}
    finally:
        q.stop()


def test_several_jobs_run_at_once_on_several_workers():
    gate, running = threading.Event(), threading.Semaphore(0)

    def hold(job):
        running.release()
        assert gate.wait(10)

    a, b = FakeExecutor("a", behaviour=hold), FakeExecutor("b", behaviour=hold)
    q = _queue([a, b])
    try:
        jobs = [
            q.submit("txt2img", SimpleNamespace(prompt=str(i)), owner=f"u{i}") for i in range(3)
        ]
        assert running.acquire(timeout=10) and running.acquire(timeout=10)  # both at once
        assert [pos for _, pos in q.listing() if pos == 0] == [0, 0]
        assert sorted(j.worker for j in jobs[:2]) == ["a", "b"]
        assert q.position(jobs[2]) == 1
        assert {w["state"] for w in q.workers()} == {"running"}
        gate.set()
        assert all(q.wait(j, 10) for j in jobs)
        assert all(j.state == DONE for j in jobs)
    finally:
        gate.set()
        q.stop()


def test_a_lost_worker_job_runs_once_more_elsewhere():
    def die(job):
        raise WorkerLost("killed")

    dead = FakeExecutor("dead", behaviour=die)
    dead.gone = True
    alive = FakeExecutor("alive", held=["m"])
    q = JobQueue(executors=[dead], checkpoint_of=lambda job: "m")
    q.start()
    try:
        job = q.submit("txt2img", SimpleNamespace(prompt="p"))
        q.add_executor(alive)
        assert q.wait(job, 10)
        assert job.state == DONE and job.worker == "alive" and job.attempts in (1, 2)
        assert {w["name"]: w["state"] for w in q.workers()}["dead"] in ("lost", "idle")
    finally:
        q.stop()


def test_a_job_that_loses_its_worker_twice_fails_clearly():
    def die(job):
        raise WorkerLost("process killed")

    a, b = FakeExecutor("a", behaviour=die), FakeExecutor("b", behaviour=die)
    q = _queue([a, b])
    try:
        job = q.submit("txt2img", SimpleNamespace(prompt="p"))
        assert q.wait(job, 10)
        assert job.state == FAILED and job.attempts == 2
        assert "stopped (process killed), 2 times" in job.error
        after = q.submit("txt2img", SimpleNamespace(prompt="q"))  # the queue goes on
        assert q.wait(after, 10)
    finally:
        q.stop()


def test_a_checkpoint_no_worker_sees_is_refused_naming_it():
    q = _queue([FakeExecutor("a", sees={"m"})], {"j": "other.safetensors"})
    try:
        job = q.submit("txt2img", SimpleNamespace(prompt="p"), job_id="j")
        assert q.wait(job, 10)
        assert job.state == FAILED and "other.safetensors" in job.error
    finally:
        q.stop()


def test_the_default_queue_is_one_local_executor():
    q = JobQueue(lambda job: "r")
    q.start()
    try:
        job = q.submit("txt2img", SimpleNamespace(prompt="p"))
        assert q.wait(job, 10) and job.result == "r"
        assert job.worker == "local" and job.attempts == 1
        assert [w["name"] for w in q.workers()] == ["local"]
    finally:
        q.stop()
    assert q.stopped()


def test_a_queue_needs_something_to_run_jobs():
    with pytest.raises(ValueError):
        JobQueue()
    assert LocalExecutor(lambda job: None).sees("anything")


def test_an_idle_worker_that_died_is_removed_before_it_gets_a_job():
    dead, alive = FakeExecutor("dead"), FakeExecutor("alive")
    q = _queue([dead])
    try:
        q.remove_executor(dead)
        job = q.submit("txt2img", SimpleNamespace(prompt="p"))
        assert not q.wait(job, 0.2)  # no worker: the job waits, it does not fail
        q.add_executor(alive)
        assert q.wait(job, 10)
        assert job.state == DONE and job.worker == "alive" and job.attempts == 1
        assert dead.ran == [] and {w["name"]: w["state"] for w in q.workers()}["dead"] == "lost"
    finally:
        q.stop()
