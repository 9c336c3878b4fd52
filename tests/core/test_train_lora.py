"""LoRA training on the tiny models: the loss falls, the file loads everywhere, resume is
exact, an interrupt during the save leaves no half-written file."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from webui.core.families import SDXL, default_families
from webui.core.job import Job
from webui.core.prompts import LoraRequest
from webui.core.train_lora import TrainingError, run_lora_training
from webui.core.train_params import LoraTrainJob, LoraTrainParams
from webui.model_manager.lora import LoraManager
from webui.model_manager.manager import ModelManager
from webui.model_manager.memory import plan_memory
from webui.model_manager.network_files import AddnetHashCache
from webui.model_manager.registry import CheckpointRegistry, HashCache
from webui.model_manager.tiny import build_tiny_pipeline

STEPS = 30


def write_dataset(folder: Path, count: int = 1) -> Path:
    rng = np.random.default_rng(3)
    (folder / "2_cat").mkdir(parents=True)
    for index in range(count):
        pixels = (rng.random((64, 64, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(folder / "2_cat" / f"img{index}.png")
        (folder / "2_cat" / f"img{index}.txt").write_text("a cat, red, sitting", encoding="utf-8")
    return folder


class Setup:
    def __init__(self, root: Path, tiny_files, family: str = "sd1"):
        self.root = root
        ckpt = root / "models" / "Stable-diffusion"
        ckpt.mkdir(parents=True)
        shutil.copy(tiny_files[family], ckpt / "tiny.safetensors")
        self.families = default_families()
        registry = CheckpointRegistry(ckpt, HashCache(root / "hashes.json"))
        self.models = ModelManager(registry, plan_memory(use_cpu_all=True),
                                   families=self.families)  # fmt: skip
        self.data = write_dataset(root / "data")
        self.lora_dir = root / "models" / "Lora"

    def params(self, **changes) -> LoraTrainParams:
        base = LoraTrainParams(
            checkpoint="tiny", train_data_dir=str(self.data), output_name="mine", resolution=64,
            network_dim=4, network_alpha=4, conv_dim=2, conv_alpha=1, unet_lr=3e-3,
            text_encoder_lr=1e-4, lr_scheduler="cosine", max_train_epochs=0,
            max_train_steps=STEPS, sample_steps=1, save_every_n_epochs=5, seed=11,
        )  # fmt: skip
        return replace(base, **changes)

    def job(self, params: LoraTrainParams, stop_at: int | None = None) -> Job:
        spec = LoraTrainJob(params, str(self.lora_dir), str(self.root / "training"), params.seed)
        job = Job(kind="train_lora", params=spec, owner="test", options={})
        if stop_at is not None:

            def interrupt(progress) -> None:
                if progress.step >= stop_at:
                    job.interrupt_requested = True

            job.progress.listeners.append(interrupt)
        return job

    def train(self, params: LoraTrainParams, stop_at: int | None = None):
        return run_lora_training(self.job(params, stop_at), self.models, self.families)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's steps are small operations: one thread is as fast on an idle
    machine and much faster on a busy one (no waiting for a second core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sd1(tmp_path_factory, tiny_files):
    setup = Setup(tmp_path_factory.mktemp("train"), tiny_files)
    setup.result = setup.train(setup.params())
    return setup


def test_thirty_steps_on_one_image_lower_the_loss(sd1):
    losses = [loss for _, loss in sd1.result.log.losses]
    assert len(losses) == STEPS and sd1.result.steps == STEPS
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    saved = sorted(p.name for p in sd1.lora_dir.iterdir())
    # every 5 epochs (2 repeats, batch 1: 2 steps an epoch), the final file, previews
    assert "mine.safetensors" in saved and "mine.preview.png" in saved
    assert "mine-000005.safetensors" in saved
    assert not [name for name in saved if name.startswith(".")]  # no temporary file left


def test_the_file_is_kohya_with_ss_metadata(sd1):
    path = sd1.lora_dir / "mine.safetensors"
    with safe_open(str(path), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
        alpha = f.get_tensor("lora_unet_down_blocks_0_resnets_0_conv1.alpha")
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_") for k in keys)
    assert any(k.endswith("attn1_to_q.lora_down.weight") for k in keys)
    assert float(alpha) == 1.0  # LoCon layers get conv_alpha
    assert meta["ss_network_dim"] == "4" and meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_steps"] == str(STEPS) and meta["ss_num_train_images"] == "2"
    assert '"red": 1' in meta["ss_tag_frequency"]
    assert len(meta["sshs_model_hash"]) == 64 and meta["ss_new_sd_model_hash"]
    # the Extra Networks panel's metadata reader sees the same keys
    loras = LoraManager(sd1.lora_dir, HashCache(sd1.root / "c.json"),
                        AddnetHashCache(sd1.root / "a.json"))  # fmt: skip
    assert loras.metadata(loras.find("mine"))["ss_output_name"] == "mine"


def test_the_file_loads_in_diffusers_and_changes_the_image(sd1):
    pipe = build_tiny_pipeline("sd1")
    pipe.set_progress_bar_config(disable=True)

    def generate():
        return pipe("a cat, red", num_inference_steps=2, width=64, height=64, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images  # fmt: skip

    before = generate()
    pipe.load_lora_weights(str(sd1.lora_dir / "mine.safetensors"), adapter_name="mine")
    assert set(pipe.get_list_adapters()) == {"unet", "text_encoder"}
    assert not np.allclose(generate(), before, atol=1e-4)


def test_training_leaves_the_leased_checkpoint_as_it_was(sd1):
    lease = sd1.models.acquire(sd1.models.resolve("tiny"))
    names = [n for n, _ in lease.pipe.unet.named_modules() if "webui_training" in n]
    assert not names
    assert not any(p.requires_grad for p in lease.pipe.unet.parameters())


def test_resume_at_step_15_ends_where_the_whole_run_ends(sd1):
    params = sd1.params(output_name="halves")
    first = sd1.train(params, stop_at=15)
    assert first.steps == 15 and "Interrupted at step 15" in first.message
    second = sd1.train(replace(params, resume="halves"))
    assert second.steps == STEPS and len(second.log.losses) == STEPS
    whole = load_file(str(sd1.lora_dir / "mine.safetensors"))
    resumed = load_file(str(sd1.lora_dir / "halves.safetensors"))
    assert whole.keys() == resumed.keys()
    for key, tensor in whole.items():
        torch.testing.assert_close(resumed[key].float(), tensor.float(), atol=2e-3, rtol=1e-2)


def test_an_interrupt_during_the_save_leaves_the_previous_file(sd1, monkeypatch):
    from webui.core import train_lora_io

    path = sd1.lora_dir / "mine.safetensors"
    before = path.read_bytes()

    def half_then_abort(state, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise KeyboardInterrupt("interrupted while saving")

    monkeypatch.setattr(train_lora_io, "save_file", half_then_abort)
    with pytest.raises(KeyboardInterrupt):
        sd1.train(sd1.params(max_train_steps=1, overwrite=True, save_every_n_epochs=0))
    assert path.read_bytes() == before
    assert not [p.name for p in sd1.lora_dir.iterdir() if p.name.startswith(".")]


def test_bad_datasets_are_refused_with_a_message(sd1, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TrainingError, match="holds no images"):
        sd1.train(sd1.params(train_data_dir=str(empty)))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"not a png")
    with pytest.raises(TrainingError, match="x.png: not a readable image"):
        sd1.train(sd1.params(train_data_dir=str(tmp_path / "broken")))
    with pytest.raises(TrainingError, match="batch size"):
        sd1.train(sd1.params(train_batch_size=3))
    with pytest.raises(TrainingError, match="bitsandbytes"):
        sd1.train(sd1.params(optimizer_type="AdamW8bit"))


def test_sdxl_lora_loads_in_diffusers_and_through_our_loader(tmp_path, tiny_files):
    setup = Setup(tmp_path, tiny_files, "sdxl")
    result = setup.train(setup.params(max_train_steps=2, save_every_n_epochs=0,
                                      text_encoder_lr=1e-3, unet_lr=1e-2))  # fmt: skip
    path = Path(result.path)
    with safe_open(str(path), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert any(k.startswith("lora_unet_input_blocks_") for k in keys)  # SGM naming, as kohya
    assert any(k.startswith("lora_te2_text_model_") for k in keys)
    pipe = build_tiny_pipeline("sdxl")
    pipe.set_progress_bar_config(disable=True)

    def generate():
        return pipe("a cat", num_inference_steps=2, width=64, height=64, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images  # fmt: skip

    before = generate()
    loras = LoraManager(path.parent, HashCache(tmp_path / "c.json"),
                        AddnetHashCache(tmp_path / "a.json"))  # fmt: skip
    with loras.applied(pipe, [LoraRequest("mine", 1.0, 1.0)], load=SDXL.load_lora) as applied:
        assert not applied.warnings
        assert not np.allclose(generate(), before, atol=1e-5)
    other = build_tiny_pipeline("sdxl")
    other.load_lora_weights(str(path), adapter_name="x")
    assert set(other.get_list_adapters()) == {"unet", "text_encoder", "text_encoder_2"}
