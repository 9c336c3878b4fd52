"""Serving on a LAN: authentication, no password in any response, CORS and the
cross-origin guard, browser identity, --subpath, --listen's address, HTTPS with
--tls-keyfile/--tls-certfile. Servers bind 127.0.0.1 on a free port."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerThread, free_port
from webui import app as app_module
from webui.api.auth import OWNER_COOKIE, basic_credentials, matching_user
from webui.app import create_app
from webui.settings import Flags, parse_flags

ROOT = Path(__file__).resolve().parents[2]
API_PW, UI_PW = "Api-Secret-951", "Ui-Secret-357"
SECRETS = (API_PW, UI_PW)
# Gradio routes that must not answer without a UI login (besides any found by walking)
GRADIO_ROUTES = [
    ("GET", "/config"), ("GET", "/gradio_api/info"), ("POST", "/gradio_api/queue/join"),
    ("GET", "/gradio_api/queue/data"), ("POST", "/gradio_api/upload"),
    ("GET", "/gradio_api/heartbeat/abc"), ("POST", "/gradio_api/cancel"),
    ("POST", "/gradio_api/reset"), ("GET", "/gradio_api/user"), ("GET", "/gradio_api/token"),
    ("GET", "/gradio_api/app_id"), ("GET", "/gradio_api/startup-events"),
    ("GET", "/gradio_api/file=/etc/hostname"), ("POST", "/gradio_api/run/predict"),
    ("POST", "/gradio_api/call/predict"), ("GET", "/gradio_api/runs"), ("GET", "/monitoring"),
    ("POST", "/gradio_api/stream/abc"),
]  # fmt: skip
# what a browser may load before logging in: the login page and static assets
PUBLIC = {"/", "/login", "/login/", "/logout", "/theme.css", "/favicon.ico", "/robots.txt",
          "/manifest.json", "/gradio_api/theme.css"}  # fmt: skip
PUBLIC_PREFIXES = ("/static/", "/assets/", "/svelte/", "/pwa_icon")


def serve(tmp_path: Path, *argv: str) -> ServerThread:
    flags = parse_flags(["--data-dir", str(tmp_path), "--no-download-sd-model", *argv])
    return ServerThread(create_app(flags))


def _walk(routes, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path) of Starlette/FastAPI routes, through mounts and included routers."""
    for route in routes:
        if hasattr(route, "original_router"):  # FastAPI's lazily included router
            context = getattr(route, "include_context", None)
            inner = prefix + (getattr(context, "prefix", "") or "")
            yield from _walk(route.original_router.routes, inner)
        elif (
            hasattr(route, "app") and hasattr(route.app, "routes") and not hasattr(route, "methods")
        ):
            yield from _walk(route.app.routes, prefix + route.path)
        else:
            for method in sorted(getattr(route, "methods", None) or {"GET"}):
                if method != "HEAD":
                    yield method, prefix + route.path


def _concrete(path: str) -> str:
    return path.replace("{path:path}", "x").replace("{path_or_url:path}", "x").replace(
        "{url_path:path}", "x").replace("{", "").replace("}", "")  # fmt: skip


@pytest.fixture(scope="module")
def locked(tmp_path_factory) -> Iterator[tuple[ServerThread, object]]:
    """UI and API with --api-auth and --gradio-auth."""
    data = tmp_path_factory.mktemp("locked")
    flags = parse_flags(["--data-dir", str(data), "--no-download-sd-model", "--api",
                         "--api-auth", f"bob:{API_PW}", "--gradio-auth", f"alice:{UI_PW}"])  # fmt: skip
    app = create_app(flags)
    with ServerThread(app) as server:
        yield server, app


def test_every_route_but_static_assets_needs_credentials(locked) -> None:
    server, app = locked
    seen: list[httpx.Response] = []
    with httpx.Client(base_url=server.url, timeout=60) as anon:
        schema = anon.get("/openapi.json", auth=("bob", API_PW))
        assert schema.status_code == 200
        api_routes = [(m.upper(), p) for p, ops in schema.json()["paths"].items() for m in ops]
        assert ("POST", "/sdapi/v1/txt2img") in api_routes
        assert ("GET", "/webui/v1/queue") in api_routes
        routes = set(api_routes) | set(GRADIO_ROUTES) | set(_walk(app.routes))
        routes |= {("GET", "/docs"), ("GET", "/openapi.json")}
        checked = 0
        for method, path in sorted(routes):
            if (
                path in PUBLIC
                or path.startswith(PUBLIC_PREFIXES)
                or "{size}" in path  # /pwa_icon/{size}: an icon
            ):
                continue
            response = anon.request(method, _concrete(path))
            seen.append(response)
            assert response.status_code == 401, (method, path, response.status_code)
            checked += 1
        assert checked > 40
        wrong = anon.get("/sdapi/v1/options", auth=("bob", "wrong"))
        assert wrong.status_code == 401 and "basic" in wrong.headers["www-authenticate"].lower()
        assert (
            anon.get("/sdapi/v1/options", headers={"Authorization": "Basic !!!"}).status_code == 401
        )
        assert anon.get("/sdapi/v1/options", auth=("alice", UI_PW)).status_code == 401
        login_page = anon.get("/")  # the login page itself is served
        assert login_page.status_code == 200
        seen += [wrong, login_page]
    assert not _leaks(seen)


def test_with_credentials_and_no_password_in_any_response(locked) -> None:
    server, _ = locked
    seen: list[httpx.Response] = []
    with httpx.Client(base_url=server.url, timeout=60, auth=("bob", API_PW)) as api:
        for path in ("/sdapi/v1/options", "/sdapi/v1/cmd-flags", "/webui/v1/queue",
                     "/sdapi/v1/sd-models", "/sdapi/v1/progress", "/docs", "/openapi.json"):  # fmt: skip
            response = api.get(path)
            assert response.status_code == 200, (path, response.text)
            seen.append(response)
        assert api.get("/sdapi/v1/cmd-flags").json()["api_auth"] == "***"
    with httpx.Client(base_url=server.url, timeout=60) as browser:
        bad = browser.post("/login", data={"username": "alice", "password": "nope"})
        assert bad.status_code >= 400
        good = browser.post("/login", data={"username": "alice", "password": UI_PW})
        assert good.status_code == 200, good.text
        for path in ("/config", "/gradio_api/info", "/"):
            response = browser.get(path)
            assert response.status_code == 200, path
            seen.append(response)
        seen += [bad, good]
    assert not _leaks(seen)


def _leaks(responses: list[httpx.Response]) -> list[str]:
    found = []
    for response in responses:
        text = response.text + json.dumps(dict(response.headers))
        found += [f"{response.request.url}: {s}" for s in SECRETS if s in text]
    return found


def test_credentials_are_checked_in_constant_time_helpers() -> None:
    users = [("alice", "one"), ("bob", "two")]
    assert matching_user("bob", "two", users) == "bob"
    assert matching_user("bob", "one", users) is None
    assert matching_user("eve", "two", users) is None
    assert matching_user("", "", users) is None
    token = base64.b64encode(b"bob:pa:ss").decode()
    assert basic_credentials(f"Basic {token}") == ("bob", "pa:ss")
    for bad in (
        None,
        "",
        "Bearer x",
        "Basic",
        "Basic !!!",
        "Basic " + base64.b64encode(b"x").decode(),
    ):
        assert basic_credentials(bad) is None


# --- open server under --subpath: browser identity, CORS, cross-origin guard ------------------


@pytest.fixture(scope="module")
def open_server(tmp_path_factory) -> Iterator[ServerThread]:
    data = tmp_path_factory.mktemp("open")
    with serve(data, "--api", "--subpath", "/sd") as server:
        yield server


def test_subpath_serves_everything_under_the_prefix(open_server) -> None:
    with httpx.Client(base_url=open_server.url, timeout=60) as client:
        root = client.get("/")
        assert root.status_code == 307 and root.headers["location"] == "/sd/"
        assert client.get("/sd").headers["location"] == "/sd/"
        assert client.get("/sdapi/v1/options").status_code == 404
        assert client.get("/sd/sdapi/v1/options").status_code == 200
        assert client.get("/sd/webui/v1/queue").status_code == 200
        assert client.get("/sd/docs").status_code == 200
        schema = client.get("/sd/openapi.json").json()
        assert "/sdapi/v1/txt2img" in schema["paths"]
        assert schema.get("servers", [{}])[0].get("url") == "/sd"
        page = client.get("/sd/")
        assert page.status_code == 200 and "Stable Diffusion web UI" in page.text
        assert client.get("/sd/config").json()["root"].endswith("/sd")


def test_each_browser_gets_its_own_identity_cookie(open_server) -> None:
    with httpx.Client(base_url=open_server.url, timeout=60) as first, \
            httpx.Client(base_url=open_server.url, timeout=60) as second:  # fmt: skip
        page = first.get("/sd/")
        cookie = page.headers.get("set-cookie", "")
        assert cookie.startswith(f"{OWNER_COOKIE}=") and "HttpOnly" in cookie
        assert "SameSite=Lax" in cookie and "Path=/sd/" in cookie
        assert "set-cookie" not in first.get("/sd/").headers  # kept, not replaced
        second.get("/sd/")
        assert first.cookies[OWNER_COOKIE] != second.cookies[OWNER_COOKIE]
        assert "set-cookie" not in first.get("/sd/sdapi/v1/options").headers  # API: none


def test_no_cross_origin_access_without_cors_flags(open_server) -> None:
    evil = {"Origin": "http://evil.example"}
    with httpx.Client(base_url=open_server.url, timeout=60) as client:
        for path in ("/sd/sdapi/v1/options", "/sd/config", "/sd/webui/v1/queue"):
            read = client.get(path, headers=evil)  # Gradio's own CORS is off too
            assert read.status_code == 200 and "access-control-allow-origin" not in read.headers
        preflight = client.options("/sd/sdapi/v1/interrupt", headers={
            **evil, "Access-Control-Request-Method": "POST"})  # fmt: skip
        assert "access-control-allow-origin" not in preflight.headers
        assert client.post("/sd/sdapi/v1/interrupt", headers=evil).status_code == 403
        assert client.post("/sd/gradio_api/queue/join", headers=evil).status_code == 403
        assert client.post("/sd/sdapi/v1/interrupt", headers={"Origin": "null"}).status_code == 403
        same = {"Origin": open_server.url}
        assert client.post("/sd/sdapi/v1/interrupt", headers=same).status_code == 200
        assert client.post("/sd/sdapi/v1/interrupt").status_code == 200  # not a browser


def test_cors_only_from_the_allowed_origins(tmp_path) -> None:
    argv = ["--nowebui", "--cors-allow-origins", "http://good.example,http://other.example",
            "--cors-allow-origins-regex", r"https://.*\.lan\.example"]  # fmt: skip
    with serve(tmp_path, *argv) as server, httpx.Client(base_url=server.url, timeout=60) as c:
        for origin in ("http://good.example", "https://pc1.lan.example"):
            response = c.get("/sdapi/v1/options", headers={"Origin": origin})
            assert response.headers.get("access-control-allow-origin") == origin
            preflight = c.options("/sdapi/v1/interrupt", headers={
                "Origin": origin, "Access-Control-Request-Method": "POST"})  # fmt: skip
            assert preflight.status_code == 200
            assert preflight.headers.get("access-control-allow-origin") == origin
            assert c.post("/sdapi/v1/interrupt", headers={"Origin": origin}).status_code == 200
        for origin in ("http://evil.example", "https://lan.example.evil"):
            response = c.get("/sdapi/v1/options", headers={"Origin": origin})
            assert "access-control-allow-origin" not in response.headers
            assert c.post("/sdapi/v1/interrupt", headers={"Origin": origin}).status_code == 403


def test_a_bad_cors_regex_is_refused_at_start(capsys) -> None:
    with pytest.raises(SystemExit):
        parse_flags(["--cors-allow-origins-regex", "(unclosed"])
    assert "--cors-allow-origins-regex" in capsys.readouterr().err


# --- --listen and HTTPS ---------------------------------------------------------------------


def test_listen_binds_all_interfaces_and_prints_the_lan_address(monkeypatch, capsys) -> None:
    assert Flags().server_host == "127.0.0.1"
    assert Flags(listen=True).server_host == "0.0.0.0"
    assert Flags(listen=True, server_name="10.0.0.5").server_host == "10.0.0.5"
    addresses = app_module._lan_addresses()  # read from the interfaces, no traffic sent
    assert all(not a.startswith("127.") for a in addresses)
    monkeypatch.setattr(app_module, "_lan_addresses", lambda: ["192.168.1.23"])
    app_module._announce(Flags(listen=True, port=7861), "http://127.0.0.1:7861/")
    out = capsys.readouterr().out
    assert "Running on local URL:  http://127.0.0.1:7861/" in out
    assert "On your network:       http://192.168.1.23:7861/" in out
    app_module._announce(Flags(port=7861), "http://127.0.0.1:7861/")
    assert "On your network" not in capsys.readouterr().out


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key, cert = folder / "key.pem", folder / "cert.pem"
    openssl = shutil.which("openssl")
    if openssl:
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True,
        )  # fmt: skip
        return key, cert
    pytest.fail(
        "the HTTPS test makes its certificate with the openssl CLI: apt-get install openssl"
    )


def test_https_with_tls_flags(tmp_path) -> None:
    key, cert = _self_signed(tmp_path)
    port = free_port()
    argv = ["--nowebui", "--port", str(port), "--data-dir", str(tmp_path),
            "--no-download-sd-model", "--tls-keyfile", str(key), "--tls-certfile", str(cert)]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "webui.app", *argv], cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        url = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        with httpx.Client(verify=str(cert), timeout=10) as client:
            while True:
                assert proc.poll() is None, proc.stdout.read()
                try:  # 503 while the server is being built behind its first page
                    response = client.get(f"{url}/sdapi/v1/cmd-flags")
                    if response.status_code != 503:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the HTTPS server did not start"
                time.sleep(0.3)
            assert response.status_code == 200
            assert response.json()["tls_certfile"] == str(cert)
        with httpx.Client(timeout=10) as plain, pytest.raises(httpx.TransportError):
            plain.get(f"http://127.0.0.1:{port}/sdapi/v1/cmd-flags")
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    assert f"Running on local URL:  https://127.0.0.1:{port}/" in output


def test_job_owners_are_users_else_browsers() -> None:
    import gradio as gr

    from webui.owners import guest_owner
    from webui.ui.common import owner_of

    assert owner_of(gr.Request(username="alice", session_hash="s1")) == "alice"
    browser = gr.Request(session_hash="s2", cookies={OWNER_COOKIE: "token-1"})
    assert (
        owner_of(browser)
        == guest_owner("token-1")
        != owner_of(gr.Request(session_hash="s2", cookies={OWNER_COOKIE: "token-2"}))
    )
    assert owner_of(gr.Request(session_hash="s3", cookies={})) == "session-s3"
    assert owner_of(None) == "local"
