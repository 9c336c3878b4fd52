"""Segmentation through the extension's API: the Segmentation control type and its
preprocessors listed, /controlnet/detect drawing the ADE20K colours from a tiny OneFormer
folder in models/ControlNet/annotators, a 422 naming the folder when it is missing and
downloads are off, and UniFormer refused with the preprocessor to use instead."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.controlnet_api import annotator_server, b64, detect, picture
from tests.controlnet_api import shapes as _shapes
from webui.model_manager.seg_palettes import ADE20K


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_files):
    from webui.model_manager.tiny_oneformer import save_tiny_oneformer

    def annotators(folder) -> None:
        save_tiny_oneformer(folder / "oneformer_ade20k_swin_large", seed=0)

    with annotator_server(tmp_path_factory.mktemp("segmentation"), tiny_files, annotators) as srv:
        yield srv


def shapes():
    return _shapes((96, 64))


def test_the_segmentation_type_lists_the_oneformer_preprocessors(server):
    with httpx.Client(timeout=60, base_url=server.url) as client:
        modules = client.get("/controlnet/module_list").json()["module_list"]
        labels = client.get("/controlnet/module_list", params={"alias_names": True}).json()
        types = client.get("/controlnet/control_types").json()["control_types"]
        models = client.get("/controlnet/model_list").json()["model_list"]
    assert models == []  # the OneFormer folder in annotators/ is not a ControlNet model
    assert {"oneformer_ade20k", "oneformer_coco"} <= set(modules)
    assert {"seg_ofade20k", "seg_ofcoco"} <= set(labels["module_list"])
    assert "seg_ufade20k" not in labels["module_list"]
    segmentation = types["Segmentation"]
    assert segmentation["default_option"] == "oneformer_ade20k"
    assert segmentation["module_list"] == ["none", "oneformer_ade20k", "oneformer_coco"]


def test_detect_draws_the_ade20k_colours(server):
    response = detect(server, "seg_ofade20k")  # the label, as clients send it
    assert response.status_code == 200, response.text
    image = picture(response.json()["images"][0])
    pixels = np.asarray(image.convert("RGB"))
    assert image.size == (768, 512)  # its resolution slider is hidden: 512, as the extension
    assert {tuple(int(v) for v in c) for c in pixels.reshape(-1, 3)} <= set(ADE20K)


def test_offline_a_missing_folder_is_a_422_naming_it(server, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    response = detect(server, "oneformer_coco")
    assert response.status_code == 422, response.text
    message = str(response.json())
    assert "oneformer_coco_swin_large" in message and str(server.folder) in message
    body = {"prompt": "a room", "steps": 1, "width": 64, "height": 64,
            "alwayson_scripts": {"controlnet": {"args": [{
                "enabled": True, "image": b64(shapes()), "module": "seg_ofcoco",
                "model": "None"}]}}}  # fmt: skip
    with httpx.Client(timeout=120) as client:
        response = client.post(f"{server.url}/sdapi/v1/txt2img", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(
        d["loc"][-1] == "module"
        and "oneformer_coco_swin_large" in d["msg"]
        and "shi-labs/oneformer_coco_swin_large" in d["msg"]
        for d in detail
    ), detail


def test_uniformer_is_refused_pointing_to_oneformer(server):
    response = detect(server, "seg_ufade20k")
    assert response.status_code == 422
    assert "seg_ofade20k" in str(response.json())


def test_a_job_uses_the_map_detect_shows(server):
    from webui.imaging.control_preprocessors import fit_map

    detected = detect(server, "oneformer_ade20k")
    assert detected.status_code == 200, detected.text
    body = {"prompt": "a room", "steps": 1, "seed": 3, "width": 64, "height": 64,
            "sampler_name": "Euler", "alwayson_scripts": {"controlnet": {"args": [{
                "enabled": True, "image": b64(shapes()), "module": "seg_ofade20k",
                "model": "None", "resize_mode": "Crop and Resize"}]}}}  # fmt: skip
    with httpx.Client(timeout=600) as client:
        response = client.post(f"{server.url}/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    images = response.json()["images"]
    assert len(images) == 2  # the image, then the detected map
    shown = np.asarray(picture(detected.json()["images"][0]))
    used = np.asarray(picture(images[1]).convert("RGB"))
    assert (used == fit_map(shown[:, :, :3], "Crop and Resize", 64, 64)).all()
