"""Depth Anything through the extension's API: listed under Depth, run from
`models/ControlNet/annotators` (a tiny random-weight v2 file in the original layout) by
/controlnet/detect and by a txt2img unit, and a 422 naming the file and the folder when
the weights are missing and cannot be downloaded. Nothing goes to the network: the
server's downloader is replaced by one that records and fails."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.controlnet_api import annotator_server, check_job_map, check_offline_422, detect, picture


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_files):
    from webui.model_manager.tiny_depth_anything import save_tiny_depth_anything

    def annotators(folder) -> None:
        save_tiny_depth_anything(folder, "depth_anything_v2", seed=1)

    with annotator_server(tmp_path_factory.mktemp("depth_anything"), tiny_files, annotators) as srv:
        yield srv


def test_listed_under_depth(server):
    with httpx.Client(timeout=60, base_url=server.url) as client:
        modules = client.get("/controlnet/module_list").json()
        types = client.get("/controlnet/control_types").json()["control_types"]
    for name in ("depth_anything", "depth_anything_v2"):
        assert name in modules["module_list"] and name in types["Depth"]["module_list"]
        assert modules["module_detail"][name]["sliders"] == []  # resolution hidden


def test_detect_runs_depth_anything_v2_from_the_folder(server):
    response = detect(server, "depth_anything_v2")
    assert response.status_code == 200, response.text
    image = picture(response.json()["images"][0])
    assert image.mode == "RGB" and image.size == (768, 512)  # resolution hidden: 512
    pixels = np.asarray(image)
    assert pixels.min() == 0 and pixels.max() == 255  # min-max normalised depth
    assert server.downloads == []


def test_missing_weights_are_a_422_naming_file_and_folder(server, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # online: the download is tried
    response = detect(server, "depth_anything")
    assert response.status_code == 422, response.text
    message = str(response.json())
    assert "depth_anything_vitl14.pth" in message and str(server.folder) in message
    assert server.downloads[-1] == "depth_anything_vitl14.pth"


def test_a_job_runs_depth_anything_and_returns_its_map(server):
    check_job_map(server, {"module": "depth_anything_v2", "processor_res": 64})


def test_offline_a_job_with_missing_weights_is_a_422(server, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_offline_422(server, "depth_anything", "depth_anything_vitl14.pth")
