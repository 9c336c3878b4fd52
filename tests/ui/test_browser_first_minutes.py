"""In Chromium, what a new user meets first (issue 19): results that download as the saved
file and show whole in every gallery, "Send to img2img" carrying the parameters, icon
buttons with names, input errors without tracebacks, and the 简体中文 UI throughout."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ServerThread
from tests.ui.test_browser import _set_number
from tests.ui.test_browser_pnginfo_i18n import number, visible, wait_value
from webui.app import create_app
from webui.imaging.infotext import read_infotext_from_image
from webui.settings import parse_flags

pytestmark = pytest.mark.browser
WAIT = 120_000


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_files) -> Iterator[tuple[ServerThread, object, Path]]:
    data = tmp_path_factory.mktemp("first-minutes")
    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    shutil.copy(tiny_files["sd1"], folder / "tiny-sd1.safetensors")
    flags = parse_flags(["--data-dir", str(data), "--no-download-sd-model", "--api"])
    app = create_app(flags)
    with ServerThread(app) as srv:
        yield srv, app.state.ctx, data


def open_page(browser, url: str, width: int = 1400, height: int = 1000, locale: str = "en-US"):
    context = browser.new_context(viewport={"width": width, "height": height}, locale=locale)
    page = context.new_page()
    page.goto(url, wait_until="load")
    page.wait_for_function(
        "() => document.querySelector('#sd_checkpoint input')?.value.includes('tiny-sd1')",
        timeout=WAIT,
    )
    return context, page


def generate(page, prompt: str, seed: int, steps: int = 2, size: int = 64) -> str:
    """Generate in txt2img; the infotext shown."""
    page.get_by_label("Prompt", exact=True).first.fill(prompt)
    _set_number(page, "Width", size)
    _set_number(page, "Height", size)
    _set_number(page, "Sampling steps", steps)
    page.get_by_label("Seed", exact=True).first.fill(str(seed))
    page.get_by_role("button", name="Generate", exact=True).first.click()
    page.wait_for_function(
        f"() => document.querySelector('#txt2img_infotext pre')?.innerText.includes('Seed: {seed},')",
        timeout=WAIT,
    )
    return page.locator("#txt2img_infotext pre").inner_text()


def saved_file(data: Path, seed: int) -> Path:
    found = list((data / "outputs" / "txt2img-images").glob(f"*/*-{seed}.*"))
    assert len(found) == 1, found
    return found[0]


def test_results_download_as_saved_and_show_whole(browser, server):
    srv, ctx, data = server
    context, page = open_page(browser, srv.url)
    try:
        generate(page, "a red barn", seed=31)
        image = page.locator("#txt2img_gallery img").first
        fetched = page.request.get(image.get_attribute("src")).body()
        assert fetched == saved_file(data, 31).read_bytes()  # the PNG on disk, with parameters
        _assert_whole(page, "#txt2img_gallery")
        page.locator("#my_job_gallery img").first.wait_for(state="visible", timeout=WAIT)
        _assert_whole(page, "#my_job_gallery")
        page.set_viewport_size({"width": 700, "height": 600})  # a small window too
        page.wait_for_timeout(500)
        _assert_whole(page, "#txt2img_gallery")
        _assert_whole(page, "#my_job_gallery")
        assert "Drop Media Here" not in page.locator("#txt2img_gallery").inner_text()

        ctx.options.set("samples_format", "jpg")  # a JPEG comes back as the JPEG saved
        page.set_viewport_size({"width": 1400, "height": 1000})
        generate(page, "a blue barn", seed=32)
        src = page.locator("#txt2img_gallery img").first.get_attribute("src")
        assert src.endswith(".jpg")
        download = data / "download.jpg"
        download.write_bytes(page.request.get(src).body())
        assert download.read_bytes() == saved_file(data, 32).read_bytes()
        with Image.open(download) as opened:
            assert read_infotext_from_image(opened).startswith("a blue barn\n")
    finally:
        ctx.options.set("samples_format", "png")
        context.close()


def _assert_whole(page, gallery: str) -> None:
    """Every image of the gallery lies inside it and inside the window, uncropped."""
    page.locator(f"{gallery} img").first.scroll_into_view_if_needed()
    box = page.locator(gallery).bounding_box()
    viewport = page.viewport_size
    for img in page.locator(f"{gallery} img").all():
        shown = img.bounding_box()
        assert img.evaluate("e => getComputedStyle(e).objectFit") == "contain"
        assert shown["height"] <= viewport["height"], (gallery, shown, viewport)
        assert (
            box["y"] - 1 <= shown["y"]
            and shown["y"] + shown["height"] <= box["y"] + box["height"] + 1
        ), (gallery, box, shown)


def test_send_to_img2img_carries_the_parameters(browser, server):
    srv, _, _ = server
    context, page = open_page(browser, srv.url)
    try:
        page.get_by_label("Sampling method", exact=True).first.click()
        page.get_by_role("option", name="Euler a", exact=True).click()
        _set_number(page, "CFG Scale", 5)
        generate(page, "a green barn", seed=33, steps=3, size=72)
        page.locator("#txt2img_send_to_img2img").click()
        page.locator("#img2img_image img").first.wait_for(state="visible", timeout=WAIT)
        wait_value(page, "Sampling steps", "3")
        assert visible(page, "Prompt").input_value() == "a green barn"
        assert visible(page, "Seed").input_value() == "33"
        assert (number(page, "Width"), number(page, "Height")) == ("72", "72")
        assert number(page, "CFG Scale") == "5"
        assert visible(page, "Sampling method").input_value() == "Euler a"
    finally:
        context.close()


def test_icon_buttons_have_names_and_glyphs(browser, server):
    srv, _, _ = server
    context, page = open_page(browser, srv.url)
    try:
        for elem_id, name in (
            ("refresh_checkpoints", "Refresh the list"),
            ("txt2img_random_seed", "Random seed (-1)"),
            ("txt2img_reuse_seed", "Reuse the seed of the last image"),
            ("txt2img_paste", "Read generation parameters"),
        ):
            button = page.locator(f"#{elem_id}")
            assert name in button.get_attribute("aria-label"), elem_id
            assert button.get_attribute("title") == button.get_attribute("aria-label")
            glyph = button.evaluate(
                "e => { const s = getComputedStyle(e, '::before');"
                " return [parseFloat(s.width), s.maskImage || s.webkitMaskImage]; }"
            )
            assert glyph[0] >= 12 and "svg" in glyph[1], (elem_id, glyph)  # drawn, no emoji font
        page.get_by_role("tab", name="img2img", exact=True).click()
        other = page.locator("#img2img_random_seed")
        other.wait_for(timeout=WAIT)
        assert other.get_attribute("aria-label") == "Random seed (-1)"
    finally:
        context.close()


def test_an_input_error_shows_a_message_and_logs_no_traceback(browser, server, capfd):
    srv, _, _ = server
    context, page = open_page(browser, srv.url)
    try:
        capfd.readouterr()
        page.get_by_role("tab", name="img2img", exact=True).click()
        page.locator("#img2img_generate").click()
        page.get_by_text("Upload an image for img2img first").first.wait_for(timeout=WAIT)
        page.wait_for_timeout(500)
        out, err = capfd.readouterr()
        assert "Traceback" not in out + err
    finally:
        context.close()


def test_the_chinese_ui_leaves_no_english_behind(browser, server):
    srv, _, _ = server
    context, page = open_page(browser, srv.url, locale="zh-CN")
    try:
        page.wait_for_function("() => document.documentElement.lang === 'zh-CN'", timeout=WAIT)
        page.wait_for_timeout(500)
        assert page.locator("#txt2img_vae input").input_value() == "自动"
        assert page.locator("#txt2img_script input").input_value() == "无"
        assert page.get_by_role("spinbutton", name="宽度（数字输入）").count() == 1
        assert page.locator("#txt2img_send_to_extras").inner_text() == "发送到放大"
        footer = page.locator("#footer").inner_text()
        assert "版本" in footer and "注意力" in footer and "attention" not in footer
        refresh = page.locator("#refresh_checkpoints")
        assert refresh.get_attribute("aria-label") == "刷新列表"
        page.get_by_role("tab", name="局部重绘").click()
        page.get_by_text("上传图像").first.wait_for(timeout=WAIT)  # the editor's own hint
        assert page.get_by_text("select the draw tool to start").count() == 0
        # the value sent to the server stays the English choice: a job still runs
        page.get_by_role("tab", name="文生图").click()
        page.locator("#txt2img_prompt textarea").fill("一座灯塔")
        for label, value in (("宽度", 64), ("高度", 64), ("迭代步数", 2)):
            box = page.get_by_role("spinbutton", name=f"{label}（数字输入）", exact=True).first
            box.fill(str(value))
            box.press("Enter")
        page.get_by_role("button", name="生成", exact=True).click()
        page.wait_for_function(
            "() => document.querySelector('#txt2img_infotext pre')?.innerText.includes('Steps: 2')",
            timeout=WAIT,
        )
    finally:
        context.close()
