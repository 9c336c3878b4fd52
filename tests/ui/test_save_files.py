"""The Save and Zip buttons under a result gallery (issue 17): what they write, where,
and that they only take the page's own results (server-side state, never a path)."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from PIL import Image

from webui.core.processing import GeneratedImage
from webui.imaging.infotext import parse_infotext, read_infotext_from_image
from webui.imaging.store import OutputStore
from webui.options import Options
from webui.ui.common import InputError
from webui.ui.save_files import LOG_FIELDS, save_images, zip_images

TEXT = ("a red fox\nNegative prompt: blurry\nSteps: 4, Sampler: Euler a, CFG scale: 6.5, "
        "Seed: {seed}, Size: 32x32, Model hash: 0123456789, Model: tiny")  # fmt: skip


@pytest.fixture
def ctx(tmp_path: Path) -> SimpleNamespace:
    outputs = tmp_path / "outputs"
    return SimpleNamespace(options=Options(), flags=SimpleNamespace(outputs_dir=outputs),
                           store=OutputStore(outputs))  # fmt: skip


@pytest.fixture
def shown(ctx) -> list[GeneratedImage]:
    """What a finished batch of two shows: the unsaved grid, then two saved images."""
    images = []
    for seed, colour in ((7, "red"), (8, "blue")):
        image = Image.new("RGB", (32, 32), colour)
        path = ctx.store.save(image, kind="txt2img", seed=seed, infotext=TEXT.format(seed=seed))
        images.append(GeneratedImage(image, seed, TEXT.format(seed=seed), str(path)))
    grid = GeneratedImage(Image.new("RGB", (64, 32), "green"), 7, images[0].infotext, grid=True)
    return [grid, *images]


def _log(ctx) -> list[list[str]]:
    with (ctx.flags.outputs_dir / "saved" / "log.csv").open(encoding="utf-8") as handle:
        return list(csv.reader(handle))


def test_save_the_selected_image_with_its_infotext_and_a_log_row(ctx, shown) -> None:
    (path,) = save_images(ctx, shown, 2)
    assert path == ctx.flags.outputs_dir / "saved" / "00000-8.png"
    with Image.open(path) as saved:
        assert read_infotext_from_image(saved) == shown[2].infotext
        assert saved.convert("RGB").tobytes() == shown[2].image.tobytes()
    header, row = _log(ctx)
    assert tuple(header) == LOG_FIELDS
    assert row == ["a red fox", "8", "32", "32", "Euler a", "6.5", "4", "00000-8.png",
                   "blurry", "tiny"]  # fmt: skip


def test_save_without_a_selection_saves_every_shown_image(ctx, shown) -> None:
    ctx.options.update({"samples_format": "jpg", "samples_filename_pattern": "[seed]-[steps]",
                        "jpeg_quality": 90})  # fmt: skip
    paths = save_images(ctx, shown, None)
    assert [p.name for p in paths] == ["00000-7-4.jpg", "00001-7-4.jpg", "00002-8-4.jpg"]
    with Image.open(paths[0]) as grid:
        assert grid.size == (64, 32) and parse_infotext(read_infotext_from_image(grid))["Seed"] == 7
    assert [r[7] for r in _log(ctx)[1:]] == [p.name for p in paths]
    save_images(ctx, shown, 1)  # the log grows, its header stays single
    assert len(_log(ctx)) == 5 and _log(ctx)[4][7] == "00003-7-4.jpg"


def test_save_goes_to_outdir_save(ctx, shown, tmp_path) -> None:
    ctx.options.set("outdir_save", str(tmp_path / "mine"))
    (path,) = save_images(ctx, shown, 1)
    assert path.parent == tmp_path / "mine" and (tmp_path / "mine" / "log.csv").is_file()


def test_zip_holds_every_shown_image(ctx, shown) -> None:
    target = zip_images(ctx, shown)
    assert target.parent == ctx.flags.outputs_dir / "saved"
    assert target.name.startswith("images_") and target.suffix == ".zip"
    with zipfile.ZipFile(target) as archive:
        names = archive.namelist()
        assert names == ["00000-7.png", "00000-7-1.png", "00001-8.png"]
        # saved images: their files as saved; the unsaved grid: a PNG with its infotext
        assert archive.read("00000-7-1.png") == Path(shown[1].path).read_bytes()
        assert archive.read("00001-8.png") == Path(shown[2].path).read_bytes()
        with Image.open(io.BytesIO(archive.read("00000-7.png"))) as grid:
            assert grid.size == (64, 32)
            assert read_infotext_from_image(grid) == shown[0].infotext
    assert zip_images(ctx, shown) != target  # a second zip never overwrites the first


def test_nothing_shown_is_a_message(ctx) -> None:
    with pytest.raises(InputError, match="Nothing to save"):
        save_images(ctx, [], None)
    with pytest.raises(InputError, match="Nothing to zip"):
        zip_images(ctx, [])


def test_the_buttons_take_only_server_side_state(data_dir) -> None:
    """Save and Zip read the page's result list (gr.State), never the gallery's value
    (which the browser sends and could point anywhere)."""
    from webui.context import build_context
    from webui.settings import parse_flags
    from webui.ui.blocks import build_ui

    ctx = build_context(parse_flags(["--data-dir", str(data_dir), "--no-download-sd-model"]))
    try:
        demo = build_ui(ctx)
        wanted = {f"{tab}_{name}" for tab in ("txt2img", "img2img", "inpaint", "extras")
                  for name in ("save", "zip")}  # fmt: skip
        buttons = {b._id: b.elem_id for b in demo.blocks.values()
                   if isinstance(b, gr.Button) and b.elem_id in wanted}  # fmt: skip
        assert set(buttons.values()) == wanted
        seen = 0
        for dep in demo.config["dependencies"]:
            if any(target[0] in buttons for target in dep["targets"]):
                inputs = [demo.blocks[i] for i in dep["inputs"]]
                assert inputs and all(isinstance(c, gr.State) for c in inputs), dep
                seen += 1
        assert seen == 8
    finally:
        ctx.close()
