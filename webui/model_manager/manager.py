"""The loaded models: which checkpoints are in RAM, and which pipeline a job gets.

Keeps the last N loaded checkpoints (option `sd_checkpoints_limit`) in an LRU. Only the
job worker thread calls `acquire`; listing and refreshing are safe from any thread. The
model families it can load are given by the composition root (`webui.core.families`).
Pipeline variants (img2img, inpaint) share the loaded components through `from_pipe`,
never a second copy of the weights, each module left in its own dtype (`keeping_dtypes`).

This module must never import a UI library.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from . import zimage_pipelines
from .flux_keys import missing_message
from .identify import ModelFamily, family_named
from .loader import (
    CheckpointLoadError,
    LoadedModel,
    MissingModuleError,
    UnsafePickleError,
    check_pickle,
    identify_file,
    load_checkpoint,
)
from .memory import MemoryPlan
from .modules import ModuleFiles, UnknownModuleError, module_kinds
from .optimize import prepare_pipeline
from .registry import CheckpointInfo, CheckpointRegistry
from .text_encoder_release import restore
from .user_metadata import flux_variant

log = logging.getLogger(__name__)


class NoCheckpointError(LookupError, UserError):
    """No checkpoint is available, or the requested one does not exist."""


class RefusedCheckpointError(NoCheckpointError):
    """The requested checkpoint exists but is not loaded: its pickle could run code."""


@dataclass
class Lease:
    """What a job gets: a loaded model and the checkpoint it came from."""

    model: LoadedModel
    info: CheckpointInfo

    @property
    def pipe(self):
        return self.model.pipe

    @property
    def spec(self):
        return self.model.spec

    def variant(self, pipeline_class_name: str):
        """The same components under another diffusers pipeline class (from_pipe)."""
        import diffusers

        if type(self.pipe).__name__ == pipeline_class_name:
            return self.pipe
        cache = self.model.variants
        if pipeline_class_name not in cache:
            own = zimage_pipelines.view_class(pipeline_class_name)  # Z-Image's latent views
            view_class = keeping_dtypes(own or getattr(diffusers, pipeline_class_name))
            cache[pipeline_class_name] = view_class.from_pipe(self.pipe)
        return cache[pipeline_class_name]


@functools.cache
def keeping_dtypes(pipeline_class: type) -> type:
    """`pipeline_class` whose `from_pipe` leaves every shared module in its own dtype.
    Diffusers' `from_pipe` ends with `.to(dtype=float32)` unless it is given one dtype for
    all, which would cast a bf16 or fp16 denoiser (and the txt2img pipeline sharing it)
    to float32, doubling its memory, and break a model whose modules differ in dtype."""

    class View(pipeline_class):  # type: ignore[misc, valid-type]
        def to(self, *args, **kwargs):
            kwargs.pop("dtype", None)
            return super().to(*args, **kwargs) if args or kwargs else self

    View.__name__ = View.__qualname__ = pipeline_class.__name__
    return View


class ModelManager:
    def __init__(
        self,
        registry: CheckpointRegistry,
        plan: MemoryPlan,
        *,
        families: Sequence[ModelFamily],
        hashing: bool = True,
        module_files: ModuleFiles | None = None,
    ):
        self.registry = registry
        self.plan = plan
        self.families = tuple(families)  # what checkpoints can be (webui.core.families)
        self.hashing = hashing
        self.limit = 1
        self._loaded: OrderedDict[Path, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self.last_load_seconds: float | None = None
        self._pickle_checked: dict[Path, tuple[int, int]] = {}  # .ckpt files found safe
        # Forge's "VAE / Text Encoder" files (models/VAE, models/text_encoder)
        self.module_files = module_files if module_files is not None else ModuleFiles(())

    # --- listing (any thread) -------------------------------------------------------
    def checkpoints(self) -> list[CheckpointInfo]:
        return self.registry.list()

    def refresh(self) -> list[CheckpointInfo]:
        return self.registry.refresh()

    def resolve(self, name: str | None) -> CheckpointInfo:
        """The checkpoint a request names; empty means the first one, as A1111 does."""
        if name:
            info = self.registry.find(name)
            if info is None:
                raise NoCheckpointError(f"checkpoint not found: {name}")
            self._check_pickle(info)  # a request naming an unsafe .ckpt is refused at once
            return info
        items = self.registry.list()
        if not items:
            raise NoCheckpointError(
                "no checkpoint found: put a .safetensors file into "
                f"{self.registry.folder} and press refresh, or start with --demo"
            )
        with self._lock:
            for path in reversed(self._loaded):
                found = next((i for i in items if i.path == path), None)
                if found:
                    return found
        return items[0]

    def _check_pickle(self, info: CheckpointInfo) -> None:
        if info.is_folder or info.path.suffix.lower() in (".safetensors", ".gguf"):
            return
        try:
            stat = info.path.stat()
        except OSError:
            return  # gone: acquire says so
        stamp = (stat.st_mtime_ns, stat.st_size)
        if self._pickle_checked.get(info.path) == stamp:
            return
        try:
            check_pickle(info.path)
        except UnsafePickleError as exc:
            raise RefusedCheckpointError(str(exc)) from None
        except CheckpointLoadError:
            return  # unreadable for another reason: loading reports it
        self._pickle_checked[info.path] = stamp

    def loaded_paths(self) -> list[Path]:
        with self._lock:
            return list(self._loaded)

    def family_label(self, info: CheckpointInfo) -> str:
        """The family of a single file ("SD 1.x"), read from its header without the
        weights; CheckpointLoadError when it is not a checkpoint of a known family."""
        return identify_file(info.path, self.families).family_label

    # --- loading (the worker thread) -------------------------------------------------
    def unreadable(self, info: CheckpointInfo) -> str | None:
        """Why a single file cannot load (empty, truncated, not a checkpoint), read from its
        header alone without the weights; None when it looks loadable."""
        if info.is_folder or not info.path.exists():
            return None
        try:
            identify_file(info.path, self.families)
        except CheckpointLoadError as exc:
            return str(exc)
        return None

    def needed_modules(self, info: CheckpointInfo, modules: Sequence[str]) -> tuple[Path, ...]:
        """The module files (Forge's "VAE / Text Encoder" names) a partial checkpoint is
        completed with: () for a whole checkpoint. UnknownModuleError for a name that is no
        module file; MissingModuleError when a component it needs is still missing."""
        paths = self.module_files.resolve(modules)
        if info.is_folder or not info.path.exists():
            return ()
        spec = identify_file(info.path, self.families)
        if not spec.missing:
            return ()
        family = family_named(self.families, spec.family)
        if hasattr(family, "needed_modules"):  # a family that tells its modules apart (SD 3.5)
            return family.needed_modules(info.path, spec, paths)
        kinds = module_kinds(paths)
        lacking = [name for name in spec.missing if name not in kinds]
        if lacking:
            family = family_named(self.families, spec.family)
            message = getattr(family, "missing_message", missing_message)  # FLUX's by default
            raise MissingModuleError(message(info.path.name, lacking))
        return tuple(kinds[name] for name in spec.missing)

    def distilled_guidance(self, info: CheckpointInfo) -> bool:
        """Whether the checkpoint takes a distilled guidance scale (FLUX.1 dev's guidance
        embedding; schnell has none), read from its header or its folder's config."""
        if info.is_folder:
            config = info.path / "transformer" / "config.json"
            try:
                return bool(json.loads(config.read_text()).get("guidance_embeds"))
            except (OSError, ValueError):
                return False
        try:
            spec = identify_file(info.path, self.families)
        except CheckpointLoadError:
            return False
        return bool(spec.unet.get("guidance_embeds"))

    def flow_shift(self, info: CheckpointInfo) -> float | None:
        """The "Shift" slider's value for a checkpoint on a flow-matching schedule (SD 3.5
        and Z-Image: 3.0, FLUX.1 schnell: 1.0, dev: 0.0, its own resolution-dependent
        shift), read from its header or its folder's model_index.json; None for the
        others, which take no shift."""
        family = self._family_of(info)
        shift = getattr(family, "default_shift", None)
        if hasattr(family, "schnell_shift") and not self.distilled_guidance(info):
            return family.schnell_shift
        return shift

    def skip_layer_guidance(self, info: CheckpointInfo) -> bool:
        """Whether the checkpoint's family runs Skip Layer Guidance (SD 3.5), read from its
        header or its folder's model_index.json."""
        return bool(getattr(self._family_of(info), "skip_layer_guidance", False))

    def latent_space(self, info: CheckpointInfo) -> str | None:
        """The latent space of the checkpoint's family ("flux": FLUX.1 and Z-Image) from
        its header or its folder's model_index.json; None when it is not identified."""
        return getattr(self._family_of(info), "latent_space", None)

    def family_preset(self, info: CheckpointInfo) -> dict:
        """The defaults of the checkpoint's family (its `preset`: Z-Image Turbo's steps, CFG
        scale, sampler and schedule) from its header or its folder's model_index.json;
        {} when it has none or is not identified."""
        return dict(getattr(self._family_of(info), "preset", {}))

    def _family_of(self, info: CheckpointInfo) -> ModelFamily | None:
        """The checkpoint's family from its header or its folder's model_index.json; None
        when it is not identified."""
        try:
            if info.is_folder:
                index = json.loads((info.path / "model_index.json").read_text())
                return next((f for f in self.families
                             if index.get("_class_name") in f.folder_classes), None)  # fmt: skip
            return family_named(self.families, identify_file(info.path, self.families).family)
        except (OSError, ValueError, LookupError, CheckpointLoadError):
            return None

    def family_problem(
        self, info: CheckpointInfo, modes: Sequence[str], sampler: str | None,
        schedule: str | None, params: Any = None,
    ) -> str | None:  # fmt: skip
        """Why the checkpoint's family cannot run a job of these modes with this sampler
        (a sampler it lacks, the SDXL refiner's txt2img) or these params (FLUX.1 Fill's CFG
        above 1), read from the file's header; None when it can, or when the file is not
        identified (the job says why) or is a folder (known once loaded)."""
        if info.is_folder or not info.path.exists():
            return None
        try:
            spec = identify_file(info.path, self.families)
            family = {f.name: f for f in self.families}[spec.family]
            for mode in modes:
                family.check_mode(mode)
            family.sampler(sampler, schedule)
            if params is not None:
                family.check_params(params)
        except (CheckpointLoadError, KeyError):
            return None
        except UserError as exc:
            return str(exc)
        return None

    def module_problem(self, info: CheckpointInfo, modules: Sequence[str]) -> str | None:
        """Why `modules` cannot complete the checkpoint (an unknown module name, a component
        still missing), read from file headers; None when they can or none is needed."""
        try:
            self.needed_modules(info, modules)
        except (UnknownModuleError, MissingModuleError) as exc:
            return str(exc)
        except CheckpointLoadError:
            return None  # not a checkpoint: `unreadable` and the job say so
        return None

    def acquire(self, info: CheckpointInfo, modules: Sequence[Path] = ()) -> Lease:
        """Load (or take from the RAM cache) the checkpoint and make it most recent;
        `modules`: the files that complete a partial checkpoint (`needed_modules`)."""
        modules = tuple(modules)
        with self._lock:
            model = self._loaded.get(info.path)
            if model is not None and model.modules != modules:  # other modules: rebuild
                del self._loaded[info.path]
                model = None
            if model is not None:
                self._loaded.move_to_end(info.path)
        if model is not None:
            restore(model, self.plan)  # its big text encoders, if a job released them
            self._follow_mark(model, info)
            return Lease(model, info)
        if not info.path.exists():
            raise CheckpointLoadError(f"{info.rel}: file no longer exists")
        problem = self.unreadable(info)  # before a loaded model is evicted for it
        if problem is not None:
            raise CheckpointLoadError(problem)
        if self.hashing:
            self.registry.ensure_hash(info)
        started = time.perf_counter()
        self._evict(keep=max(0, self.effective_limit - 1))
        model = load_checkpoint(
            info.path, self.plan.load_device, self.plan.load_dtype, self.families, modules
        )
        applied = prepare_pipeline(model.pipe, self.plan, model.family.medvram_sdxl)
        log.debug("%s: %s", info.title, ", ".join(applied))
        model.pipe.set_progress_bar_config(disable=True)
        self.last_load_seconds = time.perf_counter() - started
        log.info("Loaded %s (%s) in %.1fs", info.title, model.spec.label, self.last_load_seconds)
        model.variant_mark = flux_variant(info.path)
        with self._lock:
            self._loaded[info.path] = model
        return Lease(model, info)

    def _follow_mark(self, model: LoadedModel, info: CheckpointInfo) -> None:
        """A loaded checkpoint whose user has since marked (or unmarked) it as FLUX.1
        Kontext (`user_metadata.flux_variant`) takes the spec and family the mark gives;
        its weights stay, the pipeline being the same. (A folder's mark counts when it is
        loaded.)"""
        mark = flux_variant(info.path)
        if mark == model.variant_mark or info.is_folder:
            return
        spec = identify_file(info.path, self.families)
        if spec.pipeline_class == model.spec.pipeline_class:
            model.spec, model.family = spec, family_named(self.families, spec.family)
            log.info("%s: now %s (its FLUX.1 variant mark)", info.title, spec.label)
        model.variant_mark = mark

    @property
    def effective_limit(self) -> int:
        """The RAM cache size: the option, or 1 with --lowram."""
        return 1 if self.plan.lowram else max(1, self.limit)

    def unload_all(self) -> None:
        self._evict(keep=0)

    def _evict(self, keep: int) -> None:
        with self._lock:
            while len(self._loaded) > keep:
                path, _ = self._loaded.popitem(last=False)
                log.info("Unloaded %s", path.name)
        gc.collect()
        if self.plan.device == "cuda":
            import torch

            torch.cuda.empty_cache()
