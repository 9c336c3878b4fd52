"""A1111's file and folder name patterns: ``[seed]-[prompt_words]``, ``[date]``, ...

`apply_filename_pattern` expands the tokens of a pattern with the values of one image;
`check_filename_pattern` refuses a pattern with an unknown token or a stray bracket (the
Settings tab and ``/sdapi/v1/options`` show its message); `sanitize_filename_part` makes
any text safe as part of one file name on Linux, macOS and Windows.

Tokens (case-insensitive), as in A1111: [seed], [steps], [cfg], [sampler], [scheduler],
[width], [height], [model_name], [model_hash], [prompt], [prompt_no_styles], [prompt_spaces],
[negative_prompt], [prompt_words], [styles], [clip_skip], [denoising], [prompt_hash],
[negative_prompt_hash], [full_prompt_hash], [user], [date], [datetime],
[datetime<strftime format>], [datetime<format><time zone>], [job_timestamp], [none].

This module uses the standard library only (`webui.options` validates patterns with it)
and must never touch the file system.
"""

from __future__ import annotations

import hashlib
import logging
import re
import string
import unicodedata
from collections.abc import Callable, Mapping
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

logger = logging.getLogger(__name__)

#: Budget for the pattern part of a name: 255 minus counter, separators and extension.
MAX_DECORATION_BYTES = 200
MAX_PROMPT_WORDS = 8
#: Budget for one token's expansion (A1111's max_filename_part_length is 128).
MAX_TOKEN_BYTES = 128
DEFAULT_DATETIME = "%Y%m%d%H%M%S"

_PATTERN_RE = re.compile(r"(.*?)(?:\[([^\[\]]+)\]|$)", re.DOTALL)
_PATTERN_ARG_RE = re.compile(r"(.*)<([^>]*)>$", re.DOTALL)
_NON_WORDS_RE = re.compile(r"[\s" + re.escape(string.punctuation) + r"]+")
_FORBIDDEN_CHARS_RE = re.compile(r'[\\/<>:"|?*\x00-\x1f\x7f]')
_DOTS_RE = re.compile(r"\.{2,}")
_WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{p}{i}" for p in ("COM", "LPT") for i in [*range(1, 10), "¹", "²", "³"]}
)
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
_PLAIN_VALUES = ("seed", "steps", "cfg", "sampler", "scheduler", "width", "height",
                 "model_name", "model_hash", "prompt", "negative_prompt", "clip_skip",
                 "denoising", "user")  # fmt: skip
TOKENS: tuple[str, ...] = (
    *_PLAIN_VALUES, "prompt_no_styles", "prompt_spaces", "prompt_words", "styles", "prompt_hash",
    "negative_prompt_hash", "full_prompt_hash", "date", "datetime", "job_timestamp", "none",
)  # fmt: skip


def apply_filename_pattern(pattern: str, values: Mapping[str, object], when: datetime) -> str:
    """Expand the tokens of ``pattern`` (see the module docstring) with ``values``.

    ``values`` may hold seed, steps, cfg, sampler, scheduler, width, height, model_name,
    model_hash, prompt, prompt_no_styles, negative_prompt, styles (a list), clip_skip,
    denoising, user and job_timestamp (a datetime). A known token without a value expands
    to nothing; unknown tokens stay as written (A1111 does so with an old config.json).
    Each expansion is sanitised and cut to MAX_TOKEN_BYTES (so a long prompt cannot push
    later tokens out of the name); sanitise the whole result before use.
    """
    out: list[str] = []
    for text, token in _tokens(pattern):
        out.append(text)
        if token is None:
            continue
        name, args = _split_args(token)
        replacement = _expand_token(name.lower(), args, values, when)
        if replacement is None:
            out.append(f"[{token}]")
        else:
            out.append(sanitize_filename_part(replacement, MAX_TOKEN_BYTES))
    return "".join(out)


def check_filename_pattern(pattern: str) -> str:
    """``pattern`` when every token is known and brackets pair up, else ValueError
    saying what is wrong and which tokens there are."""
    for text, token in _tokens(pattern):
        if "[" in text or "]" in text:
            raise ValueError(f"unpaired bracket in {pattern!r}; write tokens as [seed]")
        if token is None:
            continue
        name, args = _split_args(token)
        if name.lower() not in TOKENS:
            known = ", ".join(f"[{t}]" for t in TOKENS)
            raise ValueError(f"unknown token [{token}] in {pattern!r}; known tokens: {known}")
        if name.lower() == "datetime" and len(args) > 1:
            _zone(args[1], strict=True)
    return pattern


def _tokens(pattern: str) -> list[tuple[str, str | None]]:
    return [(m.group(1), m.group(2)) for m in _PATTERN_RE.finditer(pattern)]


def _split_args(token: str) -> tuple[str, list[str]]:
    name, args = token, []
    while (arg_match := _PATTERN_ARG_RE.match(name)) is not None:
        name, arg = arg_match.groups()
        args.insert(0, arg)
    return name, args


def _expand_token(
    name: str, args: list[str], values: Mapping[str, object], when: datetime
) -> str | None:
    if name not in TOKENS:
        return None
    if name in _PLAIN_VALUES:
        value = values.get(name)
        return "" if value is None else str(value)
    prompt, negative = str(values.get("prompt") or ""), str(values.get("negative_prompt") or "")
    job_time = values.get("job_timestamp")
    derived: dict[str, Callable[[], str]] = {
        "prompt_no_styles": lambda: str(values.get("prompt_no_styles", prompt) or ""),
        "prompt_spaces": lambda: prompt,  # A1111 keeps the spaces; [prompt] does here too
        "prompt_words": lambda: _prompt_words(prompt),
        "styles": lambda: ", ".join(str(s) for s in values.get("styles") or ()),  # type: ignore[attr-defined]
        "prompt_hash": lambda: _hash(prompt),
        "negative_prompt_hash": lambda: _hash(negative),
        "full_prompt_hash": lambda: _hash(f"{prompt} {negative}"),
        "date": lambda: when.strftime("%Y-%m-%d"),
        "datetime": lambda: _format_datetime(when, args),
        "job_timestamp": lambda: (job_time if isinstance(job_time, datetime) else when).strftime(
            DEFAULT_DATETIME
        ),
        "none": lambda: "",
    }
    return derived[name]()


def _prompt_words(prompt: str) -> str:
    words = [w for w in _NON_WORDS_RE.split(prompt) if w]
    return " ".join(words[:MAX_PROMPT_WORDS]) or "empty"


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def _zone(name: str, *, strict: bool = False) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        if strict:
            raise ValueError(f"unknown time zone {name!r} in [datetime<...><{name}>]") from None
        logger.warning("unknown time zone %r in filename pattern; using local time", name)
        return None


def _format_datetime(when: datetime, args: list[str]) -> str:
    fmt = args[0] if args else ""
    zone = _zone(args[1]) if len(args) > 1 and args[1] else None
    if zone is not None:
        when = when.astimezone(zone)
    try:
        return when.strftime(fmt or DEFAULT_DATETIME)
    except (ValueError, UnicodeError):
        logger.warning("bad [datetime<%s>] format in filename pattern", fmt)
        return when.strftime(DEFAULT_DATETIME)


def sanitize_filename_part(text: str, max_bytes: int = MAX_DECORATION_BYTES) -> str:
    """Make ``text`` safe as part of one file name on Linux, macOS and Windows.

    Path separators, ``<>:"|?*``, control and bidi-control characters, line separators
    and unpaired surrogates become ``_``; runs of dots become one ``_``; surrounding
    spaces and dots are removed; a Windows-reserved device name (CON, NUL, COM1, ...)
    gets a trailing ``_``; the result is cut to ``max_bytes`` of UTF-8.
    """
    cleaned = _FORBIDDEN_CHARS_RE.sub("_", text)
    cleaned = "".join(
        "_" if ch in _BIDI_CONTROLS or unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") else ch
        for ch in cleaned
    )
    cleaned = _DOTS_RE.sub("_", cleaned)
    cleaned = _truncate_utf8(cleaned, max_bytes).strip(" .")
    base, dot, rest = cleaned.partition(".")
    if base.rstrip(" ").upper() in _WINDOWS_RESERVED:
        cleaned = _truncate_utf8(f"{base}_{dot}{rest}", max_bytes).strip(" .")
    return cleaned


def _truncate_utf8(text: str, max_bytes: int) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", errors="ignore")
