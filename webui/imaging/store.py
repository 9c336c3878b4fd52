"""Output store: saves generated images in A1111's ``outputs/`` layout, atomically.

Images go to ``<root>/<kind>-images/YYYY-MM-DD/NNNNN-<decoration>.<ext>`` (decoration from
a filename pattern, ``[seed]`` by default; `webui.imaging.filename_pattern`) and grids to
``<root>/<kind>-grids/YYYY-MM-DD/grid-NNNN.<ext>`` (the date folder can be another folder
pattern, A1111's directories_filename_pattern, or none; the number can be left out), with
the infotext embedded (PNG ``parameters`` chunk, EXIF UserComment for JPEG/WebP). NNNNN is
1 + the largest leading number in the folder (00000 in an empty one), as in A1111.

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
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from PIL import Image

from webui.imaging.filename_pattern import (
    apply_filename_pattern,
    check_filename_pattern,
    sanitize_filename_part,
)
from webui.imaging.infotext import exif_bytes_for, pnginfo_for

logger = logging.getLogger(__name__)

__all__ = [  # the file name helpers live in filename_pattern; callers may import them here
    "OutputStore",
    "apply_filename_pattern",
    "check_filename_pattern",
    "next_sequence_number",
    "sanitize_filename_part",
]

DEFAULT_FILENAME_PATTERN = "[seed]"
TEMP_PREFIX = ".tmp-"
MAX_NAME_BYTES = 255
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


@dataclass(frozen=True)
class _Name:
    """How a saved file is named: ``<prefix><number, digits wide><suffix><ext>``; with
    digits 0 the number appears only when the name is taken (``<prefix>-<n><ext>``)."""

    prefix: str
    digits: int
    suffix: str

    def render(self, number: int, ext: str) -> str:
        if self.digits:
            return f"{self.prefix}{number:0{self.digits}d}{self.suffix}{ext}"
        return f"{self.prefix}{self.suffix}-{number}{ext}" if number else f"{self.prefix}{ext}"


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
        self,
        kind: str,
        when: datetime | None = None,
        outdir: str | Path | None = None,
        subfolder: str | None = None,
    ) -> Path:
        """Folder for ``kind`` images saved on the date of ``when`` (default: now); with
        ``outdir`` (the outdir_samples setting) every kind goes to that folder.
        ``subfolder`` (an expanded folder pattern, see `subfolder_for`) replaces the day's
        folder; "" saves into the folder itself."""
        _check_kind(kind)
        base = Path(outdir).expanduser() if outdir else self.root / f"{kind}-images"
        return _under(base, _day(when) if subfolder is None else subfolder)

    def grids_dir(
        self, kind: str, when: datetime | None = None, subfolder: str | None = None
    ) -> Path:
        """Folder for ``kind`` grids saved on the date of ``when`` (default: now), or in
        ``subfolder`` as for images_dir."""
        base = self.root / f"{_check_kind(kind)}-grids"
        return _under(base, _day(when) if subfolder is None else subfolder)

    def save(
        self,
        image: Image.Image,
        *,
        kind: str,
        seed: int | None,
        infotext: str,
        fmt: str = "png",
        when: datetime | None = None,
        filename_pattern: str | None = None,
        pattern_values: Mapping[str, object] | None = None,
        outdir: str | Path | None = None,
        folder_pattern: str | None = None,
        add_number: bool = True,
        quality: int | None = None,
        lossless: bool | None = None,
    ) -> Path:
        """Save one image as ``NNNNN-<pattern>.<ext>`` and return its path.

        ``pattern_values`` supplies the values of the pattern tokens (see
        `webui.imaging.filename_pattern`; width/height default to the image size).
        ``folder_pattern``: the sub-folder pattern (A1111's directories_filename_pattern
        when save_to_dirs is on); None: the date, "": no sub-folder. Without
        ``add_number`` the name is the pattern alone (``-1``, ``-2``... when taken: a
        file is never overwritten). ``quality`` (JPEG/WebP, 1-100) and ``lossless``
        (WebP) default to the store's.
        """
        when = when or datetime.now()
        values = {"width": image.width, "height": image.height, **(pattern_values or {})}
        values["seed"] = seed
        pattern = self.filename_pattern if filename_pattern is None else filename_pattern
        decoration = sanitize_filename_part(apply_filename_pattern(pattern, values, when))
        folder = self.images_dir(
            kind, when, outdir, self.subfolder_for(folder_pattern, values, when)
        )
        if add_number or not decoration:  # a name with nothing but the extension: numbered
            name = _Name("", 5, f"-{decoration}" if decoration else "")
        else:
            name = _Name(decoration, 0, "")
        return self._write(image, folder, name, infotext, fmt, quality, lossless)

    def save_grid(
        self,
        image: Image.Image,
        *,
        kind: str,
        infotext: str,
        fmt: str = "png",
        when: datetime | None = None,
        pattern_values: Mapping[str, object] | None = None,
        folder_pattern: str | None = None,
        quality: int | None = None,
        lossless: bool | None = None,
    ) -> Path:
        """Save a grid as ``grid-NNNN.<ext>`` and return its path (``folder_pattern``,
        ``quality`` and ``lossless`` as for `save`)."""
        when = when or datetime.now()
        subfolder = self.subfolder_for(folder_pattern, pattern_values or {}, when)
        folder = self.grids_dir(kind, when, subfolder)
        return self._write(image, folder, _Name("grid-", 4, ""), infotext, fmt, quality, lossless)

    @staticmethod
    def subfolder_for(
        folder_pattern: str | None, values: Mapping[str, object], when: datetime
    ) -> str | None:
        """The expanded sub-folder pattern: ``/`` written in the pattern makes nested
        folders; every part is sanitised (a token can never add a separator or ``..``)."""
        if folder_pattern is None:
            return None
        expanded = apply_filename_pattern(folder_pattern, values, when)
        parts = [sanitize_filename_part(p) for p in expanded.replace("\\", "/").split("/")]
        return "/".join(p for p in parts if p)

    # -- writing -----------------------------------------------------------------------

    def _write(
        self,
        image: Image.Image,
        folder: Path,
        name: _Name,
        infotext: str,
        fmt: str,
        quality: int | None = None,
        lossless: bool | None = None,
    ) -> Path:
        pil_format, ext = _check_format(fmt)
        quality = self.jpeg_quality if quality is None else quality
        lossless = self.webp_lossless if lossless is None else lossless
        save_args = _save_args(pil_format, infotext, quality, lossless)
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
                final = self._claim(tmp, folder, name, f".{ext}")
        finally:
            _remove_quietly(tmp)
        _fsync_dir(folder)
        logger.debug("saved %s", final)
        return final

    def _claim(self, tmp: Path, folder: Path, name: _Name, ext: str) -> Path:
        """Publish ``tmp`` under the first free name; never overwrites."""
        number = next_sequence_number(folder, name.prefix) if name.digits else 0
        for _ in range(MAX_CLAIM_ATTEMPTS):
            target = folder / name.render(number, ext)
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


def _save_args(pil_format: str, infotext: str, quality: int, lossless: bool) -> dict[str, object]:
    if pil_format == "PNG":
        return {"pnginfo": pnginfo_for(infotext)}
    exif = exif_bytes_for(infotext)
    if pil_format == "JPEG":
        if len(exif) > _JPEG_MAX_EXIF:
            raise ValueError(
                f"infotext too long for JPEG EXIF ({len(exif)} bytes, max {_JPEG_MAX_EXIF});"
                " save as PNG or WebP"
            )
        return {"exif": exif, "quality": quality}
    if lossless:
        return {"exif": exif, "lossless": True, "quality": 100}
    return {"exif": exif, "quality": quality}


def _under(base: Path, subfolder: str) -> Path:
    return base / subfolder if subfolder else base


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
