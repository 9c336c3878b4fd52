"""A batch in the browser (issue 17): the grid is shown first, Save and Zip write into
outputs/saved and offer the files for download. In Chromium."""

from __future__ import annotations

import csv
import zipfile

import pytest

from tests.ui.test_browser import _set_number, server  # noqa: F401 (the fixture)

pytestmark = pytest.mark.browser
WAIT = 180_000


def test_save_and_zip_a_batch(browser, server, data_dir):  # noqa: F811
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    try:
        page.goto(server.url, wait_until="load")
        page.wait_for_function(
            "() => document.querySelector('#sd_checkpoint input')?.value.includes('tiny-sd1')",
            timeout=WAIT,
        )
        page.get_by_label("Prompt", exact=True).fill("two boats")
        for label, value in (("Width", 64), ("Height", 64), ("Sampling steps", 2),
                             ("Batch size", 2)):  # fmt: skip
            _set_number(page, label, value)
        page.get_by_label("Seed", exact=True).fill("11")
        page.locator("#txt2img_generate").click()
        page.wait_for_function(
            "() => document.querySelectorAll('#txt2img_gallery .thumbnail-item img').length === 3"
            " || document.querySelectorAll('#txt2img_gallery img').length >= 3",
            timeout=WAIT,
        )
        page.wait_for_selector("#txt2img_infotext pre", timeout=WAIT)
        grids = list((data_dir / "outputs" / "txt2img-grids").glob("*/grid-0000.png"))
        assert len(grids) == 1

        page.locator("#txt2img_save").click()  # nothing selected: all three
        saved = data_dir / "outputs" / "saved"
        page.locator("#txt2img_download").wait_for(state="visible", timeout=WAIT)
        page.wait_for_function(
            "() => document.querySelectorAll('#txt2img_download a[download]').length === 3",
            timeout=WAIT,
        )
        names = sorted(p.name for p in saved.glob("*.png"))
        assert names == ["00000-11.png", "00001-11.png", "00002-12.png"]
        with (saved / "log.csv").open(encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        assert [r[1] for r in rows[1:]] == ["11", "11", "12"] and rows[1][0] == "two boats"

        page.locator("#txt2img_zip").click()
        page.wait_for_function(
            "() => [...document.querySelectorAll('#txt2img_download a[download]')]"
            ".some(a => a.download.endsWith('.zip'))",
            timeout=WAIT,
        )
        (archive,) = saved.glob("images_*.zip")
        with zipfile.ZipFile(archive) as zipped:
            assert sorted(zipped.namelist()) == ["00000-11.png", "00001-12.png", "grid-0000.png"]
    finally:
        page.close()
