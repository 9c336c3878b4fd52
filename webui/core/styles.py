"""Prompt styles: A1111's `styles.csv` (`--styles-file`), columns name,prompt,negative_prompt.

Applying a style: a `{prompt}` in the style's text is replaced by the user's prompt;
without it, the style is appended after ", " (either side may be empty). Styles apply in
the order chosen. Saving writes the whole file atomically (rows without a name are
dropped). The file is re-read when it changed on disk, so a user editing it by hand sees
the change without a restart.

This module must never import torch or a UI library.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

log = logging.getLogger(__name__)

FIELDS = ("name", "prompt", "negative_prompt")


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def merge_prompts(style_text: str, prompt: str) -> str:
    if "{prompt}" in style_text:
        return style_text.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


class StyleError(ValueError, UserError):
    """A style name is missing, unknown or invalid."""


class StyleDatabase:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.RLock()
        self._styles: dict[str, PromptStyle] = {}
        self._stamp: tuple | None = None
        self.reload()

    def _file_stamp(self) -> tuple | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_size, st.st_mtime_ns)

    def reload(self) -> None:
        with self._lock:
            self._stamp = self._file_stamp()
            self._styles = self._read() if self._stamp else {}

    def _read(self) -> dict[str, PromptStyle]:
        try:
            text = self.path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("cannot read %s (%s); no styles", self.path, exc)
            return {}
        styles: dict[str, PromptStyle] = {}
        reader = csv.DictReader(io.StringIO(text), skipinitialspace=True)
        for row in reader:
            name = (row.get("name") or "").strip()
            if not name:
                continue
            styles[name] = PromptStyle(
                name, row.get("prompt") or row.get("text") or "", row.get("negative_prompt") or ""
            )
        return styles

    def _fresh(self) -> None:
        if self._file_stamp() != self._stamp:
            self.reload()

    def names(self) -> list[str]:
        with self._lock:
            self._fresh()
            return list(self._styles)

    def all(self) -> list[PromptStyle]:
        with self._lock:
            self._fresh()
            return list(self._styles.values())

    def get(self, name: str) -> PromptStyle | None:
        with self._lock:
            self._fresh()
            return self._styles.get(name)

    def unknown(self, names) -> list[str]:
        with self._lock:
            self._fresh()
            return [n for n in names if n not in self._styles]

    def apply(self, names, prompt: str, negative: str) -> tuple[str, str, list[str]]:
        """(prompt, negative) with the styles applied in order, and the unknown names."""
        missing = []
        for name in names:
            style = self.get(name)
            if style is None:
                missing.append(name)
                continue
            prompt = merge_prompts(style.prompt, prompt)
            negative = merge_prompts(style.negative_prompt, negative)
        return prompt, negative, missing

    def save_style(self, style: PromptStyle, *, replace: str | None = None) -> None:
        """Add or change a style (renaming `replace` to `style.name`), and save."""
        name = style.name.strip()
        if not name:
            raise StyleError("a style needs a name")
        if any(c in name for c in "\r\n"):
            raise StyleError("a style name must be one line")
        with self._lock:
            self._fresh()
            styles = dict(self._styles)
            if replace and replace != name:
                styles.pop(replace, None)
            styles[name] = PromptStyle(name, style.prompt, style.negative_prompt)
            self._write(styles)

    def delete(self, name: str) -> None:
        with self._lock:
            self._fresh()
            if name not in self._styles:
                raise StyleError(f"no style named {name!r}")
            styles = dict(self._styles)
            del styles[name]
            self._write(styles)

    def _write(self, styles: dict[str, PromptStyle]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
        )
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=FIELDS)
                writer.writeheader()
                for s in styles.values():
                    writer.writerow(
                        {"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
                    )
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._styles = styles
        self._stamp = self._file_stamp()
