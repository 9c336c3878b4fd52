"""The Speed accordion: its values become override settings; an infotext fills it back."""

from __future__ import annotations

import pytest

from webui.imaging.infotext import parse_infotext
from webui.ui.common import InputError
from webui.ui.speed_controls import speed_fill, speed_overrides


def test_empty_fields_leave_the_settings_alone():
    empty = {"token_merging_ratio": None, "deepcache_interval": "", "deepcache_branch": " "}
    assert speed_overrides(empty) == {}
    assert speed_overrides({"deepcache_interval": " 3 "}) == {"deepcache_interval": 3}


def test_the_fields_start_empty_not_zero():
    """Gradio's Number shows an empty value as "0", which a user reads as "off"."""
    import gradio as gr

    from webui.ui.speed_controls import SPEED_OPTIONS, add_speed_controls

    class Named(dict):
        def add(self, name, component):
            self[name] = component

    named = Named()
    with gr.Blocks():
        add_speed_controls(named, "t")
    assert set(named) == set(SPEED_OPTIONS)
    for component in named.values():
        assert isinstance(component, gr.Textbox) and component.value == ""
        assert component.placeholder == "Settings"


def test_values_become_override_settings():
    values = {"token_merging_ratio": 0.5, "deepcache_interval": 3.0, "deepcache_branch": 0}
    assert speed_overrides(values) == {"token_merging_ratio": 0.5, "deepcache_interval": 3,
                                       "deepcache_branch": 0}  # fmt: skip


@pytest.mark.parametrize(
    ("name", "value", "label"),
    [("deepcache_interval", 2.5, "DeepCache interval"), ("deepcache_interval", 11, "DeepCache"),
     ("token_merging_ratio", 0.95, "Token merging ratio"), ("deepcache_branch", "x", "branch")],
)  # fmt: skip
def test_bad_values_are_a_message_naming_the_field(name, value, label):
    with pytest.raises(InputError, match=label):
        speed_overrides({name: value})


def test_an_infotext_fills_the_accordion_and_empties_what_it_lacks():
    controls = {"Token merging ratio": "tome", "DeepCache interval": "interval",
                "DeepCache branch": "branch"}  # fmt: skip
    fields = parse_infotext("a fox\nSteps: 4, Sampler: Euler, DeepCache: 3, Seed: 1")
    assert speed_fill(fields, controls) == {"tome": "", "interval": "3", "branch": ""}


def test_the_flux_caches_go_and_come_back_the_same_way():
    values = {"first_block_cache_threshold": 0.12, "taylorseer_interval": 3.0}
    assert speed_overrides(values) == {"first_block_cache_threshold": 0.12,
                                       "taylorseer_interval": 3}  # fmt: skip
    with pytest.raises(InputError, match="TaylorSeer interval"):
        speed_overrides({"taylorseer_interval": 2.5})
    controls = {"First Block Cache threshold": "fbc", "TaylorSeer interval": "taylor"}
    fields = parse_infotext("a fox\nSteps: 4, Sampler: Euler, First Block Cache: 0.12, Seed: 1")
    assert speed_fill(fields, controls) == {"fbc": "0.12", "taylor": ""}
