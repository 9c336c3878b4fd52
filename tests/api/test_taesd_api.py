"""The TAESD options through the API: A1111's `sd_vae_decode_method` and
`sd_vae_encode_method` per job (`override_settings`), their infotext and round trip, the
422 for a missing file, and the live preview methods in /sdapi/v1/options."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import ServerThread, with_tiny_sd1
from tests.tiny_approx import save_taesd_files
from webui.app import create_app
from webui.imaging.infotext import parse_infotext
from webui.settings import parse_flags

BODY = {"prompt": "a red barn", "steps": 2, "width": 64, "height": 64, "seed": 5,
        "sampler_name": "Euler", "cfg_scale": 1.0}  # fmt: skip
TAESD = {"sd_vae_decode_method": "TAESD"}
TAESD_ENCODE = {"sd_vae_encode_method": "TAESD"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_files):
    data = with_tiny_sd1(tmp_path_factory.mktemp("taesd-api"), tiny_files)
    save_taesd_files(data / "models" / "VAE-approx", "taesd", seed=1)
    flags = parse_flags(["--api", "--nowebui", "--data-dir", str(data), "--no-download-sd-model"])
    with ServerThread(create_app(flags)) as srv:
        yield srv, data


def _txt2img(srv, **changes) -> tuple[np.ndarray, dict]:
    response = httpx.post(f"{srv.url}/sdapi/v1/txt2img", json={**BODY, **changes}, timeout=300)
    assert response.status_code == 200, response.text
    encoded = response.json()["images"][0]
    image = Image.open(io.BytesIO(base64.b64decode(encoded)))
    return np.asarray(image.convert("RGB")), parse_infotext(image.info["parameters"])


def test_taesd_decode_per_job_with_its_infotext_and_round_trip(server) -> None:
    srv, _ = server
    full, full_info = _txt2img(srv)
    draft, info = _txt2img(srv, override_settings=TAESD)
    assert info["VAE Decoder"] == "TAESD" and "VAE Decoder" not in full_info
    assert draft.shape == full.shape == (64, 64, 3) and not np.array_equal(draft, full)
    # the infotext alone asks for it again (A1111's `infotext` field): the same draft
    again, again_info = _txt2img(srv, infotext=_infotext(info))
    assert again_info["VAE Decoder"] == "TAESD" and np.array_equal(again, draft)
    # the server's option is unchanged by a job's override
    options = httpx.get(f"{srv.url}/sdapi/v1/options", timeout=60).json()
    assert options["sd_vae_decode_method"] == "Full"


def _infotext(fields: dict) -> str:
    prompt = fields["Prompt"]
    rest = ", ".join(f"{k}: {v}" for k, v in fields.items() if k not in ("Prompt",))
    return f"{prompt}\n{rest}"


def test_missing_taesd_file_is_a_422_naming_file_and_folder(server) -> None:
    srv, data = server
    folder = data / "models" / "VAE-approx"
    moved = data / "models" / "elsewhere"
    folder.rename(moved)
    try:
        response = httpx.post(f"{srv.url}/sdapi/v1/txt2img", timeout=60,
                              json={**BODY, "override_settings": TAESD})  # fmt: skip
    finally:
        moved.rename(folder)
    assert response.status_code == 422, response.text
    text = response.text
    assert "sd_vae_decode_method" in text and "taesd_decoder" in text and "VAE-approx" in text


def test_options_take_the_preview_and_decode_methods(server) -> None:
    srv, _ = server
    url = f"{srv.url}/sdapi/v1/options"
    for value in ("Approx NN", "TAESD", "Approx cheap"):
        assert httpx.post(url, json={"show_progress_type": value}, timeout=60).status_code == 200
        assert httpx.get(url, timeout=60).json()["show_progress_type"] == value
    bad = httpx.post(url, json={"show_progress_type": "Approx expensive"}, timeout=60)
    assert bad.status_code == 422 and "show_progress_type" in bad.text
    bad = httpx.post(url, json={"sd_vae_decode_method": "Tiny"}, timeout=60)
    assert bad.status_code == 422 and "sd_vae_decode_method" in bad.text


def test_a_job_without_the_approx_nn_file_previews_cheaply_and_says_where(server) -> None:
    """The job's own preview method reaches the worker; model.pt is missing: the job still
    succeeds, and its warnings say which file goes into which folder."""
    srv, data = server
    overrides = {"show_progress_type": "Approx NN", "show_progress_every_n_steps": 1}
    response = httpx.post(f"{srv.url}/sdapi/v1/txt2img", timeout=300,
                          json={**BODY, "override_settings": overrides})  # fmt: skip
    assert response.status_code == 200, response.text
    warnings = json.loads(response.json()["info"])["warnings"]
    folder = str(data / "models" / "VAE-approx")
    assert any("model.pt" in w and folder in w and "Approx cheap" in w for w in warnings), warnings
    overrides["show_progress_type"] = "TAESD"  # its file is there: no warning
    response = httpx.post(f"{srv.url}/sdapi/v1/txt2img", timeout=300,
                          json={**BODY, "override_settings": overrides})  # fmt: skip
    assert json.loads(response.json()["info"])["warnings"] == []


def _img2img(srv, **changes) -> tuple[np.ndarray, dict]:
    init = Image.new("RGB", (64, 64), (200, 40, 40))
    init.paste((30, 30, 220), (0, 0, 32, 64))
    buffer = io.BytesIO()
    init.save(buffer, format="PNG")
    body = {**BODY, "init_images": [base64.b64encode(buffer.getvalue()).decode()],
            "denoising_strength": 0.5, **changes}  # fmt: skip
    response = httpx.post(f"{srv.url}/sdapi/v1/img2img", json=body, timeout=300)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    return np.asarray(image.convert("RGB")), parse_infotext(image.info["parameters"])


def test_taesd_encode_per_job_with_its_infotext_and_round_trip(server) -> None:
    """A1111's "VAE type for encode": the img2img image encoded by TAESD's encoder (other
    latents: other pixels), "VAE Encoder: TAESD" in the infotext, which asks for it again."""
    srv, _ = server
    full, full_info = _img2img(srv)
    draft, info = _img2img(srv, override_settings=TAESD_ENCODE)
    assert info["VAE Encoder"] == "TAESD" and "VAE Encoder" not in full_info
    assert "VAE Decoder" not in info  # the decoder stays the full VAE
    assert draft.shape == full.shape and not np.array_equal(draft, full)
    again, again_info = _img2img(srv, infotext=_infotext(info))
    assert again_info["VAE Encoder"] == "TAESD" and np.array_equal(again, draft)
    _, txt_info = _txt2img(srv, override_settings=TAESD_ENCODE)  # nothing to encode
    assert "VAE Encoder" not in txt_info


def test_missing_taesd_encoder_is_a_422_naming_file_and_folder(server) -> None:
    srv, data = server
    encoder = data / "models" / "VAE-approx" / "taesd_encoder.pth"
    moved = encoder.with_suffix(".moved")
    encoder.rename(moved)
    try:
        response = httpx.post(f"{srv.url}/sdapi/v1/txt2img", timeout=60,
                              json={**BODY, "override_settings": TAESD_ENCODE})  # fmt: skip
    finally:
        moved.rename(encoder)
    assert response.status_code == 422, response.text
    assert "sd_vae_encode_method" in response.text and "taesd_encoder" in response.text
