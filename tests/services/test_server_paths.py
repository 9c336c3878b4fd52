"""Folders a request names (training datasets, textual inversion's log folder): inside the
data folder on a server other machines reach, anywhere on a local one."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from webui.core.ti_params import TrainEmbeddingParams
from webui.core.train_params import LoraTrainParams
from webui.services.errors import RequestError
from webui.services.server_paths import request_folder
from webui.services.ti import TiService
from webui.services.training import TrainingService


def test_relative_folders_are_taken_from_the_data_folder(tmp_path: Path) -> None:
    assert (
        request_folder("textual_inversion", "f", tmp_path, True) == tmp_path / "textual_inversion"
    )
    assert request_folder("sets/cats", "f", tmp_path, False) == (tmp_path / "sets/cats").resolve()


def test_outside_the_data_folder_only_where_server_folders_are_allowed(tmp_path: Path) -> None:
    data, outside = tmp_path / "data", tmp_path / "elsewhere"
    data.mkdir()
    assert request_folder(str(outside), "log_directory", data, True) == outside
    for value in (str(outside), "../elsewhere", "/etc"):
        with pytest.raises(RequestError) as err:
            request_folder(value, "log_directory", data, False)
        assert err.value.loc == ("log_directory",) and "inside the data folder" in str(err.value)
    (data / "link").symlink_to(outside, target_is_directory=True)  # no way out by a link
    with pytest.raises(RequestError):
        request_folder("link/x", "log_directory", data, False)


class _Models:
    def resolve(self, name: str) -> str:
        return name


def test_training_services_refuse_outside_folders_when_exposed(tmp_path: Path) -> None:
    """The LoRA and embedding trainers of a server other machines reach: a dataset or log
    folder outside the data folder is a RequestError naming the field, before any job."""
    data = tmp_path / "data"
    data.mkdir()
    flags = SimpleNamespace(lora_dir=data / "models/Lora", data_dir=data,
                            embeddings_dir=data / "embeddings", server_folders_allowed=False)  # fmt: skip
    ctx = SimpleNamespace(models=_Models(), jobs=None, flags=flags, networks=None)
    lora = LoraTrainParams(checkpoint="tiny", train_data_dir=str(tmp_path / "set"),
                           output_name="mine")  # fmt: skip
    with pytest.raises(RequestError) as err:
        TrainingService.of(ctx).submit_lora(lora, owner="bob")
    assert err.value.loc == ("train_data_dir",)
    embedding = TrainEmbeddingParams("cat", data_root=str(tmp_path / "set"))
    service = TiService.of(ctx)
    service.embedding_file = lambda name: data / "embeddings" / "cat.safetensors"  # type: ignore[method-assign]
    with pytest.raises(RequestError) as err:
        service.submit_train(embedding, owner="bob")
    assert err.value.loc == ("data_root",)
    (data / "set").mkdir()  # a dataset inside the data folder: the log folder is checked
    Image.new("RGB", (64, 64)).save(data / "set" / "cat.png")
    outside_log = replace(embedding, data_root="set", log_directory=str(tmp_path / "logs"))
    with pytest.raises(RequestError) as err:
        service.submit_train(outside_log, owner="bob")
    assert err.value.loc == ("log_directory",)
