"""The units that have no effective region mask refuse it by name (FLUX ControlNets, the
FLUX IP-Adapter, the T2I style adapter: neither sd-webui-controlnet nor Forge has one), read
from their real file layouts in models/ControlNet; the SD units take it."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.tiny_clip_vision import PROJECTION, save_tiny_clip_vision
from tests.tiny_style_adapter import save_tiny_style_adapter
from webui.model_manager.tiny_controlnet import save_tiny_controlnet
from webui.model_manager.tiny_flux_controlnet import (
    save_tiny_flux_controlnet,
    save_tiny_flux_ip_adapter,
)
from webui.services.controlnet import controlnet_fields
from webui.services.errors import RequestError

REGION = Image.new("L", (64, 64), 0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    folder = models / "ControlNet"
    save_tiny_flux_controlnet(folder / "flux-tiny-canny.safetensors", seed=1)
    save_tiny_flux_ip_adapter(folder / "flux-ip-adapter.safetensors", PROJECTION, seed=5)
    save_tiny_style_adapter(folder / "t2iadapter_style_sd14v1.pth", seed=1)
    save_tiny_controlnet(folder / "control_tiny_canny.safetensors", "sd1", seed=1)
    clip = save_tiny_clip_vision(tmp_path_factory.mktemp("clip"))["file"]
    (models / "clip_vision").mkdir()
    for name in ("clip_vision_l.safetensors", "clip_vitl.safetensors"):
        (models / "clip_vision" / name).write_bytes(clip.read_bytes())
    return folder


@pytest.mark.parametrize("module, model", [
    ("canny", "flux-tiny-canny"),
    ("ip-adapter_clip_flux", "flux-ip-adapter"),
    ("t2ia_style_clipvision", "t2iadapter_style_sd14v1"),
])  # fmt: skip
def test_units_without_a_region_mask_refuse_it(folder, module, model):
    unit = {"enabled": True, "module": module, "model": model, "image": REGION.convert("RGB"),
            "effective_region_mask": REGION}  # fmt: skip
    with pytest.raises(RequestError) as error:
        controlnet_fields(("controlnet", [unit]), folder)
    assert error.value.loc == ("alwayson_scripts", "controlnet", "args", "0",
                               "effective_region_mask")  # fmt: skip
    del unit["effective_region_mask"]
    assert controlnet_fields(("controlnet", [unit]), folder)["controlnet"][0].model_path


def test_an_sd_controlnet_takes_it(folder):
    unit = {"enabled": True, "module": "canny", "model": "control_tiny_canny",
            "image": REGION.convert("RGB"), "effective_region_mask": REGION}  # fmt: skip
    found = controlnet_fields(("controlnet", [unit]), folder)["controlnet"][0]
    assert found.effective_region_mask is REGION
