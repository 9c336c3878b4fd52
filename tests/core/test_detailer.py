"""The detailer (ADetailer): detect, mask, inpaint each region; its API and infotext.

One API server with the tiny SD 1.x checkpoint and two tiny YOLO-layout ONNX detectors
(`tests/tiny_detector.py`, run by OpenCV like a user's detector): "always.onnx" always
finds its box in the top-left corner, "red.onnx" finds a red square drawn in that box.
64x64 pictures, 2 steps.
"""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.conftest import ServerThread, with_tiny_sd1
from tests.tiny_detector import write_tiny_detector
from webui.app import create_app
from webui.core.params_detailer import (
    ADETAILER_VERSION,
    DetailerUnit,
    UnitError,
    infotext_fields,
    units_from_args,
    units_from_infotext,
)
from webui.imaging.detection import Detection, MaskSettings, region_masks
from webui.imaging.infotext import parse_infotext
from webui.settings import parse_flags

BOX = (8, 8, 32, 32)  # the detectors' box in a 64x64 picture (x 10 in their 640 input)
FAR = 46  # pixels at x >= FAR or y >= FAR are beyond the box, its dilation, blur, padding


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_files):
    root = with_tiny_sd1(tmp_path_factory.mktemp("detailer"), tiny_files)
    boxes = [(80, 80, 320, 320), (400, 400, 560, 560)]
    write_tiny_detector(root / "models" / "adetailer" / "always.onnx", boxes, [0.9, 0.0])
    write_tiny_detector(root / "models" / "adetailer" / "red.onnx", boxes)
    flags = parse_flags(["--api", "--nowebui", "--data-dir", str(root), "--no-download-sd-model"])
    with ServerThread(create_app(flags)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=300) as c:
        yield c


def body(**changes):
    return {"prompt": "a portrait", "negative_prompt": "blur", "steps": 2, "width": 64,
            "height": 64, "seed": 11, "sampler_name": "Euler", **changes}  # fmt: skip


def unit(**changes):
    return {"ad_model": "always.onnx", "ad_prompt": "a red face", "ad_denoising_strength": 1.0,
            **changes}  # fmt: skip


def decode(data: str) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
    return np.asarray(image).astype(int)


def far_from_box(a: np.ndarray) -> np.ndarray:
    return np.concatenate([a[:, FAR:].reshape(-1), a[FAR:, :FAR].reshape(-1)])


@pytest.fixture(scope="module")
def plain(client):
    response = client.post("/sdapi/v1/txt2img", json=body())
    assert response.status_code == 200, response.text
    return decode(response.json()["images"][0])


@pytest.fixture(scope="module")
def detailed(client):
    second = unit(ad_model="red.onnx", ad_prompt="", ad_confidence=0.5, ad_mask_blur=8)
    args = [True, False, unit(ad_inpaint_only_masked_padding=8), second]
    response = client.post("/sdapi/v1/txt2img",
                           json=body(alwayson_scripts={"ADetailer": {"args": args}}))  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()


def test_txt2img_inpaints_only_the_detected_region(plain, detailed):
    image = decode(detailed["images"][0])
    assert np.array_equal(far_from_box(image), far_from_box(plain))
    x1, y1, x2, y2 = BOX
    inside = np.abs(
        image[y1 + 4 : y2 - 4, x1 + 4 : x2 - 4] - plain[y1 + 4 : y2 - 4, x1 + 4 : x2 - 4]
    )
    assert inside.mean() > 5


def test_infotext_has_the_adetailer_fields_and_reads_back(detailed):
    infotext = json.loads(detailed["info"])["infotexts"][0]
    fields = parse_infotext(infotext)
    assert fields["ADetailer model"] == "always.onnx"
    assert fields["ADetailer prompt"] == "a red face"
    assert fields["ADetailer inpaint padding"] == 8
    assert fields["ADetailer model 2nd"] == "red.onnx"
    assert fields["ADetailer mask blur 2nd"] == 8
    assert fields["ADetailer version"] == ADETAILER_VERSION
    first, second = units_from_infotext(fields)
    assert first == DetailerUnit(ad_model="always.onnx", ad_prompt="a red face",
                                 ad_denoising_strength=1.0, ad_inpaint_only_masked_padding=8)  # fmt: skip
    assert second == DetailerUnit(ad_model="red.onnx", ad_confidence=0.5, ad_mask_blur=8,
                                  ad_denoising_strength=1.0)  # fmt: skip


def test_img2img_skip_img2img_details_the_drawn_square(client):
    picture = Image.new("RGB", (64, 64), (120, 130, 140))
    ImageDraw.Draw(picture).rectangle([8, 8, 31, 31], fill=(230, 30, 30))
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    init = base64.b64encode(buffer.getvalue()).decode()
    args = [True, True, unit(ad_model="red.onnx")]
    response = client.post("/sdapi/v1/img2img", json=body(
        init_images=[init], denoising_strength=0.75,
        alwayson_scripts={"adetailer": {"args": args}}))  # fmt: skip
    assert response.status_code == 200, response.text
    image = decode(response.json()["images"][0])
    original = np.asarray(picture).astype(int)
    assert np.array_equal(far_from_box(image), far_from_box(original))  # no img2img pass
    assert np.abs(image[12:28, 12:28] - original[12:28, 12:28]).mean() > 5


def test_disabled_or_none_writes_no_fields(client):
    for args in ([False, False, unit()], [unit(ad_model="None")]):
        response = client.post("/sdapi/v1/txt2img",
                               json=body(alwayson_scripts={"ADetailer": {"args": args}}))  # fmt: skip
        assert response.status_code == 200, response.text
        assert "ADetailer" not in json.loads(response.json()["info"])["infotexts"][0]


@pytest.mark.parametrize(
    ("args", "loc"),
    [
        ([True, False, unit(ad_model="face_yolov8n.pt")], [2, "ad_model"]),
        ([unit(ad_confidence=2)], [0, "ad_confidence"]),
        ([True, False, unit(), unit(ad_mask_merge_invert="Invert")], [3, "ad_mask_merge_invert"]),
        ([True, False, unit(ad_no_such_field=1)], [2, "ad_no_such_field"]),
        (
            [True, False, unit(ad_use_checkpoint=True, ad_checkpoint="other.safetensors")],
            [2, "ad_use_checkpoint"],
        ),
        ([True, False, unit(ad_restore_face=True)], [2, "ad_restore_face"]),
        ([True, False, "face"], [2]),
        ([True, False], []),
        ([unit(ad_use_sampler=True, ad_sampler="Warp drive")], []),
    ],
)
def test_bad_units_are_422_naming_the_field(client, args, loc):
    response = client.post("/sdapi/v1/txt2img",
                           json=body(alwayson_scripts={"ADetailer": {"args": args}}))  # fmt: skip
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "alwayson_scripts", "ADetailer", "args", *map(str, loc)]


def test_version_detector_list_and_script_info(client):
    assert client.get("/adetailer/v1/version").json() == {"version": ADETAILER_VERSION}
    assert client.get("/adetailer/v1/ad_model").json() == {"ad_model": ["always.onnx", "red.onnx"]}
    info = [i for i in client.get("/sdapi/v1/script-info").json() if i["name"] == "adetailer"]
    assert [i["is_img2img"] for i in info] == [False, True] and info[0]["is_alwayson"]
    assert [a["name"] for a in info[0]["args"]] == ["ad_enable", "skip_img2img", "unit1", "unit2"]
    assert info[0]["args"][2]["value"]["ad_denoising_strength"] == 0.4


def test_args_shapes_as_adetailer_takes_them():
    assert units_from_args({"ad_model": "a.onnx"}) == (True, False, (DetailerUnit("a.onnx"),))
    enabled, skip, units = units_from_args([False, True, {}, {"ad_model": "b.onnx"}])
    assert (enabled, skip, [u.ad_model for u in units]) == (False, True, ["None", "b.onnx"])
    with pytest.raises(UnitError):
        units_from_args("face")
    same = {"ad_model": "a.onnx", "ad_use_checkpoint": True, "ad_checkpoint": "Use same checkpoint",
            "ad_use_vae": True, "ad_vae": "Use same VAE", "ad_controlnet_module": "None"}  # fmt: skip
    assert units_from_args([same])[2] == (DetailerUnit("a.onnx"),)


def test_infotext_suffixes_and_defaults_left_out():
    fields = infotext_fields([DetailerUnit("a.onnx", ad_inpaint_only_masked=False),
                              DetailerUnit("None"), DetailerUnit("c.onnx", ad_use_steps=True)])  # fmt: skip
    assert "ADetailer inpaint padding" not in fields
    assert "ADetailer model 2nd" not in fields
    assert fields["ADetailer model 3rd"] == "c.onnx" and fields["ADetailer steps 3rd"] == 28
    assert "ADetailer mask only top k largest" not in fields
    assert list(fields)[-1] == "ADetailer version"


def test_masks_k_largest_dilate_merge_invert():
    small, big = Detection((0, 0, 4, 4), 0.9), Detection((10, 10, 30, 30), 0.5)
    (only,) = region_masks([small, big], (40, 40), MaskSettings(k_largest=1, dilate_erode=0))
    assert only.getbbox() == (10, 10, 31, 31)
    grown = region_masks([big], (40, 40), MaskSettings(dilate_erode=4))[0]
    assert grown.getbbox() == (9, 9, 33, 33)  # cv2: a 4x4 kernel grows 1 up-left, 2 down-right
    (inverted,) = region_masks(
        [small, big], (40, 40), MaskSettings(merge_invert="Merge and Invert")
    )
    assert inverted.getpixel((20, 20)) == 0 and inverted.getpixel((36, 2)) == 255


def test_units_survive_the_job_store():
    from webui.core import job_codec
    from webui.core.params import Txt2ImgParams

    params = Txt2ImgParams(adetailer=(DetailerUnit("a.onnx", model_path="/m/a.onnx"),),
                           adetailer_skip_img2img=True)  # fmt: skip
    assert job_codec.decode_params("txt2img", *job_codec.encode(params)) == params


def test_a_segmentation_export_is_read_by_its_boxes(tmp_path):
    from webui.imaging.detection import detect

    path = write_tiny_detector(tmp_path / "seg.onnx", [(80, 80, 320, 320)], seg=True)
    picture = Image.new("RGB", (64, 64), (120, 130, 140))
    assert detect(path, picture, 0.3) == []  # the mask coefficients (5.0) are no scores
    ImageDraw.Draw(picture).rectangle([8, 8, 31, 31], fill=(230, 30, 30))
    (found,) = detect(path, picture, 0.3)
    assert found.box == (8.0, 8.0, 32.0, 32.0) and found.confidence < 1


def test_a_region_job_takes_the_units_own_settings():
    from webui.core.detailer import region_params, unit_prompts
    from webui.core.params import Txt2ImgParams

    params = Txt2ImgParams(prompt="main", steps=20, cfg_scale=7, width=512, height=768,
                           sampler_name="Euler", clip_skip=1, batch_size=4)  # fmt: skip
    own = DetailerUnit("a.onnx", ad_use_inpaint_width_height=True, ad_inpaint_width=640,
                       ad_inpaint_height=640, ad_use_steps=True, ad_steps=9, ad_use_cfg_scale=True,
                       ad_cfg_scale=4.5, ad_use_sampler=True, ad_sampler="DDIM",
                       ad_use_clip_skip=True, ad_clip_skip=2, ad_use_noise_multiplier=True,
                       ad_noise_multiplier=1.1, ad_mask_blur=6, ad_denoising_strength=0.3,
                       ad_inpaint_only_masked_padding=16)  # fmt: skip
    image, mask = Image.new("RGB", (64, 64)), Image.new("L", (64, 64), 255)
    job = region_params(params, own, image, mask, "p", "n")
    assert (job.width, job.height, job.steps, job.cfg_scale) == (640, 640, 9, 4.5)
    assert (job.sampler_name, job.clip_skip, job.initial_noise_multiplier) == ("DDIM", 2, 1.1)
    assert (job.mask_blur_x, job.denoising_strength, job.inpaint_full_res_padding) == (6, 0.3, 16)
    assert (job.batch_size, job.inpainting_fill, job.inpaint_full_res) == (1, 1, True)
    same = region_params(params, DetailerUnit("a.onnx"), image, mask, "p", "n")
    assert (same.width, same.height, same.steps, same.sampler_name) == (512, 768, 20, "Euler")
    assert unit_prompts("a [SEP] [PROMPT], b [SEP]", "main") == ["a", " main , b", "main"]
