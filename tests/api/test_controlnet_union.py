"""ControlNet Union units, the X/Y/Z plot's ControlNet axes and inpaint_only's kept area, as
sd-webui-controlnet's API clients use them: one server with the tiny SD 1.x and SDXL
checkpoints, a tiny SD 1.x ControlNet and tiny ControlNet Union models (ProMax's 8 modes
as one file, the first union model's 6 as a diffusers folder); 64x64 images, 3 steps."""

from __future__ import annotations

import json
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.controlnet_api import b64, controlnet_server, label, pixels, post, shapes
from webui.model_manager.tiny_controlnet import save_tiny_controlnet

PROMAX = "controlnet-union-promax.safetensors"
UNION6 = "controlnet-union-sdxl-1.0"  # a folder
CANNY = "control_tiny_canny.safetensors"  # SD 1.x
OTHER = "control_tiny_other.safetensors"  # SD 1.x
XL = {"override_settings": {"sd_model_checkpoint": "tiny-sdxl"}}
SD1 = {"override_settings": {"sd_model_checkpoint": "tiny-sd1"}}
CN_LOC = ("body", "alwayson_scripts", "controlnet", "args", "0")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_files):
    def models(data) -> None:
        sdxl = data / "models" / "Stable-diffusion" / "tiny-sdxl.safetensors"
        shutil.copy(tiny_files["sdxl"], sdxl)
        folder = data / "models" / "ControlNet"
        save_tiny_controlnet(folder / PROMAX, "sdxl", seed=4, layout="diffusers", union_modes=8)
        save_tiny_controlnet(folder / UNION6, "sdxl", seed=5, layout="folder", union_modes=6)
        save_tiny_controlnet(folder / CANNY, "sd1", seed=1)
        save_tiny_controlnet(folder / OTHER, "sd1", seed=2)

    with controlnet_server(tmp_path_factory.mktemp("union"), tiny_files, models) as srv:
        yield srv


def unit(server, model: str = PROMAX, **fields) -> dict:
    return {"enabled": True, "module": "canny", "image": b64(shapes()), "model": label(server, model),
            "save_detected_map": False, **fields}  # fmt: skip


def image(server, units: list | None, route: str = "txt2img", **extra) -> np.ndarray:
    response = post(server, units, route, **extra)
    assert response.status_code == 200, response.text
    return pixels(response.json()["images"][0])


# --- ControlNet Union (SDXL) --------------------------------------------------------------


def test_a_union_unit_runs_in_its_mode(server):
    plain = image(server, None, **XL)
    inferred = image(server, [unit(server)], **XL)  # canny: Hard Edge
    assert np.abs(inferred - plain).mean() > 1
    assert np.array_equal(image(server, [unit(server, union_control_type="Hard Edge")], **XL),
                          inferred)  # fmt: skip
    soft = image(server, [unit(server, union_control_type="Soft Edge")], **XL)
    assert not np.array_equal(soft, inferred)
    # two units on one union model, each in its own mode
    both = post(server, [unit(server), unit(server, module="tile_resample",
                                            save_detected_map=True)], **XL)  # fmt: skip
    assert both.status_code == 200, both.text
    assert len(both.json()["images"]) == 2  # the image and the tile unit's map
    assert not np.array_equal(pixels(both.json()["images"][0]), inferred)


@pytest.mark.parametrize(("fields", "words"), [
    ({"module": "none"}, "choose a control type"),
    ({"model": UNION6, "module": "tile_resample"}, "has no Tile mode"),
    ({"union_control_type": "Sketch"}, "must be one of"),
])  # fmt: skip
def test_a_union_unit_without_a_mode_of_its_model_is_a_422(server, fields, words):
    model = fields.pop("model", PROMAX)
    response = post(server, [unit(server, model, **fields)], **XL)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert tuple(detail["loc"]) == (*CN_LOC, "union_control_type") and words in detail["msg"]


def test_the_ui_sets_the_mode_from_the_control_type():
    from webui.ui.controlnet_ui import controlnet_request

    values = {"cn_enabled_0": True, "cn_control_type_0": "Scribble", "cn_own_image_0": True,
              **{f"cn_{k}_0": None for k in ("module", "model", "weight", "image", "mask",
                                              "resize_mode", "processor_res", "threshold_a",
                                              "threshold_b", "guidance_start", "guidance_end",
                                              "control_mode", "pixel_perfect")}}  # fmt: skip
    (sent,) = controlnet_request(values)["controlnet"]["args"]
    assert sent["union_control_type"] == "Soft Edge"


# --- the X/Y/Z plot's ControlNet axes (SD 1.x) --------------------------------------------


def xyz(server, args: dict, units: list) -> httpx.Response:
    return post(server, units, script_name="x/y/z plot", steps=2,
                script_args={"include_lone_images": True, **args}, **SD1)  # fmt: skip


def test_the_weight_axis_varies_the_units_weight(server):
    canny = unit(server, CANNY, save_detected_map=True)
    response = xyz(server, {"x_type": "[ControlNet] Weight", "x_values": "0, 1"}, [canny])
    assert response.status_code == 200, response.text
    grid, off, on = (pixels(i) for i in response.json()["images"])  # no detected maps
    assert grid.shape[1] >= 128
    assert np.array_equal(off, image(server, None, steps=2, **SD1))  # weight 0: no unit
    assert np.abs(on - off).mean() > 1
    info = json.loads(response.json()["info"])["infotexts"]
    assert "Weight: 0.0" in info[1] and "Weight: 1.0" in info[2]


def test_model_and_preprocessor_axes(server):
    args = {"x_type": "[ControlNet] Model", "x_values": f"{label(server, CANNY)}, control_tiny_other",
            "y_type": "[ControlNet] Preprocessor", "y_values": "canny, invert"}  # fmt: skip
    response = xyz(server, args, [unit(server, CANNY)])
    assert response.status_code == 200, response.text
    cells = [pixels(i) for i in response.json()["images"][1:]]
    assert len(cells) == 4 and all(not np.array_equal(a, b) for a, b in
                                   zip(cells, cells[1:], strict=False))  # fmt: skip
    info = json.loads(response.json()["info"])["infotexts"]  # the model axis changes least
    assert "Module: invert" in info[2] and f"Model: {label(server, CANNY)}" in info[2]
    assert "Module: canny" in info[3] and f"Model: {label(server, OTHER)}" in info[3]


@pytest.mark.parametrize(("args", "units", "words"), [
    ({"x_type": "[ControlNet] Model", "x_values": "no_such_model"}, True, "model not found"),
    ({"x_type": "[ControlNet] Weight", "x_values": "0, 3"}, True, "outside"),
    ({"x_type": "[ControlNet] Guidance End", "x_values": "0.5, 1"}, False, "enabled ControlNet"),
])  # fmt: skip
def test_bad_controlnet_axes_are_422s(server, args, units, words):
    response = xyz(server, args, [unit(server, CANNY)] if units else None)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"][-1] == "x_values" and words in detail["msg"]


def test_the_ui_lists_the_controlnet_axes():
    from webui.ext.scripts.xyz_plot import _axis_labels

    labels = _axis_labels()
    assert labels[-10:] == tuple(f"[ControlNet] {n}" for n in (
        "Model", "Weight", "Guidance Start", "Guidance End", "Control Mode", "Resize Mode",
        "Preprocessor", "Pre Resolution", "Pre Threshold A", "Pre Threshold B"))  # fmt: skip


# --- inpaint_only keeps the image outside the unit's mask (SD 1.x img2img) ------------------


def _mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((32, 0, 63, 63), fill=255)  # repaint the right half
    return mask


def test_inpaint_only_keeps_the_image_outside_the_units_mask(server):
    init = shapes()
    body = {"init_images": [b64(init)], "denoising_strength": 0.9, **SD1}
    inpaint = unit(server, CANNY, module="inpaint_only",
                   image={"image": b64(init), "mask": b64(_mask())})  # fmt: skip
    kept = image(server, [inpaint], "img2img", **body)
    plain = image(server, None, "img2img", **body)
    original = np.asarray(init, np.int16)
    left, right = np.s_[:, :24], np.s_[:, 40:]  # away from the mask's blurred edge
    assert np.array_equal(kept[left], original[left])  # the image's own pixels
    assert np.abs(plain[left] - original[left]).mean() > 10  # img2img alone changes them
    assert np.abs(kept[right] - original[right]).mean() > 10  # the masked half is generated
    assert np.abs(kept[right] - plain[right]).mean() > 1


def test_inpaint_only_lama_is_refused_with_its_reason(server):
    response = post(server, [unit(server, CANNY, module="inpaint_only+lama")], **SD1)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert tuple(detail["loc"]) == (*CN_LOC, "module") and "LaMa" in detail["msg"]
