"""Soft inpainting (A1111 1.7's mask-aware blending) and img2img's `latent_mask`.

One server with the tiny SD 1.x checkpoints (plain and 9-channel inpainting) serves the
module; 64x64, 3 steps.
"""

from __future__ import annotations

import base64
import io
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import ServerThread
from webui.app import create_app
from webui.core.params_img2img import Img2ImgParams
from webui.core.soft_inpainting import SoftInpainting
from webui.imaging.infotext import parse_infotext, read_infotext_from_image
from webui.settings import parse_flags


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_files):
    data = tmp_path_factory.mktemp("soft-inpaint")
    ckpt = data / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    shutil.copy(tiny_files["sd1"], ckpt / "tiny-sd1.safetensors")
    shutil.copy(tiny_files["sd1-inpaint"], ckpt / "tiny-sd1-inpaint.safetensors")
    flags = parse_flags(["--api", "--nowebui", "--data-dir", str(data), "--no-download-sd-model"])
    app = create_app(flags)
    with ServerThread(app) as srv:
        srv.ctx = app.state.ctx  # for jobs submitted as the UI does
        yield srv


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def square_mask(box, size=(64, 64)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def post(server, **body) -> httpx.Response:
    payload = {
        "prompt": "moss",
        "steps": 3,
        "width": 64,
        "height": 64,
        "seed": 3,
        "init_images": [b64(noise(64, 64))],
        "sampler_name": "Euler",
        "denoising_strength": 1.0,
        "inpainting_fill": 1,
        "inpaint_full_res": False,
        "mask_blur": 0,
        "override_settings": {"sd_model_checkpoint": "tiny-sd1"},
        **body,
    }
    with httpx.Client(timeout=300) as client:
        return client.post(f"{server.url}/sdapi/v1/img2img", json=payload)


def image_of(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


# --- latent_mask ---------------------------------------------------------------------------


def test_latent_mask_drives_the_latent_blending(server):
    """A black latent mask puts the original latents back at every step (the last one
    without noise): the repainted area no longer depends on the seed, while with only
    `mask` it does. The composite still follows `mask` (outside it: the original)."""
    mask = b64(square_mask((16, 16, 48, 48)))
    black = b64(Image.new("L", (64, 64), 0))
    kept = [arr(image_of(post(server, mask=mask, latent_mask=black, seed=s))) for s in (3, 4)]
    free = [arr(image_of(post(server, mask=mask, seed=s))) for s in (3, 4)]
    inside = (slice(16, 48), slice(16, 48))
    assert np.array_equal(kept[0][inside], kept[1][inside])
    assert np.abs(free[0][inside] - free[1][inside]).mean() > 1
    assert np.array_equal(kept[0][:8], arr(noise(64, 64))[:8])  # outside the mask


def test_mask_round_off_blends_by_the_grey_mask_as_it_is(server):
    """A1111's mask_round: a grey latent mask (100/255) rounds to 0, so every step puts the
    original back and the seed does not matter; with mask_round false the grey weight
    blends each step's prediction in, so the repainted area depends on the seed."""
    mask = b64(square_mask((16, 16, 48, 48)))
    grey = b64(Image.new("L", (64, 64), 100))
    inside = (slice(16, 48), slice(16, 48))
    for mask_round, seed_matters in ((True, False), (False, True)):
        images = [arr(image_of(post(server, mask=mask, latent_mask=grey, seed=s,
                                    mask_round=mask_round))) for s in (3, 4)]  # fmt: skip
        differs = np.abs(images[0][inside] - images[1][inside]).mean() > 1
        assert differs == seed_matters, mask_round
        assert np.array_equal(images[0][:8], arr(noise(64, 64))[:8])  # outside the mask


def test_bad_latent_mask_is_422(server):
    response = post(server, mask=b64(square_mask((0, 0, 8, 8))), latent_mask="***")
    assert response.status_code == 422, response.text
    assert "latent_mask" in response.text
    small = b64(Image.new("L", (32, 32), 255))
    response = post(server, mask=b64(square_mask((0, 0, 8, 8))), latent_mask=small)
    assert response.status_code == 422 and "latent_mask" in response.text
    response = post(server, latent_mask=b64(Image.new("L", (64, 64), 255)))  # no mask
    assert response.status_code == 422 and "latent_mask" in response.text


# --- soft inpainting -----------------------------------------------------------------------

SOFT_KEY = "soft inpainting"


def soft(*args) -> dict:
    return {SOFT_KEY: {"args": [True, *args]}}


def test_soft_inpainting_zero_preservation_follows_the_denoiser_everywhere(server):
    """Preservation strength 0: the blend weight mask**0 is 1 everywhere, so no original
    latent is put back at any step, even outside the mask (hard inpainting puts them all
    back there); the composite then keeps the original only where the latents moved
    little. With difference threshold 0 every pixel is the model's: the result equals plain
    img2img of the whole image (same seed, same noise)."""
    mask = b64(square_mask((16, 16, 48, 48)))
    everywhere = arr(image_of(post(server, mask=mask, alwayson_scripts=soft(1, 0, 4, 0, 0, 2))))
    whole = arr(image_of(post(server)))  # no mask: img2img of the whole image
    assert np.abs(everywhere - whole).max() <= 1
    hard = arr(image_of(post(server, mask=mask)))
    assert np.abs(hard[:8] - arr(noise(64, 64))[:8]).max() <= 1  # hard: original outside
    assert np.abs(everywhere[:8] - arr(noise(64, 64))[:8]).mean() > 5


def test_soft_inpainting_keeps_the_original_where_the_mask_is_black(server):
    """Default settings: where the mask is 0 the blend weight is 0 at every step, so the
    latents there stay the original's and the composite keeps its pixels (the latent
    difference is dilated by 2 latent pixels, the composite mask blurred by 4 pixels);
    inside the mask the result differs from hard inpainting's."""
    mask = square_mask((32, 32, 64, 64))
    response = post(server, mask=b64(mask), alwayson_scripts=soft())
    image = arr(image_of(response))
    assert np.abs(image[:8] - arr(noise(64, 64))[:8]).max() <= 1
    hard = arr(image_of(post(server, mask=b64(mask))))
    assert np.abs(image[32:, 32:] - hard[32:, 32:]).mean() > 1
    fields = parse_infotext(read_infotext_from_image(image_of(response)))
    assert fields["Soft inpainting enabled"] is True or fields["Soft inpainting enabled"] == "True"
    assert fields["Soft inpainting schedule bias"] == 1
    assert fields["Soft inpainting preservation strength"] == 0.5
    assert fields["Soft inpainting transition contrast boost"] == 4
    assert fields["Soft inpainting mask influence"] == 0
    assert fields["Soft inpainting difference threshold"] == 0.5
    assert fields["Soft inpainting difference contrast"] == 2


def test_soft_inpainting_api_key_case_args_and_infotext(server):
    mask = b64(square_mask((16, 16, 48, 48)))
    given = {"Soft Inpainting": {"args": [True, 2, 1.5]}}  # A1111 matches the title's case too
    fields = parse_infotext(read_infotext_from_image(
        image_of(post(server, mask=mask, alwayson_scripts=given))))  # fmt: skip
    assert fields["Soft inpainting schedule bias"] == 2
    assert fields["Soft inpainting preservation strength"] == 1.5
    assert fields["Soft inpainting difference contrast"] == 2  # not sent: the default
    off = parse_infotext(read_infotext_from_image(image_of(
        post(server, mask=mask, alwayson_scripts={SOFT_KEY: {"args": [False, 2]}}))))  # fmt: skip
    assert "Soft inpainting enabled" not in off
    text = (
        "moss\nSteps: 3, Seed: 3, Soft inpainting enabled: True, Soft inpainting schedule bias: 3"
    )
    again = parse_infotext(read_infotext_from_image(image_of(
        post(server, mask=mask, infotext=text))))  # fmt: skip
    assert again["Soft inpainting schedule bias"] == 3


@pytest.mark.parametrize(
    "body",
    [
        {"alwayson_scripts": soft(9)},  # schedule bias above 8
        {"alwayson_scripts": soft("x")},
        {"alwayson_scripts": {SOFT_KEY: {"args": "yes"}}},
        {"alwayson_scripts": {SOFT_KEY: {"args": [True, 1, 1, 1, 1, 1, 1, 1]}}},
        {"alwayson_scripts": soft(), "mask": None},  # no mask: nothing to inpaint softly
    ],
)
def test_bad_soft_inpainting_is_422(server, body):
    payload = {"mask": b64(square_mask((16, 16, 48, 48))), **body}
    response = post(server, **payload)
    assert response.status_code == 422, response.text
    locs = [item["loc"] for item in response.json()["detail"]]
    assert ["body", "alwayson_scripts", SOFT_KEY, "args"] in locs


def test_script_info_lists_soft_inpainting(server):
    info = httpx.get(f"{server.url}/sdapi/v1/script-info", timeout=60).json()
    (soft_info,) = [i for i in info if i["name"] == SOFT_KEY]
    assert soft_info["is_alwayson"] and soft_info["is_img2img"]
    labels = [a["label"] for a in soft_info["args"]]
    assert labels == ["Soft inpainting", "Schedule bias", "Preservation strength",
                      "Transition contrast boost", "Mask influence", "Difference threshold",
                      "Difference contrast"]  # fmt: skip
    assert [a["value"] for a in soft_info["args"]] == [False, 1, 0.5, 4, 0, 0.5, 2]


def test_soft_inpainting_only_masked_on_a_nine_channel_model(server):
    """ "Only masked" pastes the soft composite back where it was cut out: far from the
    crop the original stays; a 9-channel model is conditioned on the mask as usual."""
    settings = {"sd_model_checkpoint": "tiny-sd1-inpaint"}
    response = post(server, mask=b64(square_mask((40, 40, 56, 56))), mask_blur=2,
                    inpaint_full_res=True, inpaint_full_res_padding=4,
                    alwayson_scripts=soft(), override_settings=settings)  # fmt: skip
    image = arr(image_of(response))
    assert image.shape == (64, 64, 3)
    assert np.array_equal(image[:24], arr(noise(64, 64))[:24])
    assert np.abs(image[40:56, 40:56] - arr(noise(64, 64))[40:56, 40:56]).mean() > 1


def test_soft_inpainting_over_a_batch_folder_with_masks(server, tmp_path):
    """The img2img tab's Batch with a mask directory: every image is inpainted softly."""
    source, masks = tmp_path / "in", tmp_path / "masks"
    source.mkdir(), masks.mkdir()
    noise(64, 64, seed=4).save(source / "a.png")
    square_mask((32, 32, 64, 64)).save(masks / "a.png")
    params = Img2ImgParams(
        prompt="moss", steps=3, width=64, height=64, seed=3, denoising_strength=1.0,
        mask_blur_x=0, mask_blur_y=0, checkpoint="tiny-sd1", save_images=False,
        batch_input_dir=str(source), batch_mask_dir=str(masks),
        soft_inpainting=SoftInpainting(mask_blend_power=2),
    ).validated().with_seed()  # fmt: skip
    job = server.ctx.jobs.submit("img2img", params, owner="test")
    assert job.done.wait(300) and job.state == "done", job.error
    (image,) = job.result.images
    fields = parse_infotext(image.infotext)
    assert fields["Soft inpainting schedule bias"] == 2
    assert np.abs(arr(image.image)[:8] - arr(noise(64, 64, seed=4))[:8]).max() <= 1
