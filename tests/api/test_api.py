"""Tests of the A1111-compatible REST API (/sdapi/v1) over real HTTP on 127.0.0.1.

One server (uvicorn in a thread) with a tiny SD 1.x checkpoint serves the whole module,
so the model loads once. Requests are what A1111 clients send: every field, every time.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from PIL import Image, ImageStat  # noqa: E402

from webui.app import create_app  # noqa: E402
from webui.imaging.infotext import parse_infotext  # noqa: E402
from webui.settings import parse_flags  # noqa: E402

SECRET = "s3cret-pw-123"
INFO_KEYS = (
    "prompt all_prompts negative_prompt all_negative_prompts seed all_seeds subseed "
    "all_subseeds subseed_strength width height sampler_name cfg_scale steps batch_size "
    "sd_model_name sd_model_hash sd_vae_name sd_vae_hash denoising_strength "
    "extra_generation_params index_of_first_image infotexts styles job_timestamp clip_skip "
    "is_using_inpainting_conditioning version"
).split()


def golden_payload(**changes: Any) -> dict[str, Any]:
    """Every txt2img field an A1111 client sends, with A1111's defaults where sensible."""
    payload: dict[str, Any] = {
        "prompt": "a red fox in the snow", "negative_prompt": "blurry", "styles": [],
        "seed": 1234, "subseed": -1, "subseed_strength": 0, "seed_resize_from_h": -1,
        "seed_resize_from_w": -1, "sampler_name": None, "scheduler": "automatic",
        "batch_size": 1, "n_iter": 1, "steps": 2, "cfg_scale": 7.0, "width": 64,
        "height": 64, "restore_faces": False, "tiling": False, "do_not_save_samples": False,
        "do_not_save_grid": False, "eta": None, "denoising_strength": 0.7,
        "override_settings": {}, "override_settings_restore_afterwards": True,
        "refiner_checkpoint": None, "refiner_switch_at": None, "disable_extra_networks": False,
        "enable_hr": False, "firstphase_width": 0, "firstphase_height": 0, "hr_scale": 2.0,
        "hr_upscaler": "Latent", "hr_second_pass_steps": 0, "hr_resize_x": 0, "hr_resize_y": 0,
        "hr_checkpoint_name": None, "hr_sampler_name": None, "hr_scheduler": None,
        "hr_prompt": "", "hr_negative_prompt": "", "force_task_id": None,
        "sampler_index": "Euler", "script_name": None, "script_args": [], "send_images": True,
        "save_images": False, "alwayson_scripts": {}, "infotext": None,
    }  # fmt: skip
    payload.update(changes)
    return payload


@dataclass
class Server:
    url: str
    client: httpx.Client
    data_dir: Path

    def api(self, path: str) -> str:
        return f"{self.url}/sdapi/v1{path}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _create_app(argv: list[str]) -> FastAPI:
    return create_app(parse_flags(argv))


def _serve(argv: list[str]) -> tuple[uvicorn.Server, threading.Thread, str]:
    app = _create_app(argv)
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


def _stop(server: uvicorn.Server, thread: threading.Thread) -> None:
    server.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from webui.model_manager.tiny import save_tiny_checkpoint

    data = tmp_path_factory.mktemp("api")
    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    save_tiny_checkpoint(folder / "tiny.safetensors", "sd1")
    argv = ["--api", "--nowebui", "--data-dir", str(data), "--no-download-sd-model",
            "--gradio-auth", f"alice:{SECRET}"]  # fmt: skip
    server, thread, url = _serve(argv)
    client = httpx.Client(timeout=300)
    try:
        yield Server(url, client, data)
    finally:
        client.close()
        _stop(server, thread)


def _post_txt2img(srv: Server, **changes: Any) -> httpx.Response:
    return srv.client.post(srv.api("/txt2img"), json=golden_payload(**changes))


def _decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def _loc_names(response: httpx.Response) -> list[str]:
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail, detail
    return [str(part) for item in detail for part in item["loc"]]


# --- txt2img ------------------------------------------------------------------------------


def test_golden_payload(srv: Server) -> None:
    response = _post_txt2img(srv)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"images", "parameters", "info"}
    assert len(body["images"]) == 1
    image = _decode(body["images"][0])
    assert image.format == "PNG" and image.size == (64, 64)
    params = parse_infotext(image.info["parameters"])
    assert params["Steps"] == 2
    assert params["Seed"] == 1234
    assert params["Size"] == "64x64"
    assert params["Model"] == "tiny"
    assert params["Sampler"] == "Euler"
    assert params["Prompt"] == "a red fox in the snow"
    assert params["Negative prompt"] == "blurry"
    info = json.loads(body["info"])
    missing = [key for key in INFO_KEYS if key not in info]
    assert not missing, missing
    assert info["seed"] == 1234 and info["all_seeds"] == [1234]
    assert info["sd_model_name"] == "tiny"
    assert info["infotexts"] == [image.info["parameters"]]
    assert body["parameters"]["sampler_index"] == "Euler"
    assert body["parameters"]["hr_upscaler"] == "Latent"


def test_same_seed_gives_same_pixels(srv: Server) -> None:
    first = _post_txt2img(srv, seed=777)
    second = _post_txt2img(srv, seed=777)
    assert first.status_code == second.status_code == 200
    a = _decode(first.json()["images"][0])
    b = _decode(second.json()["images"][0])
    assert a.tobytes() == b.tobytes()


def test_batch_and_legacy_sampler_name(srv: Server) -> None:
    response = _post_txt2img(srv, seed=10, n_iter=2, batch_size=1, sampler_index="Euler a")
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["all_seeds"] == [10, 11]
    assert len(response.json()["images"]) == 2
    assert info["sampler_name"] == "Euler a"


def test_override_settings_apply_to_the_job_only(srv: Server) -> None:
    before = srv.client.get(srv.api("/options")).json()["CLIP_stop_at_last_layers"]
    response = _post_txt2img(
        srv, override_settings={"CLIP_stop_at_last_layers": 2, "sd_vae": "Automatic"}
    )
    assert response.status_code == 200, response.text
    infotext = _decode(response.json()["images"][0]).info["parameters"]
    assert "Clip skip: 2" in infotext
    assert json.loads(response.json()["info"])["clip_skip"] == 2
    after = srv.client.get(srv.api("/options")).json()["CLIP_stop_at_last_layers"]
    assert before == after == 1


def test_outdir_samples_puts_images_in_that_folder(srv: Server, tmp_path) -> None:
    target = tmp_path / "elsewhere"
    response = _post_txt2img(
        srv, save_images=True, override_settings={"outdir_samples": str(target)}
    )
    assert response.status_code == 200, response.text
    (saved,) = target.glob("*/*.png")  # <outdir_samples>/<day>/NNNNN-....png
    assert saved.parent.name == dt.date.today().isoformat()
    assert (
        _decode(response.json()["images"][0]).tobytes()
        == _decode(base64.b64encode(saved.read_bytes()).decode()).tobytes()
    )


def _grid_files(srv: Server) -> set[Path]:
    return set((srv.data_dir / "outputs" / "txt2img-grids").glob("*/grid-*.png"))


def test_a_saved_batch_returns_its_grid_first(srv: Server) -> None:
    before = _grid_files(srv)
    response = _post_txt2img(srv, seed=20, batch_size=2, save_images=True)
    assert response.status_code == 200, response.text
    body = response.json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 3 and info["index_of_first_image"] == 1
    grid, first, second = (_decode(b) for b in body["images"])
    assert grid.size == (128, 64) and first.size == second.size == (64, 64)
    fields = parse_infotext(grid.info["parameters"])
    assert (fields["Seed"], fields["Size"], fields["Steps"]) == (20, "64x64", 2)
    assert grid.info["parameters"] == first.info["parameters"] == info["infotexts"][0]
    assert info["infotexts"][1:] == [first.info["parameters"], second.info["parameters"]]
    assert info["all_seeds"] == [20, 21]
    (saved,) = _grid_files(srv) - before  # outputs/txt2img-grids/<day>/grid-NNNN.png
    assert saved.parent.name == dt.date.today().isoformat()
    with Image.open(saved) as on_disk:
        assert on_disk.info["parameters"] == grid.info["parameters"]
        assert on_disk.convert("RGB").tobytes() == grid.convert("RGB").tobytes()


@pytest.mark.parametrize("changes", [{"save_images": True, "do_not_save_grid": True},
                                     {"save_images": False}])  # fmt: skip
def test_no_grid_with_do_not_save_grid_or_unsaved(srv: Server, changes: dict) -> None:
    before = _grid_files(srv)
    response = _post_txt2img(srv, seed=30, batch_size=2, **changes)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert len(response.json()["images"]) == 2 and info["index_of_first_image"] == 0
    assert _grid_files(srv) == before


def test_saving_options_through_the_api(srv: Server) -> None:
    options = srv.client.get(srv.api("/options")).json()
    assert (options["jpeg_quality"], options["grid_save"], options["save_to_dirs"]) == (
        80, True, True)  # fmt: skip
    assert options["directories_filename_pattern"] == "[date]"
    assert options["show_progress_type"] == "Approx cheap"
    for key, bad in [
        ("samples_filename_pattern", "[seed]-[nope]"),
        ("jpeg_quality", 0),
        ("directories_filename_pattern", "[date"),
        ("show_progress_type", "Approx NNN"),
    ]:
        response = srv.client.post(srv.api("/options"), json={key: bad})
        assert response.status_code == 422, (key, response.text)
        assert key in _loc_names(response)
    assert "unknown token [nope]" in srv.client.post(
        srv.api("/options"), json={"samples_filename_pattern": "[nope]"}).text  # fmt: skip
    response = _post_txt2img(srv, save_images=True, override_settings={
        "samples_filename_pattern": "[seed]-[nope]"})  # fmt: skip
    assert response.status_code == 422 and "samples_filename_pattern" in response.text


def test_scheduler_by_lowercase_name(srv: Server) -> None:
    response = _post_txt2img(srv, sampler_name="DPM++ 2M", scheduler="sgm_uniform")
    assert response.status_code == 200, response.text
    params = parse_infotext(_decode(response.json()["images"][0]).info["parameters"])
    assert params["Sampler"] == "DPM++ 2M" and params["Schedule type"] == "SGM Uniform"


def test_one_step_with_the_api_default_sampler(srv: Server) -> None:
    """Turbo models run at 1 step; the default sampler_index "Euler" (Uniform) takes it."""
    payload = golden_payload(steps=1, seed=5)
    assert payload["sampler_name"] is None and payload["sampler_index"] == "Euler"
    response = srv.client.post(srv.api("/txt2img"), json=payload)
    assert response.status_code == 200, response.text
    image = _decode(response.json()["images"][0])
    params = parse_infotext(image.info["parameters"])
    assert (params["Steps"], params["Sampler"], params["Schedule type"]) == (1, "Euler", "Uniform")
    assert max(ImageStat.Stat(image).stddev) > 1.0
    # A1111's one Uniform step is its one Simple step: from timestep 999 straight to 0.
    simple = _post_txt2img(srv, steps=1, seed=5, scheduler="simple")
    assert simple.status_code == 200, simple.text
    assert _decode(simple.json()["images"][0]).tobytes() == image.tobytes()


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ SDE", "LCM"])
def test_one_step_with_turbo_samplers(srv: Server, sampler: str) -> None:
    response = _post_txt2img(srv, steps=1, sampler_name=sampler, cfg_scale=1.0)
    assert response.status_code == 200, response.text  # NaN latents would fail the job
    image = _decode(response.json()["images"][0])
    params = parse_infotext(image.info["parameters"])
    assert (params["Steps"], params["Sampler"]) == (1, sampler)
    assert max(ImageStat.Stat(image).stddev) > 1.0


def test_infotext_fills_fields_not_sent(srv: Server) -> None:
    infotext = "a fox\nSteps: 2, Sampler: Euler, CFG scale: 5, Seed: 99, Size: 64x72, Clip skip: 2"
    response = srv.client.post(srv.api("/txt2img"), json={"infotext": infotext, "seed": 98})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert (info["prompt"], info["steps"], info["cfg_scale"]) == ("a fox", 2, 5)
    assert (info["width"], info["height"], info["seed"], info["clip_skip"]) == (64, 72, 98, 2)


def test_variation_seed_and_resize_seed_from(srv: Server) -> None:
    response = _post_txt2img(srv, seed=10, subseed=500, subseed_strength=0.25, batch_size=2,
                             seed_resize_from_w=48, seed_resize_from_h=80)  # fmt: skip
    assert response.status_code == 200, response.text
    images = [_decode(b) for b in response.json()["images"]]
    fields = [parse_infotext(image.info["parameters"]) for image in images]
    assert [f["Seed"] for f in fields] == [10, 10]  # A1111: the seed is shared
    assert [f["Variation seed"] for f in fields] == [500, 501]  # the variation seed counts
    assert fields[0]["Variation seed strength"] == 0.25
    assert fields[0]["Seed resize from"] == "48x80"
    info = json.loads(response.json()["info"])
    assert (info["seed"], info["all_seeds"]) == (10, [10, 10])
    assert (info["subseed"], info["all_subseeds"]) == (500, [500, 501])
    assert info["subseed_strength"] == 0.25
    assert (info["seed_resize_from_w"], info["seed_resize_from_h"]) == (48, 80)
    plain = _decode(_post_txt2img(srv, seed=10).json()["images"][0])
    assert plain.tobytes() != images[0].tobytes()
    # the infotext request field brings all of it back: the second image again, alone
    again = srv.client.post(srv.api("/txt2img"), json={"infotext": images[1].info["parameters"]})
    assert again.status_code == 200, again.text
    info = json.loads(again.json()["info"])
    assert (info["seed"], info["subseed"], info["subseed_strength"]) == (10, 501, 0.25)
    assert (info["seed_resize_from_w"], info["seed_resize_from_h"]) == (48, 80)
    alone = np.asarray(_decode(again.json()["images"][0]).convert("RGB"), dtype=np.int16)
    in_batch = np.asarray(images[1].convert("RGB"), dtype=np.int16)
    assert np.abs(alone - in_batch).max() <= 2  # batch of 1 vs 2: float rounding at most


def test_random_variation_seed_is_reported(srv: Server) -> None:
    response = _post_txt2img(srv, subseed=-1, subseed_strength=0.5)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    fields = parse_infotext(_decode(response.json()["images"][0]).info["parameters"])
    assert 0 <= info["subseed"] <= 4294967294
    assert fields["Variation seed"] == info["subseed"] == info["all_subseeds"][0]


def test_hires_extra_noise_from_override_settings(srv: Server) -> None:
    response = _post_txt2img(srv, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=1,
                             override_settings={"img2img_extra_noise": 0.2})  # fmt: skip
    assert response.status_code == 200, response.text
    fields = parse_infotext(_decode(response.json()["images"][0]).info["parameters"])
    assert fields["Extra noise"] == 0.2
    bad = _post_txt2img(srv, override_settings={"img2img_extra_noise": 3})
    assert bad.status_code == 422
    assert "img2img_extra_noise" in _loc_names(bad)


def test_send_images_false(srv: Server) -> None:
    response = _post_txt2img(srv, send_images=False)
    assert response.status_code == 200, response.text
    assert response.json()["images"] == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"width": 511}, "width"),
        ({"steps": 0}, "steps"),
        ({"sampler_name": "No Such Sampler"}, "sampler_name"),
        ({"sampler_index": "No Such Sampler"}, "sampler_index"),
        ({"scheduler": "no_such_schedule"}, "scheduler"),
        ({"override_settings": {"sd_model_checkpoint": "missing-model"}}, "sd_model_checkpoint"),
        ({"override_settings": {"CLIP_stop_at_last_layers": 99}}, "CLIP_stop_at_last_layers"),
        ({"n_iter": 0}, "n_iter"),
        ({"seed": "abc"}, "seed"),
        ({"script_name": "no such script"}, "script_name"),
    ],
)
def test_txt2img_422_names_the_field(srv: Server, changes: dict[str, Any], field: str) -> None:
    response = _post_txt2img(srv, **changes)
    assert response.status_code == 422, response.text
    assert field in _loc_names(response)


def test_nan_cfg_scale_is_422(srv: Server) -> None:
    text = json.dumps(golden_payload()).replace('"cfg_scale": 7.0', '"cfg_scale": NaN')
    assert "NaN" in text
    response = srv.client.post(
        srv.api("/txt2img"), content=text, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert "cfg_scale" in _loc_names(response)


def test_features_not_built_are_501(srv: Server) -> None:
    response = _post_txt2img(srv, restore_faces=True)  # built; no model file here: 422
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"][-1] == "restore_faces"
    assert "codeformer-v0.1.0.pth" in detail["msg"] and "Codeformer" in detail["msg"]
    response = srv.client.post(srv.api("/img2img"), json={"init_images": []})
    assert response.status_code == 422  # built (tests/core/test_img2img.py): names the field
    assert "init_images" in _loc_names(response)


# --- progress and interrupt ---------------------------------------------------------------


def _run_in_thread(srv: Server, **changes: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        out["response"] = _post_txt2img(srv, **changes)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_progress_rises_during_a_job(srv: Server) -> None:
    idle = srv.client.get(srv.api("/progress")).json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0
    thread, out = _run_in_thread(srv, steps=30, seed=5)
    seen: list[float] = []
    steps_seen: set[int] = set()
    previews = []
    while thread.is_alive():
        body = srv.client.get(srv.api("/progress")).json()
        seen.append(body["progress"])
        steps_seen.add(body["state"]["sampling_steps"])
        if body["current_image"]:
            previews.append(body["current_image"])
        time.sleep(0.01)
    thread.join()
    assert out["response"].status_code == 200
    moving = [p for p in seen if p > 0]
    assert len(set(moving)) >= 2, seen
    assert moving == sorted(moving), seen
    assert 30 in steps_seen
    if previews:
        assert _decode(previews[-1]).format == "PNG"


def test_interrupt_stops_the_running_job(srv: Server) -> None:
    thread, out = _run_in_thread(srv, steps=150, n_iter=3, seed=9)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if srv.client.get(srv.api("/progress")).json()["progress"] > 0:
            break
        time.sleep(0.01)
    assert srv.client.post(srv.api("/interrupt")).status_code == 200
    thread.join(120)
    response = out["response"]
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) < 3


# --- models, options, flags, info ---------------------------------------------------------


def test_model_lists(srv: Server) -> None:
    models = srv.client.get(srv.api("/sd-models")).json()
    assert [m["model_name"] for m in models] == ["tiny"]
    assert models[0]["filename"].endswith("tiny.safetensors")
    assert set(models[0]) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    samplers = srv.client.get(srv.api("/samplers")).json()
    assert "Euler" in [s["name"] for s in samplers]
    assert set(samplers[0]) == {"name", "aliases", "options"}
    schedulers = srv.client.get(srv.api("/schedulers")).json()
    names = {s["name"]: s["label"] for s in schedulers}
    assert names["automatic"] == "Automatic" and names["karras"] == "Karras"
    assert srv.client.post(srv.api("/refresh-checkpoints")).status_code == 200


def test_options_post_validates_and_saves(srv: Server) -> None:
    response = srv.client.post(srv.api("/options"), json={"show_progress_every_n_steps": -3})
    assert response.status_code == 422
    assert "show_progress_every_n_steps" in _loc_names(response)
    response = srv.client.post(
        srv.api("/options"), json={"show_progress_every_n_steps": 2, "not_an_option": 1}
    )
    assert response.status_code == 200, response.text
    assert srv.client.get(srv.api("/options")).json()["show_progress_every_n_steps"] == 2
    saved = json.loads((srv.data_dir / "config.json").read_text())
    assert saved["show_progress_every_n_steps"] == 2
    response = srv.client.post(srv.api("/options"), json={"sd_model_checkpoint": "nope"})
    assert response.status_code == 422
    assert "sd_model_checkpoint" in _loc_names(response)


def test_api_keys_in_options_never_leave_the_server(srv: Server) -> None:
    """The Civitai key and Hugging Face token are set through the options but read back
    masked; a client that posts every option it read back keeps the real key."""
    key = "civitai-secret-key-123"
    assert srv.client.post(srv.api("/options"), json={"civitai_api_key": key}).status_code == 200
    shown = srv.client.get(srv.api("/options")).json()
    assert shown["civitai_api_key"] == "********" and key not in json.dumps(shown)
    assert shown["huggingface_token"] == ""  # not set: nothing to hide
    assert srv.client.post(srv.api("/options"), json=shown).status_code == 200
    saved = json.loads((srv.data_dir / "config.json").read_text())
    assert saved["civitai_api_key"] == key
    srv.client.post(srv.api("/options"), json={"civitai_api_key": ""})


def test_cmd_flags_never_show_a_password(srv: Server) -> None:
    response = srv.client.get(srv.api("/cmd-flags"))
    assert response.status_code == 200
    assert SECRET not in response.text
    flags = response.json()
    assert flags["gradio_auth"] == "***"
    assert flags["api"] is True and flags["nowebui"] is True


def test_openapi_lists_the_routes(srv: Server) -> None:
    paths = srv.client.get(f"{srv.url}/openapi.json").json()["paths"]
    assert "/sdapi/v1/txt2img" in paths and "/sdapi/v1/progress" in paths
    schema = srv.client.get(f"{srv.url}/openapi.json").text
    assert '"sampler_index"' in schema


def test_memory(srv: Server) -> None:
    body = srv.client.get(srv.api("/memory")).json()
    assert body["ram"]["total"] > 0
    assert "cuda" in body


def test_png_info_round_trip(srv: Server) -> None:
    image_b64 = _post_txt2img(srv, seed=4321).json()["images"][0]
    response = srv.client.post(
        srv.api("/png-info"), json={"image": f"data:image/png;base64,{image_b64}"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "Seed: 4321" in body["info"]
    assert body["parameters"]["Seed"] == 4321 and body["parameters"]["Steps"] == 2


@pytest.mark.parametrize("data", ["not base64!!", base64.b64encode(b"not an image").decode()])
def test_png_info_bad_image_is_422(srv: Server, data: str) -> None:
    response = srv.client.post(srv.api("/png-info"), json={"image": data})
    assert response.status_code == 422, response.text
    assert "image" in _loc_names(response)


def test_reload_and_unload_checkpoint(srv: Server) -> None:
    assert srv.client.post(srv.api("/unload-checkpoint")).status_code == 200
    assert srv.client.post(srv.api("/reload-checkpoint")).status_code == 200
    assert _post_txt2img(srv).status_code == 200


# --- authentication -----------------------------------------------------------------------


def test_api_auth(tmp_path: Path) -> None:
    argv = ["--nowebui", "--data-dir", str(tmp_path), "--no-download-sd-model",
            "--api-auth", f"bob:{SECRET}"]  # fmt: skip
    server, thread, url = _serve(argv)
    try:
        with httpx.Client(timeout=30) as client:
            assert client.get(f"{url}/sdapi/v1/options").status_code == 401
            wrong = client.get(f"{url}/sdapi/v1/options", auth=("bob", "wrong"))
            assert wrong.status_code == 401
            ok = client.get(f"{url}/sdapi/v1/cmd-flags", auth=("bob", SECRET))
            assert ok.status_code == 200 and SECRET not in ok.text
    finally:
        _stop(server, thread)


@pytest.mark.parametrize(
    ("sampler", "schedule"),
    [
        ("DPM++ 3M SDE", "Automatic"),
        ("DPM++ 2S a", "Automatic"),
        ("Euler", "kl_optimal"),
        ("DPM++ 2M", "Align Your Steps"),
    ],
)
def test_new_samplers_and_schedules_round_trip_their_infotext(
    srv: Server, sampler: str, schedule: str
) -> None:
    expected = {
        ("DPM++ 3M SDE", "Automatic"): "Exponential", ("DPM++ 2S a", "Automatic"): "Karras",
        ("Euler", "kl_optimal"): "KL Optimal", ("DPM++ 2M", "Align Your Steps"): "Align Your Steps",
    }[sampler, schedule]  # fmt: skip
    assert sampler in [s["name"] for s in srv.client.get(srv.api("/samplers")).json()]
    listed = {s["label"]: s["name"] for s in srv.client.get(srv.api("/schedulers")).json()}
    assert listed["KL Optimal"] == "kl_optimal"
    assert listed["Align Your Steps"] == "align_your_steps"
    response = _post_txt2img(srv, steps=3, sampler_name=sampler, scheduler=schedule)
    assert response.status_code == 200, response.text
    image = _decode(response.json()["images"][0])
    text = image.info["parameters"]
    params = parse_infotext(text)
    assert (params["Sampler"], params["Schedule type"]) == (sampler, expected)
    again = srv.client.post(srv.api("/txt2img"), json={"infotext": text})
    assert again.status_code == 200, again.text
    assert _decode(again.json()["images"][0]).tobytes() == image.tobytes()
