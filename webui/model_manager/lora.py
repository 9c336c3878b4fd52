"""LoRA files: found in `models/Lora` (`--lora-dir`), applied to one job, removed after it.

Both key layouts users have load through diffusers and peft: kohya/A1111 files
(`lora_unet_..._to_q.lora_down.weight`, `lora_up`, `alpha`; `lora_te_`/`lora_te1_`/
`lora_te2_` for the text encoders; LoCon convolution layers; SDXL files in the SGM block
naming) and diffusers/peft files (`unet....to_q.lora_A.weight`). LyCORIS variants that
diffusers cannot load for Stable Diffusion (LoHa, LoKr, OFT, IA3, full diffs) are refused
with a message naming the file.

Per job (`LoraManager.applied`): every requested LoRA becomes a peft adapter of the leased
pipeline, activated with its text-encoder and UNet multipliers; when the job ends (also on
error or interrupt) all adapters are disabled, which makes every wrapped layer compute its
base layer alone: the next job without a tag gives exactly the image it gave before any
LoRA was used. Adapters stay resident for reuse, up to `resident` per pipeline (least
recently used deleted first), and the files' tensors are cached in RAM. Weights are never
fused into the model (unfusing is not exact).

This module must never import a UI library.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import encoder_lora
from .network_files import (
    AddnetHashCache,
    FileIndex,
    NetworkFile,
    NetworkFileError,
    load_tensors,
    safetensors_metadata,
)
from .registry import HashCache

log = logging.getLogger(__name__)

LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")
LoadLora = Callable[[Any, dict, str], None]  # (pipe, tensors, adapter name)
# key fragment -> LyCORIS variant diffusers cannot load for Stable Diffusion
UNSUPPORTED_KEYS = {
    ".hada_w1": "LoHa",
    ".lokr_w1": "LoKr",
    ".oft_": "OFT",
    ".oft_blocks": "OFT",
    ".on_input": "IA3",
    ".weight_ia3": "IA3",
    ".diff": "full weight difference",
    ".lora_mid.": "LoCon with CP decomposition",
}


@dataclass
class AppliedLoras:
    """What a job got: infotext fields and warnings for the user."""

    hashes: dict[str, str] = field(default_factory=dict)  # name -> 12-digit hash
    skipped: list[str] = field(default_factory=list)  # tags not applied
    warnings: list[str] = field(default_factory=list)

    def infotext_fields(self) -> dict[str, str]:
        fields = {}
        if self.hashes:
            fields["Lora hashes"] = ", ".join(f"{n}: {h}" for n, h in self.hashes.items())
        if self.skipped:
            fields["Lora skipped"] = ", ".join(self.skipped)
        return fields


class LoraManager:
    def __init__(
        self,
        folder: Path,
        hashes: HashCache,
        addnet_hashes: AddnetHashCache,
        *,
        allow_unsafe_pickle: bool = False,
        hashing: bool = True,
        resident: int = 4,
        cached_files: int = 2,
    ):
        self.index = FileIndex(folder, LORA_SUFFIXES)
        self.hashes = hashes
        self.addnet_hashes = addnet_hashes
        self.allow_unsafe_pickle = allow_unsafe_pickle
        self.hashing = hashing
        self.resident = resident
        self.cached_files = cached_files
        self._tensors: OrderedDict[tuple, dict] = OrderedDict()
        self._metadata: dict[tuple, dict] = {}
        self._lock = threading.Lock()

    # --- listing (any thread) -----------------------------------------------------------
    def list(self) -> list[NetworkFile]:
        return self.index.list()

    def refresh(self) -> list[NetworkFile]:
        return self.index.refresh()

    def find(self, name: str) -> NetworkFile | None:
        return self.index.find(name)

    def metadata(self, file: NetworkFile) -> dict[str, str]:
        key = (file.path, file.mtime)
        with self._lock:
            if key not in self._metadata:
                self._metadata[key] = safetensors_metadata(file.path)
            return self._metadata[key]

    def shorthash(self, file: NetworkFile) -> str | None:
        """A1111's 12-digit LoRA hash (addnet hash for safetensors, else the file's)."""
        if not self.hashing:
            return None
        cache = self.addnet_hashes if file.path.suffix.lower() == ".safetensors" else self.hashes
        return cache.sha256(file.path)[:12]

    # --- loading ------------------------------------------------------------------------
    def tensors(self, file: NetworkFile) -> dict:
        """The file's tensors, checked for a layout diffusers can load; cached."""
        key = (file.path, file.mtime, file.size)
        with self._lock:
            if key in self._tensors:
                self._tensors.move_to_end(key)
                return self._tensors[key]
        state = load_tensors(file.path, allow_unsafe_pickle=self.allow_unsafe_pickle)
        state = {k: v for k, v in state.items() if hasattr(v, "shape")}
        check_layout(file.filename, state)
        with self._lock:
            self._tensors[key] = state
            while len(self._tensors) > self.cached_files:
                self._tensors.popitem(last=False)
        return state

    # --- per job (worker thread) ---------------------------------------------------------
    @contextmanager
    def applied(self, pipe, requests, *, load: LoadLora):
        """Apply `requests` (prompts.LoraRequest) to `pipe` for the duration of the block.

        `load(pipe, tensors, adapter_name)` is the model family's way of putting a LoRA
        file on its pipeline (`webui.core.families`)."""
        result = AppliedLoras()
        weights: OrderedDict[str, list] = OrderedDict()  # adapter -> [te, unet]
        for request in requests:
            file = self.find(request.name)
            if file is None:
                result.skipped.append(request.tag or request.name)
                result.warnings.append(f"LoRA not found: {request.name}")
                continue
            try:
                adapter = self._ensure_adapter(pipe, file, load)
            except (NetworkFileError, ValueError, RuntimeError, KeyError) as exc:
                log.warning("LoRA %s: %s", file.rel, exc)
                result.skipped.append(request.tag or request.name)
                result.warnings.append(
                    str(exc) if file.filename in str(exc) else f"{file.filename}: {exc}"
                )
                continue
            result.warnings += encoder_lora.notes(pipe, adapter, file.filename)
            entry = weights.setdefault(adapter, [0.0, 0.0])
            entry[0] += request.te  # a LoRA named twice adds up, like applying it twice
            entry[1] += request.unet
            if file.name not in result.hashes:
                result.hashes[file.name] = self.shorthash(file) or ""
        result.hashes = {n: h for n, h in result.hashes.items() if h}
        if not weights:
            yield result
            return
        try:
            _activate(pipe, weights)
            yield result
        finally:
            if _adapters(pipe, encoders=False):
                pipe.disable_lora()
            encoder_lora.deactivate(pipe)
            self._evict(pipe, keep=list(weights))

    def _ensure_adapter(self, pipe, file: NetworkFile, load: LoadLora) -> str:
        name = adapter_name(file)
        if name in _adapters(pipe):
            _touch(pipe, name)
            return name
        state = self.tensors(file)
        try:
            with warnings.catch_warnings():  # peft warns that a model holds several adapters
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                load(pipe, dict(state), name)
        except Exception as exc:
            _delete(pipe, name)
            raise NetworkFileError(f"{file.filename}: does not fit this model ({exc})") from exc
        if name not in _adapters(pipe):
            raise NetworkFileError(f"{file.filename}: no layer of this model matched the file")
        _touch(pipe, name)
        log.info("LoRA %s loaded as adapter %s", file.rel, name)
        return name

    def _evict(self, pipe, keep: list[str]) -> None:
        order = getattr(pipe, "_webui_lora_order", [])
        loaded = _adapters(pipe)
        order[:] = [n for n in order if n in loaded]
        while len(order) > self.resident:
            victim = next((n for n in order if n not in keep), None)
            if victim is None:
                break
            order.remove(victim)
            _delete(pipe, victim)
            log.info("LoRA adapter %s removed from the model", victim)


def _adapters(pipe, encoders: bool = True) -> set[str]:
    """The pipeline's adapters (peft's; with `encoders`, also those on its big text
    encoders, `encoder_lora`)."""
    extra = encoder_lora.adapters(pipe) if encoders else set()
    try:
        return extra | {a for names in pipe.get_list_adapters().values() for a in names}
    except ValueError:  # no peft backend: nothing can be loaded
        return extra


def _delete(pipe, name: str) -> None:
    if name in _adapters(pipe, encoders=False):
        pipe.delete_adapters([name])
    encoder_lora.delete(pipe, name)


def _touch(pipe, name: str) -> None:
    order = pipe.__dict__.setdefault("_webui_lora_order", [])
    if name in order:
        order.remove(name)
    order.append(name)


def _activate(pipe, weights: OrderedDict) -> None:
    encoder_lora.activate(pipe, {name: te for name, (te, _) in weights.items()})
    peft = _adapters(pipe, encoders=False)
    if not peft:  # only big text encoders' layers (`encoder_lora`)
        return
    parts = pipe.get_list_adapters()
    names, per_adapter = [], []
    for name, (te, unet) in weights.items():
        if name not in peft:
            continue
        components = {}
        for component, adapters in parts.items():
            if name in adapters:
                components[component] = te if component.startswith("text_encoder") else unet
        names.append(name)
        per_adapter.append(components)
    pipe.enable_lora()
    pipe.set_adapters(names, per_adapter)


def adapter_name(file: NetworkFile) -> str:
    """A peft adapter name unique to this file's path and contents version."""
    key = f"{file.path}|{file.size}|{file.mtime}".encode()
    return "lora_" + hashlib.sha1(key).hexdigest()[:12]


def check_layout(filename: str, state: dict) -> None:
    """Refuse, naming the file, what diffusers cannot load as a Stable Diffusion LoRA."""
    if not state:
        raise NetworkFileError(f"{filename}: the file holds no tensors")
    for fragment, variant in UNSUPPORTED_KEYS.items():
        key = next((k for k in state if fragment in k), None)
        if key is not None:
            raise NetworkFileError(
                f"{filename}: LyCORIS {variant} (key {key!r}) cannot be loaded by diffusers "
                "for Stable Diffusion; only LoRA and LoCon files can"
            )
    if not any("lora" in k for k in state):
        raise NetworkFileError(f"{filename}: not a LoRA file (no lora_down/lora_A keys)")
