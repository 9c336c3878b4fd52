"""VAE selection: "Automatic", "None" (the checkpoint's own) or a file from `models/VAE`.

Names are A1111's: the file name with its extension (`vae-ft-mse.safetensors`).
"Automatic" uses a VAE whose file name starts with the checkpoint's stem (in the VAE
folder, or `<checkpoint>.vae.safetensors`/`.pt`/`.ckpt` beside the checkpoint), else the
checkpoint's own. Files in the LDM layout (`encoder.down.0.block.0...`, with or without
`first_stage_model.`) and the diffusers layout both load; the tensors are cached.

A job's VAE is applied by pointing the parameters of the pipeline's VAE module at the
file's tensors, and pointed back when the job ends (also on error), so every pipeline
sharing the module (img2img variants) sees the same VAE and no weights are copied.

This module must never import a UI library.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .network_files import FileIndex, NetworkFile, NetworkFileError, load_tensors
from .registry import HashCache

log = logging.getLogger(__name__)

AUTOMATIC, NONE = "Automatic", "None"
VAE_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")
NEAR_CHECKPOINT_SUFFIXES = (".vae.safetensors", ".vae.pt", ".vae.ckpt")


class UnknownVaeError(LookupError, UserError):
    """The requested VAE is not in the VAE folder."""


@dataclass
class AppliedVae:
    file: NetworkFile | None = None
    shorthash: str | None = None

    def infotext_fields(self) -> dict[str, str]:
        if self.file is None:
            return {}
        fields = {"VAE hash": self.shorthash} if self.shorthash else {}
        fields["VAE"] = self.file.filename
        return fields


class VaeRegistry:
    def __init__(
        self, folder: Path, ckpt_dir: Path, hashes: HashCache, *, allow_unsafe_pickle=False,
        hashing=True, cached: int = 2,
    ):  # fmt: skip
        self.index = FileIndex(folder, VAE_SUFFIXES, [(ckpt_dir, NEAR_CHECKPOINT_SUFFIXES)])
        self.hashes = hashes
        self.allow_unsafe_pickle = allow_unsafe_pickle
        self.hashing = hashing
        self.cached = cached
        self._tensors: OrderedDict[tuple, dict] = OrderedDict()
        self._lock = threading.Lock()

    def list(self) -> list[NetworkFile]:
        return self.index.list()

    def refresh(self) -> list[NetworkFile]:
        return self.index.refresh()

    def choices(self) -> list[str]:
        return [AUTOMATIC, NONE, *(f.filename for f in self.index.list())]

    def find(self, choice: str) -> NetworkFile | None:
        return next((f for f in self.index.list() if choice in (f.filename, f.rel, f.name)), None)

    def resolve(self, choice: str | None, checkpoint_path: Path | None) -> NetworkFile | None:
        """The file a choice means for a checkpoint; None for the checkpoint's own VAE."""
        choice = (choice or AUTOMATIC).strip()
        if choice == NONE:
            return None
        if choice == AUTOMATIC:
            if checkpoint_path is None:
                return None
            stem = checkpoint_path.name.rsplit(".", 1)[0]
            return next((f for f in self.index.list() if f.filename.startswith(stem)), None)
        found = self.find(choice)
        if found is None:
            raise UnknownVaeError(f"VAE not found: {choice}")
        return found

    def tensors(self, file: NetworkFile, config: dict) -> dict:
        """The file's VAE tensors in diffusers layout; cached."""
        key = (file.path, file.mtime, file.size)
        with self._lock:
            if key in self._tensors:
                self._tensors.move_to_end(key)
                return self._tensors[key]
        state = load_tensors(file.path, allow_unsafe_pickle=self.allow_unsafe_pickle)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        state = to_diffusers_layout(file.filename, state, config)
        with self._lock:
            self._tensors[key] = state
            while len(self._tensors) > self.cached:
                self._tensors.popitem(last=False)
        return state

    @contextmanager
    def applied(self, pipe, file: NetworkFile | None):
        """Use the VAE file (None: the checkpoint's own) in `pipe` for the block."""
        if file is None:
            yield AppliedVae()
            return
        vae = pipe.vae
        state = self.tensors(file, dict(vae.config))
        shorthash = self.hashes.sha256(file.path)[:10] if self.hashing else None
        with swapped_weights(vae, state, file.filename):
            yield AppliedVae(file, shorthash)


def to_diffusers_layout(filename: str, state: dict, config: dict) -> dict:
    import torch

    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if any(k.startswith("first_stage_model.") for k in state):
        state = {
            k[len("first_stage_model.") :]: v
            for k, v in state.items()
            if k.startswith("first_stage_model.")
        }
    if any(k.startswith("vae.") for k in state):
        state = {k[4:]: v for k, v in state.items() if k.startswith("vae.")}
    if any(".down_blocks." in k or ".up_blocks." in k for k in state):
        return state  # diffusers layout already
    if not any(k.startswith(("encoder.down.", "decoder.up.")) for k in state):
        raise NetworkFileError(f"{filename}: not a VAE (no encoder/decoder weights)")
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    try:
        return convert_ldm_vae_checkpoint(state, config)
    except Exception as exc:
        raise NetworkFileError(f"{filename}: cannot convert the VAE ({exc})") from exc


@contextmanager
def swapped_weights(module, state: dict, filename: str):
    """Point `module`'s parameters and buffers at `state`'s tensors; restore on exit."""
    targets = dict(module.named_parameters())
    targets.update(module.named_buffers())
    missing = sorted(set(targets) - set(state))
    if missing:
        raise NetworkFileError(f"{filename}: does not fit this model's VAE (missing {missing[0]})")
    for name, target in targets.items():
        if tuple(state[name].shape) != tuple(target.shape):
            raise NetworkFileError(
                f"{filename}: does not fit this model's VAE ({name} is "
                f"{tuple(state[name].shape)}, the model needs {tuple(target.shape)})"
            )
    originals = {}
    try:
        for name, target in targets.items():
            originals[name] = target.data
            target.data = state[name].to(target.device, target.dtype)
        yield
    finally:
        for name, data in originals.items():
            targets[name].data = data
