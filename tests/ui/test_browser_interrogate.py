"""The img2img Interrogate buttons in a real browser (Debian's Chromium, Playwright).

With a tiny ONNX DeepDanbooru model in models/torch_deepdanbooru and a tiny WD14 tagger in
models/interrogate: "Interrogate DeepBooru" and "Interrogate WD14" put the tags into the
prompt box; "Interrogate CLIP" without BLIP/CLIP folders says which folder needs what.
The server is the image tabs' shared one (`image_tabs_server`, tests/ui/conftest.py).
"""

from __future__ import annotations

import pytest
from PIL import Image

pytestmark = pytest.mark.browser


def test_interrogate_buttons_fill_the_prompt(browser, image_tabs_server, tmp_path):
    srv, data = image_tabs_server
    Image.new("RGB", (48, 32), (30, 120, 200)).save(tmp_path / "in.png")
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(srv.url, wait_until="load")
    page.get_by_role("tab", name="img2img", exact=True).first.click()
    page.locator("#img2img_image input[type=file]").set_input_files(str(tmp_path / "in.png"))
    page.locator("#img2img_image img").first.wait_for(state="visible", timeout=90_000)
    prompt = page.locator("#img2img_prompt textarea")

    page.locator("#img2img_deepbooru").click()
    page.wait_for_function(
        "() => document.querySelector('#img2img_prompt textarea').value === 'long hair, solo'",
        timeout=60_000,
    )
    page.locator("#img2img_wd14").click()
    page.wait_for_function(
        "() => document.querySelector('#img2img_prompt textarea').value.startsWith('hatsune')",
        timeout=60_000,
    )
    assert prompt.input_value() == "hatsune miku, 1girl"

    page.locator("#img2img_interrogate").click()  # no BLIP or CLIP folder
    error = page.get_by_text("transformers BLIP model folder", exact=False).first
    error.wait_for(state="visible", timeout=60_000)
    assert str(data / "models" / "interrogate") in error.inner_text()
    assert prompt.input_value() == "hatsune miku, 1girl"  # left as it was
    page.close()
