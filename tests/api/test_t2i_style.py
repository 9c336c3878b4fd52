"""The T2I style adapter as sd-webui-controlnet's API clients send it: preprocessor
`clip_vision` (label `t2ia_style_clipvision`) and `t2iadapter_style_sd14v1.pth` in
TencentARC's layout, with CLIP ViT-L/14 as models/clip_vision/clip_vitl.safetensors (tiny
ones); the tiny SD 1.x checkpoint, 64x64 images, 3 steps."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.api.test_controlnet import BODY, b64, pixels, shapes
from tests.conftest import ServerThread, with_tiny_sd1
from tests.tiny_clip_vision import save_tiny_clip_vision
from tests.tiny_style_adapter import save_tiny_style_adapter
from webui.app import create_app
from webui.model_manager.controlnet_files import legacy_hash
from webui.model_manager.tiny_adapters import save_tiny_t2i_adapter
from webui.settings import parse_flags

STYLE = "t2iadapter_style_sd14v1.pth"
CANNY = "t2iadapter_canny_sd15v2.pth"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_files):
    data = with_tiny_sd1(tmp_path_factory.mktemp("style"), tiny_files)
    folder = data / "models" / "ControlNet"
    save_tiny_style_adapter(folder / STYLE, seed=1)
    save_tiny_t2i_adapter(folder / CANNY, "sd1", seed=4)
    clip = save_tiny_clip_vision(tmp_path_factory.mktemp("clip"))["file"]
    (data / "models" / "clip_vision").mkdir(parents=True)
    clip.rename(data / "models" / "clip_vision" / "clip_vitl.safetensors")
    flags = parse_flags(["--api", "--nowebui", "--data-dir", str(data), "--no-download-sd-model"])
    app = create_app(flags)
    with ServerThread(app) as srv:
        srv.folder, srv.data, srv.ctx = folder, data, app.state.ctx
        yield srv


def label(server, name: str) -> str:
    return f"{(server.folder / name).stem} [{legacy_hash(server.folder / name)}]"


def reference() -> Image.Image:
    return Image.fromarray(np.random.default_rng(5).integers(0, 255, (48, 40, 3), np.uint8))


def style_unit(server, **fields) -> dict:
    return {"enabled": True, "module": "t2ia_style_clipvision", "image": b64(reference()),
            "model": label(server, STYLE), **fields}  # fmt: skip


def post(server, units: list | None, expect: int = 200, **extra) -> dict:
    body = {**BODY, **extra}
    if units is not None:
        body["alwayson_scripts"] = {"controlnet": {"args": units}}
    with httpx.Client(timeout=600) as client:
        response = client.post(f"{server.url}/sdapi/v1/txt2img", json=body)
    assert response.status_code == expect, response.text
    return response.json()


@pytest.fixture(scope="module")
def plain(server) -> np.ndarray:
    return pixels(post(server, None)["images"][0])


@pytest.fixture(scope="module")
def styled(server) -> dict:
    return post(server, [style_unit(server)])


def test_a_style_unit_changes_the_image(server, plain, styled):
    assert len(styled["images"]) == 1  # CLIP tokens: no detected map, as the extension
    image = pixels(styled["images"][0])
    assert np.abs(image - plain).mean() > 1
    info = json.loads(styled["info"])["infotexts"][0]
    assert f'ControlNet 0: "Module: clip_vision, Model: {label(server, STYLE)}, ' in info
    other = post(server, [{**style_unit(server), "image": b64(shapes())}])
    assert not np.array_equal(pixels(other["images"][0]), image)  # the image's style counts
    both = {"prompt": "a house AND a tree"}  # AND: every conditional row gets the tokens
    anded = pixels(post(server, [style_unit(server)], **both)["images"][0])
    assert np.abs(anded - pixels(post(server, None, **both)["images"][0])).mean() > 1


def test_weight_zero_equals_no_unit(server, plain):
    assert np.array_equal(pixels(post(server, [style_unit(server, weight=0)])["images"][0]), plain)


def test_ending_at_half_leaves_the_last_steps_unstyled(server, plain, styled):
    half = pixels(post(server, [style_unit(server, guidance_end=0.5)])["images"][0])
    assert not np.array_equal(half, pixels(styled["images"][0]))
    assert not np.array_equal(half, plain)


def test_with_hires_fix_and_a_t2i_adapter(server):
    hires = {"enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent", "denoising_strength": 0.5,
             "hr_second_pass_steps": 2}  # fmt: skip
    plain = pixels(post(server, None, **hires)["images"][0])
    styled = pixels(post(server, [style_unit(server)], **hires)["images"][0])
    assert styled.shape == plain.shape == (128, 128, 3) and np.abs(styled - plain).mean() > 1
    canny = {"enabled": True, "module": "canny", "image": b64(shapes()),
             "model": label(server, CANNY), "save_detected_map": False}  # fmt: skip
    alone = pixels(post(server, [canny])["images"][0])
    together = pixels(post(server, [style_unit(server), canny])["images"][0])
    assert not np.array_equal(together, alone)


def test_the_lists(server):
    style = label(server, STYLE)
    with httpx.Client(timeout=60, base_url=server.url) as client:
        models = client.get("/controlnet/model_list").json()["model_list"]
        types = client.get("/controlnet/control_types").json()["control_types"]
        aliases = client.get("/controlnet/module_list", params={"alias_names": True}).json()
    assert style in models
    assert style in types["T2I-Adapter"]["model_list"]
    assert "clip_vision" in types["T2I-Adapter"]["module_list"]
    assert "t2ia_style_clipvision" in aliases["module_list"]


def test_a_preprocessor_and_model_that_do_not_go_together(server):
    wrong = post(server, [style_unit(server, module="canny")], expect=422)["detail"][0]
    assert wrong["loc"][-1] == "module" and "t2ia_style_clipvision" in wrong["msg"]
    canny = style_unit(server, model=label(server, CANNY))
    wrong = post(server, [canny], expect=422)["detail"][0]
    assert wrong["loc"][-1] == "model" and "T2I style adapter" in wrong["msg"]


def test_a_missing_clip_vision_model_is_named(server, tmp_path):
    from webui.core.controlnet_units import unit_from_dict
    from webui.services.controlnet import resolve_model
    from webui.services.errors import RequestError

    unit = unit_from_dict({"enabled": True, "module": "clip_vision", "model": STYLE[:-4]})
    with pytest.raises(RequestError) as err:
        resolve_model(unit, server.folder, ("args", 0), clip_folder=tmp_path)
    assert "clip_vitl.pth" in str(err.value) and str(tmp_path) in str(err.value)


def test_the_ui_unit_gives_the_api_pixels(server, styled):
    from webui.core.params import Txt2ImgParams
    from webui.services.generation import GenerationRequest
    from webui.ui.controlnet_ui import controlnet_request

    sent = style_unit(server)
    shown = {**sent, "image": Image.open(io.BytesIO(base64.b64decode(sent["image"]))),
             "mask": None, "weight": 1.0, "resize_mode": "Crop and Resize", "processor_res": 512,
             "threshold_a": 1, "threshold_b": 1, "guidance_start": 0.0, "guidance_end": 1.0,
             "control_mode": "Balanced", "pixel_perfect": False}  # fmt: skip
    params = Txt2ImgParams(prompt="a house", negative_prompt="fog", steps=3, seed=7, width=64,
                           height=64, sampler_name="Euler", cfg_scale=5, save_images=False)  # fmt: skip
    values = {f"cn_{k}_0": v for k, v in shown.items()}
    job = server.ctx.generation.submit(
        GenerationRequest("txt2img", params, "ui-user", alwayson=controlnet_request(values))
    )
    assert job.done.wait(300)
    ui = np.asarray(job.images[0].image.convert("RGB"), np.int16)
    assert np.array_equal(ui, pixels(styled["images"][0]))
