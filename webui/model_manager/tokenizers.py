"""Offline tokenizers, so no hub download is ever needed: CLIP (transformers'
``CLIPTokenizer``, built from the BPE file shipped in ``configs/clip``, see ``clip_vocab``)
and T5 v1.1 (``T5TokenizerFast`` from the ``tokenizer.json`` shipped in ``configs/t5``,
FLUX.1's second tokenizer; ``configs/t5/SOURCE.md`` says where it comes from).
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

from .clip_vocab import (
    BOS_TOKEN,
    EOS_TOKEN,
    MAX_LENGTH,
    OPEN_CLIP_PAD_TOKEN,
    clip_vocab_and_merges,
)

__all__ = ["EOS_TOKEN", "OPEN_CLIP_PAD_TOKEN", "clip_tokenizer", "t5_tokenizer"]

T5_TOKENIZER_PATH = Path(__file__).parent / "configs" / "t5" / "tokenizer.json.gz"


def clip_tokenizer(pad_token: str = EOS_TOKEN):
    """A ``CLIPTokenizer`` with the exact openai/clip-vit-large-patch14 vocabulary.

    SD1 and SDXL's first tokenizer pad with ``<|endoftext|>`` (the default); the OpenCLIP
    tokenizers of SD2 and SDXL's ``tokenizer_2`` pad with ``"!"`` (id 0).
    """
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        unk_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=pad_token,
        model_max_length=MAX_LENGTH,
    )


@lru_cache(maxsize=1)
def _t5_tokenizer_json() -> str:
    return gzip.decompress(T5_TOKENIZER_PATH.read_bytes()).decode("utf-8")


def t5_tokenizer(max_length: int = 512):
    """A ``T5TokenizerFast`` with T5 v1.1's vocabulary (32 000 pieces and 100 extra ids),
    as FLUX.1's ``tokenizer_2``: pads with ``<pad>`` (id 0), ends with ``</s>`` (id 1)."""
    from tokenizers import Tokenizer
    from transformers import T5TokenizerFast

    return T5TokenizerFast(
        tokenizer_object=Tokenizer.from_str(_t5_tokenizer_json()),
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=100,
        model_max_length=max_length,
    )
