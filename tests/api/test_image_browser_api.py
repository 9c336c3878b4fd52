"""The Image Browser's routes under /webui/v1/images, on the whole app with the real worker:
search and paging, favourites, delete to the trash, embeddings as a queued job, the map."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.core.test_image_index import save_png
from tests.tiny_clip_vision import save_tiny_clip_vision
from webui.app import create_app
from webui.settings import parse_flags


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[TestClient]:
    data = tmp_path_factory.mktemp("browser-api")
    save_tiny_clip_vision(data / "models" / "clip_vision")
    for n in range(5):
        save_png(data / "outputs" / "txt2img-images" / f"{n}.png", f"a cat number {n}", n,
                 model="tiny" if n % 2 else "other", mtime=1_000 + n)  # fmt: skip
    flags = parse_flags(["--api", "--nowebui", "--data-dir", str(data), "--no-download-sd-model"])
    with TestClient(create_app(flags)) as test_client:
        yield test_client


def test_search_pages_filters_and_sorts(client) -> None:
    first = client.get("/webui/v1/images", params={"refresh": True, "limit": 2}).json()
    assert first["total"] == 5 and [i["seed"] for i in first["images"]] == [4, 3]
    second = client.get("/webui/v1/images", params={"limit": 2, "cursor": first["next_cursor"]})
    assert [i["seed"] for i in second.json()["images"]] == [2, 1]
    cats = client.get("/webui/v1/images", params={"words": "number", "model": "tiny",
                                                   "sort": "seed", "order": "asc"}).json()  # fmt: skip
    assert [i["seed"] for i in cats["images"]] == [1, 3]
    assert cats["images"][0]["infotext"].startswith("a cat number 1\nNegative prompt: ugly")
    models = client.get("/webui/v1/images/models").json()
    assert models["models"] == ["other", "tiny"] and models["samplers"] == ["Euler a"]
    assert models["clip_vision"] == ["tiny-vit", "tiny_clip_vision.safetensors"]


@pytest.mark.parametrize(
    "params, field",
    [({"sort": "colour"}, "sort"), ({"limit": 0}, "limit"), ({"cursor": "nope"}, "cursor"),
     ({"ids": "1,x"}, "ids"), ({"width": -1}, "width")],
)  # fmt: skip
def test_bad_queries_answer_422_naming_the_field(client, params, field) -> None:
    answer = client.get("/webui/v1/images", params=params)
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"][-1] == field


def test_favourite_file_and_delete_to_trash(client) -> None:
    image = client.get("/webui/v1/images", params={"refresh": True, "seed": 0}).json()["images"][0]
    assert client.post(f"/webui/v1/images/{image['id']}/favourite", json={}).status_code == 200
    liked = client.get("/webui/v1/images", params={"favourites": True}).json()["images"]
    assert [i["id"] for i in liked] == [image["id"]]
    assert client.get(f"/webui/v1/images/{image['id']}/file").content.startswith(b"\x89PNG")
    moved = client.post(f"/webui/v1/images/{image['id']}/delete").json()["trash"]
    assert Path(moved).is_file() and Path(moved).parent.name == "trash"
    assert not Path(image["path"]).exists()
    assert client.get(f"/webui/v1/images/{image['id']}").status_code == 404
    assert client.post(f"/webui/v1/images/{image['id']}/delete").status_code == 404
    assert client.post("/webui/v1/images/999999/favourite", json={}).status_code == 404


def test_embeddings_job_and_the_map(client) -> None:
    client.post("/webui/v1/images/scan")
    no_map = client.get("/webui/v1/images/map", params={"model": "tiny-vit"})
    assert no_map.status_code == 422 and "compute the embeddings first" in no_map.text
    bad = client.post("/webui/v1/images/embeddings", json={"model": "../../etc/passwd"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "model"]
    queued = client.post("/webui/v1/images/embeddings", json={"model": "tiny-vit"})
    assert queued.status_code == 202
    job_id = queued.json()["job"]
    deadline = time.monotonic() + 180
    while (state := client.get(f"/webui/v1/jobs/{job_id}").json())["state"] in (
        "queued",
        "running",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert state["state"] == "done" and state["kind"] == "embed_images", state
    shown = client.get("/webui/v1/images/map", params={"model": "tiny-vit", "clusters": 2}).json()
    total = client.get("/webui/v1/images").json()["total"]
    assert len(shown["points"]) == total >= 3 and shown["clusters"] == 2
    members = [p["id"] for p in shown["points"] if p["cluster"] == shown["points"][0]["cluster"]]
    page = client.get("/webui/v1/images", params={"ids": ",".join(map(str, members))}).json()
    assert sorted(i["id"] for i in page["images"]) == sorted(members)
    assert all(math.isfinite(p["x"]) and math.isfinite(p["y"]) for p in shown["points"])
