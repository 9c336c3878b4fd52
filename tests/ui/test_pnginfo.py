"""PNG Info: infotext read back from PNG, JPEG and WebP; parameters copied into the controls."""

from __future__ import annotations

import gradio as gr
import pytest
from PIL import Image, PngImagePlugin

from tests.conftest import with_tiny_sd1
from webui.context import build_context
from webui.imaging.infotext import build_infotext, parse_infotext
from webui.imaging.store import OutputStore
from webui.settings import parse_flags
from webui.ui.blocks import build_ui
from webui.ui.paste import checkpoint_title, fill, parameter_updates, tab_controls
from webui.ui.pnginfo_tab import describe, read_any_infotext

FIELDS = {
    "Steps": 7, "Sampler": "Euler a", "Schedule type": "Automatic", "CFG scale": 5.5,
    "Seed": 1234, "Size": "128x192", "Model hash": "0123456789", "Model": "tiny-sd1",
    "Clip skip": 2, "Version": "v1.10.1",
}  # fmt: skip
TEXT = build_infotext("a lighthouse, <dusk>: 1.2\nsecond line", "fog, rain", FIELDS)


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_round_trip(tmp_path, fmt):
    image = Image.new("RGB", (64, 48), (10, 120, 200))
    path = OutputStore(tmp_path).save(image, kind="txt2img", seed=1234, infotext=TEXT, fmt=fmt)
    shown, raw = describe(str(path))
    assert raw == TEXT
    assert "a lighthouse, &lt;dusk&gt;: 1.2" in shown and "64x48" in shown
    fields = parse_infotext(raw)
    assert fields["Prompt"] == "a lighthouse, <dusk>: 1.2\nsecond line"
    assert (fields["Steps"], fields["Seed"], fields["CFG scale"], fields["Clip skip"]) == (
        7,
        1234,
        5.5,
        2,
    )


def test_other_tools_and_images_without_parameters(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", TEXT)  # another tool, A1111-style text under another key
    info.add_text("Software", "some editor")
    path = tmp_path / "other.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    with Image.open(path) as im:
        assert read_any_infotext(im) == TEXT
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    shown, raw = describe(str(plain))
    assert raw == "" and "No generation parameters" in shown
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(gr.Error, match="Not an image"):
        describe(str(tmp_path / "bad.png"))


@pytest.fixture(scope="module")
def ui(tmp_path_factory, tiny_files):
    """One UI for the module: the tests only read its controls (fill() changes nothing);
    the one that hashes the checkpoint is the only one that looks at the hash."""
    data_dir = with_tiny_sd1(tmp_path_factory.mktemp("pnginfo-ui"), tiny_files)
    ctx = build_context(parse_flags(["--data-dir", str(data_dir), "--no-download-sd-model"]))
    demo = build_ui(ctx)
    tabs = {b.id: b for b in demo.blocks.values() if isinstance(b, gr.Tab)}
    yield ctx, demo, tabs
    ctx.close()


def test_infotext_fills_every_txt2img_control(ui):
    ctx, demo, tabs = ui
    controls = tab_controls(tabs["txt2img"])
    text = build_infotext("p", "n", {**FIELDS, "Sampler": "DPM++ 2M Karras", "Schedule type": None,
                                     "Steps": 999, "Hires upscale": 1.5, "Hires steps": 3,
                                     "Denoising strength": 0.4})  # fmt: skip
    notes: list[str] = []
    values = {c.label: v for c, v in fill(parse_infotext(text), controls, "txt2img", notes).items()}
    assert values["Prompt"] == "p" and values["Negative prompt"] == "n"
    assert values["Sampling method"] == "DPM++ 2M" and values["Schedule type"] == "Karras"
    assert values["Sampling steps"] == 150  # clamped to the slider
    assert (values["CFG Scale"], values["Seed"], values["Width"], values["Height"]) == (
        5.5,
        1234,
        128,
        192,
    )
    assert values["Clip skip"] == 2
    assert values["Enable hires. fix"] is True
    assert (values["Upscale by"], values["Hires steps"], values["Denoising strength"]) == (
        1.5,
        3,
        0.4,
    )
    assert notes == []
    fill(
        parse_infotext(build_infotext("p", "", {**FIELDS, "Sampler": "Warp"})),
        controls,
        "txt2img",
        notes,
    )
    assert notes == ["Sampling method: Warp is not available"]
    img2img = tab_controls(tabs["img2img"])
    values = fill(parse_infotext(text), img2img, "img2img", [])
    assert {c.label for c in values} >= {"Prompt", "Sampling steps", "Seed", "Denoising strength"}
    assert not {"Upscale by", "Upscaler", "Enable hires. fix"} & {c.label for c in values}


def test_checkpoint_by_hash_or_name(ui):
    ctx, demo, tabs = ui
    (info,) = ctx.models.checkpoints()
    assert info.sha256 is None  # not hashed yet: hashed on need to match the hash
    sha = ctx.models.registry.hashes.sha256(info.path)
    assert (
        checkpoint_title(ctx, {"Model hash": sha[:10], "Model": "renamed"})
        == f"tiny-sd1.safetensors [{sha[:10]}]"
    )
    assert checkpoint_title(ctx, {"Model": "tiny-sd1"}).startswith("tiny-sd1.safetensors")
    assert checkpoint_title(ctx, {"Model hash": "ffffffffff", "Model": "gone"}) is None
    controls = tab_controls(tabs["txt2img"])
    checkpoint = next(
        b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "sd_checkpoint"
    )
    text = build_infotext("p", "", {**FIELDS, "Model hash": sha[:10]})
    updates = parameter_updates(ctx, "txt2img", controls, [controls["Seed"], checkpoint], text)
    assert updates[0] == 1234
    assert updates[1].value == f"tiny-sd1.safetensors [{sha[:10]}]"


def test_variation_seed_fields_fill_the_seed_extras(ui):
    ctx, demo, tabs = ui
    text = build_infotext("p", "", {**FIELDS, "Variation seed": 4242,
                                    "Variation seed strength": 0.35,
                                    "Seed resize from": "320x448"})  # fmt: skip
    for tab in ("txt2img", "img2img", "inpaint"):
        controls = tab_controls(tabs[tab])
        values = {c.label: v for c, v in fill(parse_infotext(text), controls, tab, []).items()}
        assert values["Extra"] is True  # the rows are shown, and used
        assert (values["Variation seed"], values["Variation strength"]) == (4242, 0.35)
        assert (values["Resize seed from width"], values["Resize seed from height"]) == (320, 448)
    plain = fill(parse_infotext(TEXT), tab_controls(tabs["txt2img"]), "txt2img", [])
    assert {c.label: v for c, v in plain.items()}["Extra"] is False


def test_seed_extras_count_only_when_ticked():
    from webui.ui.seed_controls import seed_fields

    values = {"seed": 5, "subseed": 9.0, "seed_extra": True, "subseed_strength": 0.4,
              "seed_resize_from_w": 256, "seed_resize_from_h": 320}  # fmt: skip
    assert seed_fields(values) == {"seed": 5, "subseed": 9, "subseed_strength": 0.4,
                                   "seed_resize_from_w": 256, "seed_resize_from_h": 320}  # fmt: skip
    assert seed_fields({**values, "seed_extra": False}) == {"seed": 5, "subseed": 9}
    assert seed_fields({**values, "subseed": None})["subseed"] == -1
    with pytest.raises(gr.Error, match="Variation seed"):
        seed_fields({**values, "subseed": 1.5})


@pytest.mark.parametrize(
    ("sampler", "schedule"),
    [
        ("DPM++ 3M SDE", "Exponential"),
        ("DPM++ 2S a", "Karras"),
        ("Euler", "KL Optimal"),
        ("DPM++ 2M", "Align Your Steps"),
    ],
)
def test_infotext_fills_the_new_samplers_and_schedules(ui, sampler, schedule):
    _, _, tabs = ui
    controls = tab_controls(tabs["txt2img"])
    text = build_infotext("p", "n", {**FIELDS, "Sampler": sampler, "Schedule type": schedule})
    values = {c.label: v for c, v in fill(parse_infotext(text), controls, "txt2img", []).items()}
    assert (values["Sampling method"], values["Schedule type"]) == (sampler, schedule)


def test_face_restoration_ticks_restore_faces(ui):
    _, _, tabs = ui
    text = build_infotext("p", "", {**FIELDS, "Face restoration": "CodeFormer"})
    for tab in ("txt2img", "img2img", "inpaint"):
        controls = tab_controls(tabs[tab])
        values = {c.label: v for c, v in fill(parse_infotext(text), controls, tab, []).items()}
        assert values["Restore faces"] is True
        plain = fill(parse_infotext(TEXT), controls, tab, [])
        assert {c.label: v for c, v in plain.items()}["Restore faces"] is False


def test_restore_faces_checkbox_reaches_the_params():
    from webui.ui.sampler_controls import SAMPLER_PARAMETERS, sampling_fields

    values = {"tiling": False, "restore_faces": True, **dict.fromkeys(SAMPLER_PARAMETERS)}
    assert sampling_fields(values)["restore_faces"] is True
    assert sampling_fields({**values, "restore_faces": False})["restore_faces"] is False
