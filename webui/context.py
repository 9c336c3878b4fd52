"""AppContext: the one object that holds the running program's parts.

Built once by `webui.app.create_app`; API routes get it through a dependency and UI
builders take it as an argument. There are no module-level singletons.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .core.jobs import JobQueue
from .core.worker import make_runner
from .imaging.store import OutputStore
from .model_manager.manager import ModelManager
from .model_manager.memory import MemoryPlan, plan_memory
from .model_manager.registry import CheckpointRegistry, HashCache
from .settings import Flags, Options

log = logging.getLogger(__name__)


@dataclass
class AppContext:
    flags: Flags
    options: Options
    memory: MemoryPlan
    models: ModelManager
    jobs: JobQueue
    store: OutputStore

    def close(self) -> None:
        self.jobs.stop()
        self.models.unload_all()


def build_context(flags: Flags) -> AppContext:
    options = Options.load(flags.config_path)
    memory = plan_memory(
        use_cpu_all=flags.cpu_only,
        no_half=flags.no_half,
        precision=flags.precision,
        xformers=flags.xformers,
        split_attention=flags.opt_split_attention,
    )
    flags.ckpt_dir.mkdir(parents=True, exist_ok=True)  # shows users where checkpoints go
    extra = [Path(flags.ckpt)] if flags.ckpt else []
    registry = CheckpointRegistry(flags.ckpt_dir, HashCache(flags.cache_path), extra)
    models = ModelManager(registry, memory, hashing=not flags.no_hashing)
    models.limit = int(options.get("sd_checkpoints_limit"))
    store = OutputStore(flags.outputs_dir)
    jobs = JobQueue(make_runner(models, store, options))
    jobs.start()
    return AppContext(flags, options, memory, models, jobs, store)
