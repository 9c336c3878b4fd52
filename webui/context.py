"""AppContext: the one object that holds the running program's parts.

Built once by `build_context` (the composition root, `webui.app.create_app`, stores it on
`app.state`); API routes get it through the `webui.api.deps.get_ctx` dependency and UI
builders take it as an argument. There are no module-level singletons.

Importing this module never imports torch: the fields whose classes do (the model
manager, the memory plan) are typed with the Protocols of `webui.services.protocols`, and
`build_context` imports the worker's parts when it is called. So the UI and the API can
name `AppContext` at run time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from .core.executors import LocalExecutor
from .core.extra_networks import Networks
from .core.image_index import ImageIndex
from .core.job_store import FILE_NAME as JOB_STORE_FILE
from .core.job_store import JobStore
from .core.jobs import JobQueue
from .core.styles import StyleDatabase
from .ext.host import ExtensionHost
from .imaging.face_restorer_list import FaceRestorerFolders
from .imaging.store import OutputStore
from .model_manager.approx_files import approx_folders
from .model_manager.catalog import ModelCatalog, kind_roots
from .model_manager.embeddings import EmbeddingRegistry
from .model_manager.fetch import Sites
from .model_manager.lora import LoraManager
from .model_manager.modules import ModuleFiles
from .model_manager.network_files import AddnetHashCache
from .model_manager.registry import CheckpointRegistry, HashCache, transformer_folders
from .model_manager.vae import VaeRegistry
from .options import Options
from .services.generation import GenerationService
from .services.image_browser import ImageBrowser
from .services.models import ModelsService
from .services.protocols import Annotators, MemoryInfo, Models
from .services.upscalers import Upscalers
from .settings import Flags

log = logging.getLogger(__name__)


class Cluster(Protocol):
    """The Ray workers (`webui.cluster.pool.RayPool`), with --ray."""

    def close(self) -> None: ...


@dataclass
class AppContext:
    flags: Flags
    options: Options
    memory: MemoryInfo  # a model_manager.memory.MemoryPlan
    models: Models  # a model_manager.manager.ModelManager
    jobs: JobQueue
    store: OutputStore
    generation: GenerationService  # every tab and API route submits through it
    upscalers: Upscalers  # the one upscaler catalog
    networks: Networks | None = None  # LoRA, embeddings, VAE, styles
    extensions: ExtensionHost | None = None  # loaded extensions and their hooks
    cluster: Cluster | None = None  # the Ray workers that run the jobs (--ray)
    job_store: JobStore | None = None  # every job in SQLite (data folder); None: memory only
    browser: ImageBrowser | None = None  # the Image Browser's index and map (jobs.sqlite3)
    model_files: ModelsService | None = None  # the Models tab: catalog, downloads, Civitai
    annotators: Annotators | None = None  # ControlNet's annotators with weights (LRU of 2)

    def close(self) -> None:
        self.jobs.stop()
        if self.cluster is not None:
            self.cluster.close()
        self.models.unload_all()
        if self.job_store is not None:
            self.job_store.close()
        if self.browser is not None:
            self.browser.index.close()
        if self.model_files is not None:
            self.model_files.close()


def build_context(flags: Flags) -> AppContext:
    from .core.families import default_families  # the worker's parts import torch
    from .core.worker import make_runner
    from .ext.runner import wrap_runner
    from .model_manager.annotator_files import annotator_folder
    from .model_manager.annotators import AnnotatorCache
    from .model_manager.manager import ModelManager
    from .model_manager.memory import plan_from_flags

    options = Options.from_flags(flags)  # --freeze-settings; path options locked on a LAN
    memory = plan_from_flags(flags)  # every memory/precision/attention flag, with notes
    flags.ckpt_dir.mkdir(parents=True, exist_ok=True)  # shows users where checkpoints go
    flags.text_encoder_dir.mkdir(parents=True, exist_ok=True)  # and FLUX's text encoders
    extra = [Path(flags.ckpt)] if flags.ckpt else []
    hashes = HashCache(flags.cache_path)
    registry = CheckpointRegistry(flags.ckpt_dir, hashes, extra,
                                  transformer_folders(flags.models_dir))  # fmt: skip
    families = default_families()  # what checkpoints can be: recognition, loading, generation
    module_dirs = (flags.vae_dir, flags.text_encoder_dir, *flags.module_dirs)
    models = ModelManager(registry, memory, families=families, hashing=not flags.no_hashing,
                          module_files=ModuleFiles(module_dirs))  # fmt: skip
    models.limit = int(options.get("sd_checkpoints_limit"))
    store = OutputStore(flags.outputs_dir)
    networks = build_networks(flags, hashes)
    extensions = ExtensionHost(flags, options, models=models, networks=networks)
    # every job is recorded; what a crash left unfinished is queued again (the queue does)
    job_store = JobStore.open(flags.data_dir / JOB_STORE_FILE)
    queue_args: dict[str, Any] = {
        "options_snapshot": options.as_dict,  # each job runs with the options it was sent under
        "limit_per_owner": lambda: options.get("queue_limit_per_user"),
        "store": job_store,
    }
    cluster = None
    # ControlNet's annotators: one cache for the worker's jobs, /controlnet/detect and 💥
    annotators = AnnotatorCache(annotator_folder(flags.controlnet_dir), str(memory.device))
    if flags.ray:  # Ray workers run the jobs, each with its own model cache
        from .cluster.pool import RayPool, checkpoint_of

        jobs = JobQueue(executors=[], checkpoint_of=partial(checkpoint_of, models), **queue_args)
        jobs.start()
        cluster = RayPool.start(flags, jobs, store)
    else:  # the worker runs jobs; the extension runner calls the hooks around and inside them
        worker = make_runner(models, store, options, networks, families=families,
                             annotators=annotators)  # fmt: skip
        local = LocalExecutor(wrap_runner(extensions, worker, store), device=str(memory.device),
                              held=partial(held_checkpoints, models))  # fmt: skip
        jobs = JobQueue(executors=[local], **queue_args)
        jobs.start()
    extensions.startup()
    upscalers = Upscalers(flags.models_dir)
    generation = GenerationService(models=models, options=options, jobs=jobs,
                                   extensions=extensions, upscalers=upscalers,
                                   checkpoint_dir=flags.ckpt_dir,
                                   detector_dir=flags.models_dir / "adetailer",
                                   faces=FaceRestorerFolders(flags.gfpgan_models_path,
                                                             flags.codeformer_models_path),
                                   approx_dirs=approx_folders(flags.models_dir),
                                   controlnet_dir=flags.controlnet_dir,
                                   clip_vision_dir=flags.models_dir / "clip_vision")  # fmt: skip
    model_files = build_model_files(flags, options, models, networks)
    return AppContext(flags, options, memory, models, jobs, store, generation, upscalers,
                      networks=networks, extensions=extensions, cluster=cluster,
                      job_store=job_store, browser=build_browser(flags, options, jobs),
                      model_files=model_files, annotators=annotators)  # fmt: skip


def build_browser(flags: Flags, options: Options, jobs: JobQueue) -> ImageBrowser:
    """The Image Browser: its tables in the job store's file, outputs/ and the folders the
    options name, the trash in the data folder, CLIP vision models in models/clip_vision."""
    (flags.models_dir / "clip_vision").mkdir(parents=True, exist_ok=True)
    index = ImageIndex(flags.data_dir / JOB_STORE_FILE)
    return ImageBrowser(index, partial(browser_folders, flags, options),
                        flags.data_dir / "trash", flags.models_dir / "clip_vision", jobs)  # fmt: skip


def browser_folders(flags: Flags, options: Options) -> list[Path]:
    """outputs/, the output folders the options choose, and the Image Browser's own."""
    named = [options.get("outdir_samples"), options.get("outdir_save")]
    named += str(options.get("image_browser_folders")).split(";")
    folders = [flags.outputs_dir]
    for text in named:
        if str(text).strip():
            folders.append(Path(str(text).strip()).expanduser())  # as the output store reads it
    return list(dict.fromkeys(folders))


def held_checkpoints(models: Any) -> list[str]:
    """The checkpoints (relative names) the model manager holds in memory now."""
    loaded = set(models.loaded_paths())
    return [i.rel for i in models.checkpoints() if i.path in loaded]


def build_model_files(flags: Flags, options: Options, models: Any, networks: Networks):
    """The Models tab's service: every model folder in the catalog (models.sqlite3 in the
    data folder), downloads refused on a LAN like extension installs."""
    roots = kind_roots(flags.models_dir, flags.ckpt_dir, flags.lora_dir,
                       flags.embeddings_dir, flags.vae_dir)  # fmt: skip
    catalog = ModelCatalog(roots, flags.data_dir / "models.sqlite3",
                           flags.data_dir / "trash" / "models")  # fmt: skip
    registries = {"checkpoint": models, "lora": networks.loras,
                  "embedding": networks.embeddings, "vae": networks.vaes}  # fmt: skip

    def sites() -> Sites:
        return Sites(huggingface=options.get("huggingface_base_url"),
                     civitai=options.get("civitai_base_url"),
                     civitai_key=options.get("civitai_api_key"),
                     hf_token=options.get("huggingface_token"))  # fmt: skip

    def changed(kind: str) -> None:  # the generation tabs list the files as they are now
        if kind in registries:
            registries[kind].refresh()

    return ModelsService(catalog, flags.data_dir / "downloads", sites=sites,
                         access_denied=lambda: flags.disable_extension_access,
                         on_change=changed)  # fmt: skip


def build_networks(flags: Flags, hashes: HashCache) -> Networks:
    """LoRA, embedding and VAE folders (scanned now, hashed on use) and styles.csv."""
    unsafe, hashing = flags.disable_safe_unpickle, not flags.no_hashing
    if unsafe:
        log.warning(
            "--disable-safe-unpickle: .pt/.ckpt/.bin LoRA, embedding and VAE files are "
            "unpickled without restriction and can run any code they hold; use only files "
            "you trust. Checkpoints still load through the restricted unpickler."
        )
    for folder in (flags.lora_dir, flags.embeddings_dir, flags.vae_dir):
        folder.mkdir(parents=True, exist_ok=True)  # shows users where the files go
    addnet = AddnetHashCache(flags.data_dir / "cache-lora.json")
    return Networks(
        loras=LoraManager(
            flags.lora_dir, hashes, addnet, allow_unsafe_pickle=unsafe, hashing=hashing
        ),
        embeddings=EmbeddingRegistry(
            flags.embeddings_dir, hashes, allow_unsafe_pickle=unsafe, hashing=hashing
        ),
        vaes=VaeRegistry(
            flags.vae_dir, flags.ckpt_dir, hashes, allow_unsafe_pickle=unsafe, hashing=hashing
        ),
        styles=StyleDatabase(flags.styles_file),
        approx=build_approx(flags),
    )


def build_approx(flags: Flags):
    """Approx NN and TAESD files (models/VAE-approx, A1111's models/VAE-taesd), loaded on use."""
    from .model_manager.vae_approx import ApproxModels

    folders = approx_folders(flags.models_dir)
    folders[0].mkdir(parents=True, exist_ok=True)  # shows users where the files go
    return ApproxModels(folders, allow_unsafe_pickle=flags.disable_safe_unpickle)
