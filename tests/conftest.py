"""Shared fixtures: tiny models written in the real on-disk formats, built once per run.

Everything runs offline: HF_HUB_OFFLINE=1 makes any hidden hub access fail loudly.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import shutil  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory) -> dict[str, Path]:
    """Single-file LDM checkpoints for every family, and an SD 1.x diffusers folder."""
    from webui.model_manager.tiny import save_tiny_checkpoint, save_tiny_diffusers

    root = tmp_path_factory.mktemp("tiny-models")
    files = {}
    for family in ("sd1", "sd1-inpaint", "sd2", "sdxl"):
        files[family] = save_tiny_checkpoint(root / f"tiny-{family}.safetensors", family, seed=0)
    files["sd1-diffusers"] = save_tiny_diffusers(root / "tiny-sd1-diffusers", "sd1", seed=0)
    return files


def with_tiny_sd1(folder: Path, tiny_files: dict[str, Path]) -> Path:
    """`folder` made a --data-dir with the tiny SD 1.x checkpoint in models/Stable-diffusion."""
    ckpt_dir = folder / "models" / "Stable-diffusion"
    ckpt_dir.mkdir(parents=True)
    shutil.copy(tiny_files["sd1"], ckpt_dir / "tiny-sd1.safetensors")
    return folder


@pytest.fixture
def data_dir(tmp_path, tiny_files) -> Path:
    """A fresh --data-dir with the tiny SD 1.x checkpoint in models/Stable-diffusion."""
    return with_tiny_sd1(tmp_path, tiny_files)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """A uvicorn server for one app on 127.0.0.1, stopped by the test."""

    def __init__(self, app, port: int | None = None):
        import uvicorn

        self.port = port or free_port()
        # A long keep-alive: uvicorn's 5 s closes a client's idle connection, and on a busy
        # machine that close can cross the client's next request on it (httpx.ReadError).
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", timeout_keep_alive=600
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="session")
def face_models(tmp_path_factory) -> Path:
    """A models folder with GFPGAN/ (face detector and parser) and Codeformer/ (a
    random-weight CodeFormer), as `tests/tiny_faces.py` writes them."""
    from tests.tiny_faces import write_face_models

    return write_face_models(tmp_path_factory.mktemp("face-models"))


@pytest.fixture(scope="session")
def flux_files(tmp_path_factory) -> dict:
    """A tiny FLUX.1 (`webui.model_manager.tiny_flux`, width 64) in every layout we load:
    BFL transformer-only (fp16, and fp32 under model.diffusion_model.), schnell, the
    separate modules (ae, clip_l, t5xxl_fp16), an all-in-one file and a diffusers folder;
    "pipe" is the pipeline they were written from (a Path-free entry)."""
    import torch

    from webui.model_manager import tiny_flux

    root = tmp_path_factory.mktemp("tiny-flux")
    pipe = tiny_flux.build_tiny_flux(seed=0)
    modules = tiny_flux.save_modules(pipe, root / "modules", dtype=torch.float32)
    return {
        "pipe": pipe,
        "transformer": tiny_flux.save_transformer(pipe, root / "flux1-tiny.safetensors"),
        "transformer-prefixed": tiny_flux.save_transformer(
            pipe,
            root / "flux1-tiny-prefixed.safetensors",
            prefix="model.diffusion_model.",
            dtype=torch.float32,
        ),
        "schnell": tiny_flux.save_transformer(
            tiny_flux.build_tiny_flux(seed=1, schnell=True), root / "flux1-schnell-tiny.safetensors"
        ),
        "all-in-one": tiny_flux.save_all_in_one(
            pipe, root / "flux1-tiny-aio.safetensors", dtype=torch.float32
        ),
        "diffusers": tiny_flux.save_diffusers(pipe, root / "flux1-tiny-diffusers"),
        **modules,
    }


@pytest.fixture(scope="session")
def sd3_files(tmp_path_factory) -> dict:
    """A tiny SD 3.5 (`webui.model_manager.tiny_sd3`, width 64) in the layouts we load:
    Medium (dual attention) as an all-in-one fp32 file, its transformer alone (fp16), the
    separate modules (sd3_vae, clip_l, clip_g, t5xxl_fp16), a Large-layout all-in-one file
    without text encoders and a diffusers folder; "pipe" / "large" are the pipelines."""
    import torch

    from webui.model_manager import tiny_sd3

    root = tmp_path_factory.mktemp("tiny-sd3")
    pipe = tiny_sd3.build_tiny_sd3(seed=0, medium=True)
    large = tiny_sd3.build_tiny_sd3(seed=1)
    modules = tiny_sd3.save_modules(pipe, root / "modules", dtype=torch.float32)
    return {
        "pipe": pipe,
        "large": large,
        "all-in-one": tiny_sd3.save_all_in_one(
            pipe, root / "sd3.5-tiny-medium.safetensors", dtype=torch.float32
        ),
        "transformer": tiny_sd3.save_transformer(pipe, root / "sd3.5-tiny-dit.safetensors"),
        "no-encoders": tiny_sd3.save_all_in_one(
            large, root / "sd3.5-tiny-large.safetensors", dtype=torch.float32, encoders=False
        ),
        "diffusers": tiny_sd3.save_diffusers(pipe, root / "sd3.5-tiny-diffusers"),
        **modules,
    }


@pytest.fixture(scope="session")
def zimage_files(tmp_path_factory) -> dict:
    """A tiny Z-Image (`webui.model_manager.tiny_zimage`, width 32): the transformer in
    ComfyUI's layout (fp16, and fp32 under model.diffusion_model.), the separate modules
    (ae, qwen_3_4b) and a diffusers folder; "pipe" is the pipeline they were written from."""
    import torch

    from webui.model_manager import tiny_zimage

    root = tmp_path_factory.mktemp("tiny-zimage")
    pipe = tiny_zimage.build_tiny_zimage(seed=0)
    return {
        "pipe": pipe,
        "transformer": tiny_zimage.save_transformer(pipe, root / "z-image-tiny.safetensors"),
        "transformer-prefixed": tiny_zimage.save_transformer(
            pipe,
            root / "z-image-tiny-prefixed.safetensors",
            prefix="model.diffusion_model.",
            dtype=torch.float32,
        ),
        "diffusers": tiny_zimage.save_diffusers(pipe, root / "z-image-tiny-diffusers"),
        **tiny_zimage.save_modules(pipe, root / "modules", dtype=torch.float32),
    }


@pytest.fixture(autouse=True, scope="session")
def _cpu_without_bf16() -> Iterator[None]:
    """Every test runs the UNet in float32 as on a CPU without bf16 instructions, whatever
    this machine's matmul probe would choose (an AMX machine would pick bf16 and change
    every image); tests/model_manager/test_cpu_precision.py fakes the CPUs it tests.
    Session-scoped, so that the session's shared servers and models are built under it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("webui.model_manager.cpu_precision.cpu_flags", frozenset)
        yield
