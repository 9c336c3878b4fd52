"""Same pixels for the same seeds on every family: our jobs against bare diffusers.

For SD 1.x, SD 1.x inpainting (9 channels), SD 2.x, SDXL and an SD 1.x diffusers folder,
txt2img, img2img, inpainting and hires. fix run through the real worker (job queue,
extension runner, model manager, family module) and must give exactly the images of a
bare diffusers pipeline built from the same tiny weights (`webui.model_manager.tiny`, the
weights the checkpoint files were exported from), given the same prompts, sampler
(Euler, A1111's Uniform schedule), CPU generators (seed + i) and init latents. Both run
in this process, so the comparison holds on any machine and at any thread count.

What A1111 adds on top of a pipeline call is written out here in a few lines each: init
images are encoded with the latent distribution's mode; an inpainting result is pasted
over the original outside the mask; a 9-channel model gets the masked image's latents;
hires. fix ("Latent") interpolates the first pass's latents bilinearly and runs img2img.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from webui.context import build_context
from webui.core.params import Txt2ImgParams
from webui.core.params_img2img import HiresParams, Img2ImgParams
from webui.model_manager.tiny import build_tiny_pipeline
from webui.settings import parse_flags

FAMILIES = ("sd1", "sd1-inpaint", "sd2", "sdxl", "sd1-diffusers")
PROMPT, NEGATIVE = "a lighthouse on a cliff", "blurry, dark"
COMMON = dict(prompt=PROMPT, negative_prompt=NEGATIVE, steps=3, width=64, height=64,
              sampler_name="Euler", cfg_scale=6.0, save_images=False)  # fmt: skip


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, tiny_files):
    root = tmp_path_factory.mktemp("same-pixels")
    folder = root / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for family in FAMILIES:
        source = tiny_files[family]
        if source.is_dir():
            shutil.copytree(source, folder / f"tiny-{family}")
        else:
            shutil.copy(source, folder / f"tiny-{family}.safetensors")
    context = build_context(parse_flags(["--data-dir", str(root), "--no-download-sd-model"]))
    yield context
    context.close()


@pytest.fixture(scope="module")
def bare():
    """family -> the tiny diffusers pipeline its checkpoint file was written from."""
    built: dict[str, object] = {}

    def get(family: str):
        name = "sd1" if family == "sd1-diffusers" else family
        if name not in built:
            pipe = build_tiny_pipeline(name, seed=0)
            pipe.set_progress_bar_config(disable=True)
            built[name] = pipe
        return built[name]

    return get


def ours(ctx, kind: str, params) -> list[np.ndarray]:
    job = ctx.jobs.submit(kind, params.validated(), owner="pixels")
    assert job.done.wait(300), "the job did not finish"
    assert job.state == "done", job.error
    return [pixels(g.image) for g in job.result.images if not g.grid]  # not the batch grid


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def euler(pipe):
    """A1111's Euler (Uniform schedule) on the SD noise schedule: diffusers' Euler, linspace."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
        beta_schedule="scaled_linear", timestep_spacing="linspace", steps_offset=1,
        prediction_type=pipe.scheduler.config.prediction_type,
    )  # fmt: skip


def generators(seeds):
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def variant(pipe, kind: str):
    """The img2img / inpaint pipeline over the same components (a 9-channel model is its own)."""
    import diffusers

    if pipe.unet.config.in_channels == 9:
        return pipe
    xl = "XL" if "XL" in type(pipe).__name__ else ""
    view = getattr(diffusers, f"StableDiffusion{xl}{kind}Pipeline").from_pipe(pipe)
    view.set_progress_bar_config(disable=True)
    return view


def encode(pipe, image_pixels: torch.Tensor) -> torch.Tensor:
    """A1111 encodes init images with the mode of the latent distribution."""
    with torch.inference_mode():
        dist = pipe.vae.encode(image_pixels).latent_dist
    return dist.mode() * pipe.vae.config.scaling_factor


def to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


def noise_image(seed: int = 0) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, (64, 64, 3), dtype=np.uint8), "RGB")


def full_mask_inputs(pipe, pixels_tensor: torch.Tensor, mask: Image.Image) -> dict:
    """What a 9-channel model is given besides the latents: mask and masked-image latents."""
    keep = torch.from_numpy(np.asarray(mask, dtype=np.float32) < 127.5)[None, None]
    return {"mask_image": mask, "masked_image_latents": encode(pipe, pixels_tensor * keep)}


@pytest.mark.parametrize("family", FAMILIES)
def test_txt2img_is_bare_diffusers(ctx, bare, family):
    seeds = [41, 42]
    got = ours(ctx, "txt2img", Txt2ImgParams(**COMMON, seed=41, batch_size=2,
                                             checkpoint=f"tiny-{family}"))  # fmt: skip
    pipe = bare(family)
    pipe.scheduler = euler(pipe)
    extra = {}
    if pipe.unet.config.in_channels == 9:  # txt2img = inpainting a blank, fully masked canvas
        extra = dict(image=Image.new("RGB", (64, 64), (127, 127, 127)),
                     mask_image=Image.new("L", (64, 64), 255), strength=1.0)  # fmt: skip
    expected = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=3, guidance_scale=6.0,
                    width=64, height=64, num_images_per_prompt=2, generator=generators(seeds),
                    **extra).images  # fmt: skip
    for mine, theirs in zip(got, expected, strict=True):
        assert np.array_equal(mine, pixels(theirs))


@pytest.mark.parametrize("family", FAMILIES)
def test_img2img_is_bare_diffusers(ctx, bare, family):
    init = noise_image(1)
    got = ours(ctx, "img2img", Img2ImgParams(**COMMON, seed=7, init_images=(init,),
                                             denoising_strength=0.6,
                                             checkpoint=f"tiny-{family}"))  # fmt: skip
    pipe = variant(bare(family), "Img2Img")
    pipe.scheduler = euler(pipe)
    source = to_tensor(init)
    extra = {}
    if pipe.unet.config.in_channels == 9:  # no mask: the whole image is repainted
        extra = dict(full_mask_inputs(pipe, source, Image.new("L", (64, 64), 255)),
                     height=64, width=64)  # fmt: skip
    expected = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, image=encode(pipe, source),
                    strength=0.6, num_inference_steps=3, guidance_scale=6.0,
                    generator=generators([7]), **extra).images  # fmt: skip
    assert np.array_equal(got[0], pixels(expected[0]))


@pytest.mark.parametrize("family", FAMILIES)
def test_inpaint_is_bare_diffusers_pasted_over_the_original(ctx, bare, family):
    init = noise_image(2)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 8, 48, 40))
    got = ours(ctx, "img2img", Img2ImgParams(**COMMON, seed=9, init_images=(init,), mask=mask,
                                             mask_blur_x=0, mask_blur_y=0,
                                             denoising_strength=0.8,
                                             checkpoint=f"tiny-{family}"))  # fmt: skip
    pipe = variant(bare(family), "Inpaint")
    pipe.scheduler = euler(pipe)
    source = to_tensor(init)
    latents = encode(pipe, source)
    if pipe.unet.config.in_channels == 9:
        extra = full_mask_inputs(pipe, source, mask)
    else:  # a 4-channel model never reads the masked-image latents
        extra = {"mask_image": mask, "masked_image_latents": latents}
    repainted = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, image=latents, strength=0.8,
                     num_inference_steps=3, guidance_scale=6.0, height=64, width=64,
                     generator=generators([9]), **extra).images[0]  # fmt: skip
    inside = np.asarray(mask)[..., None] > 0
    expected = np.where(inside, pixels(repainted), pixels(init))
    assert np.array_equal(got[0], expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_hires_fix_is_bare_diffusers(ctx, bare, family):
    hires = HiresParams(scale=1.5, steps=2, denoising_strength=0.5)
    got = ours(ctx, "txt2img", Txt2ImgParams(**COMMON, seed=12, hires=hires,
                                             checkpoint=f"tiny-{family}"))  # fmt: skip
    pipe = bare(family)
    pipe.scheduler = euler(pipe)
    first_extra = {}
    nine = pipe.unet.config.in_channels == 9
    if nine:
        first_extra = dict(image=Image.new("RGB", (64, 64), (127, 127, 127)),
                           mask_image=Image.new("L", (64, 64), 255), strength=1.0)  # fmt: skip
    latents = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=3, guidance_scale=6.0,
                   width=64, height=64, generator=generators([12]), output_type="latent",
                   **first_extra).images  # fmt: skip
    h, w = latents.shape[-2:]
    upscaled = F.interpolate(latents, size=(h * 3 // 2, w * 3 // 2), mode="bilinear",
                             antialias=False)  # fmt: skip
    second = variant(pipe, "Img2Img")
    second.scheduler = euler(pipe)
    extra = {}
    if nine:  # the whole upscaled image is repainted; its "masked image" is black
        factor = second.vae_scale_factor
        size = (upscaled.shape[-1] * factor, upscaled.shape[-2] * factor)
        black = torch.zeros(1, 3, size[1], size[0])
        extra = dict(full_mask_inputs(second, black, Image.new("L", size, 255)),
                     height=size[1], width=size[0])  # fmt: skip
    expected = second(prompt=PROMPT, negative_prompt=NEGATIVE, image=upscaled, strength=0.5,
                      num_inference_steps=2, guidance_scale=6.0, generator=generators([12]),
                      **extra).images[0]  # fmt: skip
    assert np.array_equal(got[0], pixels(expected))
