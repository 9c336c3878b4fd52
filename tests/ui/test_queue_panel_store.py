""" "My results" and the queue table with the job store (issue 14): the viewer's history
survives a restart, is paged (not capped at 20), a deleted file shows as deleted and not
as a broken picture, and a job that runs again after a restart says so."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.core.test_job_store import Runner, _params
from webui.core.job_store import JobStore
from webui.core.jobs import JobQueue
from webui.options import Options
from webui.ui import queue_panel
from webui.ui.queue_panel import PageView

TABLE, PICKER, STATUS, GALLERY, INFO, URL = range(6)


@pytest.fixture
def history(tmp_path, monkeypatch):
    """ann's 25 finished jobs and one that was running when the server died; a new queue
    on the same file (the restart) in a context the panel reads."""
    monkeypatch.setattr(queue_panel, "MY_JOBS_PAGE", 10)
    folder = tmp_path / "outputs"
    folder.mkdir()
    db = tmp_path / "jobs.sqlite3"
    store = JobStore(db)
    gate = threading.Event()
    runner = Runner(folder, gate, hold="cut short")
    queue = JobQueue(runner, store=store)
    queue.start()
    jobs = [queue.submit("txt2img", _params(f"ann {i}", seed=i), owner="ann") for i in range(25)]
    assert all(j.done.wait(10) for j in jobs)
    queue.submit("txt2img", _params("cut short", seed=50, batch_count=2), owner="ann")
    assert runner.started.wait(10)
    store.close()  # the server dies
    again_store = JobStore(db)
    again = JobQueue(Runner(folder), store=again_store)  # not started: the rerun waits
    yield SimpleNamespace(jobs=again, options=Options()), jobs
    gate.set()
    queue.stop()
    again.stop()
    again_store.close()


def test_my_results_pages_through_the_stored_history(history) -> None:
    ctx, jobs = history
    view = PageView("ann")
    first = queue_panel._render(ctx, view)
    labels = [label for label, _ in first[PICKER].choices]
    assert len(labels) == 10 and "cut short" in labels[0] and "queued" in labels[0]
    assert "will run again: the server restarted while it ran" in first[TABLE]
    view.turn(+10)
    view.turn(+10)
    third = queue_panel._render(ctx, view)
    assert [v for _, v in third[PICKER].choices] == [j.id for j in reversed(jobs[:6])]
    view.turn(+10)  # past the end: stays on the last page
    last = queue_panel._render(ctx, view)
    assert last[PICKER].choices == third[PICKER].choices and view.offset == 20


def test_an_old_result_shows_its_file_or_says_it_was_deleted(history) -> None:
    ctx, jobs = history
    oldest = jobs[1]
    view = PageView("ann")
    view.show(oldest.id)  # on the last page, chosen from the URL
    shown = queue_panel._render(ctx, view)
    assert shown[GALLERY] == [(oldest.saved[0], "seed 1")]  # the file itself
    assert "Done: 1 image(s)" in shown[STATUS] and "ann 1" in shown[INFO]
    Path(oldest.saved[0]).unlink()
    view.show(oldest.id)
    shown = queue_panel._render(ctx, view)
    assert shown[GALLERY] == [] and "1 image file(s) deleted" in shown[STATUS]
    other = PageView("bob")
    other.show(oldest.id)  # not bob's: nothing of it is shown
    assert queue_panel._render(ctx, other)[GALLERY] == []
    assert other.pinned is None
