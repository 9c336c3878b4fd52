"""The server as a user starts it: `python -m webui.app`, first-run help, downloads."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port
from webui.model_manager.demo import DEMO_NAME
from webui.model_manager.download import DownloadError, download, offer_default_checkpoint
from webui.model_manager.memory import plan_memory

ROOT = Path(__file__).resolve().parent.parent


def _wait_for_page(url: str, proc: subprocess.Popen, timeout: float = 180, marker: str = "") -> str:
    """The first 200 answer with `marker` in it: the API answers 503 until the server is
    built; "gradio_config" waits for the real UI page, not the one that comes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                page = response.read().decode()
            if marker in page:
                return page
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("the UI page was not served in time")


def test_server_starts_with_demo_model_and_serves_the_ui(tmp_path):
    port = free_port()
    argv = ["--port", str(port), "--data-dir", str(tmp_path), "--demo", "--no-download-sd-model"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "webui.app", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        page = _wait_for_page(f"http://127.0.0.1:{port}/", proc, marker="gradio_config")
        assert "Stable Diffusion web UI" in page
        assert (tmp_path / "models" / "Stable-diffusion" / DEMO_NAME).is_file()
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    assert f"Running on local URL:  http://127.0.0.1:{port}/" in output


def test_a_port_in_use_is_reported_before_anything_loads(tmp_path):
    """The port is bound before the background build starts: the error comes at once and
    nothing is built (no job store in the data folder)."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "webui.app", "--port", str(port), "--data-dir", str(tmp_path),
             "--no-download-sd-model"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert result.returncode != 0
    assert "address already in use" in result.stderr
    assert not (tmp_path / "jobs.sqlite3").exists()


def test_unknown_flag_is_reported_clearly():
    result = subprocess.run(
        [sys.executable, "-m", "webui.app", "--lisen"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "--lisen" in result.stderr and "--listen" in result.stderr


@pytest.fixture
def file_server(tmp_path):
    """A local HTTP server standing in for the model host."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_is_atomic_and_checked(file_server, tmp_path):
    root, url = file_server
    (root / "model.safetensors").write_bytes(b"x" * 3_000_000)
    target = tmp_path / "models" / "model.safetensors"
    download(f"{url}/model.safetensors", target)
    assert target.read_bytes() == b"x" * 3_000_000
    with pytest.raises(DownloadError, match="checksum"):
        download(f"{url}/model.safetensors", tmp_path / "other.safetensors", sha256="0" * 64)
    with pytest.raises(DownloadError, match="missing.safetensors"):
        download(f"{url}/missing.safetensors", tmp_path / "missing.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "www"]  # no partial files


def test_first_run_offer_downloads_or_says_offline(file_server, tmp_path, caplog):
    root, url = file_server
    (root / "v1.safetensors").write_bytes(b"weights")
    folder = tmp_path / "ckpt"
    assert offer_default_checkpoint(folder, url=f"{url}/v1.safetensors").is_file()
    offline = offer_default_checkpoint(tmp_path / "empty", url="http://127.0.0.1:9/none")
    assert offline is None
    assert "offline" in caplog.text and "--demo" in caplog.text


def test_memory_plan_flags():
    cpu = plan_memory(cuda_available=False)
    assert (cpu.device, str(cpu.dtype), cpu.attention) == ("cpu", "torch.float32", "sdpa")
    gpu = plan_memory(cuda_available=True)
    assert (gpu.device, str(gpu.dtype)) == ("cuda", "torch.float16")
    assert str(plan_memory(cuda_available=True, no_half=True).dtype) == "torch.float32"
    assert plan_memory(cuda_available=True, use_cpu_all=True).device == "cpu"
    fallback = plan_memory(xformers=True, cuda_available=False, xformers_installed=True)
    assert fallback.attention == "sdpa" and "needs a CUDA device" in fallback.notes[0]
    missing = plan_memory(xformers=True, cuda_available=True, xformers_installed=False)
    assert missing.attention == "sdpa" and "not installed" in missing.notes[0]
    assert (
        plan_memory(xformers=True, cuda_available=True, xformers_installed=True).attention
        == "xformers"
    )
    assert plan_memory(split_attention=True, cuda_available=False).attention == "sliced"


def test_ckpt_flag_lists_and_loads_a_file_outside_the_models_folder(tmp_path, tiny_files):
    import json

    elsewhere = tmp_path / "elsewhere" / "mine.safetensors"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(tiny_files["sd1"].read_bytes())
    port = free_port()
    argv = ["--port", str(port), "--data-dir", str(tmp_path / "data"), "--nowebui"]
    argv += ["--ckpt", str(elsewhere), "--no-download-sd-model"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "webui.app", *argv],
        cwd=ROOT,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        models = json.loads(_wait_for_page(f"http://127.0.0.1:{port}/sdapi/v1/sd-models", proc))
        assert [m["model_name"] for m in models] == ["mine"]
        assert models[0]["filename"] == str(elsewhere)
        body = json.dumps({"prompt": "x", "steps": 2, "width": 64, "height": 64}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/sdapi/v1/txt2img",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=300) as response:
            info = json.loads(json.loads(response.read())["info"])
        assert info["sd_model_name"] == "mine"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
