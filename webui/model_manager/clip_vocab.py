"""The CLIP BPE vocabulary, derived from the file shipped in ``configs/clip``, and a
tokenizer built from it with the ``tokenizers`` library alone.

The OpenAI CLIP vocabulary (also used by OpenCLIP's SD2/SDXL text encoders) is derived
from ``bpe_simple_vocab_16e6.txt.gz`` the same way the original CLIP code does it, so no
hub download is ever needed. ``clip_backend`` gives the token ids of
``tokenizers.clip_tokenizer()`` (transformers' ``CLIPTokenizer``): it counts a prompt's
tokens where transformers and torch must not be imported, as when the UI checks a prompt
before queueing it.

This module must never import torch, transformers or a UI library.
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


@lru_cache(maxsize=1)
def clip_backend():
    """A ``tokenizers.Tokenizer`` giving the token ids of ``clip_tokenizer()`` (built as
    transformers' ``CLIPTokenizer`` builds its backend), without importing transformers."""
    from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    vocab, merges = clip_vocab_and_merges()
    tokenizer = Tokenizer(
        BPE(
            vocab=dict(vocab),
            merges=list(merges),
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
            unk_token=EOS_TOKEN,
        )
    )
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    words = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(words), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.add_special_tokens(
        [AddedToken(token, normalized=False, special=True) for token in (BOS_TOKEN, EOS_TOKEN)]
    )
    return tokenizer
