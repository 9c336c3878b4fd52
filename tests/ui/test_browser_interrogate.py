"""The img2img Interrogate buttons in a real browser (Debian's Chromium, Playwright).

With a tiny ONNX DeepDanbooru model in models/torch_deepdanbooru and a tiny WD14 tagger in
models/interrogate: "Interrogate DeepBooru" and "Interrogate WD14" put the tags into the
prompt box; "Interrogate CLIP" without BLIP/CLIP folders says which folder needs what.
"""

from __future__ import annotations

import pytest
from PIL import Image

from tests.conftest import ServerThread
from tests.tiny_interrogate import save_tiny_deepbooru, save_tiny_wd14
from tests.ui.test_browser import browser  # noqa: F401 (the fixture)
from webui.app import create_app
from webui.model_manager.interrogate_files import CHARACTER, GENERAL
from webui.settings import parse_flags

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("browser-interrogate")
    save_tiny_deepbooru(data / "models" / "torch_deepdanbooru",
                        [("long_hair", 0.9), ("solo", 0.6), ("night", 0.1)])  # fmt: skip
    save_tiny_wd14(data / "models" / "interrogate" / "wd-tiny",
                   [("1girl", GENERAL, 0.8), ("hatsune_miku", CHARACTER, 0.9)])  # fmt: skip
    flags = parse_flags(["--data-dir", str(data), "--no-download-sd-model"])
    with ServerThread(create_app(flags)) as srv:
        yield srv, data


def test_interrogate_buttons_fill_the_prompt(browser, server, tmp_path):  # noqa: F811
    srv, data = server
    Image.new("RGB", (48, 32), (30, 120, 200)).save(tmp_path / "in.png")
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(srv.url, wait_until="load")
    page.get_by_role("tab", name="img2img", exact=True).first.click()
    page.locator("#img2img_image input[type=file]").set_input_files(str(tmp_path / "in.png"))
    page.locator("#img2img_image img").first.wait_for(state="visible", timeout=30_000)
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
