"""Runs the "embed_images" job: CLIP image embeddings for the Image Browser's map.

Submitted like any job, it waits its turn and runs in the worker thread, the only one
that touches torch. It embeds the indexed images that have no embedding from this model
yet (cached per image and model in the index; a changed file loses its embedding when it
is scanned again), in batches, advancing the job's progress, and stops between batches at
an interrupt.

This module must never import a UI library or a web framework.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..model_manager.clip_vision import ClipVisionEmbedder
from .image_embed import EmbedImagesParams, EmbedResult, model_key
from .image_index import ImageIndex
from .job import Job

log = logging.getLogger(__name__)


def embed_images(job: Job, device: str = "cpu") -> EmbedResult:
    """Embed every indexed image that has no embedding from the job's model yet."""
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
