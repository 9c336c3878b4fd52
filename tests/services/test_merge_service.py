"""Merges through the merge service and the job queue: checks before queueing, the job on
the worker, the checkpoint list after it, and a LoRA merge against a LoRA at load time."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.tiny_networks import write_kohya_lora
from webui.context import build_context
from webui.core.families import SD1, default_families
from webui.core.prompts import LoraRequest
from webui.model_manager.loader import load_checkpoint
from webui.model_manager.merge_params import CheckpointMergeParams, LoraMergeParams
from webui.model_manager.tiny import build_tiny_pipeline, save_tiny_checkpoint
from webui.services.errors import RequestError
from webui.services.merge import MergeService
from webui.settings import parse_flags

UNET_LAYER = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
TE_LAYER = "layers.0.self_attn.q_proj"  # under text_model (transformers 4) or not (5)


def merge_data_dir(data: Path, tiny_files) -> Path:
    """A data folder with checkpoints a, b (SD 1.x), xl (SDXL) and the LoRA kohya; returns
    its checkpoint folder."""
    ckpt = data / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    shutil.copy(tiny_files["sd1"], ckpt / "a.safetensors")
    save_tiny_checkpoint(ckpt / "b.safetensors", "sd1", seed=1)
    shutil.copy(tiny_files["sdxl"], ckpt / "xl.safetensors")
    (data / "models" / "Lora").mkdir(parents=True)
    write_kohya_lora(data / "models" / "Lora" / "kohya.safetensors", build_tiny_pipeline("sd1"))
    return ckpt


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, tiny_files):
    data = tmp_path_factory.mktemp("merge-data")
    merge_data_dir(data, tiny_files)
    context = build_context(parse_flags(["--data-dir", str(data), "--no-download-sd-model"]))
    yield context
    context.close()


def module(model, suffix: str) -> torch.nn.Module:
    return next(m for name, m in model.named_modules() if name.endswith(suffix))


def finished(job):
    assert job.done.wait(300), "merge did not finish"
    assert job.state == "done", job.error
    return job.result


def test_merge_job_writes_the_file_and_refreshes_the_list(ctx):
    service = MergeService.of(ctx)
    job = service.submit_merge(CheckpointMergeParams("a", "b", custom_name="ab"), owner="t")
    assert job.kind == "merge" and job.prompt == "Merge (Weighted sum): a, b"
    result = finished(job)
    assert result.path.endswith("ab.safetensors") and "Checkpoint saved to" in result.message
    assert result.title in [info.title for info in ctx.models.checkpoints()]
    with pytest.raises(RequestError) as taken:
        service.submit_merge(CheckpointMergeParams("a", "b", custom_name="ab"), owner="t")
    assert taken.value.loc == ("custom_name",)


def test_overwriting_a_loaded_checkpoint_unloads_it(ctx):
    service = MergeService.of(ctx)
    first = finished(service.submit_merge(CheckpointMergeParams("a", "b", custom_name="ow"), "t"))
    ctx.models.acquire(ctx.models.resolve("ow"))
    assert Path(first.path) in ctx.models.loaded_paths()
    again = CheckpointMergeParams("a", "b", multiplier=0.9, custom_name="ow", overwrite=True)
    finished(service.submit_merge(again, owner="t"))
    assert Path(first.path) not in ctx.models.loaded_paths()  # the next job loads the new file


@pytest.mark.parametrize(
    "params, field, message",
    [(CheckpointMergeParams("a", "xl"), "secondary_model_name", "different families"),
     (CheckpointMergeParams("a", "nope"), "secondary_model_name", "not found: nope"),
     (CheckpointMergeParams("a", "b", multiplier=2.0), "multiplier", "between 0 and 1"),
     (CheckpointMergeParams("a", "b", bake_in_vae="missing.pt"), "bake_in_vae", "not found"),
     (LoraMergeParams("a", (("absent", 1.0),)), "loras", "LoRA not found: absent")],
)  # fmt: skip
def test_refused_before_queueing_with_the_field(ctx, params, field, message):
    service = MergeService.of(ctx)
    submit = service.submit_lora_merge if isinstance(params, LoraMergeParams) else service.submit_merge  # fmt: skip
    with pytest.raises(RequestError) as info:
        submit(params, owner="t")
    assert info.value.loc == (field,) and message in info.value.message


def test_lora_merge_equals_the_lora_applied_at_load_time(ctx):
    job = MergeService.of(ctx).submit_lora_merge(
        LoraMergeParams("a", (("kohya", 0.7),), custom_name="a-kohya"), owner="t"
    )
    merged_path = finished(job).path
    families = default_families()
    merged = load_checkpoint(Path(merged_path), "cpu", torch.float32, families).pipe
    base = load_checkpoint(ctx.models.resolve("a").path, "cpu", torch.float32, families).pipe
    gen = torch.Generator().manual_seed(0)
    x_unet, x_te = torch.randn(2, 32, generator=gen), torch.randn(2, 32, generator=gen)
    unet_before = base.unet.get_submodule(UNET_LAYER)(x_unet)
    request = LoraRequest("kohya", 0.7, 0.7)
    with torch.no_grad(), ctx.networks.loras.applied(base, [request], load=SD1.load_lora):
        unet_lora = base.unet.get_submodule(UNET_LAYER)(x_unet)
        te_lora = module(base.text_encoder, TE_LAYER)(x_te)
    with torch.no_grad():
        unet_merged = merged.unet.get_submodule(UNET_LAYER)(x_unet)
        te_merged = module(merged.text_encoder, TE_LAYER)(x_te)
    assert not torch.allclose(unet_lora, unet_before, atol=1e-4)  # the LoRA does something
    torch.testing.assert_close(unet_merged, unet_lora, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(te_merged, te_lora, rtol=1e-5, atol=1e-5)
