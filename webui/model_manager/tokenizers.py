"""Offline CLIP tokenizers, built from the BPE file shipped in ``configs/clip``.

The OpenAI CLIP vocabulary (also used by OpenCLIP's SD2/SDXL text encoders) is derived
from ``bpe_simple_vocab_16e6.txt.gz`` the same way the original CLIP code does it, so no
hub download is ever needed.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

BPE_PATH = Path(__file__).parent / "configs" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
OPEN_CLIP_PAD_TOKEN = "!"
MAX_LENGTH = 77
VOCAB_SIZE = 49408
_NUM_MERGES = VOCAB_SIZE - 256 * 2 - 2  # 48894


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2 mapping of every byte to a printable unicode character."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The 49408-entry CLIP vocabulary and its BPE merges."""
    lines = gzip.decompress(BPE_PATH.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
    tokens = list(bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(pair) for pair in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise RuntimeError(f"derived CLIP vocabulary has {len(vocab)} entries, not {VOCAB_SIZE}")
    return vocab, merges


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
