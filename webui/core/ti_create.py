"""The worker's side of a "create_embedding" job, and the embedding file format we write.

`create_embedding` leases the checkpoint (the one asked for, else the server's) and makes
`models/embeddings/<name>.safetensors`: `num_vectors_per_token` vectors taken, as A1111
does, from the token embeddings of the initialization text (vector i is the text's token
i * tokens // vectors; an empty text gives zeros). SD 1.x/2.x files hold `emb_params`
[n, D], SDXL files `clip_l` [n, 768] and `clip_g` [n, 1280] (the layout A1111, Forge and
our loader read); the safetensors metadata carries A1111's `name`, `step`,
`sd_checkpoint` (short hash) and `sd_checkpoint_name`. `save_embedding` writes atomically:
a temporary file in the same folder replaces the old one only once it is complete.

Runs on the worker thread only; never imports a UI library.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import UserError
from ..model_manager.manager import ModelManager
from .conditioning import TextEncoderSlot
from .families import Families
from .job import Job
from .ti_params import CreateEmbeddingJob

SUFFIX = ".safetensors"


class EmbeddingError(RuntimeError, UserError):
    """An embedding cannot be created or trained; the message says why."""


@dataclass
class CreateResult:
    path: str
    message: str


def embedding_path(folder: Path, name: str) -> Path:
    return Path(folder) / f"{name}{SUFFIX}"


def file_key(slot_key: str) -> str:
    """The tensor's name in the file for a text encoder's key ("" is SD 1.x/2.x)."""
    return slot_key or "emb_params"


@torch.no_grad()
def init_vectors(
    slots: list[TextEncoderSlot], init_text: str, count: int
) -> dict[str, torch.Tensor]:
    """A1111's initial vectors, per text encoder key, in float32 on the CPU."""
    out = {}
    for slot in slots:
        layer = slot.encoder.get_input_embeddings()
        ids = slot.tokenizer(init_text or "*", add_special_tokens=False)["input_ids"]
        vectors = torch.zeros((count, layer.embedding_dim), dtype=torch.float32)
        if init_text and ids:
            embedded = layer(torch.tensor(ids, device=layer.weight.device)).float().cpu()
            for i in range(count):
                vectors[i] = embedded[i * len(ids) // count]
        out[slot.key] = vectors
    return out


def save_embedding(path: Path, vectors: dict[str, torch.Tensor], meta: dict[str, object]) -> None:
    """Write the file atomically: the previous file stays until the new one is complete."""
    tensors = {file_key(k): v.detach().float().cpu().contiguous() for k, v in vectors.items()}
    metadata = {k: str(v) for k, v in meta.items() if v is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def checkpoint_meta(lease) -> dict[str, object]:
    """A1111's `sd_checkpoint` (the checkpoint's short hash) and `sd_checkpoint_name`."""
    info = lease.info
    shorthash = getattr(info, "shorthash", None)
    return {"sd_checkpoint": shorthash, "sd_checkpoint_name": getattr(info, "name", None)}


def create_embedding(job: Job, models: ModelManager, families: Families, info) -> CreateResult:
    spec: CreateEmbeddingJob = job.params
    p = spec.params
    path = embedding_path(Path(spec.embeddings_dir), p.name)
    if path.exists() and not p.overwrite_old:
        raise EmbeddingError(f"name: file {path} already exists")
    job.progress.text = f"Loading {info.name}"
    lease = models.acquire(info)
    family = families.of(lease.spec)
    try:
        slots = family.text_encoders(lease.pipe, 1)
    except Exception as exc:
        raise EmbeddingError(f"checkpoint: {info.name} has no CLIP text encoder ({exc})") from None
    vectors = init_vectors(slots, p.init_text, p.num_vectors_per_token)
    save_embedding(path, vectors, {"name": p.name, "step": 0, **checkpoint_meta(lease)})
    return CreateResult(str(path), f"create embedding filename: {path}")
