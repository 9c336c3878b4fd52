"""A1111's /sdapi/v1/create/embedding and /sdapi/v1/train/embedding on a live server with
the tiny SD 1.x model: A1111's answers, the trained embedding changes the next image, and
422s naming the field."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.conftest import ServerThread, with_tiny_sd1
from tests.core.test_train_lora import write_dataset
from webui.app import create_app
from webui.settings import parse_flags


@pytest.fixture(scope="module")
def api(tmp_path_factory, tiny_files):
    data = with_tiny_sd1(tmp_path_factory.mktemp("ti-api"), tiny_files)
    images = write_dataset(data / "dataset") / "2_cat"
    flags = parse_flags(["--api", "--nowebui", "--data-dir", str(data), "--no-download-sd-model"])
    with ServerThread(create_app(flags)) as server, httpx.Client(base_url=server.url, timeout=300) as client:  # fmt: skip
        yield client, images, data


def train_body(images, **changes) -> dict:
    return {"id_task": "ti-task", "embedding_name": "tiapi", "learn_rate": "0.5:2, 0.2",
            "data_root": str(images), "training_width": 64, "training_height": 64, "steps": 3,
            "template_filename": "subject.txt", **changes}  # fmt: skip


def image(client, prompt: str) -> str:
    reply = client.post("/sdapi/v1/txt2img", json={"prompt": prompt, "steps": 2, "width": 64,
                                                   "height": 64, "seed": 3})  # fmt: skip
    assert reply.status_code == 200, reply.text
    return reply.json()["images"][0]


def test_create_then_train_changes_the_image(api):
    client, images, data = api
    answer = client.post("/sdapi/v1/create/embedding",
                         json={"name": "tiapi", "init_text": "cat", "num_vectors_per_token": 2})  # fmt: skip
    assert answer.status_code == 200, answer.text
    path = data / "models" / "embeddings" / "tiapi.safetensors"
    assert answer.json() == {"info": f"create embedding filename: {path}"}
    loaded = client.get("/sdapi/v1/embeddings").json()["loaded"]
    assert loaded["tiapi"]["step"] == 0 and loaded["tiapi"]["vectors"] == 2
    untrained = image(client, "a photo of tiapi")
    answer = client.post("/sdapi/v1/train/embedding", json=train_body(images))
    assert answer.status_code == 200, answer.text
    assert answer.json()["info"].startswith(
        f"train embedding complete: filename: {path} error: None"
    )
    assert client.get("/sdapi/v1/embeddings").json()["loaded"]["tiapi"]["step"] == 3
    assert image(client, "a photo of tiapi") != untrained
    job = client.get("/webui/v1/jobs/ti-task").json()  # id_task is the job's id
    assert job["state"] == "done"
    again = client.post("/sdapi/v1/create/embedding", json={"name": "tiapi"})
    assert again.status_code == 422
    assert again.json()["detail"][0]["loc"] == ["body", "name"]


@pytest.mark.parametrize(
    "body, field",
    [({"name": "../x"}, "name"), ({"name": "ok", "num_vectors_per_token": 0}, "num_vectors_per_token"),
     ({"name": "ok", "vectors": 2}, "vectors"), ({"name": "ok", "checkpoint": "missing"}, "checkpoint")],
)  # fmt: skip
def test_bad_create_input_is_422_naming_the_field(api, body, field):
    answer = api[0].post("/sdapi/v1/create/embedding", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"][-1] == field


@pytest.mark.parametrize(
    "changes, field",
    [({"embedding_name": "never-made"}, "embedding_name"), ({"learn_rate": "fast"}, "learn_rate"),
     ({"data_root": "/nonexistent/folder"}, "data_root"), ({"batch_size": 2}, "batch_size"),
     ({"template_filename": "nope.txt"}, "template_filename"), ({"steps": 0}, "steps"),
     ({"latent_sampling_method": "often"}, "latent_sampling_method"),
     ({"preview_sampler_name": "Nope"}, "preview_sampler_name"), ({"learnrate": 1}, "learnrate"),
     ({"training_width": 60}, "training_width"), ({"id_task": "bad id/"}, "id_task")],
)  # fmt: skip
def test_bad_train_input_is_422_naming_the_field(api, changes, field):
    client, images, data = api
    (data / "models" / "embeddings").mkdir(parents=True, exist_ok=True)
    client.post("/sdapi/v1/create/embedding", json={"name": "tiapi", "init_text": "cat"})
    answer = client.post("/sdapi/v1/train/embedding", json=train_body(images, **changes))
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"][-1] == field


def test_progress_shows_the_training_and_interrupt_keeps_the_embedding(api):
    client, images, data = api
    client.post("/sdapi/v1/create/embedding", json={"name": "long", "init_text": "dog"})
    done: dict = {}

    def run() -> None:
        body = train_body(images, id_task=None, embedding_name="long", steps=100000)
        done["answer"] = client.post("/sdapi/v1/train/embedding", json=body)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + 300
        progress: dict = {}
        while time.monotonic() < deadline and "answer" not in done:
            progress = client.get("/sdapi/v1/progress").json()
            if "loss" in (progress["textinfo"] or "") and progress["state"]["sampling_step"]:
                break
            time.sleep(0.2)
        assert "loss" in progress["textinfo"], progress
        assert progress["state"]["job"] == "train_embedding"
        assert progress["state"]["sampling_steps"] == 100000 and progress["eta_relative"] > 0
    finally:
        client.post("/sdapi/v1/interrupt")
        thread.join(300)
    info = done["answer"].json()["info"]
    assert "error: None" in info and "Interrupted at step" in info
    step = client.get("/sdapi/v1/embeddings").json()["loaded"]["long"]["step"]
    assert step >= 1
