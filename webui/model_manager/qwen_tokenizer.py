"""The Qwen3 tokenizer of Z-Image's text encoder, offline: transformers' `Qwen2Tokenizer`
(Qwen3 uses Qwen2.5's byte-level BPE) built from the `tokenizer.json` shipped in
`configs/qwen` (`configs/qwen/SOURCE.md` says where it comes from), with a chat template
that writes what Qwen3's writes for user and system messages (`CHAT_TEMPLATE`).

This module must never touch the network, never import `webui.core` or a UI library.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

QWEN_TOKENIZER_PATH = Path(__file__).parent / "configs" / "qwen" / "tokenizer.json.gz"
QWEN_VOCAB_SIZE = 151_669  # 151 643 BPE tokens and Qwen3's 26 added tokens
PAD_TOKEN, EOS_TOKEN = "<|endoftext|>", "<|im_end|>"  # Qwen3's tokenizer_config
# Qwen3's template without tools and reasoning history: "<|im_start|>user\n{text}<|im_end|>\n"
# per message, then "<|im_start|>assistant\n" (and the empty think block when thinking is
# switched off), as diffusers' ZImagePipeline asks for it
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    return gzip.decompress(QWEN_TOKENIZER_PATH.read_bytes()).decode("utf-8")


@lru_cache(maxsize=2)
def qwen_tokenizer(max_length: int = 131_072):
    """Qwen3's tokenizer: pads with `<|endoftext|>` (151643), no BOS, `<|im_end|>` ends.

    One instance per process (building it takes seconds): the pipelines that share it call
    it from the one worker thread, and nothing here changes its settings."""
    from tokenizers import Tokenizer
    from transformers import Qwen2Tokenizer

    tokenizer = Qwen2Tokenizer(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,
        bos_token=None,
        model_max_length=max_length,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
