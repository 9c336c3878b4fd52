"""Face restoration over the A1111 API: txt2img, img2img and extras, with real model files.

One server (tiny SD 1.x checkpoint; the face files of `tests/tiny_faces.py` given with
--gfpgan-models-path and --codeformer-models-path) serves the module. Its detector finds
no face (random weights would find random ones), so these tests show the plumbing: the
field reaches the job, faces are looked for in every image (the restorer is loaded once
one is found), the infotext says so and comes back through PNG Info and the `infotext`
field, and a missing file is a 422.
The restoration itself is checked in tests/imaging/test_face_restoration.py.
"""

from __future__ import annotations

import base64
import io
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import httpx  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from tests.conftest import ServerThread, with_tiny_sd1  # noqa: E402
from webui.app import create_app  # noqa: E402
from webui.imaging.infotext import parse_infotext  # noqa: E402
from webui.settings import parse_flags  # noqa: E402

BASE = {"prompt": "a face", "seed": 7, "steps": 1, "width": 64, "height": 64,
        "sampler_name": "Euler", "save_images": False}  # fmt: skip


@pytest.fixture(scope="module")
def api(tmp_path_factory, tiny_files, face_models):
    data = with_tiny_sd1(tmp_path_factory.mktemp("faces-api"), tiny_files)
    flags = parse_flags([
        "--api", "--nowebui", "--data-dir", str(data), "--no-download-sd-model",
        "--gfpgan-models-path", str(face_models / "GFPGAN"),
        "--codeformer-models-path", str(face_models / "Codeformer"),
    ])  # fmt: skip
    with ServerThread(create_app(flags)) as server, httpx.Client(timeout=600) as client:
        yield server.url + "/sdapi/v1", client, face_models


def _png(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_face_restorers_are_listed(api):
    url, client, models = api
    response = client.get(f"{url}/face-restorers")
    assert response.status_code == 200
    assert response.json() == [
        {"name": "CodeFormer", "cmd_dir": str(models / "Codeformer")},
        {"name": "GFPGAN", "cmd_dir": str(models / "GFPGAN")},
    ]


def test_txt2img_restore_faces_writes_its_infotext(api):
    url, client, _ = api
    response = client.post(f"{url}/txt2img", json={**BASE, "restore_faces": True})
    assert response.status_code == 200, response.text
    body = response.json()
    info = json.loads(body["info"])
    assert info["restore_faces"] is True and info["face_restoration_model"] == "CodeFormer"
    text = info["infotexts"][0]
    assert "Seed: 7, Face restoration: CodeFormer, Size: 64x64" in text  # A1111's place
    assert _png(body["images"][0]).info["parameters"] == text  # what PNG Info reads
    # the infotext brings restore_faces (and its model) back, as A1111 1.10's field does
    again = client.post(f"{url}/txt2img", json={**BASE, "infotext": text})
    assert again.status_code == 200, again.text
    assert (
        parse_infotext(json.loads(again.json()["info"])["infotexts"][0])["Face restoration"]
        == "CodeFormer"
    )
    plain = client.post(f"{url}/txt2img", json={**BASE, "restore_faces": False})
    assert "Face restoration" not in json.loads(plain.json()["info"])["infotexts"][0]


def test_img2img_restore_faces(api):
    url, client, _ = api
    init = _b64(Image.new("RGB", (64, 64), (120, 90, 60)))
    body = {**BASE, "init_images": [init], "denoising_strength": 0.5, "restore_faces": True}
    response = client.post(f"{url}/img2img", json=body)
    assert response.status_code == 200, response.text
    text = json.loads(response.json()["info"])["infotexts"][0]
    assert parse_infotext(text)["Face restoration"] == "CodeFormer"


def test_extras_codeformer_and_its_infotext(api):
    url, client, _ = api
    source = Image.new("RGB", (48, 40), (10, 200, 30))
    body = {"image": _b64(source), "upscaler_1": "None", "codeformer_visibility": 0.5,
            "codeformer_weight": 0.25}  # fmt: skip
    response = client.post(f"{url}/extra-single-image", json=body)
    assert response.status_code == 200, response.text
    image = _png(response.json()["image"])
    assert image.size == source.size
    text = image.info["parameters"]  # A1111's postprocessing fields
    assert text == "CodeFormer visibility: 0.5, CodeFormer weight: 0.25"  # no upscaling


def test_missing_model_file_is_422(api):
    url, client, models = api
    body = {**BASE, "restore_faces": True,
            "override_settings": {"face_restoration_model": "GFPGAN"}}  # fmt: skip
    response = client.post(f"{url}/txt2img", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"][-1] == "restore_faces"
    assert "GFPGANv1.4.pth" in detail["msg"] and str(models / "GFPGAN") in detail["msg"]
    body = {"image": _b64(Image.new("RGB", (8, 8))), "gfpgan_visibility": 1}
    response = client.post(f"{url}/extra-single-image", json=body)
    assert response.status_code == 422 and "GFPGANv1.4.pth" in response.text
    body = {"image": _b64(Image.new("RGB", (8, 8))), "codeformer_visibility": 2}
    response = client.post(f"{url}/extra-single-image", json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] == "codeformer_visibility"
