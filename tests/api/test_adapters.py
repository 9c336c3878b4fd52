"""IP-Adapter and T2I-Adapter units as sd-webui-controlnet's API clients send them: one
server with the tiny SD 1.x checkpoint, tiny adapters in the original file layouts in
models/ControlNet, a tiny CLIP vision model as models/clip_vision/clip_h.safetensors;
64x64 images, 3 steps."""

from __future__ import annotations

import json
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image

from tests import controlnet_api
from tests.controlnet_api import b64, controlnet_server, label, picture, pixels, post, shapes
from tests.tiny_clip_vision import PROJECTION, WIDTH, save_tiny_clip_vision
from webui.model_manager.tiny_adapters import save_tiny_ip_adapter, save_tiny_t2i_adapter

IP = "ip-adapter_sd15.safetensors"
IP_PLUS = "ip-adapter-plus_sd15.safetensors"
T2I = "t2iadapter_canny_sd15v2.pth"  # TencentARC's layout
T2I_DIFFUSERS = "t2i-adapter_diffusers_canny.safetensors"  # the same weights, diffusers'
T2I_XL = "t2i-adapter_diffusers_xl_canny.safetensors"  # SDXL's (pixel unshuffle 16)
IP_XL = "ip-adapter_sdxl_vit-h.safetensors"


def _save_xl_t2i_adapter(path) -> None:
    from diffusers import T2IAdapter
    from safetensors.torch import save_file

    model = T2IAdapter(in_channels=3, channels=[32, 64, 64, 64], num_res_blocks=1,
                       downscale_factor=16, adapter_type="full_adapter_xl")  # fmt: skip
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_files):
    clip = save_tiny_clip_vision(tmp_path_factory.mktemp("clip"))["file"]

    def adapters(data) -> None:
        folder = data / "models" / "ControlNet"
        save_tiny_ip_adapter(folder / IP, "sd1", clip_projection=PROJECTION, seed=1)
        save_tiny_ip_adapter(folder / IP_PLUS, "sd1", clip_width=WIDTH, plus=True, seed=2)
        save_tiny_t2i_adapter(folder / T2I, "sd1", seed=4)
        save_tiny_t2i_adapter(folder / T2I_DIFFUSERS, "sd1", layout="diffusers", seed=4)
        _save_xl_t2i_adapter(folder / T2I_XL)
        save_tiny_ip_adapter(folder / IP_XL, "sdxl", clip_projection=PROJECTION, seed=5)
        checkpoints = data / "models" / "Stable-diffusion"
        shutil.copy(tiny_files["sdxl"], checkpoints / "tiny-sdxl.safetensors")
        (data / "models" / "clip_vision").mkdir(parents=True)
        clip.rename(data / "models" / "clip_vision" / "clip_h.safetensors")

    with controlnet_server(tmp_path_factory.mktemp("adapters"), tiny_files, adapters) as srv:
        yield srv


def reference() -> Image.Image:
    return Image.fromarray(np.random.default_rng(3).integers(0, 255, (48, 40, 3), np.uint8))


def ip_unit(server, name: str = IP, **fields) -> dict:
    return {"enabled": True, "module": "ip-adapter_clip_sd15", "image": b64(reference()),
            "model": label(server, name), **fields}  # fmt: skip


def generate(server, units: list | None, route: str = "txt2img", expect: int = 200, **extra):
    extra = {"override_settings": {"sd_model_checkpoint": "tiny-sd1"}, **extra}
    return controlnet_api.generate(server, units, route, expect, **extra)


@pytest.fixture(scope="module")
def plain(server) -> np.ndarray:
    return pixels(generate(server, None)["images"][0])


@pytest.fixture(scope="module")
def ip_guided(server) -> dict:
    return generate(server, [ip_unit(server)])


def test_an_ip_adapter_unit_changes_the_image(server, plain, ip_guided):
    assert len(ip_guided["images"]) == 1  # CLIP embeddings: no detected map
    assert np.abs(pixels(ip_guided["images"][0]) - plain).mean() > 1
    info = json.loads(ip_guided["info"])["infotexts"][0]
    assert f'ControlNet 0: "Module: ip-adapter_clip_sd15, Model: {label(server, IP)}, ' in info
    plus = generate(server, [ip_unit(server, IP_PLUS, weight=0.8, guidance_end=0.5)])
    image = pixels(plus["images"][0])
    assert np.abs(image - plain).mean() > 1
    assert not np.array_equal(image, pixels(ip_guided["images"][0]))
    # AND: the prompt hooks' rows [uncond, cond 1, cond 2] get their image tokens
    both = {"prompt": "a house AND a tree"}
    anded = pixels(generate(server, [ip_unit(server)], **both)["images"][0])
    assert np.abs(anded - pixels(generate(server, None, **both)["images"][0])).mean() > 1


def test_ip_adapter_weight_zero_equals_no_unit(server, plain):
    result = generate(server, [ip_unit(server, weight=0)])
    assert len(result["images"]) == 1
    assert np.array_equal(pixels(result["images"][0]), plain)


def test_an_sdxl_ip_adapter_unit(server):
    """ip-adapter_sdxl_vit-h with the ViT-H encoder on an SDXL checkpoint."""
    sdxl = {"override_settings": {"sd_model_checkpoint": "tiny-sdxl"}}
    plain = pixels(generate(server, None, **sdxl)["images"][0])
    unit = ip_unit(server, IP_XL, module="ip-adapter_clip_sdxl_plus_vith")
    guided = pixels(generate(server, [unit], **sdxl)["images"][0])
    assert np.abs(guided - plain).mean() > 1
    off = generate(server, [{**unit, "weight": 0}], **sdxl)
    assert np.array_equal(pixels(off["images"][0]), plain)
    response = post(server, [t2i_unit(server)], **sdxl)  # an SD 1.x T2I-Adapter: a clear error
    assert response.status_code >= 400 and "is made for SD 1.x" in response.text


def test_ip_adapter_auto_runs_the_preprocessor_of_the_model(server, ip_guided):
    """ip-adapter-auto (the extension's default for IP-Adapter) is the ip-adapter_clip_*
    preprocessor of the model's encoder: the same pixels, and the infotext names it."""
    auto = generate(server, [ip_unit(server, module="ip-adapter-auto")])
    assert np.array_equal(pixels(auto["images"][0]), pixels(ip_guided["images"][0]))
    assert '"Module: ip-adapter_clip_sd15, ' in json.loads(auto["info"])["infotexts"][0]
    sdxl = {"override_settings": {"sd_model_checkpoint": "tiny-sdxl"}}
    units = [ip_unit(server, IP_XL, module=m)
             for m in ("ip-adapter-auto", "ip-adapter_clip_sdxl_plus_vith")]  # fmt: skip
    auto, named = (pixels(generate(server, [u], **sdxl)["images"][0]) for u in units)
    assert np.array_equal(auto, named)  # "vit-h" in its name: ViT-H, not SDXL's bigG
    wrong = generate(server, [t2i_unit(server, module="ip-adapter-auto")], expect=422)
    assert wrong["detail"][0]["loc"][-1] == "model" and "IP-Adapter" in wrong["detail"][0]["msg"]


def test_ip_adapter_checks(server):
    missing = generate(server, [ip_unit(server, module="ip-adapter_clip_sdxl")], expect=422)
    detail = missing["detail"][0]
    assert detail["loc"][-1] == "module"
    assert "clip_g.pth" in detail["msg"] and str(server.data / "models" / "clip_vision") in (
        detail["msg"]
    )  # fmt: skip
    wrong = generate(server, [ip_unit(server, module="canny")], expect=422)
    assert wrong["detail"][0]["loc"][-1] == "module" and "IP-Adapter" in wrong["detail"][0]["msg"]


def t2i_unit(server, name: str = T2I, **fields) -> dict:
    return {"enabled": True, "module": "canny", "image": b64(shapes()), "model": label(server, name),
            **fields}  # fmt: skip


@pytest.fixture(scope="module")
def t2i_guided(server) -> dict:
    return generate(server, [t2i_unit(server)])


def test_a_t2i_adapter_unit_changes_the_image(server, plain, t2i_guided):
    images = t2i_guided["images"]
    assert len(images) == 2  # the image, then the canny map
    assert np.abs(pixels(images[0]) - plain).mean() > 1
    assert pixels(images[1]).max() == 255
    info = json.loads(t2i_guided["info"])["infotexts"][0]
    assert f'ControlNet 0: "Module: canny, Model: {label(server, T2I)}, Weight: 1.0, ' in info
    same = generate(server, [t2i_unit(server, T2I_DIFFUSERS)])  # diffusers' layout
    assert np.array_equal(pixels(same["images"][0]), pixels(images[0]))
    late = generate(server, [t2i_unit(server, guidance_start=0.5, save_detected_map=False)])
    late_image = pixels(late["images"][0])
    assert not np.array_equal(late_image, pixels(images[0]))
    assert not np.array_equal(late_image, plain)


def test_t2i_adapter_weight_zero_equals_no_unit(server, plain):
    result = generate(server, [t2i_unit(server, weight=0, save_detected_map=False)])
    assert np.array_equal(pixels(result["images"][0]), plain)


@pytest.mark.parametrize("kind", ["ip", "t2i"])
def test_the_ui_unit_gives_the_api_pixels(server, kind, request):
    """The accordion's values as the page sends them (PIL images) make the API's image."""
    from webui.core.params import Txt2ImgParams
    from webui.services.generation import GenerationRequest
    from webui.ui.controlnet_ui import controlnet_request

    api = request.getfixturevalue(f"{kind}_guided")
    sent = ip_unit(server) if kind == "ip" else t2i_unit(server)
    image = picture(sent["image"])
    shown = {**sent, "image": image, "mask": None, "weight": 1.0,
             "resize_mode": "Crop and Resize", "processor_res": 512,
             "threshold_a": 100 if kind == "t2i" else 1, "threshold_b": 200 if kind == "t2i" else 1,
             "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": "Balanced",
             "pixel_perfect": False}  # fmt: skip
    values = {f"cn_{k}_0": v for k, v in shown.items()}
    params = Txt2ImgParams(prompt="a house", negative_prompt="fog", steps=3, seed=7, width=64,
                           height=64, sampler_name="Euler", cfg_scale=5, save_images=False)  # fmt: skip
    job = server.ctx.generation.submit(
        GenerationRequest("txt2img", params, "ui-user", alwayson=controlnet_request(values))
    )
    assert job.done.wait(300)
    ui = np.asarray(job.images[0].image.convert("RGB"), np.int16)
    assert np.array_equal(ui, pixels(api["images"][0]))


def test_the_lists_show_adapters_by_control_type_and_family(server):
    from webui.services.controlnet import model_choices

    ip, plus = label(server, IP), label(server, IP_PLUS)
    t2i, t2i_d, t2i_xl = (label(server, n) for n in (T2I, T2I_DIFFUSERS, T2I_XL))
    with httpx.Client(timeout=60, base_url=server.url) as client:
        models = client.get("/controlnet/model_list").json()["model_list"]
        types = client.get("/controlnet/control_types").json()["control_types"]
        modules = client.get("/controlnet/module_list", params={"alias_names": True}).json()
    assert {ip, plus, t2i, t2i_d, t2i_xl} <= set(models)
    ip_type = types["IP-Adapter"]
    assert ip_type["model_list"] == ["None", plus, ip]  # the SD 1.x checkpoint's, by name
    assert ip_type["default_option"] == "ip-adapter-auto" and ip_type["default_model"] == plus
    assert {"ip-adapter_clip_sd15", "ip-adapter_clip_sdxl", "ip-adapter_clip_sdxl_plus_vith",
            "ip-adapter-auto"} <= (
        set(ip_type["module_list"])
    )  # fmt: skip
    assert types["T2I-Adapter"]["model_list"] == ["None", t2i_d, t2i]  # not SDXL's
    assert "ip-adapter_clip_h" in modules["module_list"]  # the extension's label
    folder = server.folder
    assert model_choices(folder, "T2I-Adapter", "SD 1.x") == ["None", t2i_d, t2i]
    assert model_choices(folder, "T2I-Adapter", "SDXL") == ["None", t2i_xl]
    assert model_choices(folder, "IP-Adapter", "SDXL") == ["None", label(server, IP_XL)]
    assert model_choices(folder, "Canny", "SD 1.x") == ["None", t2i_d, t2i]  # names with canny


def test_controlnet_is_more_important_without_unconditional_rows(server):
    """CFG 1 with AND runs [cond 1, cond 2] rows (no unconditional rows): "ControlNet is
    more important" then guides every row with the soft weights, as "My prompt is more
    important" does for a T2I-Adapter (and unlike "Balanced": the weight alone)."""
    cfg1 = {"cfg_scale": 1, "prompt": "a house AND a tree"}
    balanced = generate(server, [t2i_unit(server, save_detected_map=False)], **cfg1)
    prompt = generate(server, [t2i_unit(server, control_mode=1, save_detected_map=False)], **cfg1)
    more = generate(server, [t2i_unit(server, control_mode=2, save_detected_map=False)], **cfg1)
    assert np.array_equal(pixels(more["images"][0]), pixels(prompt["images"][0]))
    assert not np.array_equal(pixels(more["images"][0]), pixels(balanced["images"][0]))
