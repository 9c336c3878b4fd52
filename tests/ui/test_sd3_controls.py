"""The "Shift" slider: shown with the family's default shift when a flow-matching
checkpoint is chosen (SD 3.5, Z-Image: 3, FLUX.1 schnell: 1, dev: 0, its own), hidden and
set to 0 (no shift) for the others; 0 on the slider sends no shift. SD 3.5's CFG Scale,
sampler and schedule come with its family preset. Pasted parameters keep their Shift (0
when the infotext has none)."""

from __future__ import annotations

import gradio as gr

from tests.ui.fake_models import fake_ctx
from webui.core.families.sd3 import SD3
from webui.imaging.infotext import parse_infotext
from webui.ui.paste import fill
from webui.ui.sd3_controls import shift_controls, shift_shown, shift_value

SHIFTS = {"sd3.5-large": 3.0, "z-image": 3.0, "flux1-schnell": 1.0, "flux1-dev": 0.0, "sd15": None}
CTX = fake_ctx("flow_shift", SHIFTS)


def test_a_flow_matching_checkpoint_shows_the_slider_with_its_default():
    for title in ("sd3.5-large", "z-image", "flux1-schnell", "flux1-dev"):
        update = shift_controls(CTX, title)
        assert update["visible"] is True and update["value"] == SHIFTS[title]
    assert dict(SD3.preset) == {"cfg_scale": 3.5, "sampler": "Euler", "schedule": "Simple"}


def test_other_or_unknown_checkpoints_hide_it_at_no_shift():
    for title in ("sd15", "missing", None):
        update = shift_controls(CTX, title)
        assert update["visible"] is False and update["value"] == 0


def test_zero_sends_no_shift():
    assert shift_value(0) is None and shift_value(None) is None
    assert shift_value(2.5) == 2.5


def test_a_checkpoint_set_by_pasted_parameters_only_shows_or_hides_the_slider():
    shown = shift_shown(CTX, "flux1-dev")
    assert shown["visible"] is True and "value" not in shown  # the pasted Shift stays
    hidden = shift_shown(CTX, "sd15")
    assert hidden["visible"] is False and hidden["value"] == 0


def test_pasted_parameters_set_the_shift_or_0_without_one():
    slider = gr.Slider(label="Shift", minimum=0, maximum=30, step=0.05, value=0)
    controls = {"Shift": slider}
    with_shift = parse_infotext("a cat\nSteps: 2, Model: flux1-dev, Shift: 2.5")
    assert float(fill(with_shift, controls, "txt2img", [])[slider]) == 2.5
    without = parse_infotext("a cat\nSteps: 2, Model: flux1-dev")
    assert fill(without, controls, "txt2img", [])[slider] == 0
