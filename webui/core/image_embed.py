"""The "embed_images" job: CLIP image embeddings for the browser's map, on the queue.

Submitted by the image browser (`services/image_browser.py`) like any job, so it waits its
turn and runs in the worker thread, the only one that touches torch. It embeds the
indexed images that have no embedding from this model yet (cached per image and model in
the index; a changed file loses its embedding when it is scanned again), in batches,
advancing the job's progress, and stops between batches at an interrupt.

This module must never import a UI library or a web framework, nor torch when it is
imported (the job codec names its params; `embed_images` imports the model code).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .image_index import ImageIndex
from .job import Job

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedImagesParams:
    model: str  # the CLIP vision model: a folder or .safetensors file in models/clip_vision
    database: str  # the index's SQLite file
    batch_size: int = 8

    @property
    def prompt(self) -> str:  # what the queue lists for this job
        return f"Image embeddings: {Path(self.model).name}"


@dataclass(frozen=True)
class EmbedResult:
    model: str  # the key the embeddings are stored under
    embedded: int
    unreadable: int
    images: tuple = ()  # no pictures (the queue reads `images` of every result)


def embed_images(job: Job, device: str = "cpu") -> EmbedResult:
    """Embed every indexed image that has no embedding from the job's model yet."""
    from ..model_manager.clip_vision import ClipVisionEmbedder  # imports torch

    params: EmbedImagesParams = job.params
    key = model_key(Path(params.model))
    index = ImageIndex(params.database)
    try:
        todo = index.missing_embeddings(key)
        job.progress.advance(0, max(1, len(todo)))
        if not todo:
            return EmbedResult(key, 0, 0)
        embedder = ClipVisionEmbedder.load(Path(params.model), device)
        done = unreadable = 0
        for start in range(0, len(todo), params.batch_size):
            if job.should_stop():
                break
            batch = todo[start : start + params.batch_size]
            ids, images = _open(batch)
            unreadable += len(batch) - len(ids)
            if images:
                vectors = embedder.embed(images, batch=params.batch_size)
                index.put_embeddings(key, zip(ids, vectors, strict=True))
            done = start + len(batch)
            job.progress.advance(done, len(todo))
        return EmbedResult(key, done - unreadable, unreadable)
    finally:
        index.close()


def model_key(path: Path) -> str:
    """The name a model's embeddings are stored under: its file or folder name and size,
    so a replaced model gets new embeddings."""
    size = (sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            if path.is_dir() else path.stat().st_size)  # fmt: skip
    return f"{path.name}:{size}"


def _open(rows: list[tuple[int, str]]) -> tuple[list[int], list[Image.Image]]:
    ids, images = [], []
    for image_id, path in rows:
        try:
            with Image.open(path) as image:
                image.load()
                images.append(image.convert("RGB"))
            ids.append(image_id)
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            log.info("not embedded: %s (%s)", path, exc)
    return ids, images
