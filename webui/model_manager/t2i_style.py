"""The T2I style adapter (`t2iadapter_style_sd14v1.pth`): CLIP vision tokens -> prompt tokens.

TencentARC's StyleAdapter, as sd-webui-controlnet runs it: the last hidden state of CLIP
ViT-L/14's vision tower (257 tokens of width 1024) gets `num_token` learned style
embeddings appended, goes through a layer norm, a few pre-norm transformer blocks
(`torch.nn.MultiheadAttention`, QuickGELU MLP) and a second layer norm; the style
embeddings' outputs are projected to the text encoder's width (768): 8 tokens that the
worker appends to the prompt's cross-attention context (`core/t2i_style.py`).

The file's keys are TencentARC's (`style_embedding`, `ln_pre.*`, `ln_post.*`, `proj`,
`transformer_layes.N.attn.in_proj_weight`, ..., `.mlp.c_fc.*`, `.mlp.c_proj.*`; an
`adapter.` prefix is taken off); widths, token and block counts are read from the tensors.
The head count is not in them: 8, the extension's `t2i_adapter_style_config`. `.pth`
files are read through the project's restricted unpickler.

This module must never import a UI library.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError

HEADS = 8  # sd-webui-controlnet's t2i_adapter_style_config (not stored in the file)
KIND = "t2i-style"
_BLOCK = re.compile(r"transformer_layes\.(\d+)\.")


class StyleAdapterLoadError(UserError):
    """A style adapter file that cannot be read or does not fit the checkpoint."""


def is_style_state(keys) -> bool:
    """Whether a state dict's keys are a style adapter's."""
    return any(k.removeprefix("adapter.") == "style_embedding" for k in keys)


class _LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (as CLIP's, for half-precision weights)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _Block(nn.Module):
    """A pre-norm transformer block (CLIP's ResidualAttentionBlock names)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = _LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, width * 4))
        self.mlp.add_module("gelu", _QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(width * 4, width))
        self.ln_2 = _LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (tokens, batch, width)
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class StyleAdapter(nn.Module):
    """CLIP vision hidden states (batch, tokens, width) -> style tokens (batch, n, context)."""

    kind = KIND

    def __init__(self, width: int = 1024, context_dim: int = 768, heads: int = HEADS,
                 layers: int = 3, tokens: int = 8):  # fmt: skip
        super().__init__()
        self.transformer_layes = nn.Sequential(*[_Block(width, heads) for _ in range(layers)])
        self.style_embedding = nn.Parameter(torch.zeros(1, tokens, width))
        self.ln_pre = _LayerNorm(width)
        self.ln_post = _LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, context_dim))

    @property
    def tokens(self) -> int:
        return self.style_embedding.shape[1]

    @property
    def width(self) -> int:
        return self.style_embedding.shape[2]

    @property
    def context_dim(self) -> int:
        return self.proj.shape[1]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        style = self.style_embedding.to(hidden.dtype).expand(hidden.shape[0], -1, -1)
        x = self.ln_pre(torch.cat([hidden, style], dim=1))
        x = self.transformer_layes(x.permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x[:, -self.tokens :, :]) @ self.proj


def _read(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    from .loader import _load_ckpt

    return _load_ckpt(path)


def style_from_state(state: dict[str, torch.Tensor], name: str) -> StyleAdapter:
    """A StyleAdapter (float32) with a state dict's weights, its sizes read from them."""
    state = {k.removeprefix("adapter."): v for k, v in state.items()}
    try:
        _, tokens, width = state["style_embedding"].shape
        layers = 1 + max((int(m[1]) for k in state if (m := _BLOCK.match(k))), default=-1)
        if width % HEADS:
            raise ValueError(f"width {width} is not a multiple of {HEADS} heads")
        model = StyleAdapter(width, state["proj"].shape[1], HEADS, layers, tokens)
        model.load_state_dict(state, strict=True)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise StyleAdapterLoadError(f"T2I style adapter {name}: cannot load it ({exc})") from exc
    return model.float().eval()


def load_style_adapter(path: Path) -> StyleAdapter:
    """The style adapter of a `.pth` / `.safetensors` file (float32, CPU)."""
    return style_from_state(_read(path), path.name)


def check_fits(model: StyleAdapter, unet_config: dict, name: str) -> None:
    """StyleAdapterLoadError when the adapter's tokens are not the UNet's context width
    (the published adapter is SD 1.x's: 768)."""
    width = unet_config.get("cross_attention_dim")
    if isinstance(width, list | tuple):
        width = width[0]
    if width != model.context_dim:
        raise StyleAdapterLoadError(f"T2I style adapter {name} makes tokens of width "
                                    f"{model.context_dim} (SD 1.x: 768); this checkpoint's "
                                    f"prompt width is {width}")  # fmt: skip
