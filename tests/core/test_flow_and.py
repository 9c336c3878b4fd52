"""AND (composable diffusion) on the flow-matching transformer families (`core.flow_and`):
for FLUX.1, SD 3.5 and Z-Image, "x AND y" is another picture than "x"; "x :0.5 AND x :0.5"
is "x"; a weight w on one sub-prompt is A1111's `uncond + w (cond - uncond)`, so with
CFG g it gives the picture of CFG g * w (true CFG, FLUX's negative prompt in a call of its
own included) and at CFG 1 the sub-prompt itself (the weighted mean); each sub-prompt gets
its own text in one batch of transformer rows."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from webui.core.families import FLUX1, SD3, ZIMAGE
from webui.core.flow_and import and_parts, combine

FAMILIES = {"flux": FLUX1, "sd3": SD3, "zimage": ZIMAGE}
TOLERANCE = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def model(request):
    from webui.model_manager import tiny_flux, tiny_sd3, tiny_zimage

    build = {"flux": tiny_flux.build_tiny_flux, "sd3": tiny_sd3.build_tiny_sd3,
             "zimage": tiny_zimage.build_tiny_zimage}[request.param]  # fmt: skip
    pipe = build(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return FAMILIES[request.param], pipe


def _latents(model, prompt: str, cfg: float, steps: int = 2) -> torch.Tensor:
    family, pipe = model
    conditioning = family.conditioning(pipe, prompt, "blurry", 1, steps=steps)
    params = SimpleNamespace(cfg_scale=cfg, distilled_cfg_scale=3.5, shift=None)
    with family.follow_steps(pipe, conditioning, 1, size=(32, 32)) as follow:
        out = pipe(**family.pipeline_call_kwargs(conditioning, params), num_inference_steps=steps,
                   height=32, width=32, output_type="latent",
                   generator=torch.Generator().manual_seed(1),
                   callback_on_step_end=follow(lambda p, i, t, tensors: {}))  # fmt: skip
    return out.images.float()


@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_and_is_another_picture_and_x_and_x_is_x(model, cfg):
    plain = _latents(model, "a photo of a cat", cfg)
    assert not torch.allclose(_latents(model, "a photo of a cat AND a red boat", cfg), plain,
                              **TOLERANCE)  # fmt: skip
    torch.testing.assert_close(
        _latents(model, "a photo of a cat :0.5 AND a photo of a cat :0.5", cfg), plain,
        **TOLERANCE,
    )  # fmt: skip


def test_a_weight_scales_the_guidance_as_a1111s_formula(model):
    """`x :0.5` at CFG 4 is uncond + 4 * 0.5 (x - uncond): the picture of "x" at CFG 2;
    at CFG 1 the weighted mean of one sub-prompt is the sub-prompt."""
    torch.testing.assert_close(_latents(model, "a photo of a cat :0.5", 4.0),
                               _latents(model, "a photo of a cat", 2.0), **TOLERANCE)  # fmt: skip
    torch.testing.assert_close(_latents(model, "a photo of a cat :0.5", 1.0),
                               _latents(model, "a photo of a cat", 1.0), **TOLERANCE)  # fmt: skip


def test_each_sub_prompt_reaches_the_transformer_in_one_batch(model):
    family, pipe = model
    conditioning = family.conditioning(pipe, "a cat AND a [dog:boat:0.5] :0.7", "", 1, steps=2)
    assert conditioning.weights == [1.0, 0.7]
    dog, boat = conditioning.conds[1].items
    seen = []
    params = SimpleNamespace(cfg_scale=1.0, distilled_cfg_scale=3.5, shift=None)
    with family.follow_steps(pipe, conditioning, 1, size=(32, 32)) as follow:
        handle = pipe.transformer.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(_texts(args, kwargs)), with_kwargs=True
        )  # registered after ours: sees what the transformer reads
        try:
            pipe(**family.pipeline_call_kwargs(conditioning, params), num_inference_steps=2,
                 height=32, width=32, output_type="latent",
                 callback_on_step_end=follow(lambda p, i, t, tensors: {}))  # fmt: skip
        finally:
            handle.remove()
    assert len(seen) == 2  # one transformer call a step, the two sub-prompts as rows
    cat = conditioning.conds[0].at(0).embeds[0]
    for texts, second in zip(seen, (dog, boat), strict=True):
        assert len(texts) == 2
        torch.testing.assert_close(texts[0], cat.to(texts[0]))
        torch.testing.assert_close(texts[1], second.embeds[0].to(texts[1]))


def _texts(args, kwargs) -> list[torch.Tensor]:
    if "encoder_hidden_states" in kwargs:  # FLUX, SD 3.5
        return list(kwargs["encoder_hidden_states"])
    return list(args[2])  # Z-Image's caption list


def test_sub_prompts_are_stripped_and_a_plain_prompt_kept_as_written():
    assert and_parts("a cat ") == [("a cat ", 1.0)]
    assert and_parts("a cat :1.2 AND a dog :0.8") == [("a cat", 1.2), ("a dog", 0.8)]
    assert and_parts("a cat:0.5") == [("a cat", 0.5)]


def test_combine_is_a1111s_formula_or_the_weighted_mean():
    uncond, a, b = torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor([5.0])
    assert combine(uncond, [a, b], [0.5, 2.0]).item() == 1.0 + 0.5 * 2 + 2.0 * 4
    assert combine(None, [a, b], [1.0, 3.0]).item() == (3.0 + 15.0) / 4
