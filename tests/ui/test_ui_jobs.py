"""What a tab shows while its jobs run, without a browser: the measured ETA, a page's
several jobs, result galleries that carry the saved files, other users' prompts kept
private, and one log line (no traceback) for input errors."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from types import SimpleNamespace

import pytest
from PIL import Image

from webui.core import jobs as J
from webui.core.jobs import JobQueue, Progress
from webui.core.params import ParamError
from webui.options import Options
from webui.ui.common import InputError, gallery_items, owner_of, progress_html
from webui.ui.job_stream import TabJobs, follow_job
from webui.ui.queue_panel import table_html

WAIT = 60


# --- ETA ----------------------------------------------------------------------------------


def test_eta_comes_from_measured_steps_and_never_grows_while_a_step_runs(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(J.time, "monotonic", lambda: clock[0])
    p = Progress(started_at=100.0)
    p.steps = 10
    assert p.eta_seconds is None  # no step measured yet: "estimating…"
    clock[0] = 102.0
    p.advance(1, 10)  # the first step took 2 s
    assert p.eta_seconds == pytest.approx(18.0)
    etas = []
    for now in (102.5, 103.5, 104.0, 110.0, 130.0):  # the second step runs, slowly
        clock[0] = now
        etas.append(p.eta_seconds)
    assert etas == sorted(etas, reverse=True), etas  # counts down, never up
    assert etas[-1] == pytest.approx(16.0)  # never below the steps after the current one
    clock[0] = 130.0
    p.advance(2, 10)  # that step took 28 s: the mean is now 15 s
    assert p.eta_seconds == pytest.approx(8 * 15.0)


def test_progress_says_estimating_until_a_step_is_measured():
    queue = JobQueue(lambda job: None)
    job = J.Job(kind="txt2img", params=SimpleNamespace(prompt="x"))
    job.state = J.RUNNING
    job.progress.started_at = time.monotonic()
    job.progress.steps = 20
    ctx = SimpleNamespace(jobs=queue)
    assert "ETA: estimating…" in progress_html(ctx, job)
    job.progress.advance(1, 20)
    html = progress_html(ctx, job)
    assert "Step 1/20" in html and "ETA " in html and "estimating" not in html


# --- several jobs from one tab ---------------------------------------------------------------


class GatedRunner:
    """Runs each job a step at a time until its gate opens."""

    def __init__(self):
        self.gates: dict[str, threading.Event] = {}

    def gate(self, prompt: str) -> threading.Event:
        return self.gates.setdefault(prompt, threading.Event())

    def __call__(self, job):
        p = job.progress
        p.started_at = time.monotonic()
        p.advance(1, 4)
        self.gate(job.params.prompt).wait(WAIT)
        p.advance(4, 4)
        return SimpleNamespace(images=[], warnings=[], params=job.params)


def _follow(ctx, request, tab_jobs, prompt, out: list):
    # submitted as the generation service does (tests/services/test_services_generation.py covers it)
    job = ctx.jobs.submit("txt2img", SimpleNamespace(prompt=prompt), owner=owner_of(request))

    async def follow():
        async for update in follow_job(ctx, request, tab_jobs, job):
            out.append(update)

    asyncio.run(follow())


def _followed(ctx, tab_jobs: TabJobs, page: str) -> int:
    lead, behind = tab_jobs.lead(ctx, page)
    return 0 if lead is None else behind + 1


def _wait(predicate, what: str):
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_tab_follows_its_running_job_and_counts_the_ones_behind_it():
    runner = GatedRunner()
    queue = JobQueue(runner)
    queue.start()
    ctx = SimpleNamespace(jobs=queue)
    request = SimpleNamespace(username="alice", session_hash="page-1", cookies={})
    tab_jobs = TabJobs()
    updates: dict[str, list] = {name: [] for name in ("first", "second", "third")}
    threads = []
    try:
        for count, name in enumerate(updates, start=1):
            thread = threading.Thread(
                target=_follow, args=(ctx, request, tab_jobs, name, updates[name]), daemon=True
            )
            thread.start()
            threads.append(thread)
            # queued and followed by the tab before the next click (else the next job can
            # be the page's only known job for a moment, and show its own "waiting" line)
            _wait(lambda c=count: _followed(ctx, tab_jobs, "page-1") == c, f"job {name}")

        # the first job runs: its progress is shown, with the two waiting behind it (its
        # first line may come before the others are queued: updates are pushed at once)
        _wait(
            lambda: any(
                "Step 1/4" in str(u.progress)
                and "2 more job(s) from this tab waiting" in str(u.progress)
                for u in updates["first"]
            ),
            "progress with the two jobs behind it",
        )
        assert updates["second"] == [] and updates["third"] == []  # no stale "waiting" line

        runner.gate("first").set()
        _wait(lambda: any(u.finished for u in updates["first"]), "the first job's result")
        final = updates["first"][-1]
        assert final.finished.params.prompt == "first" and final.waiting == 2
        _wait(lambda: any("Step 1/4" in str(u.progress) for u in updates["second"]), "second")
        assert "1 more job(s) from this tab waiting" in updates["second"][-1].progress
        assert updates["third"] == []
    finally:
        for gate in ("first", "second", "third"):
            runner.gate(gate).set()
        for thread in threads:
            thread.join(WAIT)
        queue.stop()
    assert [u.finished.params.prompt for u in updates["third"] if u.finished] == ["third"]


# --- result galleries ----------------------------------------------------------------------


def test_gallery_items_give_the_saved_file_or_a_png_with_the_parameters(tmp_path):
    import gradio as gr

    saved = tmp_path / "00001-7.webp"
    Image.new("RGB", (8, 8), "red").save(saved)
    items = gallery_items([
        SimpleNamespace(image=Image.new("RGB", (8, 8)), seed=7, infotext="a cat\nSteps: 2",
                        path=str(saved)),
        SimpleNamespace(image=Image.new("RGB", (8, 8)), seed=8, infotext="a dog\nSteps: 3",
                        path=None),
    ])  # fmt: skip
    assert items[0] == (str(saved), "seed 7")
    gallery = gr.Gallery(format="png")
    data = gallery.postprocess(items).model_dump()
    unsaved = data[1]["image"]["path"]
    assert unsaved.endswith(".png")
    with Image.open(unsaved) as image:
        assert image.info["parameters"] == "a dog\nSteps: 3"


# --- other users' prompts ---------------------------------------------------------------------


def test_the_queue_table_hides_other_users_prompts_unless_the_option_says_so():
    gate = threading.Event()
    queue = JobQueue(lambda job: gate.wait(WAIT))
    options = Options()
    ctx = SimpleNamespace(jobs=queue, options=options)
    queue.submit("txt2img", SimpleNamespace(prompt="alice secret castle"), owner="alice")
    queue.submit("txt2img", SimpleNamespace(prompt="bob quiet harbour"), owner="bob")
    as_bob = table_html(ctx, "bob")
    assert "bob quiet harbour" in as_bob and "alice secret castle" not in as_bob
    assert "alice" in as_bob  # the job itself is listed, with its owner
    options.set("queue_show_others_prompts", True)
    assert "alice secret castle" in table_html(ctx, "bob")
    gate.set()


# --- input errors in the log ----------------------------------------------------------------


def test_a_job_that_fails_on_input_logs_one_line_a_bug_logs_its_traceback(caplog):
    def runner(job):
        if job.params.prompt == "bad":
            raise ParamError("steps", "must be between 1 and 150, got 0")
        raise RuntimeError("a bug")

    queue = JobQueue(runner)
    queue.start()
    try:
        with caplog.at_level(logging.WARNING, logger="webui.core.jobs"):
            bad = queue.submit("txt2img", SimpleNamespace(prompt="bad"))
            bug = queue.submit("txt2img", SimpleNamespace(prompt="bug"))
            assert bad.done.wait(WAIT) and bug.done.wait(WAIT)
    finally:
        queue.stop()
    records = {r.getMessage().split(":")[0]: r for r in caplog.records}
    input_record = records[f"job {bad.id} failed"]
    assert input_record.exc_info is None and "steps: must be between" in input_record.getMessage()
    assert records[f"job {bug.id} failed"].exc_info is not None


def test_an_input_error_in_the_ui_is_one_log_line_without_a_traceback(caplog):
    with caplog.at_level(logging.INFO, logger="webui.ui.common"):
        error = InputError("Upload an image for img2img first")
    assert error.print_exception is False  # Gradio prints no traceback for it
    assert [r.getMessage() for r in caplog.records] == [
        "refused: Upload an image for img2img first"
    ]


def test_the_queue_table_shows_which_worker_runs_each_job():
    gate = threading.Event()
    queue = JobQueue(lambda job: gate.wait(WAIT))
    queue.start()
    ctx = SimpleNamespace(jobs=queue, options=Options())
    try:
        running = queue.submit("txt2img", SimpleNamespace(prompt="p"), owner="alice")
        deadline = time.monotonic() + WAIT
        while running.state != "running" and time.monotonic() < deadline:
            time.sleep(0.01)
        table = table_html(ctx, "alice")
        assert (
            "<th>Worker</th>" in table
            and '<td class="queue-worker" translate="no">local</td>' in table
        )
    finally:
        gate.set()
        queue.stop()
