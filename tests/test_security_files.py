"""Hostile files and paths (issue 7, security 1-4 and 9): the bind address, pickles that
would run code, file routes asked for files outside the allowed folders (over a raw
socket: HTTP clients normalise `..` away), URLs as images, SVG/HTML as images.

One server (UI and API, 127.0.0.1) serves the module; its models folder holds the tiny
SD 1.x checkpoint, a tensor-only .ckpt made from it, and .ckpt/.pt files whose pickle
would create a marker file if it were ever unpickled unrestricted.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from tests.conftest import ServerThread
from webui import app as app_module
from webui.api.hardening import NO_URLS
from webui.app import create_app
from webui.core import jobs as job_states
from webui.settings import Flags, parse_flags

TINY = {"steps": 2, "width": 64, "height": 64, "seed": 1, "sampler_name": "Euler"}
SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>'
HTML = b"<!DOCTYPE html><html><script>alert(document.cookie)</script></html>"


class _RunsCode:
    """Unpickled without restriction, this creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@dataclass
class Site:
    server: ServerThread
    app: object
    data: Path
    marker: Path
    secret: Path
    token: str

    def api(self, path: str) -> str:
        return f"{self.server.url}/sdapi/v1{path}"


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_files) -> Iterator[Site]:
    from safetensors.torch import load_file

    base = tmp_path_factory.mktemp("hostile")
    data, marker = base / "data", base / "PWNED"
    token = f"TOP-SECRET-{uuid.uuid4().hex}"
    secret = base / "secret.txt"  # next to the data dir: no route may ever serve it
    secret.write_text(token)
    models = data / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    shutil.copy(tiny_files["sd1"], models / "tiny-sd1.safetensors")
    torch.save({"state_dict": load_file(str(tiny_files["sd1"]))}, models / "plain.ckpt")
    evil = {"state_dict": {"w": torch.zeros(1)}, "callback": _RunsCode(marker)}
    torch.save(evil, models / "evil.ckpt")
    torch.save(evil, models / "evil-legacy.ckpt", _use_new_zipfile_serialization=False)
    embeddings = data / "models" / "embeddings"
    embeddings.mkdir(parents=True)
    torch.save({"string_to_param": {"*": torch.zeros(1, 32)}, "x": _RunsCode(marker)},
               embeddings / "evilemb.pt")  # fmt: skip
    outputs = data / "outputs" / "txt2img-images"
    outputs.mkdir(parents=True)
    (outputs / "link.png").symlink_to(secret)  # a symlink out of outputs/
    argv = ["--data-dir", str(data), "--no-download-sd-model", "--api"]
    app = create_app(parse_flags(argv))
    with ServerThread(app) as server:
        yield Site(server, app, data, marker, secret, token)
    assert not marker.exists(), "a pickle ran code"


def raw_request(port: int, target: str, method: str = "GET", headers: str = "",
                body: bytes = b"", timeout: float = 60) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """One request written byte for byte (no client normalises the path); the answer."""
    head = (f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Connection: close\r\n{headers}\r\n")  # fmt: skip
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode("latin-1") + body)
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
    return parse_response(data)


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2 :]
        body = out
    return status, headers, body


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_bytes(color: str = "red", size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def loc_and_msg(response: httpx.Response) -> tuple[list[str], str]:
    detail = response.json()["detail"]
    assert isinstance(detail, list), detail
    return [str(p) for d in detail for p in d["loc"]], " ".join(d["msg"] for d in detail)


# --- 1. bind address, --listen without auth ------------------------------------------------


def _run_main(monkeypatch, tmp_path: Path, *argv: str) -> str:
    """webui.app.main up to serving; the host uvicorn would bind."""
    import uvicorn

    bound: dict[str, str] = {}

    def run(server) -> None:
        bound["host"] = server.config.host  # nothing is built before the port is bound

    monkeypatch.setattr(uvicorn.Server, "run", run)
    monkeypatch.setattr(app_module, "_lan_addresses", lambda: ["192.168.1.23"])
    argv = ("--data-dir", str(tmp_path), "--no-download-sd-model", "--nowebui", *argv)
    assert app_module.main(list(argv)) == 0
    return bound["host"]


def test_default_bind_is_loopback_and_listen_without_auth_warns(monkeypatch, tmp_path, caplog):
    caplog.set_level("WARNING")
    assert parse_flags([]).server_host == "127.0.0.1"
    assert _run_main(monkeypatch, tmp_path) == "127.0.0.1"
    assert "anyone on your network" not in caplog.text
    assert _run_main(monkeypatch, tmp_path, "--listen") == "0.0.0.0"
    assert "--listen with --api but no --api-auth" in caplog.text
    caplog.clear()
    assert _run_main(monkeypatch, tmp_path, "--listen", "--api-auth", "u:p") == "0.0.0.0"
    assert "anyone on your network" not in caplog.text
    app_module._announce(Flags(listen=True), "http://127.0.0.1:7860/")  # with the UI
    assert "--listen without --gradio-auth" in caplog.text
    caplog.clear()
    app_module._announce(Flags(listen=True, gradio_auth="a:b"), "http://127.0.0.1:7860/")
    assert "anyone on your network" not in caplog.text


# --- 2. pickles that would run code ---------------------------------------------------------


def test_torch_has_no_known_weights_only_bypass() -> None:
    major, minor = (int(p) for p in torch.__version__.split(".")[:2])
    assert (major, minor) >= (2, 6), "torch < 2.6: torch.load(weights_only=True) can run code"


def test_scan_lists_code_pickles_but_loading_refuses_them(site: Site) -> None:
    with httpx.Client(timeout=120) as client:
        names = {m["model_name"] for m in client.get(site.api("/sd-models")).json()}
    assert {"evil", "evil-legacy", "plain", "tiny-sd1"} <= names
    jobs = site.app.state.ctx.jobs
    for name in ("evil.ckpt", "evil-legacy.ckpt"):  # what start-up does with --ckpt / the option
        job = jobs.submit("load", name, owner="startup")
        assert job.done.wait(120)
        assert job.state == job_states.FAILED
        assert name in job.error and "refused" in job.error and "could run code" in job.error
    assert not site.marker.exists()


@pytest.mark.parametrize("name", ["evil.ckpt", "evil-legacy", "evil"])
def test_model_switch_to_a_code_pickle_is_refused(site: Site, name: str) -> None:
    with httpx.Client(timeout=120) as client:
        before = client.get(site.api("/options")).json()["sd_model_checkpoint"]
        response = client.post(site.api("/options"), json={"sd_model_checkpoint": name})
        assert response.status_code == 422, response.text
        loc, msg = loc_and_msg(response)
        assert "sd_model_checkpoint" in loc and "refused" in msg and "could run code" in msg
        assert client.get(site.api("/options")).json()["sd_model_checkpoint"] == before
        override = {"override_settings": {"sd_model_checkpoint": name}, **TINY}
        response = client.post(site.api("/txt2img"), json=override)
        assert response.status_code == 422, response.text
        loc, msg = loc_and_msg(response)
        assert "sd_model_checkpoint" in loc and "refused" in msg
    assert not site.marker.exists()


def test_a_tensor_only_ckpt_still_loads(site: Site) -> None:
    with httpx.Client(timeout=300) as client:
        try:
            response = client.post(site.api("/options"), json={"sd_model_checkpoint": "plain.ckpt"})
            assert response.status_code == 200, response.text
            override = {"override_settings": {"sd_model_checkpoint": "plain"}, **TINY}
            response = client.post(site.api("/txt2img"), json=override)
            assert response.status_code == 200, response.text
            assert "Model: plain" in json.loads(response.json()["info"])["infotexts"][0]
        finally:
            client.post(site.api("/options"), json={"sd_model_checkpoint": ""})


def test_an_embedding_pickle_that_runs_code_is_skipped(site: Site) -> None:
    with httpx.Client(timeout=300) as client:
        skipped = client.get(site.api("/embeddings")).json()["skipped"]
        assert "refused" in skipped["evilemb"]["error"], skipped
        response = client.post(site.api("/txt2img"), json={"prompt": "a evilemb cat", **TINY})
        assert response.status_code == 200, response.text
    assert not site.marker.exists()


def test_disable_safe_unpickle_exists_and_warns(tmp_path, caplog) -> None:
    from webui.context import build_networks
    from webui.model_manager.registry import HashCache

    flags = parse_flags(["--data-dir", str(tmp_path), "--disable-safe-unpickle"])
    assert flags.disable_safe_unpickle and not parse_flags([]).disable_safe_unpickle
    caplog.set_level("WARNING")
    networks = build_networks(flags, HashCache(tmp_path / "cache.json"))
    assert networks.embeddings.allow_unsafe_pickle
    assert "--disable-safe-unpickle" in caplog.text and "run any code" in caplog.text
    caplog.clear()
    build_networks(parse_flags(["--data-dir", str(tmp_path)]), HashCache(tmp_path / "c.json"))
    assert "--disable-safe-unpickle" not in caplog.text


# --- 3. file routes: nothing outside the allowed folders ------------------------------------


def _upload(site: Site, name: str, data: bytes) -> str:
    with httpx.Client(base_url=site.server.url, timeout=60) as client:
        response = client.post("/gradio_api/upload", files={"files": (name, data)})
    assert response.status_code == 200, response.text
    return response.json()[0]


def test_file_routes_serve_nothing_outside_the_allowed_folders(site: Site) -> None:
    picture = png_bytes("green")
    uploaded = _upload(site, "picture.png", picture)
    port = site.server.port
    status, headers, body = raw_request(port, f"/gradio_api/file={uploaded}")
    assert status == 200 and body == picture  # the allowed case: a file Gradio created
    assert headers["x-content-type-options"] == "nosniff"

    secret = str(site.secret)
    folder = Path(uploaded).parent
    (folder / "link.png").symlink_to(site.secret)  # a symlink inside the allowed folder
    sibling = Path(str(folder.parent) + "-x")  # a folder whose name starts like the allowed one
    sibling.mkdir(exist_ok=True)
    shutil.copy(site.secret, sibling / "secret.txt")
    up = "/".join([".."] * 12)
    from_upload = f"{folder}/{up}{secret}"
    attempts = [
        secret, "/etc/passwd", "//etc/passwd", "%2Fetc%2Fpasswd", f"file://{secret}",
        f"{up}{secret}", from_upload, from_upload.replace("../", "%2e%2e%2f"),
        from_upload.replace("../", "..%2f"), from_upload.replace("../", "%2E%2E%2F"),
        from_upload.replace("../", "%252e%252e%252f"), from_upload.replace("/", "\\"),
        f"{folder}/%00/{up}{secret}", f"{folder}/link.png", f"{sibling}/secret.txt",
        str(site.data / "outputs" / "txt2img-images" / "link.png"),
        str(site.data / "outputs" / ".." / ".." / "secret.txt"),
        uploaded.upper(), f"{str(folder).upper()}/{up}{secret}",
    ]  # fmt: skip
    targets = [f"/gradio_api/file={a}" for a in attempts]
    targets += [f"/gradio_api/file/{secret}", f"/GRADIO_API/file={secret}",
                f"/gradio_api/FILE={secret}", f"/Gradio_Api/File={uploaded}", f"/file={secret}",
                f"/static/{up}{secret}", f"/static/{up.replace('/', '%2f')}{secret}",
                f"/assets/..%2f..%2f..%2f..%2f{secret}", f"/svelte/%2e%2e/%2e%2e/{secret}",
                f"/gradio_api/custom_component/x/client/y/..%2f..%2f{site.secret.name}",
                f"/sdapi/v1/../../..{secret}", f"/favicon.ico/..%2f..%2f{secret}"]  # fmt: skip
    try:
        for target in targets:
            status, headers, body = raw_request(port, target)
            assert status in (403, 404), (target, status, body[:200])
            assert site.token.encode() not in body and b"root:x:0:0" not in body, target
            assert headers.get("x-content-type-options") == "nosniff", target
    finally:
        (folder / "link.png").unlink()
        shutil.rmtree(sibling)


# --- 4. no server-side fetching of URLs ------------------------------------------------------


@pytest.fixture
def web_server() -> Iterator[tuple[str, list[str]]]:
    """A little HTTP server on 127.0.0.1 that records every request it gets."""
    seen: list[str] = []
    picture = png_bytes("blue")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            seen.append(self.path)
            if self.path.startswith("/redirect"):
                self.send_response(302)
                self.send_header("Location", "http://127.0.0.1/x.png")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(picture)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_urls_in_requests_are_never_fetched(site: Site, web_server) -> None:
    url, seen = web_server
    with httpx.Client(timeout=120) as client:
        for path, body, loc in [
            ("/img2img", {"init_images": [f"{url}/x.png"], **TINY}, ["init_images", "0"]),
            ("/img2img", {"init_images": [b64(png_bytes())], "mask": f"{url}/m.png", **TINY},
             ["mask"]),
            ("/extra-single-image", {"image": f"{url}/redirect"}, ["image"]),
            ("/png-info", {"image": f"{url}/x.png"}, ["image"]),
        ]:  # fmt: skip
            response = client.post(site.api(path), json=body)
            assert response.status_code == 422, (path, response.text)
            where, msg = loc_and_msg(response)
            assert where[-len(loc) :] == loc and "URLs are not fetched" in msg, (path, where)
    for target in (f"/gradio_api/file={url}/x.png", f"/gradio_api/file={url}/redirect",
                   "/gradio_api/file=https://example.com/x.png", f"/gradio_api/file=//{url[7:]}/x.png",
                   f"/gradio_api/file/{url}/x.png", f"/gradio_api/proxy={url}/x.png"):  # fmt: skip
        status, _, body = raw_request(site.server.port, target)
        assert status == 403 and NO_URLS in body.decode(), (target, status, body[:200])
    assert seen == []


# --- 9. markup is not an image; nosniff -----------------------------------------------------


@pytest.mark.parametrize("markup", [SVG, HTML], ids=["svg", "html"])
def test_svg_and_html_are_refused_as_images(site: Site, markup: bytes) -> None:
    kind = "SVG" if markup is SVG else "HTML"
    data_url = f"data:image/{'svg+xml' if markup is SVG else 'png'};base64,{b64(markup)}"
    with httpx.Client(timeout=120) as client:
        for path, body, loc in [
            ("/img2img", {"init_images": [b64(markup)], **TINY}, "init_images"),
            ("/img2img", {"init_images": [data_url], **TINY}, "init_images"),
            ("/img2img", {"init_images": [b64(png_bytes())], "mask": b64(markup), **TINY}, "mask"),
            ("/extra-single-image", {"image": b64(markup)}, "image"),
            ("/extra-batch-images", {"imageList": [{"data": b64(markup), "name": "x.png"}]},
             "imageList"),
            ("/png-info", {"image": data_url}, "image"),
        ]:  # fmt: skip
            response = client.post(site.api(path), json=body)
            assert response.status_code == 422, (path, response.text)
            where, msg = loc_and_msg(response)
            assert loc in where and f"{kind}" in msg and "not accepted" in msg, (path, msg)


def test_markup_uploaded_in_the_ui_is_refused_and_served_inert(site: Site, tmp_path) -> None:
    import gradio as gr

    from webui.imaging.codec import ImageInputError, load_image_file
    from webui.ui.pnginfo_tab import describe

    for name, markup in (("x.svg", SVG), ("x.png", SVG), ("x.html", HTML)):
        path = tmp_path / name
        path.write_bytes(markup)
        with pytest.raises(gr.Error, match="Not an image"):
            describe(str(path))  # the PNG Info tab
        with pytest.raises(ImageInputError, match="not accepted"):
            load_image_file(path, "image")  # uploads and batch folders of the image tabs
        uploaded = _upload(site, name, markup)  # Gradio serves it back, but never as markup
        status, headers, body = raw_request(site.server.port, f"/gradio_api/file={uploaded}")
        assert status == 200 and body == markup
        assert headers["x-content-type-options"] == "nosniff"  # never sniffed as markup
        content_type = headers["content-type"]
        assert not any(kind in content_type for kind in ("html", "svg", "xml")), content_type
        if name != "x.png":  # named as markup: a download, not a page
            assert content_type == "application/octet-stream"
            assert headers["content-disposition"].startswith("attachment")


def test_every_answer_carries_nosniff(site: Site) -> None:
    with httpx.Client(base_url=site.server.url, timeout=60) as client:
        for method, path in (("GET", "/"), ("GET", "/sdapi/v1/options"), ("GET", "/config"),
                             ("GET", "/no/such/page"), ("POST", "/sdapi/v1/png-info")):  # fmt: skip
            response = client.request(method, path)
            assert response.headers.get("x-content-type-options") == "nosniff", path
