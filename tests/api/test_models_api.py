"""/webui/v1/models: listing, file operations and downloads through the whole app."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.model_manager.fake_sites import SDXL_LORA, FakeSites
from webui.app import create_app
from webui.settings import parse_flags


@pytest.fixture(scope="module")
def site() -> Iterator[FakeSites]:
    with FakeSites() as fake:
        yield fake


@pytest.fixture(scope="module")
def apps(tmp_path_factory, site) -> Iterator[dict]:
    made = {}
    for name, extra in {"local": [], "listen": ["--listen"]}.items():
        data = tmp_path_factory.mktemp(name)
        argv = ["--data-dir", str(data), "--no-download-sd-model", "--api", "--nowebui", *extra]
        app = create_app(parse_flags(argv))
        app.state.ctx.options.update({"huggingface_base_url": site.url,
                                      "civitai_base_url": site.url})  # fmt: skip
        made[name] = (TestClient(app), data)
    yield made
    for client, _ in made.values():
        client.app.state.ctx.close()


def test_downloads_are_refused_with_listen(apps, site):
    client, data = apps["listen"]
    answer = client.post(
        "/webui/v1/models/download", json={"url": f"{site.url}/cdn/style.safetensors"}
    )
    assert answer.status_code == 403
    assert "--enable-insecure-extension-access" in answer.json()["detail"]
    assert client.get("/webui/v1/models/downloads").json() == []


def test_download_list_rename_and_delete(apps, site):
    client, data = apps["local"]
    url = f"{site.url}/someone/styles/resolve/main/style.safetensors"
    task = client.post("/webui/v1/models/download", json={"url": url, "name": "zz.safetensors"})
    assert task.status_code == 202, task.text
    deadline = time.monotonic() + 60
    while (state := client.get(f"/webui/v1/models/downloads/{task.json()['id']}").json())[
        "state"
    ] not in ("done", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert state["state"] == "done", state
    assert state["total"] == state["done"] == len(SDXL_LORA) and state["kind"] == "lora"
    listing = client.get("/webui/v1/models", params={"kind": "lora"}).json()
    assert listing["total"] == 1 and listing["families"] == ["SDXL"]
    assert listing["items"][0]["rel"] == "zz.safetensors"
    assert [x["name"] for x in client.get("/sdapi/v1/loras").json()] == ["zz"]  # refreshed

    bad = client.post("/webui/v1/models/rename",
                      json={"kind": "lora", "rel": "zz.safetensors", "new_name": "../up"})  # fmt: skip
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "new_name"]
    missing = client.post("/webui/v1/models/rename",
                          json={"kind": "lora", "rel": "nope.safetensors", "new_name": "x"})  # fmt: skip
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "rel"]
    renamed = client.post("/webui/v1/models/rename",
                          json={"kind": "lora", "rel": "zz.safetensors", "new_name": "yy"})  # fmt: skip
    assert renamed.json() == {"rel": "yy.safetensors"}
    assert [x["name"] for x in client.get("/sdapi/v1/loras").json()] == ["yy"]
    notes = client.post("/webui/v1/models/notes",
                        json={"kind": "lora", "rel": "yy.safetensors", "notes": "nice"})  # fmt: skip
    assert notes.status_code == 200
    details = client.get(
        "/webui/v1/models/details", params={"kind": "lora", "rel": "yy.safetensors"}
    )
    assert details.json()["notes"] == "nice" and details.json()["trigger"] == "zzstyle"
    civitai = client.post(
        "/webui/v1/models/civitai", json={"kind": "lora", "rel": "yy.safetensors"}
    )
    assert civitai.json()["model"] == "Zz Style"
    gone = client.post("/webui/v1/models/delete", json={"kind": "lora", "rel": "yy.safetensors"})
    assert gone.status_code == 200 and str(data / "trash") in gone.json()["trash"]
    assert client.get("/sdapi/v1/loras").json() == []
    assert client.get("/webui/v1/models", params={"kind": "script"}).status_code == 422
    no_name = client.post("/webui/v1/models/download", json={"url": url, "name": "CON"})
    assert no_name.status_code == 422 and no_name.json()["detail"][0]["loc"] == ["body", "name"]
