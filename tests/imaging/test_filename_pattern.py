"""Every A1111 file name token, and the check that refuses a bad pattern (issue 17)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

import pytest

from webui.imaging.filename_pattern import (
    TOKENS,
    apply_filename_pattern,
    check_filename_pattern,
)
from webui.options import Options

WHEN = datetime(2024, 5, 6, 7, 8, 9)
VALUES = {
    "seed": 12,
    "steps": 20,
    "cfg": 7.5,
    "sampler": "Euler a",
    "scheduler": "Karras",
    "width": 512,
    "height": 768,
    "model_name": "sd15",
    "model_hash": "abcdef1234",
    "prompt": "a red fox, (jumping) over the lazy dog and more words here, style",
    "prompt_no_styles": "a red fox",
    "negative_prompt": "blurry",
    "styles": ["style one", "two"],
    "clip_skip": 2,
    "denoising": 0.75,
    "user": "alice",
    "job_timestamp": datetime(2024, 1, 2, 3, 4, 5),
}


def _sha8(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


EXPECTED = {
    "seed": "12",
    "steps": "20",
    "cfg": "7.5",
    "sampler": "Euler a",
    "scheduler": "Karras",
    "width": "512",
    "height": "768",
    "model_name": "sd15",
    "model_hash": "abcdef1234",
    "prompt": "a red fox, (jumping) over the lazy dog and more words here, style",
    "prompt_no_styles": "a red fox",
    "prompt_spaces": "a red fox, (jumping) over the lazy dog and more words here, style",
    "negative_prompt": "blurry",
    "prompt_words": "a red fox jumping over the lazy dog",
    "styles": "style one, two",
    "clip_skip": "2",
    "denoising": "0.75",
    "user": "alice",
    "prompt_hash": _sha8(VALUES["prompt"]),
    "negative_prompt_hash": _sha8("blurry"),
    "full_prompt_hash": _sha8(f"{VALUES['prompt']} blurry"),
    "date": "2024-05-06",
    "datetime": "20240506070809",
    "job_timestamp": "20240102030405",
    "none": "",
}


def test_every_token_has_an_expected_value() -> None:
    assert sorted(EXPECTED) == sorted(TOKENS)


@pytest.mark.parametrize("token", sorted(EXPECTED))
def test_token(token: str) -> None:
    assert apply_filename_pattern(f"<[{token}]>", VALUES, WHEN) == f"<{EXPECTED[token]}>"


def test_tokens_are_case_insensitive_and_datetime_takes_a_format_and_a_zone() -> None:
    assert apply_filename_pattern("[SEED]-[Prompt_Words]", VALUES, WHEN) == (
        "12-a red fox jumping over the lazy dog"
    )
    assert apply_filename_pattern("[datetime<%H-%M>]", VALUES, WHEN) == "07-08"
    utc = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    assert apply_filename_pattern("[datetime<%H:%M><Asia/Tokyo>]", {}, utc) == "16_08"
    # a separator a value brings never becomes a folder
    assert apply_filename_pattern("[prompt]", {"prompt": "../../x"}, WHEN) == "____x"


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("[seed]-[foo]", "unknown token [foo]"),
        ("[seed", "unpaired bracket"),
        ("seed]", "unpaired bracket"),
        ("[datetime<%Y><Mars/Olympus>]", "unknown time zone 'Mars/Olympus'"),
    ],
)
def test_a_bad_pattern_is_refused_with_a_clear_message(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        check_filename_pattern(pattern)
    options = Options()
    for key in ("samples_filename_pattern", "directories_filename_pattern"):
        with pytest.raises(ValueError, match=f"option '{key}'"):
            options.set(key, pattern)


def test_good_patterns_pass() -> None:
    for pattern in ("", "[seed]", "[date]/[model_name]", "x-[datetime<%Y%m><UTC>]-[none]"):
        assert check_filename_pattern(pattern) == pattern
