"""The training set (captions in any encoding, kohya's folders and buckets), the params'
checks and the job store's round trip of a training job: no model needed."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from PIL import Image

from webui.core.job_codec import decode_params, encode
from webui.core.train_dataset import (
    DatasetError,
    assign_buckets,
    caption_for,
    check_batch,
    epoch_batches,
    make_buckets,
    scan_dataset,
)
from webui.core.train_params import (
    KIND,
    LoraTrainJob,
    LoraTrainParams,
    TrainInputError,
    check_train_params,
)


def _image(path, size=(64, 64)):
    Image.new("RGB", size, "red").save(path)


def test_captions_in_any_encoding_repeat_folders_and_tags(tmp_path):
    _image(tmp_path / "plain.png")
    (tmp_path / "plain.txt").write_text("a cat, sitting", encoding="utf-8")
    (tmp_path / "10_dog").mkdir()
    _image(tmp_path / "10_dog" / "wide.jpg", (128, 64))
    (tmp_path / "10_dog" / "wide.txt").write_bytes("一只狗, 草地".encode("gb18030"))
    _image(tmp_path / "10_dog" / "bom.png")
    (tmp_path / "10_dog" / "bom.txt").write_text("café, dog", encoding="utf-16")
    _image(tmp_path / "10_dog" / "bare.webp")  # no caption: the folder's name
    (tmp_path / "notes.md").write_text("not an image")
    data = scan_dataset(tmp_path)
    captions = {i.path.name: (i.caption, i.repeats) for i in data.images}
    assert captions == {"plain.png": ("a cat, sitting", 1), "wide.jpg": ("一只狗, 草地", 10),
                        "bom.png": ("café, dog", 10), "bare.webp": ("dog", 10)}  # fmt: skip
    assert data.count == 31
    assert any("wide.txt: read as gb18030" in n for n in data.notes)
    assert any("bom.txt: read as utf-16" in n for n in data.notes)
    assert data.tag_frequency()["10_dog"]["dog"] == 2
    assert data.folders()["10_dog"] == {"n_repeats": 10, "img_count": 3}


def test_empty_folders_unreadable_images_and_big_batches_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="holds no images"):
        scan_dataset(tmp_path)
    with pytest.raises(DatasetError, match="is not a folder"):
        scan_dataset(tmp_path / "missing")
    (tmp_path / "1_x").mkdir()
    (tmp_path / "1_x" / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError, match=r"1_x/broken.png: not a readable image"):
        scan_dataset(tmp_path)
    (tmp_path / "1_x" / "broken.png").unlink()
    _image(tmp_path / "1_x" / "ok.png")
    with pytest.raises(DatasetError, match="batch size \\(2\\) is larger"):
        check_batch(scan_dataset(tmp_path), 2)


def test_kohya_buckets_and_a_reproducible_epoch_order(tmp_path):
    buckets = make_buckets(512)
    assert (512, 512) in buckets and (768, 320) in buckets and (320, 768) in buckets
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 for w, h in buckets)
    for name, size in (("wide.png", (1000, 500)), ("tall.png", (300, 600)), ("sq.png", (64, 64))):
        _image(tmp_path / name, size)
    images = scan_dataset(tmp_path).images
    placed = {
        i.path.name: b for b, items in assign_buckets(images, 512, True).items() for i in items
    }
    assert placed["sq.png"] == (512, 512)
    assert (
        placed["wide.png"][0] > placed["wide.png"][1]
        and placed["tall.png"][1] > placed["tall.png"][0]
    )
    assert set(assign_buckets(images, 512, False)) == {(512, 512)}
    grouped = assign_buckets(images, 512, False)
    one = [[i.path.name for i in b] for b in epoch_batches(grouped, 2, seed=4, epoch=1)]
    assert one == [[i.path.name for i in b] for b in epoch_batches(grouped, 2, seed=4, epoch=1)]
    assert sorted(len(b) for b in one) == [1, 2]


def test_caption_dropout_and_shuffle_keep_the_first_tags():
    rng = random.Random(1)
    shuffled = {caption_for("a, b, c, d, e", rng, dropout=0, shuffle=True, keep_tokens=2)
                for _ in range(20)}  # fmt: skip
    assert all(s.startswith("a, b, ") for s in shuffled) and len(shuffled) > 1
    assert caption_for("a, b", rng, dropout=1.0, shuffle=False, keep_tokens=0) == ""


PARAMS = LoraTrainParams("tiny", "/data/set", "mine")


@pytest.mark.parametrize(
    "changes, field",
    [({"output_name": "../up"}, "output_name"), ({"resolution": 100}, "resolution"),
     ({"network_dim": 0}, "network_dim"), ({"unet_lr": 0, "text_encoder_lr": 0}, "unet_lr"),
     ({"unet_lr": float("nan")}, "unet_lr"), ({"lr_scheduler": "x"}, "lr_scheduler"),
     ({"max_train_epochs": 0}, "max_train_epochs"), ({"train_batch_size": 0}, "train_batch_size"),
     ({"caption_dropout_rate": 2}, "caption_dropout_rate"), ({"checkpoint": " "}, "checkpoint"),
     ({"caption_extension": "txt"}, "caption_extension"), ({"seed": -5}, "seed")],
)  # fmt: skip
def test_bad_params_name_the_field(changes, field):
    check_train_params(PARAMS)
    with pytest.raises(TrainInputError) as caught:
        check_train_params(replace(PARAMS, **changes))
    assert caught.value.field == field


def test_a_training_job_round_trips_through_the_job_store():
    spec = LoraTrainJob(replace(PARAMS, sample_prompts="a\nb", conv_dim=4), "/m/Lora", "/d/t", 7)
    assert decode_params(KIND, *encode(spec)) == spec
