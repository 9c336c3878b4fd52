"""The Extra Networks panel and the style editor: in a real browser (Chromium, Playwright),
and its helpers (tags, search, paging) with thousands of files, without one."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.conftest import ServerThread
from tests.tiny_networks import write_a1111_embedding, write_kohya_lora
from tests.ui.test_browser import _set_number
from webui.app import create_app
from webui.model_manager.network_files import FileIndex
from webui.model_manager.tiny import build_tiny_pipeline
from webui.settings import parse_flags
from webui.ui.extra_networks import Card, Thumbnails, render_cards, search, toggle_tag


@pytest.fixture
def server(data_dir):
    models = data_dir / "models"
    for folder in ("Lora", "embeddings"):
        (models / folder).mkdir(parents=True)
    pipe = build_tiny_pipeline("sd1")
    write_kohya_lora(models / "Lora" / "kohya.safetensors", pipe)
    Image.new("RGB", (256, 256), (200, 40, 40)).save(models / "Lora" / "kohya.preview.png")
    (models / "Lora" / "many").mkdir()
    for i in range(60):  # more than one page of cards
        write_kohya_lora(models / "Lora" / "many" / f"extra{i:02d}.safetensors", pipe, rank=1)
    write_a1111_embedding(models / "embeddings" / "myemb.pt")
    (data_dir / "styles.csv").write_text("name,prompt,negative_prompt\nfilm,{prompt} on film,cgi\n")
    flags = parse_flags(["--data-dir", str(data_dir), "--no-download-sd-model"])
    with ServerThread(create_app(flags)) as srv:
        yield srv


@pytest.mark.browser
def test_click_a_lora_card_then_generate(browser, server, data_dir, tmp_path):  # noqa: F811
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(server.url, wait_until="load")
    page.wait_for_function(
        "() => document.querySelector('#sd_checkpoint input')?.value.includes('tiny-sd1')",
        timeout=90_000,
    )
    page.get_by_label("Prompt", exact=True).fill("a lighthouse")
    page.locator("#txt2img_extra_networks").get_by_text("Extra networks").click()
    cards = page.locator("#txt2img_extra_cards .extra-network-card")
    cards.first.wait_for(state="visible", timeout=90_000)
    assert cards.count() == 48  # one page of 61 LoRAs
    assert "Showing 48 of 61" in page.locator("#txt2img_extra_cards").inner_text()
    page.locator("#txt2img_extra_more").click()
    page.wait_for_function(
        "() => document.querySelectorAll('#txt2img_extra_cards .extra-network-card').length == 61"
    )
    search = page.get_by_label("Search", exact=True)
    search.fill("koh")
    page.wait_for_function(
        "() => document.querySelectorAll('#txt2img_extra_cards .extra-network-card').length == 1"
    )
    card = page.locator('#txt2img_extra_cards .extra-network-card[data-name="kohya"]')
    assert card.locator("img").get_attribute("src").startswith("data:image/jpeg;base64,")
    card.click()
    prompt = page.get_by_label("Prompt", exact=True)
    page.wait_for_function(
        "() => document.querySelector('#txt2img_prompt textarea').value.includes('<lora:kohya:1>')",
        timeout=90_000,
    )
    assert prompt.input_value() == "a lighthouse <lora:kohya:1>"
    search.fill("")
    page.locator("#txt2img_extra_kind").get_by_text("Textual Inversion").click()
    page.locator('#txt2img_extra_cards .extra-network-card[data-name="myemb"]').wait_for()
    page.locator('#txt2img_extra_cards .extra-network-card[data-name="myemb"]').click()
    page.wait_for_function(
        "() => document.querySelector('#txt2img_prompt textarea').value.endsWith('myemb')"
    )
    _set_number(page, "Width", 64)
    _set_number(page, "Height", 64)
    _set_number(page, "Sampling steps", 2)
    page.get_by_role("button", name="Generate", exact=True).click()
    page.wait_for_selector("#txt2img_infotext pre", timeout=180_000)
    infotext = page.locator("#txt2img_infotext pre").inner_text()
    assert infotext.startswith("a lighthouse <lora:kohya:1> myemb\n")
    assert 'Lora hashes: "kohya: ' in infotext and 'TI hashes: "myemb: ' in infotext
    page.screenshot(path=str(tmp_path / "extra-networks.png"), full_page=True)
    # an unknown LoRA: the image is made, and the UI says which tag was skipped
    prompt.fill("a lighthouse <lora:nope:1>")
    page.get_by_role("button", name="Generate", exact=True).click()
    warning = page.locator("#txt2img_progress .job-warnings")
    warning.wait_for(timeout=180_000)
    assert "LoRA not found: nope" in warning.inner_text()
    page.wait_for_function(
        "() => document.querySelector('#txt2img_infotext pre')?.innerText.includes('Lora skipped')"
    )
    page.close()


@pytest.mark.browser
def test_save_a_style_from_the_prompt(browser, server, data_dir):  # noqa: F811
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(server.url, wait_until="load")
    page.get_by_label("Prompt", exact=True).fill("a cat, {prompt}")
    page.get_by_label("Negative prompt", exact=True).fill("ugly")
    page.locator("#txt2img_style_editor").get_by_text("Style editor").click()
    page.get_by_role("button", name="Copy prompt to style").click()
    page.wait_for_function(
        "() => document.querySelector('#txt2img_style_prompt textarea').value == 'a cat, {prompt}'"
    )
    name = page.locator("#txt2img_style_name input")
    name.fill("cats")
    name.press("Enter")
    page.get_by_role("button", name="Save style").click()
    page.locator("#txt2img_style_status").get_by_text("Saved style").wait_for(timeout=90_000)
    text = (data_dir / "styles.csv").read_text()
    assert 'cats,"a cat, {prompt}",ugly' in text and "film," in text
    page.close()


def test_toggle_tag_adds_and_removes():
    assert toggle_tag("a cat", "lora", "detail") == "a cat <lora:detail:1>"
    assert toggle_tag("a cat <lora:detail:0.4> x", "lora", "detail") == "a cat x"
    assert toggle_tag("", "embedding", "easyneg") == "easyneg"
    assert toggle_tag("ugly, easyneg", "embedding", "easyneg") == "ugly"
    assert toggle_tag("easyneg2", "embedding", "easyneg") == "easyneg2 easyneg"


def test_thousands_of_files_index_search_and_render_quickly(tmp_path):
    import time

    folder = tmp_path / "Lora"
    for i in range(3000):
        sub = folder / f"set{i % 30:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"lora{i:04d}.safetensors").write_bytes(b"")
        if i % 10 == 0:
            Image.new("RGB", (512, 512), (i % 255, 0, 0)).save(sub / f"lora{i:04d}.preview.png")
    started = time.perf_counter()
    index = FileIndex(folder, (".safetensors",))
    scanned = time.perf_counter() - started
    files = index.list()
    assert len(files) == 3000 and sum(f.preview is not None for f in files) == 300
    cards = [Card("lora", f.name, f.rel, f.preview, f.name) for f in files]
    thumbs = Thumbnails()
    started = time.perf_counter()
    found = search(cards, "set07 lora")
    page = render_cards(found, 48, thumbs)
    first_render = time.perf_counter() - started
    assert len(found) == 100 and page.count('class="extra-network-card"') == 48
    assert "Showing 48 of 100" in page
    started = time.perf_counter()
    render_cards(search(cards, "set07"), 48, thumbs)  # thumbnails cached now
    again = time.perf_counter() - started
    # generous bounds for a loaded 2-core machine; typical: 30 ms, 150 ms, 5 ms
    assert scanned < 5 and first_render < 5 and again < 1, (scanned, first_render, again)
