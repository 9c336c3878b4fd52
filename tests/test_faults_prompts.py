"""Hostile prompts through txt2img on a tiny model (issue 7, point 18).

Emoji, right-to-left text, `../`, Windows device names and a 10,000-character prompt are
saved inside outputs/ under a name that fits the file system (255 bytes of UTF-8 per name)
with the prompt in the file name pattern, and the infotext read back from the PNG on disk
gives the prompt exactly. A NUL character is refused with a 422 naming the field (a PNG
text chunk cannot hold it, and no tokenizer or file name wants it).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.test_api import golden_payload
from webui.app import create_app
from webui.core.prompt_limits import clip_chunk_count
from webui.imaging.infotext import parse_infotext, read_infotext_from_image
from webui.settings import parse_flags

PATTERN = "[prompt_words]-[seed]-[model_name]"
PROMPTS = {
    "emoji": "🦊🔥 a fox 👩‍👩‍👧‍👦 in the snow 🏔️",
    "arabic": "ثعلب أحمر في الثلج",
    "hebrew": "שועל אדום בשלג, (red:1.2)",
    "mixed-direction": "a fox \u202eeman elif\u202c ثعلب and שועל",
    "dot-dot": "../../../../etc/passwd",
    "dot-dot-windows": "..\\..\\Windows\\system32\\",
    "absolute": "/tmp/evil",
    "CON": "CON",
    "NUL": "NUL",
    "AUX": "aux.txt",
    "COM1": "COM1",
    # 10,000 characters, the most a prompt may have, in at most 20 chunks of 75 tokens
    "long": ("breathtaking cinematography, magnificent snowflakes, spectacular illumination, "
             * 130)[:9982] + "the very last word",
    "long-emoji": ("🦊 " * 100 + "magnificent snowflakes " * 426)[:9998] + "🦊!",
}  # fmt: skip


@pytest.fixture(scope="module")
def api(tmp_path_factory, tiny_files) -> Iterator[tuple[TestClient, Path]]:
    data = tmp_path_factory.mktemp("prompts")
    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    shutil.copy(tiny_files["sd1"], folder / "tiny-sd1.safetensors")
    flags = parse_flags(["--nowebui", "--data-dir", str(data), "--no-download-sd-model"])
    with TestClient(create_app(flags)) as client:
        yield client, client.app.state.ctx.store.root


def _txt2img(client: TestClient, prompt: str, **changes):
    payload = golden_payload(prompt=prompt, negative_prompt=prompt[:100].strip(), steps=2, width=64,
                             height=64, save_images=True, send_images=False,
                             override_settings={"samples_filename_pattern": PATTERN}, **changes)  # fmt: skip
    return client.post("/sdapi/v1/txt2img", json=payload)


def test_the_long_prompts_are_long():
    assert len(PROMPTS["long"]) == 10_000 and len(PROMPTS["long-emoji"]) == 10_000
    assert clip_chunk_count(PROMPTS["long"]) <= 20 and clip_chunk_count(PROMPTS["long-emoji"]) <= 20


@pytest.mark.parametrize("name", list(PROMPTS))
def test_hostile_prompt_is_saved_inside_outputs_and_round_trips(api, name):
    client, root = api
    prompt = PROMPTS[name]
    before = {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()
    response = _txt2img(client, prompt, seed=77)
    assert response.status_code == 200, response.text
    (path,) = {p for p in root.rglob("*") if p.is_file()} - before
    resolved = path.resolve()
    assert resolved.is_relative_to(root.resolve())
    assert resolved.parent.parent.name == "txt2img-images"  # outputs/txt2img-images/<day>/
    for part in resolved.relative_to(root.resolve()).parts:
        assert 0 < len(part.encode("utf-8")) <= 255, part
    assert "\x00" not in path.name and "/" not in path.name and "\\" not in path.name
    assert ".." not in path.name
    stem = path.stem.split("-", 1)[1]  # after NNNNN-
    assert stem.split("-")[0].upper() not in {"CON", "NUL", "AUX", "COM1"}
    assert path.name.endswith("-77-tiny-sd1.png")  # a long prompt never pushes them out
    with Image.open(path) as image:
        image.load()
        text = read_infotext_from_image(image)
    fields = parse_infotext(text)
    assert fields["Prompt"] == prompt
    assert fields["Negative prompt"] == prompt[:100].strip()
    assert fields["Seed"] == 77
    info = response.json()["info"]
    assert parse_infotext(json.loads(info)["infotexts"][0])["Prompt"] == prompt


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_a_nul_character_in_a_prompt_is_refused_naming_the_field(api, field):
    client, root = api
    before = sorted(root.rglob("*")) if root.exists() else []
    changes = {field: "a red\x00fox"}
    response = client.post("/sdapi/v1/txt2img", json=golden_payload(save_images=True, **changes))
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(field in item["loc"] for item in detail), detail
    assert any("NUL" in item["msg"] for item in detail), detail
    assert (sorted(root.rglob("*")) if root.exists() else []) == before
