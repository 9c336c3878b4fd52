"""img2img over a folder of images (A1111's Batch tab), with an optional mask folder.

Every image file of the input folder (sorted by name) is run as its own img2img with the
job's settings and seed. Masks come from the mask folder: the file with the same stem, or
the folder's only image for every input. Results go to the output folder under the input
file's name (`name.png`, `name-1.png`, ... never overwriting), or to
outputs/img2img-images when no output folder is given. A file that cannot be read is
skipped with a warning in the log; the others go on.

This module must never import a UI library.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import replace
from pathlib import Path

from PIL import Image

from ..imaging.codec import ImageInputError, image_files, load_image_file, mask_from_upload
from ..imaging.infotext import pnginfo_for
from .params import ParamError
from .params_img2img import Img2ImgParams
from .processing import GeneratedImage
from .run import RunContext, SaveFn

log = logging.getLogger(__name__)


def img2img_folder(run: RunContext, params: Img2ImgParams) -> list[GeneratedImage]:
    from .img2img import img2img

    files = image_files(params.batch_input_dir, "batch_input_dir")
    masks = _mask_lookup(params.batch_mask_dir)
    out_dir = (
        Path(params.batch_output_dir).expanduser() if params.batch_output_dir.strip() else None
    )
    results: list[GeneratedImage] = []
    for index, path in enumerate(files):
        if run.should_stop():
            break
        run.progress.text = f"Batch: image {index + 1} of {len(files)} ({path.name})"
        try:
            one = _params_for(params, path, masks)
        except (ImageInputError, ParamError) as exc:
            log.warning("img2img batch: %s skipped: %s", path.name, exc)
            continue
        if out_dir is None:
            results += img2img(run, one)
        else:  # under the input file's name, in the output folder
            results += img2img(replace(run, save=_folder_saver(out_dir, path.stem)), one)
    run.progress.text = ""
    return results


def _mask_lookup(mask_dir: str) -> dict[str, Path] | Path | None:
    if not mask_dir.strip():
        return None
    files = image_files(mask_dir, "batch_mask_dir")
    if len(files) == 1:
        return files[0]
    return {p.stem: p for p in files}


def _params_for(params: Img2ImgParams, path: Path, masks) -> Img2ImgParams:
    image = load_image_file(path, "batch_input_dir")
    mask = None
    if isinstance(masks, Path):
        mask_path = masks
    elif isinstance(masks, dict):
        mask_path = masks.get(path.stem)
        if mask_path is None:
            raise ImageInputError(
                "batch_mask_dir", f"no mask named {path.stem}.* in the mask folder"
            )
    else:
        mask_path = None
    if mask_path is not None:
        mask = mask_from_upload(load_image_file(mask_path, "batch_mask_dir"), image.size)
    return replace(
        params,
        init_images=(image,),
        mask=mask,
        batch_input_dir="",
        batch_output_dir="",
        batch_mask_dir="",
    ).validated()


def _folder_saver(folder: Path, stem: str) -> SaveFn:
    def save(image: Image.Image, seed: int, infotext: str) -> str:
        return str(save_named(image, folder, stem, infotext))

    return save


def save_named(image: Image.Image, folder: Path, stem: str, infotext: str) -> Path:
    """Save as folder/stem.png (stem-1.png, ... when taken), atomically, never overwriting."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            image.save(handle, format="PNG", pnginfo=pnginfo_for(infotext))
        for n in range(10_000):
            target = folder / (f"{stem}.png" if n == 0 else f"{stem}-{n}.png")
            try:
                os.link(tmp_name, target)
                return target
            except FileExistsError:
                continue
            except OSError:  # no hard links here: claim the name, then move onto it
                try:
                    os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                except FileExistsError:
                    continue
                os.replace(tmp_name, target)
                return target
        raise FileExistsError(f"no free name for {stem} in {folder}")
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
