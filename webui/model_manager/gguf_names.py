"""llama.cpp's tensor names of GGUF text encoders (architectures "t5encoder" and "qwen3")
and transformers' names for them (`hf_name`), and such a file's tensor shapes in
transformers' names read from its header alone (`gguf_shapes`). The models are built by
`gguf_text`.

This module reads headers only: it must never import torch or a UI library.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

T5_ARCHITECTURES = ("t5encoder", "t5")
QWEN3_ARCHITECTURES = ("qwen3",)
TEXT_ARCHITECTURES = T5_ARCHITECTURES + QWEN3_ARCHITECTURES

_T5_BLOCK = {  # inside `enc.blk.N.` -> inside `encoder.block.N.`
    "attn_q": "layer.0.SelfAttention.q",
    "attn_k": "layer.0.SelfAttention.k",
    "attn_v": "layer.0.SelfAttention.v",
    "attn_o": "layer.0.SelfAttention.o",
    "attn_rel_b": "layer.0.SelfAttention.relative_attention_bias",
    "attn_norm": "layer.0.layer_norm",
    "ffn_gate": "layer.1.DenseReluDense.wi_0",
    "ffn_up": "layer.1.DenseReluDense.wi_1",
    "ffn_down": "layer.1.DenseReluDense.wo",
    "ffn_norm": "layer.1.layer_norm",
}
_T5_TOP = {"token_embd": "shared", "enc.output_norm": "encoder.final_layer_norm"}
_QWEN3_BLOCK = {  # inside `blk.N.` -> inside `model.layers.N.`
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_norm": "post_attention_layernorm",
}
_QWEN3_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK = re.compile(r"^(enc\.)?blk\.(\d+)\.(\w+)\.(weight|bias)$")


def architecture(reader: Any) -> str:
    """A `GGUFReader`'s `general.architecture`, lower case ("" when it has none)."""
    field = reader.get_field("general.architecture")
    return str(field.contents() if field is not None else "").lower()


def hf_name(arch: str, name: str) -> str:
    """transformers' name of a llama.cpp tensor name of a text encoder of architecture
    `arch`; a name it does not know (a decoder's) is kept."""
    t5 = arch in T5_ARCHITECTURES
    block, top = (_T5_BLOCK, _T5_TOP) if t5 else (_QWEN3_BLOCK, _QWEN3_TOP)
    found = _BLOCK.match(name)
    if found is not None:
        encoder, index, part, kind = found.groups()
        if part in block and bool(encoder) == t5:
            outer = "encoder.block" if t5 else "model.layers"
            return f"{outer}.{index}.{block[part]}.{kind}"
        return name
    stem, dot, kind = name.rpartition(".")
    return f"{top[stem]}.{kind}" if dot and stem in top else name


def renamed(arch: str, tensors: dict[str, Any]) -> dict[str, Any]:
    """`tensors` in transformers' names when `arch` is a text encoder's, else as they are."""
    if arch not in TEXT_ARCHITECTURES:
        return tensors
    return {hf_name(arch, name): value for name, value in tensors.items()}


def file_architecture(path) -> str:
    from gguf import GGUFReader

    return architecture(GGUFReader(str(path)))


def gguf_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and their logical (torch-order) shapes, without reading the weights;
    a text encoder's in transformers' names."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    shapes = {t.name: tuple(int(n) for n in reversed(t.shape.tolist())) for t in reader.tensors}
    return renamed(architecture(reader), shapes)
