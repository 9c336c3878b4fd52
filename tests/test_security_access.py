"""Access control on a LAN (issue 7, security points 5-8).

5. With --api-auth and --gradio-auth-path every route of the app (walked through the app,
   the mounted Gradio app and the OpenAPI schema) answers 401 without credentials, and
   none does with them; no password in cmd-flags, logs or flag errors.
6. A hostile or `null` Origin gets no Access-Control-* header and can neither queue a
   job nor upload; the origin allowed by --cors-allow-origins can.
7. Path options cannot be changed from the network (API, UI handler, override_settings);
   --freeze-settings freezes every option.
8. Installing an extension through the UI handler is refused under --listen; nothing is
   cloned.

tests/api/test_auth_lan.py proves the rest: 401 on every route with --api-auth plus
--gradio-auth, CORS with --cors-allow-origins-regex, the same-origin rule. Servers bind
127.0.0.1 on a free port.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from tests.api.test_auth_lan import GRADIO_ROUTES, PUBLIC, PUBLIC_PREFIXES, _concrete, _walk
from tests.conftest import ServerThread, free_port
from tests.ext.test_extensions import _bare_repo
from webui.app import create_app
from webui.imaging.store import sanitize_filename_part
from webui.options import OPTION_DEFS
from webui.settings import Flags, parse_flags
from webui.ui.settings_tab import shown_values

ROOT = Path(__file__).resolve().parent.parent
API_PW, UI_PW, FILE_PW = "Api-Pass-5521", "Ui-Pass-8832", "File-Pass-4417"
PASSWORDS = (API_PW, UI_PW, FILE_PW)
GOOD = "https://good.example"
HOSTILE = ("https://evil.example", "null")
HF_SIGN_IN = "sign in to use run history"  # Gradio's run history wants a Hugging Face login
TINY_JOB = {"prompt": "cross origin", "steps": 2, "width": 64, "height": 64, "save_images": True}


def _public(path: str) -> bool:
    """The login page and static assets (the allow-list of tests/api/test_auth_lan.py)."""
    return path in PUBLIC or path.startswith(PUBLIC_PREFIXES) or "{size}" in path


def _all_routes(app, client: httpx.Client) -> set[tuple[str, str]]:
    """Every (method, path): walked through the app and the mounted Gradio app, the
    OpenAPI paths, and Gradio routes that only exist in some configurations."""
    schema = client.get("/openapi.json")
    assert schema.status_code == 200
    routes = {(m.upper(), p) for p, ops in schema.json()["paths"].items() for m in ops}
    routes |= set(_walk(app.routes)) | set(GRADIO_ROUTES)
    return routes | {("GET", "/ext/prompt_history/history"), ("GET", "/docs")}


def _status(client: httpx.Client, method: str, path: str, **kwargs) -> httpx.Response:
    """The response's status and headers only: event streams are not read to the end."""
    with client.stream(method, _concrete(path), **kwargs) as response:
        if response.status_code in (401, 403):
            response.read()
        return response


def _cors_headers(response: httpx.Response) -> list[str]:
    return [k for k in response.headers if k.lower().startswith("access-control-")]


# --- 5. authentication on every route ---------------------------------------------------------


@pytest.fixture(scope="module")
def auth_file_server(tmp_path_factory) -> Iterator[tuple[ServerThread, object]]:
    """--api-auth, and UI users from a --gradio-auth-path file."""
    data = tmp_path_factory.mktemp("auth-file")
    users = data / "users.txt"
    users.write_text(f"carol:{FILE_PW}\n", encoding="utf-8")
    flags = parse_flags(["--data-dir", str(data), "--no-download-sd-model", "--api",
                         "--api-auth", f"bob:{API_PW}", "--gradio-auth-path", str(users)])  # fmt: skip
    app = create_app(flags)
    with ServerThread(app) as server:
        yield server, app


def test_every_route_is_401_without_and_open_with_credentials(auth_file_server) -> None:
    server, app = auth_file_server
    with httpx.Client(base_url=server.url, timeout=60) as anon, \
            httpx.Client(base_url=server.url, timeout=60, auth=("bob", API_PW)) as user:  # fmt: skip
        routes = sorted(r for r in _all_routes(app, user) if not _public(r[1]))
        assert len(routes) > 80
        login_page = anon.get("/")  # "/" is the login page until the browser logs in
        assert login_page.status_code == 200 and "Apply settings" not in login_page.text
        assert user.post("/login", data={"username": "carol", "password": "no"}).status_code >= 400
        logged_in = user.post("/login", data={"username": "carol", "password": FILE_PW})
        assert logged_in.status_code == 200
        assert "Apply settings" in user.get("/").text  # the app itself, once logged in
        answered, locked_out = [], []
        for method, path in routes:
            without, given = _status(anon, method, path), _status(user, method, path)
            # 401, or refused to everyone alike (the Gradio URL proxy: 403 for all)
            if without.status_code != 401 and not without.status_code == given.status_code == 403:
                answered.append((method, path, without.status_code))
            if given.status_code == 401 and HF_SIGN_IN not in given.text:
                locked_out.append((method, path))
        assert not answered, f"answered without credentials: {answered}"
        assert not locked_out, f"401 with credentials: {locked_out}"
        assert not any(p in login_page.text for p in PASSWORDS)


def test_no_password_in_cmd_flags_logs_or_flag_errors(tmp_path, capsys) -> None:
    users = tmp_path / "users.txt"
    users.write_text(f"carol:{FILE_PW}\n", encoding="utf-8")
    port = free_port()
    argv = ["--port", str(port), "--data-dir", str(tmp_path), "--no-download-sd-model", "--api",
            "--api-auth", f"bob:{API_PW}", "--gradio-auth", f"alice:{UI_PW}",
            "--gradio-auth-path", str(users), "--log-level", "DEBUG"]  # fmt: skip
    log_file = tmp_path / "server.log"
    with log_file.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "webui.app", *argv], cwd=ROOT, stdout=out,
            stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE="1"),
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=30) as client:
            deadline = time.monotonic() + 180
            while True:
                assert proc.poll() is None, log_file.read_text()
                try:  # 503 while the server is being built behind its first page
                    if client.get("/sdapi/v1/cmd-flags").status_code != 503:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.3)
            assert client.get("/sdapi/v1/cmd-flags", auth=("bob", "wrong")).status_code == 401
            flags = client.get("/sdapi/v1/cmd-flags", auth=("bob", API_PW))
            assert flags.status_code == 200
            assert flags.json()["api_auth"] == flags.json()["gradio_auth"] == "***"
            for user, password in (("alice", UI_PW), ("carol", FILE_PW)):
                assert client.post("/login", data={"username": user, "password": "x"}).is_error
                login = client.post("/login", data={"username": user, "password": password})
                assert login.status_code == 200
                assert client.get("/config").status_code == 200
            assert not any(p in flags.text for p in PASSWORDS)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    logged = log_file.read_text()
    assert "Running on local URL" in logged and " DEBUG " in logged  # the capture works
    assert not [p for p in PASSWORDS if p in logged], logged
    # a mistyped entry is named by its position: it may hold a password
    for argv in (["--api-auth", f"bob;{API_PW}"], ["--gradio-auth", f"al:x,alice{UI_PW}"]):
        with pytest.raises(SystemExit):
            parse_flags(argv)
        err = capsys.readouterr().err
        assert "user:password" in err and "entry" in err and API_PW not in err
        assert UI_PW not in err
    assert API_PW not in repr(parse_flags(["--api-auth", f"bob:{API_PW}"]))


# --- 6. hostile origins -------------------------------------------------------------------


def _png_with_parameters(text: str) -> str:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode()


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def cors_server(tmp_path_factory, tiny_files):
    """UI and API with the tiny SD 1.x model; only GOOD is allowed cross-origin."""
    data = tmp_path_factory.mktemp("cors")
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    shutil.copy(tiny_files["sd1"], data / "models" / "Stable-diffusion" / "tiny-sd1.safetensors")
    uploads = tmp_path_factory.mktemp("gradio-uploads")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(uploads))  # Gradio's upload folder, this app only
        app = create_app(parse_flags(["--data-dir", str(data), "--no-download-sd-model",
                                      "--api", "--cors-allow-origins", GOOD]))  # fmt: skip
        assert Path(app.state.gradio_app.uploaded_file_dir) == uploads
        with ServerThread(app) as server:
            yield server, app, data, uploads


def test_hostile_origins_get_no_cors_headers_and_cannot_submit_or_upload(cors_server) -> None:
    server, app, data, uploads = cors_server
    jobs, outputs, uploaded = len(app.state.ctx.jobs.jobs()), _files(data), _files(uploads)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        routes = _all_routes(app, client)
        unsafe = sorted(r for r in routes if r[0] in {"POST", "PUT", "PATCH", "DELETE"})
        assert ("POST", "/sdapi/v1/txt2img") in unsafe and ("POST", "/gradio_api/upload") in unsafe
        bodies = {
            "/sdapi/v1/txt2img": {"json": TINY_JOB},
            "/webui/v1/txt2img": {"json": TINY_JOB},
            "/sdapi/v1/png-info": {"json": {"image": _png_with_parameters("Steps: 7, Seed: 99")}},
            "/gradio_api/upload": {"files": {"files": ("hostile.png", b"\x89PNG hostile")}},
        }
        for origin in HOSTILE:
            for method, path in sorted(routes):
                preflight = client.options(_concrete(path), headers={
                    "Origin": origin, "Access-Control-Request-Method": method,
                    "Access-Control-Request-Headers": "content-type"})  # fmt: skip
                assert not _cors_headers(preflight), (origin, method, path, preflight.headers)
                if method == "GET":
                    response = _status(client, "GET", path, headers={"Origin": origin})
                    assert not _cors_headers(response), (origin, path)
            for method, path in unsafe:
                response = client.request(method, _concrete(path), headers={"Origin": origin},
                                          **bodies.get(path, {}))  # fmt: skip
                assert response.status_code == 403, (origin, method, path, response.text)
                assert not _cors_headers(response) and "Seed: 99" not in response.text
    assert len(app.state.ctx.jobs.jobs()) == jobs  # nothing queued
    assert _files(data) == outputs and _files(uploads) == uploaded  # nothing saved


def test_the_allowed_origin_can_submit_and_upload(cors_server) -> None:
    server, app, data, uploads = cors_server
    uploaded = _files(uploads)
    good = {"Origin": GOOD}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        preflight = client.options("/webui/v1/txt2img", headers={
            **good, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})  # fmt: skip
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == GOOD
        queued = client.post("/webui/v1/txt2img", json=TINY_JOB, headers=good)
        assert queued.status_code == 202, queued.text
        assert queued.headers["access-control-allow-origin"] == GOOD
        job = app.state.ctx.jobs.get(queued.json()["id"])
        assert app.state.ctx.jobs.wait(job, timeout=300) and job.error is None
        assert [p for p in _files(data / "outputs") if p.suffix == ".png"]
        info = client.post("/sdapi/v1/png-info", headers=good,
                           json={"image": _png_with_parameters("Steps: 7, Seed: 99")})  # fmt: skip
        assert info.status_code == 200 and "Seed: 99" in info.text
        upload = client.post("/gradio_api/upload", headers=good,
                             files={"files": ("allowed.png", b"\x89PNG allowed")})  # fmt: skip
        assert upload.status_code == 200, upload.text
        assert upload.headers["access-control-allow-origin"] == GOOD
    assert [p.name for p in _files(uploads) - uploaded] == ["allowed.png"]


# --- 7. path options and --freeze-settings -------------------------------------------------

PATH_WORDS = ("dir", "path", "folder", "file")
NOT_PATHS = {  # mention a file, but are no path
    "samples_filename_pattern": "a file name part: separators and dots are replaced",
    "samples_format": "png, jpg, jpeg or webp",
    "grid_format": "png, jpg, jpeg or webp",
    "save_images_add_number": "a number in the file name",
    "save_to_dirs": "on/off: sub-folders by the folder pattern",
    "grid_save_to_dirs": "on/off: sub-folders by the folder pattern",
    "directories_filename_pattern": "folder name parts: each is sanitised, never '..' or '/x'",
    "interrogate_clip_dict_limit": "a number of lines",
    "interrogate_wd14_model": "a folder name inside models/interrogate ('/', '\\', '..' refused)",
}


def test_every_path_like_option_is_marked_as_a_path() -> None:
    for definition in OPTION_DEFS:
        text = f"{definition.key} {definition.label}".lower()
        looks_like_path = any(w in text for w in PATH_WORDS) or definition.key.startswith("outdir")
        if definition.key in NOT_PATHS:
            assert not definition.path
        else:
            assert definition.path == looks_like_path, definition.key
    assert any(d.path for d in OPTION_DEFS)
    assert "/" not in sanitize_filename_part("../../etc/x") and ".." not in sanitize_filename_part(
        "../x"
    )


@pytest.mark.parametrize(
    ("flags", "exposed"),
    [
        (Flags(), False),
        (Flags(server_name="127.0.0.1"), False),
        (Flags(server_name="localhost"), False),
        (Flags(server_name="::1"), False),
        (Flags(listen=True), True),
        (Flags(share=True), True),
        (Flags(server_name="0.0.0.0"), True),
        (Flags(server_name="192.168.1.20"), True),
        (Flags(server_name="myhost.lan"), True),
    ],
)
def test_which_servers_are_reachable_from_the_network(flags: Flags, exposed: bool) -> None:
    assert flags.network_exposed is exposed


@pytest.fixture(scope="module")
def apps(tmp_path_factory) -> Iterator[dict[str, tuple[object, Path]]]:
    """UI + API apps (not served: the API through TestClient, the UI through its
    registered handlers): on the network, on loopback, and with --freeze-settings."""
    made = {}
    for name, extra in {"listen": ["--listen"], "loopback": ["--server-name", "127.0.0.1"],
                        "frozen": ["--freeze-settings"]}.items():  # fmt: skip
        data = tmp_path_factory.mktemp(name)
        flags = parse_flags(["--data-dir", str(data), "--no-download-sd-model", "--api", *extra])
        made[name] = (create_app(flags), data)
    yield made
    for app, _ in made.values():
        app.state.ctx.close()


def _handler(app, api_name: str):
    blocks = app.state.gradio_app.get_blocks()
    return next(f for f in blocks.fns.values() if f.api_name == api_name).fn


def _control(app, key: str):
    blocks = app.state.gradio_app.get_blocks()
    return next(b for b in blocks.blocks.values() if f"({key})" in str(getattr(b, "label", "")))


def _ui_values(app, changes: dict) -> list:
    """What a loaded Settings tab sends on Apply: what it showed, and every control."""
    ctx = app.state.ctx
    shown = shown_values(ctx)
    return [shown, *(changes.get(d.key, shown[d.key]) for d in ctx.options.definitions.values())]


def _apply(app, changes: dict) -> str:
    """The Apply button's message (its other outputs fill the controls)."""
    return _handler(app, "apply_settings")(*_ui_values(app, changes))[0]


def _config(data: Path) -> str | None:
    path = data / "config.json"
    return path.read_text() if path.exists() else None


PATHS = [d.key for d in OPTION_DEFS if d.path]


@pytest.mark.parametrize("key", PATHS)
def test_path_options_are_locked_on_the_network(apps, key, tmp_path) -> None:
    elsewhere = str(tmp_path / "elsewhere")
    app, data = apps["listen"]
    options, before = app.state.ctx.options, _config(data)
    api = TestClient(app)
    refused = api.post("/sdapi/v1/options", json={key: elsewhere})
    assert refused.status_code == 403 and key in refused.json()["detail"]
    override = api.post(
        "/webui/v1/txt2img", json={**TINY_JOB, "override_settings": {key: elsewhere}}
    )
    assert override.status_code == 422 and key in override.text
    with pytest.raises(gr.Error, match=key):
        _apply(app, {key: elsewhere})
    assert _control(app, key).interactive is False
    assert options.get(key) != elsewhere and _config(data) == before
    # A1111 clients post every option back: unchanged paths with other changes are fine
    everything = {**api.get("/sdapi/v1/options").json(), "CLIP_stop_at_last_layers": 2}
    assert api.post("/sdapi/v1/options", json=everything).status_code == 200
    assert options.get("CLIP_stop_at_last_layers") == 2

    app, data = apps["loopback"]  # the same requests change it on 127.0.0.1
    assert _control(app, key).interactive is not False
    assert TestClient(app).post("/sdapi/v1/options", json={key: elsewhere}).status_code == 200
    assert json.loads(_config(data))[key] == elsewhere
    assert "1 settings changed" in _apply(app, {key: elsewhere + "2"})
    assert app.state.ctx.options.get(key) == elsewhere + "2"


def test_freeze_settings_freezes_every_option(apps) -> None:
    app, data = apps["frozen"]
    options, before = app.state.ctx.options, _config(data)
    api = TestClient(app)
    for key, value in (("CLIP_stop_at_last_layers", 3), ("samples_format", "jpg"),
                       *((k, "/tmp/x") for k in PATHS)):  # fmt: skip
        response = api.post("/sdapi/v1/options", json={key: value})
        assert response.status_code == 403 and "freeze-settings" in response.text
        with pytest.raises(gr.Error, match="frozen"):
            _apply(app, {key: value})
        assert _control(app, key).interactive is False
    assert options.get("CLIP_stop_at_last_layers") == 1 and options.get("samples_format") == "png"
    assert _config(data) == before
    assert _apply(app, {}) == "No change."


# --- 8. extension install ------------------------------------------------------------------


def test_extension_install_from_the_ui_is_refused_on_the_network(apps, tmp_path) -> None:
    _, bare = _bare_repo(tmp_path)
    for name in ("listen", "loopback"):  # --listen, and any --server-name (A1111's rule)
        app, data = apps[name]
        folder = data / "extensions"
        before = sorted(folder.rglob("*")) if folder.exists() else None
        with pytest.raises(gr.Error, match="--enable-insecure-extension-access"):
            _handler(app, "install_from")(bare.as_uri(), "")
        with pytest.raises(gr.Error, match="--enable-insecure-extension-access"):
            _handler(app, "update_all")()
        assert (sorted(folder.rglob("*")) if folder.exists() else None) == before
    paths = {p for _, p in _walk(apps["listen"][0].routes)}
    assert not [p for p in paths if "install" in p], "an install route needs the same check"
    app, data = apps["frozen"]  # bound to 127.0.0.1: the same handler installs it
    _handler(app, "install_from")(bare.as_uri(), "")
    assert (data / "extensions" / "from_git" / "extension.py").is_file()


def test_server_folder_batches_are_off_on_the_network(apps, tmp_path) -> None:
    """img2img "Batch" and Upscale "Batch from Directory" read and write any folder the
    server can reach: hidden and refused when the UI is reachable from the network."""
    from webui.ui import extras_tab, img2img_tab

    (tmp_path / "in").mkdir()
    for name, allowed in (("listen", False), ("loopback", True)):
        app, _ = apps[name]
        ctx = app.state.ctx
        assert ctx.flags.server_folders_allowed is allowed
        blocks = app.state.gradio_app.get_blocks()
        tabs = {b.label: b.visible for b in blocks.blocks.values() if isinstance(b, gr.Tab)}
        assert tabs["Batch"] is allowed and tabs["Batch from Directory"] is allowed
    ctx = apps["listen"][0].state.ctx  # an event posted straight to the handler: refused
    folder = {"source_tab": 1, "input_dir": str(tmp_path / "in"), "output_dir": "", "mask_dir": ""}
    with pytest.raises(gr.Error, match="--listen"):
        img2img_tab._params(ctx, folder)
    with pytest.raises(gr.Error, match="--listen"):
        extras_tab._images({**folder, "source_tab": 2}, ctx.flags.server_folders_allowed)
    insecure = parse_flags(["--listen", "--enable-insecure-extension-access"])
    assert insecure.server_folders_allowed
    assert not parse_flags(["--hide-ui-dir-config"]).server_folders_allowed
