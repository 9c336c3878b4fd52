"""The Refiner accordion and the Hires checkpoint of the txt2img tab: params and paste."""

from __future__ import annotations

import gradio as gr
import pytest

from webui.context import build_context
from webui.imaging.infotext import build_infotext
from webui.settings import parse_flags
from webui.ui.blocks import build_ui
from webui.ui.paste import parameter_outputs, parameter_updates, tab_controls
from webui.ui.refiner_controls import hires_checkpoint, refiner_fields


@pytest.fixture
def ui(data_dir):
    ctx = build_context(parse_flags(["--data-dir", str(data_dir), "--no-download-sd-model"]))
    demo = build_ui(ctx)
    tabs = {b.id: b for b in demo.blocks.values() if isinstance(b, gr.Tab)}
    yield ctx, tabs
    ctx.close()


def test_values_become_params_fields():
    assert refiner_fields({"refiner_enable": False, "refiner_checkpoint": "x"}) == {}
    on = {"refiner_enable": True, "refiner_checkpoint": "xl.safetensors", "refiner_switch_at": 0.6}
    assert refiner_fields(on) == {"refiner_checkpoint": "xl.safetensors", "refiner_switch_at": 0.6}
    with pytest.raises(ValueError, match="choose a checkpoint"):
        refiner_fields({**on, "refiner_checkpoint": None})
    assert hires_checkpoint({"hr_checkpoint": "Use same checkpoint"}) is None
    assert hires_checkpoint({"hr_checkpoint": "b.safetensors"}) == "b.safetensors"


def test_infotext_fills_the_refiner_and_hires_checkpoint(ui):
    ctx, tabs = ui
    controls = tab_controls(tabs["txt2img"])
    assert {"Enable refiner", "Checkpoint", "Switch at", "Hires checkpoint"} <= controls.keys()
    outputs = parameter_outputs(controls)
    fields = {"Steps": 4, "Seed": 1, "Refiner": "tiny-sd1 [0123456789]",
              "Refiner switch at": 0.6, "Hires checkpoint": "tiny-sd1 [0123456789]",
              "Hires upscale": 2}  # fmt: skip
    updates = parameter_updates(ctx, "txt2img", controls, outputs, build_infotext("p", "", fields))
    values = {c.label: u for c, u in zip(outputs, updates, strict=True) if u is not gr.skip()}
    title = ctx.models.resolve("tiny-sd1").title
    assert values["Enable refiner"] is True and values["Switch at"] == 0.6
    assert values["Checkpoint"] == title and values["Hires checkpoint"] == title
    updates = parameter_updates(ctx, "txt2img", controls, outputs, build_infotext("p", "", {}))
    values = {c.label: u for c, u in zip(outputs, updates, strict=True)}
    assert values["Enable refiner"] is False
