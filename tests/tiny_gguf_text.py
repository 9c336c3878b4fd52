"""Tiny text encoders written as llama.cpp's GGUF files (city96's `t5-v1_1-xxl-encoder-Q8_0.gguf`,
`Qwen3-4B-Q8_0.gguf`): the tensor names come from the gguf package's own name map (llama.cpp's
`t5encoder` and `qwen3` architectures), not from the program's renaming, 2-D weights in Q8_0
and the rest in F32 (`tiny_flux.write_gguf`)."""

from __future__ import annotations

from pathlib import Path

import gguf

from webui.model_manager.tiny_flux import write_gguf


def _write(state: dict, path: Path, arch: gguf.MODEL_ARCH, blocks: int) -> Path:
    names = gguf.get_tensor_name_map(arch, blocks)
    renamed = {}
    for key, tensor in state.items():
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        assert name is not None, key
        renamed[name] = tensor
    return write_gguf(renamed, path, arch=gguf.MODEL_ARCH_NAMES[arch])


def write_t5(t5, path: Path) -> Path:
    """A transformers `T5EncoderModel` as a "t5encoder" GGUF file (`shared` once, as
    `token_embd`)."""
    state = {k: v for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}
    return _write(state, path, gguf.MODEL_ARCH.T5ENCODER, t5.config.num_layers)


def write_qwen3(qwen, path: Path) -> Path:
    """A transformers `Qwen3Model` as a "qwen3" GGUF file."""
    state = {f"model.{k}": v for k, v in qwen.state_dict().items()}
    return _write(state, path, gguf.MODEL_ARCH.QWEN3, qwen.config.num_hidden_layers)
