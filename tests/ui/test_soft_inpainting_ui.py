"""The Inpaint tab's "Soft inpainting" accordion: its controls become the job's settings,
and an infotext fills them back (PNG Info, "Send to inpaint")."""

from __future__ import annotations

import gradio as gr
import pytest

from webui.context import build_context
from webui.core.soft_inpainting import SoftInpainting
from webui.imaging.infotext import build_infotext, parse_infotext
from webui.settings import parse_flags
from webui.ui.blocks import build_ui
from webui.ui.common import InputError
from webui.ui.img2img_tab import _params as img2img_params
from webui.ui.paste import fill, tab_controls
from webui.ui.soft_inpainting_ui import soft_inpainting_params


@pytest.fixture(scope="module")
def inpaint_controls(tmp_path_factory):
    data = tmp_path_factory.mktemp("soft-ui")
    ctx = build_context(parse_flags(["--data-dir", str(data), "--no-download-sd-model"]))
    demo = build_ui(ctx)
    tabs = {b.id: b for b in demo.blocks.values() if isinstance(b, gr.Tab)}
    yield tab_controls(tabs["inpaint"]), tab_controls(tabs["img2img"])
    ctx.close()


def test_the_accordion_has_a1111s_controls_and_defaults(inpaint_controls):
    inpaint, _ = inpaint_controls
    assert inpaint["Soft inpainting"].value is False
    defaults = {label: inpaint[label].value for label in (
        "Schedule bias", "Preservation strength", "Transition contrast boost",
        "Mask influence", "Difference threshold", "Difference contrast")}  # fmt: skip
    assert list(defaults.values()) == [1, 0.5, 4, 0, 0.5, 2]
    assert (inpaint["Transition contrast boost"].minimum, inpaint["Mask influence"].maximum) == (
        1,
        1,
    )


def test_infotext_fills_the_accordion(inpaint_controls):
    inpaint, img2img = inpaint_controls
    settings = SoftInpainting(mask_blend_power=2.5, composite_difference_contrast=6)
    text = build_infotext("p", "", {"Steps": 4, "Seed": 1, **settings.infotext_fields()})
    values = {c.label: v for c, v in fill(parse_infotext(text), inpaint, "inpaint", []).items()}
    assert values["Soft inpainting"] is True
    assert (values["Schedule bias"], values["Difference contrast"]) == (2.5, 6)
    assert values["Preservation strength"] == 0.5
    plain = build_infotext("p", "", {"Steps": 4, "Seed": 1})
    values = {c.label: v for c, v in fill(parse_infotext(plain), inpaint, "inpaint", []).items()}
    assert values["Soft inpainting"] is False
    values = {c.label: v for c, v in fill(parse_infotext(text), img2img, "img2img", []).items()}
    assert "Soft inpainting" not in values  # img2img has it for a batch with masks only


def test_controls_to_settings():
    names = ("mask_blend_power", "mask_blend_scale", "inpaint_detail_preservation",
             "composite_mask_influence", "composite_difference_threshold",
             "composite_difference_contrast")  # fmt: skip
    values = {f"soft_{n}": v for n, v in zip(names, (2, 1, 8, 0.5, 1, 3), strict=True)}
    assert soft_inpainting_params({"soft_enabled": False, **values}) is None
    assert soft_inpainting_params({"soft_enabled": True, **values}) == SoftInpainting(
        2, 1, 8, 0.5, 1, 3
    )
    with pytest.raises(InputError, match="Transition contrast boost"):
        soft_inpainting_params(
            {"soft_enabled": True, **values, "soft_inpaint_detail_preservation": 0}
        )


def test_img2img_tab_soft_inpainting_is_for_a_batch_with_masks(tmp_path):
    names = ("mask_blend_power", "mask_blend_scale", "inpaint_detail_preservation",
             "composite_mask_influence", "composite_difference_threshold",
             "composite_difference_contrast")  # fmt: skip
    soft = {"soft_enabled": True, **{f"soft_{n}": 1 for n in names}}

    class Ctx:
        class flags:  # noqa: N801
            server_folders_allowed = True

    with pytest.raises(InputError, match="Inpaint tab"):
        img2img_params(Ctx, {"source_tab": 0, **soft})
    batch = {"source_tab": 1, "input_dir": str(tmp_path), "output_dir": "", **soft}
    with pytest.raises(InputError, match="mask directory"):
        img2img_params(Ctx, {**batch, "mask_dir": ""})
