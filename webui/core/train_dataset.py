"""A LoRA training set: images with same-name captions, kohya's folders and buckets.

`scan_dataset(folder, caption_extension)` reads what a kohya user points a trainer at:
images (png, jpg, jpeg, webp, bmp) directly in the folder (repeated once) or in
subfolders named `N_name` (repeated N times; other subfolders are read once), each with
an optional caption `image.txt` (else the folder's name part is the caption). Captions
in any encoding are read: UTF-8 (with or without BOM), UTF-16 with a BOM, then GB18030,
Shift-JIS and finally Windows-1252; the encodings other than UTF-8 are reported
(`Dataset.notes`). Image sizes come from the headers only (a set of 10,000 images scans
in seconds); an image Pillow cannot open is a `DatasetError` naming the file.

Buckets are kohya's (`make_buckets`): widths and heights in steps of 64 whose area is at
most resolution², between half and twice the resolution; every image goes to the bucket
nearest its aspect ratio (`assign_buckets`). `epoch_batches` orders one epoch's batches
from the seed and the epoch alone, so a resumed run sees the same order. `caption_for`
applies caption dropout and tag shuffling (kohya's `keep_tokens`).

Pillow and the standard library only: the services check a folder before queueing a job.
This module must never import torch or a UI library.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
ENCODINGS = ("utf-8-sig", "gb18030", "shift_jis", "cp1252")
REPEAT_FOLDER = re.compile(r"^(\d+)_(.*)$")
BUCKET_STEP = 64


class DatasetError(ValueError):
    """The training folder cannot be used; the message says why (and names the file)."""


@dataclass(frozen=True)
class TrainImage:
    path: Path
    caption: str
    repeats: int
    size: tuple[int, int]  # width, height
    folder: str  # the subfolder's name ("" for the folder itself)


@dataclass
class Dataset:
    images: list[TrainImage]
    notes: list[str] = field(default_factory=list)  # caption encodings other than UTF-8

    @property
    def count(self) -> int:
        """Images times their repeats: one epoch's worth."""
        return sum(image.repeats for image in self.images)

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """kohya's ss_tag_frequency: {folder: {tag: count}}."""
        out: dict[str, Counter] = {}
        for image in self.images:
            tags = [t.strip() for t in image.caption.split(",") if t.strip()]
            out.setdefault(image.folder or ".", Counter()).update(tags)
        return {folder: dict(counts) for folder, counts in out.items()}

    def folders(self) -> dict[str, dict[str, int]]:
        """kohya's ss_dataset_dirs: {folder: {n_repeats, img_count}}."""
        out: dict[str, dict[str, int]] = {}
        for image in self.images:
            entry = out.setdefault(image.folder or ".", {"n_repeats": image.repeats,
                                                         "img_count": 0})  # fmt: skip
            entry["img_count"] += 1
        return out


def scan_dataset(folder: str | Path, caption_extension: str = ".txt") -> Dataset:
    """Every image of the folder with its caption; DatasetError when there is none or an
    image cannot be read."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    dataset = Dataset([])
    sources = [(root, 1, "")]
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        match = REPEAT_FOLDER.match(sub.name)
        sources.append((sub, max(1, int(match.group(1))) if match else 1, sub.name))
    for path, repeats, name in sources:
        default = REPEAT_FOLDER.match(name).group(2) if REPEAT_FOLDER.match(name) else ""
        for image_path in sorted(path.iterdir()):
            if image_path.suffix.lower() not in IMAGE_SUFFIXES or not image_path.is_file():
                continue
            caption = _caption(image_path.with_suffix(caption_extension), dataset.notes)
            size = _image_size(image_path, root)
            dataset.images.append(TrainImage(image_path, caption if caption is not None else
                                             default, repeats, size, name))  # fmt: skip
    if not dataset.images:
        raise DatasetError(
            f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)}), neither directly nor in "
            "N_name subfolders"
        )
    return dataset


def _image_size(path: Path, root: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetError(f"{path.relative_to(root)}: not a readable image ({exc})") from None


def _caption(path: Path, notes: list[str]) -> str | None:
    """The caption file's text in the first encoding that decodes it; None without one."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text, encoding = data.decode("utf-16"), "utf-16"
    else:
        text, encoding = _decode(data)
    if encoding not in ("utf-8-sig",):
        notes.append(f"{path.name}: read as {encoding}")
    return " ".join(text.split())


def _decode(data: bytes) -> tuple[str, str]:
    for encoding in ENCODINGS:
        try:
            return data.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1"), "latin-1"  # decodes any bytes


def make_buckets(resolution: int) -> list[tuple[int, int]]:
    """kohya's bucket sizes: area at most resolution², sides in steps of 64 between half
    and twice the resolution (at least 64)."""
    max_area = resolution * resolution
    low = max(BUCKET_STEP, resolution // 2 // BUCKET_STEP * BUCKET_STEP)
    high = resolution * 2
    buckets = {(resolution, resolution)}
    width = low
    while width <= high:
        height = min(high, (max_area // width) // BUCKET_STEP * BUCKET_STEP)
        if height >= low:
            buckets.add((width, height))
            buckets.add((height, width))
        width += BUCKET_STEP
    return sorted(buckets)


def assign_buckets(
    images: list[TrainImage], resolution: int, enable: bool
) -> dict[tuple[int, int], list[TrainImage]]:
    """Each image in the bucket nearest its aspect ratio (or all in the square one)."""
    buckets = make_buckets(resolution) if enable else [(resolution, resolution)]
    out: dict[tuple[int, int], list[TrainImage]] = {}
    for image in images:
        ratio = math.log(image.size[0] / max(1, image.size[1]))
        best = min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))
        out.setdefault(best, []).append(image)
    return out


def epoch_batches(
    buckets: dict[tuple[int, int], list[TrainImage]], batch_size: int, seed: int, epoch: int
) -> list[list[TrainImage]]:
    """One epoch: every image repeats times, shuffled in its bucket, cut into batches of
    one bucket each, the batches shuffled; the same for the same seed and epoch."""
    rng = random.Random(seed * 100_003 + epoch)
    batches: list[list[TrainImage]] = []
    for key in sorted(buckets):
        items = [image for image in buckets[key] for _ in range(image.repeats)]
        rng.shuffle(items)
        batches += [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    rng.shuffle(batches)
    return batches


def batches_per_epoch(buckets: dict[tuple[int, int], list[TrainImage]], batch_size: int) -> int:
    return sum(math.ceil(sum(i.repeats for i in items) / batch_size) for items in buckets.values())


def caption_for(
    caption: str, rng: random.Random, *, dropout: float, shuffle: bool, keep_tokens: int
) -> str:
    """The caption as one step sees it: dropped (empty) at `dropout`, its comma-separated
    tags shuffled after the first `keep_tokens`."""
    if dropout and rng.random() < dropout:
        return ""
    if not shuffle:
        return caption
    tags = [t.strip() for t in caption.split(",") if t.strip()]
    kept, rest = tags[:keep_tokens], tags[keep_tokens:]
    rng.shuffle(rest)
    return ", ".join(kept + rest)


def check_batch(dataset: Dataset, batch_size: int) -> None:
    if batch_size > dataset.count:
        raise DatasetError(
            f"the batch size ({batch_size}) is larger than the images with their repeats "
            f"({dataset.count}); lower the batch size or add images"
        )
