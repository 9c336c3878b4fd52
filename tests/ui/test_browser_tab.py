"""The Image Browser tab's pieces without a browser: filter parsing with messages naming
the control, pages and details from a real index, the map picture and its click test
(webui/ui/browser_tab.py, webui/ui/browser_map.py)."""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.core.test_image_index import save_png
from webui.core.image_index import ImageIndex
from webui.services.image_browser import ImageBrowser, MapPoint
from webui.ui.browser_map import HEIGHT, MARGIN, WIDTH, draw_map, nearest, place
from webui.ui.browser_tab import Pager, details, parse_filters, show_page
from webui.ui.common import InputError


def test_filters_from_the_controls() -> None:
    f = parse_filters("red cat", "tiny", "Euler a", " 42 ", "512 x 768", "2024-05-01",
                      "2024-05-31", True)  # fmt: skip
    assert (f.words, f.model, f.sampler, f.seed, f.width, f.height) == (
        "red cat", "tiny", "Euler a", 42, 512, 768)  # fmt: skip
    assert f.since == datetime(2024, 5, 1).timestamp()
    assert f.until == datetime(2024, 6, 1).timestamp()  # the whole last day
    assert f.favourites and f.ids is None
    empty = parse_filters("", None, None, "", "", "", "", False)
    assert (empty.seed, empty.width, empty.since, empty.model) == (None, None, None, "")


@pytest.mark.parametrize(
    "index, value, message",
    [(3, "4x", "Seed: a whole number"), (4, "512", "Size: width x height"),
     (5, "31/05/2024", "From date: a date like"), (6, "tomorrow", "To date: a date like")],
)  # fmt: skip
def test_bad_filters_name_the_control(index, value, message) -> None:
    values = ["", "", "", "", "", "", "", False]
    values[index] = value
    with pytest.raises(InputError, match=message):
        parse_filters(*values)


def test_pages_and_details_from_the_index(tmp_path) -> None:
    out = tmp_path / "outputs"
    for n in range(5):
        save_png(out / f"{n}.png", f"picture {n}", n, mtime=1_000 + n)
    index = ImageIndex(tmp_path / "jobs.sqlite3")
    browser = ImageBrowser(index, lambda: [out], tmp_path / "trash", tmp_path / "clip")
    browser.scan()
    pager = Pager(limit=2)
    items, line = show_page(browser, pager)
    assert line == "Images 1-2 of 5" and [c for _, c in items] == ["picture 4", "picture 3"]
    assert items[0][0].size == (64, 64)  # a thumbnail made here
    pager.starts.append(pager.next)
    _, line = show_page(browser, pager)
    assert line == "Images 3-4 of 5"
    picture, shown, raw, label = details(browser, pager.ids[0])
    assert picture.size == (64, 64) and raw.startswith("picture 2\nNegative prompt: ugly")
    assert "picture 2" in shown and label == "Add to favourites"
    browser.set_favourite(pager.ids[0], True)
    assert details(browser, pager.ids[0])[3] == "Remove from favourites"
    with pytest.raises(InputError, match="no image with id"):
        details(browser, 10**6)
    index.close()


def test_a_click_on_the_map_finds_the_nearest_image() -> None:
    points = [MapPoint(1, -1.0, -1.0, 0), MapPoint(2, 1.0, 1.0, 1), MapPoint(3, 0.9, 1.0, 1)]
    dots = place(points)
    assert (dots[0].px, dots[0].py) == (MARGIN, HEIGHT - MARGIN)  # bottom left
    assert (dots[1].px, dots[1].py) == (WIDTH - MARGIN, MARGIN)  # top right: y points up
    assert nearest(dots, WIDTH - 40, 35).id == 2 and nearest(dots, 10, HEIGHT).id == 1
    assert nearest([], 1, 1) is None
    picture = draw_map(dots)
    assert picture.size == (WIDTH, HEIGHT)
    assert picture.getpixel((int(dots[0].px), int(dots[0].py))) != (255, 255, 255)
