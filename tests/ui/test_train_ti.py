"""The Train tab's "Textual inversion" part without a browser: controls to params, and
refusals shown under A1111's labels."""

from __future__ import annotations

from webui.core.ti_params import TrainEmbeddingParams
from webui.services.errors import RequestError
from webui.ui.train_ti import LABELS, TRAIN, TRAIN_FIELDS, _error, _train_params


def test_the_controls_values_become_params_empty_values_the_defaults():
    values = {name: getattr(TRAIN, name) for name in TRAIN_FIELDS}
    values.update(embedding_name="mine", data_root=" /data/set ", batch_size=2.0, steps=None,
                  training_width=64.0, learn_rate="", tag_drop_out=0.5)  # fmt: skip
    params = _train_params(values)
    assert isinstance(params, TrainEmbeddingParams)
    assert params.batch_size == 2 and isinstance(params.batch_size, int)
    assert params.training_width == 64 and isinstance(params.training_width, int)
    assert params.steps == TRAIN.steps and params.learn_rate == TRAIN.learn_rate
    assert params.data_root == "/data/set" and params.tag_drop_out == 0.5


def test_every_field_has_a1111s_label_and_refusals_name_it():
    assert all(name in LABELS for name in TRAIN_FIELDS)
    assert LABELS["learn_rate"] == "Embedding Learning rate"
    message = _error(RequestError(("data_root",), "/x is not a folder"))
    assert message == "Dataset directory: /x is not a folder"
