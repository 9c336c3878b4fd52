"""In Chromium: PNG Info's send-to and the ↙️ button fill the controls; the UI in 简体中文."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.conftest import ServerThread
from webui.app import create_app
from webui.imaging.infotext import build_infotext, pnginfo_for
from webui.model_manager.registry import HashCache
from webui.settings import parse_flags

pytestmark = pytest.mark.browser


def serve(data_dir, *extra: str) -> ServerThread:
    flags = parse_flags(["--data-dir", str(data_dir), "--no-download-sd-model", *extra])
    return ServerThread(create_app(flags))


def visible(page, label: str, exact: bool = True):
    """The control with this label in the open tab (the other tabs have the same labels)."""
    return page.get_by_label(label, exact=exact).filter(visible=True)


def number(page, label: str) -> str:
    return page.get_by_role(
        "spinbutton", name=f"number input for {label}", exact=True
    ).input_value()


def wait_value(page, label: str, value: str, role: str = "spinbutton") -> None:
    name = f"number input for {label}" if role == "spinbutton" else label
    locator = page.get_by_role(role, name=name, exact=True)
    for _ in range(100):
        if locator.input_value() == value:
            return
        page.wait_for_timeout(100)
    assert locator.input_value() == value, label


def test_send_to_txt2img_fills_every_control(browser, data_dir, tmp_path):
    ckpt = data_dir / "models" / "Stable-diffusion" / "tiny-sd1.safetensors"
    short = HashCache(tmp_path / "hashes.json").sha256(ckpt)[:10]
    text = build_infotext("a castle on a hill", "fog", {
        "Steps": 9, "Sampler": "Euler a", "Schedule type": "Automatic", "CFG scale": 4.5,
        "Seed": 4242, "Size": "128x96", "Model hash": short, "Model": "renamed-model",
        "Clip skip": 3, "Tiling": True, "Sigma churn": 2.5, "NGMS": 3,
        "Version": "v1.10.1"})  # fmt: skip
    source = tmp_path / "from-a1111.png"
    Image.new("RGB", (128, 96), (200, 30, 30)).save(source, pnginfo=pnginfo_for(text))
    with serve(data_dir) as srv:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(srv.url, wait_until="load")
        page.get_by_role("tab", name="PNG Info").click()
        page.locator("#pnginfo_image_source input[type=file]").set_input_files(str(source))
        page.wait_for_function(
            "() => document.querySelector('#pnginfo_html pre')?.innerText.includes('Seed: 4242')",
            timeout=90_000,
        )
        page.locator("#pnginfo_send_params_txt2img").click()
        wait_value(page, "Sampling steps", "9")
        assert visible(page, "Prompt", exact=True).input_value() == "a castle on a hill"
        assert visible(page, "Negative prompt", exact=True).input_value() == "fog"
        assert visible(page, "Seed", exact=True).input_value() == "4242"
        assert (number(page, "Width"), number(page, "Height")) == ("128", "96")
        assert (number(page, "CFG Scale"), number(page, "Clip skip")) == ("4.5", "3")
        assert visible(page, "Sampling method", exact=True).input_value() == "Euler a"
        assert visible(page, "Schedule type", exact=True).input_value() == "Automatic"
        assert page.locator("#txt2img_tiling input").is_checked()
        page.locator("#txt2img_sampler_params").get_by_text("Sampler parameters").click()
        assert page.locator("#txt2img_s_churn input").input_value() == "2.5"
        assert page.locator("#txt2img_s_min_uncond input").input_value() == "3"
        # the checkpoint is found by its hash although the name in the image differs
        assert (
            page.locator("#sd_checkpoint input").input_value() == f"tiny-sd1.safetensors [{short}]"
        )

        # ↙️: an infotext pasted into the prompt box fills the controls
        pasted = build_infotext("a boat", "", {"Steps": 13, "Seed": 99, "Size": "64x64",
                                               "Sampler": "DPM++ 2M"})  # fmt: skip
        visible(page, "Prompt", exact=True).fill(pasted)
        page.locator("#txt2img_paste").click()
        wait_value(page, "Sampling steps", "13")
        assert visible(page, "Prompt", exact=True).input_value() == "a boat"
        assert visible(page, "Seed", exact=True).input_value() == "99"
        assert visible(page, "Negative prompt", exact=True).input_value() == ""
        # made without tiling and with the Settings' sampler parameters: back to those
        assert not page.locator("#txt2img_tiling input").is_checked()
        assert page.locator("#txt2img_s_churn input").input_value() == ""

        # send to img2img: the image goes along, and the img2img tab opens filled
        page.get_by_role("tab", name="PNG Info").click()
        page.locator("#pnginfo_send_params_img2img").click()
        page.locator("#img2img_image img").first.wait_for(state="visible", timeout=90_000)
        wait_value(page, "Sampling steps", "9")
        assert visible(page, "Seed", exact=True).input_value() == "4242"
        page.close()


def tab_titles(page) -> list[str]:
    page.wait_for_function(
        "() => document.documentElement.lang === 'zh-CN' && document.querySelectorAll('#tabs button[role=tab]').length > 3",
        timeout=90_000,
    )
    page.wait_for_timeout(300)
    return [t.inner_text().strip() for t in page.locator("#tabs button[role=tab]").all()]


def test_the_ui_in_chinese(browser, data_dir):
    with serve(data_dir) as srv:  # Auto: the browser's language decides
        context = browser.new_context(locale="zh-CN")
        page = context.new_page()
        page.goto(srv.url, wait_until="load")
        titles = tab_titles(page)
        for chinese in ("文生图", "图生图", "局部重绘", "图片信息", "设置", "扩展"):
            assert chinese in titles, titles
        assert "txt2img" not in titles and "Settings" not in titles
        assert page.locator("#txt2img_prompt textarea").get_attribute("placeholder") == "提示词"
        assert page.get_by_role("button", name="生成", exact=True).count() == 1
        context.close()
        english = browser.new_page(locale="en-US")
        english.goto(srv.url, wait_until="load")
        english.get_by_role("tab", name="txt2img").wait_for(timeout=90_000)
        assert english.get_by_role("button", name="Generate", exact=True).count() == 1
        english.close()
    with serve(data_dir, "--localization", "zh_CN") as srv:  # the flag wins over the browser
        page = browser.new_page(locale="en-US")
        page.goto(srv.url, wait_until="load")
        assert "文生图" in tab_titles(page)
        page.close()
