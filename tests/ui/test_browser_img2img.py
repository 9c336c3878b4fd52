"""The img2img, Inpaint and Upscale tabs in a real browser (Debian's Chromium, Playwright).

Upload an image into the inpaint editor, paint a mask stroke with the mouse, generate and
see the result (the corners, far from the stroke, keep their pixels); upscale an image in
the Upscale tab with a tiny ESRGAN from models/ESRGAN; a non-image upload gives a clear
error and saves nothing; "Send to img2img" carries a result over.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import TimeoutError as PlaywrightTimeout

pytestmark = pytest.mark.browser


@pytest.fixture
def server(image_tabs_server):
    """The image tabs' server, shared with the other image-tab modules (tests/ui/conftest.py)."""
    return image_tabs_server


def noise_file(path: Path, width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.RandomState(seed)
    pixels = rng.randint(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(path)
    return pixels.astype(int)


def set_number(panel, label: str, value) -> None:
    box = panel.get_by_role("spinbutton", name=f"number input for {label}", exact=True)
    box.fill(str(value))
    box.press("Enter")


def upload_to_editor(page, path: Path) -> None:
    """Open the Inpaint tab, upload into the editor and wait until it shows the image: it
    zooms in on a small image (> 100 %). Gradio's editor throws away an upload made before
    its canvas is set up (a page error, and the editor stays empty for good), so the upload
    waits for the zoom read-out that the set-up draws, and the page is reloaded if the
    editor still did not take the image."""
    zoom = """(more) => [...document.querySelectorAll('#inpaint_editor *')].some(e =>
        e.children.length === 0 && /^\\d+%$/.test(e.textContent.trim())
        && parseInt(e.textContent) > more)"""
    for attempt in range(3):
        if attempt:
            page.reload(wait_until="load")
        wait_for_checkpoint(page)
        open_tab(page, "Inpaint")
        page.wait_for_function(zoom, arg=0, timeout=90_000)
        page.locator("#inpaint_editor input[type=file]").set_input_files(str(path))
        try:
            page.wait_for_function(zoom, arg=100, timeout=15_000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError("the inpaint editor did not take the uploaded image")


def wait_for_checkpoint(page) -> None:
    page.wait_for_function(
        "() => document.querySelector('#sd_checkpoint input')?.value.includes('tiny-sd1')",
        timeout=120_000,  # a page load can take over 30 s on a busy 2-core machine
    )


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def test_inpaint_with_a_drawn_mask(browser, server, tmp_path):  # noqa: F811
    srv, data = server
    original = noise_file(tmp_path / "in.png", 64, 64, seed=1)
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(srv.url, wait_until="load")
    upload_to_editor(page, tmp_path / "in.png")
    canvas = page.locator("#inpaint_editor canvas").first
    page.locator("#inpaint_editor button[aria-label='Brush']").click()
    page.locator("#inpaint_editor button[aria-label='Brush Size']").click()
    page.locator("#inpaint_editor input[type=range]").fill("4")  # image pixels
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 40, cy)
    page.mouse.down()
    for step in range(1, 9):
        page.mouse.move(cx - 40 + step * 10, cy, steps=2)
    page.mouse.up()
    panel = page.locator("#tab_inpaint")
    page.locator("#inpaint_prompt textarea").fill("a red door")
    set_number(panel, "Width", 64)
    set_number(panel, "Height", 64)
    set_number(panel, "Sampling steps", 2)
    set_number(panel, "Mask blur", 0)
    set_number(panel, "Denoising strength", 1)
    panel.get_by_label("Seed", exact=True).fill("5")
    page.locator("#inpaint_generate").click()
    page.locator("#inpaint_gallery img").first.wait_for(state="visible", timeout=180_000)
    page.wait_for_selector("#inpaint_infotext pre", timeout=60_000)
    infotext = page.locator("#inpaint_infotext pre").inner_text()
    assert infotext.startswith("a red door\nSteps: 2,")
    assert "Denoising strength: 1" in infotext and "Seed: 5," in infotext
    page.screenshot(path=str(tmp_path / "inpaint.png"), full_page=True)
    folder = data / "outputs" / "img2img-images" / dt.date.today().isoformat()
    (saved,) = folder.glob("*-5.png")
    with Image.open(saved) as im:
        result = np.asarray(im.convert("RGB")).astype(int)
    diff = np.abs(result - original).max(axis=2)
    assert diff[:20, :].max() <= 1 and diff[-20:, :].max() <= 1  # far from the stroke: kept
    assert (diff[28:36, 24:40] > 1).mean() > 0.5  # along the stroke: redrawn

    # the result goes over to img2img with its prompt
    page.locator("#inpaint_send_to_img2img").click()
    page.locator("#img2img_image img").first.wait_for(state="visible", timeout=90_000)
    assert page.locator("#img2img_prompt textarea").input_value() == "a red door"
    page.close()


def test_upscale_tab_and_a_bad_upload(browser, server, tmp_path):  # noqa: F811
    srv, data = server
    noise_file(tmp_path / "small.png", 24, 16, seed=2)
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(srv.url, wait_until="load")
    open_tab(page, "Upscale")
    page.locator("#extras_image input[type=file]").set_input_files(str(tmp_path / "small.png"))
    page.locator("#extras_image img").first.wait_for(state="visible", timeout=90_000)
    upscaler = page.locator("#extras_upscaler_1 input")
    upscaler.fill("4x-tiny")
    page.get_by_role("option", name="4x-tiny").click(timeout=90_000)  # picked, not typed
    for _ in range(120):  # the choice reaches the input (slow on a busy machine)
        if upscaler.input_value() == "4x-tiny":
            break
        page.wait_for_timeout(250)
    assert upscaler.input_value() == "4x-tiny"
    set_number(page.locator("#tab_extras"), "Resize", 2)
    page.locator("#extras_generate").click()
    page.locator("#extras_gallery img").first.wait_for(state="visible", timeout=120_000)
    page.wait_for_selector("#extras_infotext pre", timeout=90_000)
    infotext = page.locator("#extras_infotext pre").inner_text()
    assert "Postprocess upscale by: 2" in infotext and "Postprocess upscaler: 4x-tiny" in infotext
    (saved,) = (data / "outputs" / "extras-images").glob("*/*.png")
    with Image.open(saved) as im:
        assert im.size == (48, 32)

    # a text file in "Batch Process": a clear error, nothing saved
    (tmp_path / "notes.txt").write_text("not an image")
    page.get_by_role("tab", name="Batch Process", exact=True).click()
    page.locator("#extras_files input[type=file]").set_input_files(str(tmp_path / "notes.txt"))
    page.wait_for_timeout(1000)
    page.locator("#extras_generate").click()
    error = page.get_by_text("not an image", exact=False).first
    error.wait_for(state="visible", timeout=90_000)
    assert "notes.txt" in error.inner_text()
    assert len(list((data / "outputs" / "extras-images").glob("*/*.png"))) == 1
    page.close()
