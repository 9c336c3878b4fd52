"""Conditioning on the tiny pipelines: A1111 weights and chunks, schedules, AND, SDXL."""

from __future__ import annotations

import pytest
import torch

from webui.core.composable import hooked
from webui.core.conditioning import (
    CHUNK_LENGTH,
    PromptEncoder,
    encode_prompts,
    prepare_conditioning,
)
from webui.core.families import SD1, SD2, SDXL
from webui.model_manager.tiny import build_tiny_pipeline

FAMILY = {"sd1": SD1, "sd2": SD2}


@pytest.fixture(scope="module")
def sd1():
    pipe = build_tiny_pipeline("sd1")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sdxl():
    pipe = build_tiny_pipeline("sdxl")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _reference(pipe, text: str, clip_skip: int = 1) -> torch.Tensor:
    """The plain encoding, as diffusers' pipelines do it for one 77-token prompt."""
    ids = pipe.tokenizer(text, padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids  # fmt: skip
    with torch.inference_mode():
        out = pipe.text_encoder(ids, output_hidden_states=True)
        if clip_skip == 1:
            return out.last_hidden_state
        return pipe.text_encoder.final_layer_norm(out.hidden_states[-clip_skip])


@pytest.mark.parametrize("family", ["sd1", "sd2"])
@pytest.mark.parametrize("clip_skip", [1, 2])
def test_plain_prompt_is_exactly_the_plain_encoding(family, clip_skip):
    pipe = build_tiny_pipeline(family)
    kwargs = encode_prompts(pipe, FAMILY[family], "a red cube, shiny", "blurry", clip_skip)
    assert torch.equal(kwargs["prompt_embeds"], _reference(pipe, "a red cube, shiny", clip_skip))
    assert torch.equal(kwargs["negative_prompt_embeds"], _reference(pipe, "blurry", clip_skip))


def test_clip_skip_changes_the_conditioning_and_is_bounded(sd1):
    one = encode_prompts(sd1, SD1, "a cat", "", 1)["prompt_embeds"]
    two = encode_prompts(sd1, SD1, "a cat", "", 2)["prompt_embeds"]
    assert not torch.equal(one, two)
    with pytest.raises(ValueError, match="Clip skip 3"):
        encode_prompts(sd1, SD1, "a cat", "", 3)  # the tiny encoder has 2 layers


def test_sdxl_matches_diffusers_and_zeroes_an_empty_negative(sdxl):
    kwargs = encode_prompts(sdxl, SDXL, "a red cube", "", 1)
    ref = sdxl.encode_prompt("a red cube", device="cpu", num_images_per_prompt=1,
                             do_classifier_free_guidance=True)  # fmt: skip
    assert torch.equal(kwargs["prompt_embeds"], ref[0])
    assert torch.equal(kwargs["pooled_prompt_embeds"], ref[2])
    assert kwargs["prompt_embeds"].shape == (1, 77, 32 + 64)  # both encoders side by side
    assert not kwargs["negative_prompt_embeds"].any()
    assert not kwargs["negative_pooled_prompt_embeds"].any()
    skip2 = encode_prompts(sdxl, SDXL, "a red cube", "", 2)
    assert not torch.equal(skip2["prompt_embeds"], kwargs["prompt_embeds"])


def test_emphasis_scales_tokens_and_restores_the_mean(sd1):
    plain = _reference(sd1, "a cat")
    weighted = encode_prompts(sd1, SD1, "a (cat:1.5)", "", 1)["prompt_embeds"]
    multipliers = torch.ones(77)
    multipliers[2] = 1.5  # BOS, "a", "cat"
    expected = plain * multipliers.reshape(1, -1, 1)
    expected = expected * (plain.mean() / expected.mean())
    assert torch.allclose(weighted, expected, atol=1e-6)
    assert torch.isclose(weighted.mean(), plain.mean(), atol=1e-6)
    softer = encode_prompts(sd1, SD1, "a [cat]", "", 1)["prompt_embeds"]
    assert not torch.equal(softer, plain) and not torch.equal(softer, weighted)


def test_long_prompts_are_encoded_in_chunks_of_75(sd1):
    encoder = PromptEncoder(sd1, SD1, 1)
    words = " ".join(["cat"] * 100)
    chunks = encoder.chunks(words)
    assert [len(c.tokens) for c in chunks] == [CHUNK_LENGTH, CHUNK_LENGTH]
    cond = encode_prompts(sd1, SD1, words, "", 1)
    assert cond["prompt_embeds"].shape == (1, 154, 32)
    # the negative prompt is padded to the same length so both batch together
    assert cond["negative_prompt_embeds"].shape == (1, 154, 32)
    # each chunk is encoded on its own: the second chunk starts with its own BOS
    first = encoder.encode(" ".join(["cat"] * 75)).embeds
    assert torch.equal(cond["prompt_embeds"][:, :77], first)


def test_break_starts_a_new_chunk(sd1):
    encoder = PromptEncoder(sd1, SD1, 1)
    chunks = encoder.chunks("a cat BREAK a dog")
    assert len(chunks) == 2
    dog = encoder._tokenize(["a dog"])[0]
    assert chunks[1].tokens[: len(dog)] == dog
    assert encoder.encode("a cat BREAK a dog").embeds.shape == (1, 154, 32)


def test_words_after_a_late_comma_move_to_the_next_chunk(sd1):
    encoder = PromptEncoder(sd1, SD1, 1)
    prompt = " ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10)
    chunks = encoder.chunks(prompt)
    comma = encoder._comma
    assert chunks[0].tokens[70] == comma  # the first chunk ends at the comma, padded
    dog = encoder._tokenize(["dog"])[0][0]
    assert chunks[0].tokens[71:] == [sd1.tokenizer.eos_token_id] * 4
    assert chunks[1].tokens[:10] == [dog] * 10


def test_schedule_switches_at_the_right_step(sd1):
    cond = prepare_conditioning(sd1, SD1, "a [cat:dog:2] photo", "", 1, steps=4)
    (schedule,) = cond.conds
    assert schedule.ends == [2, 4]
    cat, dog = (PromptEncoder(sd1, SD1, 1).encode(t).embeds for t in ("a cat photo", "a dog photo"))
    assert [torch.equal(schedule.at(s).embeds, cat) for s in range(4)] == [True, True, False, False]
    assert torch.equal(schedule.at(3).embeds, dog)
    assert not cond.static


def _record_unet_calls(pipe, prompt: str, negative: str = "", steps: int = 4, cfg: float = 7.0):
    calls = []

    def record(module, args, kwargs):
        calls.append(kwargs["encoder_hidden_states"].clone())

    cond = prepare_conditioning(pipe, SD1, prompt, negative, 1, steps=steps)
    with hooked(pipe.unet, cond, 1) as follow:
        handle = pipe.unet.register_forward_pre_hook(record, with_kwargs=True)
        try:
            image = pipe(**cond.pipeline_kwargs(), num_inference_steps=steps, guidance_scale=cfg,
                         width=64, height=64, generator=torch.Generator().manual_seed(1),
                         callback_on_step_end=follow(lambda *a: {}), output_type="np").images  # fmt: skip
        finally:
            handle.remove()
    return calls, image


def test_sampling_uses_the_scheduled_prompt_of_each_step(sd1):
    calls, _ = _record_unet_calls(sd1, "[cat:dog:2]", "[ugly::3]")
    encoder = PromptEncoder(sd1, SD1, 1)
    cat, dog = encoder.encode("cat").embeds, encoder.encode("dog").embeds
    ugly, empty = encoder.encode("ugly").embeds, encoder.encode("").embeds
    assert len(calls) == 4
    for step, ehs in enumerate(calls):
        assert ehs.shape[0] == 2  # [negative, positive]
        assert torch.equal(ehs[1:2], cat if step < 2 else dog)
        assert torch.equal(ehs[0:1], ugly if step < 3 else empty)


def test_a_second_order_sampler_switches_after_its_share_of_steps(sd1):
    """Heun calls the UNet twice a step (7 calls for 4 steps): `[cat:dog:2]` keeps "cat"
    for the first 2 steps, whose calls end at Euler's 2nd step timestep, not 2 calls."""
    from diffusers import HeunDiscreteScheduler

    euler = sd1.scheduler
    sd1.scheduler = HeunDiscreteScheduler.from_config(euler.config)
    try:
        calls, _ = _record_unet_calls(sd1, "[cat:dog:2]")
    finally:
        sd1.scheduler = euler
    encoder = PromptEncoder(sd1, SD1, 1)
    cat, dog = encoder.encode("cat").embeds, encoder.encode("dog").embeds
    assert len(calls) == 7
    texts = ["cat" if torch.equal(c[1:2], cat) else "dog" if torch.equal(c[1:2], dog) else "?"
             for c in calls]  # fmt: skip
    assert texts == ["cat", "cat", "cat", "dog", "dog", "dog", "dog"]


def test_alternation_changes_every_step(sd1):
    calls, _ = _record_unet_calls(sd1, "[cat|dog]", steps=3)
    encoder = PromptEncoder(sd1, SD1, 1)
    cat, dog = encoder.encode("cat").embeds, encoder.encode("dog").embeds
    assert [torch.equal(c[1:2], cat) for c in calls] == [True, False, True]
    assert torch.equal(calls[1][1:2], dog)


def test_and_batches_every_subprompt_and_combines_them(sd1):
    calls, both = _record_unet_calls(sd1, "cat AND dog :0.5", steps=2)
    assert [c.shape[0] for c in calls] == [3, 3]  # negative, cat, dog
    _, cat = _record_unet_calls(sd1, "cat", steps=2)
    assert not (both == cat).all()
    # u + 0.5 (c - u) + 0.5 (c - u) is c again: composable diffusion's arithmetic
    _, halves = _record_unet_calls(sd1, "cat :0.5 AND cat :0.5", steps=2)
    assert abs(halves - cat).max() < 1e-4


def test_and_without_guidance_still_combines(sd1):
    calls, image = _record_unet_calls(sd1, "cat AND dog", steps=2, cfg=1.0)
    # CFG 1 runs no negative pass (issue 16): the subprompts are averaged by their weights
    assert [c.shape[0] for c in calls] == [2, 2]
    assert image.shape == (1, 64, 64, 3)


def test_sdxl_schedule_and_and_through_the_pipeline(sdxl):
    cond = prepare_conditioning(sdxl, SDXL, "[cat:dog:1] AND bird", "ugly", 1, steps=2)
    seen = []

    def record(module, args, kwargs):
        seen.append(kwargs["added_cond_kwargs"]["text_embeds"].clone())

    with hooked(sdxl.unet, cond, 1) as follow:
        handle = sdxl.unet.register_forward_pre_hook(record, with_kwargs=True)
        try:
            sdxl(**cond.pipeline_kwargs(), num_inference_steps=2, width=64, height=64,
                 generator=torch.Generator().manual_seed(0), output_type="np",
                 callback_on_step_end=follow(None))  # fmt: skip
        finally:
            handle.remove()
    encoder = PromptEncoder(sdxl, SDXL, 1)
    assert [s.shape[0] for s in seen] == [3, 3]
    assert torch.equal(seen[0][1:2], encoder.encode("cat").pooled)
    assert torch.equal(seen[1][1:2], encoder.encode("dog").pooled)  # pooled switches too
    assert torch.equal(seen[1][2:3], encoder.encode("bird").pooled)


MALFORMED = [
    "(((", ")))", "[[[", "]]]", "(a:", "(a:1.2.3)", "[a:b:c]", "[a|", "a|b", "\\", "x\\",
    "[a:b:1:2]", "(:1.1)", "<lora:>", "<lora:x:y:z:w>", "AND", "AND AND", " :5", "BREAK",
    "BREAKBREAK", "[::]", "(a:nan)", "(a:1e5)", "a" * 3000, "😀 (emoji:1.2) [🎨|🖌]",
]  # fmt: skip


@pytest.mark.parametrize("prompt", MALFORMED)
def test_malformed_prompts_never_crash(sd1, prompt):
    cond = prepare_conditioning(sd1, SD1, prompt, prompt, 1, steps=3)
    kwargs = cond.pipeline_kwargs()
    assert kwargs["prompt_embeds"].shape[1] % 77 == 0
    assert kwargs["prompt_embeds"].shape == kwargs["negative_prompt_embeds"].shape
