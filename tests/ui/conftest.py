"""Shared fixtures of the UI tests: the browser and the server that can be shared.

The browser is Debian's Chromium through Playwright, one per module; every test opens its
own page (a page of its own browser context: cookies and storage are not shared). It is not
kept for the whole run: while Playwright's sync API is running, `asyncio.run` (which the
non-browser UI tests use) refuses to start in the same thread.

`image_tabs_server` is one server for the session, for the browser tests of the image
tabs (img2img, Inpaint, Upscale, Interrogate, the seed row): they change no option and
each looks only at its own page and its own output files (by seed, or in a folder no other
of them writes). A test that changes options, the queue or the outputs another test
counts gets a server of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ServerThread, with_tiny_sd1
from tests.ui.test_browser import CHROMIUM, CHROMIUM_FLAGS

ACTION_TIMEOUT_MS = 90_000  # Playwright's default is 30 s
STEP_SECONDS = 0.5  # what `slow_steps` adds to each sampling step


class PatientBrowser:
    """Playwright's Browser whose pages wait up to 90 s for an action instead of 30 s.

    On a busy 2-core CI machine a click on the Settings tab of a page that was still
    building its hundreds of components once took over 30 s to be dispatched."""

    def __init__(self, browser) -> None:
        self._browser = browser

    def new_context(self, **kwargs):
        context = self._browser.new_context(**kwargs)
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        return context

    def new_page(self, **kwargs):
        page = self._browser.new_page(**kwargs)
        page.set_default_timeout(ACTION_TIMEOUT_MS)
        return page

    def __getattr__(self, name: str):
        return getattr(self._browser, name)


@pytest.fixture
def slow_steps(monkeypatch) -> None:
    """Each sampling step of the servers in this process takes STEP_SECONDS longer, for the
    tests that act on a job while it runs (and then interrupt it): a tiny model's step
    takes milliseconds, and a 150-step job could end before the page had acted."""
    import time

    from webui.core.progress import Progress

    advance = Progress.advance

    def slow(self, step: int, steps: int) -> None:
        time.sleep(STEP_SECONDS)
        advance(self, step, steps)

    monkeypatch.setattr(Progress, "advance", slow)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield PatientBrowser(b)
        b.close()


@pytest.fixture(scope="session")
def image_tabs_server(tmp_path_factory, tiny_files) -> Iterator[tuple[ServerThread, Path]]:
    """(server, its --data-dir): the tiny SD 1.x checkpoint, a tiny 4x ESRGAN in
    models/ESRGAN, a tiny DeepDanbooru and a tiny WD14 tagger; no BLIP or CLIP."""
    from tests.tiny_interrogate import save_tiny_deepbooru, save_tiny_wd14
    from tests.tiny_upscaler import write_tiny_esrgan
    from webui.app import create_app
    from webui.model_manager.interrogate_files import CHARACTER, GENERAL
    from webui.settings import parse_flags

    data = with_tiny_sd1(tmp_path_factory.mktemp("browser-image-tabs"), tiny_files)
    write_tiny_esrgan(data / "models" / "ESRGAN" / "4x-tiny.pth", scale=4)
    save_tiny_deepbooru(data / "models" / "torch_deepdanbooru",
                        [("long_hair", 0.9), ("solo", 0.6), ("night", 0.1)])  # fmt: skip
    save_tiny_wd14(data / "models" / "interrogate" / "wd-tiny",
                   [("1girl", GENERAL, 0.8), ("hatsune_miku", CHARACTER, 0.9)])  # fmt: skip
    flags = parse_flags(["--data-dir", str(data), "--no-download-sd-model"])
    with ServerThread(create_app(flags)) as srv:
        yield srv, data
