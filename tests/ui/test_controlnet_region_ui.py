"""The ControlNet accordion's *Effective Region Mask*: every unit of txt2img and img2img
has the upload, and its image goes into the unit the request sends."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
from PIL import Image

from webui.ui import controlnet_ui as cn
from webui.ui.image_common import Named


def test_each_unit_sends_its_region_mask(tmp_path):
    ctx = SimpleNamespace(options={"control_net_unit_count": 2},
                          generation=SimpleNamespace(controlnet_dir=tmp_path), models=None)  # fmt: skip
    for kind in ("txt2img", "img2img"):
        named = Named()
        with gr.Blocks():
            checkpoint = gr.Dropdown(label="Checkpoint", choices=["a"], value="a")
            cn.add_controlnet_controls(ctx, named, kind, kind, checkpoint)
        uploads = [named.components[f"cn_effective_region_mask_{n}"] for n in (0, 1)]
        assert all(isinstance(u, gr.Image) and u.label == "Effective Region Mask" for u in uploads)
        values = {key: getattr(c, "value", None) for key, c in named.components.items()}
        region = Image.new("L", (64, 64), 255)
        values["cn_enabled_1"], values["cn_effective_region_mask_1"] = True, region
        args = cn.controlnet_request(values)["controlnet"]["args"]
        assert args[1]["effective_region_mask"] is region
        assert args[0]["effective_region_mask"] is None
