"""Forge's "VAE / Text Encoder" modules through the API: `GET /sdapi/v1/sd-modules`, and a
FLUX transformer-only checkpoint whose missing module is a 422 naming the file to add and
the folder (never a traceback from the worker)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ServerThread
from webui.app import create_app
from webui.settings import parse_flags


@pytest.fixture(scope="module")
def api(tmp_path_factory, flux_files) -> Iterator[tuple[str, httpx.Client]]:
    data = tmp_path_factory.mktemp("flux-api")
    models = data / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    shutil.copy(flux_files["transformer"], models / "Stable-diffusion" / "flux1-tiny.safetensors")
    (models / "VAE").mkdir()
    shutil.copy(flux_files["vae"], models / "VAE" / "ae.safetensors")
    comfy = data / "comfy-text-encoders"  # ComfyUI's folder, given with --module-dirs
    comfy.mkdir()
    shutil.copy(flux_files["clip_l"], comfy / "clip_l.safetensors")
    argv = ["--api", "--nowebui", "--data-dir", str(data), "--module-dirs", str(comfy)]
    (models / "text_encoder").mkdir()
    shutil.copy(flux_files["t5xxl"], models / "text_encoder" / "t5xxl_fp16.safetensors")
    with ServerThread(create_app(parse_flags(argv))) as server, httpx.Client(timeout=300) as c:
        yield server.url + "/sdapi/v1", c


def _txt2img(api, modules) -> httpx.Response:
    url, client = api
    body = {"prompt": "a cat", "steps": 1, "width": 64, "height": 64,
            "override_settings": {"sd_model_checkpoint": "flux1-tiny",
                                  "forge_additional_modules": modules}}  # fmt: skip
    return client.post(f"{url}/txt2img", json=body)


def test_sd_modules_lists_forges_folders_and_the_flagged_ones(api):
    url, client = api
    found = client.get(f"{url}/sd-modules").json()
    assert sorted(m["model_name"] for m in found) == [
        "ae.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors"]  # fmt: skip
    assert all(m["filename"].endswith(m["model_name"]) for m in found)
    options = client.get(f"{url}/options").json()
    assert options["forge_additional_modules"] == []


def test_a_missing_text_encoder_is_a_422_naming_file_and_folder(api):
    response = _txt2img(api, ["ae.safetensors", "clip_l.safetensors"])
    assert response.status_code == 422, response.text
    text = response.text
    assert "forge_additional_modules" in text and "flux1-tiny.safetensors" in text
    assert "t5xxl_fp16.safetensors" in text and "models/text_encoder" in text


def test_an_unknown_module_is_a_422(api):
    response = _txt2img(api, ["ae.safetensors", "nothing.safetensors"])
    assert response.status_code == 422
    assert "nothing.safetensors" in response.text
