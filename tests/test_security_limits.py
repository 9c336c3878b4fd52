"""Hostile sizes and values (issue 7, faults 16 and 17): decompression bombs and
oversized bodies are refused fast with flat memory; invalid parameters answer 422
naming the field, never 500.

Memory is the process's peak RSS (VmHWM, reset through /proc/self/clear_refs) while the
in-process server answers; the bounds are generous because the machine is shared.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import ServerThread
from tests.test_security_files import b64, parse_response, png_bytes
from webui.app import create_app
from webui.imaging.codec import MAX_DECODE_PIXELS
from webui.settings import parse_flags

SECONDS = 5.0  # "within a second", with room for a busy shared machine
MEGABYTES = 200  # peak RSS growth allowed while an oversized body is refused (limit 64 MB)
BOMB_MEGABYTES = 50  # ... and while a bomb is refused (decoding one takes 80-400 MB)


def _status_kb(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE).group(1))


@contextmanager
def peak_growth() -> Iterator[dict[str, float]]:
    """{"mb": peak RSS growth} of the block, in MB."""
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    base = _status_kb("VmRSS")
    out: dict[str, float] = {}
    yield out
    out["mb"] = (_status_kb("VmHWM") - base) / 1024


def bomb_png(side: int, bit_depth: int) -> bytes:
    """A one-colour greyscale PNG of side x side pixels, written without decoding it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    row = b"\x00" + bytes((side * bit_depth + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, bit_depth, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_files) -> Iterator[ServerThread]:
    import shutil

    data = tmp_path_factory.mktemp("limits")
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    shutil.copy(tiny_files["sd1"], data / "models" / "Stable-diffusion" / "tiny-sd1.safetensors")
    flags = parse_flags(["--data-dir", str(data), "--no-download-sd-model", "--nowebui"])
    with ServerThread(create_app(flags)) as running:
        yield running


# --- 16. decompression bombs, oversized bodies ---------------------------------------------


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(
    ("side", "bit_depth"),
    [(20000, 1), (13000, 8), (9000, 8)],
    ids=["20000px-pillow-refuses", "13000px-under-pillows-default", "9000px-header-check"],
)
def test_decompression_bombs_are_refused_fast_with_flat_memory(server, side, bit_depth):
    data = b64(bomb_png(side, bit_depth))
    assert len(data) < 300_000  # a few hundred kB that would decode to up to 400 MB
    tiny = {"steps": 2, "width": 64, "height": 64}
    with httpx.Client(base_url=f"{server.url}/sdapi/v1", timeout=60) as client:
        for path, body, field in [
            ("/img2img", {"init_images": [data], **tiny}, "init_images"),
            ("/img2img", {"init_images": [b64(png_bytes())], "mask": data, **tiny}, "mask"),
            ("/extra-single-image", {"image": data}, "image"),
            ("/png-info", {"image": data}, "image"),
            ("/png-info", {"image": f"data:image/png;base64,{data}"}, "image"),
        ]:
            with peak_growth() as peak:
                started = time.monotonic()
                response = client.post(path, json=body)
                seconds = time.monotonic() - started
            assert response.status_code == 422, (path, response.text)
            detail = response.json()["detail"]
            msg = detail[0]["msg"]
            assert field in detail[0]["loc"], (path, detail)
            assert "too large" in msg or "over the limit" in msg, (path, detail)
            assert seconds < SECONDS, (path, seconds)
            assert peak["mb"] < BOMB_MEGABYTES, (path, peak)


def test_pillow_limit_is_set_for_every_decoder(server) -> None:
    assert Image.MAX_IMAGE_PIXELS == MAX_DECODE_PIXELS  # Gradio's uploads decode with it too


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    try:
        while chunk := sock.recv(1 << 16):
            data += chunk
    except ConnectionResetError:  # the server closed while our body was still arriving
        pass
    assert data, "no answer before the connection closed"
    return parse_response(data)


@pytest.mark.parametrize("path", ["/sdapi/v1/img2img", "/sdapi/v1/png-info", "/gradio_api/upload"])
def test_a_declared_200_mb_body_is_refused_before_it_is_read(server, path) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {200 * 2**20}\r\n\r\n".encode()
            + b"{"
            + b" " * 65536
        )
        status, headers, body = _answer(sock)
    assert time.monotonic() - started < SECONDS
    assert status == 413 and "--max-request-mb" in json.loads(body)["detail"]
    assert headers["x-content-type-options"] == "nosniff"


def test_a_streamed_body_is_cut_off_at_the_limit(server) -> None:
    """No Content-Length (chunked): counted as it arrives, refused at 64 MB, memory flat."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    chunk = b"%x\r\n%s\r\n" % (1 << 20, b" " * (1 << 20))
    failed: list[Exception] = []

    def send_body() -> None:
        try:
            sock.sendall(b"POST /sdapi/v1/png-info HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")  # fmt: skip
            for _ in range(300):  # 300 MB unless the server stops reading
                sock.sendall(chunk)
        except OSError as exc:  # the server hung up: what it should do
            failed.append(exc)

    with peak_growth() as peak:
        started = time.monotonic()
        sender = threading.Thread(target=send_body, daemon=True)
        sender.start()
        status, _, body = _answer(sock)
        seconds = time.monotonic() - started
    sock.close()
    sender.join(30)
    assert status == 413 and "64 MB" in json.loads(body)["detail"]
    assert seconds < SECONDS and peak["mb"] < MEGABYTES, (seconds, peak)
    assert failed, "the whole 300 MB was accepted"


def test_the_limit_is_a_flag(tmp_path, capsys) -> None:
    assert parse_flags([]).max_request_mb == 64
    assert parse_flags(["--max-request-mb", "0"]).max_request_mb == 0
    with pytest.raises(SystemExit):
        parse_flags(["--max-request-mb", "-1"])
    assert "--max-request-mb" in capsys.readouterr().err
    two_mb = json.dumps({"image": "A" * (2 * 2**20)})
    for limit, expected in (("1", 413), ("0", 422)):
        argv = ["--data-dir", str(tmp_path), "--no-download-sd-model", "--nowebui",
                "--max-request-mb", limit]  # fmt: skip
        with TestClient(create_app(parse_flags(argv))) as client:
            sized = client.post("/sdapi/v1/png-info", content=two_mb,
                                headers={"Content-Type": "application/json"})  # fmt: skip
            streamed = client.post("/sdapi/v1/png-info", content=iter([two_mb.encode()]),
                                   headers={"Content-Type": "application/json"})  # fmt: skip
            assert (sized.status_code, streamed.status_code) == (expected, expected), limit
            small = client.post("/sdapi/v1/png-info", json={"image": b64(png_bytes())})
            assert small.status_code == 200


# --- 17. invalid parameters: 422 naming the field, never 500 --------------------------------

NAN, INF = float("nan"), float("inf")
INVALID = [
    ("width", 511), ("width", 0), ("width", -8), ("width", 1e9), ("height", 10**9),
    ("steps", 0), ("steps", 10**6), ("cfg_scale", NAN), ("cfg_scale", INF),
    ("cfg_scale", -INF), ("cfg_scale", "NaN"), ("cfg_scale", "Infinity"), ("cfg_scale", "inf"),
    ("batch_size", 10**4), ("n_iter", 10**9), ("n_iter", 10**30),
    ("sampler_name", "No Such Sampler"),
]  # fmt: skip
BAD_BASE64 = ["!!! not base64 !!!", "aGVsbG8", "data:image/png;base64,@@@", "", 42]


def _post_raw(client: httpx.Client, path: str, body: dict) -> httpx.Response:
    """JSON as Python writes it: NaN and Infinity as bare tokens, as some clients send."""
    text = json.dumps(body, allow_nan=True)
    return client.post(path, content=text, headers={"Content-Type": "application/json"})


@pytest.fixture(scope="module")
def api(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{server.url}/sdapi/v1", timeout=60) as client:
        yield client


@pytest.mark.parametrize("route", ["/txt2img", "/img2img"])
@pytest.mark.parametrize(("field", "value"), INVALID, ids=[f"{f}={v!r}" for f, v in INVALID])
def test_invalid_parameters_are_422_naming_the_field(api, route, field, value) -> None:
    body = {"prompt": "x", "steps": 2, "width": 64, "height": 64, field: value}
    if route == "/img2img":
        body["init_images"] = [b64(png_bytes())]
    response = _post_raw(api, route, body)
    assert response.status_code == 422, response.text
    locs = [str(part) for item in response.json()["detail"] for part in item["loc"]]
    assert field in locs, response.text


@pytest.mark.parametrize("data", BAD_BASE64, ids=repr)
def test_bad_base64_init_images_are_422_naming_the_field(api, data) -> None:
    body = {"prompt": "x", "steps": 2, "width": 64, "height": 64, "init_images": [data]}
    response = api.post("/img2img", json=body)
    assert response.status_code == 422, response.text
    assert "init_images" in response.json()["detail"][0]["loc"], response.text
