"""The Checkpoint Merger tab in a real browser (Chromium, Playwright): a merge of two tiny
checkpoints lands in the checkpoint folder and in the page's lists; a mix of families is
refused with a message."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import ServerThread
from webui.app import create_app
from webui.model_manager.tiny import save_tiny_checkpoint
from webui.settings import parse_flags


@pytest.fixture
def server(data_dir, tiny_files):
    folder = data_dir / "models" / "Stable-diffusion"
    save_tiny_checkpoint(folder / "other.safetensors", "sd1", seed=1)
    shutil.copy(tiny_files["sdxl"], folder / "xl.safetensors")
    flags = parse_flags(["--data-dir", str(data_dir), "--no-download-sd-model"])
    with ServerThread(create_app(flags)) as srv:
        yield srv


def choose(page, dropdown: str, text: str) -> None:
    page.locator(f"#{dropdown} input").click()
    page.get_by_role("option").filter(has_text=text).first.click()


@pytest.mark.browser
def test_merge_two_checkpoints_in_the_tab(browser, server, data_dir):
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(server.url, wait_until="load")
    page.get_by_role("tab", name="Checkpoint Merger").click()
    choose(page, "modelmerger_primary_model_name", "tiny-sd1")
    choose(page, "modelmerger_secondary_model_name", "xl")
    page.locator("#modelmerger_merge").click()
    page.get_by_text("cannot merge models of different families").first.wait_for(timeout=60_000)
    choose(page, "modelmerger_secondary_model_name", "other")
    page.locator("#modelmerger_custom_name input, #modelmerger_custom_name textarea").first.fill("mix")  # fmt: skip
    page.locator("#modelmerger_merge").click()
    page.locator("#modelmerger_result").get_by_text("Checkpoint saved to").wait_for(timeout=120_000)
    assert (data_dir / "models" / "Stable-diffusion" / "mix.safetensors").is_file()
    page.locator("#sd_checkpoint input").click()
    page.get_by_role("option").filter(has_text="mix.safetensors").first.wait_for(timeout=90_000)
    page.close()  # before the server stops: an open page's stream would hold it for 30 s
