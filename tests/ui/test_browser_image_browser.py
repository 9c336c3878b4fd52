"""In Chromium: the Image Browser tab finds, pages, favourites, sends on and trashes
images, and its similarity map opens a cluster on a click."""

from __future__ import annotations

import pytest

from tests.conftest import ServerThread
from tests.core.test_image_index import save_png
from tests.tiny_clip_vision import save_tiny_clip_vision
from webui.app import create_app
from webui.settings import parse_flags

pytestmark = pytest.mark.browser
WAIT = 120_000  # ms: generous, the machine may be busy


def wait_text(page, selector: str, text: str) -> None:
    page.locator(selector).filter(has_text=text).first.wait_for(timeout=WAIT)


def test_browse_search_favourite_send_and_trash(browser, data_dir) -> None:
    out = data_dir / "outputs" / "txt2img-images" / "2024-05-01"
    for n in range(6):
        colour = "red" if n % 2 else "blue"
        save_png(out / f"{n:05d}.png", f"a {colour} house {n}", 100 + n, mtime=1_700_000_000 + n)
    save_tiny_clip_vision(data_dir / "models" / "clip_vision")
    flags = parse_flags(["--data-dir", str(data_dir), "--no-download-sd-model"])
    with ServerThread(create_app(flags)) as srv:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(srv.url, wait_until="load")
        page.get_by_role("tab", name="Image Browser").click()
        wait_text(page, "#browser_page", "Images 1-6 of 6")
        assert page.locator("#browser_status").inner_text().startswith("6 new")

        page.locator("#browser_words textarea, #browser_words input").first.fill("red")
        page.locator("#browser_search").click()
        wait_text(page, "#browser_page", "Images 1-3 of 3")
        page.locator("#browser_gallery .thumbnail-item").first.click()
        wait_text(page, "#browser_details", "a red house 5")
        page.locator("#browser_favourite").click()
        wait_text(page, "#browser_favourite", "Remove from favourites")

        page.locator("#browser_send_params_img2img").click()
        prompt = page.locator("#tab_img2img textarea").first
        page.wait_for_function("() => [...document.querySelectorAll('#tab_img2img textarea')]"
                               ".some(t => t.value === 'a red house 5')", timeout=WAIT)  # fmt: skip
        assert prompt.is_visible()

        page.get_by_role("tab", name="Image Browser").click()
        page.locator("#browser_favourites input").check()
        page.locator("#browser_search").click()
        wait_text(page, "#browser_page", "Images 1-1 of 1")
        page.locator("#browser_gallery .thumbnail-item").first.click()
        wait_text(page, "#browser_details", "a red house 5")
        page.locator("#browser_delete").click()
        wait_text(page, "#browser_status", "Moved to")
        assert (data_dir / "trash" / "00005.png").is_file()
        assert not (out / "00005.png").exists()

        page.locator("#browser_favourites input").uncheck()
        page.locator("#browser_words textarea, #browser_words input").first.fill("")
        page.get_by_text("Similarity map").first.click()
        page.locator("#browser_clip_model input").click()
        page.get_by_role("option", name="tiny-vit").click()
        page.locator("#browser_embed").click()
        wait_text(page, "#browser_map_status", "Queued as job")
        for _ in range(120):  # the embedding job runs on the queue
            page.locator("#browser_show_map").click()
            page.wait_for_timeout(1000)
            if "images in" in page.locator("#browser_map_status").inner_text():
                break
        wait_text(page, "#browser_map_status", "5 images in")
        box = page.locator("#browser_map img").bounding_box()
        page.mouse.click(box["x"] + 5, box["y"] + 5)  # near some cluster: the nearest counts
        page.wait_for_function("() => /Images 1-\\d of [1-4]$/.test("
                               "document.querySelector('#browser_page').innerText.trim())",
                               timeout=WAIT)  # fmt: skip
        page.close()
