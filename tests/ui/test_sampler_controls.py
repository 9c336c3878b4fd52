"""Tiling and sampler parameters in the generation tabs: the controls exist in every tab,
their values become params, and pasting an infotext restores (or empties) them."""

from __future__ import annotations

import gradio as gr
import pytest

from webui.context import build_context
from webui.imaging.infotext import build_infotext, parse_infotext
from webui.settings import parse_flags
from webui.ui.blocks import build_ui
from webui.ui.common import InputError
from webui.ui.paste import fill, parameter_outputs, tab_controls
from webui.ui.sampler_controls import sampling_fields

LABELS = ("Tiling", "Eta", "Sigma churn", "Sigma tmin", "Sigma tmax", "Sigma noise",
          "Negative Guidance minimum sigma")  # fmt: skip
BASE = {"Steps": 4, "Sampler": "Euler", "CFG scale": 7, "Seed": 5, "Size": "64x64"}


@pytest.fixture(scope="module")
def tabs(tmp_path_factory, tiny_files):
    import shutil

    data = tmp_path_factory.mktemp("sampler-ui")
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    shutil.copy(tiny_files["sd1"], data / "models" / "Stable-diffusion" / "tiny-sd1.safetensors")
    ctx = build_context(parse_flags(["--data-dir", str(data), "--no-download-sd-model"]))
    demo = build_ui(ctx)
    yield {b.id: b for b in demo.blocks.values() if isinstance(b, gr.Tab)}
    ctx.close()


@pytest.mark.parametrize("tab", ["txt2img", "img2img", "inpaint"])
def test_paste_restores_tiling_and_sampler_parameters(tabs, tab):
    controls = tab_controls(tabs[tab])
    assert set(LABELS) <= set(controls)
    assert {controls[label] for label in LABELS} <= set(parameter_outputs(controls))
    fields = {**BASE, "Tiling": True, "Sigma churn": 2.5, "Sigma tmin": 0.2, "Sigma tmax": 8,
              "Sigma noise": 0.9, "NGMS": 3.5, "Eta DDIM": 0.4}  # fmt: skip
    text = build_infotext("a wall", "", fields)
    notes: list[str] = []
    values = {c.label: v for c, v in fill(parse_infotext(text), controls, tab, notes).items()}
    assert notes == []
    assert values["Tiling"] is True
    assert (values["Eta"], values["Sigma churn"], values["Sigma tmin"]) == (0.4, 2.5, 0.2)
    assert (values["Sigma tmax"], values["Sigma noise"]) == (8, 0.9)
    assert values["Negative Guidance minimum sigma"] == 3.5
    # an infotext without them: tiling off, every parameter back to "the option's value"
    plain = {c.label: v for c, v in fill(parse_infotext(build_infotext("a wall", "", BASE)),
                                         controls, tab, []).items()}  # fmt: skip
    assert plain["Tiling"] is False
    assert all(plain[label] is None for label in LABELS[1:])
    ancestral = fill(parse_infotext(build_infotext("x", "", {**BASE, "Eta": 0.7})), controls,
                     tab, [])  # fmt: skip
    assert ancestral[controls["Eta"]] == 0.7


def test_control_values_become_params_fields():
    values = {"tiling": True, "restore_faces": True, "eta": None, "s_churn": 1.5, "s_tmin": "",
              "s_tmax": 0, "s_noise": 1, "s_min_uncond": 2.0}  # fmt: skip
    assert sampling_fields(values) == {
        "tiling": True, "restore_faces": True, "eta": None, "s_churn": 1.5, "s_tmin": None,
        "s_tmax": 0.0, "s_noise": 1.0, "s_min_uncond": 2.0,
    }  # fmt: skip
    with pytest.raises(InputError, match="Sigma churn"):
        sampling_fields({**values, "s_churn": "lots"})
