"""The shipped Qwen3 tokenizer (Z-Image): Qwen's own ids, Chinese unchanged, the chat
template diffusers' ZImagePipeline applies."""

from __future__ import annotations

import pytest

from webui.model_manager.qwen_tokenizer import QWEN_VOCAB_SIZE, qwen_tokenizer

CAT = "一只可爱的猫咪，坐在窗台上看着窗外的雨"


@pytest.fixture(scope="module")
def tokenizer():
    return qwen_tokenizer()  # about 3 s to build


def test_qwen_tokenizer_gives_qwens_ids_offline(tokenizer):
    assert len(tokenizer) == QWEN_VOCAB_SIZE
    assert tokenizer("hello world").input_ids == [14990, 1879]  # Qwen2.5 / Qwen3's ids
    assert tokenizer("Hello, world!").input_ids == [9707, 11, 1879, 0]  # llama.cpp's vectors
    assert tokenizer(" discards").input_ids == [2560, 2347]
    assert tokenizer.pad_token_id == 151643 and tokenizer.eos_token_id == 151645
    assert tokenizer.convert_tokens_to_ids("</think>") == 151668


def test_chinese_prompt_round_trips_unchanged(tokenizer):
    ids = tokenizer(CAT).input_ids
    assert ids == [102292, 108541, 116076, 3837, 104427, 100237, 108141, 101952, 111510,
                   9370, 100029]  # fmt: skip
    assert tokenizer.decode(ids) == CAT


def test_chat_template_is_qwen3s_for_a_user_prompt(tokenizer):
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hello world"}],
                                         tokenize=False, add_generation_prompt=True,
                                         enable_thinking=True)  # fmt: skip
    assert text == "<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer(text).input_ids == [151644, 872, 198, 14990, 1879, 151645, 198, 151644,
                                         77091, 198]  # fmt: skip
