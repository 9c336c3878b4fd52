"""A1111 infotext: the "parameters" text embedded in every generated image.

Builds the text exactly as the AUTOMATIC1111 web UI (v1.10) writes it, parses it with
A1111's rules (so images from either program paste into the other), and reads/writes it
in image metadata: the PNG text chunk ``parameters``, or the EXIF UserComment (UNICODE
encoding) for JPEG and WebP.

This module must never import torch, gradio or fastapi (stdlib, Pillow and piexif only),
and parsing must never raise or take more than linear time, whatever the input: it reads
text from images that users upload.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping

import piexif
import piexif.helper
from PIL import Image, PngImagePlugin

logger = logging.getLogger(__name__)

#: Known fields in the order A1111 writes them. Unknown (extra) fields follow in insertion
#: order, and ``Version`` always comes last.
FIELD_ORDER: tuple[str, ...] = (
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Image CFG scale",
    "Seed",
    "Face restoration",
    "Size",
    "Model hash",
    "Model",
    "VAE hash",
    "VAE",
    "Variation seed",
    "Variation seed strength",
    "Seed resize from",
    "Denoising strength",
    "Conditional mask weight",
    "Clip skip",
    "ENSD",
    "Token merging ratio",
    "Init image hash",
    "RNG",
    "Tiling",
)
VERSION_KEY = "Version"

#: Defaults A1111 assumes when a field is missing from the parameter line.
PARSE_DEFAULTS: Mapping[str, object] = {"Clip skip": 1, "RNG": "GPU", "Schedule type": "Automatic"}

#: A1111's parameter regex; kept for reference and tests. parse_infotext uses an
#: equivalent linear-time scanner (the regex is quadratic on long colon-free lines).
PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
NEGATIVE_PREFIX = "Negative prompt:"

_FIELD_RANK = {name: i for i, name in enumerate(FIELD_ORDER)}
_IMAGE_SIZE_RE = re.compile(r"^(\d+)x(\d+)$")
_INT_RE = re.compile(r"-?\d+")
_FLOAT_RE = re.compile(r"-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
_BAD_KEY_CHARS = re.compile(r"[,:\n\r]")
_READABLE_KEY_RE = re.compile(r"\w[\w \-/]+")
# Pieces of PARAM_RE, each matched at a position, for the linear scanner.
_WS_RE = re.compile(r"\s*")
_WORD_RE = re.compile(r"\w")
_KEY_TAIL_RE = re.compile(r"[\w \-/]*")
_QUOTED_RE = re.compile(r'"(?:\\.|[^\\"])+"')
_PLAIN_RE = re.compile(r"[^,]*")
# Fields whose values are names or hashes: never turned into numbers when parsing.
_STRING_FIELDS = frozenset(
    {
        "Prompt",
        "Negative prompt",
        "Sampler",
        "Schedule type",
        "Model",
        "VAE",
        "Version",
        "RNG",
        "Face restoration",
        "Tiling",
        "Hires upscaler",
        "Hires checkpoint",
        "Hires sampler",
        "Hires schedule type",
        "Hires prompt",
        "Hires negative prompt",
        "Refiner",
        "Emphasis",
    }
)


def ordered_fields(params: Mapping[str, object]) -> dict[str, object]:
    """Return ``params`` sorted into A1111's order: FIELD_ORDER, extras, then Version."""
    known = sorted((k for k in params if k in _FIELD_RANK), key=_FIELD_RANK.__getitem__)
    extras = [k for k in params if k not in _FIELD_RANK and k != VERSION_KEY]
    keys = known + extras + ([VERSION_KEY] if VERSION_KEY in params else [])
    return {k: params[k] for k in keys}


def format_value(value: object) -> str:
    """Format one value as A1111 prints it (integral floats without ``.0``)."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return str(int(value))
        return repr(value)
    return str(value)


def quote(text: str) -> str:
    """JSON-quote a value that would otherwise break the parameter line.

    A1111 quotes values containing ``,`` ``:`` or a newline. Values that start with ``"`` or
    have surrounding whitespace are quoted too, so that they read back unchanged (A1111
    reads such quoted values correctly).
    """
    needs = (
        "," in text or ":" in text or "\n" in text or text.startswith('"') or text != text.strip()
    )
    return json.dumps(text, ensure_ascii=False) if needs else text


def build_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """Build A1111 infotext: prompt, ``Negative prompt: ...`` line, parameter line.

    ``params`` maps A1111 field names to values; they are put into A1111's order
    (see ordered_fields). None and "" values are left out, as are ``Clip skip`` <= 1 and
    ``RNG: GPU`` (A1111's defaults). Raises ValueError for a field name containing
    ``,`` ``:`` or a line break (it would corrupt the line); a name the parser cannot
    read back (e.g. one character, or brackets) is written with a warning, as A1111 does.
    """
    parts: list[str] = []
    for key, value in ordered_fields(params).items():
        if value is None:
            continue
        text = format_value(value)
        if text == "" or _is_default_omitted(key, text):
            continue
        if _BAD_KEY_CHARS.search(key) or not key.strip():
            raise ValueError(f"invalid infotext field name: {key!r}")
        if not _READABLE_KEY_RE.fullmatch(key):
            logger.warning("infotext field %r is written but A1111's parser cannot read it", key)
        parts.append(f"{key}: {quote(text)}")
    negative = f"\n{NEGATIVE_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt or ''}{negative}\n{', '.join(parts)}".strip()


def _is_default_omitted(key: str, text: str) -> bool:
    if key == "Clip skip":
        return bool(_INT_RE.fullmatch(text)) and int(text) <= 1
    return key == "RNG" and text == "GPU"


def parse_infotext(text: str) -> dict[str, object]:
    """Parse A1111 infotext into a dict; never raises, linear time.

    Keys: ``Prompt``, ``Negative prompt``, then every field of the parameter line (the
    last line, when it has at least 3 ``Key: value`` matches; fields named Prompt or
    Negative prompt there are ignored). Quoted values are unquoted. Unquoted values that
    are canonical ints or floats become numbers ("20", "0.45"; not "007" or "1.50"),
    except for name and hash fields (Model, Sampler, Version, ..., any key containing
    "hash"), which stay strings.

    Derived keys: a ``WxH`` value keeps its string and also gives ``<Key>-1`` and
    ``<Key>-2`` ints (A1111's keys); ``Size`` also gives ``Width`` and ``Height`` ints.
    Missing ``Clip skip``/``RNG``/``Schedule type`` get A1111's defaults (1, "GPU",
    "Automatic"). As in A1111, each prompt line is stripped of surrounding whitespace.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    elif not isinstance(text, str):
        text = "" if text is None else str(text)
    try:
        result = _parse(text)
    except Exception:  # defensive: the contract is to never raise
        logger.exception("could not parse infotext")
        result = {"Prompt": text.strip(), "Negative prompt": ""}
    for key, default in PARSE_DEFAULTS.items():
        result.setdefault(key, default)
    return result


def _parse(text: str) -> dict[str, object]:
    *lines, last = text.strip().split("\n")
    pairs = find_params(last)
    if len(pairs) < 3:
        lines.append(last)
        pairs = []
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for raw in lines:
        line = raw.strip()
        if line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX) :].strip()
        _append_line(negative if in_negative else prompt, line)
    result: dict[str, object] = {
        "Prompt": "\n".join(prompt),
        "Negative prompt": "\n".join(negative),
    }
    for key, raw_value in pairs:
        if not raw_value or key in ("Prompt", "Negative prompt"):
            continue  # A1111 drops empty values (IndexError in its parser)
        quoted = raw_value[0] == '"' and raw_value[-1] == '"'
        value = _unquote(raw_value) if quoted else raw_value
        size = _IMAGE_SIZE_RE.match(value)
        if size:
            result[key] = value
            width, height = int(size.group(1)), int(size.group(2))
            result[f"{key}-1"], result[f"{key}-2"] = width, height
            if key == "Size":
                result["Width"], result["Height"] = width, height
        elif quoted or key in _STRING_FIELDS or "hash" in key.lower():
            result[key] = value
        else:
            result[key] = _to_number(value)
    return result


def _append_line(acc: list[str], line: str) -> None:
    """A1111 joins lines with "\\n" but skips the separator while the text is empty."""
    if any(acc):
        acc.append(line)
    else:
        acc[:] = [line]


def _unquote(text: str) -> str:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else text


def _to_number(text: str) -> object:
    """Turn a canonical int or float into a number; anything else stays a string."""
    if _INT_RE.fullmatch(text):
        number = int(text)
        return number if str(number) == text else text
    if _FLOAT_RE.fullmatch(text):
        real = float(text)
        return real if repr(real) == text else text
    return text


def find_params(line: str) -> list[tuple[str, str]]:
    """Return ``PARAM_RE.findall(line)`` for a line without newlines, in linear time.

    Same results as the regex; the regex itself retries every start position of a long
    run of key characters, which is quadratic on hostile input.
    """
    found: list[tuple[str, str]] = []
    i, n = 0, len(line)
    while i < n:
        j = _WS_RE.match(line, i).end()
        if j >= n or not _WORD_RE.match(line, j):
            i = j + 1
            continue
        k = _KEY_TAIL_RE.match(line, j + 1).end()
        if k == j + 1 or k >= n or line[k] != ":":
            # Every start in [i, k) fails the same way; resume at k.
            i = max(k, j + 1)
            continue
        v = _WS_RE.match(line, k + 1).end()
        quoted = _QUOTED_RE.match(line, v)
        if quoted and (quoted.end() == n or line[quoted.end()] == ","):
            end = quoted.end()
        else:
            end = _PLAIN_RE.match(line, v).end()
        found.append((line[j:k], line[v:end]))
        i = end + 1 if end < n else n
    return found


def read_infotext_from_image(img: Image.Image) -> str | None:
    """Return the infotext stored in an image, or None; never raises.

    Reads the PNG ``parameters`` text chunk, and the EXIF UserComment (JPEG, WebP), which
    wins when present and non-empty, as in A1111; a GIF ``comment`` is the last resort.
    """
    info = dict(getattr(img, "info", None) or {})
    text = info.get("parameters")
    if text is None and isinstance(img, PngImagePlugin.PngImageFile):
        try:  # text chunks after the image data are only seen once the image is loaded
            text = img.text.get("parameters")
        except Exception:
            logger.debug("could not read PNG text chunks", exc_info=True)
    exif = info.get("exif")
    if isinstance(exif, bytes) and exif:
        comment = _user_comment(exif)
        if comment:
            text = comment
    elif text is None and "comment" in info:
        comment_raw = info["comment"]
        text = (
            comment_raw.decode("utf-8", errors="replace")
            if isinstance(comment_raw, bytes)
            else comment_raw
        )
    if text is None:
        return None
    return str(text)


def _user_comment(exif: bytes) -> str | None:
    try:
        raw = piexif.load(exif).get("Exif", {}).get(piexif.ExifIFD.UserComment, b"")
    except Exception:
        logger.debug("could not read EXIF", exc_info=True)
        return None
    if not isinstance(raw, bytes) or not raw:
        return None
    try:
        comment = piexif.helper.UserComment.load(raw)
    except ValueError:
        comment = raw.decode("utf-8", errors="ignore")
    return comment.rstrip("\x00") or None


def pnginfo_for(infotext: str) -> PngImagePlugin.PngInfo:
    """PngInfo with the ``parameters`` chunk (tEXt, or iTXt when not Latin-1)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", infotext)
    return info


def exif_bytes_for(infotext: str) -> bytes:
    """EXIF block with the infotext as UserComment in UNICODE encoding, as A1111 writes."""
    comment = piexif.helper.UserComment.dump(infotext or "", encoding="unicode")
    return piexif.dump({"Exif": {piexif.ExifIFD.UserComment: comment}})
