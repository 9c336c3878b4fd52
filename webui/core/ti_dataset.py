"""The dataset of a textual-inversion run, read the way A1111's `PersonalizedBase` reads it.

`read_images` takes the images directly in `data_root` (sub-folders are not read, as in
A1111): each image's "filewords" are its same-name `.txt` file, else its file name without
leading numbers and dashes ("00012-a red cat.png" gives "a red cat"). Images are resized to
the training size (bicubic), or with `varsize` kept at their own size rounded to multiples
of 64; with `use_weight` an image's alpha channel becomes its loss weight (A1111: minimum
0, mean 1). `prompt_text` fills a template line: `[filewords]` (tags dropped and shuffled
as asked) and `[name]`. `epoch_batches` shuffles per epoch from the seed and groups
images of one size; the last incomplete batch is dropped, as in A1111.

Runs on the worker thread only; never imports a UI library.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserError
from .ti_params import dataset_images

NUMBERS_AT_START = re.compile(r"^[-\d]+\s*")


class DatasetError(ValueError, UserError):
    """The dataset folder cannot be trained on; the message says why."""


@dataclass
class TiImage:
    path: Path
    filewords: str
    pixels: torch.Tensor  # [3, H, W] in -1..1
    alpha: Image.Image | None  # for use_weight


def image_files(root: Path) -> list[Path]:
    try:
        return dataset_images(root)
    except ValueError as exc:
        raise DatasetError(str(exc)) from None


def filewords_of(path: Path) -> str:
    caption = path.with_suffix(".txt")
    if caption.is_file():
        return caption.read_bytes().decode("utf-8", errors="replace").strip()
    return NUMBERS_AT_START.sub("", path.stem)


def read_images(
    root: Path, width: int, height: int, varsize: bool, use_weight: bool
) -> list[TiImage]:
    images = []
    for path in image_files(root):
        try:
            with Image.open(path) as opened:
                image = ImageOps.exif_transpose(opened)
                image.load()
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DatasetError(f"cannot read {path.name} ({exc})") from None
        size = _own_size(image.size) if varsize else (width, height)
        alpha = image.getchannel("A") if use_weight and "A" in image.getbands() else None
        rgb = image.convert("RGB").resize(size, Image.Resampling.BICUBIC)
        array = np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0
        pixels = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        images.append(TiImage(path, filewords_of(path), pixels, alpha))
    return images


def _own_size(size: tuple[int, int]) -> tuple[int, int]:
    return tuple(max(64, side // 64 * 64) for side in size)  # type: ignore[return-value]


def loss_weight(image: TiImage, latent_shape: tuple[int, ...]) -> torch.Tensor:
    """A1111's weight map: the alpha at latent size, minimum 0, mean 1 (ones: no alpha)."""
    channels, height, width = latent_shape
    if image.alpha is None:
        return torch.ones(latent_shape)
    resized = image.alpha.resize((width, height), Image.Resampling.BICUBIC)
    weight = torch.from_numpy(np.asarray(resized, dtype=np.float32)).expand(channels, -1, -1)
    weight = weight - weight.min()
    mean = weight.mean()
    return weight / mean if mean > 0 else torch.ones(latent_shape)


def prompt_text(line: str, filewords: str, name: str, rng: random.Random, *, drop_out: float,
                shuffle: bool) -> str:  # fmt: skip
    tags = filewords.split(",")
    if drop_out:
        tags = [t for t in tags if rng.random() > drop_out]
    if shuffle:
        rng.shuffle(tags)
    return line.replace("[filewords]", ",".join(tags)).replace("[name]", name)


def epoch_batches(images: list[TiImage], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Indices of each batch of one epoch: shuffled from the seed, one size per batch."""
    order = list(range(len(images)))
    random.Random(seed * 7919 + epoch).shuffle(order)
    by_size: dict[tuple[int, ...], list[int]] = {}
    for index in order:
        by_size.setdefault(tuple(images[index].pixels.shape), []).append(index)
    batches = []
    for indices in by_size.values():
        batches += [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)
                    if i + batch_size <= len(indices)]  # fmt: skip
    random.Random(seed * 7919 + epoch + 1).shuffle(batches)
    return batches
