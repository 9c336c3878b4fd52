"""POST /webui/v1/train/lora on a live server with the tiny SD 1.x model: a training job
on the queue whose LoRA the next prompt uses, and 422s naming the field."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import ServerThread, with_tiny_sd1
from tests.core.test_train_lora import write_dataset
from webui.app import create_app
from webui.settings import parse_flags


@pytest.fixture(scope="module")
def api(tmp_path_factory, tiny_files):
    data = with_tiny_sd1(tmp_path_factory.mktemp("train-api"), tiny_files)
    images = write_dataset(data / "dataset")
    flags = parse_flags(["--api", "--nowebui", "--data-dir", str(data), "--no-download-sd-model"])
    with ServerThread(create_app(flags)) as server, httpx.Client(base_url=server.url, timeout=300) as client:  # fmt: skip
        yield client, images


def body(images, **changes) -> dict:
    return {"checkpoint": "tiny-sd1", "train_data_dir": str(images), "output_name": "api-lora",
            "resolution": 64, "network_dim": 4, "max_train_steps": 2, "unet_lr": 1e-2,
            "sample_steps": 1, "seed": 5, **changes}  # fmt: skip


def wait_done(client, job: str) -> dict:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        info = client.get(f"/webui/v1/jobs/{job}").json()
        if info["state"] not in ("queued", "running"):
            return info
        time.sleep(0.5)
    raise AssertionError("the training job did not end")


def test_a_trained_lora_is_listed_with_metadata_and_used_by_the_next_prompt(api):
    client, images = api
    answer = client.post("/webui/v1/train/lora", json=body(images))
    assert answer.status_code == 202, answer.text
    job = answer.json()["job"]
    assert wait_done(client, job)["state"] == "done"
    log = client.get(f"/webui/v1/train/lora/{job}").json()
    assert len(log["losses"]) == 2 and log["path"].endswith("api-lora.safetensors")
    loras = {lo["name"]: lo for lo in client.get("/sdapi/v1/loras").json()}
    assert loras["api-lora"]["metadata"]["ss_network_dim"] == "4"
    assert client.get("/webui/v1/train/states").json() == ["api-lora"]

    def image(prompt: str) -> str:
        reply = client.post("/sdapi/v1/txt2img", json={"prompt": prompt, "steps": 2, "width": 64,
                                                       "height": 64, "seed": 3})  # fmt: skip
        assert reply.status_code == 200, reply.text
        return reply.json()["images"][0]

    assert image("a cat <lora:api-lora:1>") != image("a cat")
    again = client.post("/webui/v1/train/lora", json=body(images))
    assert again.status_code == 422  # the file exists: not overwritten unless asked
    assert again.json()["detail"][0]["loc"] == ["body", "output_name"]


@pytest.mark.parametrize(
    "changes, field",
    [({"train_data_dir": "/nonexistent/folder"}, "train_data_dir"),
     ({"train_batch_size": 5}, "train_batch_size"), ({"checkpoint": "missing"}, "checkpoint"),
     ({"network_dim": 0}, "network_dim"), ({"resolution": 100}, "resolution"),
     ({"lr_scheduler": "sometimes"}, "lr_scheduler"), ({"optimizer_type": "AdamW8bit"}, "optimizer_type"),
     ({"output_name": "../x"}, "output_name"), ({"resume": "never-saved"}, "resume"),
     ({"unet_lr": "fast"}, "unet_lr"), ({"network_rank": 4}, "network_rank")],
)  # fmt: skip
def test_bad_input_is_422_naming_the_field(api, changes, field):
    client, images = api
    answer = client.post(
        "/webui/v1/train/lora", json=body(images, **{"output_name": "other", **changes})
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"][:2] == ["body", field]


def test_the_option_to_run_jobs_between_training_steps_is_in_the_api(api):
    client, _ = api
    url = "/sdapi/v1/options"
    assert client.get(url).json()["training_yield_to_jobs"] is True  # on by default
    try:
        assert client.post(url, json={"training_yield_to_jobs": False}).status_code == 200
        assert client.get(url).json()["training_yield_to_jobs"] is False
        bad = client.post(url, json={"training_yield_to_jobs": "sometimes"})
        assert bad.status_code == 422 and "training_yield_to_jobs" in bad.text
    finally:
        client.post(url, json={"training_yield_to_jobs": True})
