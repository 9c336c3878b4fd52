"""Textual-inversion embeddings from `models/embeddings` (`--embeddings-dir`).

An embedding is used when its file stem appears as a word in a prompt. Formats read:
A1111/textual_inversion `.pt` (`string_to_param`), through torch's tensors-only
unpickler; diffusers concepts (`{"<token>": tensor}`, .bin or .safetensors); kohya
`emb_params`; SDXL files with `clip_l` and `clip_g`. A1111's `step`, `sd_checkpoint` and
`sd_checkpoint_name` come from the file's dict, or a .safetensors file's metadata. Vectors
are loaded on first use and cached; the text encoder is never changed (conditioning.py
puts the vectors in for one encode).

This module must never import a UI library.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .network_files import (
    FileIndex,
    NetworkFile,
    NetworkFileError,
    load_tensors,
    safetensors_metadata,
)
from .registry import HashCache

log = logging.getLogger(__name__)

EMBEDDING_SUFFIXES = (".pt", ".bin", ".safetensors")


@dataclass
class Embedding:
    name: str
    file: NetworkFile
    vectors: dict[str, object]  # "" (SD 1.x/2.x), or "clip_l" and "clip_g" (SDXL): [n, D]
    step: int | None = None
    checkpoint: str | None = None
    checkpoint_name: str | None = None
    shorthash: str | None = field(default=None)

    @property
    def vector_count(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])

    @property
    def shape(self) -> int:
        """Width of the vectors (A1111 "shape"; SDXL: both encoders together)."""
        return sum(int(v.shape[-1]) for v in self.vectors.values())

    def vectors_for(self, key: str, width: int):
        """The vectors for one text encoder (`key` "", "clip_l" or "clip_g"), or None
        when this embedding was made for another model."""
        vectors = self.vectors.get(key)
        if vectors is None and len(self.vectors) == 1 and key in ("", "clip_l"):
            vectors = self.vectors.get("")
        if vectors is None or int(vectors.shape[-1]) != width:
            return None
        return vectors


def parse_embedding(name: str, data) -> tuple[dict, dict]:
    """(vectors by encoder key, info) from a loaded embedding file, or NetworkFileError."""
    import torch

    if not isinstance(data, dict):
        raise NetworkFileError(f"{name}: not an embedding (a {type(data).__name__})")
    info = {k: data.get(k) for k in ("step", "sd_checkpoint", "sd_checkpoint_name")}
    if "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)
        if len(params) != 1:
            raise NetworkFileError(f"{name}: the embedding file has {len(params)} terms in it")
        vectors = {"": next(iter(params.values()))}
    elif "clip_l" in data and "clip_g" in data:
        vectors = {"clip_l": data["clip_l"], "clip_g": data["clip_g"]}
    elif "emb_params" in data:
        vectors = {"": data["emb_params"]}
    else:
        tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
        if len(tensors) != 1:
            raise NetworkFileError(f"{name}: not a textual-inversion embedding")
        vectors = {"": tensors[0]}
    out = {}
    for key, value in vectors.items():
        if not isinstance(value, torch.Tensor) or value.ndim not in (1, 2) or value.numel() == 0:
            raise NetworkFileError(f"{name}: the vectors are not a [n, D] tensor")
        out[key] = (value.unsqueeze(0) if value.ndim == 1 else value).detach().float()
    if len({v.shape[0] for v in out.values()}) != 1:
        raise NetworkFileError(f"{name}: clip_l and clip_g have different vector counts")
    return out, info


class EmbeddingRegistry:
    def __init__(self, folder: Path, hashes: HashCache, *, allow_unsafe_pickle=False, hashing=True):
        self.index = FileIndex(folder, EMBEDDING_SUFFIXES)
        self.hashes = hashes
        self.allow_unsafe_pickle = allow_unsafe_pickle
        self.hashing = hashing
        self._loaded: dict[tuple, Embedding] = {}
        self._errors: dict[tuple, str] = {}
        self._lock = threading.Lock()
        # text-encoder widths ({key: width}) of the model that encoded last, set by the
        # conditioning: what /embeddings judges "loaded" and "skipped" against
        self.model_widths: dict[str, int] | None = None

    def list(self) -> list[NetworkFile]:
        return self.index.list()

    def refresh(self) -> list[NetworkFile]:
        return self.index.refresh()

    def load(self, file: NetworkFile) -> Embedding:
        key = (file.path, file.mtime, file.size)
        with self._lock:
            if key in self._loaded:
                return self._loaded[key]
            if key in self._errors:
                raise NetworkFileError(self._errors[key])
        try:
            data = load_tensors(file.path, allow_unsafe_pickle=self.allow_unsafe_pickle)
            vectors, info = parse_embedding(file.filename, data)
            meta = safetensors_metadata(file.path)  # ours and kohya's keep A1111's info here
            info = {k: v if v is not None else meta.get(k) for k, v in info.items()}
        except NetworkFileError as exc:
            log.warning("embedding %s", exc)  # once: the error is remembered for this version
            with self._lock:
                self._errors[key] = str(exc)
            raise
        emb = Embedding(
            file.name, file, vectors, _int_or_none(info["step"]),
            _str_or_none(info["sd_checkpoint"]), _str_or_none(info["sd_checkpoint_name"]),
        )  # fmt: skip
        with self._lock:
            self._loaded[key] = emb
        return emb

    def candidates(self, text: str) -> list[Embedding]:
        """Loaded embeddings whose name occurs in `text` (case-insensitively, as CLIP
        lowercases); files that cannot be read are logged and left out."""
        lowered = text.lower()
        found = []
        for file in self.index.list():
            if file.name.lower() in lowered:
                try:
                    found.append(self.load(file))
                except NetworkFileError:
                    continue  # unreadable: logged when first tried
        return found

    def shorthash(self, emb: Embedding) -> str | None:
        """A1111's "TI hashes" value: the first 12 hex digits of the file's sha256."""
        if not self.hashing:
            return None
        if emb.shorthash is None:
            emb.shorthash = self.hashes.sha256(emb.file.path)[:12]
        return emb.shorthash

    def describe(self, widths: dict[str, int] | None) -> tuple[dict, dict]:
        """A1111's /embeddings body: (loaded, skipped), judged against the encoder widths
        of the current model ({key: width}); all are "loaded" when none is known."""
        loaded, skipped = {}, {}
        for file in self.index.list():
            try:
                emb = self.load(file)
            except NetworkFileError as exc:
                skipped[file.name] = {"error": str(exc), "step": None, "sd_checkpoint": None,
                                      "sd_checkpoint_name": None, "shape": None, "vectors": None}  # fmt: skip
                continue
            entry = {"step": emb.step, "sd_checkpoint": emb.checkpoint,
                     "sd_checkpoint_name": emb.checkpoint_name, "shape": emb.shape,
                     "vectors": emb.vector_count}  # fmt: skip
            fits = widths is None or all(
                emb.vectors_for(k, w) is not None for k, w in widths.items()
            )
            (loaded if fits else skipped)[emb.name] = entry
        return loaded, skipped


def _int_or_none(value) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _str_or_none(value) -> str | None:
    return str(value) if value is not None else None
