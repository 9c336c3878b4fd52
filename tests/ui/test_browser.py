"""The UI in a real browser: Debian's Chromium driven by Playwright, against 127.0.0.1."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import ServerThread
from webui.app import create_app
from webui.settings import parse_flags

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.browser


@pytest.fixture
def server(data_dir):
    flags = parse_flags(["--data-dir", str(data_dir), "--no-download-sd-model"])
    with ServerThread(create_app(flags)) as srv:
        yield srv
    srv.server.should_exit = True


def test_generate_in_the_browser(browser, server, tmp_path, data_dir):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server.url, wait_until="load")
    page.get_by_label("Prompt", exact=True).fill("a lighthouse at dusk")
    page.get_by_label("Negative prompt", exact=True).fill("fog")
    _set_number(page, "Width", 64)
    _set_number(page, "Height", 64)
    _set_number(page, "Sampling steps", 2)
    page.get_by_label("Seed", exact=True).fill("7")
    page.locator("#txt2img_tiling input").check()  # Tiling and NGMS reach the job
    page.locator("#txt2img_sampler_params").get_by_text("Sampler parameters").click()
    page.locator("#txt2img_s_min_uncond input").fill("3")
    # the checkpoint list is filled when the page loads
    page.wait_for_function(
        "() => document.querySelector('#sd_checkpoint input')?.value.includes('tiny-sd1')",
        timeout=90_000,
    )
    page.get_by_role("button", name="Generate", exact=True).click()
    gallery_image = page.locator("#txt2img_gallery img").first
    gallery_image.wait_for(state="visible", timeout=180_000)
    page.wait_for_selector("#txt2img_infotext pre", timeout=60_000)
    infotext = page.locator("#txt2img_infotext pre").inner_text()
    assert infotext.startswith("a lighthouse at dusk\nNegative prompt: fog\nSteps: 2,")
    assert "Seed: 7," in infotext and "Size: 64x64" in infotext
    assert "Tiling: True" in infotext and "NGMS: 3" in infotext
    page.screenshot(path=str(tmp_path / "txt2img.png"), full_page=True)
    saved = list((data_dir / "outputs" / "txt2img-images").glob("*/*.png"))
    assert [p.name for p in saved] == ["00000-7.png"]
    page.close()


def test_no_checkpoint_notice(browser, tmp_path, tiny_files):
    flags = parse_flags(["--data-dir", str(tmp_path), "--no-download-sd-model"])
    with ServerThread(create_app(flags)) as srv:
        page = browser.new_page()
        page.goto(srv.url, wait_until="load")
        notice = page.locator("#no_checkpoint")
        notice.wait_for(state="visible", timeout=90_000)
        assert "No checkpoint found" in notice.inner_text()
        # dropping a file in and pressing refresh fills the list
        folder = tmp_path / "models" / "Stable-diffusion"
        shutil.copy(tiny_files["sd1"], folder / "fresh.safetensors")
        page.locator("#refresh_checkpoints").click()
        page.wait_for_function(
            "() => document.querySelector('#sd_checkpoint input')?.value.includes('fresh')",
            timeout=90_000,
        )
        page.close()


def _set_number(page, label: str, value: int) -> None:
    """A Gradio slider is a range input and a number box, both named after the label."""
    assert page.get_by_role("slider", name=label).count() == 1
    box = page.get_by_role("spinbutton", name=f"number input for {label}", exact=True)
    box.fill(str(value))
    box.press("Enter")
