"""Built-in scripts on the tiny model: X/Y/Z plot, prompt matrix, prompts from file, wildcards."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from webui.app import create_app
from webui.context import build_context
from webui.core.params import Txt2ImgParams
from webui.ext.api import ArgError
from webui.ext.scripts.common import expand_floats, expand_ints, split_values, with_fields
from webui.ext.scripts.prompt_matrix import combinations
from webui.ext.scripts.prompts_from_file import line_params, parse_line
from webui.imaging.face_restorer_list import FaceRestorerRef
from webui.imaging.infotext import parse_infotext, read_infotext_from_image
from webui.settings import parse_flags


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, tiny_files):
    data = tmp_path_factory.mktemp("scripts")
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    (data / "models" / "Stable-diffusion" / "tiny-sd1.safetensors").write_bytes(
        tiny_files["sd1"].read_bytes()
    )
    (data / "wildcards" / "animals").mkdir(parents=True)
    (data / "wildcards" / "color.txt").write_text("# colours\nred\ngreen\n\nblue\n")
    (data / "wildcards" / "animals" / "cats.txt").write_text("tabby cat\n__color__ cat\n")
    context = build_context(
        parse_flags(["--data-dir", str(data), "--no-download-sd-model", "--api"])
    )
    yield context
    context.close()


def submit(ctx, script=None, script_args=None, alwayson=None, **fields):
    base = dict(prompt="a cube", steps=2, width=64, height=64, seed=10)
    params = Txt2ImgParams(**{**base, **fields}).validated()
    params = ctx.extensions.prepare(params, script=script, script_args=script_args,
                                    alwayson=alwayson).with_seed()  # fmt: skip
    job = ctx.jobs.submit("txt2img", params, owner="scripts")
    assert job.done.wait(300) and job.state == "done", job.error
    return job


def files(root: Path, folder: str) -> list[Path]:
    return sorted((root / "outputs" / folder).glob("*/*.png"))


def ink(image: Image.Image, box) -> int:
    """Dark pixels in a box: text drawn there."""
    return int((np.asarray(image.convert("L").crop(box)) < 128).sum())


def test_a_rerun_after_a_restart_writes_no_second_file(ctx):
    """The job store's rerun (issue 14): a job run again with the files its first attempt
    recorded (Job.earlier) reuses them, the cells' images and the grid alike."""
    from webui.core.jobs import Job

    root = ctx.flags.data_dir
    first = submit(ctx, "X/Y/Z plot", {"x_type": "Seed", "x_values": "3, 4"}, steps=1)
    before = files(root, "txt2img-images") + files(root, "txt2img-grids")
    recorded = ctx.job_store.get(first.id).images
    assert [i.seed for i in recorded] == [3, 4, None]  # two cells, then the grid
    assert [i.path for i in recorded] == first.saved
    rerun = Job("txt2img", first.params, owner="scripts", options=first.options,
                earlier=dict(enumerate(recorded)))  # fmt: skip
    result = ctx.jobs._slots[0].executor.run(rerun)  # what the worker does with a restored job
    assert files(root, "txt2img-images") + files(root, "txt2img-grids") == before
    assert rerun.saved == first.saved and result.images[0].path == first.saved[-1]


def test_xyz_plot_two_by_two(ctx):
    root = ctx.flags.data_dir
    before_images, before_grids = (
        len(files(root, "txt2img-images")),
        len(files(root, "txt2img-grids")),
    )
    job = submit(ctx, "X/Y/Z plot", {"x_type": "Seed", "x_values": "1, 2",
                                     "y_type": "Steps", "y_values": "1-2"})  # fmt: skip
    images = files(root, "txt2img-images")[before_images:]
    grids = files(root, "txt2img-grids")[before_grids:]
    assert len(images) == 4 and len(grids) == 1
    (shown,) = job.result.images  # the grid alone (no "Include Sub Images")
    assert shown.path == str(grids[0])
    with Image.open(grids[0]) as im:
        grid = im.convert("RGB")
        fields = parse_infotext(read_infotext_from_image(im))
    assert (fields["Script"], fields["X Type"], fields["X Values"]) == (
        "X/Y/Z plot",
        "Seed",
        "1, 2",
    )
    assert (fields["Y Type"], fields["Y Values"]) == ("Steps", "1-2")
    left, top = grid.width - 128, grid.height - 128
    assert left > 0 and top > 0  # room for the row and column labels
    cells = {}
    for path in images:
        with Image.open(path) as im:
            f = parse_infotext(read_infotext_from_image(im))
            cells[(f["Seed"], f["Steps"])] = np.asarray(im.convert("RGB"))
    assert set(cells) == {(1, 1), (2, 1), (1, 2), (2, 2)}
    for (seed, steps), pixels in cells.items():
        x, y = left + (seed - 1) * 64, top + (steps - 1) * 64
        assert np.array_equal(np.asarray(grid.crop((x, y, x + 64, y + 64))), pixels)
    for col in range(2):  # "Seed: 1", "Seed: 2" above the columns
        assert ink(grid, (left + col * 64, 0, left + (col + 1) * 64, top)) > 20
    for row in range(2):  # "Steps: 1", "Steps: 2" left of the rows
        assert ink(grid, (0, top + row * 64, left, top + (row + 1) * 64)) > 20
    assert ink(grid, (0, 0, left, top)) == 0  # the corner stays empty
    assert not np.array_equal(cells[(1, 2)], cells[(2, 2)])  # the seed axis really varies


def test_xyz_plot_through_the_api(ctx):
    client = TestClient(create_app(ctx.flags, ctx))  # no lifespan: it would close the context
    if True:
        body = {"prompt": "a red cube", "steps": 2, "width": 64, "height": 64, "seed": 5,
                "script_name": "x/y/z plot",
                "script_args": {"x_type": "Prompt S/R", "x_values": "red, blue",
                                "include_lone_images": True}}  # fmt: skip
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text
        info = json.loads(response.json()["info"])
        assert len(response.json()["images"]) == 3  # the grid and its two cells
        prompts = [parse_infotext(t)["Prompt"] for t in info["infotexts"][1:]]
        assert prompts == ["a red cube", "a blue cube"]
        assert "x/y/z plot" in client.get("/sdapi/v1/scripts").json()["txt2img"]
        for args, where in [({"x_type": "Prompt S/R", "x_values": "green"}, "x_values"),
                            ({"x_type": "Sampler", "x_values": "No such sampler"}, "x_values"),
                            ({"x_type": "Warp drive"}, "x_type"),
                            ({"x_type": "Steps", "x_values": "1-500"}, "x_values")]:  # fmt: skip
            bad = client.post("/sdapi/v1/txt2img", json={**body, "script_args": args})
            assert bad.status_code == 422, bad.text
            assert bad.json()["detail"][0]["loc"][-1] == where


def test_value_lists_read_like_a1111():
    assert split_values('1, "a, b", c') == ["1", "a, b", "c"]
    assert expand_ints(["1-3", "10-14 (+2)", "0-100 [3]", "7"]) == [
        1,
        2,
        3,
        10,
        12,
        14,
        0,
        50,
        100,
        7,
    ]
    assert expand_floats(["0.5-1.5 (+0.5)", "1-2 [3]"]) == [0.5, 1.0, 1.5, 1.0, 1.5, 2.0]
    with pytest.raises(ValueError, match="whole number"):
        expand_ints(["abc"])
    text = "p\nSteps: 2, Seed: 1, Version: v1"
    assert (
        with_fields(text, {"Script": "X", "X Values": "1, 2"})
        == 'p\nSteps: 2, Seed: 1, Script: X, X Values: "1, 2", Version: v1'
    )


def test_prompt_matrix(ctx):
    assert combinations(["a cube", " red", " shiny"], False, ", ") == [
        "a cube", "a cube, red", "a cube, shiny", "a cube, red, shiny"]  # fmt: skip
    assert combinations(["a", "b"], True, " ") == ["a", "b a"]
    job = submit(ctx, "Prompt matrix", {}, prompt="a cube|red|shiny", steps=1)
    grid, *cells = job.result.images
    assert [parse_infotext(c.infotext)["Prompt"] for c in cells] == [
        "a cube", "a cube, red", "a cube, shiny", "a cube, red, shiny"]  # fmt: skip
    assert all(c.seed == 10 for c in cells)
    assert grid.path and "grids" in grid.path
    left, top = grid.image.width - 128, grid.image.height - 128
    assert left > 0 and top > 0
    # column 2 (red on) and row 2 (shiny on): the cell at (1, 1) is "a cube, red, shiny"
    assert np.array_equal(np.asarray(grid.image.crop((left + 64, top + 64, left + 128, top + 128))),
                          np.asarray(cells[3].image.convert("RGB")))  # fmt: skip
    with pytest.raises(ArgError, match="too many"):
        submit(ctx, "Prompt matrix", {}, prompt="|".join("abcdefghijk"))


def test_prompts_from_file_lines_as_a1111_reads_them(ctx):
    assert parse_line('--prompt "a cat" sitting --steps 3 --negative_prompt dog --cfg_scale 4.5') == {
        "prompt": "a cat sitting", "steps": 3, "negative_prompt": "dog", "cfg_scale": 4.5}  # fmt: skip
    assert parse_line("just a prompt") == {"prompt": "just a prompt"}
    with pytest.raises(ValueError, match="unknown commandline option"):
        parse_line("--prompt x --warp 9")
    assert parse_line("--prompt x --subseed 9 --subseed_strength 0.5 --seed_resize_from_w 32 "
                      "--seed_resize_from_h 48") == {
        "prompt": "x", "subseed": 9, "subseed_strength": 0.5, "seed_resize_from_w": 32,
        "seed_resize_from_h": 48}  # fmt: skip
    with pytest.raises(ValueError, match="per-line output folders"):
        parse_line("--prompt x --outpath_samples /tmp")
    text = (
        "a house\n\n--prompt 'a boat' --steps 3 --seed 77 --width 128 --sampler_name \"Euler a\"\n"
    )
    job = submit(ctx, "prompts from file or textbox",
                 {"prompt_txt": text, "prompt_position": "end"}, prompt="photo of")  # fmt: skip
    first, second = (parse_infotext(g.infotext) for g in job.result.images)
    assert (first["Prompt"], first["Steps"], first["Seed"]) == ("photo of a house", 2, 10)
    assert (second["Prompt"], second["Steps"], second["Seed"]) == ("photo of a boat", 3, 77)
    assert (second["Size"], second["Sampler"]) == ("128x64", "Euler a")
    job = submit(ctx, "prompts from file or textbox",
                 [True, False, "start", "one\ntwo"], prompt="")  # fmt: skip
    assert [g.seed for g in job.result.images] == [10, 11]  # "Iterate seed every line"
    with pytest.raises(ArgError) as exc:
        submit(ctx, "prompts from file or textbox", {"prompt_txt": "ok\n--steps 999"})
    assert "line 2" in str(exc.value) and exc.value.loc == ("script_args", "prompt_txt")


def test_scripts_carry_variation_seeds(ctx):
    text = "--prompt a --subseed 30 --subseed_strength 0.5 --seed_resize_from_w 32 "
    text += "--seed_resize_from_h 48"
    job = submit(ctx, "prompts from file or textbox", {"prompt_txt": text}, seed=10)
    fields = parse_infotext(job.result.images[0].infotext)
    assert (fields["Seed"], fields["Variation seed"]) == (10, 30)
    assert (fields["Variation seed strength"], fields["Seed resize from"]) == (0.5, "32x48")
    # with a variation strength the images share the seed (so wildcards pick one prompt for
    # both) and the variation seeds count up
    job = submit(ctx, prompt="a {cube|ball|cone|disc}", batch_size=2, seed=20, subseed=40,
                 subseed_strength=0.3)  # fmt: skip
    fields = [parse_infotext(g.infotext) for g in job.result.images if not g.grid]
    assert [(f["Seed"], f["Variation seed"]) for f in fields] == [(20, 40), (20, 41)]
    # X/Y/Z plot's Var. seed and Var. strength axes
    job = submit(ctx, "X/Y/Z plot", {"x_type": "Var. seed", "x_values": "7, 8",
                                     "y_type": "Var. strength", "y_values": "0.1, 0.2",
                                     "include_lone_images": True})  # fmt: skip
    cells = {(f["Variation seed"], f["Variation seed strength"])
             for f in (parse_infotext(g.infotext) for g in job.result.images[1:])}  # fmt: skip
    assert cells == {(7, 0.1), (8, 0.1), (7, 0.2), (8, 0.2)}


def test_prompts_from_file_tiling_per_line():
    base = Txt2ImgParams(prompt="wall", tiling=True)
    assert line_params(base, parse_line("--prompt x --tiling false"), "start", None).tiling is False
    assert line_params(Txt2ImgParams(), parse_line("--tiling true"), "start", None).tiling is True
    with pytest.raises(ValueError, match="tick Restore faces"):
        line_params(base, parse_line("--restore_faces true"), "start", None)
    ref = FaceRestorerRef("CodeFormer", "cf.pth", "det.pth", "parse.pth")
    faces = Txt2ImgParams(prompt="face", restore_faces=True, face_restorer=ref)
    line = line_params(faces, parse_line("--restore_faces false"), "start", None)
    assert line.restore_faces is False
    assert line_params(faces, parse_line("--prompt x"), "start", None).restore_faces is True


def test_wildcards_follow_the_seed(ctx):
    job = submit(ctx, prompt="a __color__ {cube|ball}, __animals/cats__", batch_size=2, seed=20)
    grid, *images = job.result.images
    assert grid.grid and grid.infotext == images[0].infotext
    prompts = [parse_infotext(g.infotext)["Prompt"] for g in images]
    assert [g.seed for g in images] == [20, 21]
    for prompt in prompts:
        assert "__" not in prompt and "{" not in prompt
        color = prompt.split(" ")[1]
        assert color in ("red", "green", "blue") and ("cube" in prompt or "ball" in prompt)
    again = submit(ctx, prompt="a __color__ {cube|ball}, __animals/cats__", seed=21, steps=2)
    assert parse_infotext(again.result.images[0].infotext)["Prompt"] == prompts[1]
    off = submit(ctx, prompt="a {cube|ball}", alwayson={"wildcards": {"args": {"enabled": False}}})
    assert parse_infotext(off.result.images[0].infotext)["Prompt"] == "a {cube|ball}"
    kept = submit(ctx, prompt="a {prompt} style")  # braces without | are left alone
    assert parse_infotext(kept.result.images[0].infotext)["Prompt"] == "a {prompt} style"
    with pytest.raises(ArgError, match="__nothing__ not found"):
        submit(ctx, prompt="a __nothing__")


def test_axes_check_their_values(ctx):
    from webui.ext.scripts.xyz_axes import _set_lora_weight, axis_by_label, read_axis

    check = ctx.extensions.arg_check(Txt2ImgParams(prompt="a <lora:detail:0.5> cat").validated())
    checkpoint = axis_by_label("checkpoint name", Txt2ImgParams)
    assert read_axis(checkpoint, "tiny-sd1", check) == ["tiny-sd1"]
    with pytest.raises(ValueError, match="checkpoint not found: other"):
        read_axis(checkpoint, "tiny-sd1, other", check)
    with pytest.raises(ValueError, match="VAE not found"):
        read_axis(axis_by_label("VAE", Txt2ImgParams), "missing.safetensors", check)
    assert read_axis(axis_by_label("Sampler", Txt2ImgParams), "euler a", check) == ["Euler a"]
    assert read_axis(axis_by_label("Schedule type", Txt2ImgParams), "karras", check) == ["Karras"]
    with pytest.raises(ValueError, match="needs hires. fix"):
        read_axis(axis_by_label("Denoising", Txt2ImgParams), "0.5", check)
    weights = read_axis(axis_by_label("LoRA weight", Txt2ImgParams), "0-1 [3]", check)
    assert weights == [0.0, 0.5, 1.0]
    varied = _set_lora_weight(check.params, 0.25)
    assert varied.prompt == "a <lora:detail:0.25> cat"
    plain = ctx.extensions.arg_check(Txt2ImgParams(prompt="a cat").validated())
    with pytest.raises(ValueError, match="needs a <lora"):
        read_axis(axis_by_label("LoRA weight", Txt2ImgParams), "1", plain)


def test_xyz_plot_sampler_parameter_axes(ctx):
    job = submit(ctx, "X/Y/Z plot", {"x_type": "Sigma Churn", "x_values": "0, 5",
                                     "include_lone_images": True}, sampler_name="Euler")  # fmt: skip
    cells = job.result.images[1:]  # the grid first, then the lone images
    churns = [parse_infotext(g.infotext).get("Sigma churn") for g in cells]
    assert churns == [None, 5]  # 0 is the default: not written
    assert not np.array_equal(np.asarray(cells[0].image), np.asarray(cells[1].image))
    with pytest.raises(ArgError, match="eta"):  # a cell the sampler cannot honour: refused
        submit(ctx, "X/Y/Z plot", {"x_type": "Eta", "x_values": "0.5, 1"}, sampler_name="DPM2 a")


def test_xyz_plot_on_img2img_varies_denoising(ctx):
    from webui.core.params_img2img import Img2ImgParams

    image = Image.new("RGB", (64, 64), (200, 40, 40))
    params = Img2ImgParams(prompt="a cube", steps=2, width=64, height=64, seed=4,
                           init_images=(image,)).validated()  # fmt: skip
    params = ctx.extensions.prepare(params, script="xyz_plot", script_args={
        "x_type": "Denoising", "x_values": "0, 0.9", "include_lone_images": True})  # fmt: skip
    job = ctx.jobs.submit("img2img", params, owner="scripts")
    assert job.done.wait(300) and job.state == "done", job.error
    grid, low, high = job.result.images
    assert "img2img-grids" in grid.path
    assert [parse_infotext(g.infotext)["Denoising strength"] for g in (low, high)] == [0, 0.9]
    unchanged = np.abs(np.asarray(low.image.convert("RGB")).astype(int) - np.asarray(image))
    assert unchanged.max() <= 3  # strength 0 keeps the init image


# --- img2img through the API: the scripts and always-on extensions the img2img tab runs ----


def img2img_body(**fields) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buffer, format="PNG")
    init = base64.b64encode(buffer.getvalue()).decode()
    return {"prompt": "a cube", "steps": 2, "width": 64, "height": 64, "seed": 4,
            "denoising_strength": 0.5, "init_images": [init], **fields}  # fmt: skip


def infotexts(response) -> list[dict]:
    assert response.status_code == 200, response.text
    return [parse_infotext(t) for t in json.loads(response.json()["info"])["infotexts"]]


def test_api_img2img_lists_and_runs_every_img2img_script(ctx):
    client = TestClient(create_app(ctx.flags, ctx))  # no lifespan: it would close the context
    listed = client.get("/sdapi/v1/scripts").json()["img2img"]
    assert {"x/y/z plot", "prompt matrix", "prompts from file or textbox", "sd upscale"} <= set(
        listed
    )
    always_on = {i["name"] for i in client.get("/sdapi/v1/script-info").json() if i["is_alwayson"]}
    for title in set(listed) - always_on:  # each selectable one is accepted: at worst its args
        response = client.post("/sdapi/v1/img2img", json=img2img_body(script_name=title))
        assert response.status_code in (200, 422), response.text
        if response.status_code == 422:
            assert response.json()["detail"][0]["loc"][1] == "script_args", (title, response.text)
    info = {i["name"]: i for i in client.get("/sdapi/v1/script-info").json() if i["is_img2img"]}
    assert [a["name"] for a in info["sd upscale"]["args"]] == [
        "info",
        "overlap",
        "upscaler",
        "scale",
    ]
    assert "x_values" in [a["name"] for a in info["x/y/z plot"]["args"]]


def test_api_img2img_xyz_plot(ctx):
    client = TestClient(create_app(ctx.flags, ctx))
    args = {"x_type": "Denoising", "x_values": "0, 0.9", "include_lone_images": True}
    response = client.post(
        "/sdapi/v1/img2img", json=img2img_body(script_name="X/Y/Z plot", script_args=args)
    )
    grid, low, high = infotexts(response)
    assert (grid["Script"], grid["X Type"], grid["X Values"]) == (
        "X/Y/Z plot",
        "Denoising",
        "0, 0.9",
    )
    assert (low["Denoising strength"], high["Denoising strength"]) == (0, 0.9)
    images = response.json()["images"]
    assert len(images) == 3
    first = Image.open(io.BytesIO(base64.b64decode(images[1]))).convert("RGB")
    assert np.abs(np.asarray(first).astype(int) - (200, 40, 40)).max() <= 3  # strength 0
    bad = client.post("/sdapi/v1/img2img", json=img2img_body(
        script_name="X/Y/Z plot", script_args={"x_type": "Denoising", "x_values": "2"}))  # fmt: skip
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "script_args", "x_values"]


def test_api_img2img_prompt_matrix_and_prompts_from_file(ctx):
    client = TestClient(create_app(ctx.flags, ctx))
    matrix = client.post("/sdapi/v1/img2img", json=img2img_body(
        prompt="a cube|red", script_name="Prompt matrix", script_args=[]))  # fmt: skip
    grid, *cells = infotexts(matrix)
    assert grid["Script"] == "Prompt matrix"
    assert [c["Prompt"] for c in cells] == ["a cube", "a cube, red"]
    assert all(c["Denoising strength"] == 0.5 for c in cells)  # img2img cells
    lines = "a house\n--prompt 'a boat' --steps 3 --seed 77"
    from_file = client.post("/sdapi/v1/img2img", json=img2img_body(
        prompt="photo of", script_name="prompts from file or textbox",
        script_args=[False, False, "end", lines]))  # A1111's positional args  # fmt: skip
    first, second = infotexts(from_file)
    assert (first["Prompt"], first["Seed"]) == ("photo of a house", 4)
    assert (second["Prompt"], second["Steps"], second["Seed"]) == ("photo of a boat", 3, 77)
    assert second["Denoising strength"] == 0.5
    bad = client.post("/sdapi/v1/img2img", json=img2img_body(
        script_name="prompts from file or textbox", script_args={"prompt_txt": "--steps 999"}))  # fmt: skip
    assert bad.status_code == 422, bad.text
    assert bad.json()["detail"][0]["loc"] == ["body", "script_args", "prompt_txt"]


def test_api_img2img_alwayson_scripts(ctx):
    client = TestClient(create_app(ctx.flags, ctx))
    body = img2img_body(prompt="a {cube|ball}", seed=20)
    (expanded,) = infotexts(client.post("/sdapi/v1/img2img", json=body))
    assert expanded["Prompt"] in ("a cube", "a ball")  # wildcards is on by default
    for off in ({"args": {"enabled": False}}, {"args": [False]}):
        response = client.post(
            "/sdapi/v1/img2img", json={**body, "alwayson_scripts": {"Wildcards": off}}
        )
        assert infotexts(response)[0]["Prompt"] == "a {cube|ball}"
    bad = client.post("/sdapi/v1/img2img", json={
        **body, "alwayson_scripts": {"wildcards": {"args": {"enabled": "maybe"}}}})  # fmt: skip
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == [
        "body",
        "alwayson_scripts",
        "wildcards",
        "args",
        "enabled",
    ]
    unknown = client.post("/sdapi/v1/img2img", json={**body, "alwayson_scripts": {"nope": {}}})
    assert unknown.status_code == 422
    assert unknown.json()["detail"][0]["loc"] == ["body", "alwayson_scripts", "nope"]


def test_api_img2img_reads_the_infotext_field(ctx):
    client = TestClient(create_app(ctx.flags, ctx))
    body = img2img_body(infotext="a sphere\nSteps: 1, Sampler: Euler, CFG scale: 5, Seed: 123")
    del body["prompt"], body["seed"], body["steps"]  # not sent: taken from the infotext
    (info,) = infotexts(client.post("/sdapi/v1/img2img", json=body))
    assert (info["Prompt"], info["Steps"], info["Seed"], info["Sampler"]) == (
        "a sphere",
        1,
        123,
        "Euler",
    )
