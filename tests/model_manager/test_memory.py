"""Memory plan for every flag combination, attention backends, VAE tiling, NaN VAE, OOM.

Generation runs through the real job queue on tiny checkpoints; an out-of-memory error is
injected with a torch forward hook on the loaded UNet.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from webui.context import build_context
from webui.core.decode import MemoryRun, decode_latents, plan_decode
from webui.core.params import Txt2ImgParams
from webui.model_manager.export import export_single_file
from webui.model_manager.memory import plan_from_flags, plan_memory
from webui.model_manager.tiny import build_tiny_pipeline
from webui.settings import parse_flags

ATTENTION_FLAGS = ("xformers", "split_attention", "sdp_attention", "sdp_no_mem_attention")
OFFLOAD_FLAGS = ("medvram", "medvram_sdxl", "lowvram")
OTHER_FLAGS = ("no_half", "no_half_vae", "lowram", "upcast_sampling", "use_cpu_all")


def _combinations(names):
    for values in itertools.product((False, True), repeat=len(names)):
        yield dict(zip(names, values, strict=True))


@pytest.mark.parametrize("installed", [False, True])
def test_every_flag_combination_on_the_cpu_falls_back_with_a_message(installed):
    for flags in _combinations(ATTENTION_FLAGS + OFFLOAD_FLAGS + OTHER_FLAGS):
        plan = plan_memory(**flags, cuda_available=False, xformers_installed=installed)
        assert plan.device == "cpu" and plan.dtype == torch.float32 == plan.vae
        assert plan.offload == "none" and plan.load_device == "cpu"
        assert plan.attention in ("sdpa", "sdpa-no-mem", "sliced")
        notes = " ".join(plan.notes)
        if flags["xformers"]:
            assert "--xformers ignored" in notes and "CUDA" in notes
        if any(flags[f] for f in OFFLOAD_FLAGS):
            assert "ignored" in notes and "on the CPU" in notes
        if flags["upcast_sampling"]:
            assert "--upcast-sampling has no effect" in notes
        assert plan.half_storage == flags["lowram"]
        if flags["sdp_no_mem_attention"]:
            assert plan.attention == "sdpa-no-mem" and "only on CUDA" in notes
        elif flags["split_attention"]:
            assert plan.attention == "sliced"
        else:
            assert plan.attention == "sdpa"
        assert plan.attention in plan.description and plan.as_dict()["notes"] == list(plan.notes)


def test_every_flag_combination_with_cuda():
    for flags in _combinations(ATTENTION_FLAGS + OFFLOAD_FLAGS + ("no_half", "no_half_vae")):
        for installed, bf16 in itertools.product((False, True), repeat=2):
            plan = plan_memory(
                **flags, cuda_available=True, xformers_installed=installed, bf16_supported=bf16
            )
            assert plan.device == "cuda"
            if flags["xformers"] and installed:
                assert plan.attention == "xformers"
            elif flags["xformers"]:
                assert "not installed" in " ".join(plan.notes) and plan.attention != "xformers"
            if flags["no_half"]:
                assert plan.dtype == plan.vae == torch.float32
            else:
                assert plan.dtype == torch.float16
                expected_vae = (
                    torch.float32
                    if flags["no_half_vae"]
                    else (torch.bfloat16 if bf16 else torch.float16)
                )
                assert plan.vae == expected_vae
            if flags["lowvram"]:
                assert plan.offload == "sequential" and plan.load_device == "cpu"
            elif flags["medvram"]:
                assert plan.offload == "model" and plan.offload_for(medvram_sdxl=False) == "model"
            elif flags["medvram_sdxl"]:
                assert plan.offload_for(medvram_sdxl=True) == "model"
                assert plan.offload_for(medvram_sdxl=False) == "none"
            else:
                assert plan.offload == "none" and plan.load_device == "cuda"


def test_flags_reach_the_plan():
    flags = parse_flags(["--opt-sdp-no-mem-attention", "--lowram", "--medvram", "--compile"])
    plan = plan_from_flags(flags, cuda_available=False)
    assert plan.attention == "sdpa-no-mem" and plan.lowram and plan.half_storage
    assert plan.compile and "--medvram" in plan.flags
    up = plan_memory(upcast_sampling=True, cuda_available=True, bf16_supported=False)
    assert up.upcast_sampling and "upcast sampling" in up.description


def test_decode_plan_thresholds():
    latents = torch.zeros(2, 4, 128, 128)  # 2 x 1024² images
    assert plan_decode(8, latents, MemoryRun(tile_from=1536, slice_from=1024)) == (False, True)
    assert plan_decode(8, latents, MemoryRun(tile_from=1024, slice_from=0)) == (True, False)
    assert plan_decode(8, latents[:1], MemoryRun(tile_from=0, slice_from=1)) == (False, False)
    assert plan_decode(8, latents[:1], MemoryRun(tile_from=0, low_memory=True)) == (True, False)


# --- generation through the queue --------------------------------------------------------


def _context(data_dir, *flags, **options):
    args = ["--data-dir", str(data_dir), "--no-download-sd-model", "--no-hashing", *flags]
    ctx = build_context(parse_flags(args))
    for key, value in options.items():
        ctx.options.set(key, value)
    return ctx


def _generate(ctx, **overrides):
    base = dict(prompt="a red cube", steps=2, width=64, height=64, seed=7, save_images=False)
    params = Txt2ImgParams(**{**base, **overrides}).validated()
    job = ctx.jobs.submit("txt2img", params, owner="test")
    assert job.done.wait(300)
    return job


def _pixels(job) -> np.ndarray:
    assert job.state == "done", job.error
    return np.stack([np.asarray(g.image, dtype=np.int16) for g in job.result.images])


def _image_of(data_dir, *flags, **overrides) -> np.ndarray:
    ctx = _context(data_dir, *flags)
    try:
        return _pixels(_generate(ctx, **overrides))
    finally:
        ctx.close()


def test_sliced_and_no_mem_attention_give_the_sdpa_image(data_dir):
    sdpa = _image_of(data_dir)
    for flag in ("--opt-split-attention", "--opt-sdp-no-mem-attention"):
        other = _image_of(data_dir, flag)
        assert np.abs(other - sdpa).max() <= 2, flag


def test_vae_tiling_on_and_off_within_tolerance():
    pipe = build_tiny_pipeline("sd1", seed=3)
    latents = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(1))
    whole = np.asarray(decode_latents(pipe, latents, memory=MemoryRun(tile_from=0))[0], np.int16)
    tiled = np.asarray(decode_latents(pipe, latents, memory=MemoryRun(tile_from=64))[0], np.int16)
    difference = np.abs(whole - tiled)
    assert difference.max() > 0  # tiles really were decoded on their own
    assert difference.mean() < 8 and np.percentile(difference, 99) < 48
    assert not pipe.vae.use_tiling  # the pipeline is left as it was


def test_lowram_keeps_fp16_weights_and_gives_the_same_image(tmp_path):
    ckpt = tmp_path / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    export_single_file(build_tiny_pipeline("sd1"), ckpt / "half.safetensors", torch.float16)
    full = _image_of(tmp_path)
    ctx = _context(tmp_path, "--lowram")
    try:
        half = _pixels(_generate(ctx))
        pipe = ctx.models.acquire(ctx.models.resolve(None)).pipe
        assert pipe.unet.conv_in.weight.dtype == torch.float16
        assert pipe.unet.dtype == torch.float32  # what it computes in
        assert ctx.models.effective_limit == 1
    finally:
        ctx.close()
    assert np.abs(half - full).max() <= 1


def test_nan_in_half_precision_vae_is_retried_in_fp32(tmp_path):
    """A VAE whose activations overflow fp16 (but not fp32) decodes black without the retry."""
    pipe = build_tiny_pipeline("sd1")
    with torch.no_grad():
        pipe.vae.decoder.conv_in.weight.mul_(1e5)  # ~1e5..1e6 activations: inf in fp16
    ckpt = tmp_path / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    export_single_file(pipe, ckpt / "nan-vae.safetensors")
    reference = _image_of(tmp_path)  # fp32 VAE
    ctx = _context(tmp_path)
    ctx.models.plan = dataclasses.replace(ctx.models.plan, vae_dtype=torch.float16)
    try:
        job = _generate(ctx)
        pixels = _pixels(job)
        (image,) = job.result.images
        assert "VAE precision: float32 retry (NaN in float16)" in image.infotext
        assert any("NaN" in w for w in job.result.warnings)
        assert pixels.max() > 0 and np.abs(pixels - reference).max() <= 1  # not black
        assert ctx.models.acquire(ctx.models.resolve(None)).pipe.vae.dtype == torch.float32
        again = _generate(ctx)  # the VAE stays fp32: no second retry, no note
        assert "VAE precision" not in again.result.images[0].infotext
    finally:
        ctx.close()


def _inject_oom(ctx, times: int):
    """Make the loaded UNet raise torch's out-of-memory error `times` times."""
    pipe = ctx.models.acquire(ctx.models.resolve(None)).pipe
    left = [times]

    def hook(module, args):
        if left[0] > 0:
            left[0] -= 1
            raise torch.OutOfMemoryError("CPU out of memory. Tried to allocate 9.00 GiB")

    return pipe.unet.register_forward_pre_hook(hook)


def test_out_of_memory_fails_clearly_then_the_next_job_succeeds(data_dir):
    ctx = _context(data_dir, oom_retry_lower_memory=False)
    try:
        expected = _pixels(_generate(ctx))
        handle = _inject_oom(ctx, times=1)
        failed = _generate(ctx)
        assert failed.state == "failed"
        assert failed.error.startswith("Out of system RAM while generating 64x64")
        assert "released" in failed.error and "Retry with lower memory" in failed.error
        assert np.array_equal(_pixels(_generate(ctx)), expected)
        handle.remove()
    finally:
        ctx.close()


def test_out_of_memory_retry_with_lower_memory(data_dir):
    ctx = _context(data_dir)  # the option is on by default
    try:
        expected = _pixels(_generate(ctx))
        handle = _inject_oom(ctx, times=1)
        job = _generate(ctx)
        assert "Low-memory retry: VAE tiling and slicing" in job.result.images[0].infotext
        assert np.array_equal(_pixels(job), expected)  # 64² is below the tile size anyway
        handle.remove()
        handle = _inject_oom(ctx, times=2)  # the retry runs out too: a clear failure
        failed = _generate(ctx)
        assert failed.state == "failed" and "ran out too" in failed.error
        handle.remove()
        assert _generate(ctx).state == "done"
    finally:
        ctx.close()


def test_plan_is_shown_by_the_api_and_the_footer(data_dir):
    from fastapi.testclient import TestClient

    from webui.app import create_app
    from webui.ui.blocks import footer_text

    flags = parse_flags(["--data-dir", str(data_dir), "--nowebui", "--opt-split-attention",
                         "--medvram", "--no-download-sd-model"])  # fmt: skip
    ctx = build_context(flags)
    try:
        with TestClient(create_app(flags, ctx)) as client:
            plan = client.get("/sdapi/v1/memory").json()["memory_plan"]
        assert plan["attention"] == "sliced" and plan["device"] == "cpu"
        assert any("--medvram" in note for note in plan["notes"])
        assert "attention: sliced" in footer_text(ctx)
    finally:
        ctx.close()


def test_upcast_sampling_and_a_vae_in_another_dtype_run_the_pipelines():
    """The GPU precision paths, with bf16 standing in for fp16 on the CPU."""
    from diffusers import StableDiffusionImg2ImgPipeline
    from PIL import Image

    from webui.model_manager.optimize import install_vae_dtype_adapter, upcast_sampling

    pipe = build_tiny_pipeline("sd1")
    pipe.set_progress_bar_config(disable=True)
    pipe.unet.to(torch.bfloat16)
    upcast_sampling(pipe)  # bf16 UNet, fp32 text encoder, latents and sampler
    latents = pipe("a cat", num_inference_steps=2, width=64, height=64, output_type="latent").images
    assert latents.dtype == torch.float32 and decode_latents(pipe, latents)[0].size == (64, 64)

    pipe = build_tiny_pipeline("sd1")
    pipe.set_progress_bar_config(disable=True)
    pipe.vae.to(torch.bfloat16)  # e.g. --no-half-vae's fp32 VAE beside an fp16 UNet
    install_vae_dtype_adapter(pipe.vae)
    img2img = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    img2img.set_progress_bar_config(disable=True)
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    out = img2img("a cat", image=image, strength=0.5, num_inference_steps=4, output_type="latent")
    assert out.images.dtype == torch.float32
    assert decode_latents(pipe, out.images)[0].size == (64, 64)


def test_token_merging_ratio_changes_the_run_and_is_recorded(data_dir):
    ctx = _context(data_dir)
    try:
        plain = _generate(ctx, width=128, height=128)
        ctx.options.set("token_merging_ratio", 0.5)
        merged = _generate(ctx, width=128, height=128)
        assert "Token merging ratio: 0.5" in merged.result.images[0].infotext
        assert not np.array_equal(_pixels(plain), _pixels(merged))
        ctx.options.set("token_merging_ratio", 0.0)  # the patch is taken off after the job
        assert np.array_equal(_pixels(_generate(ctx, width=128, height=128)), _pixels(plain))
    finally:
        ctx.close()


def test_vae_in_bf16_on_the_cpu_decodes_within_bf16_rounding(data_dir):
    """Forge's --vae-in-bf16: the CPU keeps its VAE in float32 unless asked (about 2x faster
    decodes where the CPU has bf16); img2img's encode runs through the same VAE."""
    from PIL import Image

    from webui.core.params_img2img import Img2ImgParams

    full = _image_of(data_dir)
    ctx = _context(data_dir, "--vae-in-bf16")
    try:
        assert ctx.memory.vae == torch.bfloat16 and "VAE bfloat16" in ctx.memory.description
        half = _pixels(_generate(ctx))
        assert ctx.models.acquire(ctx.models.resolve(None)).pipe.vae.dtype == torch.bfloat16
        init = Image.new("RGB", (64, 64), (200, 30, 30))
        params = Img2ImgParams(prompt="a cube", init_images=[init], steps=2, width=64,
                               height=64, seed=7, save_images=False).validated()  # fmt: skip
        job = ctx.jobs.submit("img2img", params, owner="test")
        assert job.done.wait(300) and job.state == "done", job.error
    finally:
        ctx.close()
    difference = np.abs(half - full)
    assert 0 < difference.max() <= 12 and difference.mean() < 2


def test_vae_in_bf16_gives_way_to_no_half_vae_and_lowram():
    plan = plan_memory(vae_in_bf16=True, no_half_vae=True, cuda_available=False)
    assert plan.vae == torch.float32 and any("--no-half-vae" in n for n in plan.notes)
    plan = plan_memory(vae_in_bf16=True, lowram=True, cuda_available=False)
    assert plan.vae == torch.float32 and any("--lowram" in n for n in plan.notes)
    gpu = plan_memory(vae_in_bf16=True, cuda_available=True, bf16_supported=True)
    assert gpu.vae == torch.bfloat16 and gpu.dtype == torch.float16
