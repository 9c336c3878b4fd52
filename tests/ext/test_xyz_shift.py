"""X/Y/Z plot: the "Shift" axis sets SD 3.5's flow-matching shift; a value out of range is
refused by the axis and by the params."""

from __future__ import annotations

import pytest

from webui.core.params import ParamError, Txt2ImgParams
from webui.ext.scripts.xyz_axes import axis_by_label, split_values


def test_the_shift_axis_sets_the_shift():
    axis = axis_by_label("Shift", Txt2ImgParams)
    values = axis.read(split_values("1.5, 3, 6"), None)
    assert values == [1.5, 3.0, 6.0]
    assert axis.apply(Txt2ImgParams(), values[2]).shift == 6.0
    with pytest.raises(ValueError, match="outside"):
        axis.read(split_values("0"), None)


def test_shift_out_of_range_is_refused():
    for bad in (0, -1, 31, float("nan"), True):
        with pytest.raises(ParamError) as caught:
            Txt2ImgParams(shift=bad).validated()
        assert caught.value.field == "shift"
    assert Txt2ImgParams(shift=None).validated().shift is None
