"""GGUF text encoders: city96's T5-XXL encoder files (`t5-v1_1-xxl-encoder-Q8_0.gguf`,
llama.cpp's architecture "t5encoder") for FLUX.1 and SD 3.5, and Qwen3 files
(`Qwen3-4B-Q8_0.gguf`, architecture "qwen3") for Z-Image, as ComfyUI-GGUF loads them.

Their tensors carry llama.cpp's names (`enc.blk.N.attn_q.weight`, `token_embd.weight`,
`blk.N.ffn_gate.weight`, ...); `gguf_names.hf_name` gives transformers' names (`T5EncoderModel`,
`Qwen3Model`), so the rest of the program sees such a file as it sees a safetensors text
encoder: `flux_gguf.gguf_shapes` and `read_gguf_state` rename them, `flux_keys.module_kind`
/ `zimage_keys.module_kind` tell the kind and read the config from the shapes. Qwen3's
query and key rows are stored in the Hugging Face order (llama.cpp permutes only "llama").
Tokenizers are the ones the program ships (T5 v1.1, Qwen3), not the file's metadata.

The weights stay quantized (`build_t5` / `build_qwen3`: `flux_gguf.quantized_model`, each
linear layer dequantized when it runs), the token embeddings too (`GGUFEmbedding`: only the
rows a prompt looks up are dequantized; ComfyUI-GGUF dequantizes the whole table); T5's
relative position bias (small) is dequantized to the compute dtype. transformers' own
`gguf_file=` loading is not used: it dequantizes every weight to full precision.

This module must never import `webui.core` or a UI library.
"""

from __future__ import annotations

import torch


class GGUFEmbedding(torch.nn.Embedding):
    """A token embedding kept quantized: the rows a call looks up are dequantized (GGUF
    quantizes along a row, so a row is whole blocks) in `compute_dtype`."""

    def __init__(self, weight, compute_dtype: torch.dtype):
        rows = weight.shape[0]
        width = weight.quant_shape[1]
        with torch.device("meta"):
            super().__init__(rows, width)
        self.weight = weight
        self.compute_dtype = compute_dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor

        rows = self.weight.as_tensor()[ids.reshape(-1)]
        values = dequantize_gguf_tensor(GGUFParameter(rows, quant_type=self.weight.quant_type))
        return values.reshape(*ids.shape, -1).to(self.compute_dtype)


# --- models -----------------------------------------------------------------------------
def build_t5(model, state: dict[str, torch.Tensor], dtype: torch.dtype):
    """`model` (a `T5EncoderModel` built without weights) given a GGUF file's tensors in
    transformers' names: the linear layers stay quantized, `encoder.embed_tokens` is
    `shared`, and the feed-forward blocks no longer cast their input to `wo`'s weight dtype
    (transformers keeps `wo` in fp32 that way; a quantized weight's dtype is uint8)."""
    from .flux_gguf import quantized_model

    shared = state["shared.weight"]
    if hasattr(shared, "quant_type"):
        model.shared = model.encoder.embed_tokens = GGUFEmbedding(shared, dtype)
    state = {**state, "encoder.embed_tokens.weight": shared}
    model = quantized_model(model, state, dtype, "T5 text encoder")
    model.encoder.embed_tokens = model.shared  # one tensor, as trained
    for block in model.encoder.block:
        feed_forward = block.layer[-1].DenseReluDense
        feed_forward.__class__ = _feed_forward_class(type(feed_forward))
    return model


def build_qwen3(model, state: dict[str, torch.Tensor], dtype: torch.dtype):
    """`model` (a `Qwen3Model` built without weights) given a GGUF file's tensors in its
    names (the `model.` prefix removed): the linear layers stay quantized."""
    from .flux_gguf import quantized_model

    embedding = state.get("embed_tokens.weight")
    if hasattr(embedding, "quant_type"):
        model.embed_tokens = GGUFEmbedding(embedding, dtype)
    wanted = set(model.state_dict())
    state = {k: v for k, v in state.items() if k in wanted}  # no lm_head (`output.weight`)
    return quantized_model(model, state, dtype, "Qwen3 text encoder")


_FEED_FORWARD: dict[type, type] = {}


def _feed_forward_class(base: type) -> type:
    """T5's gated feed-forward block computing `wo` in the dtype of its input."""
    if base not in _FEED_FORWARD:

        def forward(self, hidden_states):
            gelu = self.act(self.wi_0(hidden_states))
            return self.wo(self.dropout(gelu * self.wi_1(hidden_states)))

        _FEED_FORWARD[base] = type(f"GGUF{base.__name__}", (base,), {"forward": forward})
    return _FEED_FORWARD[base]
