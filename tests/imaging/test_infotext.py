"""Tests for webui.imaging.infotext: A1111 infotext build, parse and image metadata."""

from __future__ import annotations

import io
import random
import time

import piexif
import piexif.helper
import pytest
from PIL import Image

from webui.imaging.infotext import (
    FIELD_ORDER,
    PARAM_RE,
    build_infotext,
    exif_bytes_for,
    find_params,
    format_value,
    ordered_fields,
    parse_infotext,
    pnginfo_for,
    read_infotext_from_image,
)

# The parameter line of the example in A1111-REFERENCE.md, byte for byte.
GOLDEN_PARAMS = (
    "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3141592653, "
    "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
    "Denoising strength: 0.45, Clip skip: 2, Hires upscale: 1.5, Hires steps: 12, "
    'Hires upscaler: R-ESRGAN 4x+, Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.10.1'
)
GOLDEN_PROMPT = "a castle on a hill, (masterpiece:1.2)\n<lora:add_detail:0.8>, golden hour"
GOLDEN_NEGATIVE = "blurry, lowres\nwatermark"
GOLDEN_TEXT = f"{GOLDEN_PROMPT}\nNegative prompt: {GOLDEN_NEGATIVE}\n{GOLDEN_PARAMS}"
GOLDEN_FIELDS: dict[str, object] = {
    "Steps": 25,
    "Sampler": "DPM++ 2M",
    "Schedule type": "Karras",
    "CFG scale": 7.0,
    "Seed": 3141592653,
    "Size": "512x768",
    "Model hash": "6ce0161689",
    "Model": "v1-5-pruned-emaonly",
    "Denoising strength": 0.45,
    "Clip skip": 2,
    "Hires upscale": 1.5,
    "Hires steps": 12,
    "Hires upscaler": "R-ESRGAN 4x+",
    "Lora hashes": "add_detail: 7c6bad76eb54",
    "Version": "v1.10.1",
}


def test_golden_string_parses_to_the_right_fields() -> None:
    parsed = parse_infotext(GOLDEN_TEXT)
    assert parsed["Prompt"] == GOLDEN_PROMPT
    assert parsed["Negative prompt"] == GOLDEN_NEGATIVE
    for key, value in GOLDEN_FIELDS.items():
        assert parsed[key] == value, key
    assert isinstance(parsed["Steps"], int) and isinstance(parsed["Denoising strength"], float)
    assert parsed["Model hash"] == "6ce0161689" and isinstance(parsed["Seed"], int)
    assert (parsed["Size-1"], parsed["Size-2"]) == (512, 768)
    assert (parsed["Width"], parsed["Height"]) == (512, 768)
    assert parsed["RNG"] == "GPU"


def test_golden_string_is_rebuilt_byte_for_byte() -> None:
    assert build_infotext(GOLDEN_PROMPT, GOLDEN_NEGATIVE, GOLDEN_FIELDS) == GOLDEN_TEXT
    parsed = parse_infotext(GOLDEN_TEXT)
    again = {k: parsed[k] for k in GOLDEN_FIELDS}
    assert build_infotext(parsed["Prompt"], parsed["Negative prompt"], again) == GOLDEN_TEXT


def test_field_order_known_then_extras_then_version() -> None:
    known = [k for k in GOLDEN_FIELDS if k in FIELD_ORDER or k == "Version"]
    extras = [k for k in GOLDEN_FIELDS if k not in known]
    shuffled = {k: GOLDEN_FIELDS[k] for k in [*reversed(known[:5]), *extras, *known[5:]]}
    assert build_infotext(GOLDEN_PROMPT, GOLDEN_NEGATIVE, shuffled) == GOLDEN_TEXT
    fields = {"Version": "v1", "Zeta": 1, "Tiling": True, "Alpha": 2, "Steps": 3, "RNG": "CPU"}
    assert list(ordered_fields(fields)) == ["Steps", "RNG", "Tiling", "Zeta", "Alpha", "Version"]
    assert FIELD_ORDER[:4] == ("Steps", "Sampler", "Schedule type", "CFG scale")


def test_left_out_values_and_defaults() -> None:
    text = build_infotext(
        "p",
        "",
        {
            "Steps": 20,
            "VAE": None,
            "Model": "",
            "Clip skip": 1,
            "RNG": "GPU",
            "Seed": 5,
            "Size": "8x8",
        },
    )
    assert text == "p\nSteps: 20, Seed: 5, Size: 8x8"
    parsed = parse_infotext(text)
    assert parsed["Clip skip"] == 1 and parsed["RNG"] == "GPU"
    assert parsed["Schedule type"] == "Automatic"
    assert parsed["Negative prompt"] == ""
    assert "VAE" not in parsed and "Model" not in parsed


def test_quoting_and_number_formatting() -> None:
    assert format_value(7.0) == "7" and format_value(7.5) == "7.5" and format_value(True) == "True"
    text = build_infotext(
        "p",
        "",
        {"Steps": 20, "CFG scale": 7.0, "Aa": "x, y", "Bb": "k: v", "Cc": "l1\nl2", "Dd": '"q"'},
    )
    assert text.endswith('CFG scale: 7, Aa: "x, y", Bb: "k: v", Cc: "l1\\nl2", Dd: "\\"q\\""')
    parsed = parse_infotext(text)
    assert (parsed["Aa"], parsed["Bb"], parsed["Cc"], parsed["Dd"]) == (
        "x, y",
        "k: v",
        "l1\nl2",
        '"q"',
    )
    text = build_infotext("é ✨", "", {"Aa": "ü, 🎉", "Bb": 1, "Cc": 2})
    assert text.endswith('Aa: "ü, 🎉", Bb: 1, Cc: 2')


def test_bad_field_names_are_refused() -> None:
    for key in ("A:B", "A,B", "A\nB", " "):
        with pytest.raises(ValueError):
            build_infotext("p", "", {key: 1})


def test_unreadable_field_name_is_written_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    assert build_infotext("p", "", {"X": 1, "Steps": 2}) == "p\nSteps: 2, X: 1"
    assert "cannot read" in caplog.text


ROUND_TRIP_PROMPTS = [
    ("a cat", ""),
    ("a cat, sitting: on a mat", "ugly, blurry"),
    ("line one\nline two\n\nline four", "neg one\nneg two, with comma\nneg: three"),
    ('he said "hi" \\ and (x:1.2) [a|b] {c}', '"quoted" negative'),
    ("emoji 🐱‍👤 ✨ 日本語 Ωmega", "🚫 no, thanks"),
    ("Steps: 1, Sampler: x, Seed: 2", "Negative prompt: inside\nSteps: 5, Seed: 6, CFG scale: 7"),
    ("", "only negative\nover lines"),
    ("", ""),
]


@pytest.mark.parametrize(("prompt", "negative"), ROUND_TRIP_PROMPTS)
def test_round_trip(prompt: str, negative: str) -> None:
    fields: dict[str, object] = {
        "Steps": 30,
        "Sampler": "Euler a",
        "CFG scale": 6.5,
        "Seed": 4294967294,
        "Size": "640x448",
        "Model": "my model, v2: final",
        "Model hash": "0123456789",
        "Denoising strength": 0.1,
        "Weird": 'a\nb, c: d \\ "e" 🎉',
        "Padded": "  spaces  ",
        "Lora hashes": "a: 1, b: 2",
        "Version": "v9.9",
    }
    parsed = parse_infotext(build_infotext(prompt, negative, fields))
    assert parsed["Prompt"] == prompt
    assert parsed["Negative prompt"] == negative
    for key, value in fields.items():
        assert parsed[key] == value, key
        assert type(parsed[key]) is type(value), key


def test_parse_keeps_prompt_when_last_line_is_not_parameters() -> None:
    parsed = parse_infotext("just a prompt\nSteps: 20, Seed: 1")
    assert parsed["Prompt"] == "just a prompt\nSteps: 20, Seed: 1"
    assert "Steps" not in parsed and parsed["Clip skip"] == 1


def test_parse_number_conversion_is_lossless() -> None:
    parsed = parse_infotext("p\nAa: 007, Bb: 1.50, Cc: -3, Dd: 2.5e-05, Ee: nan, Ff: 12 x, Gg: 1e5")
    assert parsed["Aa"] == "007" and parsed["Bb"] == "1.50" and parsed["Cc"] == -3
    assert parsed["Dd"] == 2.5e-05 and parsed["Ee"] == "nan" and parsed["Ff"] == "12 x"
    assert parsed["Gg"] == "1e5"


GARBAGE = [
    "",
    "\n\n\n",
    ':::,,,"""',
    'A: "unterminated, B: x, C: y',
    "Negative prompt:",
    "\x00\x01\x02 Steps: \x00, Seed: \ud800, Size: 99999999999999999999x1",
    "a" * 50_000 + ": b",
    " " * 50_000 + ",",
    ("x: " + '"\\' * 1000 + ", ") * 20,
    "é" * 10_000,
]


@pytest.mark.parametrize("text", GARBAGE)
def test_garbage_never_raises(text: str) -> None:
    parsed = parse_infotext(text)
    assert isinstance(parsed["Prompt"], str) and parsed["RNG"] == "GPU"


def test_non_string_input_never_raises() -> None:
    assert parse_infotext(None)["Prompt"] == ""  # type: ignore[arg-type]
    assert parse_infotext(b"caf\xc3\xa9\nAa: 1, Bb: 2, Cc: 3")["Aa"] == 1  # type: ignore[arg-type]
    assert parse_infotext(12)["Prompt"] == "12"  # type: ignore[arg-type]


def test_parse_is_linear_on_hostile_lines() -> None:
    # A1111's regex needs ~12 s for the first line at 20,000 characters.
    hostile = [
        "w" * 300_000,
        " " * 300_000 + ",",
        "w" * 300_000 + ":",
        "a b-c/" * 60_000,
        "\t" * 300_000 + "x",
        'k: "x' * 60_000,
    ]
    start = time.perf_counter()
    for text in hostile:
        parse_infotext(text)
    assert time.perf_counter() - start < 5.0


def test_find_params_matches_a1111_regex() -> None:
    rng = random.Random(1234)
    alphabet = [
        "a",
        "Z",
        "1",
        "_",
        " ",
        "\t",
        ":",
        ",",
        '"',
        "\\",
        "-",
        "/",
        "é",
        "\u00a0",
        ".",
        "\r",
    ]
    for _ in range(8_000):
        line = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        assert find_params(line) == PARAM_RE.findall(line), repr(line)
    assert find_params(GOLDEN_PARAMS) == PARAM_RE.findall(GOLDEN_PARAMS)


def _reload(img: Image.Image, fmt: str, **kwargs: object) -> Image.Image:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    buffer.seek(0)
    return Image.open(buffer)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_metadata_helpers_round_trip(fmt: str) -> None:
    text = build_infotext("emoji 🐱\nline 2, yes", "neg", GOLDEN_FIELDS)
    img = Image.new("RGB", (16, 16), "red")
    kwargs = {"pnginfo": pnginfo_for(text)} if fmt == "PNG" else {"exif": exif_bytes_for(text)}
    assert read_infotext_from_image(_reload(img, fmt, **kwargs)) == text


def test_reads_a1111_style_exif_and_plain_images() -> None:
    comment = piexif.helper.UserComment.dump("hello, world", encoding="unicode")
    exif = piexif.dump({"Exif": {piexif.ExifIFD.UserComment: comment}})
    img = Image.new("RGB", (8, 8))
    assert read_infotext_from_image(_reload(img, "JPEG", exif=exif)) == "hello, world"
    assert read_infotext_from_image(_reload(img, "PNG")) is None
    assert read_infotext_from_image(_reload(img, "JPEG")) is None
    broken = Image.new("RGB", (8, 8))
    broken.info["exif"] = b"Exif\x00\x00garbage"
    assert read_infotext_from_image(broken) is None
