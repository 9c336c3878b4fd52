"""SD 3.5 prompts (`webui.core.sd3_text`): a plain prompt is what diffusers' own
`encode_prompt` gives; emphasis reaches CLIP and T5; long prompts take more CLIP chunks;
prompt editing switches the transformer's inputs at its step, with CFG's negative rows
first; AND sub-prompts are padded to one length (`test_flow_and` runs them); without T5
its part is zeros, as in diffusers. And the 16-channel latent preview."""

from __future__ import annotations

import pytest
import torch

from webui.core.families import SD3
from webui.core.processing import latent_preview
from webui.core.sd3_text import follow_schedule

CLIP_WIDTH, T5_WIDTH = 32 + 64, 128


@pytest.fixture(scope="module")
def pipe(sd3_files):
    return sd3_files["pipe"]


def _encode(pipe, prompt: str, negative: str = "", steps: int = 2):
    return SD3.conditioning(pipe, prompt, negative, 1, steps=steps)


def test_a_plain_prompt_is_encoded_as_diffusers_does_it(pipe):
    ours = _encode(pipe, "a photo of a cat", "blurry").pipeline_kwargs()
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        "a photo of a cat", None, None, negative_prompt="blurry", do_classifier_free_guidance=True
    )  # fmt: skip
    assert ours["prompt_embeds"].shape == (1, 77 + 256, T5_WIDTH)
    assert torch.allclose(ours["prompt_embeds"], embeds, atol=1e-5)
    assert torch.allclose(ours["negative_prompt_embeds"], negative, atol=1e-5)
    assert torch.allclose(ours["pooled_prompt_embeds"], pooled, atol=1e-5)
    assert torch.allclose(ours["negative_pooled_prompt_embeds"], negative_pooled, atol=1e-5)
    assert not ours["prompt_embeds"][:, :77, CLIP_WIDTH:].any()  # CLIP zero-padded to T5's width


def test_emphasis_reaches_clip_and_t5(pipe):
    plain = _encode(pipe, "a cat, sharp").conds[0].at(0)
    weighted = _encode(pipe, "a cat, (sharp:1.5)").conds[0].at(0)
    assert not torch.allclose(plain.embeds[:, :77], weighted.embeds[:, :77])  # CLIP
    assert not torch.allclose(plain.embeds[:, 77:], weighted.embeds[:, 77:])  # T5
    assert torch.allclose(plain.pooled, weighted.pooled)  # pooled: no per-token weight


def test_long_prompts_take_more_clip_chunks_and_negatives_are_padded_alike(pipe):
    conditioning = _encode(pipe, " ".join(["cat"] * 100), "blurry")
    assert conditioning.conds[0].at(0).embeds.shape == (1, 2 * 77 + 256, T5_WIDTH)
    assert conditioning.uncond.at(0).embeds.shape == (1, 2 * 77 + 256, T5_WIDTH)


def test_and_sub_prompts_and_the_negative_are_padded_to_one_length(pipe):
    conditioning = _encode(pipe, "a cat :0.5 AND " + "word " * 80, "blurry")
    assert conditioning.weights == [0.5, 1.0]
    lengths = {s.at(0).embeds.shape[1] for s in (conditioning.uncond, *conditioning.conds)}
    assert lengths == {2 * 77 + 256}  # the long sub-prompt's two CLIP chunks, then T5


def test_a_model_without_t5_reads_zeros_as_diffusers_does(pipe):
    from diffusers import StableDiffusion3Pipeline

    without = StableDiffusion3Pipeline(**{**pipe.components, "text_encoder_3": None,
                                          "tokenizer_3": None})  # fmt: skip
    assert SD3.spec_from_pipeline(without).text_encoders[1]["hidden_size"] == 64
    ours = _encode(without, "a cat", "blurry").pipeline_kwargs()
    embeds, negative, pooled, _ = without.encode_prompt(
        "a cat", None, None, negative_prompt="blurry", do_classifier_free_guidance=True
    )  # fmt: skip
    assert ours["prompt_embeds"].shape == (1, 77 + 256, T5_WIDTH)
    assert not ours["prompt_embeds"][:, 77:].any()  # T5's part: zeros
    assert torch.allclose(ours["prompt_embeds"], embeds, atol=1e-5)
    assert torch.allclose(ours["negative_prompt_embeds"], negative, atol=1e-5)
    assert torch.allclose(ours["pooled_prompt_embeds"], pooled, atol=1e-5)


def test_prompt_editing_switches_the_transformers_inputs_with_cfg_rows(pipe):
    conditioning = _encode(pipe, "a [cat:dog:0.5]", "blurry", steps=2)
    cat, dog = conditioning.conds[0].items
    negative = conditioning.uncond.at(0)
    seen = []

    def spy(module, args, kwargs):
        seen.append((kwargs["encoder_hidden_states"].clone(), kwargs["pooled_projections"].clone()))

    with follow_schedule(pipe, conditioning, 1) as follow:
        handle = pipe.transformer.register_forward_pre_hook(spy, with_kwargs=True)  # after ours
        try:
            pipe(**SD3.pipeline_call_kwargs(conditioning, _Params(cfg_scale=4.0)),
                 num_inference_steps=2, height=32, width=32, output_type="latent",
                 generator=torch.Generator().manual_seed(1),
                 callback_on_step_end=follow(lambda p, i, t, tensors: {}))  # fmt: skip
        finally:
            handle.remove()
    assert len(seen) == 2 and seen[0][0].shape[0] == 2  # one call a step, [negative, prompt]
    for (embeds, pooled), wanted in zip(seen, (cat, dog), strict=True):
        assert torch.equal(embeds[0], negative.embeds[0]) and torch.equal(
            embeds[1], wanted.embeds[0]
        )
        assert torch.equal(pooled[1], wanted.pooled[0])


class _Params:
    def __init__(self, cfg_scale: float):
        self.cfg_scale = cfg_scale


def test_the_latent_preview_reads_16_channels():
    image = latent_preview(torch.randn(1, 16, 8, 8), SD3.latent_rgb)
    assert image.size == (64, 64)
