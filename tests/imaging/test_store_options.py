"""The saving options of the output store (issue 17): JPEG/WebP quality, WebP lossless,
sub-folder patterns, names without a number, grids' folders and formats."""

from __future__ import annotations

import io
import os
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image

from webui.imaging.grid import batch_image_grid, grid_rows
from webui.imaging.infotext import read_infotext_from_image
from webui.imaging.store import OutputStore

WHEN = datetime(2024, 5, 6, 7, 8, 9)
INFOTEXT = "a cat\nSteps: 20, Seed: 42, Size: 64x64"


def _noise() -> Image.Image:
    """A picture that compresses differently at different qualities."""
    return Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3))


def _save(store: OutputStore, image: Image.Image, **kwargs) -> Path:
    return store.save(image, kind="txt2img", seed=42, infotext=INFOTEXT, when=WHEN, **kwargs)


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_quality_sets_the_compression_and_the_infotext_stays(tmp_path: Path, fmt: str) -> None:
    store, image = OutputStore(tmp_path), _noise()
    low = _save(store, image, fmt=fmt, quality=10)
    high = _save(store, image, fmt=fmt, quality=95)
    assert low.stat().st_size * 2 < high.stat().st_size
    for path in (low, high):
        with Image.open(path) as saved:
            assert read_infotext_from_image(saved) == INFOTEXT
    if fmt == "jpg":  # the quantization tables say which quality encoded the file
        with Image.open(low) as saved_low, Image.open(high) as saved_high:
            assert sum(saved_low.quantization[0]) > 5 * sum(saved_high.quantization[0])


def test_store_default_quality_is_used_without_one(tmp_path: Path) -> None:
    image = _noise()
    default = _save(OutputStore(tmp_path / "a", jpeg_quality=10), image, fmt="jpg")
    given = _save(OutputStore(tmp_path / "b"), image, fmt="jpg", quality=10)
    assert default.read_bytes() == given.read_bytes()


def test_webp_lossless_keeps_every_pixel(tmp_path: Path) -> None:
    store, image = OutputStore(tmp_path), _noise()
    lossless = _save(store, image, fmt="webp", lossless=True)
    lossy = _save(store, image, fmt="webp", lossless=False, quality=80)
    with Image.open(lossless) as a, Image.open(lossy) as b:
        assert a.convert("RGB").tobytes() == image.tobytes()
        assert b.convert("RGB").tobytes() != image.tobytes()
        assert read_infotext_from_image(a) == INFOTEXT


def test_folder_patterns(tmp_path: Path) -> None:
    store, image = OutputStore(tmp_path), Image.new("RGB", (8, 8))
    images = tmp_path / "txt2img-images"
    assert _save(store, image).parent == images / "2024-05-06"  # A1111's default: [date]
    assert _save(store, image, folder_pattern="").parent == images  # save_to_dirs off
    values = {"model_name": "sd15", "prompt": "../../etc up"}
    nested = _save(store, image, folder_pattern="[date]/[model_name]-[prompt_words]",
                   pattern_values=values)  # fmt: skip
    assert nested.parent == images / "2024-05-06" / "sd15-etc up"
    hostile = _save(store, image, folder_pattern="../[model_name]/../x",
                    pattern_values={"model_name": "/abs"})  # fmt: skip
    assert hostile.parent == images / "_" / "_abs" / "_" / "x"  # never outside the folder
    grid = store.save_grid(image, kind="img2img", infotext="", when=WHEN, folder_pattern="")
    assert grid == tmp_path / "img2img-grids" / "grid-0000.png"
    grid = store.save_grid(image, kind="img2img", infotext="", when=WHEN,
                           folder_pattern="[seed]", pattern_values={"seed": 7})  # fmt: skip
    assert grid == tmp_path / "img2img-grids" / "7" / "grid-0000.png"


def test_names_without_a_number_never_overwrite(tmp_path: Path) -> None:
    store, image = OutputStore(tmp_path), Image.new("RGB", (8, 8))
    names = [_save(store, image, add_number=False, filename_pattern="[seed]-[steps]",
                   pattern_values={"steps": 20}).name for _ in range(3)]  # fmt: skip
    assert names == ["42-20.png", "42-20-1.png", "42-20-2.png"]
    # a pattern that expands to nothing keeps the number (never a file named ".png"); the
    # number follows the largest leading number in the folder, 42 here, as in A1111
    assert _save(store, image, add_number=False, filename_pattern="[none]").name == "00043.png"


@pytest.mark.parametrize(("count", "batch", "n_rows", "rows"),
                         [(2, 2, -1, 1), (4, 2, -1, 2), (6, 3, -1, 2), (9, 1, -1, 3),
                          (4, 4, 0, 4), (6, 3, 0, 3), (4, 1, 2, 2), (3, 1, 8, 3)])  # fmt: skip
def test_grid_rows_follow_n_rows(count: int, batch: int, n_rows: int, rows: int) -> None:
    assert grid_rows(count, batch, n_rows) == rows
    sheet = batch_image_grid([Image.new("RGB", (10, 20))] * count, batch, n_rows)
    assert sheet.size == (10 * -(-count // rows), 20 * rows)


def test_grid_format_and_quality(tmp_path: Path) -> None:
    store = OutputStore(tmp_path)
    path = store.save_grid(_noise(), kind="txt2img", infotext=INFOTEXT, when=WHEN, fmt="jpg",
                           quality=20)  # fmt: skip
    assert path.name == "grid-0000.jpg"
    with Image.open(io.BytesIO(path.read_bytes())) as saved:
        assert saved.format == "JPEG" and read_infotext_from_image(saved) == INFOTEXT
