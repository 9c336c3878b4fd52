"""Offline CLIP tokenizers (transformers' ``CLIPTokenizer``), built from the BPE file
shipped in ``configs/clip`` (see ``clip_vocab``), so no hub download is ever needed.
"""

from __future__ import annotations

from .clip_vocab import (
    BOS_TOKEN,
    EOS_TOKEN,
    MAX_LENGTH,
    OPEN_CLIP_PAD_TOKEN,
    clip_vocab_and_merges,
)

__all__ = ["EOS_TOKEN", "OPEN_CLIP_PAD_TOKEN", "clip_tokenizer"]


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
