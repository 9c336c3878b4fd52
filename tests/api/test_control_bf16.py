"""Every kind of ControlNet unit on a UNet computed in bfloat16 (`--precision bf16`, what a
CPU with AMX gets by itself: `model_manager/cpu_precision.py`). The other tests fake a CPU
without bf16, so their UNet is float32; here the control models (float32, as loaded) meet
a bf16 UNet: a ControlNet, a T2I-Adapter, an IP-Adapter (whose layers run inside the
UNet's attention) and the T2I style adapter each change the image, and weight 0 gives
the image without the unit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.controlnet_api import b64, controlnet_server, generate, label, pixels, shapes
from tests.tiny_clip_vision import PROJECTION, save_tiny_clip_vision
from tests.tiny_style_adapter import save_tiny_style_adapter
from webui.model_manager.tiny_adapters import save_tiny_ip_adapter, save_tiny_t2i_adapter
from webui.model_manager.tiny_controlnet import save_tiny_controlnet

CONTROLNET = "control_tiny_canny.safetensors"
T2I = "t2iadapter_canny_sd15v2.pth"
IP = "ip-adapter_sd15.safetensors"
STYLE = "t2iadapter_style_sd14v1.pth"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_files):
    clip = save_tiny_clip_vision(tmp_path_factory.mktemp("clip"))["file"]

    def models(data) -> None:
        folder = data / "models" / "ControlNet"
        save_tiny_controlnet(folder / CONTROLNET, "sd1", seed=1)
        save_tiny_t2i_adapter(folder / T2I, "sd1", seed=4)
        save_tiny_ip_adapter(folder / IP, "sd1", clip_projection=PROJECTION, seed=1)
        save_tiny_style_adapter(folder / STYLE, seed=1)
        vision = data / "models" / "clip_vision"
        vision.mkdir(parents=True)
        (vision / "clip_h.safetensors").write_bytes(clip.read_bytes())
        (vision / "clip_vitl.safetensors").write_bytes(clip.read_bytes())

    folder = tmp_path_factory.mktemp("control-bf16")
    with controlnet_server(folder, tiny_files, models, ("--precision", "bf16")) as srv:
        yield srv


def reference():
    from PIL import Image

    return Image.fromarray(np.random.default_rng(3).integers(0, 255, (48, 40, 3), np.uint8))


UNITS = {
    CONTROLNET: {"module": "canny", "image": lambda: shapes()},
    T2I: {"module": "canny", "image": lambda: shapes()},
    IP: {"module": "ip-adapter_clip_sd15", "image": reference},
    STYLE: {"module": "t2ia_style_clipvision", "image": reference},
}


@pytest.mark.parametrize("name", list(UNITS))
def test_a_unit_on_a_bf16_unet(server, name):
    plain = generate(server, None)
    info = json.loads(plain["info"])["infotexts"][0]
    assert "bfloat16" in info  # the UNet did run in bf16
    spec = UNITS[name]
    unit = {"enabled": True, "module": spec["module"], "image": b64(spec["image"]()),
            "model": label(server, name)}  # fmt: skip
    guided = generate(server, [unit])
    assert np.abs(pixels(guided["images"][0]) - pixels(plain["images"][0])).mean() > 1
    off = generate(server, [{**unit, "weight": 0}])
    assert np.array_equal(pixels(off["images"][0]), pixels(plain["images"][0]))
