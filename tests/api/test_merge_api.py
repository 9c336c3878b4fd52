"""POST /webui/v1/merge and /webui/v1/merge/lora on a live server with tiny models."""

from __future__ import annotations

import time

import httpx
import pytest
import torch
from safetensors import safe_open

from tests.conftest import ServerThread
from tests.services.test_merge_service import merge_data_dir
from webui.app import create_app
from webui.settings import parse_flags


@pytest.fixture(scope="module")
def api(tmp_path_factory, tiny_files):
    data = tmp_path_factory.mktemp("merge-api")
    ckpt = merge_data_dir(data, tiny_files)
    flags = parse_flags(["--api", "--nowebui", "--data-dir", str(data), "--no-download-sd-model"])
    with ServerThread(create_app(flags)) as server, httpx.Client(base_url=server.url, timeout=300) as client:  # fmt: skip
        yield client, ckpt


def test_merge_route_writes_the_recipe_and_lists_the_model(api):
    client, folder = api
    body = {"primary_model_name": "a", "secondary_model_name": "b", "multiplier": 0.7,
            "config_source": 3, "custom_name": "api-ab"}  # fmt: skip
    answer = client.post("/webui/v1/merge", json=body)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["state"] == "done" and result["path"] == str(folder / "api-ab.safetensors")
    titles = [m["title"] for m in client.get("/sdapi/v1/sd-models").json()]
    assert result["title"] in titles
    with safe_open(result["path"], framework="pt") as merged, \
            safe_open(str(folder / "a.safetensors"), framework="pt") as a, \
            safe_open(str(folder / "b.safetensors"), framework="pt") as b:  # fmt: skip
        key = "model.diffusion_model.out.2.weight"
        assert torch.equal(merged.get_tensor(key), a.get_tensor(key) * 0.3 + b.get_tensor(key) * 0.7)  # fmt: skip
        assert '"config_source": 3' in merged.metadata()["sd_merge_recipe"]
    again = client.post("/webui/v1/merge", json=body)
    assert again.status_code == 422 and again.json()["detail"][0]["loc"] == ["body", "custom_name"]


@pytest.mark.parametrize(
    "body, field",
    [({"secondary_model_name": "xl"}, "secondary_model_name"),
     ({"secondary_model_name": "missing"}, "secondary_model_name"),
     ({"multiplier": 1.5}, "multiplier"), ({"multiplier": "lots"}, "multiplier"),
     ({"custom_name": "../up"}, "custom_name"), ({"config_source": 7}, "config_source"),
     ({"interp_method": "Add difference"}, "tertiary_model_name")],
)  # fmt: skip
def test_bad_merges_are_422_naming_the_field(api, body, field):
    client, _ = api
    answer = client.post("/webui/v1/merge", json={"primary_model_name": "a",
                                                  "secondary_model_name": "b", **body})  # fmt: skip
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"][0]
    assert detail["loc"][-1] == field, detail


def test_lora_merge_route(api):
    client, folder = api
    body = {"checkpoint": "a", "loras": "kohya:0.5", "save_as_half": True}
    answer = client.post("/webui/v1/merge/lora", params={"wait": "false"}, json=body)
    assert answer.status_code == 202, answer.text
    job = answer.json()["job"]
    for _ in range(600):
        state = client.get(f"/webui/v1/jobs/{job}").json()["state"]
        if state not in ("queued", "running"):
            break
        time.sleep(0.5)
    assert state == "done"
    path = folder / "a + 0.5(kohya).safetensors"
    with safe_open(str(path), framework="pt") as f:
        assert f.get_tensor("model.diffusion_model.out.2.weight").dtype == torch.float16
        assert '"webui-lora"' in f.metadata()["sd_merge_recipe"]
    missing = client.post("/webui/v1/merge/lora", json={"checkpoint": "a", "loras": []})
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"][-1] == "loras"
