"""The three generation tabs are built by one builder (issue 11): img2img and Inpaint have
what txt2img has (styles, SD VAE, extra networks, reuse seed, read parameters) and their
own inputs. In Chromium."""

from __future__ import annotations

import pytest

from tests.ui.test_browser_img2img import (
    noise_file,
    open_tab,
    server,  # noqa: F401 (the fixture)
    set_number,
    wait_for_checkpoint,
)
from webui.imaging.infotext import build_infotext

pytestmark = pytest.mark.browser
WAIT = 120_000


@pytest.mark.parametrize("tab,name", [("img2img", "img2img"), ("inpaint", "Inpaint")])
def test_image_tabs_have_what_txt2img_has(browser, server, tab, name):  # noqa: F811
    srv, _ = server
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    try:
        page.goto(srv.url, wait_until="load")
        wait_for_checkpoint(page)
        open_tab(page, name)
        for part in ("styles", "vae", "extra_networks", "reuse_seed", "random_seed", "paste"):
            page.locator(f"#{tab}_{part}").wait_for(state="visible", timeout=WAIT)
        assert page.locator(f"#{tab}_vae input").input_value() == "Automatic"
        page.locator(f"#{tab}_extra_networks").click()  # the cards panel opens
        page.locator(f"#{tab}_extra_cards").wait_for(state="visible", timeout=WAIT)

        # read parameters: an infotext pasted into this tab's prompt box fills its controls
        text = build_infotext("a quiet bay", "rain", {"Steps": 7, "Seed": 1234, "CFG scale": 4,
                                                      "Size": "96x80", "Sampler": "Euler a"})  # fmt: skip
        prompt = page.locator(f"#{tab}_prompt textarea")
        prompt.fill(text)
        page.locator(f"#{tab}_paste").click()
        panel = page.locator(f"#tab_{tab}")
        page.wait_for_function(
            f"() => document.querySelector('#{tab}_prompt textarea').value === 'a quiet bay'",
            timeout=WAIT,
        )
        assert page.locator(f"#{tab}_neg_prompt textarea").input_value() == "rain"
        assert panel.get_by_label("Seed", exact=True).input_value() == "1234"
        steps = panel.get_by_role("spinbutton", name="number input for Sampling steps")
        assert steps.input_value() == "7"
    finally:
        page.close()


def test_img2img_reuses_the_seed_of_its_last_image(browser, server, tmp_path):  # noqa: F811
    srv, _ = server
    noise_file(tmp_path / "init.png", 64, 64, seed=3)
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    try:
        page.goto(srv.url, wait_until="load")
        wait_for_checkpoint(page)
        open_tab(page, "img2img")
        page.locator("#img2img_image input[type=file]").set_input_files(str(tmp_path / "init.png"))
        page.locator("#img2img_image img").first.wait_for(state="visible", timeout=WAIT)
        panel = page.locator("#tab_img2img")
        for label, value in (("Width", 64), ("Height", 64), ("Sampling steps", 2)):
            set_number(panel, label, value)
        page.locator("#img2img_prompt textarea").fill("a harbour")
        page.locator("#img2img_generate").click()
        page.wait_for_function(
            "() => /Seed: \\d+/.test(document.querySelector('#img2img_infotext pre')?.innerText)",
            timeout=WAIT,
        )
        infotext = page.locator("#img2img_infotext pre").inner_text()
        seed = infotext.split("Seed: ", 1)[1].split(",", 1)[0]
        assert panel.get_by_label("Seed", exact=True).input_value() == "-1"
        page.locator("#img2img_reuse_seed").click()
        page.wait_for_function(
            f"() => [...document.querySelectorAll('#tab_img2img input')].some(i => i.value === '{seed}')",
            timeout=WAIT,
        )
    finally:
        page.close()
