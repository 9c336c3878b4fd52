"""Output store: saves generated images in A1111's ``outputs/`` layout, atomically.

Images go to ``<root>/<kind>-images/YYYY-MM-DD/NNNNN-<decoration>.<ext>`` (decoration from
a filename pattern, ``[seed]`` by default) and grids to
``<root>/<kind>-grids/YYYY-MM-DD/grid-NNNN.<ext>``, with the infotext embedded (PNG
``parameters`` chunk, EXIF UserComment for JPEG/WebP). NNNNN is 1 + the largest leading
number in the folder (00000 in an empty one), as in A1111.

Every file appears complete or not at all: the image is encoded into a hidden temporary
file in the target folder, fsynced, then published under a name claimed exclusively
(``os.link``, or ``O_CREAT|O_EXCL`` + ``os.replace`` where hard links are unsupported), so
concurrent writers in any number of threads or processes never overwrite each other.

This module must never import torch, gradio or fastapi, never overwrite an existing file,
and never leave a temporary or partial file behind when saving fails.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import string
import tempfile
import threading
import unicodedata
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path

from PIL import Image

from webui.imaging.infotext import exif_bytes_for, pnginfo_for

logger = logging.getLogger(__name__)

DEFAULT_FILENAME_PATTERN = "[seed]"
TEMP_PREFIX = ".tmp-"
MAX_NAME_BYTES = 255
#: Budget for the pattern part of a name: 255 minus counter, separators and extension.
MAX_DECORATION_BYTES = 200
MAX_PROMPT_WORDS = 8
#: Budget for one token's expansion (A1111's max_filename_part_length is 128).
MAX_TOKEN_BYTES = 128
MAX_CLAIM_ATTEMPTS = 10_000
_JPEG_MAX_EXIF = 65533

_FORMATS = {
    "png": ("PNG", "png"),
    "jpg": ("JPEG", "jpg"),
    "jpeg": ("JPEG", "jpg"),
    "webp": ("WEBP", "webp"),
}
_KIND_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]*")
_LEADING_NUMBER_RE = re.compile(r"(\d+)")
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
_NO_HARDLINK_ERRNOS = frozenset(
    e
    for e in (
        errno.EPERM,
        errno.ENOTSUP,
        getattr(errno, "EOPNOTSUPP", None),
        errno.EXDEV,
        errno.EMLINK,
        errno.ENOSYS,
        errno.EACCES,
    )
    if e is not None
)


class OutputStore:
    """Saves images under one outputs root; safe to share between threads."""

    def __init__(
        self,
        root: Path,
        *,
        filename_pattern: str = DEFAULT_FILENAME_PATTERN,
        jpeg_quality: int = 80,
        webp_lossless: bool = False,
    ) -> None:
        self.root = Path(root)
        self.filename_pattern = filename_pattern
        self.jpeg_quality = jpeg_quality
        self.webp_lossless = webp_lossless
        self._lock = threading.Lock()
        self._use_hardlinks = True

    def images_dir(
        self, kind: str, when: datetime | None = None, outdir: str | Path | None = None
    ) -> Path:
        """Folder for ``kind`` images saved on the date of ``when`` (default: now); with
        ``outdir`` (the outdir_samples setting) every kind goes to that folder's day."""
        _check_kind(kind)
        if outdir:
            return Path(outdir).expanduser() / _day(when)
        return self.root / f"{kind}-images" / _day(when)

    def grids_dir(self, kind: str, when: datetime | None = None) -> Path:
        """Folder for ``kind`` grids saved on the date of ``when`` (default: now)."""
        return self.root / f"{_check_kind(kind)}-grids" / _day(when)

    def save(
        self,
        image: Image.Image,
        *,
        kind: str,
        seed: int,
        infotext: str,
        fmt: str = "png",
        when: datetime | None = None,
        filename_pattern: str | None = None,
        pattern_values: Mapping[str, object] | None = None,
        outdir: str | Path | None = None,
    ) -> Path:
        """Save one image as ``NNNNN-<pattern>.<ext>`` and return its path.

        ``pattern_values`` supplies ``prompt``, ``model_name``, ``steps``, ``sampler``,
        ``width``, ``height`` (width/height default to the image size) for the pattern
        tokens; see apply_filename_pattern.
        """
        when = when or datetime.now()
        values = {"width": image.width, "height": image.height, **(pattern_values or {})}
        values["seed"] = seed
        pattern = self.filename_pattern if filename_pattern is None else filename_pattern
        decoration = sanitize_filename_part(apply_filename_pattern(pattern, values, when))
        suffix = f"-{decoration}" if decoration else ""
        folder = self.images_dir(kind, when, outdir)
        return self._write(image, folder, "", 5, suffix, infotext, fmt)

    def save_grid(
        self,
        image: Image.Image,
        *,
        kind: str,
        infotext: str,
        fmt: str = "png",
        when: datetime | None = None,
    ) -> Path:
        """Save a grid as ``grid-NNNN.<ext>`` and return its path."""
        folder = self.grids_dir(kind, when or datetime.now())
        return self._write(image, folder, "grid-", 4, "", infotext, fmt)

    # -- writing -----------------------------------------------------------------------

    def _write(
        self,
        image: Image.Image,
        folder: Path,
        prefix: str,
        digits: int,
        suffix: str,
        infotext: str,
        fmt: str,
    ) -> Path:
        pil_format, ext = _check_format(fmt)
        save_args = self._save_args(pil_format, infotext)
        image = _convert_for(pil_format, image)
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=f".{ext}", dir=folder)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                image.save(handle, format=pil_format, **save_args)
                handle.flush()
                os.fsync(handle.fileno())
            with self._lock:
                final = self._claim(tmp, folder, prefix, digits, f"{suffix}.{ext}")
        finally:
            _remove_quietly(tmp)
        _fsync_dir(folder)
        logger.debug("saved %s", final)
        return final

    def _save_args(self, pil_format: str, infotext: str) -> dict[str, object]:
        if pil_format == "PNG":
            return {"pnginfo": pnginfo_for(infotext)}
        exif = exif_bytes_for(infotext)
        if pil_format == "JPEG":
            if len(exif) > _JPEG_MAX_EXIF:
                raise ValueError(
                    f"infotext too long for JPEG EXIF ({len(exif)} bytes, max {_JPEG_MAX_EXIF});"
                    " save as PNG or WebP"
                )
            return {"exif": exif, "quality": self.jpeg_quality}
        if self.webp_lossless:
            return {"exif": exif, "lossless": True, "quality": 100}
        return {"exif": exif, "quality": self.jpeg_quality}

    def _claim(self, tmp: Path, folder: Path, prefix: str, digits: int, tail: str) -> Path:
        """Publish ``tmp`` under the first free numbered name; never overwrites."""
        number = next_sequence_number(folder, prefix)
        for _ in range(MAX_CLAIM_ATTEMPTS):
            target = folder / f"{prefix}{number:0{digits}d}{tail}"
            if self._publish(tmp, target):
                return target
            number += 1
        raise FileExistsError(f"no free file name in {folder} after {MAX_CLAIM_ATTEMPTS} tries")

    def _publish(self, tmp: Path, target: Path) -> bool:
        """Give ``tmp``'s content the name ``target``; False when the name is taken."""
        if self._use_hardlinks:
            try:
                os.link(tmp, target)
                return True
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in _NO_HARDLINK_ERRNOS:
                    raise
                logger.info("hard links unsupported in %s (%s); using O_EXCL", target.parent, exc)
                self._use_hardlinks = False
        try:
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            return False
        try:
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                target.unlink()
            raise
        return True


def next_sequence_number(folder: Path, prefix: str = "") -> int:
    """1 + the largest leading number of the files in ``folder`` named ``prefix<N>...``.

    0 for an empty or missing folder; names starting with "." (temporary files) and names
    without a leading number are ignored, as in A1111.
    """
    largest = -1
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    for name in names:
        if name.startswith(".") or not name.startswith(prefix):
            continue
        match = _LEADING_NUMBER_RE.match(name, len(prefix))
        if match:
            largest = max(largest, int(match.group(1)))
    return largest + 1


def apply_filename_pattern(pattern: str, values: Mapping[str, object], when: datetime) -> str:
    """Expand A1111 filename tokens in ``pattern``.

    Tokens (case-insensitive): [seed], [prompt_words], [model_name], [date],
    [datetime] / [datetime<strftime format>], [steps], [sampler], [width], [height].
    A known token without a value expands to nothing; unknown tokens stay as written.
    Each expansion is sanitised and cut to MAX_TOKEN_BYTES (so a long prompt cannot
    push later tokens out of the name); sanitise the whole result before use.
    """
    out: list[str] = []
    for match in _PATTERN_RE.finditer(pattern):
        text, token = match.groups()
        out.append(text)
        if token is None:
            continue
        name, args = token, []
        while (arg_match := _PATTERN_ARG_RE.match(name)) is not None:
            name, arg = arg_match.groups()
            args.insert(0, arg)
        replacement = _expand_token(name.lower(), args, values, when)
        if replacement is None:
            out.append(f"[{token}]")
        else:
            out.append(sanitize_filename_part(replacement, MAX_TOKEN_BYTES))
    return "".join(out)


def _expand_token(
    name: str, args: list[str], values: Mapping[str, object], when: datetime
) -> str | None:
    simple: dict[str, Callable[[], object]] = {
        "seed": lambda: values.get("seed"),
        "steps": lambda: values.get("steps"),
        "sampler": lambda: values.get("sampler"),
        "width": lambda: values.get("width"),
        "height": lambda: values.get("height"),
        "model_name": lambda: values.get("model_name"),
        "prompt_words": lambda: _prompt_words(str(values.get("prompt") or "")),
        "date": lambda: when.strftime("%Y-%m-%d"),
        "datetime": lambda: _format_datetime(when, args[0] if args else ""),
    }
    getter = simple.get(name)
    if getter is None:
        return None
    value = getter()
    return "" if value is None else str(value)


def _prompt_words(prompt: str) -> str:
    words = [w for w in _NON_WORDS_RE.split(prompt) if w]
    return " ".join(words[:MAX_PROMPT_WORDS]) or "empty"


def _format_datetime(when: datetime, fmt: str) -> str:
    try:
        return when.strftime(fmt or "%Y%m%d%H%M%S")
    except (ValueError, UnicodeError):
        logger.warning("bad [datetime<%s>] format in filename pattern", fmt)
        return when.strftime("%Y%m%d%H%M%S")


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


def _check_kind(kind: str) -> str:
    if not isinstance(kind, str) or not _KIND_RE.fullmatch(kind):
        raise ValueError(f"invalid output kind {kind!r} (expected e.g. txt2img, img2img, extras)")
    return kind


def _check_format(fmt: str) -> tuple[str, str]:
    key = str(fmt).lower().lstrip(".")
    if key not in _FORMATS:
        raise ValueError(f"unsupported image format {fmt!r}; use png, jpg or webp")
    return _FORMATS[key]


def _convert_for(pil_format: str, image: Image.Image) -> Image.Image:
    if pil_format == "JPEG" and image.mode not in ("RGB", "L", "CMYK"):
        return image.convert("RGB")
    if pil_format == "WEBP" and image.mode not in ("RGB", "RGBA"):
        has_alpha = "A" in image.getbands() or "transparency" in image.info
        return image.convert("RGBA" if has_alpha else "RGB")
    return image


def _day(when: datetime | None) -> str:
    return (when or datetime.now()).strftime("%Y-%m-%d")


def _remove_quietly(path: Path) -> None:
    """Remove a temporary file without masking the exception being handled."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        logger.warning("could not remove temporary file %s", path, exc_info=True)


def _fsync_dir(folder: Path) -> None:
    """Persist the new directory entry (best effort; not possible on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
