"""X/Y/Z plot: Forge's "Distilled CFG Scale" axis sets FLUX's guidance, and the params
refuse a value out of range."""

from __future__ import annotations

import pytest

from webui.core.params import ParamError, Txt2ImgParams
from webui.ext.scripts.xyz_axes import axis_by_label, split_values


def test_the_distilled_cfg_axis_sets_the_guidance():
    axis = axis_by_label("Distilled CFG Scale", Txt2ImgParams)
    values = axis.read(split_values("2.5, 4"), None)
    assert values == [2.5, 4.0]
    assert axis.apply(Txt2ImgParams(), values[1]).distilled_cfg_scale == 4.0


def test_distilled_cfg_out_of_range_is_refused():
    with pytest.raises(ParamError) as caught:
        Txt2ImgParams(distilled_cfg_scale=31).validated()
    assert caught.value.field == "distilled_cfg_scale"
