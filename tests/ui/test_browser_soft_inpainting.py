"""Soft inpainting in a real browser: tick the accordion's checkbox in the Inpaint tab,
paint a mask, generate; the result's infotext has A1111's soft inpainting fields."""

from __future__ import annotations

import pytest

from tests.ui.test_browser_img2img import noise_file, server, set_number, upload_to_editor

pytestmark = pytest.mark.browser
__all__ = ["server"]


def test_soft_inpainting_from_the_inpaint_tab(browser, server, tmp_path):  # noqa: F811
    srv, _ = server
    noise_file(tmp_path / "in.png", 64, 64, seed=2)
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(srv.url, wait_until="load")
    upload_to_editor(page, tmp_path / "in.png")
    canvas = page.locator("#inpaint_editor canvas").first
    page.locator("#inpaint_editor button[aria-label='Brush']").click()
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 30, cy)
    page.mouse.down()
    page.mouse.move(cx + 30, cy, steps=6)
    page.mouse.up()
    panel = page.locator("#tab_inpaint")
    page.locator("#soft_inpainting").get_by_text("Soft inpainting").first.click()
    page.locator("#soft_inpainting_enabled input[type=checkbox]").check()
    set_number(panel, "Schedule bias", 2)
    set_number(panel, "Width", 64)
    set_number(panel, "Height", 64)
    set_number(panel, "Sampling steps", 2)
    panel.get_by_label("Seed", exact=True).fill("6")
    page.locator("#inpaint_prompt textarea").fill("a soft door")
    page.locator("#inpaint_generate").click()
    page.locator("#inpaint_gallery img").first.wait_for(state="visible", timeout=180_000)
    page.wait_for_selector("#inpaint_infotext pre", timeout=60_000)
    infotext = page.locator("#inpaint_infotext pre").inner_text()
    assert "Soft inpainting enabled: True" in infotext, infotext
    assert "Soft inpainting schedule bias: 2" in infotext
    assert "Soft inpainting preservation strength: 0.5" in infotext
    page.close()
