"""Small habits A1111 users have (issue 17), in Chromium: Ctrl+Enter generates, Escape
interrupts, Ctrl+Up/Down change the weight of prompt words, "Generate forever" from
Generate's right-click menu, the notification sound, the quick-settings bar on top
(bound to the options, the Settings tab and the tabs follow it) and ui-config.json's
defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import ServerThread, with_tiny_sd1
from tests.ui.test_browser_img2img import set_number, wait_for_checkpoint
from webui.app import create_app
from webui.settings import parse_flags

pytestmark = pytest.mark.browser
WAIT = 120_000  # ms: the machine may be busy
CLIP_SKIP = "#quick_CLIP_stop_at_last_layers"
UI_CONFIG = {  # small, fast jobs; a bad value and an unknown key are skipped
    "txt2img/Sampling steps/value": 1,
    "txt2img/Width/value": 64,
    "txt2img/Height/value": 64,
    "txt2img/CFG Scale/value": "seven",
    "txt2img/No such control/value": 3,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_files):
    data = with_tiny_sd1(tmp_path_factory.mktemp("browser-habits"), tiny_files)
    (data / "ui-config.json").write_text(json.dumps(UI_CONFIG), encoding="utf-8")
    flags = parse_flags(["--data-dir", str(data), "--no-download-sd-model"])
    with ServerThread(create_app(flags)) as srv:
        yield srv, data


def open_page(browser, url: str) -> Page:  # noqa: F811
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(url, wait_until="load")
    wait_for_checkpoint(page)
    return page


def config(data: Path) -> dict:
    """config.json as stored ({} before the server has written one)."""
    path = data / "config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def saved(data: Path) -> int:
    return len(list((data / "outputs" / "txt2img-images").glob("*/*.png")))


def number(panel, label: str) -> str:
    return panel.get_by_role("spinbutton", name=f"number input for {label}").input_value()


def running(page: Page) -> int:
    return page.evaluate("() => window.webuiHabits.running('txt2img')")


def test_ctrl_up_down_change_weights(browser, server):  # noqa: F811
    srv, _ = server
    page = open_page(browser, srv.url)
    try:
        box = page.locator("#txt2img_prompt textarea")

        def keys(text: str, start: int, end: int, *presses: str) -> str:
            box.fill(text)
            box.evaluate("(b, r) => b.setSelectionRange(r[0], r[1])", [start, end])
            for key in presses:
                box.press(key)
            return box.input_value()

        up, down = "Control+ArrowUp", "Control+ArrowDown"
        assert keys("a cat on a mat", 3, 3, up) == "a (cat:1.1) on a mat"  # the word at the caret
        assert keys("a cat on a mat", 3, 3, up, up) == "a (cat:1.2) on a mat"
        assert keys("a cat on a mat", 3, 3, up, down) == "a cat on a mat"  # 1.0: no brackets
        assert keys("a cat on a mat", 3, 3, down) == "a (cat:0.9) on a mat"
        assert keys("a cat on a mat", 6, 14, up) == "a cat (on a mat:1.1)"  # the selection
        assert keys("(red hair:1.3), sky", 6, 6, down) == "(red hair:1.2), sky"  # its group
        assert keys("x <lora:foo:0.8>", 9, 9, up) == "x <lora:foo:0.85>"  # extra network: 0.05
        neg = page.locator("#txt2img_neg_prompt textarea")  # the negative prompt too
        neg.fill("blurry")
        neg.evaluate("b => b.setSelectionRange(2, 2)")
        neg.press(up)
        assert neg.input_value() == "(blurry:1.1)"

        # Gradio has the edited text: Ctrl+Enter generates with it (ui-config.json: 1 step,
        # 64x64; its bad CFG value was skipped)
        panel = page.locator("#tab_txt2img")
        assert (number(panel, "Sampling steps"), number(panel, "CFG Scale")) == ("1", "7")
        keys("a lighthouse", 4, 4, up)
        box.press("Control+Enter")
        page.wait_for_function(
            "() => document.querySelector('#txt2img_infotext pre')?.innerText.startsWith('a (lighthouse:1.1)\\n')",
            timeout=WAIT,
        )
        infotext = page.locator("#txt2img_infotext pre").inner_text()
        assert "Negative prompt: (blurry:1.1)\n" in infotext and "Size: 64x64" in infotext
    finally:
        page.close()


@pytest.mark.usefixtures("slow_steps")
def test_escape_interrupts_the_running_job(browser, server):  # noqa: F811
    srv, _ = server
    page = open_page(browser, srv.url)
    try:
        panel = page.locator("#tab_txt2img")
        set_number(panel, "Sampling steps", 150)
        set_number(panel, "Batch count", 20)
        page.locator("#txt2img_prompt textarea").fill("a long night")
        page.keyboard.press("Escape")  # nothing runs: nothing happens
        page.locator("#txt2img_generate").click()
        page.wait_for_function(
            "() => /Step \\d+\\/150/.test(document.querySelector('#txt2img_progress')?.innerText)",
            timeout=WAIT,
        )
        page.keyboard.press("Escape")
        expect(page.locator("#txt2img_progress")).to_contain_text("Interrupted", timeout=WAIT)
        assert running(page) == 0
    finally:
        page.close()


def test_generate_forever_until_cancelled(browser, server):  # noqa: F811
    srv, data = server
    page = open_page(browser, srv.url)
    try:
        page.locator("#txt2img_prompt textarea").fill("again and again")
        before = saved(data)
        page.locator("#txt2img_generate").click(button="right")
        menu = page.locator("#habits_menu")
        expect(menu.get_by_role("menuitem", name="Cancel generate forever")).to_be_disabled()
        menu.get_by_role("menuitem", name="Generate forever", exact=True).click()
        expect(menu).to_have_count(0)  # the menu closes
        # each job starts when the one before has ended: two saved, a third under way
        for _ in range(WAIT // 250):
            if saved(data) >= before + 2:
                break
            page.wait_for_timeout(250)
        assert saved(data) >= before + 2
        page.locator("#txt2img_generate").click(button="right")
        page.get_by_role("menuitem", name="Cancel generate forever").click()
        page.wait_for_function("() => window.webuiHabits.running('txt2img') === 0", timeout=WAIT)
        after = saved(data)
        page.wait_for_timeout(3000)  # nothing more is submitted
        assert saved(data) == after and running(page) == 0
        assert page.locator("#txt2img_generate.generate-forever").count() == 0
    finally:
        page.close()


def test_quick_settings_bar_applies_options(browser, server):  # noqa: F811
    srv, data = server
    page = open_page(browser, srv.url)
    try:
        quick = page.locator(f"{CLIP_SKIP} input[type=number]")
        expect(quick).to_have_value("1", timeout=WAIT)
        quick.fill("2")  # the tiny text encoder has 2 layers: 2 runs
        quick.press("Enter")
        for _ in range(WAIT // 250):
            if config(data).get("CLIP_stop_at_last_layers") == 2:
                break
            page.wait_for_timeout(250)
        assert config(data)["CLIP_stop_at_last_layers"] == 2
        clip = page.locator("#tab_txt2img").get_by_role(
            "spinbutton", name="number input for Clip skip"
        )
        expect(clip).to_have_value("2", timeout=WAIT)  # the tab's own control follows

        page.get_by_role("tab", name="Settings").click()
        setting = page.get_by_role(
            "spinbutton", name="number input for Clip skip (CLIP_stop_at_last_layers)"
        )
        expect(setting).to_have_value("2", timeout=WAIT)
        setting.fill("1")  # and the other way round: Settings' Apply redraws the bar
        setting.press("Enter")
        page.get_by_role("button", name="Apply settings").click()
        expect(page.locator("#settings_result")).to_contain_text(
            "1 settings changed: CLIP_stop_at_last_layers.", timeout=WAIT
        )
        expect(quick).to_have_value("1", timeout=WAIT)
        assert config(data)["CLIP_stop_at_last_layers"] == 1

        # another page loads what is stored
        other = open_page(browser, srv.url)
        expect(other.locator(f"{CLIP_SKIP} input[type=number]")).to_have_value("1", timeout=WAIT)
        other.close()
        page.get_by_role("tab", name="txt2img").click()
        page.screenshot(path=str(data / "quicksettings.png"), full_page=True)
    finally:
        page.close()


def test_a_sound_when_a_long_enough_job_ends(browser, server):  # noqa: F811
    srv, _ = server
    page = open_page(browser, srv.url)
    try:
        page.get_by_role("tab", name="Settings").click()
        sound = page.get_by_label(
            "Play a sound when a job of this page finishes (notification_audio)"
        )
        expect(sound).not_to_be_checked(timeout=WAIT)  # off by default
        sound.check()
        minimum = page.get_by_label(
            "Only for jobs that took at least this many seconds (notification_min_seconds)"
        )
        minimum.fill("0")
        page.get_by_role("button", name="Apply settings").click()
        expect(page.locator("#settings_result")).to_contain_text("2 settings changed", timeout=WAIT)
        page.wait_for_function(
            "() => window.webuiHabits.options().notification_audio === true", timeout=WAIT
        )
        assert page.evaluate("() => window.webuiHabits.beeps") is None
        page.get_by_role("tab", name="txt2img").click()
        page.locator("#txt2img_prompt textarea").fill("a bell")
        page.locator("#txt2img_generate").click()
        page.wait_for_function("() => window.webuiHabits.beeps === 1", timeout=WAIT)
    finally:
        page.close()


def test_settings_defaults_view_and_apply(browser, server):  # noqa: F811
    srv, data = server
    page = open_page(browser, srv.url)
    try:
        page.get_by_role("tab", name="Settings").click()
        result = page.locator("#ui_defaults_result")
        page.locator("#ui_defaults_view").click()
        expect(result).to_have_text("No changes.", timeout=WAIT)  # a fresh page: none
        page.get_by_role("tab", name="txt2img").click()
        set_number(page.locator("#tab_txt2img"), "Sampling steps", 2)
        page.get_by_role("tab", name="Settings").click()
        page.locator("#ui_defaults_view").click()
        expect(result).to_contain_text("txt2img/Sampling steps/value", timeout=WAIT)
        assert "txt2img/Width/value" not in result.inner_text()
        page.locator("#ui_defaults_apply").click()
        expect(result).to_contain_text("1 defaults written to ui-config.json", timeout=WAIT)
        stored = json.loads((data / "ui-config.json").read_text(encoding="utf-8"))
        assert stored == {**UI_CONFIG, "txt2img/Sampling steps/value": 2}  # the rest kept
        page.locator("#ui_defaults_view").click()
        expect(result).to_have_text("No changes.", timeout=WAIT)
    finally:
        page.close()
