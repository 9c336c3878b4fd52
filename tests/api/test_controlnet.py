"""ControlNet as sd-webui-controlnet's API clients use it: one server with the tiny SD 1.x
checkpoint and tiny ControlNets (lllyasviel's layout as .safetensors and .pth, a diffusers
folder), 64x64 images, 3 steps."""

from __future__ import annotations

import json
from functools import partial

import httpx
import numpy as np
import pytest

from tests import controlnet_api
from tests.controlnet_api import BODY, b64, controlnet_server, label, pixels, shapes
from webui.model_manager.tiny_controlnet import save_tiny_controlnet


def _controlnets(data) -> None:
    folder = data / "models" / "ControlNet"
    save_tiny_controlnet(folder / "control_tiny_canny.safetensors", "sd1", seed=1)
    save_tiny_controlnet(folder / "control_tiny_lineart.pth", "sd1", seed=2)
    save_tiny_controlnet(folder / "control_tiny_folder", "sd1", seed=3, layout="folder")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_files):
    with controlnet_server(tmp_path_factory.mktemp("controlnet"), tiny_files, _controlnets) as srv:
        yield srv


def unit(server, **fields) -> dict:
    return {"enabled": True, "module": "canny", "image": b64(shapes()),
            "model": label(server, "control_tiny_canny.safetensors"), **fields}  # fmt: skip


# the extension's clients write the script's key in any case: "ControlNet" here
generate = partial(controlnet_api.generate, script_key="ControlNet")


@pytest.fixture(scope="module")
def plain(server) -> np.ndarray:
    return pixels(generate(server, None)["images"][0])


@pytest.fixture(scope="module")
def guided(server) -> dict:
    return generate(server, [unit(server)])


def test_a_unit_changes_the_image_and_returns_its_map(server, plain, guided):
    images = guided["images"]
    assert len(images) == 2  # the image, then the detected map (the extension's order)
    assert np.abs(pixels(images[0]) - plain).mean() > 1
    edges = pixels(images[1])
    assert edges.shape == (64, 64, 3) and set(np.unique(edges)) <= {0, 255} and edges.max() == 255
    info = json.loads(guided["info"])["infotexts"][0]
    expected = (f'ControlNet 0: "Module: canny, Model: {label(server, "control_tiny_canny.safetensors")}'
                ", Weight: 1.0, Resize Mode: Crop and Resize, Processor Res: 512, Threshold A: "
                "100.0, Threshold B: 200.0, Guidance Start: 0.0, Guidance End: 1.0, Pixel "
                'Perfect: False, Control Mode: Balanced"')  # fmt: skip
    assert expected in info


def test_weight_zero_equals_no_unit(server, plain):
    result = generate(server, [unit(server, weight=0, save_detected_map=False)])
    assert len(result["images"]) == 1
    assert np.array_equal(pixels(result["images"][0]), plain)


def test_guidance_end_and_two_units(server, plain, guided):
    full = pixels(guided["images"][0])
    half = pixels(generate(server, [unit(server, guidance_end=0.5)])["images"][0])
    assert not np.array_equal(half, full) and not np.array_equal(half, plain)
    other = {"module": "invert", "model": "control_tiny_lineart", "weight": 0.8,
             "control_mode": 2, "resize_mode": "Just Resize"}  # fmt: skip
    both = generate(server, [unit(server), unit(server, **other)])
    assert len(both["images"]) == 3
    combined = pixels(both["images"][0])
    alone = pixels(generate(server, [unit(server, **other)])["images"][0])
    assert not np.array_equal(combined, full) and not np.array_equal(combined, alone)
    info = json.loads(both["info"])["infotexts"][0]
    assert "ControlNet 1: " in info and "Control Mode: ControlNet is more important" in info


def test_img2img_uses_the_init_image_and_hires_fix_runs(server):
    init = b64(shapes())
    result = generate(server, [{"enabled": True, "module": "invert", "model": "control_tiny_folder",
                                "input_image": None}], route="img2img", init_images=[init],
                      denoising_strength=0.8)  # fmt: skip
    assert len(result["images"]) == 2
    hires = generate(server, [unit(server, control_mode="My prompt is more important")],
                     enable_hr=True, hr_scale=1.5, hr_upscaler="Latent",
                     denoising_strength=0.5)  # fmt: skip
    assert pixels(hires["images"][0]).shape == (96, 96, 3)
    assert pixels(hires["images"][1]).shape == (64, 64, 3)


@pytest.mark.parametrize(("fields", "loc"), [
    ({"model": "nope [12345678]"}, "model"),
    ({"weight": "heavy"}, "weight"),
    ({"image": "not base64!"}, "image"),
    ({"control_mode": "Loud"}, "control_mode"),
    ({"module": "depth_midas_missing"}, "module"),
])  # fmt: skip
def test_bad_units_are_422_naming_the_unit_and_field(server, fields, loc):
    body = {**BODY, "alwayson_scripts": {"controlnet": {"args": [unit(server, **fields)]}}}
    with httpx.Client(timeout=60) as client:
        response = client.post(f"{server.url}/sdapi/v1/txt2img", json=body)
    assert response.status_code == 422, response.text
    locs = [tuple(d["loc"]) for d in response.json()["detail"]]
    assert ("body", "alwayson_scripts", "controlnet", "args", "0", loc) in locs, locs


def test_the_extensions_routes(server):
    with httpx.Client(timeout=60, base_url=server.url) as client:
        assert client.get("/controlnet/version").json()["version"] >= 2
        models = client.get("/controlnet/model_list").json()["model_list"]
        assert label(server, "control_tiny_canny.safetensors") in models and len(models) == 3
        modules = client.get("/controlnet/module_list", params={"alias_names": True}).json()
        assert "invert (from white bg & black line)" in modules["module_list"]
        canny = client.get("/controlnet/module_list").json()["module_detail"]["canny"]
        assert canny["sliders"][1] == {"name": "Low Threshold", "value": 100, "min": 1,
                                       "max": 255, "step": 1.0}  # fmt: skip
        types = client.get("/controlnet/control_types").json()["control_types"]
        assert types["Canny"]["default_option"] == "canny"
        assert types["Canny"]["default_model"] == label(server, "control_tiny_canny.safetensors")
        detect = client.post("/controlnet/detect", json={
            "controlnet_module": "canny", "controlnet_input_images": [b64(shapes())],
            "controlnet_processor_res": 64, "controlnet_threshold_a": 100,
            "controlnet_threshold_b": 200})  # fmt: skip
        assert detect.status_code == 200 and detect.json()["info"] == "Success"
        assert pixels(detect.json()["images"][0]).max() == 255
        bad = client.post(
            "/controlnet/detect",
            json={"controlnet_module": "canny", "controlnet_input_images": ["xx"]},
        )
        assert bad.status_code == 422
        scripts = client.get("/sdapi/v1/scripts").json()
        assert "controlnet" in scripts["txt2img"] and "controlnet" in scripts["img2img"]


def test_the_ui_unit_gives_the_api_pixels(server, guided):
    """The accordion's values, as the page sends them (a PIL image, the sliders the canny
    preprocessor shows, a second unit left off), make the API's image."""
    from webui.core.params import Txt2ImgParams
    from webui.services.generation import GenerationRequest
    from webui.ui.controlnet_ui import controlnet_request

    shown = {"enabled": True, "module": "canny", "image": shapes(), "mask": None,
             "model": label(server, "control_tiny_canny.safetensors"), "weight": 1.0,
             "resize_mode": "Crop and Resize", "processor_res": 512, "threshold_a": 100,
             "threshold_b": 200, "guidance_start": 0.0, "guidance_end": 1.0,
             "control_mode": "Balanced", "pixel_perfect": False}  # fmt: skip
    off = {**shown, "enabled": False, "image": None, "module": "none", "model": "None",
           "processor_res": -1, "threshold_a": -1, "threshold_b": -1}  # fmt: skip
    values = {f"cn_{k}_{n}": v for n, unit in enumerate((shown, off)) for k, v in unit.items()}
    params = Txt2ImgParams(prompt="a house", negative_prompt="fog", steps=3, seed=7, width=64,
                           height=64, sampler_name="Euler", cfg_scale=5, save_images=False)  # fmt: skip
    job = server.ctx.generation.submit(
        GenerationRequest("txt2img", params, "ui-user", alwayson=controlnet_request(values))
    )
    assert job.done.wait(300)
    ui = np.asarray(job.images[0].image.convert("RGB"), np.int16)
    assert np.array_equal(ui, pixels(guided["images"][0]))


def test_controlnet_is_more_important_without_unconditional_rows(server):
    """CFG 1 with AND has no unconditional rows: "ControlNet is more important" is then the
    soft weights on every row, as "My prompt is more important"."""
    cfg1 = {"cfg_scale": 1, "prompt": "a house AND a tree"}
    mine = generate(server, [unit(server, control_mode=1, save_detected_map=False)], **cfg1)
    more = generate(server, [unit(server, control_mode=2, save_detected_map=False)], **cfg1)
    assert np.array_equal(pixels(more["images"][0]), pixels(mine["images"][0]))
