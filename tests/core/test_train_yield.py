"""Jobs between training steps on the tiny SD 1.x model, through the real queue and worker:
a LoRA (and an embedding) trained with jobs in between ends with the same weights as one
trained alone; the jobs in between give the same pictures as with no training at all; a
job on another checkpoint or using the network being trained waits for the end; the model
is put back exactly (adapter, train mode, gradients, checkpointing, RNG)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file

from tests.core.test_ti import create, spec_for
from tests.core.test_train_lora import Setup
from webui.core.extra_networks import Networks
from webui.core.job import DONE, Job
from webui.core.jobs import JobQueue
from webui.core.params import Txt2ImgParams
from webui.core.prompts import LoraRequest
from webui.core.ti_train import read_embedding, train_embedding
from webui.core.train_lora import run_lora_training
from webui.core.train_lora_io import add_network, remove_network
from webui.core.train_params import KIND as TRAIN_KIND
from webui.core.train_params import LoraTrainJob
from webui.core.train_yield import KEY, generation_state
from webui.core.worker import make_runner
from webui.imaging.store import OutputStore
from webui.model_manager.embeddings import EmbeddingRegistry
from webui.model_manager.lora import LoraManager
from webui.model_manager.network_files import AddnetHashCache
from webui.model_manager.registry import HashCache
from webui.options import Options

STEPS = 4


def picture(prompt: str, **changes) -> Txt2ImgParams:
    return Txt2ImgParams(prompt=prompt, steps=2, width=64, height=64, seed=3,
                         **changes).validated()  # fmt: skip


def pixels(job: Job) -> np.ndarray:
    assert job.state == DONE, job.error
    return np.asarray(job.result.images[0].image, dtype=np.int16)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_files):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    setup = Setup(tmp_path_factory.mktemp("yield"), tiny_files)
    folder = setup.root / "models" / "Stable-diffusion"
    shutil.copy(folder / "tiny.safetensors", folder / "other.safetensors")
    setup.models.refresh()
    setup.emb_dir = setup.root / "models" / "embeddings"
    hashes = HashCache(setup.root / "hashes-net.json")
    setup.lora_dir.mkdir(parents=True)
    networks = Networks(loras=LoraManager(setup.lora_dir, hashes, AddnetHashCache(setup.root / "a.json")),
                        embeddings=EmbeddingRegistry(setup.emb_dir, hashes))  # fmt: skip
    options = Options()
    options.set("sd_model_checkpoint", "tiny")
    options.set("sd_checkpoints_limit", 2)
    worker = make_runner(setup.models, OutputStore(setup.root / "outputs"), options, networks,
                         families=setup.families)  # fmt: skip
    setup.networks = networks
    setup.new_queue = lambda: JobQueue(worker, options_snapshot=options.as_dict)
    # a learning rate at which one step moves the adapter enough to show in a picture
    setup.lora_params = setup.params(max_train_steps=STEPS, gradient_checkpointing=True,
                                     unet_lr=2e-2)  # fmt: skip
    # the reference: trained alone (a job never queued cannot yield)
    setup.reference = run_lora_training(setup.job(replace(setup.lora_params, output_name="ref")),
                                        setup.models, setup.families)  # fmt: skip
    networks.loras.refresh()
    yield setup
    torch.set_num_threads(threads)


def run(world, *jobs: tuple) -> list[Job]:
    """Submitted in one go before the queue starts (the first runs first), run to the end."""
    queue = world.new_queue()
    made = [queue.submit(kind, params, owner, options=options)
            for kind, params, owner, options in jobs]  # fmt: skip
    queue.start()
    try:
        for job in made:
            assert queue.wait(job, 300)
    finally:
        queue.stop()
    return made


def test_lora_training_with_jobs_between_steps(world):
    on = {KEY: True}
    spec = LoraTrainJob(replace(world.lora_params, output_name="shared"), str(world.lora_dir),
                        str(world.root / "training"), world.lora_params.seed)  # fmt: skip
    plain, with_lora = picture("a red cat"), picture("a red cat <lora:ref:0.8>")
    train, x, y, elsewhere, trained = run(
        world,
        (TRAIN_KIND, spec, "trainer", on),
        ("txt2img", plain, "u1", None),
        ("txt2img", with_lora, "u1", None),
        ("txt2img", picture("a red cat", checkpoint="other"), "u2", None),
        ("txt2img", picture("a red cat <lora:shared:1>"), "u2", None),
    )
    assert train.state == DONE, train.error
    # x and y ran between the steps, each a normal job with its file; the others waited
    for job in (x, y):
        assert train.started_at < job.started_at < job.finished_at < train.finished_at
        assert job.worker == train.worker and Path(job.saved[0]).is_file()
    for job in (elsewhere, trained):
        assert job.state == DONE and job.started_at > train.finished_at
    assert "Lora hashes" not in x.result.images[0].infotext
    assert "ref" in y.result.images[0].infotext
    # the same weights (and losses) as the run with no job in between
    assert train.result.log.losses == world.reference.log.losses
    shared, ref = (load_file(str(world.lora_dir / f"{n}.safetensors")) for n in ("shared", "ref"))
    assert shared.keys() == ref.keys()
    for key, tensor in ref.items():
        assert torch.equal(shared[key], tensor), key
    # the jobs in between give the pictures they give with no training running
    alone_x, alone_y = run(world, ("txt2img", plain, "u1", None),
                           ("txt2img", with_lora, "u1", None))  # fmt: skip
    assert np.array_equal(pixels(x), pixels(alone_x))  # the training adapter never leaks
    assert np.array_equal(pixels(y), pixels(alone_y))
    assert x.result.images[0].infotext == alone_x.result.images[0].infotext
    world.plain_picture = pixels(alone_x)


def test_embedding_training_with_jobs_between_steps(world):
    create(world, "tiemb")
    path = world.emb_dir / "tiemb.safetensors"
    fresh = path.read_bytes()
    spec = spec_for(world, "tiemb", steps=STEPS, save_embedding_every=0)
    alone = Job(kind="train_embedding", params=spec, owner="test", options={})
    alone_result = train_embedding(alone, world.models, world.families,
                                   world.models.resolve("tiny"))  # fmt: skip
    reference = {key: v.clone() for key, v in read_embedding(path)[0].items()}  # not mmapped
    copy = path.with_name("fresh.tmp")
    copy.write_bytes(fresh)
    copy.replace(path)  # the same start for the run with jobs in between
    train, x, uses = run(
        world,
        ("train_embedding", spec, "trainer", {KEY: True}),
        ("txt2img", picture("a red cat"), "u1", None),
        ("txt2img", picture("a red cat, tiemb"), "u2", None),
    )
    assert train.state == DONE, train.error
    assert train.started_at < x.started_at < x.finished_at < train.finished_at
    assert uses.state == DONE and uses.started_at > train.finished_at  # waits for the file
    assert train.result.log.losses == alone_result.log.losses
    trained = read_embedding(path)[0]
    for key, vectors in reference.items():
        assert torch.equal(trained[key], vectors), key
    assert np.array_equal(pixels(x), world.plain_picture)


def model_flags(pipe) -> dict:
    """Everything generation_state changes, by module and parameter name."""
    flags: dict = {}
    for part in ("unet", "text_encoder", "vae"):
        for name, module in getattr(pipe, part).named_modules():
            flags[f"{part}.{name}.training"] = module.training
            if isinstance(module, BaseTunerLayer):
                flags[f"{part}.{name}.adapters"] = (list(module.active_adapters),
                                                    module.disable_adapters)  # fmt: skip
            if hasattr(module, "gradient_checkpointing"):
                flags[f"{part}.{name}.checkpointing"] = module.gradient_checkpointing
        for name, param in getattr(pipe, part).named_parameters():
            flags[f"{part}.{name}.grad"] = param.requires_grad
    return flags


def test_the_model_is_put_back_exactly_after_a_job_with_its_own_lora(world):
    lease = world.models.acquire(world.models.resolve("tiny"))
    pipe, family = lease.pipe, world.families.of(lease.spec)
    params = add_network(pipe, world.lora_params)
    pipe.unet.enable_gradient_checkpointing()
    pipe.unet.train()
    try:
        before, rng = model_flags(pipe), torch.get_rng_state()
        assert pipe.unet.is_gradient_checkpointing and any(p.requires_grad for p in params)
        with generation_state([pipe.unet, pipe.vae, pipe.text_encoder]):
            assert not torch.is_grad_enabled() and not pipe.unet.is_gradient_checkpointing
            assert not any(m.training for m in pipe.unet.modules())
            layers = [m for m in pipe.unet.modules() if isinstance(m, BaseTunerLayer)]
            assert layers and all(m.disable_adapters for m in layers)
            loras = world.networks.loras
            with loras.applied(pipe, [LoraRequest("ref", 0.8, 0.8)], load=family.load_lora):
                torch.manual_seed(1234)  # a job draws from the global RNG
            assert not any(p.requires_grad for p in params)
        after = model_flags(pipe)
        assert {key: after[key] for key in before} == before
        assert not any(after[key] for key in after.keys() - before.keys() if key.endswith(".grad"))
        assert torch.equal(torch.get_rng_state(), rng)
    finally:
        remove_network(pipe)
    assert not any(p.requires_grad for p in pipe.unet.parameters())
