"""Prompts made after the request was checked are bounded too (issue 19, item 4).

Scripts and styles make new prompts: X/Y/Z Prompt S/R, prompts from file and the prompt
matrix are checked when the job is submitted (the cell, line or combination is named);
styles and wildcards are applied in the worker, where a prompt over a limit fails the job
with the same message, and the wildcards extension stays on.
"""

from __future__ import annotations

import pytest

from webui.context import build_context
from webui.core.params import Txt2ImgParams
from webui.ext.api import ArgError
from webui.settings import parse_flags

NESTED = "(" * 20  # two of them: 40 deep, over the limit of 32
MESSAGE = "brackets nested 40 deep; at most 32 are allowed"


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, tiny_files):
    data = tmp_path_factory.mktemp("limits-scripts")
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    (data / "models" / "Stable-diffusion" / "tiny-sd1.safetensors").write_bytes(
        tiny_files["sd1"].read_bytes()
    )
    (data / "wildcards").mkdir()
    (data / "wildcards" / "double.txt").write_text("__double__ __double__\n")  # 2**10 copies
    (data / "wildcards" / "color.txt").write_text("red\n")
    (data / "wildcards" / "paren.txt").write_text(NESTED + "\n")
    (data / "styles.csv").write_text(f'name,prompt,negative_prompt\ndeep,"{{prompt}} {NESTED}",\n')
    context = build_context(
        parse_flags(["--data-dir", str(data), "--no-download-sd-model", "--api"])
    )
    yield context
    context.close()


def _job(ctx, script=None, script_args=None, **fields):
    base = dict(prompt="a cube", steps=2, width=64, height=64, seed=10)
    params = Txt2ImgParams(**{**base, **fields}).validated()
    params = ctx.extensions.prepare(params, script=script, script_args=script_args).with_seed()
    job = ctx.jobs.submit("txt2img", params, owner="limits")
    assert job.done.wait(300)
    return job


def _wildcards_on(ctx) -> bool:
    return ctx.extensions.find("wildcards").active


@pytest.mark.parametrize(
    ("prompt", "message"),
    [("a __double__", "prompt: wildcards make it more than 10,000 characters; at most 10,000"),
     ("__paren__ __paren__ cat", f"prompt: {MESSAGE}")],
)  # fmt: skip
def test_wildcards_over_a_limit_fail_the_job_and_stay_on(ctx, prompt, message):
    job = _job(ctx, prompt=prompt)
    assert job.state == "failed" and job.error.startswith(message), job.error
    assert _wildcards_on(ctx)
    after = _job(ctx, prompt="a __color__ cube")
    assert after.state == "done", after.error
    assert "a red cube" in after.result.images[0].infotext


def test_a_style_over_a_limit_fails_the_job_in_the_worker(ctx):
    job = _job(ctx, prompt=NESTED + "cat", styles=("deep",))
    assert job.state == "failed" and job.error == f"prompt: {MESSAGE}", job.error
    assert _job(ctx, prompt="cat", styles=("deep",)).state == "done"  # 20 deep is fine


def test_xyz_prompt_sr_cells_are_checked_when_submitted(ctx):
    args = {"x_type": "Prompt S/R", "x_values": f"cube, {NESTED}"}
    with pytest.raises(ArgError, match=f"the cell .* is not valid: prompt: {MESSAGE}"):
        _job(ctx, "X/Y/Z plot", args, prompt=f"a cube {NESTED}")


def test_prompts_from_file_lines_are_checked_when_submitted(ctx):
    text = f"a house\n--prompt '{NESTED} boat' --steps 3"
    with pytest.raises(ArgError, match=f"line 2: prompt: {MESSAGE}"):
        _job(ctx, "prompts from file or textbox", {"prompt_txt": text}, prompt=NESTED)


def test_prompt_matrix_combinations_are_checked_when_submitted(ctx):
    prompt = f"{NESTED}base|{')' * 20}|{NESTED}"  # 20 deep at most; parts 1 and 3: 40
    with pytest.raises(ArgError, match=f"combination 3 .* is not valid: prompt: {MESSAGE}"):
        _job(ctx, "Prompt matrix", {}, prompt=prompt)
