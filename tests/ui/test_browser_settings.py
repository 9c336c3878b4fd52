"""In Chromium: the Settings tab shows what is stored and Apply writes only what changed.

Issue 19: every page load (a reload, another browser) shows the stored options; a page
left open with old values writes back only what its user changed; the message names only
that; the checkpoint setting shows the checkpoint; choices are picked from dropdowns and a
search box hides the settings that do not match (also in Chinese).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.ui.test_browser_pnginfo_i18n import serve

pytestmark = pytest.mark.browser

PREVIEW = "Live preview every N steps (0: off) (show_progress_every_n_steps)"
QUEUE_LIMIT = "Most jobs one user may have waiting or running (0: no limit) (queue_limit_per_user)"
WAIT = 60_000  # ms: generous, the machine may be busy


def open_settings(browser, url: str, locale: str = "en-US") -> Page:
    page = browser.new_context(locale=locale, viewport={"width": 1300, "height": 1000}).new_page()
    page.goto(url, wait_until="load")
    settings_tab(page).click()
    return page


def settings_tab(page: Page):
    """The Settings tab's button, in English or Chinese."""
    tabs = page.locator("#tabs button[role=tab]")
    return tabs.filter(has_text=re.compile(r"^\s*(Settings|设置)\s*$"))


def apply(page: Page) -> str:
    """Press Apply settings; the message it shows."""
    message = page.get_by_text(re.compile(r"settings changed|No change"))
    if message.count():
        message.evaluate("node => node.remove()")
    page.get_by_role("button", name="Apply settings").click()
    expect(message).to_be_visible(timeout=WAIT)
    return message.inner_text().strip()


def config(data: Path) -> dict:
    return json.loads((data / "config.json").read_text(encoding="utf-8"))


def test_settings_show_what_is_stored_and_a_stale_page_keeps_other_changes(
    browser,
    data_dir,
    tmp_path,
):
    with serve(data_dir) as srv:
        page_a = open_settings(browser, srv.url)
        expect(page_a.get_by_label(PREVIEW)).to_have_value("3", timeout=WAIT)
        page_b = open_settings(browser, srv.url)  # another browser
        preview_b = page_b.get_by_label(PREVIEW)
        expect(preview_b).to_have_value("3", timeout=WAIT)
        preview_b.fill("7")
        message_b = apply(page_b)
        assert config(data_dir)["show_progress_every_n_steps"] == 7

        page_b.reload(wait_until="load")  # a reload shows the stored value...
        settings_tab(page_b).click()
        expect(page_b.get_by_label(PREVIEW)).to_have_value("7", timeout=WAIT)
        page_c = open_settings(browser, srv.url)  # ...and so does a new browser
        expect(page_c.get_by_label(PREVIEW)).to_have_value("7", timeout=WAIT)
        page_c.screenshot(path=str(tmp_path / "settings.png"), full_page=True)

        # page A still shows 3; its user changes another setting only
        assert page_a.get_by_label(PREVIEW).input_value() == "3"
        page_a.get_by_label(QUEUE_LIMIT).fill("5")
        message_a = apply(page_a)
        stored = config(data_dir)
        assert (stored["show_progress_every_n_steps"], stored["queue_limit_per_user"]) == (7, 5)
        expect(page_a.get_by_label(PREVIEW)).to_have_value("7", timeout=WAIT)  # shows the store

        assert message_b == "1 settings changed: show_progress_every_n_steps."
        assert message_a == "1 settings changed: queue_limit_per_user."
        assert apply(page_c) == "No change."
        # the checkpoint setting names the checkpoint jobs use, as config.json does now
        checkpoint = page_c.locator("#setting_sd_model_checkpoint input")
        expect(checkpoint).to_have_value(re.compile(r"^tiny-sd1\.safetensors"), timeout=WAIT)
        for page in (page_a, page_b, page_c):
            page.context.close()


def test_choices_are_picked_and_search_hides_other_settings(
    browser,
    data_dir,
    tmp_path,
    tiny_files,
):
    shutil.copy(
        tiny_files["sd1"], data_dir / "models" / "Stable-diffusion" / "zz-other.safetensors"
    )
    with serve(data_dir) as srv:
        page = open_settings(browser, srv.url)
        image_format = page.locator("#setting_samples_format input[role=combobox]")
        expect(image_format).to_have_value("png", timeout=WAIT)
        image_format.click()
        options = page.get_by_role("option")
        expect(options).to_have_count(4, timeout=WAIT)
        shown = [o.get_attribute("aria-label") for o in options.all()]
        assert shown == ["png", "jpg", "jpeg", "webp"]
        page.get_by_role("option", name="webp").click()
        assert apply(page) == "1 settings changed: samples_format."
        assert config(data_dir)["samples_format"] == "webp"
        # a new default checkpoint: saved, and this page's checkpoint picker follows it
        page.locator("#setting_sd_model_checkpoint input[role=combobox]").click()
        page.get_by_role("option", name=re.compile(r"^zz-other\.safetensors")).click()
        assert apply(page) == "1 settings changed: sd_model_checkpoint."
        assert config(data_dir)["sd_model_checkpoint"].startswith("zz-other.safetensors")
        picker = page.locator("#sd_checkpoint input")
        expect(picker).to_have_value(re.compile(r"^zz-other\.safetensors"), timeout=WAIT)
        for key in ("sd_model_checkpoint", "sd_vae", "localization"):  # picked, not typed
            assert page.locator(f"#setting_{key} input[role=combobox]").count() == 1, key
        assert page.locator("#setting_CLIP_stop_at_last_layers input[type=range]").count() == 1
        assert page.locator("#setting_oom_retry_lower_memory input[type=checkbox]").count() == 1
        assert page.get_by_text("Saving images/grids", exact=True).is_visible()
        page.screenshot(path=str(tmp_path / "settings-full.png"), full_page=True)

        search = page.locator("#settings_search textarea, #settings_search input").first
        search.fill("format")
        expect(page.locator("#setting_show_progress_every_n_steps")).to_be_hidden(timeout=WAIT)
        expect(page.locator("#setting_samples_format")).to_be_visible()
        expect(page.get_by_text("User interface", exact=True)).to_be_hidden()  # empty section
        page.screenshot(path=str(tmp_path / "settings-search.png"), full_page=True)
        search.fill("clip_stop")  # the key works too
        expect(page.locator("#setting_CLIP_stop_at_last_layers")).to_be_visible(timeout=WAIT)
        expect(page.locator("#setting_samples_format")).to_be_hidden()
        search.fill("")
        expect(page.locator("#setting_show_progress_every_n_steps")).to_be_visible(timeout=WAIT)
        page.context.close()

        chinese = open_settings(browser, srv.url, locale="zh-CN")
        expect(chinese.get_by_text("用户界面", exact=True)).to_be_visible(timeout=WAIT)
        chinese.locator("#settings_search textarea, #settings_search input").first.fill("实时预览")
        expect(chinese.locator("#setting_samples_format")).to_be_hidden(timeout=WAIT)
        expect(chinese.locator("#setting_show_progress_every_n_steps")).to_be_visible()
        chinese.screenshot(path=str(tmp_path / "settings-zh.png"), full_page=True)
        chinese.context.close()
