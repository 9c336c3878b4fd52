"""The job queue on its own: fairness between owners, limits, cancel/interrupt/skip/reorder,
option snapshots and kept results. The runner is a small stand-in for the real one that
drives `Job.progress` and asks `Job.should_stop()` the way processing does."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from webui.core import jobs as J
from webui.core.jobs import JobAccessError, JobQueue, QueueFullError
from webui.owners import guest_owner


class Runner:
    """Records the order jobs run in; `gate` holds every job until set (when given)."""

    def __init__(self, gate: threading.Event | None = None, steps: int = 1, delay: float = 0):
        self.gate = gate
        self.steps = steps
        self.delay = delay
        self.order: list[str] = []
        self.started = threading.Event()
        self.running = 0
        self.max_running = 0

    def __call__(self, job: J.Job):
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        self.order.append(job.params.prompt)
        self.started.set()
        try:
            if job.params.prompt == "boom":
                raise RuntimeError("boom")
            if self.gate is not None:
                self.gate.wait(10)
            return self._sample(job)
        finally:
            self.running -= 1

    def _sample(self, job: J.Job):
        """Like processing.txt2img: check between batches, and every step."""
        p = job.progress
        p.batches = getattr(job.params, "batches", 1)
        images = []
        for batch in range(p.batches):
            if job.should_stop():
                break
            p.batch, p.step, p.steps = batch, 0, self.steps
            for i in range(self.steps):
                time.sleep(self.delay)
                p.step = i + 1
                if job.should_stop():
                    break
            images.append(SimpleNamespace(image=None, seed=batch, infotext=f"batch {batch}"))
        return SimpleNamespace(images=images)


def params(prompt: str, batches: int = 1):
    return SimpleNamespace(prompt=prompt, batches=batches)


@pytest.fixture
def make_queue():
    queues: list[JobQueue] = []

    def make(runner, **kwargs) -> JobQueue:
        queue = JobQueue(runner, **kwargs)
        queue.start()
        queues.append(queue)
        return queue

    yield make
    for queue in queues:
        queue.stop()


def test_round_robin_between_owners(make_queue):
    gate = threading.Event()
    runner = Runner(gate)
    queue = make_queue(runner)
    first = queue.submit("txt2img", params("a1"), owner="alice")
    assert runner.started.wait(5)
    for owner, prompt in [("alice", "a2"), ("alice", "a3"), ("bob", "b1"), ("bob", "b2"),
                          ("carol", "c1")]:  # fmt: skip
        queue.submit("txt2img", params(prompt), owner=owner)
    planned = [j.params.prompt for j in queue.schedule()]
    assert planned == ["b1", "c1", "a2", "b2", "a3"]
    assert queue.position(first) == 0
    listing = [(j.params.prompt, pos) for j, pos in queue.listing()]
    assert listing[:6] == [("a1", 0), ("b1", 1), ("c1", 2), ("a2", 3), ("b2", 4), ("a3", 5)]
    gate.set()
    for job in queue.jobs():
        assert job.done.wait(10)
    assert runner.order == ["a1", "b1", "c1", "a2", "b2", "a3"]
    assert runner.max_running == 1
    assert all(j.state == J.DONE for j in queue.jobs())


def test_per_owner_limit(make_queue):
    gate = threading.Event()
    limit = {"value": 2}
    queue = make_queue(Runner(gate), limit_per_owner=lambda: limit["value"])
    a1 = queue.submit("txt2img", params("a1"), owner="alice")
    queue.submit("txt2img", params("a2"), owner="alice")
    with pytest.raises(QueueFullError) as error:
        queue.submit("txt2img", params("a3"), owner="alice")
    assert "limit per user is 2" in str(error.value)
    queue.submit("txt2img", params("b1"), owner="bob")  # other owners are not affected
    queue.submit("load", params("model"), owner="alice")  # maintenance jobs are not counted
    limit["value"] = 0  # 0: no limit
    queue.submit("txt2img", params("a3"), owner="alice")
    limit["value"] = 3
    with pytest.raises(QueueFullError):
        queue.submit("txt2img", params("a4"), owner="alice")
    gate.set()
    assert a1.done.wait(10)


def test_cancel_interrupt_and_owner_checks(make_queue):
    gate = threading.Event()
    queue = make_queue(Runner(gate))
    running = queue.submit("txt2img", params("r"), owner="alice")
    waiting = queue.submit("txt2img", params("w"), owner="alice")
    time.sleep(0.05)
    with pytest.raises(JobAccessError):
        queue.cancel(waiting.id, owner="bob")
    with pytest.raises(JobAccessError):
        queue.interrupt(running.id, owner="bob")
    assert queue.cancel(running.id, owner="alice") is False  # running: interrupt, not cancel
    assert queue.skip(waiting.id, owner="alice") is False  # only a running job can skip
    assert queue.cancel(waiting.id, owner="alice") is True
    assert waiting.state == J.CANCELLED and waiting.done.is_set()
    assert queue.position(waiting) is None
    assert queue.cancel("no-such-job") is False
    assert queue.interrupt(running.id, owner="alice") is True
    gate.set()
    assert running.done.wait(10)
    assert running.state == J.INTERRUPTED


def test_reorder_own_jobs(make_queue):
    gate = threading.Event()
    runner = Runner(gate)
    queue = make_queue(runner)
    queue.submit("txt2img", params("a0"), owner="alice")
    assert runner.started.wait(5)
    a1 = queue.submit("txt2img", params("a1"), owner="alice")
    a2 = queue.submit("txt2img", params("a2"), owner="alice")
    a3 = queue.submit("txt2img", params("a3"), owner="alice")
    queue.submit("txt2img", params("b1"), owner="bob")
    with pytest.raises(JobAccessError):
        queue.move(a3.id, -1, owner="bob")
    assert queue.move(a3.id, -2, owner="alice") is True
    assert queue.move(a3.id, -1, owner="alice") is False  # already the first of alice's
    assert queue.move(a1.id, +5, owner="alice") is True  # clamps to the last place
    assert [j.params.prompt for j in queue.schedule()] == ["b1", "a3", "a2", "a1"]
    assert queue.position(a2) == 3
    gate.set()
    assert a1.done.wait(10) and a2.done.wait(10)
    assert runner.order == ["a0", "b1", "a3", "a2", "a1"]


def test_skip_ends_the_current_image_only(make_queue):
    runner = Runner(steps=40, delay=0.01)
    queue = make_queue(runner)
    job = queue.submit("txt2img", params("s", batches=2), owner="alice")
    deadline = time.monotonic() + 5
    while job.progress.step < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert job.progress.batch == 0
    assert queue.skip(job.id, owner="alice") is True
    assert job.done.wait(10)
    assert job.state == J.DONE and job.skipped == 1
    assert len(job.result.images) == 2  # the second batch ran in full
    assert job.progress.step == 40 and job.progress.batch == 1


def test_interrupt_stops_all_batches(make_queue):
    queue = make_queue(Runner(steps=40, delay=0.01))
    job = queue.submit("txt2img", params("i", batches=3), owner="alice")
    while job.progress.step < 2:
        time.sleep(0.005)
    assert queue.interrupt_owner("alice") == 1
    assert job.done.wait(10)
    assert job.state == J.INTERRUPTED and len(job.result.images) == 1


def test_shutdown_aborts_the_running_job_and_cancels_the_waiting_ones(make_queue):
    queue = make_queue(Runner(steps=10_000, delay=0.01))
    running = queue.submit("txt2img", params("long", batches=3), owner="alice")
    waiting = [
        queue.submit("txt2img", params(p), owner=o) for p, o in (("a", "alice"), ("b", "bob"))
    ]
    deadline = time.monotonic() + 10
    while running.progress.step < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    queue.shutdown()  # returns at once: the waiting jobs are already cancelled
    assert [(j.state, j.error) for j in waiting] == [(J.CANCELLED, J.SHUTDOWN_MESSAGE)] * 2
    assert all(j.done.is_set() and j.abort_requested for j in waiting)
    assert running.done.wait(5)  # at its next step, not after 3 x 10,000 steps
    # aborted, not just interrupted: the images of the batch in progress are not kept
    assert running.state == J.INTERRUPTED and running.result is None
    assert running.error == J.SHUTDOWN_MESSAGE and running.progress.batch == 0
    with pytest.raises(J.ShuttingDownError):
        queue.submit("txt2img", params("late"), owner="carol")


def test_jobs_carry_an_options_snapshot(make_queue):
    current = {"CLIP_stop_at_last_layers": 1, "samples_format": "png"}
    queue = make_queue(Runner(), options_snapshot=lambda: dict(current))
    plain = queue.submit("txt2img", params("p"), owner="alice")
    override = queue.submit(
        "txt2img", params("o"), owner="bob", options={"CLIP_stop_at_last_layers": 2}
    )
    current["samples_format"] = "webp"  # a later change of the defaults...
    assert plain.options["samples_format"] == "png"  # ...does not reach submitted jobs
    assert override.options == {"CLIP_stop_at_last_layers": 2, "samples_format": "png"}
    assert plain.options["CLIP_stop_at_last_layers"] == 1
    with pytest.raises(TypeError):
        plain.options["samples_format"] = "jpg"  # read-only


def test_a_failing_job_does_not_stop_the_worker(make_queue):
    queue = make_queue(Runner())
    bad = queue.submit("txt2img", params("boom"), owner="alice")
    good = queue.submit("txt2img", params("fine"), owner="alice")
    assert good.done.wait(10)
    assert bad.state == J.FAILED and bad.error == "boom"
    assert good.state == J.DONE


def test_finished_jobs_are_kept_per_owner(make_queue):
    queue = make_queue(Runner(), keep_per_owner=2)
    jobs = [queue.submit("txt2img", params(f"a{i}"), owner="alice") for i in range(4)]
    bob = queue.submit("txt2img", params("b"), owner="bob")
    assert bob.done.wait(10) and all(j.done.wait(10) for j in jobs)
    kept = [j.params.prompt for j in queue.owner_jobs("alice")]
    assert kept == ["a3", "a2"]
    assert queue.get(jobs[0].id) is None
    assert queue.get(bob.id) is bob
    assert len(queue.get(jobs[3].id).images) == 1


def test_chosen_job_ids(make_queue):
    queue = make_queue(Runner())
    job = queue.submit("txt2img", params("x"), owner="alice", job_id="task(abc-1)")
    assert job.id == "task(abc-1)" and queue.get("task(abc-1)") is job
    assert job.done.wait(10)
    with pytest.raises(ValueError):
        queue.submit("txt2img", params("y"), owner="bob", job_id="task(abc-1)")
    again = queue.submit("txt2img", params("z"), owner="alice", job_id="task(abc-1)")
    assert queue.get("task(abc-1)") is again  # the owner may reuse a finished job's id
    for bad in ("", "a b", "x" * 65, "../etc"):
        with pytest.raises(ValueError):
            queue.submit("txt2img", params("q"), owner="alice", job_id=bad)


def test_active_job_and_summary(make_queue):
    gate = threading.Event()
    queue = make_queue(Runner(gate))
    a = queue.submit("txt2img", params("a long prompt " * 20), owner="alice")
    b = queue.submit("txt2img", params("b"), owner="bob")
    time.sleep(0.05)
    assert queue.active("alice") is a and queue.active("bob") is b
    assert queue.active("carol") is None
    info = J.summary(b, queue.position(b))
    assert info["state"] == "queued" and info["position"] == 1 and info["owner"] == "bob"
    assert len(J.summary(a)["prompt"]) <= 80
    gate.set()
    assert b.done.wait(10)
    assert J.summary(b)["progress"] == 1.0 and J.summary(b)["image_count"] == 1


def test_guest_owner_names_hide_the_token():
    token = "s3cret-browser-token"
    name = guest_owner(token)
    assert name == guest_owner(token) and name.startswith("guest-")
    assert token not in name and name != guest_owner(token + "x")
