"""POST /sdapi/v1/interrogate with tiny models of the real classes, over real HTTP.

One server serves the module: models/interrogate holds a tiny transformers BLIP and CLIP
(saved as users have them), three category lists and a tiny ONNX WD14 tagger;
models/torch_deepdanbooru a tiny ONNX DeepDanbooru model with tags.txt. The answers are
compared with what bare transformers give for the same files.
"""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from tests.conftest import ServerThread
from tests.tiny_interrogate import (
    save_tiny_blip,
    save_tiny_clip,
    save_tiny_deepbooru,
    save_tiny_wd14,
)
from webui.app import create_app
from webui.model_manager.interrogate_files import CHARACTER, GENERAL, RATING
from webui.settings import parse_flags

FLAVORS = ["oil painting", "pixel art", "watercolor", "photograph", "sketch"]
MEDIUMS = ["a photo", "a drawing", "a render"]
ARTISTS = ["by Alice", "by Bob"]
WD14_TAGS = [("1girl", GENERAL, 0.9), ("blue_sky", GENERAL, 0.5), ("grass", GENERAL, 0.2),
             ("hatsune_miku", CHARACTER, 0.95), ("some_one", CHARACTER, 0.6),
             ("general", RATING, 0.99)]  # fmt: skip
DEEPBOORU_TAGS = [("solo", 0.55), ("long_hair", 0.9), ("smile_(happy)", 0.7),
                  ("outdoors", 0.3), ("rating:safe", 0.99)]  # fmt: skip


@pytest.fixture(scope="module")
def srv(tmp_path_factory) -> Iterator[tuple[str, httpx.Client, Path]]:
    data = tmp_path_factory.mktemp("interrogate")
    folder = data / "models" / "interrogate"
    save_tiny_blip(folder / "blip-tiny")
    save_tiny_clip(folder / "clip-tiny")
    (folder / "flavors.txt").write_text("\n".join(FLAVORS) + "\n", encoding="utf-8")
    (folder / "mediums.top2.txt").write_text("\n".join(MEDIUMS) + "\n", encoding="utf-8")
    (folder / "artists.txt").write_text("\n".join(ARTISTS) + "\n", encoding="utf-8")
    save_tiny_wd14(folder / "wd-tiny-tagger", WD14_TAGS)
    save_tiny_deepbooru(data / "models" / "torch_deepdanbooru", DEEPBOORU_TAGS)
    flags = parse_flags(["--api", "--nowebui", "--data-dir", str(data)])
    with ServerThread(create_app(flags)) as server, httpx.Client(timeout=300) as client:
        yield server.url + "/sdapi/v1", client, data


def _picture() -> Image.Image:
    image = Image.new("RGB", (64, 48), (200, 40, 30))
    image.paste((20, 60, 220), (0, 0, 32, 48))
    return image


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _ask(srv, model: str, **options) -> httpx.Response:
    url, client, _data = srv
    if options:
        assert client.post(f"{url}/options", json=options).status_code == 200
    return client.post(f"{url}/interrogate", json={"image": _b64(_picture()), "model": model})


def _expected_clip(data: Path, skip: tuple[str, ...] = ()) -> tuple[str, list[str]]:
    """The caption and the best lines per category, from bare transformers."""
    from transformers import BlipForConditionalGeneration, BlipProcessor, CLIPModel, CLIPProcessor

    folder, image = data / "models" / "interrogate", _picture()
    processor = BlipProcessor.from_pretrained(folder / "blip-tiny")
    blip = BlipForConditionalGeneration.from_pretrained(folder / "blip-tiny").eval()
    with torch.no_grad():
        pixels = processor(images=image, return_tensors="pt").pixel_values
        out = blip.generate(pixel_values=pixels, num_beams=1, min_length=24, max_length=48)
        caption = processor.decode(out[0], skip_special_tokens=True).strip()
        clip = CLIPModel.from_pretrained(folder / "clip-tiny").eval()
        clip_processor = CLIPProcessor.from_pretrained(folder / "clip-tiny")
        inputs = clip_processor(images=image, return_tensors="pt")
        image_features = clip.get_image_features(**inputs).pooler_output
        best = []
        for name, items, topn in (("artists", ARTISTS, 1), ("flavors", FLAVORS, 1),
                                  ("mediums.top2", MEDIUMS, 2)):  # fmt: skip
            if name in skip:
                continue
            tokens = clip_processor.tokenizer(items, padding=True, return_tensors="pt")
            text_features = clip.get_text_features(**tokens).pooler_output
            similarity = torch.nn.functional.cosine_similarity(
                image_features, text_features, dim=-1
            )
            best += [items[i] for i in similarity.topk(topn).indices.tolist()]
    return caption, best


def test_clip_gives_the_blip_caption_and_the_best_line_of_each_list(srv) -> None:
    caption, best = _expected_clip(srv[2])
    response = _ask(srv, "clip")
    assert response.status_code == 200, response.text
    assert caption and response.json() == {"caption": ", ".join([caption, *best])}


def test_clip_options_skip_categories_and_return_ranks(srv) -> None:
    caption, best = _expected_clip(srv[2], skip=("flavors",))
    response = _ask(srv, "clip", interrogate_clip_skip_categories=["flavors"],
                    interrogate_return_ranks=True)  # fmt: skip
    _ask(srv, "", interrogate_clip_skip_categories=[], interrogate_return_ranks=False)
    parts = response.json()["caption"].split(", ")
    assert parts[0] == caption and len(parts) == 1 + len(best)
    for part, text in zip(parts[1:], best, strict=True):
        assert part.startswith(f"({text}:") and part.endswith(")")
        assert 0 <= float(part[len(text) + 2 : -1]) <= 1  # softmax share, as A1111


def test_deepbooru_tags_over_the_threshold_sorted_spaced_escaped(srv) -> None:
    assert _ask(srv, "deepdanbooru").json() == {
        "caption": r"long hair, smile \(happy\), solo"  # alphabetical, no rating, >= 0.5
    }
    response = _ask(srv, "deepdanbooru", interrogate_deepbooru_score_threshold=0.6,
                    deepbooru_sort_alpha=False, deepbooru_use_spaces=False,
                    deepbooru_escape=False)  # fmt: skip
    assert response.json() == {"caption": "long_hair, smile_(happy)"}  # by score
    response = _ask(srv, "deepdanbooru", deepbooru_filter_tags="long hair",
                    interrogate_return_ranks=True)  # fmt: skip
    _ask(srv, "", interrogate_deepbooru_score_threshold=0.5, deepbooru_sort_alpha=True,
         deepbooru_use_spaces=True, deepbooru_escape=True, deepbooru_filter_tags="",
         interrogate_return_ranks=False)  # fmt: skip
    assert response.json() == {"caption": "(smile_(happy):0.700)"}


def test_wd14_tagger_general_and_character_thresholds(srv) -> None:
    expected = "hatsune miku, 1girl, blue sky"  # by score; no rating, no low tags
    assert _ask(srv, "wd-tiny-tagger").json() == {"caption": expected}
    assert _ask(srv, "wd14").json() == {"caption": expected}  # the first tagger
    response = _ask(srv, "wd14", interrogate_wd14_general_threshold=0.6,
                    interrogate_wd14_character_threshold=0.5)  # fmt: skip
    _ask(srv, "", interrogate_wd14_general_threshold=0.35,
         interrogate_wd14_character_threshold=0.85)  # fmt: skip
    assert response.json() == {"caption": "hatsune miku, 1girl, some one"}


@pytest.mark.parametrize(
    "body, field, words",
    [({"image": "", "model": "clip"}, "image", "no image"),
     ({"image": "not base64!", "model": "clip"}, "image", "base64"),
     ({"model": "blip2-xxl"}, "model", "unknown model 'blip2-xxl'")],
)  # fmt: skip
def test_bad_requests_are_422_naming_the_field(srv, body, field, words) -> None:
    url, client, _data = srv
    body = {"image": _b64(_picture()), **body}
    response = client.post(f"{url}/interrogate", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert field in detail[0]["loc"] and words in detail[0]["msg"], detail


def test_a_missing_model_file_is_named_with_its_folder(srv) -> None:
    url, client, data = srv
    folder = data / "models" / "torch_deepdanbooru"
    shutil.move(folder / "tags.txt", data / "tags.txt")
    try:
        response = _ask(srv, "deepdanbooru")
    finally:
        shutil.move(data / "tags.txt", folder / "tags.txt")
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert "model" in detail["loc"]
    assert "tags.txt" in detail["msg"] and str(folder) in detail["msg"], detail
