"""What the ControlNet API tests share: a server on a data folder (the tiny SD 1.x
checkpoint plus what the test's module puts in models/), the extension's unit fields
(base64 images, model labels with their hashes), and the txt2img/img2img calls."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw

from tests.conftest import ServerThread, with_tiny_sd1
from webui.app import create_app
from webui.model_manager.controlnet_files import legacy_hash
from webui.settings import parse_flags

BODY = {"prompt": "a house", "negative_prompt": "fog", "steps": 3, "seed": 7, "width": 64,
        "height": 64, "sampler_name": "Euler", "cfg_scale": 5}  # fmt: skip


@contextmanager
def controlnet_server(folder: Path, tiny_files: dict, fill: Callable[[Path], None],
                      flags: tuple[str, ...] = ()) -> Iterator:  # fmt: skip
    """A server (API only) whose data folder is `folder` with the tiny SD 1.x checkpoint;
    `fill(data)` puts the test's models in it first; `flags`: more command-line flags.
    The server has `folder` (its models/ControlNet), `data` and `ctx`."""
    data = with_tiny_sd1(folder, tiny_files)
    fill(data)
    flags = parse_flags(["--api", "--nowebui", "--data-dir", str(data), "--no-download-sd-model",
                         *flags])  # fmt: skip
    app = create_app(flags)
    with ServerThread(app) as srv:
        srv.folder, srv.data, srv.ctx = data / "models" / "ControlNet", data, app.state.ctx
        yield srv


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def picture(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def pixels(data: str) -> np.ndarray:
    return np.asarray(picture(data).convert("RGB"), np.int16)


def shapes(size: tuple[int, int] = (64, 64)) -> Image.Image:
    """A white picture with a black box and a red disc (edges for every preprocessor)."""
    width = size[0]
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((10, 10, 40, 50), fill="black")
    draw.ellipse((width - 34, 5, width - 4, 35), fill=(200, 30, 30))
    return image


def label(server, name: str) -> str:
    """The extension's model label: file stem (folder name) and hash in brackets."""
    path = server.folder / name
    weights = path / "diffusion_pytorch_model.safetensors" if path.is_dir() else path
    return f"{path.name if path.is_dir() else path.stem} [{legacy_hash(weights)}]"


def post(server, units: list | None, route: str = "txt2img", script_key: str = "controlnet",
         **extra) -> httpx.Response:  # fmt: skip
    """`BODY` (with `extra`) and the units as the extension's `alwayson_scripts`."""
    body = {**BODY, **extra}
    if units is not None:
        body["alwayson_scripts"] = {script_key: {"args": units}}
    with httpx.Client(timeout=600) as client:
        return client.post(f"{server.url}/sdapi/v1/{route}", json=body)


def generate(server, units: list | None, route: str = "txt2img", expect: int = 200, **extra):
    """The answer's JSON, after checking its status is `expect`."""
    response = post(server, units, route, **extra)
    assert response.status_code == expect, response.text
    return response.json()


@contextmanager
def annotator_server(folder: Path, tiny_files: dict, fill: Callable[[Path], None]) -> Iterator:
    """`controlnet_server` for the annotator tests: `fill(annotators)` writes the networks
    into models/ControlNet/annotators, which is the server's `folder`; nothing goes to the
    network (the downloader records the file in `downloads` and fails)."""
    with controlnet_server(folder, tiny_files,
                           lambda data: fill(data / "models" / "ControlNet" / "annotators")) as srv:  # fmt: skip
        srv.folder = srv.folder / "annotators"
        srv.downloads = []

        def no_network(name, target, report):
            srv.downloads.append(name)
            raise OSError("no network in tests")

        srv.ctx.annotators.download = no_network
        yield srv


def detect(server, module: str, res: int = 64, image: Image.Image | None = None):
    """/controlnet/detect of one image (the 96x64 `shapes` unless given)."""
    image = image if image is not None else shapes((96, 64))
    with httpx.Client(timeout=300, base_url=server.url) as client:
        return client.post("/controlnet/detect", json={
            "controlnet_module": module, "controlnet_input_images": [b64(image)],
            "controlnet_processor_res": res})  # fmt: skip


def annotator_txt2img(server, unit: dict) -> httpx.Response:
    """A 2-step txt2img job with one enabled unit of no model on the 96x64 `shapes`."""
    unit = {"enabled": True, "image": b64(shapes((96, 64))), "model": "None", **unit}
    return post(server, [unit], steps=2)


def check_job_map(server, unit: dict) -> None:
    """A txt2img job with the unit answers the image, then the unit's 64x64 detected map."""
    response = annotator_txt2img(server, unit)
    assert response.status_code == 200, response.text
    images = response.json()["images"]
    assert len(images) == 2  # the image, then the detected map
    detected = np.asarray(picture(images[1]).convert("RGB"))
    assert detected.shape == (64, 64, 3) and detected.std() > 0


def check_offline_422(server, module: str, file: str) -> None:
    """Offline, a job whose annotator file is missing is a 422 at the unit's `module`
    naming the file and the annotator folder."""
    response = annotator_txt2img(server, {"module": module})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(d["loc"][-1] == "module" and file in d["msg"] and str(server.folder) in d["msg"]
               for d in detail), detail  # fmt: skip
