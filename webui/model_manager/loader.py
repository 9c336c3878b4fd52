"""Load a checkpoint into a diffusers pipeline, with no network at all.

Single files (A1111/LDM layout `.safetensors`, or `.ckpt` through torch's tensors-only
unpickler, refused up front by `check_pickle` when the pickle's instructions import
anything else: such a pickle could run code) are identified from their tensors
(identify.py, asking the model families passed in); the diffusers config folder that
`from_single_file` needs is written from the family's `config_files(spec)` into a
temporary folder, and the family builds its tokenizers offline (the CLIP vocabulary
shipped in configs/). Diffusers folders (a folder with model_index.json) load with
`from_pretrained(local_files_only=True)` when a family claims their pipeline class.

This module must never download anything, and never import a UI library.
"""

from __future__ import annotations

import json
import logging
import pickle
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import UserError
from . import flux_gguf
from .identify import ModelFamily, ModelSpec, Shapes, UnsupportedModelError, family_named, identify

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")


class CheckpointLoadError(RuntimeError, UserError):
    """A checkpoint could not be read or built; the message names the file."""


class MissingModuleError(CheckpointLoadError):
    """A partial file (a FLUX transformer alone) without the module files it needs chosen;
    the message names what to add and where."""


class UnsafePickleError(CheckpointLoadError):
    """A pickled checkpoint refused: its pickle would import more than tensors."""


@dataclass
class LoadedModel:
    """A pipeline with what the rest of the program needs to know about it."""

    pipe: object  # a diffusers StableDiffusion(XL)(Inpaint)Pipeline
    spec: ModelSpec
    path: Path
    family: ModelFamily
    variants: dict = field(default_factory=dict)  # pipeline class name -> from_pipe view
    # the checkpoint's own scheduler config (prediction type, betas), before any sampler
    base_scheduler_config: dict = field(default_factory=dict)
    modules: tuple[Path, ...] = ()  # the module files (VAE / text encoders) it was built with
    # big text encoders freed after encoding (`text_encoder_release`): name -> how back
    released: dict[str, str] = field(default_factory=dict)
    variant_mark: str = ""  # its user metadata's FLUX.1 variant when loaded (`user_metadata`)

    def __post_init__(self):
        if not self.base_scheduler_config:
            self.base_scheduler_config = dict(self.pipe.scheduler.config)


def read_shapes(path: Path) -> Shapes:
    """Tensor names and shapes of a single-file checkpoint, without loading weights."""
    try:
        if flux_gguf.is_gguf(path):
            return flux_gguf.gguf_shapes(path)
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        state = _load_ckpt(path)
        return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    except CheckpointLoadError:
        raise
    except Exception as exc:  # corrupt or truncated file: name it, keep the cause
        raise CheckpointLoadError(f"{path.name}: cannot read the file ({exc})") from exc


def _load_ckpt(path: Path) -> dict:
    """A pickled checkpoint through torch's restricted unpickler: tensors and plain data only."""
    check_pickle(path)  # names what the pickle would import, before unpickling anything
    zipped = zipfile.is_zipfile(path)  # the legacy (pre-1.6) format cannot be memory-mapped
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as exc:  # what the restricted unpickler raises
        if "global" in str(exc).lower() or "blocked" in str(exc):
            raise _refused(path, "") from exc
        raise CheckpointLoadError(f"{path.name}: cannot read the file (damaged pickle)") from exc
    while isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def check_pickle(path: Path) -> None:
    """Refuse a pickled checkpoint (CheckpointLoadError) whose pickle would import anything
    beyond tensors and plain containers, by reading its instructions: nothing is unpickled.

    Safetensors files and folders pass. This is the quick check requests get (a model
    switch answers at once); loading still goes through the restricted unpickler.
    """
    if path.is_dir() or path.suffix.lower() in (".safetensors", flux_gguf.SUFFIX):
        return
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
        if not zipfile.is_zipfile(path) and (len(head) < 2 or head[0] != 0x80):
            raise CheckpointLoadError(
                f"{path.name}: cannot read the file (not a torch checkpoint: neither a zip "
                "archive nor a pickle)"
            )
        unsafe = _unsafe_globals(path)
    except CheckpointLoadError:
        raise
    except pickle.UnpicklingError as exc:  # instructions the restricted unpickler refuses
        raise _refused(path, f" ({exc})") from exc
    except (OSError, ValueError, EOFError, RuntimeError, KeyError) as exc:  # the load says why
        log.debug("%s: pickle not checked (%s)", path.name, exc)
        return
    if unsafe:
        raise _refused(path, f" (it imports {', '.join(sorted(unsafe)[:5])})")


def _unsafe_globals(path: Path) -> list[str]:
    if zipfile.is_zipfile(path):
        return torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    # legacy format: magic number, protocol, system info, then the object, each a pickle
    from torch import _weights_only_unpickler as restricted

    allowed = set(restricted._get_allowed_globals())
    found: set[str] = set()
    with open(path, "rb") as handle:
        for _ in range(4):
            found |= restricted.get_globals_in_pkl(handle)
    return sorted(found - allowed)


def _refused(path: Path, detail: str) -> UnsafePickleError:
    return UnsafePickleError(
        f"{path.name}: refused, the pickle holds more than tensors and could run code{detail}. "
        "Convert it to .safetensors."
    )


def load_checkpoint(
    path: Path,
    device: str,
    dtype: torch.dtype,
    families: Sequence[ModelFamily],
    modules: Sequence[Path] = (),
) -> LoadedModel:
    """Build a pipeline from a single file or a diffusers folder of one of `families`.

    `modules`: separate VAE / text encoder files (Forge's "VAE / Text Encoder") for a
    family that builds its pipeline itself (`load_single_file`: FLUX)."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # we report loading in the job's progress
    if path.is_dir():
        return _load_diffusers_folder(path, device, dtype, families)
    spec = identify_file(path, families)
    family = family_named(families, spec.family)
    if hasattr(family, "load_single_file"):
        return _load_own_layout(path, spec, family, device, dtype, modules)
    import diffusers

    pipeline_class = getattr(diffusers, spec.pipeline_class)
    with tempfile.TemporaryDirectory(prefix="webui-config-") as config_dir:
        write_config_folder(family.config_files(spec), Path(config_dir))
        try:
            pipe = pipeline_class.from_single_file(
                str(path),
                config=config_dir,
                local_files_only=True,
                # fp32 is diffusers' default: weights are converted while loading, whereas an
                # explicit dtype loads the file's dtype and casts again (slower, and a warning)
                **({} if dtype == torch.float32 else {"dtype": dtype}),
                safety_checker=None,
                feature_extractor=None,
                **family.tokenizers(spec),
            )
        except Exception as exc:
            raise CheckpointLoadError(f"{path.name}: cannot build the model ({exc})") from exc
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module) and component.dtype != dtype:
            component.to(dtype)
    _move(pipe, device)
    if spec.prediction_type is None:
        spec = _settle_prediction_type(spec, pipe)
    pipe.scheduler = pipe.scheduler.from_config(
        pipe.scheduler.config, prediction_type=spec.prediction_type
    )
    return LoadedModel(pipe=pipe, spec=spec, path=path, family=family)


def _load_own_layout(path: Path, spec: ModelSpec, family: ModelFamily, device: str,
                     dtype: torch.dtype, modules: Sequence[Path]) -> LoadedModel:  # fmt: skip
    """A file in a transformer family's own layout, built by the family."""
    try:
        pipe = family.load_single_file(path, spec, modules, dtype)  # type: ignore[attr-defined]
    except CheckpointLoadError:
        raise
    except UnsupportedModelError as exc:
        raise CheckpointLoadError(f"{path.name}: {exc}") from exc
    except Exception as exc:
        raise CheckpointLoadError(f"{path.name}: cannot build the model ({exc})") from exc
    _move(pipe, device)
    return LoadedModel(pipe=pipe, spec=spec, path=path, family=family, modules=tuple(modules))


def identify_file(path: Path, families: Sequence[ModelFamily]) -> ModelSpec:
    try:
        spec = identify(read_shapes(path), families)
    except UnsupportedModelError as exc:
        raise CheckpointLoadError(f"{path.name}: {_text_encoder_hint(path) or exc}") from exc
    return _named_variant(spec, path, families)


def _text_encoder_hint(path: Path) -> str | None:
    """What to do with a GGUF text encoder (T5-XXL, Qwen3) chosen as a checkpoint."""
    from .sniff import gguf_family

    family = gguf_family(path) if flux_gguf.is_gguf(path) else ""
    if not family.startswith(("T5", "Qwen3")):
        return None
    return (f"a {family} text encoder, not a checkpoint: put it in models/text_encoder and "
            'choose it in "VAE / Text Encoder" (API: forge_additional_modules)')  # fmt: skip


def _named_variant(spec: ModelSpec, path: Path, families: Sequence[ModelFamily]) -> ModelSpec:
    """The spec of a variant only a file's (or folder's) name, metadata or user metadata
    tells (FLUX.1 Kontext), else `spec`."""
    for family in families:
        named = getattr(family, "spec_from_file_name", None)
        if named is not None and (found := named(spec, path)) is not None:
            return found
    return spec


def write_config_folder(files: dict[str, dict], folder: Path) -> None:
    """A diffusers-layout config folder (a family's `config_files`) for
    `from_single_file(config=...)`."""
    for name, content in files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(content, indent=1))


def _settle_prediction_type(spec: ModelSpec, pipe) -> ModelSpec:
    """Files that do not say whether they predict noise or v (SD 2.x): ask the UNet
    (A1111's test).

    At t=999 an epsilon model's output is close to its input, a v model's close to minus
    it, so the mean of (output - input) separates them.
    """
    from dataclasses import replace

    unet = pipe.unet
    ctx_dim = spec.unet["cross_attention_dim"]
    param = next(unet.parameters())
    with torch.inference_mode():
        x = torch.full(
            (1, unet.config.in_channels, 8, 8), 0.5, dtype=param.dtype, device=param.device
        )
        cond = torch.full((1, 2, ctx_dim), 0.5, dtype=param.dtype, device=param.device)
        out = unet(x, torch.tensor([999], device=param.device), encoder_hidden_states=cond).sample
        score = (out - x).float().mean().item()
    prediction = "v_prediction" if score < -1 else "epsilon"
    log.info("prediction type from the UNet test: %s (score %.3f)", prediction, score)
    return replace(spec, prediction_type=prediction)


def _load_diffusers_folder(
    path: Path, device: str, dtype: torch.dtype, families: Sequence[ModelFamily]
) -> LoadedModel:
    import diffusers

    try:
        index = json.loads((path / "model_index.json").read_text())
        class_name = index["_class_name"]
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointLoadError(f"{path.name}: unreadable model_index.json ({exc})") from exc
    owner = next((f for f in families if class_name in f.folder_classes), None)
    if owner is None:
        raise CheckpointLoadError(f"{path.name}: {class_name} folders are not supported")
    try:
        pipe = getattr(diffusers, class_name).from_pretrained(
            str(path), local_files_only=True, dtype=dtype, **owner.folder_kwargs
        )
    except Exception as exc:
        raise CheckpointLoadError(f"{path.name}: cannot load the folder ({exc})") from exc
    _move(pipe, device)
    others = [f for f in families if f is not owner]
    claiming = [f for f in others if class_name in getattr(f, "folder_claims", ())]
    for family in (owner, *claiming, *(f for f in others if f not in claiming)):  # owner first
        spec = family.spec_from_pipeline(pipe)
        if spec is not None:
            spec = _named_variant(spec, path, families)
            family = family_named(families, spec.family)  # `_named_variant` may rename it
            if hasattr(family, "folder_claims"):  # FLUX.1's: folders of other classes too
                pipe = _as_class(pipe, spec.pipeline_class)
            return LoadedModel(pipe=pipe, spec=spec, path=path, family=family)
    raise CheckpointLoadError(f"{path.name}: no model family knows this {class_name}")


def _as_class(pipe, class_name: str):
    """A folder's pipeline as the class its family runs (a `FluxKontextPipeline` folder as
    `FluxPipeline`, a `FluxPipeline` folder of FLUX.1 Fill as `FluxFillPipeline`): the
    same components, the ones the class takes."""
    import inspect

    import diffusers

    if type(pipe).__name__ == class_name:
        return pipe
    target = getattr(diffusers, class_name)
    accepted = inspect.signature(target.__init__).parameters
    return target(**{k: v for k, v in pipe.components.items() if k in accepted})


def _move(pipe, device: str) -> None:
    if device != "cpu":  # weights are loaded on the CPU already
        pipe.to(device)
