"""The run context: everything one job runs with, handed explicitly through core.

The worker (`webui.core.worker`) builds one context per job and passes it down: every
generation function takes `(run: RunContext, params)`, the Upscale tab's job a
`JobContext`. There is no module-level, context-variable or thread-local per-job state:
what a function may use is in its arguments.

- `JobContext`: what every job kind has: who it is (`JobInfo`, also what extension hooks
  are told), its `Progress` (whose listeners publish job events and call extensions'
  `on_step`), the cancel token (`should_stop()`: interrupt or skip), the upscalers and
  the face restorers.
- `RunContext`: a generation with a leased checkpoint: the lease and its model family
  (`webui.core.families`: what core asks instead of testing names), the job's networks
  (embeddings, LoRA and VAE infotext), its memory settings and notes (`MemoryRun`), its
  sampler-parameter options (`SamplerDefaults`: eta, sigma churn, NGMS...), the
  live-preview interval and method (and the small decoders' files, `approx`), the extra noise of img2img and hires. fix, and `save`
  (None when the job saves nothing), the other checkpoints it may lease (the refiner, the
  hires. fix one: `webui.core.checkpoints`) and the refiner's aesthetic scores.
- `RunHooks`: what the layer above the worker (the extension runner) attaches to one job:
  listeners called, in the worker, for every image the job writes (`SavedImage`).

This module must never import torch, diffusers or a UI library: the extension API
(`webui.ext.api`) re-exports `JobInfo` and `SavedImage` from here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .jobs import Job, Progress
from .sampler_params import Ngms, SamplerDefaults, SamplerRun, ngms, sampler_run

if TYPE_CHECKING:
    from PIL import Image

    from ..imaging.face_restoration import FaceRestorerCache
    from ..imaging.upscalers import UpscalerCache
    from ..model_manager.manager import Lease
    from .checkpoints import JobCheckpoints
    from .controlnet import JobControl
    from .extra_networks import ActiveNetworks
    from .families.base import Family

DEFAULT_TILE_FROM = 1536  # px per side (of width x height): 2048² tiles, 1024² does not
DEFAULT_SLICE_FROM = 1024


# memory notes written to the infotext but not shown as warnings; "UNet precision" is
# model_manager.cpu_precision.INFOTEXT_FIELD (a test keeps them equal)
INFOTEXT_ONLY_NOTES = frozenset({"UNet precision"})


@dataclass(frozen=True)
class JobInfo:
    """What a hook learns about the job it runs in."""

    id: str
    kind: str  # txt2img, img2img, extras
    owner: str
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, job: Job) -> JobInfo:
        return cls(job.id, job.kind, job.owner, job.options)


@dataclass(frozen=True)
class SavedImage:
    """An image the output store has written (generation images and grids)."""

    job: JobInfo | None
    path: Path
    image: Any  # PIL image
    infotext: str
    seed: int | None
    kind: str
    grid: bool = False


SavedListener = Callable[[SavedImage], None]


@dataclass(frozen=True)
class RunHooks:
    """Listeners the layer above the worker attaches to one job (run in the worker)."""

    on_saved: tuple[SavedListener, ...] = ()

    def saved(self, image: SavedImage) -> None:
        for listener in self.on_saved:
            listener(image)


NO_HOOKS = RunHooks()


class CancelToken(Protocol):
    """Asked every sampling step and between batches: interrupt, or skip this image."""

    def should_stop(self) -> bool: ...


SaveFn = Callable[["Image.Image", int, str], "str | None"]  # (image, seed, infotext) -> path


@dataclass
class MemoryRun:
    """One job's memory settings, and the notes (infotext fields) its decoding added."""

    tile_from: int = DEFAULT_TILE_FROM  # 0: never tile
    slice_from: int = DEFAULT_SLICE_FROM  # 0: never slice
    low_memory: bool = False  # the "retry with lower memory" run
    token_merging_ratio: float = 0.0  # tomesd, 0: off
    notes: dict[str, str] = field(default_factory=dict)
    draft_vae: Any = None  # TAESD decodes instead of the VAE (sd_vae_decode_method, previews.py)
    draft_encoder: Any = None  # TAESD encodes instead of the VAE (sd_vae_encode_method)
    deepcache_interval: int = 0  # DeepCache (webui.core.speed), 0 or 1: off
    deepcache_branch: int = 0
    first_block_cache_threshold: float = 0.0  # transformers (webui.core.speed), 0: off
    taylorseer_interval: int = 0  # transformers, 0 or 1: off

    @classmethod
    def from_options(cls, get: Callable[[str], Any]) -> MemoryRun:
        """From an option getter (`options.get` or a job's snapshot)."""
        return cls(
            tile_from=int(get("vae_tiling_threshold")),
            slice_from=int(get("vae_slicing_threshold")),
            token_merging_ratio=float(get("token_merging_ratio")),
            deepcache_interval=int(get("deepcache_interval")),
            deepcache_branch=int(get("deepcache_branch")),
            first_block_cache_threshold=float(get("first_block_cache_threshold")),
            taylorseer_interval=int(get("taylorseer_interval")),
        )

    def lower(self) -> MemoryRun:
        """The same settings for a low-memory retry (tiling and slicing always)."""
        return replace(self, low_memory=True, notes=dict(self.notes))

    def messages(self) -> list[str]:
        """The notes a user is warned about (a low-memory retry, a VAE fallback); fields
        that only describe the run (the CPU's UNet precision) stay in the infotext."""
        return [f"{k}: {v}" for k, v in self.notes.items() if k not in INFOTEXT_ONLY_NOTES]


@dataclass(frozen=True, kw_only=True)
class JobContext:
    """What every job kind runs with."""

    job: JobInfo
    progress: Progress
    cancel: CancelToken
    upscalers: UpscalerCache
    faces: FaceRestorerCache | None = None  # GFPGAN / CodeFormer (webui.core.faces)

    def should_stop(self) -> bool:
        return self.cancel.should_stop()


@dataclass(frozen=True, kw_only=True)
class RunContext(JobContext):
    """One generation (txt2img, img2img and their modes) with a leased checkpoint."""

    lease: Lease
    family: Family  # the leased checkpoint's model family
    networks: ActiveNetworks
    memory: MemoryRun = field(default_factory=MemoryRun)
    save: SaveFn | None = None  # None: the job saves nothing
    preview_every: int = 0  # a live preview every N steps; 0: none
    extra_noise: float = 0.0  # A1111's img2img_extra_noise (img2img and hires. fix); 0: off
    sampler_defaults: SamplerDefaults = field(default_factory=SamplerDefaults)  # job's options
    warnings: list[str] = field(default_factory=list)  # for the job's result (not infotext)
    preview_full: bool = False  # previews decoded by the VAE (A1111's "Full"), else cheap
    checkpoints: JobCheckpoints | None = None  # the refiner and hires. checkpoints' leases
    aesthetic_scores: tuple[float, float] = (6.0, 2.5)  # SDXL refiner: prompt, negative
    preview_method: str = "Approx cheap"  # show_progress_type (webui.core.previews)
    approx: Any = None  # the worker's ApproxModels: Approx NN and TAESD files
    control: JobControl | None = None  # the job's ControlNet units (webui.core.controlnet)
    # frees the big text encoders once every prompt of the job is encoded (the option
    # text_encoder_release; model_manager.text_encoder_release); None: nothing to free
    release_text_encoders: Callable[[], None] | None = None

    def sampling(self, sampler: str, params: Any) -> SamplerRun:
        """A pass's eta / sigma parameters for `sampler` (`webui.core.sampler_params`);
        values that do not apply to it become warnings of the job."""
        run = sampler_run(sampler, params, self.sampler_defaults)
        self.warnings.extend(w for w in run.warnings if w not in self.warnings)
        return run

    def warn(self, messages: list[str]) -> None:
        """Warnings for the job's result (each once): what the job asked for and did not get."""
        self.warnings.extend(w for w in messages if w not in self.warnings)

    def ngms(self, params: Any) -> Ngms:
        """The job's negative guidance minimum sigma."""
        return ngms(params, self.sampler_defaults)

    @property
    def pipe(self) -> Any:
        return self.lease.pipe

    def infotext_notes(self) -> dict[str, str]:
        """Infotext fields the job's memory handling added (a VAE upcast, a retry)."""
        return dict(self.memory.notes)
