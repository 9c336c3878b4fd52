"""The T2I style adapter's file (webui/model_manager/t2i_style.py): TencentARC's keys load
into the StyleAdapter as pickle and safetensors, it computes TencentARC's forward, it is
listed as its own kind, and one of another prompt width is refused by name."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.tiny_style_adapter import (
    CONTEXT,
    LAYERS,
    TOKENS,
    save_tiny_style_adapter,
    tiny_style_state,
)
from webui.errors import UserError
from webui.model_manager.controlnet_files import list_controlnets
from webui.model_manager.controlnet_loader import load_control_model
from webui.model_manager.t2i_style import check_fits, load_style_adapter

NAME = "t2iadapter_style_sd14v1"


def _reference(state: dict, hidden: torch.Tensor) -> torch.Tensor:
    """TencentARC's StyleAdapter.forward written out on the raw tensors."""
    width = hidden.shape[-1]

    def norm(x, name):
        return F.layer_norm(x, (width,), state[f"{name}.weight"], state[f"{name}.bias"])

    style = state["style_embedding"].expand(hidden.shape[0], -1, -1)
    x = norm(torch.cat([hidden, style], dim=1), "ln_pre").transpose(0, 1)
    for i in range(LAYERS):
        p = f"transformer_layes.{i}."
        y = norm(x, p + "ln_1")
        x = x + F.multi_head_attention_forward(
            y, y, y, width, 8, state[p + "attn.in_proj_weight"], state[p + "attn.in_proj_bias"],
            None, None, False, 0.0, state[p + "attn.out_proj.weight"],
            state[p + "attn.out_proj.bias"], need_weights=False)[0]  # fmt: skip
        h = F.linear(norm(x, p + "ln_2"), state[p + "mlp.c_fc.weight"], state[p + "mlp.c_fc.bias"])
        h = h * torch.sigmoid(1.702 * h)
        x = x + F.linear(h, state[p + "mlp.c_proj.weight"], state[p + "mlp.c_proj.bias"])
    return norm(x.transpose(0, 1)[:, -TOKENS:], "ln_post") @ state["proj"]


def test_tencentarcs_file_loads_and_computes_their_forward(tmp_path):
    pth = save_tiny_style_adapter(tmp_path / f"{NAME}.pth", seed=3)
    st = save_tiny_style_adapter(tmp_path / "other" / f"{NAME}.safetensors", seed=3)
    hidden = torch.randn(2, 17, 64)
    model = load_style_adapter(pth)
    with torch.no_grad():
        out = model(hidden)
        assert out.shape == (2, TOKENS, CONTEXT)
        assert torch.allclose(out, _reference(tiny_style_state(3), hidden), atol=1e-5)
        assert torch.equal(out, load_style_adapter(st)(hidden))
        unit_model = load_control_model(pth, {"cross_attention_dim": CONTEXT,
                                              "block_out_channels": [32, 64]})  # fmt: skip
        assert unit_model.kind == "t2i-style" and torch.equal(unit_model(hidden), out)


def test_listed_as_the_style_adapter_of_sd1(tmp_path):
    save_tiny_style_adapter(tmp_path / f"{NAME}.pth")
    save_tiny_style_adapter(tmp_path / "style.safetensors")  # by its keys, whatever its name
    listed = {f.name: f for f in list_controlnets(tmp_path).values()}
    assert listed[NAME].kind == "t2i-style" and listed[NAME].family == "SD 1.x"
    assert listed["style"].kind == "t2i-style"


def test_a_broken_file_and_another_width_are_refused_by_name(tmp_path):
    state = tiny_style_state()
    del state["proj"]
    torch.save(state, tmp_path / f"{NAME}.pth")
    with pytest.raises(UserError, match=f"{NAME}.pth: cannot load it"):
        load_style_adapter(tmp_path / f"{NAME}.pth")
    model = load_style_adapter(save_tiny_style_adapter(tmp_path / "ok.pth"))
    check_fits(model, {"cross_attention_dim": CONTEXT}, "ok.pth")
    with pytest.raises(UserError, match="ok.pth makes tokens of width 32"):
        check_fits(model, {"cross_attention_dim": 2048}, "ok.pth")


def test_the_unit_model_cache_refuses_it_on_sdxl(tmp_path):
    from webui.model_manager.controlnet_loader import ControlNetCache

    path = save_tiny_style_adapter(tmp_path / f"{NAME}.pth")
    cache = ControlNetCache("cpu", torch.float32)
    sd1 = {"cross_attention_dim": CONTEXT, "block_out_channels": [32, 64]}
    assert cache.get(path, sd1).kind == "t2i-style"
    with pytest.raises(UserError, match="makes tokens of width 32"):
        cache.get(path, {"cross_attention_dim": 2048, "block_out_channels": [32, 64]})
