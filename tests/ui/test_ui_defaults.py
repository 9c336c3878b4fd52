"""ui-config.json (A1111's UI defaults): read at start, bad values logged and skipped,
"View changes" / "Apply" of Settings > Defaults (issue 17)."""

from __future__ import annotations

import json
import logging

import gradio as gr
import pytest

from webui.ui.image_common import Named
from webui.ui.ui_defaults import (
    UiDefaults,
    changes,
    changes_table,
    checked_value,
    read_ui_config,
    shown_value,
    tab_controls,
    valid_defaults,
    write_changes,
)


@pytest.fixture
def tabs() -> dict[str, Named]:
    with gr.Blocks():
        named = Named()
        named.add("prompt", gr.Textbox(label="Prompt"))
        named.add("steps", gr.Slider(label="Sampling steps", minimum=1, maximum=150, step=1,
                                     value=20))  # fmt: skip
        named.add("sampler", gr.Dropdown(label="Sampling method", choices=["Euler a", "DPM++ 2M"],
                                         value="DPM++ 2M"))  # fmt: skip
        named.add("seed", gr.Number(label="Seed", value=-1, precision=0, minimum=-1))
        named.add("resize", gr.Radio(label="Resize mode", choices=["Just resize", "Crop and resize"],
                                     value="Just resize", type="index"))  # fmt: skip
        named.add("styles", gr.Dropdown(label="Styles", choices=["a", "b"], multiselect=True))
        named.add("tiling", gr.Checkbox(label="Tiling", value=False))
        named.add("clip_skip", gr.Slider(label="Clip skip", minimum=1, maximum=12, value=1))
        named.add("vae", gr.Dropdown(label="SD VAE", choices=["Automatic"], value="Automatic"))
        named.add("state", gr.State(0))
        named.add("random_seed", gr.Button("x"))
    return {"txt2img": named}


def test_controls_are_named_by_tab_and_label_without_the_options(tabs) -> None:
    keys = set(tab_controls(tabs))
    # clip skip and SD VAE follow the quick-settings bar; states and buttons are no controls
    assert keys == {
        "txt2img/Prompt/value", "txt2img/Sampling steps/value", "txt2img/Sampling method/value",
        "txt2img/Seed/value", "txt2img/Resize mode/value", "txt2img/Styles/value",
        "txt2img/Tiling/value",
    }  # fmt: skip


def test_valid_values_are_taken_and_bad_ones_logged_and_skipped(tabs, caplog) -> None:
    controls = tab_controls(tabs)
    data = {
        "txt2img/Sampling steps/value": 30,
        "txt2img/Sampling method/value": "Euler a",
        "txt2img/Seed/value": 1234.0,  # a whole float is a whole number
        "txt2img/Resize mode/value": "Crop and resize",
        "txt2img/Styles/value": ["b"],
        "txt2img/Tiling/value": True,
        "txt2img/Prompt/value": "a castle",
        "txt2img/Sampling steps/minimum": 1,  # other A1111 keys: not values, left alone
        # refused:
        "txt2img/Batch count/value": 2,  # no such control
        "img2img/Sampling steps/value": 20,  # no such tab
        "txt2img/Width/value": 512,
    }
    bad = {
        "txt2img/Sampling steps/value": [500, "30", True, None],
        "txt2img/Sampling method/value": ["Heun", 3],
        "txt2img/Seed/value": [1.5, -2],
        "txt2img/Resize mode/value": [0, "Fill"],
        "txt2img/Styles/value": ["a", ["c"]],
        "txt2img/Tiling/value": ["true", 1],
        "txt2img/Prompt/value": [None, 5],
    }
    with caplog.at_level(logging.INFO, logger="webui.ui.ui_defaults"):
        assert valid_defaults(data, controls) == {
            "txt2img/Sampling steps/value": 30, "txt2img/Sampling method/value": "Euler a",
            "txt2img/Seed/value": 1234, "txt2img/Resize mode/value": "Crop and resize",
            "txt2img/Styles/value": ["b"], "txt2img/Tiling/value": True,
            "txt2img/Prompt/value": "a castle",
        }  # fmt: skip
    assert "'txt2img/Batch count/value' is no control" in caplog.text
    for key, values in bad.items():
        for value in values:
            with caplog.at_level(logging.WARNING, logger="webui.ui.ui_defaults"):
                caplog.clear()
                assert valid_defaults({key: value}, controls) == {}, (key, value)
            assert key in caplog.text and "skipped" in caplog.text


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"text"', "\xff\xfe"])
def test_an_unreadable_file_is_ignored(tmp_path, caplog, text) -> None:
    path = tmp_path / "ui-config.json"
    path.write_text(text, encoding="latin-1")
    with caplog.at_level(logging.WARNING):
        assert read_ui_config(path) == {}
    assert "built-in defaults" in caplog.text
    assert read_ui_config(tmp_path / "missing.json") == {}


def test_view_and_apply_changes_write_only_what_differs(tabs, tmp_path) -> None:
    controls = tab_controls(tabs)
    path = tmp_path / "ui-config.json"
    path.write_text(json.dumps({"txt2img/Sampling steps/minimum": 1, "other/x/value": 5}))
    defaults = UiDefaults(path, controls, {k: shown_value(c, c.value) for k, c in controls.items()})
    # what the page sends: "" for the empty prompt (its default is None), an index for the
    # resize mode (type="index"), [] for no styles
    page = {k: shown_value(c, c.value) for k, c in controls.items()}
    page.update({"txt2img/Prompt/value": "", "txt2img/Resize mode/value": 0,
                 "txt2img/Styles/value": []})  # fmt: skip
    assert changes(defaults, page) == {}
    page.update({"txt2img/Sampling steps/value": 28.0, "txt2img/Seed/value": 7,
                 "txt2img/Sampling method/value": "not a sampler",
                 "txt2img/Resize mode/value": 1})  # fmt: skip
    changed = changes(defaults, page)
    assert changed == {"txt2img/Sampling steps/value": (20, 28), "txt2img/Seed/value": (-1, 7),
                       "txt2img/Resize mode/value": ("Just resize", "Crop and resize")}  # fmt: skip
    assert "txt2img/Seed/value" in changes_table(changed)
    write_changes(defaults, changed)
    assert json.loads(path.read_text()) == {
        "txt2img/Sampling steps/minimum": 1, "other/x/value": 5,
        "txt2img/Sampling steps/value": 28, "txt2img/Seed/value": 7,
        "txt2img/Resize mode/value": "Crop and resize",
    }  # fmt: skip
    assert changes(defaults, page) == {}  # the new defaults
    # and the next start reads them
    assert valid_defaults(read_ui_config(path), controls)["txt2img/Sampling steps/value"] == 28


def test_a_corrupt_file_is_kept_aside_when_defaults_are_written(tabs, tmp_path) -> None:
    controls = tab_controls(tabs)
    path = tmp_path / "ui-config.json"
    path.write_text("{broken")
    defaults = UiDefaults(path, controls, {k: c.value for k, c in controls.items()})
    write_changes(defaults, {"txt2img/Seed/value": (-1, 3)})
    assert json.loads(path.read_text()) == {"txt2img/Seed/value": 3}
    assert [p.read_text() for p in tmp_path.glob("ui-config.json.bad-*")] == ["{broken"]


def test_checked_value_of_a_custom_value_dropdown() -> None:
    with gr.Blocks():
        free = gr.Dropdown(choices=["a"], allow_custom_value=True, label="Free")
    assert checked_value(free, "anything") == "anything"
