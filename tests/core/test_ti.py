"""Textual inversion on the tiny SD 1.x model: a created embedding is read by our loader
with vectors from the init text; 25 steps on one image lower the loss; an interrupt keeps
a loadable file; bad names and schedules are refused."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from tests.core.test_train_lora import Setup
from webui.core.job import Job
from webui.core.job_codec import decode_params, encode
from webui.core.ti_create import EmbeddingError, create_embedding
from webui.core.ti_dataset import read_images
from webui.core.ti_params import (
    CreateEmbeddingJob,
    CreateEmbeddingParams,
    LearnSchedule,
    TrainEmbeddingJob,
    TrainEmbeddingParams,
    check_create_params,
    template_files,
    template_lines,
)
from webui.core.ti_train import (
    EmbeddingTrainer,
    TrainableEmbedding,
    read_embedding,
    train_embedding,
)
from webui.core.train_params import TrainInputError
from webui.model_manager.embeddings import EmbeddingRegistry
from webui.model_manager.registry import HashCache

STEPS = 20
DRAWS = 5


def create(setup, name: str, **changes) -> Job:
    params = replace(CreateEmbeddingParams(name, "red cat", 2), **changes)
    job = Job(kind="create_embedding", params=CreateEmbeddingJob(params, str(setup.emb_dir)),
              owner="test", options={})  # fmt: skip
    job.result = create_embedding(job, setup.models, setup.families, setup.models.resolve("tiny"))
    return job


def spec_for(setup, name: str, **changes) -> TrainEmbeddingJob:
    params = TrainEmbeddingParams(
        name, learn_rate="0.05:20, 0.02", data_root=str(setup.data / "2_cat"),
        training_width=64, training_height=64, steps=STEPS, create_image_every=0,
        save_embedding_every=10, template_filename="subject_filewords.txt",
    )  # fmt: skip
    params = replace(params, **changes)
    lines = template_lines(template_files(None)["subject_filewords.txt"])
    return TrainEmbeddingJob(params, str(setup.emb_dir / f"{name}.safetensors"), lines,
                             str(setup.root / "ti-logs"), 7)  # fmt: skip


def train(setup, name: str, stop_at: int | None = None, **changes):
    job = Job(kind="train_embedding", params=spec_for(setup, name, **changes), owner="test",
              options={})  # fmt: skip
    if stop_at is not None:
        job.progress.listeners.append(
            lambda progress: setattr(job, "interrupt_requested", progress.step >= stop_at)
        )
    return train_embedding(job, setup.models, setup.families, setup.models.resolve("tiny"))


@pytest.fixture(scope="module")
def sd1(tmp_path_factory, tiny_files):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    setup = Setup(tmp_path_factory.mktemp("ti"), tiny_files)
    setup.emb_dir = setup.root / "models" / "embeddings"
    setup.registry = EmbeddingRegistry(setup.emb_dir, HashCache(setup.root / "h.json"))
    setup.flags_before = _flags(setup.models.acquire(setup.models.resolve("tiny")).pipe)
    create(setup, "tiemb")
    setup.initial = read_embedding(setup.emb_dir / "tiemb.safetensors")[0]
    setup.result = train(setup, "tiemb")
    yield setup
    torch.set_num_threads(threads)


def test_a_created_embedding_is_read_by_the_loader_with_the_init_text_vectors(sd1):
    create(sd1, "fresh")
    file = next(f for f in sd1.registry.refresh() if f.name == "fresh")
    emb = sd1.registry.load(file)
    pipe = sd1.models.acquire(sd1.models.resolve("tiny")).pipe
    ids = pipe.tokenizer("red cat", add_special_tokens=False)["input_ids"]
    expected = pipe.text_encoder.get_input_embeddings().weight[ids].detach()
    assert emb.vector_count == 2 and emb.step == 0
    assert torch.equal(emb.vectors[""], expected)
    with safe_open(str(file.path), "pt") as f:
        assert list(f.keys()) == ["emb_params"]
        assert f.metadata()["name"] == "fresh" and f.metadata()["sd_checkpoint_name"] == "tiny"


def test_an_existing_name_is_refused_unless_overwriting(sd1):
    with pytest.raises(EmbeddingError, match="already exists"):
        create(sd1, "tiemb")
    create(sd1, "other")
    create(sd1, "other", overwrite_old=True, init_text="")
    emb = sd1.registry.load(next(f for f in sd1.registry.refresh() if f.name == "other"))
    assert not emb.vectors[""].any()  # an empty init text: zeros, as in A1111


def fixed_draw_losses(setup, vectors) -> list[float]:
    """The training loss of the first steps' draws (noise, timestep, prompt) with `vectors`:
    on the tiny model the timestep changes the loss far more than the embedding does, so
    losses are compared on the same draws."""
    lease = setup.models.acquire(setup.models.resolve("tiny"))
    job = Job(kind="train_embedding", params=None, owner="test", options={})
    images = read_images(setup.data / "2_cat", 64, 64, False, False)
    trainer = EmbeddingTrainer(job, spec_for(setup, "tiemb"), lease,
                               setup.families.of(lease.spec),
                               TrainableEmbedding("tiemb", vectors), images)  # fmt: skip
    trainer._encode_latents()
    with torch.no_grad():
        return [float(trainer._loss([0], step * 1009)) for step in range(DRAWS)]


def test_training_lowers_the_loss_and_writes_the_step(sd1):
    losses = [loss for _, loss in sd1.result.log.losses]
    assert len(losses) == STEPS and sd1.result.steps == STEPS
    assert losses[0] == pytest.approx(fixed_draw_losses(sd1, sd1.initial)[0], rel=1e-5)
    trained = read_embedding(sd1.emb_dir / "tiemb.safetensors")[0]
    before, after = fixed_draw_losses(sd1, sd1.initial), fixed_draw_losses(sd1, trained)
    assert np.mean(after) < np.mean(before)
    assert sum(a < b for a, b in zip(after, before, strict=True)) >= DRAWS - 1
    emb = sd1.registry.load(next(f for f in sd1.registry.refresh() if f.name == "tiemb"))
    assert emb.step == STEPS and emb.checkpoint_name == "tiny"
    copies = sorted(p.name for p in (sd1.root / "ti-logs").rglob("*.safetensors"))
    assert copies == ["tiemb-10.safetensors", "tiemb-20.safetensors"]
    assert read_embedding(next((sd1.root / "ti-logs").rglob("tiemb-10.*")))[1] == 10
    assert next((sd1.root / "ti-logs").rglob("textual_inversion_loss.csv")).is_file()


def test_training_goes_on_from_the_files_step_and_an_interrupt_keeps_a_file(sd1):
    create(sd1, "stopped")
    result = train(sd1, "stopped", stop_at=3, create_image_every=2, save_embedding_every=2,
                   preview_from_txt2img=True, preview_prompt="stopped", preview_steps=2,
                   preview_width=64, preview_height=64, preview_sampler_name="Euler")  # fmt: skip
    assert result.steps == 3
    emb = sd1.registry.load(next(f for f in sd1.registry.refresh() if f.name == "stopped"))
    assert emb.step == 3 and torch.isfinite(emb.vectors[""]).all()
    assert [Path(p).name for p in result.log.samples] == ["stopped-2.png"]
    stored = next((sd1.root / "ti-logs").rglob("image_embeddings/stopped-2.png"))
    data = json.loads(base64.b64decode(Image.open(stored).text["sd-ti-embedding"]))
    assert data["step"] == 2 and data["name"] == "stopped"
    assert len(data["string_to_param"]["*"]["TORCHTENSOR"]) == 2  # 2 vectors


def test_learn_rate_schedules_are_a1111s():
    schedule = LearnSchedule("0.005:100, 1e-3:1000, 1e-5", 5000)
    assert [schedule.rate_at(s) for s in (0, 99, 100, 999, 1000, 4999)] == [
        0.005, 0.005, 1e-3, 1e-3, 1e-5, 1e-5]  # fmt: skip
    assert LearnSchedule("0.1:10", 100).rate_at(10) is None  # the run ends with the schedule
    for bad in ("", "fast", "0.1:x", "-1"):
        with pytest.raises(ValueError):
            LearnSchedule(bad, 100)


@pytest.mark.parametrize("name", ["", "../x", "a/b", "x" * 101])
def test_bad_names_are_refused(name):
    with pytest.raises(TrainInputError) as info:
        check_create_params(CreateEmbeddingParams(name))
    assert info.value.field == "name"


def test_the_shipped_templates_are_a1111s():
    names = set(template_files(None))
    assert {"subject.txt", "style.txt", "subject_filewords.txt", "style_filewords.txt",
            "none.txt"} <= names  # fmt: skip
    assert all("[name]" in line for line in template_lines(template_files(None)["style.txt"]))


def test_the_model_is_given_back_as_it_was(sd1):
    pipe = sd1.models.acquire(sd1.models.resolve("tiny")).pipe
    assert sd1.flags_before == _flags(pipe)


def _flags(pipe) -> list[bool]:
    modules = (pipe.unet, pipe.vae, pipe.text_encoder)
    return [q.requires_grad for m in modules for q in m.parameters()] + [
        m.training for m in modules
    ]


def test_both_jobs_round_trip_through_the_job_store(tmp_path):
    create_spec = CreateEmbeddingJob(CreateEmbeddingParams("x", "a cat", 3, True), "/m/emb")
    train_spec = TrainEmbeddingJob(TrainEmbeddingParams("x", data_root="/d"), "/m/emb/x.safetensors",
                                   ("a [name]", "b [filewords]"), "/d/log", 5)  # fmt: skip
    assert decode_params("create_embedding", *encode(create_spec)) == create_spec
    assert decode_params("train_embedding", *encode(train_spec)) == train_spec
    job = Job(kind="train_embedding", params=train_spec, owner="test", options={})
    assert job.prompt == "x"  # the queue panel lists the embedding's name


def test_an_sdxl_embedding_has_clip_l_and_clip_g(tmp_path, tiny_files):
    setup = Setup(tmp_path, tiny_files, "sdxl")
    setup.emb_dir = tmp_path / "models" / "embeddings"
    create(setup, "xl", num_vectors_per_token=3)
    with safe_open(str(setup.emb_dir / "xl.safetensors"), "pt") as f:
        shapes = {key: tuple(f.get_tensor(key).shape) for key in f.keys()}  # noqa: SIM118
    pipe = setup.models.acquire(setup.models.resolve("tiny")).pipe
    widths = (pipe.text_encoder.config.hidden_size, pipe.text_encoder_2.config.hidden_size)
    assert shapes == {"clip_l": (3, widths[0]), "clip_g": (3, widths[1])}
