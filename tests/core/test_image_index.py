"""The image browser's index: incremental scans, filters, keyset paging at 100,000 rows,
favourites and the trash (webui/core/image_index.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from webui.core import image_index as ix
from webui.core.image_index import Filters, ImageIndex
from webui.imaging.infotext import build_infotext, pnginfo_for


def save_png(path: Path, prompt: str, seed: int, model: str = "tiny", sampler: str = "Euler a",
             size: tuple[int, int] = (64, 64), mtime: float | None = None) -> Path:  # fmt: skip
    text = build_infotext(prompt, "ugly", {"Steps": 2, "Sampler": sampler, "Seed": seed,
                                           "Size": f"{size[0]}x{size[1]}", "Model": model})  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (seed % 255, 0, 0)).save(path, pnginfo=pnginfo_for(text))
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    out = tmp_path / "outputs"
    save_png(out / "txt2img-images" / "a.png", "a red cat on a sofa", 1, mtime=1_000)
    save_png(out / "txt2img-images" / "b.png", "a blue dog", 2, model="other", mtime=2_000)
    save_png(out / "img2img-images" / "c.png", "red dog, night", 3, sampler="DPM++ 2M",
             size=(96, 64), mtime=3_000)  # fmt: skip
    (out / "notes.txt").write_text("not an image")
    (out / "broken.png").write_bytes(b"not a png")
    return out


@pytest.fixture
def index(tmp_path: Path):
    db = ImageIndex(tmp_path / "jobs.sqlite3")
    yield db
    db.close()


def counting_reads(monkeypatch) -> list[Path]:
    opened: list[Path] = []
    real = ix.read_image_row

    def spy(path, stat):
        opened.append(Path(path))
        return real(path, stat)

    monkeypatch.setattr(ix, "read_image_row", spy)
    return opened


def test_second_scan_opens_only_new_and_changed_files(index, outputs, monkeypatch) -> None:
    opened = counting_reads(monkeypatch)
    first = index.scan([outputs])
    assert (first.added, first.updated, first.removed) == (3, 0, 0)
    assert [Path(p).name for p in first.failed] == ["broken.png"]
    opened.clear()
    again = index.scan([outputs])
    assert opened == [outputs / "broken.png"]  # the one unreadable file is tried again
    assert (again.added, again.updated, again.unchanged) == (0, 0, 3)

    opened.clear()
    save_png(outputs / "txt2img-images" / "a.png", "a green cat", 1, mtime=5_000)  # changed
    save_png(outputs / "new" / "d.png", "a new owl", 4)
    (outputs / "img2img-images" / "c.png").unlink()
    third = index.scan([outputs])
    assert sorted(p.name for p in opened) == ["a.png", "broken.png", "d.png"]
    assert (third.added, third.updated, third.removed, third.unchanged) == (1, 1, 1, 1)
    assert [i.prompt for i in index.search(Filters(words="cat")).images] == ["a green cat"]
    assert index.search(Filters(words="red")).total == 0  # the old prompt left the FTS index
    assert index.scan([outputs / "new"]).removed == 2  # a folder no longer listed: its rows go
    assert [i.prompt for i in index.search().images] == ["a new owl"]


def test_the_trash_folder_is_not_indexed(index, outputs, tmp_path) -> None:
    trash = outputs / "trash"
    save_png(trash / "old.png", "trashed", 9)
    index.scan([outputs], skip=[trash])
    assert index.search().total == 3


def test_search_filters(index, outputs) -> None:
    index.scan([outputs])

    def names(**kw) -> list[str]:
        return sorted(Path(i.path).name for i in index.search(Filters(**kw)).images)

    assert names(words="red") == ["a.png", "c.png"]
    assert names(words="red dog") == ["c.png"]  # every word
    assert names(words="do*") == ["b.png", "c.png"]  # a prefix
    assert names(words='"cat" OR ( NEAR') == []  # user text is never FTS syntax
    assert names(model="other") == ["b.png"]
    assert names(sampler="DPM++ 2M") == ["c.png"]
    assert names(seed=2) == ["b.png"]
    assert names(width=96, height=64) == ["c.png"]
    assert names(since=1_500, until=3_000) == ["b.png"]
    assert index.values("model") == ["other", "tiny"]
    one = index.search(Filters(seed=3)).images[0]
    assert one.infotext.startswith("red dog, night\nNegative prompt: ugly")
    assert (one.width, one.height, one.negative) == (96, 64, "ugly")


def test_sort_orders_and_favourites(index, outputs) -> None:
    index.scan([outputs])
    by_date = [i.seed for i in index.search(sort="date").images]
    assert by_date == [3, 2, 1]  # newest first
    assert [i.seed for i in index.search(sort="seed", descending=False).images] == [1, 2, 3]
    assert index.search(sort="size").images[0].seed == 3  # the most pixels
    assert [Path(i.path).name for i in index.search(sort="name", descending=False).images] == [
        "c.png",
        "a.png",
        "b.png",
    ]  # fmt: skip  (img2img-images/ sorts before txt2img-images/)
    b = index.search(Filters(seed=2)).images[0]
    assert index.set_favourite(b.id, True)
    assert [i.seed for i in index.search(Filters(favourites=True)).images] == [2]
    assert not index.set_favourite(99_999, True)
    with pytest.raises(ValueError, match="sort must be one of"):
        index.search(sort="colour")


def test_trash_moves_the_file_and_never_deletes_it(index, outputs, tmp_path) -> None:
    index.scan([outputs])
    trash = tmp_path / "trash"
    a = index.search(Filters(seed=1)).images[0]
    moved = index.trash(a.id, trash)
    assert moved == trash / "a.png" and moved.is_file() and not Path(a.path).exists()
    assert index.get(a.id) is None
    save_png(outputs / "txt2img-images" / "a.png", "another a", 7)
    index.scan([outputs])
    again = index.search(Filters(seed=7)).images[0]
    assert index.trash(again.id, trash) == trash / "a-1.png"  # a taken name gets a number
    assert (trash / "a.png").is_file()
    assert index.trash(123_456, trash) is None


ROWS = 100_000


@pytest.fixture(scope="module")
def big_index(tmp_path_factory):
    db = ImageIndex(tmp_path_factory.mktemp("big") / "jobs.sqlite3")
    rows = [(f"/o/{n:06d}.png", float(n), 1000, 64, 64, 4096, f"prompt {n % 7}", "",
             f"m{n % 3}", "Euler", n % 1000) for n in range(ROWS)]  # fmt: skip
    with db._db:
        db._db.executemany(
            "INSERT INTO browser_images (path, mtime, bytes, width, height, pixels, prompt, "
            "negative, model, sampler, seed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    yield db
    db.close()


def vm_steps(db: ImageIndex, sql: str, args: list) -> int:
    """SQLite virtual machine instructions a query takes (counted, not timed)."""
    steps = [0]

    def count() -> int:
        steps[0] += 100
        return 0

    db._db.set_progress_handler(count, 100)
    try:
        db._db.execute(sql, args).fetchall()
    finally:
        db._db.set_progress_handler(None, 0)
    return steps[0]


@pytest.mark.parametrize("sort", ["date", "seed", "size", "name"])
def test_paging_at_100000_rows_uses_an_index(big_index, sort) -> None:
    where, args = ix._where(Filters())
    sql, page_args = ix.page_query(where, args, sort, True, 50, (1, 1))
    plan = " | ".join(big_index.explain(sql, page_args))
    assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, plan
    assert "TEMP B-TREE" not in plan, plan  # no sort of every row for each page


def test_a_deep_page_costs_what_the_first_costs(big_index) -> None:
    first = big_index.search(limit=50)
    assert first.total == ROWS and len(first.images) == 50
    cursor, pages = first.next_cursor, 1
    while pages < 5:
        page = big_index.search(limit=50, cursor=cursor)
        assert page.images[0].mtime == ROWS - 1 - 50 * pages  # no gaps, no repeats
        cursor, pages = page.next_cursor, pages + 1
    where, args = ix._where(Filters())
    start = vm_steps(big_index, *ix.page_query(where, args, "date", True, 50, None))
    deep = vm_steps(big_index, *ix.page_query(where, args, "date", True, 50, (50_000.0, 50_000)))
    deep_seed = vm_steps(big_index, *ix.page_query(where, args, "seed", True, 50, (500, 50_500)))
    assert deep < 3 * start + 2_000 and deep_seed < 3 * start + 2_000, (start, deep, deep_seed)
    # an OFFSET of 99,000 would step over 99,000 rows: far more than this
    offset = vm_steps(big_index, "SELECT id FROM browser_images ORDER BY mtime DESC, id DESC "
                      "LIMIT 50 OFFSET 99000", [])  # fmt: skip
    assert offset > 20 * deep, (offset, deep)


def test_filtered_paging_at_100000_rows(big_index) -> None:
    page = big_index.search(Filters(model="m1", words="prompt 3"), limit=20)
    assert page.total == len([n for n in range(ROWS) if n % 3 == 1 and n % 7 == 3])
    assert all(i.model == "m1" and i.prompt == "prompt 3" for i in page.images)
    last = big_index.search(Filters(model="m1"), limit=20, cursor=(5.0, 5))
    assert [i.mtime for i in last.images] == [4.0, 1.0]
    assert last.next_cursor is None
