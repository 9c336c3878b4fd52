"""SD 3.5's "Shift" slider: shown with SD 3.5's defaults when such a checkpoint is
chosen (read from its header by the model manager), hidden for the others, whose controls
are left as they are."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from webui.ui.sd3_controls import SD3_PRESET, shift_controls


class _Models:
    shifts = {"sd3.5-large": 3.0, "flux1-dev": None}

    def resolve(self, title):
        if title not in self.shifts:
            raise LookupError(title)
        return title

    def flow_shift(self, info):
        return self.shifts[info]


CTX = SimpleNamespace(models=_Models())


def test_an_sd3_checkpoint_shows_the_slider_with_its_defaults():
    shift, *preset = shift_controls(CTX, "sd3.5-large")
    assert shift["visible"] is True and shift["value"] == 3.0
    assert tuple(preset) == SD3_PRESET == (3.5, "Euler", "Simple")


def test_other_or_unknown_checkpoints_hide_it_and_leave_the_rest():
    for title in ("flux1-dev", "missing", None):
        shift, *rest = shift_controls(CTX, title)
        assert shift["visible"] is False
        assert all(isinstance(r, type(gr.skip())) for r in rest)
