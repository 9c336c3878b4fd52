"""The Train tab's parts that need no browser: controls to params, the loss curve's data."""

from __future__ import annotations

from types import SimpleNamespace

from webui.core.train_params import LoraTrainParams
from webui.ui.train_tab import DEFAULTS, FIELDS, _params, loss_frame


def test_the_controls_values_become_params_empty_numbers_the_defaults():
    values = {name: getattr(DEFAULTS, name) for name in FIELDS}
    values.update(checkpoint="tiny [abc]", train_data_dir=" /data/set ", output_name="mine",
                  network_dim=16.0, unet_lr=None, seed="", sample_prompts="a cat\nred")  # fmt: skip
    params = _params(values)
    assert isinstance(params, LoraTrainParams)
    assert params.network_dim == 16 and isinstance(params.network_dim, int)
    assert params.unet_lr == DEFAULTS.unet_lr and params.seed == -1
    assert params.train_data_dir == "/data/set" and params.sample_prompts == "a cat\nred"


def test_the_loss_curve_is_drawn_from_the_jobs_log():
    frame = loss_frame(SimpleNamespace(losses=[(1, 0.5), (2, 0.25)]))
    assert list(frame["step"]) == [1, 2] and list(frame["loss"]) == [0.5, 0.25]
    assert loss_frame(None).empty
