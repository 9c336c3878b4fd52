"""The browser for the UI tests: Debian's Chromium through Playwright, one per module."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ui.test_browser import CHROMIUM, CHROMIUM_FLAGS


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield b
        b.close()
