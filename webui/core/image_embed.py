"""The "embed_images" job's params and result, and the key embeddings are stored under.

The image browser (`services/image_browser.py`) submits the job; the job codec names its
params; `core/image_embed_run.py` runs it in the worker thread.

This module must never import torch, transformers or a UI library: the job codec, and
through it the UI and the services, import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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


def model_key(path: Path) -> str:
    """The name a model's embeddings are stored under: its file or folder name and size,
    so a replaced model gets new embeddings."""
    size = (sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            if path.is_dir() else path.stat().st_size)  # fmt: skip
    return f"{path.name}:{size}"
