"""One prompt must not take the server down (issue 19, item 4).

Measured on the old code, each prompt alone on a fresh demo server: 1,000 nested `(` ->
minutes of work, +2.6 GB, then a 500 (RecursionError); 5,000 nested `(` and 1,000 nested
`[` -> no answer; 500 nested `[a:` -> RecursionError; 3,000 `AND` parts -> gigabytes and
no answer; a 1 MB prompt -> no answer in 150 s. Now every such prompt is refused before it
is queued (422 naming the field and the limit, the same message in the UI), the worker
checks again with the model's tokenizer, and reading a prompt at the limits takes
milliseconds and never recurses.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.api.test_api import golden_payload
from tests.test_security_files import b64, png_bytes
from tests.test_security_limits import peak_growth
from webui.app import create_app
from webui.core.conditioning import PromptEncoder, prepare_conditioning
from webui.core.families import SD1
from webui.core.params import ParamError, Txt2ImgParams
from webui.core.params_img2img import HiresParams
from webui.core.prompt_limits import (
    MAX_AND_PARTS,
    MAX_CHUNKS,
    MAX_CONDITIONING_CHUNKS,
    MAX_NESTING,
    MAX_PROMPT_CHARS,
    PromptLimitError,
    check_prompts,
    clip_chunk_count,
    nesting_depth,
)
from webui.model_manager.clip_vocab import clip_backend
from webui.model_manager.tiny import build_tiny_pipeline
from webui.model_manager.tokenizers import clip_tokenizer
from webui.settings import parse_flags

SECONDS = 5.0  # the old code took minutes; generous for a busy shared machine
MEGABYTES = 200  # the old code took gigabytes

# the issue's six prompts, and what each one is refused for
ISSUE = {
    "1000 nested (": ("(" * 1000 + "cat" + ")" * 1000, "brackets nested 1,000 deep"),
    "5000 nested (": ("(" * 5000 + "cat" + ")" * 5000, "10,003 characters"),
    "1000 nested [": ("[" * 1000 + "cat" + "]" * 1000, "brackets nested 1,000 deep"),
    "500 nested [a:": ("[a:" * 500 + "cat" + ":0.5]" * 500, "brackets nested 500 deep"),
    "3000 AND parts": (" AND ".join(["cat"] * 3000), "23,995 characters"),
    "1 MB": (("a red fox in the snow, " * 50_000)[:1_000_000], "1,000,000 characters"),
}
# one more for each limit, under the length limit
OVER = {
    "nesting": ("(" * 33 + "cat" + ")" * 33, "brackets nested 33 deep; at most 32 are allowed"),
    "AND": (" AND ".join(["cat"] * 17), "17 sub-prompts joined by AND; at most 16"),
    "chunks": ("cat " * 1501, "21 chunks of 75 tokens; at most 20 (1,500 tokens)"),
    "work": ("[a|b|c] [d|e|f|g|h] [i|j|k|l|m|n|o] " + "x " * 300, "chunks to encode; at most 500"),
}


def test_the_limits_are_what_the_readme_says():
    assert (MAX_PROMPT_CHARS, MAX_NESTING, MAX_AND_PARTS, MAX_CHUNKS) == (10_000, 32, 16, 20)
    assert MAX_CONDITIONING_CHUNKS == 500
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for words in ("10,000 characters", "32 deep", "16 sub-prompts", "20 chunks", "500 chunks"):
        assert words in readme


@pytest.mark.parametrize(
    ("text", "depth"),
    [("(((a)))", 3), ("\\(\\(\\[a", 0), (")))(((", 3), ("([)]", 2), ("[a:[b:1]:2] (c)", 2),
     ("(a) (b) [c]", 1), ("\\\\(a)", 1), ("", 0)],
)  # fmt: skip
def test_nesting_depth_counts_as_parse_attention_reads(text, depth):
    assert nesting_depth(text) == depth


# --- before the job is queued ----------------------------------------------------------------


@pytest.mark.parametrize("name", [*ISSUE, *OVER])
def test_validation_refuses_fast_and_never_recurses(name):
    prompt, words = {**ISSUE, **OVER}[name]
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(PromptLimitError) as caught:
        Txt2ImgParams(prompt=prompt, steps=150).validated()
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert isinstance(caught.value, ParamError) and caught.value.field == "prompt"
    assert words in str(caught.value) and str(caught.value).startswith("prompt: ")
    assert seconds < SECONDS and peak < 50 * 2**20


def test_every_prompt_field_is_checked_and_named():
    nested = "(" * 40 + "x" + ")" * 40
    with pytest.raises(PromptLimitError, match="^negative_prompt: brackets nested 40 deep"):
        Txt2ImgParams(negative_prompt=nested).validated()
    for field in ("prompt", "negative_prompt"):
        with pytest.raises(PromptLimitError, match=f"^hr_{field}: brackets nested 40 deep"):
            Txt2ImgParams(hires=HiresParams(**{field: nested})).validated()
    long_hires = HiresParams(prompt="[a|b|c] [d|e|f|g|h] [i|j|k|l|m|n|o] " + "x " * 300)
    Txt2ImgParams(steps=20, hires=long_hires).validated()  # 20 steps: 21 texts
    with pytest.raises(PromptLimitError, match="^hr_prompt: .* over 150 steps"):
        Txt2ImgParams(steps=20, hires=HiresParams(prompt=long_hires.prompt, steps=150)).validated()


def test_and_in_a_negative_prompt_is_plain_text():
    Txt2ImgParams(negative_prompt=" AND ".join(["cat"] * 40)).validated()


def test_a_prompt_just_under_every_limit_is_accepted():
    prompt = just_under_every_limit()
    assert len(prompt) == MAX_PROMPT_CHARS and nesting_depth(prompt) == MAX_NESTING
    assert max(clip_chunk_count(p) for p in prompt.split(" AND ")) == MAX_CHUNKS
    Txt2ImgParams(prompt=prompt, negative_prompt=prompt.split(" AND ")[0], steps=150).validated()


def test_the_conditioning_work_is_counted_over_the_steps():
    """25 options alternating: a text per step, and the negative prompt's own text."""
    prompt = "[" + "|".join("abcdefghijklmnopqrstuvwxy") + "]"
    twenty = lambda text: MAX_CHUNKS  # noqa: E731
    check_prompts(prompt, "", steps=24, count_chunks=twenty)  # 25 texts x 20 = 500
    with pytest.raises(PromptLimitError, match="^prompt: 26 different texts over 25 steps"):
        check_prompts(prompt, "", steps=25, count_chunks=twenty)  # 26 x 20 = 520
    same = f"{prompt} AND{prompt}"  # two AND parts of the same texts: encoded once
    check_prompts(same, "", steps=24, count_chunks=twenty)
    with pytest.raises(PromptLimitError, match="^prompt: 49 different texts"):
        check_prompts(same.replace("AND", "AND "), "", steps=24, count_chunks=twenty)


def just_under_every_limit() -> str:
    """16 AND parts, one nested 32 deep with 20 chunks (1,500 tokens), 10,000 characters."""
    first = "(" * MAX_NESTING + "cat " * 1500 + ")" * MAX_NESTING
    parts = [first] + [f"[dog:fox:{i}] bird" for i in range(1, MAX_AND_PARTS)]
    prompt = " AND ".join(parts)
    return prompt + " " * (MAX_PROMPT_CHARS - len(prompt))


# --- the tokenizer the check counts with ----------------------------------------------------


def test_the_check_tokenizes_as_the_models_tokenizer():
    ours, theirs = clip_backend(), clip_tokenizer()
    rng = random.Random(7)
    pieces = [*"abc XYZ,.!?()[]:|<>\\\t\n", "🦊", "ثعلب", "\u202e", "\u3000", "e\u0301", "１２",
              "<|endoftext|>", "'s", "masterpiece", "  ", "1.5", "ﬁ", "İ", "BREAK", "AND"]  # fmt: skip
    texts = ["".join(rng.choices(pieces, k=rng.randint(0, 40))) for _ in range(500)]
    for text in texts:
        want = theirs([text], truncation=False, add_special_tokens=False)["input_ids"][0]
        assert ours.encode(text, add_special_tokens=False).ids == want, text


@pytest.mark.parametrize(
    "text",
    ["a red fox", "cat " * 150, "a, " * 200, "(a:1.2) BREAK b BREAK BREAK c", "🦊 " * 300,
     "word " * 74 + ", " + "next " * 30, "", just_under_every_limit().split(" AND ")[0]],
)  # fmt: skip
def test_chunks_are_counted_as_the_encoder_lays_them_out(sd1, text):
    assert clip_chunk_count(text) == len(PromptEncoder(sd1, SD1, 1).chunks(text))


# --- in the worker ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd1():
    pipe = build_tiny_pipeline("sd1")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("name", ["1000 nested (", "500 nested [a:", "3000 AND parts", "AND"])
def test_the_worker_checks_again(sd1, name):
    """Scripts and styles make prompts inside the worker: prepare_conditioning refuses."""
    prompt, words = {**ISSUE, **OVER}[name]
    start = time.perf_counter()
    with pytest.raises(PromptLimitError, match=f"^prompt: {words}"):
        prepare_conditioning(sd1, SD1, prompt, "", 1, steps=20)
    assert time.perf_counter() - start < SECONDS
    if name == "AND":
        return  # AND in a negative prompt is text
    with pytest.raises(PromptLimitError, match="^hr_negative_prompt: "):
        prepare_conditioning(sd1, SD1, "a", prompt, 1, steps=20,
                             fields=("hr_prompt", "hr_negative_prompt"))  # fmt: skip


def test_memory_of_a_job_does_not_depend_on_nesting(sd1):
    """A text used at many steps is encoded and padded once, nested or not."""
    longer = "y " * 200  # the negative prompt is the longest: every other text is padded
    flat = prepare_conditioning(sd1, SD1, "[a|b] x", longer, 1, steps=150)
    nested = prepare_conditioning(sd1, SD1, "(" * 31 + "[a|b] x" + ")" * 31, longer, 1,
                                  steps=150)  # fmt: skip
    for cond in (flat, nested):
        items = cond.conds[0].items
        assert len(items) == 150 and len({id(i.embeds) for i in items}) == 2
        assert items[0].embeds.shape == cond.uncond.items[0].embeds.shape


# --- through the API, and the UI ---------------------------------------------------------------


@pytest.fixture(scope="module")
def api(tmp_path_factory, tiny_files) -> Iterator[TestClient]:
    data = tmp_path_factory.mktemp("prompt-limits")
    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    shutil.copy(tiny_files["sd1"], folder / "tiny-sd1.safetensors")
    flags = parse_flags(["--nowebui", "--data-dir", str(data), "--no-download-sd-model"])
    with TestClient(create_app(flags)) as client:
        yield client


def _refused(client: TestClient, route: str, payload: dict, field: str, words: str) -> None:
    jobs = client.app.state.ctx.jobs
    before = len(jobs.jobs())
    with peak_growth() as memory:
        start = time.perf_counter()
        response = client.post(route, json=payload)
        seconds = time.perf_counter() - start
    assert response.status_code == 422, response.text
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["body", field] and words in detail["msg"], detail
    assert "at most" in detail["msg"]
    assert seconds < SECONDS and memory["mb"] < MEGABYTES
    assert len(jobs.jobs()) == before  # nothing queued


@pytest.mark.parametrize("name", [*ISSUE, *OVER])
def test_the_api_refuses_before_queueing(api, name):
    prompt, words = {**ISSUE, **OVER}[name]
    _refused(api, "/sdapi/v1/txt2img", golden_payload(prompt=prompt, steps=150), "prompt", words)
    normal = api.post("/sdapi/v1/txt2img", json=golden_payload(steps=2, width=64, height=64))
    assert normal.status_code == 200, normal.text  # and the server still answers


@pytest.mark.parametrize("name", ["1000 nested (", "3000 AND parts"])
def test_img2img_and_inpaint_refuse_too(api, name):
    prompt, words = ISSUE[name]
    image = b64(png_bytes())
    base = {"init_images": [image], "steps": 2, "width": 64, "height": 64}
    _refused(api, "/sdapi/v1/img2img", {**base, "prompt": prompt}, "prompt", words)
    _refused(api, "/sdapi/v1/img2img", {**base, "mask": image, "negative_prompt": prompt},
             "negative_prompt", words)  # fmt: skip


def test_the_hires_prompt_is_named(api):
    prompt, words = ISSUE["1000 nested ("]
    payload = golden_payload(enable_hr=True, hr_scale=1.0, hr_prompt=prompt)
    _refused(api, "/sdapi/v1/txt2img", payload, "hr_prompt", words)


def test_a_prompt_just_under_every_limit_works_end_to_end(api):
    payload = golden_payload(prompt=just_under_every_limit(), steps=3, width=64, height=64)
    response = api.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 1


def test_the_ui_shows_the_same_message(tmp_path):
    from types import SimpleNamespace

    import gradio as gr

    flags = parse_flags(["--data-dir", str(tmp_path), "--no-download-sd-model"])
    app = create_app(flags)
    try:
        blocks = app.state.gradio_app.get_blocks()
        dep = next(f for f in blocks.fns.values()
                   if f.fn.__name__ == "run" and f.fn.__module__ == "webui.ui.generation_tab"
                   and any(getattr(c, "elem_id", None) == "txt2img_prompt" for c in f.inputs))  # fmt: skip
        values = [
            ISSUE["1000 nested ("][0]
            if getattr(c, "elem_id", None) == "txt2img_prompt"
            else getattr(c, "value", None)
            for c in dep.inputs
        ]
        request = SimpleNamespace(username="ui-user", session_hash="page", cookies={})
        jobs = app.state.ctx.jobs.jobs()
        with pytest.raises(gr.Error) as caught:
            asyncio.run(anext(dep.fn(request, *values)))
        assert caught.value.message == "prompt: brackets nested 1,000 deep; at most 32 are allowed"
        assert app.state.ctx.jobs.jobs() == jobs
    finally:
        app.state.ctx.close()
