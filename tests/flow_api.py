"""What the API tests of the flow-matching families (FLUX.1, SD 3.5, Z-Image) share: a
server on a data folder holding the files each test module puts in models/, the request
body and its post, the init image, masks and image readers, and the checks each family
makes the same way (img2img follows the strength, inpainting keeps the unmasked area,
hires. fix gives the target size, the shift round-trips through the infotext, a refusal
is a 422 naming its field)."""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from tests.conftest import ServerThread
from webui.app import create_app
from webui.settings import parse_flags

Api = tuple[str, httpx.Client]  # the /sdapi/v1 address and a client
Post = Callable[..., httpx.Response]
BODY = {"prompt": "a red square", "steps": 2, "width": 64, "height": 64, "seed": 7,
        "cfg_scale": 1, "sampler_name": "Euler"}  # fmt: skip


@contextmanager
def flow_server(data: Path, files: dict[str, Path | Callable[[Path], object]]) -> Iterator[Api]:
    """A server (API only) on the data folder `data`; `files` maps a path under models/
    (e.g. "VAE/ae.safetensors") to the file copied there, or to a function writing it."""
    for rel, source in files.items():
        target = data / "models" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if callable(source):
            source(target)
        else:
            shutil.copy(source, target)
    argv = ["--api", "--nowebui", "--data-dir", str(data)]
    with ServerThread(create_app(parse_flags(argv))) as server, httpx.Client(timeout=600) as c:
        yield server.url + "/sdapi/v1", c


def post(api: Api, kind: str, checkpoint: str, modules: Iterable[str] | None = None,
         **fields) -> httpx.Response:  # fmt: skip
    """`BODY` with `fields` to /sdapi/v1/`kind` on `checkpoint` (and these modules, when
    given); img2img starts from `init_image()` unless `init_images` is given."""
    override = {"sd_model_checkpoint": checkpoint}
    if modules is not None:
        override["forge_additional_modules"] = list(modules)
    body = {**BODY, "override_settings": override, **fields}
    if kind == "img2img":
        body.setdefault("init_images", [b64(init_image())])
    url, client = api
    return client.post(f"{url}/{kind}", json=body)


def png_info(api: Api, response: httpx.Response) -> dict:
    """The parameters PNG Info reads from the answer's first image."""
    url, client = api
    image = response.json()["images"][0]
    return client.post(f"{url}/png-info", json={"image": image}).json()["parameters"]


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def init_image() -> Image.Image:
    """A 64x64 picture with structure (a gradient and a square), so changes show."""
    x = np.linspace(0, 255, 64, dtype=np.float32)
    rgb = np.stack([np.tile(x, (64, 1)), np.tile(x[:, None], (1, 64)), np.full((64, 64), 90.0)])
    pixels = rgb.transpose(1, 2, 0).astype(np.uint8)
    pixels[20:44, 20:44] = (230, 40, 40)
    return Image.fromarray(pixels, "RGB")


def init_pixels() -> np.ndarray:
    return np.asarray(init_image(), dtype=np.int16)


def left_half_mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    return mask


def images(response: httpx.Response) -> list[np.ndarray]:
    """The answer's images as int16 RGB arrays, after checking it is a 200."""
    assert response.status_code == 200, response.text
    return [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"), dtype=np.int16)
        for data in response.json()["images"]
    ]


def pixels(response: httpx.Response) -> bytes:
    """The first image's RGB bytes (to compare pictures), after checking it is a 200."""
    assert response.status_code == 200, response.text
    data = base64.b64decode(response.json()["images"][0])
    return Image.open(io.BytesIO(data)).convert("RGB").tobytes()


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def check_infotext(response: httpx.Response, fields: Iterable[str]) -> dict:
    """A 64x64 image whose infotext holds every one of `fields`; the answer."""
    assert response.status_code == 200, response.text
    answer = response.json()
    image = Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))
    assert image.size == (64, 64)
    for field in fields:
        assert field in answer["info"], answer["info"]
    return answer


def refusal(response: httpx.Response, field: str) -> str:
    """The message of a 422 naming the body's `field`."""
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", field]
    return detail["msg"]


def check_strength(img2img: Post, info: Iterable[str]) -> tuple[httpx.Response, np.ndarray]:
    """Strength 0 keeps the init image; a higher strength moves farther from the result
    nearest the init image (strength 0.05: the tiny autoencoder's random weights never give
    the picture back); the infotext at strength 0.3 holds `info`. That answer and image."""
    (kept,) = images(img2img(denoising_strength=0))
    assert np.array_equal(kept, init_pixels())
    (nearest,) = images(img2img(denoising_strength=0.05))
    low = img2img(denoising_strength=0.3)
    (low_image,) = images(low)
    (high,) = images(img2img(denoising_strength=0.95))
    assert 0 < distance(low_image, nearest) < distance(high, nearest)
    for field in ("Denoising strength: 0.3", "Seed: 7", *info):
        assert field in low.json()["info"], low.json()["info"]
    return low, low_image


def check_inpaint_keeps_the_unmasked_area(img2img: Post, extras: Iterable[dict]) -> httpx.Response:
    """With each of `extras`, the left half (the mask) is repainted and the right half is
    the init image's; the last answer."""
    init = init_pixels()
    for extra in extras:
        response = img2img(**{"mask": b64(left_half_mask()), "mask_blur": 0,
                              "denoising_strength": 0.9, **extra})  # fmt: skip
        (image,) = images(response)
        assert np.array_equal(image[:, 32:], init[:, 32:]), extra
        assert distance(image[:, :32], init[:, :32]) > 1, extra  # repainted
    return response


def check_hires_sizes(txt2img: Post, info: Iterable[str] = ()) -> None:
    """hires. fix with a latent and a pixel upscaler gives the target size; the infotext
    names the upscaler and holds `info`."""
    for upscaler, scale, side in (("Latent", 1.5, 96), ("Lanczos", 2, 128)):
        response = txt2img(enable_hr=True, hr_scale=scale, hr_upscaler=upscaler,
                           denoising_strength=0.5, hr_second_pass_steps=1)  # fmt: skip
        (image,) = images(response)
        assert image.shape == (side, side, 3)
        for field in (f"Hires upscaler: {upscaler}", *info):
            assert field in response.json()["info"], response.json()["info"]


def check_shift(api: Api, txt2img: Post, plain: bytes, shift: float) -> None:
    """A set shift changes the picture (`plain`: the pixels without it), is written to the infotext, PNG Info reads it back
    and the `infotext` request field restores it."""
    shifted = txt2img(shift=shift)
    assert f"Shift: {shift:g}" in shifted.json()["info"], shifted.json()["info"]
    assert pixels(shifted) != plain
    assert float(png_info(api, shifted)["Shift"]) == shift
    infotext = f"a cat\nSteps: 2, Sampler: Euler, Seed: 7, Shift: {shift:g}"
    assert pixels(txt2img(infotext=infotext)) == pixels(shifted)


def check_same_seed(txt2img: Post) -> bytes:
    """The same seed gives the same picture; its pixels."""
    first, second = (pixels(txt2img()) for _ in range(2))
    assert first == second
    return first


def check_negative_only_with_cfg(txt2img: Post, first: bytes) -> None:
    """The negative prompt is used only with CFG above 1 (a distilled model's way)."""
    negative = {"negative_prompt": "blurry"}
    assert pixels(txt2img(**negative)) == first
    assert pixels(txt2img(cfg_scale=3, **negative)) != first
