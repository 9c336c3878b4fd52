"""ControlNet's annotators with weights through the extension's API: listed, run from
`models/ControlNet/annotators` (a random-weight HED file in the real layout) by
/controlnet/detect and by a txt2img job, and a 422 naming the file and the folder when
the weights are missing and cannot be downloaded. Nothing goes to the network: the
server's downloader is replaced by one that records and fails."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.controlnet_api import (
    annotator_server,
    annotator_txt2img,
    b64,
    check_job_map,
    check_offline_422,
    detect,
    picture,
)

pytest.importorskip("controlnet_aux")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_files):
    from webui.model_manager.tiny_annotators import save_random_annotator

    def annotators(folder) -> None:
        save_random_annotator(folder, "hed", seed=1)

    with annotator_server(tmp_path_factory.mktemp("annotators"), tiny_files, annotators) as srv:
        yield srv


def test_the_lists_have_the_annotators(server):
    with httpx.Client(timeout=60, base_url=server.url) as client:
        modules = client.get("/controlnet/module_list").json()
        labels = client.get("/controlnet/module_list", params={"alias_names": True}).json()
        types = client.get("/controlnet/control_types").json()["control_types"]
        models = client.get("/controlnet/model_list").json()["model_list"]
    assert models == []  # annotators/ControlNetHED.pth is not a ControlNet model
    for name in ("depth", "openpose_full", "dw_openpose_full", "lineart", "lineart_anime", "hed", "pidinet",
                 "normal_bae", "mlsd"):  # fmt: skip
        assert name in modules["module_list"]
    for label in ("depth_midas", "lineart_realistic", "softedge_hed", "softedge_pidinet"):
        assert label in labels["module_list"]
    assert modules["module_detail"]["mlsd"]["sliders"][1] == {
        "name": "MLSD Value Threshold",
        "value": 0.1,
        "min": 0.01,
        "max": 2.0,
        "step": 0.01,
    }
    assert types["SoftEdge"]["default_option"] == "pidinet"
    assert "hed" in types["SoftEdge"]["module_list"]
    assert types["OpenPose"]["module_list"][:2] == ["none", "openpose"]
    assert "lineart_anime" in types["Lineart"]["module_list"]


def test_detect_runs_the_annotator_from_the_folder(server):
    response = detect(server, "softedge_hed")  # the label works as the name does
    assert response.status_code == 200, response.text
    image = picture(response.json()["images"][0])
    assert image.mode == "RGB" and image.size == (96, 64)
    assert server.downloads == []


def test_missing_weights_are_a_422_naming_file_and_folder(server, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # online: the download is tried
    response = detect(server, "mlsd")
    assert response.status_code == 422, response.text
    message = str(response.json())
    assert "mlsd_large_512_fp32.pth" in message and str(server.folder) in message
    assert server.downloads[-1] == "mlsd_large_512_fp32.pth"  # tried once, then said so


def test_detect_runs_dwpose_from_its_onnx_files(server):
    from tests.tiny_dwpose import H, W, at, save_tiny_person

    files = [server.folder / "yolox_l.onnx", server.folder / "dw-ll_ucoco_384.onnx"]
    save_tiny_person(server.folder)
    downloads = len(server.downloads)
    try:
        with httpx.Client(timeout=120, base_url=server.url) as client:
            response = client.post("/controlnet/detect", json={
                "controlnet_module": "dw_openpose_full", "controlnet_processor_res": 256,
                "controlnet_input_images": [b64(Image.new("RGB", (W, H), "gray"))]})  # fmt: skip
    finally:
        for path in files:
            path.unlink()
    assert response.status_code == 200, response.text
    drawn = np.asarray(picture(response.json()["images"][0]).convert("RGB"))
    assert drawn.shape == (H, W, 3) and len(server.downloads) == downloads  # none
    x, y = at(0)  # the nose, in OpenPose's first colour; the hands' points blue
    assert tuple(drawn[int(y), int(x)]) == (255, 0, 0)
    assert all(tuple(drawn[int(at(k)[1]), int(at(k)[0])]) == (0, 0, 255) for k in (91, 112))


def test_a_job_runs_the_annotator_and_returns_its_map(server):
    check_job_map(server, {"module": "hed", "processor_res": 64})


def test_offline_a_job_with_missing_weights_is_a_422(server, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_offline_422(server, "openpose_full", "body_pose_model.pth")
    response = annotator_txt2img(server, {"module": "dw_openpose_full"})
    assert response.status_code == 422, response.text
    said = str(response.json()["detail"])
    assert "yolox_l.onnx" in said and str(server.folder) in said and "yzd-v/DWPose" in said
