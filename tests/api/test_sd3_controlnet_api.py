"""SD 3.5 ControlNets through the API as the extension's clients use it: the model lists
filtered by the current checkpoint's family, a unit in `alwayson_scripts`, a 422 naming
the field of a control mode SD 3.5 has no meaning for (tiny SD 3.5 Large checkpoint, tiny
Stability and InstantX ControlNets, 64x64)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch

from tests.controlnet_api import b64, controlnet_server, label, pixels, post, shapes
from webui.model_manager import tiny_sd3
from webui.model_manager.tiny_flux_controlnet import save_tiny_flux_controlnet
from webui.model_manager.tiny_sd3_controlnet import save_tiny_sd3_controlnet

SD3 = "sd3.5-tiny-large"
STABILITY, INSTANTX = "sd3.5_tiny_controlnet_canny.safetensors", "sd3-tiny-canny.safetensors"
FLUX = "flux-tiny-canny.safetensors"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_files) -> Iterator:
    def fill(data):
        pipe = tiny_sd3.build_tiny_sd3(seed=3, positions=32)
        path = data / "models" / "Stable-diffusion" / f"{SD3}.safetensors"
        tiny_sd3.save_all_in_one(pipe, path, dtype=torch.float32)
        folder = data / "models" / "ControlNet"
        save_tiny_sd3_controlnet(folder / STABILITY, seed=1, layout="stability")
        save_tiny_sd3_controlnet(folder / INSTANTX, seed=2)
        save_tiny_flux_controlnet(folder / FLUX, seed=1)

    with controlnet_server(tmp_path_factory.mktemp("sd3-cn-api"), tiny_files, fill) as srv:
        yield srv


def canny_models(server, checkpoint: str) -> list[str]:
    """The Canny type's models with `checkpoint` the current one."""
    with httpx.Client(timeout=600, base_url=server.url) as client:
        answer = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": checkpoint})
        assert answer.status_code == 200, answer.text
        types = client.get("/controlnet/control_types").json()["control_types"]
    return types["Canny"]["model_list"]


def test_the_lists_show_sd3_models_with_an_sd3_checkpoint_only(server):
    sd3_labels = [label(server, STABILITY), label(server, INSTANTX)]
    with httpx.Client(timeout=600, base_url=server.url) as client:
        models = client.get("/controlnet/model_list").json()["model_list"]
    assert {*sd3_labels, label(server, FLUX)} <= set(models)
    assert not set(sd3_labels) & set(canny_models(server, "tiny-sd1"))
    assert sorted(canny_models(server, SD3)) == sorted(["None", *sd3_labels])  # not FLUX's


def unit(server, **fields) -> dict:
    return {"enabled": True, "module": "canny", "image": b64(shapes()),
            "model": label(server, STABILITY), **fields}  # fmt: skip


def test_a_unit_in_alwayson_scripts_changes_the_image(server):
    body = {"override_settings": {"sd_model_checkpoint": SD3}, "cfg_scale": 1, "steps": 3}
    plain = post(server, None, **body)
    assert plain.status_code == 200, plain.text
    guided = post(server, [unit(server)], **body)
    assert guided.status_code == 200, guided.text
    assert len(guided.json()["images"]) == 2  # the image and the detected map
    difference = pixels(guided.json()["images"][0]) - pixels(plain.json()["images"][0])
    assert np.abs(difference).mean() > 1
    soft = post(server, [unit(server, control_mode="My prompt is more important")], **body)
    assert soft.status_code == 422, soft.text
    locs = [tuple(d["loc"]) for d in soft.json()["detail"]]
    assert ("body", "alwayson_scripts", "controlnet", "args", "0", "control_mode") in locs
