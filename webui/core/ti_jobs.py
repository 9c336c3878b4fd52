"""The worker's entry for textual-inversion jobs: "create_embedding" and "train_embedding".

`run_ti_job` runs the job (`ti_create.create_embedding` or `ti_train.train_embedding`) on
the checkpoint the worker resolved, then refreshes the embeddings list so the new or
trained file is used by the next prompt and shows in the Extra Networks panel.

Runs on the worker thread only; never imports a UI library.
"""

from __future__ import annotations

from ..model_manager.manager import ModelManager
from .families import Families
from .job import Job
from .ti_create import CreateResult, create_embedding
from .ti_params import CREATE_KIND, TRAIN_KIND
from .ti_train import EmbeddingTrainResult, train_embedding

TI_KINDS = (CREATE_KIND, TRAIN_KIND)


def run_ti_job(
    job: Job, models: ModelManager, families: Families, info, networks
) -> CreateResult | EmbeddingTrainResult:
    registry = getattr(networks, "embeddings", None)
    try:
        if job.kind == CREATE_KIND:
            return create_embedding(job, models, families, info)
        return train_embedding(job, models, families, info)
    finally:
        if registry is not None:
            registry.refresh()
