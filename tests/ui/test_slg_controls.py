"""SD 3.5's Skip Layer Guidance controls: shown for SD 3.5 checkpoints (hidden and off for
the others), read into the job's fields (a bad block list is a message), and set by
pasted parameters (off without the infotext's "Skip layer guidance")."""

from __future__ import annotations

import gradio as gr
import pytest

from tests.ui.fake_models import fake_ctx
from webui.imaging.infotext import parse_infotext
from webui.ui.common import InputError
from webui.ui.paste import fill
from webui.ui.slg_controls import LAYERS, SCALE, START, STOP, slg_fields, slg_shown

CTX = fake_ctx("skip_layer_guidance", {"sd3.5-medium": True, "sd15": False})


def test_shown_for_sd3_only_and_off_when_hidden():
    scale, *rest = slg_shown(CTX, "sd3.5-medium")
    assert scale["visible"] is True and "value" not in scale
    assert all(update["visible"] is True for update in rest)
    for title in ("sd15", "missing", None):
        scale, *rest = slg_shown(CTX, title)
        assert scale["visible"] is False and scale["value"] == 0
        assert all(update["visible"] is False for update in rest)


def test_the_controls_become_the_jobs_fields():
    fields = slg_fields({"slg_scale": 3, "slg_layers": "7, 8,9", "slg_start": 0.01,
                         "slg_stop": 0.15})  # fmt: skip
    assert fields == {"skip_layer_guidance_scale": 3.0, "skip_guidance_layers": (7, 8, 9),
                      "skip_layer_guidance_start": 0.01, "skip_layer_guidance_stop": 0.15}  # fmt: skip
    with pytest.raises(InputError, match="Skip layer guidance layers"):
        slg_fields({"slg_scale": 3, "slg_layers": "7, eight"})


def test_pasted_parameters_set_them_or_turn_them_off():
    controls = {SCALE: gr.Slider(label=SCALE, minimum=0, maximum=10, value=0),
                LAYERS: gr.Textbox(label=LAYERS),
                START: gr.Slider(label=START, minimum=0, maximum=1, value=0.01),
                STOP: gr.Slider(label=STOP, minimum=0, maximum=1, value=0.15)}  # fmt: skip
    info = ('a cat\nSteps: 2, Skip layer guidance: 2.5, Skip layer guidance layers: "7,9", '
            "Skip layer guidance start: 0.02, Skip layer guidance stop: 0.2")  # fmt: skip
    out = fill(parse_infotext(info), controls, "txt2img", [])
    assert float(out[controls[SCALE]]) == 2.5 and out[controls[LAYERS]] == "7,9"
    assert float(out[controls[START]]) == 0.02 and float(out[controls[STOP]]) == 0.2
    without = fill(parse_infotext("a cat\nSteps: 2"), controls, "txt2img", [])
    assert without[controls[SCALE]] == 0
