"""The ControlNet accordion without a server: its request shape, parameter copy of the
`ControlNet N` infotext fields, and the preprocessor preview (💥)."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from PIL import Image, ImageDraw

from webui.imaging.infotext import parse_infotext
from webui.ui import controlnet_ui as cn
from webui.ui.common import InputError
from webui.ui.image_common import Named


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ControlNet")
    ctx = SimpleNamespace(options={"control_net_unit_count": 2},
                          generation=SimpleNamespace(controlnet_dir=folder), models=None)  # fmt: skip
    named = Named()
    with gr.Blocks() as demo:
        with gr.Tab("txt2img") as tab:
            checkpoint = gr.Dropdown(label="Checkpoint", choices=["a"], value="a")
            cn.add_controlnet_controls(ctx, named, "txt2img", "img2img", checkpoint)
    return demo, tab, named


def test_request_has_the_extensions_shape(built):
    _, _, named = built
    values = {key: getattr(c, "value", None) for key, c in named.components.items()}
    assert cn.controlnet_request(values) == {}  # no unit enabled
    values["cn_enabled_1"] = True
    values["cn_own_image_1"] = False  # img2img: the tab's image
    args = cn.controlnet_request(values)["controlnet"]["args"]
    assert len(args) == 2 and args[1]["enabled"] and args[1]["image"] is None
    assert set(args[0]) == {*cn.FIELDS, "union_control_type"}  # the extension's hidden field
    assert args[0]["union_control_type"] == "Unknown"  # control type "All"


def test_parameter_copy_restores_the_units(built):
    _, tab, _ = built
    controls = cn.paste_controls(tab)
    assert "ControlNet 1 weight" in controls and "ControlNet 0 image" not in controls
    text = ('a cat\nSteps: 3, Seed: 1, ControlNet 1: "Module: canny, Model: control_x '
            "[12345678], Weight: 0.6, Resize Mode: Just Resize, Processor Res: 256, Threshold A: "
            "50.0, Threshold B: 150.0, Guidance Start: 0.1, Guidance End: 0.7, Pixel Perfect: "
            'True, Control Mode: My prompt is more important"')  # fmt: skip
    out = cn.paste_fill(parse_infotext(text), controls)
    assert out[controls["ControlNet 0 enabled"]] is False
    assert out[controls["ControlNet 1 enabled"]] is True
    assert out[controls["ControlNet 1 module"]] == "canny"
    assert out[controls["ControlNet 1 weight"]] == 0.6
    assert out[controls["ControlNet 1 guidance_end"]] == 0.7
    assert out[controls["ControlNet 1 pixel_perfect"]] is True
    assert out[controls["ControlNet 1 control_mode"]] == "My prompt is more important"
    assert out[controls["ControlNet 1 resize_mode"]] == "Just Resize"
    low = out[controls["ControlNet 1 threshold_a"]]
    assert low.value == 50.0 and low.label == "Low Threshold" and low.visible
    assert out[controls["ControlNet 1 model"]].value == "control_x [12345678]"


def test_the_preview_runs_the_preprocessor():
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).rectangle((16, 16, 48, 48), fill="black")
    edges = np.asarray(cn._preview("canny", image, None, 64, 100, 200))
    assert edges.shape == (64, 64, 3) and edges.max() == 255 and edges[0, 0, 0] == 0
    inverted = np.asarray(cn._preview("invert", image, None, -1, -1, -1))
    assert inverted[0, 0, 0] == 0 and inverted[32, 32, 0] == 255
    with pytest.raises(InputError):
        cn._preview("canny", None, None, 512, 100, 200)


@pytest.mark.parametrize(("checkpoint", "listed"), [("flux", "flux-tiny"), ("sd", "control_sd15")])
def test_the_model_list_is_the_checkpoints_familys(tmp_path, checkpoint, listed):
    """A FLUX.1 checkpoint lists FLUX ControlNets only, an SD 1.5 one SD 1.5 ControlNets."""
    import torch
    from safetensors.torch import save_file

    from webui.model_manager.tiny_flux_controlnet import save_tiny_flux_controlnet

    folder = tmp_path / "ControlNet"
    save_tiny_flux_controlnet(folder / "flux-tiny.safetensors")
    save_file({"control_model.input_hint_block.0.weight": torch.zeros(1),
               "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight":
                   torch.zeros(4, 768)}, folder / "control_sd15.safetensors")  # fmt: skip
    files = {"flux": tmp_path / "flux1-dev.safetensors", "sd": tmp_path / "sd15.safetensors"}
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(1)}, files["flux"])
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, files["sd"])
    models = SimpleNamespace(resolve=lambda title: SimpleNamespace(path=files[title]))
    ctx = SimpleNamespace(options={"control_net_unit_count": 1}, models=models,
                          generation=SimpleNamespace(controlnet_dir=folder))  # fmt: skip
    named = Named()
    with gr.Blocks():
        picker = gr.Dropdown(label="Checkpoint", choices=list(files), value=checkpoint)
        cn.add_controlnet_controls(ctx, named, "txt2img", "txt2img", picker)
    (model,) = [c for key, c in named.components.items() if key.startswith("cn_model")]
    assert [label.split(" [")[0] for label, _ in model.choices] == ["None", listed]
