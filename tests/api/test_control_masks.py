"""A unit's masks as sd-webui-controlnet's API clients send them: `effective_region_mask`
(white: where a ControlNet, T2I-Adapter or IP-Adapter unit acts) and the image's `mask`
(an IP-Adapter's CLIP mask; another map module's "canvas scribble" input). One server with
the tiny SD 1.x checkpoint, a tiny ControlNet, T2I-Adapter, IP-Adapter and CLIP vision
model; 64x64 images, 3 steps."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests import controlnet_api
from tests.controlnet_api import b64, controlnet_server, label, pixels, post, shapes
from tests.tiny_clip_vision import PROJECTION, save_tiny_clip_vision
from webui.model_manager.tiny_adapters import save_tiny_ip_adapter, save_tiny_t2i_adapter
from webui.model_manager.tiny_controlnet import save_tiny_controlnet

CANNY = "control_tiny_canny.safetensors"
T2I = "t2iadapter_canny_sd15v2.pth"
IP = "ip-adapter_sd15.safetensors"
# the region: the left quarter; the tiny UNet's attention spreads a change over the
# whole 8x8 latent, so the check is "closer to no unit", away from the region's edge
LEFT = np.s_[:, :12]
RIGHT = np.s_[:, 40:]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_files):
    clip = save_tiny_clip_vision(tmp_path_factory.mktemp("clip"))["file"]

    def models(data) -> None:
        folder = data / "models" / "ControlNet"
        save_tiny_controlnet(folder / CANNY, "sd1", seed=1)
        save_tiny_t2i_adapter(folder / T2I, "sd1", seed=4)
        save_tiny_ip_adapter(folder / IP, "sd1", clip_projection=PROJECTION, seed=1)
        (data / "models" / "clip_vision").mkdir(parents=True)
        clip.rename(data / "models" / "clip_vision" / "clip_h.safetensors")

    with controlnet_server(tmp_path_factory.mktemp("masks"), tiny_files, models) as srv:
        yield srv


def left_quarter() -> Image.Image:
    mask = np.zeros((64, 64), np.uint8)
    mask[:, :16] = 255
    return Image.fromarray(mask)


def reference() -> Image.Image:
    return Image.fromarray(np.random.default_rng(3).integers(0, 255, (48, 40, 3), np.uint8))


def unit(server, kind: str, **fields) -> dict:
    if kind == "ip":
        base = {"module": "ip-adapter_clip_sd15", "image": b64(reference()), "model": IP}
    else:
        base = {"module": "canny", "image": b64(shapes()), "model": CANNY if kind == "cn" else T2I}
    base["model"] = label(server, base["model"])
    return {"enabled": True, "save_detected_map": False, **base, **fields}


def image(server, units: list | None, **extra) -> np.ndarray:
    result = controlnet_api.generate(server, units, **extra)
    return pixels(result["images"][0])


@pytest.fixture(scope="module")
def plain(server) -> np.ndarray:
    return image(server, None)


@pytest.mark.parametrize("kind", ["cn", "t2i", "ip"])
def test_a_region_mask_keeps_the_unit_inside_it(server, plain, kind):
    whole = image(server, [unit(server, kind, weight=2.0 if kind == "ip" else 1.0)])
    masked = image(server, [unit(server, kind, weight=2.0 if kind == "ip" else 1.0,
                                 effective_region_mask=b64(left_quarter()))])  # fmt: skip
    assert np.abs(whole - plain).mean() > 1
    assert not np.array_equal(masked, whole)
    # outside the mask the masked unit leaves the image closer to no unit than the unit
    outside, unmasked = np.abs(masked - plain)[RIGHT].mean(), np.abs(whole - plain)[RIGHT].mean()
    assert outside < 0.8 * unmasked, (outside, unmasked)
    # inside, the unit still acts
    assert np.abs(masked - plain)[LEFT].mean() > 0.3 * np.abs(whole - plain)[LEFT].mean()
    white = Image.new("L", (64, 64), 255)
    assert np.array_equal(image(server, [unit(server, kind, weight=2.0 if kind == "ip" else 1.0,
                                              effective_region_mask=b64(white))]), whole)  # fmt: skip


def test_the_ip_adapter_clip_mask_blanks_its_reference(server):
    whole = image(server, [unit(server, "ip")])
    black = Image.new("L", reference().size, 0)
    assert np.array_equal(image(server, [unit(server, "ip", mask=b64(black))]), whole)
    half = Image.new("L", reference().size, 0)
    half.paste(255, (0, 0, 20, 48))
    for key in ("mask", "mask_image"):
        assert not np.array_equal(image(server, [unit(server, "ip", **{key: b64(half)})]), whole)


def test_a_maps_unit_mask_is_its_scribble_input(server):
    scribble = Image.new("L", (64, 64), 0)
    scribble.paste(255, (8, 8, 56, 24))
    fields = {"model": "None", "save_detected_map": True}
    drawn = controlnet_api.generate(server, [unit(server, "cn", mask=b64(scribble), **fields)])
    given = controlnet_api.generate(
        server, [unit(server, "cn", image=b64(scribble.convert("RGB")), **fields)]
    )
    assert np.array_equal(pixels(drawn["images"][-1]), pixels(given["images"][-1]))
    plain_map = controlnet_api.generate(server, [unit(server, "cn", **fields)])
    assert not np.array_equal(pixels(plain_map["images"][-1]), pixels(drawn["images"][-1]))
    # the extension: an all-white (or all-black) alpha is no scribble: the image is used
    white = unit(server, "cn", mask=b64(Image.new("L", (64, 64), 255)), **fields)
    assert np.array_equal(pixels(controlnet_api.generate(server, [white])["images"][-1]),
                          pixels(plain_map["images"][-1]))  # fmt: skip


def test_mask_checks(server):
    response = post(server, [unit(server, "cn", image=None, mask=b64(left_quarter()))])
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] == "mask"
    bad = post(server, [unit(server, "cn", effective_region_mask="not an image")])
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"][-1] == "effective_region_mask"
