"""The ADetailer accordion: an infotext fills both unit tabs, and the tabs' values make
the request the API takes (infotext -> controls -> request -> the same units)."""

from __future__ import annotations

import gradio as gr
import pytest

from tests.tiny_detector import write_tiny_detector
from webui.context import build_context
from webui.core.params_detailer import (
    DetailerUnit,
    infotext_fields,
    ordinal_suffix,
    units_from_args,
)
from webui.imaging.infotext import build_infotext, parse_infotext
from webui.settings import parse_flags
from webui.ui.adetailer_ui import _FIELDS, ENABLE, detailer_request
from webui.ui.blocks import build_ui
from webui.ui.paste import fill, tab_controls

UNITS = (
    DetailerUnit("face.onnx", ad_prompt="a smiling face, detailed", ad_confidence=0.45,
                 ad_inpaint_only_masked=False, ad_mask_merge_invert="Merge"),
    DetailerUnit("hand.onnx", ad_negative_prompt="extra fingers", ad_use_steps=True, ad_steps=12,
                 ad_use_sampler=True, ad_sampler="Euler a", ad_dilate_erode=-8,
                 ad_use_clip_skip=True, ad_clip_skip=2),
)  # fmt: skip


@pytest.fixture(scope="module")
def tabs(tmp_path_factory, tiny_files):
    from tests.conftest import with_tiny_sd1

    data = with_tiny_sd1(tmp_path_factory.mktemp("adetailer-ui"), tiny_files)
    for name in ("face.onnx", "hand.onnx"):
        write_tiny_detector(data / "models" / "adetailer" / name, [(0, 0, 320, 320)])
    ctx = build_context(parse_flags(["--data-dir", str(data), "--no-download-sd-model"]))
    demo = build_ui(ctx)
    yield {b.id: b for b in demo.blocks.values() if isinstance(b, gr.Tab)}
    ctx.close()


@pytest.mark.parametrize("tab", ["txt2img", "img2img", "inpaint"])
def test_infotext_fills_both_units_and_makes_the_same_request(tabs, tab):
    text = build_infotext("p", "n", {"Steps": 20, "Seed": 1, **infotext_fields(UNITS)})
    controls = tab_controls(tabs[tab])
    notes: list[str] = []
    values = {c.label: v for c, v in fill(parse_infotext(text), controls, tab, notes).items()}
    assert notes == []
    assert values[ENABLE] is True
    assert values["ADetailer model"] == "face.onnx" and values["ADetailer model 2nd"] == "hand.onnx"
    assert values["Inpaint only masked"] is False  # "False" in the infotext is off
    assert values["ADetailer steps 2nd"] == 12
    by_name = {"ad_enable": values[ENABLE]}
    for n in range(2):
        for key, (label, _) in _FIELDS.items():
            control = controls[label + ordinal_suffix(n)]
            by_name[f"{key}_{n}"] = values.get(label + ordinal_suffix(n), control.value)
    enabled, skip, units = units_from_args(detailer_request(by_name)["ADetailer"]["args"])
    assert (enabled, skip) == (True, False)
    for got, want in zip(units, UNITS, strict=True):
        assert {k: v for k, v in vars(got).items() if v != getattr(want, k)} == {}


def test_off_sends_nothing():
    assert detailer_request({"ad_enable": False}) == {}
