"""The queue panel in a real browser: two browser contexts are two users (no login, each
browser is its own owner), served under --subpath. Each sees every job in the queue but
only its own marked "(you)" with buttons, only its own previews and results, and gets its
results back after reloading the page."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator

import pytest

from tests.conftest import ServerThread
from tests.ui.test_browser import _set_number
from webui.app import create_app
from webui.settings import parse_flags

pytestmark = pytest.mark.browser
LONG_STEPS = 150  # A's job (slow_steps: over a minute): acted on while it runs, then stopped
WAIT = 120_000


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_files) -> Iterator[tuple[ServerThread, object]]:
    data = tmp_path_factory.mktemp("browser-queue")
    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    shutil.copy(tiny_files["sd1"], folder / "tiny-sd1.safetensors")
    (data / "config.json").write_text(json.dumps({"show_progress_every_n_steps": 1}))
    flags = parse_flags(["--data-dir", str(data), "--no-download-sd-model", "--subpath", "/sd"])
    app = create_app(flags)
    with ServerThread(app) as srv:
        yield srv, app.state.ctx


def open_user(browser, url: str):
    context = browser.new_context(viewport={"width": 1400, "height": 1600})
    page = context.new_page()
    page.goto(url, wait_until="load")
    page.wait_for_function(
        "() => document.querySelector('#sd_checkpoint input')?.value.includes('tiny-sd1')",
        timeout=WAIT,
    )
    return context, page


def fill(page, prompt: str, steps: int) -> None:
    page.get_by_label("Prompt", exact=True).fill(prompt)
    _set_number(page, "Width", 64)
    _set_number(page, "Height", 64)
    _set_number(page, "Sampling steps", steps)


def row(page, text: str):
    return page.locator("#queue_table tr.queue-row", has_text=text)


def button(page, text: str, action: str):
    return row(page, text).get_by_role("button", name=re.compile(f"^{action}"))


@pytest.mark.usefixtures("slow_steps")
def test_two_users_see_their_own_jobs_and_previews(browser, server) -> None:
    srv, _ = server
    url = f"{srv.url}/sd/"
    ctx_a, a = open_user(browser, url)
    ctx_b, b = open_user(browser, url)
    try:
        fill(a, "alice lighthouse", LONG_STEPS)
        a.get_by_role("button", name="Generate", exact=True).click()
        button(a, "alice lighthouse", "Interrupt").wait_for(timeout=WAIT)
        fill(b, "bob windmill", 2)
        b.get_by_role("button", name="Generate", exact=True).click()
        row(b, "bob windmill").wait_for(timeout=WAIT)
        fill(b, "bob second", 2)
        b.get_by_role("button", name="Generate", exact=True).click()
        row(b, "bob second").wait_for(timeout=WAIT)

        # everyone sees every job, other users' without their prompt; only their own rows
        # are marked and have buttons
        a.wait_for_function(
            "() => document.querySelectorAll('#queue_table tr.queue-row.queued:not(.mine)')"
            ".length === 2",
            timeout=WAIT,
        )
        assert "bob" not in a.locator("#queue_table").inner_text()
        assert "alice" not in b.locator("#queue_table").inner_text()
        assert "(you)" in row(a, "alice lighthouse").inner_text()
        for page in (a, b):
            others = page.locator("#queue_table tr.queue-row:not(.mine)")
            assert "(you)" not in " ".join(others.all_inner_texts())
            assert others.get_by_role("button").count() == 0
        assert "(you)" in row(b, "bob windmill").inner_text()
        assert button(b, "bob windmill", "Cancel").count() == 1

        # each sees its own job's live preview; bob (still waiting) sees none of alice's
        a.locator("#txt2img_progress img.live-preview").wait_for(state="visible", timeout=WAIT)
        a.locator("#my_job_status img.live-preview").wait_for(state="visible", timeout=WAIT)
        for where in ("#my_job_gallery img", "#txt2img_gallery img", "img.live-preview"):
            assert b.locator(where).count() == 0, where
        _expect_my_jobs(a, ["alice lighthouse"], ["bob"])
        _expect_my_jobs(b, ["bob windmill", "bob second"], ["alice"])

        # bob reorders and cancels his own waiting jobs with the row buttons
        first_waiting = "bob windmill"
        button(b, "bob second", "Move up").click()
        b.wait_for_function(
            """() => [...document.querySelectorAll('#queue_table tr.queue-row.queued')]
                 .map(r => r.textContent).join('|').indexOf('bob second') <
                 [...document.querySelectorAll('#queue_table tr.queue-row.queued')]
                 .map(r => r.textContent).join('|').indexOf('bob windmill')""",
            timeout=WAIT,
        )
        button(b, first_waiting, "Cancel").click()
        row(b, first_waiting).locator("text=cancelled").wait_for(timeout=WAIT)

        # alice interrupts her running job; bob's remaining job then runs to the end
        button(a, "alice lighthouse", "Interrupt").click()
        row(a, "alice lighthouse").locator("text=interrupted").wait_for(timeout=WAIT)
        b.locator("#txt2img_infotext pre").wait_for(timeout=WAIT)
        assert b.locator("#txt2img_infotext pre").inner_text().startswith("bob second\n")
        assert "alice" not in b.locator("#my_job_infotext").inner_text()

        # a reload keeps the results: the job id is in the URL, "My results" shows it
        assert "job=" in a.url
        a.reload(wait_until="load")
        a.locator("#my_job_infotext pre").wait_for(timeout=WAIT)
        assert a.locator("#my_job_infotext pre").inner_text().startswith("alice lighthouse\n")
        assert a.locator("#my_job_gallery img").count() >= 1
        b.goto(url, wait_until="load")  # without ?job=: the newest of bob's jobs
        b.locator("#my_job_infotext pre").wait_for(timeout=WAIT)
        assert b.locator("#my_job_infotext pre").inner_text().startswith("bob second\n")
    finally:
        ctx_a.close()
        ctx_b.close()


@pytest.mark.usefixtures("slow_steps")
def test_queue_limit_message_in_the_ui(browser, server) -> None:
    srv, ctx = server
    ctx.options.set("queue_limit_per_user", 1)
    context, page = open_user(browser, f"{srv.url}/sd/")
    try:
        fill(page, "limited", LONG_STEPS)
        page.get_by_role("button", name="Generate", exact=True).click()
        button(page, "limited", "Interrupt").wait_for(timeout=WAIT)
        page.get_by_role("button", name="Generate", exact=True).click()
        page.get_by_text(re.compile("Queue limit reached")).first.wait_for(timeout=WAIT)
        button(page, "limited", "Interrupt").click()
        row(page, "limited").locator("text=interrupted").wait_for(timeout=WAIT)
    finally:
        ctx.options.set("queue_limit_per_user", 10)
        context.close()


def _expect_my_jobs(page, mine: list[str], never: list[str]) -> None:
    """The "My jobs" list holds this user's jobs and nobody else's."""
    page.locator("#my_jobs input").click()
    options = page.get_by_role("option")
    options.first.wait_for(timeout=WAIT)
    texts = options.all_inner_texts()
    page.keyboard.press("Escape")
    for text in mine:
        assert any(text in t for t in texts), (text, texts)
    for text in never:
        assert not any(text in t for t in texts), (text, texts)
