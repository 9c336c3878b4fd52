"""The API docs work offline (issue 19): /docs (Swagger UI) and /redoc (ReDoc) load their
scripts from this server, under --subpath and behind --api-auth like the rest of the API.
The browser test cuts off every host but 127.0.0.1 and checks that the pages render."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from tests.conftest import ServerThread
from tests.test_browser import CHROMIUM, CHROMIUM_FLAGS
from webui.app import create_app
from webui.settings import parse_flags

DOC_PAGES = ("/docs", "/redoc")
OPERATION = "/sdapi/v1/txt2img"


def _serve(data: Path, *flags: str) -> ServerThread:
    argv = ["--nowebui", "--data-dir", str(data), "--no-download-sd-model", *flags]
    return ServerThread(create_app(parse_flags(argv)))


def _page_urls(html: str) -> list[str]:
    """Every URL a docs page loads: scripts, styles, icon and the OpenAPI schema."""
    attributes = re.findall(r'(?:src|href|spec-url)="([^"]*)"', html)
    return attributes + re.findall(r"\burl: '([^']*)'", html)


def test_docs_pages_load_everything_from_this_server(tmp_path) -> None:
    with _serve(tmp_path, "--subpath", "/sd") as server, httpx.Client(timeout=60) as client:
        for page in DOC_PAGES:
            response = client.get(f"{server.url}/sd{page}")
            assert response.status_code == 200, page
            policy = response.headers["content-security-policy"]  # the browser loads no more
            assert "default-src 'self'" in policy and "img-src 'self' data:" in policy
            html = response.text
            assert not re.search(r"(https?:)?//[\w.-]+", html), page  # no other host at all
            urls = _page_urls(html)
            assert len(urls) >= 3, (page, urls)  # the script, the icon, the schema
            for url in urls:  # all on this server, under the subpath, and served
                assert url.startswith("/sd/"), (page, url)
                assert client.get(f"{server.url}{url}").status_code == 200, (page, url)
        script = client.get(f"{server.url}/sd/docs/assets/swagger-ui-bundle.js")
        assert "javascript" in script.headers["content-type"]
        assert "SwaggerUIBundle" in script.text


def test_docs_and_their_assets_need_the_api_credentials(tmp_path) -> None:
    with _serve(tmp_path, "--api-auth", "bob:secret-pw") as server:
        paths = [
            *DOC_PAGES,
            "/docs/assets/swagger-ui-bundle.js",
            "/docs/assets/redoc.standalone.js",
        ]
        with httpx.Client(base_url=server.url, timeout=60) as anon:
            assert [anon.get(p).status_code for p in paths] == [401] * len(paths)
        with httpx.Client(base_url=server.url, timeout=60, auth=("bob", "secret-pw")) as bob:
            assert [bob.get(p).status_code for p in paths] == [200] * len(paths)


def test_the_footer_links_to_the_docs_below_the_subpath() -> None:
    from webui.ui.blocks import footer_text

    ctx = SimpleNamespace(flags=SimpleNamespace(api=True), memory=SimpleNamespace(description=""))
    link = re.search(r'<a href="([^"]*)">/docs</a>', footer_text(ctx)).group(1)
    assert urljoin("http://host/sd/", link) == "http://host/sd/docs"
    assert urljoin("http://host/", link) == "http://host/docs"


@pytest.fixture
def offline_page(tmp_path) -> Iterator[tuple[object, str, list[str]]]:
    """A browser page that can reach 127.0.0.1 only; every other request is aborted and
    recorded. Yields (page, server url, the aborted urls)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    aborted: list[str] = []

    def only_this_machine(route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            aborted.append(route.request.url)
            route.abort()

    with _serve(tmp_path) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.route("**/*", only_this_machine)
        yield page, server.url, aborted
        browser.close()


@pytest.mark.browser
def test_swagger_ui_renders_without_the_internet(offline_page) -> None:
    page, url, aborted = offline_page
    page.goto(f"{url}/docs", wait_until="load")
    operation = page.locator(f'.opblock-summary-path[data-path="{OPERATION}"]')
    operation.wait_for(state="visible", timeout=60_000)
    operation.click()  # the operation opens with its parameters and "Try it out"
    page.get_by_role("button", name="Try it out").first.wait_for(timeout=30_000)
    assert aborted == []


@pytest.mark.browser
def test_redoc_renders_without_the_internet(offline_page) -> None:
    page, url, aborted = offline_page
    page.goto(f"{url}/redoc", wait_until="load")
    page.get_by_text(OPERATION, exact=True).first.wait_for(state="attached", timeout=60_000)
    assert page.locator("[role=menuitem]").count() > 20  # one per operation, and the tags
    assert aborted == []
