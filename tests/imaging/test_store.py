"""Tests for webui.imaging.store: outputs layout, counter, atomic and concurrent saves."""

from __future__ import annotations

import errno
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from webui.imaging.infotext import parse_infotext, read_infotext_from_image
from webui.imaging.store import (
    OutputStore,
    apply_filename_pattern,
    next_sequence_number,
    sanitize_filename_part,
)

WHEN = datetime(2024, 5, 6, 7, 8, 9)
INFOTEXT = "a 🐱 cat, on a mat\nNegative prompt: dog\nSteps: 20, Seed: 42, Size: 16x16"


def _image(mode: str = "RGB") -> Image.Image:
    return Image.new(mode, (16, 16), "red" if mode != "RGBA" else (255, 0, 0, 128))


def _names(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_layout_and_counter(tmp_path: Path) -> None:
    store = OutputStore(tmp_path)
    first = store.save(_image(), kind="txt2img", seed=42, infotext=INFOTEXT, when=WHEN)
    second = store.save(_image(), kind="txt2img", seed=42, infotext=INFOTEXT, when=WHEN)
    assert first == tmp_path / "txt2img-images" / "2024-05-06" / "00000-42.png"
    assert second.name == "00001-42.png"
    other = store.save(_image(), kind="img2img", seed=7, infotext=INFOTEXT, when=WHEN)
    assert other == tmp_path / "img2img-images" / "2024-05-06" / "00000-7.png"
    extra = store.save(_image(), kind="extras", seed=0, infotext="", when=WHEN)
    assert extra.parent == tmp_path / "extras-images" / "2024-05-06"
    grid = store.save_grid(_image(), kind="txt2img", infotext=INFOTEXT, when=WHEN)
    assert grid == tmp_path / "txt2img-grids" / "2024-05-06" / "grid-0000.png"
    assert store.save_grid(_image(), kind="txt2img", infotext="", when=WHEN).name == "grid-0001.png"


def test_counter_follows_largest_leading_number(tmp_path: Path) -> None:
    folder = tmp_path / "txt2img-images" / "2024-05-06"
    folder.mkdir(parents=True)
    for name in ["00041-1.png", "00007-9.jpg", "notes.txt", ".tmp-99999.png", "grid-0500.png"]:
        (folder / name).write_bytes(b"x")
    assert next_sequence_number(folder) == 42
    assert next_sequence_number(folder, "grid-") == 501
    assert next_sequence_number(tmp_path / "missing") == 0
    path = OutputStore(tmp_path).save(_image(), kind="txt2img", seed=5, infotext="", when=WHEN)
    assert path.name == "00042-5.png"


def test_never_overwrites_a_name_taken_after_the_scan(tmp_path: Path, monkeypatch: Any) -> None:
    folder = tmp_path / "txt2img-images" / "2024-05-06"
    folder.mkdir(parents=True)
    (folder / "00000-1.png").write_bytes(b"someone else")
    monkeypatch.setattr("webui.imaging.store.next_sequence_number", lambda *_a: 0)
    path = OutputStore(tmp_path).save(_image(), kind="txt2img", seed=1, infotext="", when=WHEN)
    assert path.name == "00001-1.png"
    assert (folder / "00000-1.png").read_bytes() == b"someone else"


@pytest.mark.parametrize(
    ("fmt", "suffix"), [("png", ".png"), ("jpg", ".jpg"), ("JPEG", ".jpg"), ("webp", ".webp")]
)
def test_infotext_read_back(tmp_path: Path, fmt: str, suffix: str) -> None:
    store = OutputStore(tmp_path)
    path = store.save(
        _image("RGBA"), kind="txt2img", seed=42, infotext=INFOTEXT, fmt=fmt, when=WHEN
    )
    assert path.suffix == suffix
    with Image.open(path) as img:
        assert read_infotext_from_image(img) == INFOTEXT
    assert parse_infotext(INFOTEXT)["Prompt"] == "a 🐱 cat, on a mat"


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    store = OutputStore(tmp_path)
    with pytest.raises(ValueError, match="format"):
        store.save(_image(), kind="txt2img", seed=1, infotext="", fmt="bmp")
    for kind in ["../x", "", "a/b", "txt2img\x00"]:
        with pytest.raises(ValueError, match="kind"):
            store.save(_image(), kind=kind, seed=1, infotext="")
    with pytest.raises(ValueError, match="too long for JPEG"):
        store.save(_image(), kind="txt2img", seed=1, infotext="x" * 40_000, fmt="jpg", when=WHEN)
    assert _names(tmp_path / "txt2img-images" / "2024-05-06") == []


def _check_distinct_complete(paths: list[Path], count: int) -> None:
    assert len(set(paths)) == count
    folder = paths[0].parent
    assert sorted(p.name for p in paths) == [f"{i:05d}-7.png" for i in range(count)]
    assert _names(folder) == sorted(p.name for p in paths)  # no temporary files left
    for path in paths:
        with Image.open(path) as img:
            img.load()
            assert read_infotext_from_image(img) == INFOTEXT


def test_fifty_threads_one_store(tmp_path: Path) -> None:
    store = OutputStore(tmp_path)
    barrier = threading.Barrier(50)

    def save(_: int) -> Path:
        barrier.wait()
        return store.save(_image(), kind="txt2img", seed=7, infotext=INFOTEXT, when=WHEN)

    with ThreadPoolExecutor(50) as pool:
        _check_distinct_complete(list(pool.map(save, range(50))), 50)


@pytest.mark.parametrize("hardlinks", [True, False])
def test_fifty_threads_separate_stores(tmp_path: Path, monkeypatch: Any, hardlinks: bool) -> None:
    """Separate stores share no lock: only the exclusive claim keeps names distinct."""
    if not hardlinks:

        def no_link(*_args: object) -> None:
            raise PermissionError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_link)
    barrier = threading.Barrier(50)

    def save(_: int) -> Path:
        store = OutputStore(tmp_path)
        barrier.wait()
        return store.save(_image(), kind="txt2img", seed=7, infotext=INFOTEXT, when=WHEN)

    with ThreadPoolExecutor(50) as pool:
        _check_distinct_complete(list(pool.map(save, range(50))), 50)


def _save_in_process(root: str) -> list[str]:
    store = OutputStore(Path(root))
    return [
        str(store.save(_image(), kind="txt2img", seed=7, infotext=INFOTEXT, when=WHEN))
        for _ in range(10)
    ]


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_several_processes(tmp_path: Path) -> None:
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("fork")) as pool:
        results = list(pool.map(_save_in_process, [str(tmp_path)] * 4))
    _check_distinct_complete([Path(p) for batch in results for p in batch], 40)


def _failing_save(exc: BaseException) -> Any:
    def save(self: Image.Image, fp: Any, *args: object, **kwargs: object) -> None:
        fp.write(b"\x89PNG partial data")
        raise exc

    return save


@pytest.mark.parametrize(
    "exc",
    [RuntimeError("encoder crashed"), OSError(errno.ENOSPC, "No space left on device")],
)
def test_failed_encoding_leaves_nothing(
    tmp_path: Path, monkeypatch: Any, exc: BaseException
) -> None:
    store = OutputStore(tmp_path)
    store.save(_image(), kind="txt2img", seed=1, infotext="", when=WHEN)
    folder = tmp_path / "txt2img-images" / "2024-05-06"
    with monkeypatch.context() as patch:
        patch.setattr(Image.Image, "save", _failing_save(exc))
        with pytest.raises(type(exc)):
            store.save(_image(), kind="txt2img", seed=2, infotext="", when=WHEN)
    assert _names(folder) == ["00000-1.png"]
    assert (
        store.save(_image(), kind="txt2img", seed=3, infotext="", when=WHEN).name == "00001-3.png"
    )


def test_enospc_on_fsync_leaves_nothing(tmp_path: Path, monkeypatch: Any) -> None:
    store = OutputStore(tmp_path)

    def full_disk(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", full_disk)
        with pytest.raises(OSError) as info:
            store.save(_image(), kind="txt2img", seed=1, infotext=INFOTEXT, when=WHEN)
    assert info.value.errno == errno.ENOSPC
    folder = tmp_path / "txt2img-images" / "2024-05-06"
    assert _names(folder) == []
    assert (
        store.save(_image(), kind="txt2img", seed=1, infotext="", when=WHEN).name == "00000-1.png"
    )


def test_failed_claim_leaves_nothing(tmp_path: Path, monkeypatch: Any) -> None:
    def broken_link(*_args: object) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "link", broken_link)
    with pytest.raises(OSError):
        OutputStore(tmp_path).save(_image(), kind="txt2img", seed=1, infotext="", when=WHEN)
    assert _names(tmp_path / "txt2img-images" / "2024-05-06") == []


def test_filename_pattern_tokens() -> None:
    values = {
        "seed": 12,
        "prompt": "A red, fox: (jumping)!! over the lazy dog and more words here",
        "model_name": "sd15",
        "steps": 20,
        "sampler": "Euler a",
        "width": 512,
        "height": 768,
    }
    pattern = "[seed]-[prompt_words]-[MODEL_NAME]-[date]-[datetime<%H%M>]-[steps]-[sampler]-[width]x[height]-[nope]"
    assert apply_filename_pattern(pattern, values, WHEN) == (
        "12-A red fox jumping over the lazy dog-sd15-2024-05-06-0708-20-Euler a-512x768-[nope]"
    )
    assert apply_filename_pattern("[datetime]", {}, WHEN) == "20240506070809"
    assert apply_filename_pattern("[model_name]", {}, WHEN) == ""
    assert apply_filename_pattern("[prompt_words]", {"prompt": ",,"}, WHEN) == "empty"
    assert apply_filename_pattern("[model_name]", {"model_name": "../a"}, WHEN) == "__a"
    assert apply_filename_pattern("[datetime<%Y/%m>]", {}, WHEN) == "2024_05"
    assert len(apply_filename_pattern("[model_name]", {"model_name": "é" * 500}, WHEN)) == 64


def test_sanitize_filename_part() -> None:
    assert sanitize_filename_part("../../etc/passwd") == "____etc_passwd"
    assert sanitize_filename_part('a\\b<c>d:e"f|g?h*i') == "a_b_c_d_e_f_g_h_i"
    assert (
        sanitize_filename_part("nul\x00byte\nline\u2028sep\u202eevil") == "nul_byte_line_sep_evil"
    )
    assert sanitize_filename_part("CON") == "CON_"
    assert sanitize_filename_part("com1.txt") == "com1_.txt"
    assert sanitize_filename_part(" ..hidden. ") == "_hidden"
    assert sanitize_filename_part("bad\ud800surrogate") == "bad_surrogate"
    long = sanitize_filename_part("🎉" * 1000)
    assert len(long.encode("utf-8")) <= 200 and long == "🎉" * 50


HOSTILE_PROMPTS = [
    "../../../../etc/passwd",
    "..",
    "a\x00b\x00c",
    "CON",
    "x" * 10_000,
    "🐱‍👤" * 3000,
    "/absolute/path",
    "C:\\Windows\\system32",
    "\n\r\t",
]


@pytest.mark.parametrize("prompt", HOSTILE_PROMPTS)
def test_hostile_prompts_in_pattern(tmp_path: Path, prompt: str) -> None:
    folder = tmp_path / "txt2img-images" / "2024-05-06"
    paths = []
    for pattern in ["[seed]-[prompt_words]-[model_name]", "[prompt_words]-[seed]"]:
        store = OutputStore(tmp_path, filename_pattern=pattern)
        values = {"prompt": prompt, "model_name": prompt}
        paths.append(
            store.save(
                _image(),
                kind="txt2img",
                seed=3,
                infotext=INFOTEXT,
                when=WHEN,
                pattern_values=values,
            )
        )
    assert _names(folder) == sorted(p.name for p in paths)
    assert paths[0].name.startswith("00000-3-") and paths[1].name.startswith("00001-")
    assert paths[1].name.endswith("-3.png")  # a long prompt does not push the seed out
    for path in paths:
        assert path.parent == folder and path.exists()
        assert len(path.name.encode("utf-8")) <= 255
        assert ".." not in path.name and "\x00" not in path.name and "/" not in path.name
        assert all(ch.isprintable() or ch == "\u200d" for ch in path.name)
        with Image.open(path) as img:
            assert read_infotext_from_image(img) == INFOTEXT
