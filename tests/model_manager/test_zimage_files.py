"""Z-Image files: recognition from the tensors (ComfyUI's transformer layout, its Qwen3 and
FLUX autoencoder modules), offline loading of every layout (transformer-only with modules,
diffusers folder), the missing-module message, and prompts reaching the shipped Qwen3
tokenizer unchanged as diffusers' ZImagePipeline builds them."""

from __future__ import annotations

import shutil

import pytest
import torch

from webui.core.families import default_families
from webui.core.families.zimage import ZIMAGE
from webui.core.zimage_text import zimage_conditioning
from webui.model_manager import zimage_keys as zk
from webui.model_manager.loader import (
    MissingModuleError,
    identify_file,
    load_checkpoint,
    read_shapes,
)
from webui.model_manager.modules import module_kinds
from webui.model_manager.qwen_tokenizer import qwen_tokenizer

FAMILIES = default_families()
CAT = "一只可爱的猫咪，坐在窗台上看着窗外的雨"


@pytest.fixture(scope="module")
def loaded(zimage_files):
    """The fp16 ComfyUI transformer with its ae / qwen_3_4b module files, in fp32."""
    modules = [zimage_files["vae"], zimage_files["qwen3"]]
    return load_checkpoint(zimage_files["transformer"], "cpu", torch.float32, FAMILIES, modules)


def _same_weights(loaded: torch.nn.Module, original: torch.nn.Module, atol: float = 0.0) -> None:
    ours, theirs = loaded.state_dict(), original.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.allclose(ours[key].float(), value.float(), atol=atol), key


def test_sizes_come_from_the_tensors(zimage_files):
    spec = identify_file(zimage_files["transformer"], FAMILIES)
    assert (spec.family, spec.family_label, spec.prediction_type) == ("zimage", "Z-Image", "flow")
    assert spec.unet["dim"] == 32 and spec.unet["n_heads"] == 2  # not Z-Image's 3840 / 30
    assert (spec.unet["n_layers"], spec.unet["n_refiner_layers"]) == (1, 1)
    assert spec.unet["cap_feat_dim"] == 32 and spec.unet["in_channels"] == 16
    assert spec.unet["axes_dims"] == [4, 6, 6]
    assert spec.missing == ("vae", "qwen3")
    prefixed = identify_file(zimage_files["transformer-prefixed"], FAMILIES)
    assert prefixed.family == "zimage" and prefixed.unet == spec.unet


def test_module_files_are_told_apart(zimage_files):
    paths = [zimage_files["qwen3"], zimage_files["vae"], zimage_files["transformer"]]
    assert module_kinds(paths) == {"qwen3": zimage_files["qwen3"], "vae": zimage_files["vae"]}
    config = zk.qwen3_config(read_shapes(zimage_files["qwen3"]))
    assert (config["hidden_size"], config["num_hidden_layers"]) == (32, 2)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (2, 1)
    assert config["vocab_size"] == 151_936


def test_a_lumina2_file_is_not_taken_for_z_image(zimage_files):
    shapes = dict(read_shapes(zimage_files["transformer"]))
    del shapes["x_pad_token"], shapes["cap_pad_token"]  # Lumina 2's NextDiT has no pad tokens
    assert zk.transformer_prefix(shapes) is None
    assert ZIMAGE.spec_from_shapes(shapes) is None


@pytest.mark.parametrize("layout", ["transformer-prefixed", "diffusers"])
def test_every_layout_loads_offline_with_the_same_weights(zimage_files, layout):
    modules = [zimage_files["vae"], zimage_files["qwen3"]] if layout != "diffusers" else ()
    model = load_checkpoint(zimage_files[layout], "cpu", torch.float32, FAMILIES, modules)
    assert type(model.pipe).__name__ == "ZImagePipeline" and model.spec.family == "zimage"
    for name in ("transformer", "vae", "text_encoder"):
        _same_weights(getattr(model.pipe, name), getattr(zimage_files["pipe"], name))
    assert model.pipe.scheduler.config.shift == 3.0
    assert not model.pipe.scheduler.config.use_dynamic_shifting


def test_transformer_file_with_modules_generates_as_the_original(zimage_files, loaded):
    """A fp16 ComfyUI file with ae / qwen_3_4b module files: the same picture as the
    pipeline it was written from (fp16 storage: a small tolerance)."""

    def picture(pipe):
        return pipe(prompt="a cat", num_inference_steps=2, height=32, width=32,
                    guidance_scale=0.0, generator=torch.Generator().manual_seed(1),
                    output_type="np", max_sequence_length=32).images  # fmt: skip

    assert abs(picture(loaded.pipe) - picture(zimage_files["pipe"])).max() < 2e-3


def test_a_missing_module_is_named_with_its_file_and_folder(zimage_files):
    with pytest.raises(MissingModuleError) as caught:
        load_checkpoint(zimage_files["transformer"], "cpu", torch.float32, FAMILIES,
                        [zimage_files["vae"]])  # fmt: skip
    message = str(caught.value)
    assert "z-image-tiny.safetensors" in message and "Qwen3 text encoder" in message
    assert "qwen_3_4b.safetensors in models/text_encoder" in message
    assert "autoencoder" not in message  # the chosen VAE was found


def test_the_chinese_prompt_reaches_the_qwen_tokenizer_unchanged(loaded):
    """The ids the text encoder receives are Qwen's own for the chat-templated prompt, and
    the conditioning equals diffusers' ZImagePipeline.encode_prompt (padded to 512)."""
    pipe, seen = loaded.pipe, []
    handle = pipe.text_encoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"][0].tolist()),
        with_kwargs=True,
    )  # fmt: skip
    try:
        conditioning = zimage_conditioning(pipe, CAT, "", steps=2, fields=("prompt", "neg"))
    finally:
        handle.remove()
    chat = f"<|im_start|>user\n{CAT}<|im_end|>\n<|im_start|>assistant\n"
    tokenizer = qwen_tokenizer()
    assert seen[0] == tokenizer(chat).input_ids
    assert seen[0][3:14] == tokenizer(CAT).input_ids  # after <|im_start|> user \n
    assert tokenizer.decode(seen[0]) == chat
    theirs, _ = pipe.encode_prompt(CAT, do_classifier_free_guidance=False)
    ours = conditioning.conds[0].at(0).embeds[0]
    assert ours.shape == theirs[0].shape
    assert torch.allclose(ours, theirs[0], atol=1e-5)


def test_emphasis_and_prompt_editing_change_the_conditioning(loaded):
    pipe = loaded.pipe
    plain = zimage_conditioning(pipe, "a cat", "", steps=4, fields=("prompt", "neg"))
    weighted = zimage_conditioning(pipe, "a (cat:1.5)", "", steps=4, fields=("prompt", "neg"))
    assert plain.static and weighted.static
    assert not torch.equal(plain.conds[0].at(0).embeds, weighted.conds[0].at(0).embeds)
    edited = zimage_conditioning(pipe, "a [cat:dog:0.5]", "", steps=4, fields=("prompt", "neg"))
    assert not edited.static and edited.conds[0].ends == [2, 4]
    assert torch.equal(edited.conds[0].at(0).embeds, plain.conds[0].at(0).embeds)
    assert not torch.equal(edited.conds[0].at(3).embeds, plain.conds[0].at(0).embeds)


def test_the_manager_names_the_missing_qwen3_and_gives_z_images_preset(zimage_files, tmp_path,
                                                                       flux_files):  # fmt: skip
    from webui.model_manager.manager import ModelManager
    from webui.model_manager.memory import plan_memory
    from webui.model_manager.modules import ModuleFiles
    from webui.model_manager.registry import CheckpointRegistry, HashCache

    ckpts, vae, text = tmp_path / "Stable-diffusion", tmp_path / "VAE", tmp_path / "text_encoder"
    for folder in (ckpts, vae, text):
        folder.mkdir()
    shutil.copy(zimage_files["transformer"], ckpts / "z-image-tiny.safetensors")
    shutil.copytree(zimage_files["diffusers"], ckpts / "z-image-folder")
    shutil.copy(flux_files["transformer"], ckpts / "flux1-tiny.safetensors")
    shutil.copy(zimage_files["vae"], vae / "ae.safetensors")
    shutil.copy(zimage_files["qwen3"], text / "qwen_3_4b.safetensors")
    manager = ModelManager(
        CheckpointRegistry(ckpts, HashCache(tmp_path / "cache.json")),
        plan_memory(use_cpu_all=True), families=default_families(), hashing=False,
        module_files=ModuleFiles([vae, text]),
    )  # fmt: skip
    info = manager.resolve("z-image-tiny")
    problem = manager.module_problem(info, ["ae.safetensors"])
    assert "Qwen3 text encoder (qwen_3_4b.safetensors in models/text_encoder)" in problem
    chosen = manager.needed_modules(info, ["qwen_3_4b.safetensors", "ae.safetensors"])
    assert chosen == (vae / "ae.safetensors", text / "qwen_3_4b.safetensors")
    turbo = {"steps": 9, "cfg_scale": 1.0, "sampler": "Euler", "schedule": "Simple"}
    assert manager.family_preset(info) == turbo
    assert manager.family_preset(manager.resolve("z-image-folder")) == turbo
    assert manager.family_preset(manager.resolve("flux1-tiny")) == {}


def test_the_transformer_runs_in_bf16_on_a_cpu_that_prefers_it(zimage_files):
    """`cpu_precision.run_denoiser_in` (bf16 where this CPU's matmuls win): Z-Image's
    transformer takes lists of latents and captions and returns a list; both are cast."""
    from webui.model_manager.cpu_precision import run_denoiser_in

    modules = [zimage_files["vae"], zimage_files["qwen3"]]
    model = load_checkpoint(zimage_files["transformer"], "cpu", torch.float32, FAMILIES, modules)
    assert run_denoiser_in(model.pipe, torch.bfloat16)
    assert model.pipe.transformer.dtype == torch.bfloat16
    images = model.pipe(prompt="a cat", num_inference_steps=1, height=32, width=32,
                        guidance_scale=0.0, generator=torch.Generator().manual_seed(1),
                        output_type="np", max_sequence_length=32).images  # fmt: skip
    assert images.shape == (1, 32, 32, 3)


def test_the_models_tab_tells_z_image_files_apart(zimage_files):
    from webui.model_manager.sniff import Sniffed, sniff_file

    assert sniff_file(zimage_files["transformer"]) == Sniffed("checkpoint", "Z-Image")
    assert sniff_file(zimage_files["transformer-prefixed"]) == Sniffed("checkpoint", "Z-Image")
    assert sniff_file(zimage_files["qwen3"]) == Sniffed("text_encoder", "Qwen3 (Z-Image)")
    assert sniff_file(zimage_files["vae"]) == Sniffed("vae", "SD 3 / FLUX")


def test_prompt_editing_reaches_the_transformer_at_its_step_with_cfg(loaded):
    """`[cat:dog:0.5]` over 4 steps with CFG: steps 1-2 see "cat", 3-4 "dog", and the
    negative prompt stays in the second half of the transformer's caption list."""
    from types import SimpleNamespace

    from webui.core.families.zimage import ZIMAGE
    from webui.core.zimage_text import follow_schedule

    pipe, seen = loaded.pipe, []
    conditioning = zimage_conditioning(pipe, "a [cat:dog:0.5]", "blurry", steps=4,
                                       fields=("prompt", "neg"))  # fmt: skip
    cat, dog = (conditioning.conds[0].at(step).embeds[0] for step in (0, 3))
    negative = conditioning.uncond.at(0).embeds[0]
    handle = pipe.transformer.register_forward_hook(
        lambda module, args, output: seen.append(args[2])
    )
    try:
        with follow_schedule(pipe, conditioning, batch_size=1) as follow:
            pipe(**ZIMAGE.pipeline_call_kwargs(conditioning, SimpleNamespace(cfg_scale=3.0)),
                 num_inference_steps=4, height=32, width=32, output_type="latent",
                 generator=torch.Generator().manual_seed(1),
                 callback_on_step_end=follow(lambda p, i, t, tensors: {}))  # fmt: skip
    finally:
        handle.remove()
    assert [len(captions) for captions in seen] == [2, 2, 2, 2]
    for step, captions in enumerate(seen):
        assert torch.equal(captions[0], cat if step < 2 else dog), step
        assert torch.equal(captions[1], negative), step
