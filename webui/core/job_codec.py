"""The job store's codec: a job's params and options as JSON text plus PNG blobs.

Every params kind the generation service and the maintenance routes submit round-trips:
txt2img, img2img (PIL init images and masks, SD upscale, hires. fix), extras (images with
their names), the script and extension args (JSON values by name), "load" (a checkpoint
title or None), "unload" (None) and "merge" (checkpoint or LoRA merge params). Dataclasses are written as {"__dc__": "module:Class",
"fields": {...}}; only dataclasses of this program's own modules (`webui.*`) are written
and built back, so stored text never names other code to import, and a new params
dataclass (a control's settings) needs no registration. Images are PNG blobs beside the
text ({"__image__": n}); tuples, paths and dicts with other keys than strings are tagged so
that they come back as they were.

`encode` raises `CodecError` for a value it cannot write (the job is then recorded without
params, and a restart ends it as failed with that reason); `decode` raises `CodecError`
for text it cannot read back (an unknown kind, a params field that no longer exists).

This module must never import torch, diffusers or a UI library.
"""

from __future__ import annotations

import importlib
import io
import json
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..model_manager.merge_params import CheckpointMergeParams, LoraMergeParams
from .image_embed import EmbedImagesParams
from .interrogate import InterrogateParams
from .params import Txt2ImgParams
from .params_img2img import ExtrasParams, Img2ImgParams
from .ti_params import CreateEmbeddingJob, TrainEmbeddingJob
from .train_params import LoraTrainJob

OWN_MODULES = "webui."  # dataclasses of these modules only are written and read back
# what each kind's params must be once decoded (None: no params)
KINDS: dict[str, tuple[type, ...]] = {
    "txt2img": (Txt2ImgParams,),
    "img2img": (Img2ImgParams,),
    "extras": (ExtrasParams,),
    "interrogate": (InterrogateParams,),
    "load": (str, type(None)),
    "unload": (type(None),),
    "embed_images": (EmbedImagesParams,),
    "merge": (CheckpointMergeParams, LoraMergeParams),
    "train_lora": (LoraTrainJob,),
    "create_embedding": (CreateEmbeddingJob,),
    "train_embedding": (TrainEmbeddingJob,),
}
_TAGS = ("__dc__", "__image__", "__tuple__", "__path__", "__dict__")


class CodecError(ValueError):
    """A value that cannot be written, or stored text that cannot be read back."""


def encode(value: Any) -> tuple[str, list[bytes]]:
    """(JSON text, PNG blobs) for params or options; raises CodecError."""
    blobs: list[bytes] = []
    try:
        text = json.dumps(_encode(value, blobs), ensure_ascii=False, allow_nan=True)
    except (TypeError, ValueError, OSError) as exc:
        raise CodecError(str(exc)) from None
    return text, blobs


def decode(text: str, blobs: list[bytes]) -> Any:
    """The value `encode` wrote; raises CodecError."""
    try:
        return _decode(json.loads(text), blobs)
    except CodecError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, OSError) as exc:
        raise CodecError(f"{type(exc).__name__}: {exc}") from None


def decode_params(kind: str, text: str, blobs: list[bytes]) -> Any:
    """A job's params, checked against what its kind runs with; raises CodecError."""
    expected = KINDS.get(kind)
    if expected is None:
        raise CodecError(f"unknown job kind {kind!r}")
    params = decode(text, blobs)
    if not isinstance(params, expected) or (
        expected == (Txt2ImgParams,) and type(params) is not Txt2ImgParams
    ):
        raise CodecError(f"a {kind} job cannot run with {type(params).__name__} params")
    return params


def _encode(value: Any, blobs: list[bytes]) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Image.Image):
        blobs.append(_png(value))
        return {"__image__": len(blobs) - 1}
    if is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        name = f"{cls.__module__}:{cls.__qualname__}"
        if not cls.__module__.startswith(OWN_MODULES) or _dataclass(name) is not cls:
            raise CodecError(f"cannot store a {cls.__qualname__} ({cls.__module__})")
        return {"__dc__": name,
                "fields": {f.name: _encode(getattr(value, f.name), blobs) for f in fields(value)}}  # fmt: skip
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, blobs) for v in value]}
    if isinstance(value, list):
        return [_encode(v, blobs) for v in value]
    if isinstance(value, Path):
        return {"__path__": str(value)}
    if isinstance(value, dict) or hasattr(value, "items"):
        items = list(value.items())
        if all(isinstance(k, str) for k, _ in items) and not any(k in _TAGS for k, _ in items):
            return {k: _encode(v, blobs) for k, v in items}
        return {"__dict__": [[_encode(k, blobs), _encode(v, blobs)] for k, v in items]}
    raise CodecError(f"cannot store a value of type {type(value).__name__}")


def _decode(value: Any, blobs: list[bytes]) -> Any:
    if isinstance(value, list):
        return [_decode(v, blobs) for v in value]
    if not isinstance(value, dict):
        return value
    if "__image__" in value:
        with Image.open(io.BytesIO(blobs[value["__image__"]])) as image:
            return image.copy()  # a plain in-memory image, as the request decoded it
    if "__dc__" in value:
        cls = _dataclass(value["__dc__"])
        if cls is None:
            raise CodecError(f"unknown stored type {value['__dc__']!r}")
        known = {f.name for f in fields(cls)}
        stored = value["fields"]
        gone = sorted(set(stored) - known)
        if gone:
            raise CodecError(f"{cls.__name__} has no field {gone[0]!r} any more")
        return cls(**{k: _decode(v, blobs) for k, v in stored.items()})
    if "__tuple__" in value:
        return tuple(_decode(v, blobs) for v in value["__tuple__"])
    if "__path__" in value:
        return Path(value["__path__"])
    if "__dict__" in value:
        return {_hashable(_decode(k, blobs)): _decode(v, blobs) for k, v in value["__dict__"]}
    return {k: _decode(v, blobs) for k, v in value.items()}


def _dataclass(name: str) -> type | None:
    """The dataclass "module:Qual.Name" of this program's modules, else None."""
    module_name, _, qualname = str(name).partition(":")
    if not module_name.startswith(OWN_MODULES) or not qualname:
        return None
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return None
    return found if isinstance(found, type) and is_dataclass(found) else None


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def _png(image: Image.Image) -> bytes:
    """The image as a lossless PNG (fast compression: it is written at submit time)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
