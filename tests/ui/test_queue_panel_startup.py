"""The start-up checkpoint load in the queue table: everyone sees what it loads and why it
failed (a broken checkpoint), not only "failed" (issue 16: the page says what it waits for)."""

from __future__ import annotations

from types import SimpleNamespace

from webui.core.jobs import JobQueue
from webui.errors import UserError
from webui.options import Options
from webui.ui.queue_panel import table_html


def test_the_start_up_load_names_its_checkpoint_and_its_failure() -> None:
    def runner(job) -> None:
        raise UserError("broken.safetensors: cannot read the file (header too large)")

    queue = JobQueue(runner)
    queue.start()
    try:
        job = queue.submit("load", "broken.safetensors", owner="startup")
        assert job.done.wait(30)
        table = table_html(SimpleNamespace(jobs=queue, options=Options()), "someone else")
    finally:
        queue.stop()
    assert "broken.safetensors" in table and "failed" in table
    assert "cannot read the file (header too large)" in table
