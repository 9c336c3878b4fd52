"""A1111's Save and Zip buttons under a result gallery.

Save copies the selected image (all shown images when none is selected) into the saved
folder (option ``outdir_save``, empty: ``outputs/saved``) with its infotext, named by the
images file name pattern, and appends a row per image to ``log.csv`` there, with A1111's
columns. Zip packs every shown image (its file as saved, else a PNG carrying its
infotext) into ``images_<date time>.zip`` in the same folder. Both offer what they wrote
as a download.

What is saved comes from the page's own result list (a `gr.State` the job stream fills on
the server), never from a path or an image the browser sends: a user can only save the
results their page was shown.

This module must never import torch or diffusers.
"""

from __future__ import annotations

import csv
import io
import threading
import zipfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..imaging.infotext import parse_infotext, pnginfo_for
from .common import InputError

if TYPE_CHECKING:
    from ..context import AppContext

LOG_FIELDS = ("prompt", "seed", "width", "height", "sampler", "cfgs", "steps", "filename",
              "negative_prompt", "sd_model_name")  # fmt: skip
_LOG_LOCK = threading.Lock()  # one log.csv row at a time, whoever clicks


def saved_folder(ctx: AppContext) -> Path:
    """The folder of the Save button (outdir_save, else outputs/saved)."""
    folder = str(ctx.options.get("outdir_save") or "").strip()
    return Path(folder).expanduser() if folder else ctx.flags.outputs_dir / "saved"


def chosen(shown: Sequence[Any], picked: int | None) -> list[Any]:
    """The selected image, or every image when none is selected."""
    if not shown:
        raise InputError("Nothing to save: generate an image first")
    if isinstance(picked, int) and 0 <= picked < len(shown):
        return [shown[picked]]
    return list(shown)


def save_images(ctx: AppContext, shown: Sequence[Any], picked: int | None) -> list[Path]:
    """Save the chosen images into the saved folder and log them; their new paths."""
    folder = saved_folder(ctx)
    get = ctx.options.get
    paths, rows = [], []
    for generated in chosen(shown, picked):
        fields = parse_infotext(generated.infotext) if generated.infotext else {}
        path = ctx.store.save(
            generated.image, kind="saved", seed=generated.seed, infotext=generated.infotext,
            fmt=get("samples_format"), filename_pattern=get("samples_filename_pattern") or None,
            pattern_values=_pattern_values(fields), outdir=folder, folder_pattern="",
            quality=int(get("jpeg_quality")), lossless=bool(get("webp_lossless")),
        )  # fmt: skip
        paths.append(path)
        rows.append(_log_row(fields, generated, path))
    _append_log(folder / "log.csv", rows)
    return paths


def zip_images(ctx: AppContext, shown: Sequence[Any]) -> Path:
    """A zip of every shown image in the saved folder; its path."""
    if not shown:
        raise InputError("Nothing to zip: generate an image first")
    folder = saved_folder(ctx)
    folder.mkdir(parents=True, exist_ok=True)
    target = _new_file(folder, f"images_{datetime.now():%Y%m%d%H%M%S}", ".zip")
    names: set[str] = set()
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as archive:
        for index, generated in enumerate(shown):
            path = Path(generated.path) if getattr(generated, "path", None) else None
            if path is not None and path.is_file():
                archive.write(path, _unique(names, path.name))
                continue
            seed = generated.seed if generated.seed is not None else index
            archive.writestr(_unique(names, f"{index:05}-{seed}.png"), _png(generated))
    return target


def _pattern_values(fields: dict[str, Any]) -> dict[str, Any]:
    width, _, height = str(fields.get("Size", "")).partition("x")
    return {"prompt": fields.get("Prompt", ""), "negative_prompt": fields.get("Negative prompt"),
            "steps": fields.get("Steps"), "cfg": fields.get("CFG scale"),
            "sampler": fields.get("Sampler"), "scheduler": fields.get("Schedule type"),
            "model_name": fields.get("Model"), "model_hash": fields.get("Model hash"),
            "clip_skip": fields.get("Clip skip"), "denoising": fields.get("Denoising strength"),
            **({"width": width, "height": height} if height else {})}  # fmt: skip


def _log_row(fields: dict[str, Any], generated: Any, path: Path) -> list[Any]:
    width, height = generated.image.size
    return [fields.get("Prompt", ""), generated.seed if generated.seed is not None else "",
            width, height, fields.get("Sampler", ""), fields.get("CFG scale", ""),
            fields.get("Steps", ""), path.name, fields.get("Negative prompt", ""),
            fields.get("Model", "")]  # fmt: skip


def _append_log(path: Path, rows: list[list[Any]]) -> None:
    with _LOG_LOCK:
        new = not path.exists()
        with path.open("a", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(LOG_FIELDS)
            writer.writerows(rows)


def _png(generated: Any) -> bytes:
    buffer = io.BytesIO()
    info = pnginfo_for(generated.infotext) if generated.infotext else None
    generated.image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _unique(names: set[str], name: str) -> str:
    stem, dot, ext = name.rpartition(".")
    candidate, n = name, 1
    while candidate in names:
        candidate = f"{stem}-{n}{dot}{ext}"
        n += 1
    names.add(candidate)
    return candidate


def _new_file(folder: Path, stem: str, ext: str) -> Path:
    """A new empty file named ``stem[-n]ext`` (claimed exclusively: never overwritten)."""
    for n in range(10_000):
        target = folder / (f"{stem}-{n}{ext}" if n else f"{stem}{ext}")
        try:
            with target.open("xb"):
                return target
        except FileExistsError:
            continue
    raise FileExistsError(f"no free name for {stem}{ext} in {folder}")
