"""The image browser: the index of the output folders, favourites, trash, the similarity map.

`ImageBrowser` is what the "Image Browser" tab and the `/webui/v1/images` routes use:

- `scan` indexes `outputs/` and the folders of the `image_browser_folders` option
  (incrementally, `core/image_index.py`), never the trash folder;
- `search`, `set_favourite`, `trash` (the file moves to `<data>/trash`, never deleted);
- `submit_embeddings` queues an "embed_images" job (`core/image_embed.py`) for a CLIP
  vision model of `models/clip_vision`;
- `similarity_map` lays the embedded images out by a diffusion map
  (`core/diffusion_map.py`) with k-means clusters; the last map is kept until the
  embeddings change.

Errors for the user are `UserError` (an unknown model, too few embedded images).
This module must never import torch, a UI library or a web framework.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.diffusion_map import clusters, diffusion_map
from ..core.image_embed import EmbedImagesParams, model_key
from ..core.image_index import Filters, ImageIndex, IndexedImage, Page, ScanResult
from ..core.jobs import Job, JobQueue
from ..errors import UserError

CLIP_SUFFIXES = (".safetensors",)
MIN_MAP_IMAGES = 3


@dataclass(frozen=True)
class MapPoint:
    id: int
    x: float
    y: float
    cluster: int


@dataclass(frozen=True)
class SimilarityMap:
    model: str
    points: list[MapPoint]
    cluster_count: int

    def members(self, cluster: int) -> tuple[int, ...]:
        return tuple(p.id for p in self.points if p.cluster == cluster)


class ImageBrowser:
    def __init__(
        self,
        index: ImageIndex,
        folders: Callable[[], list[Path]],
        trash_dir: Path,
        clip_dir: Path,
        jobs: JobQueue | None = None,
    ):
        self.index, self._folders, self.jobs = index, folders, jobs
        self.trash_dir, self.clip_dir = trash_dir, clip_dir
        self._scan_lock = threading.Lock()
        self._map_lock = threading.Lock()
        self._map_cache: dict[tuple[Any, ...], SimilarityMap] = {}

    # --- the index ----------------------------------------------------------------------
    def folders(self) -> list[Path]:
        return self._folders()

    def scan(self) -> ScanResult:
        """Index new and changed files of every folder (one scan at a time)."""
        with self._scan_lock:
            return self.index.scan(self.folders(), skip=[self.trash_dir])

    def search(self, filters: Filters | None = None, sort: str = "date", descending: bool = True,
               limit: int = 50, cursor: tuple[Any, int] | None = None) -> Page:  # fmt: skip
        return self.index.search(filters or Filters(), sort, descending, limit, cursor)

    def get(self, image_id: int) -> IndexedImage:
        image = self.index.get(image_id)
        if image is None:
            raise UserError(f"no image with id {image_id} in the index")
        return image

    def set_favourite(self, image_id: int, favourite: bool) -> None:
        if not self.index.set_favourite(image_id, favourite):
            raise UserError(f"no image with id {image_id} in the index")

    def trash(self, image_id: int) -> Path:
        """Move the image to the trash folder; its new path."""
        moved = self.index.trash(image_id, self.trash_dir)
        if moved is None:
            raise UserError(f"no image with id {image_id} in the index")
        return moved

    # --- embeddings and the map ---------------------------------------------------------
    def clip_models(self) -> list[str]:
        """The CLIP vision models in models/clip_vision (folders and .safetensors files)."""
        if not self.clip_dir.is_dir():
            return []
        return [p.name for p in sorted(self.clip_dir.iterdir())
                if (p.is_dir() and (p / "config.json").is_file())
                or (p.is_file() and p.suffix.lower() in CLIP_SUFFIXES)]  # fmt: skip

    def model_path(self, name: str) -> Path:
        if name not in self.clip_models():
            known = ", ".join(self.clip_models()) or f"none: put one in {self.clip_dir}"
            raise UserError(f"CLIP vision model {name!r} not found (models: {known})")
        return self.clip_dir / name

    def submit_embeddings(self, model: str, owner: str = "local") -> Job:
        """Queue the job that embeds every image not yet embedded by `model`."""
        if self.jobs is None:
            raise UserError("no job queue to run the embeddings on")
        params = EmbedImagesParams(str(self.model_path(model)), str(self.index.path))
        return self.jobs.submit("embed_images", params, owner)

    def similarity_map(self, model: str, cluster_count: int | None = None) -> SimilarityMap:
        """Every image embedded by `model` on a plane (diffusion map), with clusters."""
        key = model_key(self.model_path(model))
        ids, vectors = self.index.embeddings(key)
        if len(ids) < MIN_MAP_IMAGES:
            raise UserError(f"the map needs at least {MIN_MAP_IMAGES} images with embeddings "
                            f"from {model} ({len(ids)} now): compute the embeddings first")  # fmt: skip
        cache_key = (key, len(ids), int(ids.sum()), float(vectors.sum()), cluster_count)
        with self._map_lock:
            cached = self._map_cache.get(cache_key)
            if cached is not None:
                return cached
            result = diffusion_map(vectors)
            labels = clusters(result.coords[:, : min(4, result.coords.shape[1])], cluster_count)
            xy = result.coords[:, :2] if result.coords.shape[1] > 1 else np.c_[result.coords, 0]
            points = [MapPoint(int(i), float(x), float(y), int(c))
                      for i, (x, y), c in zip(ids, xy, labels, strict=True)]  # fmt: skip
            made = SimilarityMap(model, points, int(labels.max()) + 1)
            self._map_cache = {cache_key: made}  # only the last map
            return made
