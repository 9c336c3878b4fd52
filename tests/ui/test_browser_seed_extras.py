"""The seed row's "Extra" options in Chromium: ticking it shows the variation seed and the
resize-seed sliders, a job uses them (its infotext says so), and reading parameters back
from that infotext ticks "Extra" and fills them again."""

from __future__ import annotations

import pytest

from tests.ui.test_browser_img2img import (
    server,  # noqa: F401 (the fixture)
    wait_for_checkpoint,
)

pytestmark = pytest.mark.browser
WAIT = 120_000


def number(page, label: str):
    """The txt2img tab's (the first) number box of a slider."""
    return page.get_by_role("spinbutton", name=f"number input for {label}", exact=True).first


def set_number(page, label: str, value) -> None:
    box = number(page, label)
    box.fill(str(value))
    box.press("Enter")


def test_variation_seed_from_the_ui_and_back(browser, server):  # noqa: F811
    srv, _ = server
    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    try:
        page.goto(srv.url, wait_until="load")
        wait_for_checkpoint(page)
        assert not page.locator("#txt2img_subseed").is_visible()
        page.locator("#txt2img_subseed_show input").check()
        page.locator("#txt2img_subseed").wait_for(state="visible", timeout=WAIT)
        page.locator("#txt2img_seed_resize_from_w").wait_for(state="visible", timeout=WAIT)
        for label, value in (("Width", 64), ("Height", 64), ("Sampling steps", 2),
                             ("Variation strength", 0.4), ("Resize seed from width", 48),
                             ("Resize seed from height", 80)):  # fmt: skip
            set_number(page, label, value)
        page.get_by_label("Seed", exact=True).first.fill("21")
        page.get_by_label("Variation seed", exact=True).first.fill("77")
        page.locator("#txt2img_prompt textarea").fill("a windmill")
        page.locator("#txt2img_generate").click()
        page.wait_for_function(
            "() => document.querySelector('#txt2img_infotext pre')?.innerText"
            ".includes('Variation seed: 77')",
            timeout=WAIT,
        )
        infotext = page.locator("#txt2img_infotext pre").inner_text()
        assert "Seed: 21," in infotext and "Variation seed strength: 0.4" in infotext
        assert "Seed resize from: 48x80" in infotext

        # untick, reload the page, read the infotext back: Extra ticked, values filled
        page.goto(srv.url, wait_until="load")
        wait_for_checkpoint(page)
        page.locator("#txt2img_prompt textarea").fill(infotext)
        page.locator("#txt2img_paste").click()
        page.locator("#txt2img_subseed").wait_for(state="visible", timeout=WAIT)
        assert page.locator("#txt2img_subseed_show input").is_checked()
        assert page.get_by_label("Variation seed", exact=True).first.input_value() == "77"
        assert number(page, "Variation strength").input_value() == "0.4"
        assert number(page, "Resize seed from width").input_value() == "48"
    finally:
        page.close()
