"""The option text_encoder_release through the job queue: after a job with "Always" the
tiny FLUX.1's T5 (and Z-Image's Qwen3) holds no weights, the next job reloads it from the
file and gives the same pixels and infotext as with "Never", which changes nothing."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from webui.context import build_context
from webui.core.families import default_families
from webui.core.params import Txt2ImgParams
from webui.core.params_img2img import HiresParams
from webui.model_manager.manager import ModelManager
from webui.model_manager.memory import plan_memory
from webui.model_manager.modules import ModuleFiles
from webui.model_manager.registry import CheckpointRegistry, HashCache
from webui.model_manager.text_encoder_release import parameter_bytes, release, wants_release
from webui.settings import parse_flags


def _context(data):
    return build_context(parse_flags(["--data-dir", str(data), "--no-download-sd-model"]))


@pytest.fixture(scope="module")
def flux(tmp_path_factory, flux_files):
    data = tmp_path_factory.mktemp("te-release-flux")
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    shutil.copy(flux_files["all-in-one"], data / "models" / "Stable-diffusion")
    context = _context(data)
    yield context, flux_files["all-in-one"].stem, {}
    context.close()


@pytest.fixture(scope="module")
def flux_fp8_modules(tmp_path_factory, flux_files):
    """The transformer-only file with Forge's modules, T5 stored in fp8."""
    data = tmp_path_factory.mktemp("te-release-flux-modules")
    models = data / "models"
    for folder in ("Stable-diffusion", "VAE", "text_encoder"):
        (models / folder).mkdir(parents=True)
    shutil.copy(flux_files["transformer"], models / "Stable-diffusion")
    shutil.copy(flux_files["vae"], models / "VAE" / "ae.safetensors")
    shutil.copy(flux_files["clip_l"], models / "text_encoder" / "clip_l.safetensors")
    t5 = load_file(flux_files["t5xxl"])
    save_file({k: v.to(torch.float8_e4m3fn) for k, v in t5.items()},
              models / "text_encoder" / "t5xxl_fp8_e4m3fn.safetensors")  # fmt: skip
    context = _context(data)
    modules = ["ae.safetensors", "clip_l.safetensors", "t5xxl_fp8_e4m3fn.safetensors"]
    yield context, flux_files["transformer"].stem, {"forge_additional_modules": modules}
    (model,) = context.models._loaded.values()
    assert torch.float8_e4m3fn in _dtypes(model)  # the case this fixture is for
    context.close()


@pytest.fixture(scope="module")
def zimage(tmp_path_factory, zimage_files):
    data = tmp_path_factory.mktemp("te-release-zimage")
    models = data / "models"
    for folder in ("Stable-diffusion", "VAE", "text_encoder"):
        (models / folder).mkdir(parents=True)
    shutil.copy(zimage_files["transformer"], models / "Stable-diffusion" / "z-tiny.safetensors")
    shutil.copy(zimage_files["vae"], models / "VAE" / "ae.safetensors")
    shutil.copy(zimage_files["qwen3"], models / "text_encoder" / "qwen_3_4b.safetensors")
    context = _context(data)
    modules = {"forge_additional_modules": ["ae.safetensors", "qwen_3_4b.safetensors"]}
    yield context, "z-tiny", modules
    context.close()


def _run(setup, mode: str, prompt: str = "a [lighthouse:castle:0.5] at dusk", **changes):
    ctx, name, options = setup
    params = Txt2ImgParams(**{"prompt": prompt, "steps": 2, "width": 64, "height": 64,
                              "seed": 3, "cfg_scale": 2, "negative_prompt": "fog",
                              "checkpoint": name, "save_images": False,
                              **changes}).validated()  # fmt: skip
    job = ctx.jobs.submit("txt2img", params, owner="test",
                          options={**options, "text_encoder_release": mode})  # fmt: skip
    assert job.done.wait(300), "job did not finish"
    assert job.state == "done", job.error
    image = job.result.images[0]
    return image.image.tobytes(), image.infotext


def _loaded(ctx):
    (model,) = ctx.models._loaded.values()
    return model


def _encoder_bytes(model) -> int:
    return sum(parameter_bytes(getattr(model.pipe, n)) for n in model.family.big_text_encoders)


@pytest.mark.parametrize("setup", ["flux", "flux_fp8_modules", "zimage"])
def test_always_frees_the_big_encoder_and_the_next_job_reloads_it(setup, request):
    setup = request.getfixturevalue(setup)
    kept = _run(setup, "Never")
    model = _loaded(setup[0])
    held, dtypes = _encoder_bytes(model), _dtypes(model)
    assert held > 0 and not model.released
    assert _run(setup, "Never") == kept  # "Never" changes nothing, the weights stay
    assert _encoder_bytes(model) == held and not model.released
    freed = _run(setup, "Always")
    assert freed == kept  # the prompts were encoded before the encoder was freed
    assert _encoder_bytes(model) == 0 and model.released  # no T5 / Qwen3 weights held
    assert _run(setup, "Always") == kept  # reloaded from the file, the same pixels
    assert _encoder_bytes(model) == 0
    assert _run(setup, "Never") == kept  # reloaded and kept
    assert _encoder_bytes(model) == held and not model.released
    assert _dtypes(model) == dtypes  # fp8 storage stays fp8


def _dtypes(model) -> list:
    return [p.dtype for n in model.family.big_text_encoders
            for p in getattr(model.pipe, n).parameters()]  # fmt: skip


def test_a_hires_job_encodes_its_hires_prompt_before_the_encoder_is_freed(flux):
    hires = {"hires": HiresParams(scale=1.5, steps=1, denoising_strength=0.5,
                                  prompt="a castle")}  # fmt: skip
    kept = _run(flux, "Never", **hires)
    assert _run(flux, "Always", **hires) == kept
    assert _encoder_bytes(_loaded(flux[0])) == 0


def test_auto_frees_only_a_big_encoder_on_a_machine_short_of_ram(flux):
    _run(flux, "Never")
    model = _loaded(flux[0])
    assert not wants_release("Auto", model, ram=8 * 2**30)  # the tiny T5: not worth it
    assert not wants_release("Never", model, ram=8 * 2**30)
    assert wants_release("Always", model, ram=512 * 2**30)
    t5 = model.pipe.text_encoder_2
    big = torch.nn.Parameter(torch.empty(0))
    big.data = torch.empty(2**30 // 4 + 1)  # pretend T5 holds over 1 GiB
    t5.register_parameter("_pretend", big)
    try:
        assert wants_release("Auto", model, ram=24 * 2**30)
        assert not wants_release("Auto", model, ram=64 * 2**30)
    finally:
        del t5._pretend


@pytest.mark.parametrize("layout", ["all-in-one", "transformer", "diffusers"])
def test_sd3_reloads_its_t5_from_the_file_or_folder_it_came_from(tmp_path, sd3_files, layout):
    """SD 3.5's T5 from an all-in-one file, a module file and a diffusers folder (the
    folder path is the one every family's diffusers folders take)."""
    ckpts, text = tmp_path / "Stable-diffusion", tmp_path / "text_encoder"
    ckpts.mkdir()
    text.mkdir()
    copy = shutil.copytree if layout == "diffusers" else shutil.copy
    copy(sd3_files[layout], ckpts / sd3_files[layout].name)
    for kind in ("clip_l", "clip_g", "t5xxl", "vae"):
        shutil.copy(sd3_files[kind], text)
    plan = plan_memory(use_cpu_all=True)
    manager = ModelManager(CheckpointRegistry(ckpts, HashCache(tmp_path / "cache.json")), plan,
                           families=default_families(), hashing=False,
                           module_files=ModuleFiles([text]))  # fmt: skip
    info = manager.resolve(None)
    lease = manager.acquire(info, manager.needed_modules(info, [p.name for p in text.iterdir()]))
    t5 = lease.pipe.text_encoder_3
    before, size = {k: v.clone() for k, v in t5.state_dict().items()}, parameter_bytes(t5)
    assert release(lease.model, plan) == size > 0
    assert parameter_bytes(t5) == 0 and lease.model.released == {"text_encoder_3": "file"}
    again = manager.acquire(info, lease.model.modules)  # the next lease restores it
    assert again.pipe.text_encoder_3 is t5 and not lease.model.released
    after = t5.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_a_low_memory_retry_encodes_its_prompts_again(flux):
    """Out of memory in the transformer after T5 was freed: the retry reloads it first."""
    _run(flux, "Never")
    model = _loaded(flux[0])

    def out_of_memory(module, args, kwargs):  # once: the first transformer call
        handle.remove()
        raise torch.OutOfMemoryError("CPU out of memory. Tried to allocate 9.00 GiB")

    handle = model.pipe.transformer.register_forward_pre_hook(out_of_memory, with_kwargs=True)
    try:
        _, infotext = _run(flux, "Always")
    finally:
        handle.remove()
    assert "Low-memory retry" in infotext
    assert _encoder_bytes(model) == 0 and model.released
