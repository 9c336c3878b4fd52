"""How a job saves: its saving options, the values of file name tokens, its batch grid.

`SaveSettings.from_options` reads the A1111 saving options of one job (from the job's own
snapshot, `worker.job_option`): formats, JPEG/WebP quality, file and folder name
patterns, numbering, grids. `pattern_values` gives the file name tokens of one image
(`webui.imaging.filename_pattern`). `batch_grid` makes A1111's grid of a job that made
more than one image: saved to ``outputs/<kind>-grids`` (when the job saves and
``grid_save`` is on) with the first image's infotext, and put first in the results
(when ``return_grid`` is on).

This module must never import torch or a UI library.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ..imaging.grid import batch_image_grid
from ..imaging.infotext import parse_infotext
from ..imaging.store import OutputStore
from .jobs import Job
from .processing import GeneratedImage
from .run import JobInfo, RunHooks, SavedImage

Option = Callable[[str], Any]


@dataclass(frozen=True)
class SaveSettings:
    """One job's saving options (A1111's keys in the comments)."""

    fmt: str = "png"  # samples_format
    filename_pattern: str | None = None  # samples_filename_pattern; None: [seed]
    outdir: str = ""  # outdir_samples
    folder_pattern: str | None = None  # directories_filename_pattern if save_to_dirs, else ""
    grid_folder_pattern: str | None = None  # the same if grid_save_to_dirs, else ""
    add_number: bool = True  # save_images_add_number
    quality: int = 80  # jpeg_quality (JPEG and lossy WebP)
    lossless: bool = False  # webp_lossless
    grid_save: bool = True  # grid_save
    grid_fmt: str = "png"  # grid_format
    return_grid: bool = True  # return_grid
    grid_only_if_multiple: bool = True  # grid_only_if_multiple
    n_rows: int = -1  # n_rows

    @classmethod
    def from_options(cls, opt: Option) -> SaveSettings:
        folders = opt("directories_filename_pattern") or "[date]"
        return cls(
            fmt=opt("samples_format"),
            filename_pattern=opt("samples_filename_pattern") or None,
            outdir=opt("outdir_samples"),
            folder_pattern=folders if opt("save_to_dirs") else "",
            grid_folder_pattern=folders if opt("grid_save_to_dirs") else "",
            add_number=bool(opt("save_images_add_number")),
            quality=int(opt("jpeg_quality")),
            lossless=bool(opt("webp_lossless")),
            grid_save=bool(opt("grid_save")),
            grid_fmt=opt("grid_format"),
            return_grid=bool(opt("return_grid")),
            grid_only_if_multiple=bool(opt("grid_only_if_multiple")),
            n_rows=int(opt("n_rows")),
        )

    def image_args(self) -> dict[str, Any]:
        """Keyword arguments of `OutputStore.save`."""
        return {"fmt": self.fmt, "filename_pattern": self.filename_pattern,
                "outdir": self.outdir, "folder_pattern": self.folder_pattern,
                "add_number": self.add_number, "quality": self.quality,
                "lossless": self.lossless}  # fmt: skip

    def grid_args(self) -> dict[str, Any]:
        """Keyword arguments of `OutputStore.save_grid`."""
        return {"fmt": self.grid_fmt, "folder_pattern": self.grid_folder_pattern,
                "quality": self.quality, "lossless": self.lossless}  # fmt: skip


def pattern_values(job: Job, params: Any, model_name: str, infotext: str = "") -> dict[str, Any]:
    """The file name tokens of one image of ``job`` (``params`` with styles applied;
    the sampler, schedule and model hash as the infotext names them)."""
    fields: Mapping[str, Any] = parse_infotext(infotext) if infotext else {}
    original = getattr(job.params, "prompt", params.prompt)
    return {
        "prompt": params.prompt,
        "prompt_no_styles": original,
        "negative_prompt": params.negative_prompt,
        "styles": list(params.styles),
        "model_name": model_name,
        "model_hash": fields.get("Model hash", ""),
        "steps": params.steps,
        "cfg": params.cfg_scale,
        "sampler": fields.get("Sampler") or params.sampler_name or "",
        "scheduler": fields.get("Schedule type") or params.scheduler or "",
        "clip_skip": params.clip_skip,
        "denoising": getattr(params, "denoising_strength", None),
        "user": job.owner,
        "job_timestamp": datetime.fromtimestamp(job.created_at),
    }


def wants_grid(params: Any, images: list[GeneratedImage], settings: SaveSettings) -> bool:
    """A1111's rule: a grid is made when it is shown or saved, the job allows grids
    (the API's do_not_save_grid) and it has more than one picture (or the option
    grid_only_if_multiple is off)."""
    if not params.grid or getattr(params, "batch_input_dir", ""):
        return False
    if not images or (len(images) < 2 and settings.grid_only_if_multiple):
        return False
    return settings.return_grid or (settings.grid_save and params.save_images)


def batch_grid(
    job: Job,
    params: Any,
    images: list[GeneratedImage],
    settings: SaveSettings,
    *,
    store: OutputStore,
    hooks: RunHooks,
    values: Mapping[str, Any],
) -> GeneratedImage | None:
    """The job's grid (saved when the job saves and grid_save is on), or None when the
    job makes none; it carries the first image's infotext and seed. The caller shows it
    first when `settings.return_grid` is on."""
    if not wants_grid(params, images, settings):
        return None
    first = images[0]
    sheet = batch_image_grid([g.image for g in images], params.batch_size, settings.n_rows)
    path = None
    if settings.grid_save and params.save_images:
        job.raise_if_aborted()  # the server shuts down: write nothing more
        # a rerun (after a restart or a lost worker) keeps the grid its first attempt wrote
        path = job.saved_earlier(None) or store.save_grid(
            sheet, kind=job.kind, infotext=first.infotext,
            pattern_values={**values, "seed": first.seed}, **settings.grid_args(),
        )  # fmt: skip
        job.image_saved(str(path), infotext=first.infotext)  # recorded, published
        saved = SavedImage(JobInfo.of(job), Path(path), sheet, first.infotext, first.seed, job.kind,
                           grid=True)  # fmt: skip
        hooks.saved(saved)
    return GeneratedImage(sheet, first.seed, first.infotext, str(path) if path else None, grid=True)
