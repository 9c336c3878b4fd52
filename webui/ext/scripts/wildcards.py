"""Built-in "Wildcards": prompt templates `__name__` and `{a|b|c}`, chosen by the seed.

`__colors__` is replaced by a random line of `wildcards/colors.txt` in the data folder
(`__animals/cats__` reads `wildcards/animals/cats.txt`; empty lines and `#` comments are
skipped; a chosen line may hold templates itself). `{red|green|blue}` picks one of the
variants; braces without `|` (a style's `{prompt}`) are left alone. Every image draws
from its own seed, so a seed always gives the same prompt, and a batch gets different
prompts: the job is then split into one run per image (a `before_job` returning a list).
Wildcards that make a prompt longer than `prompt_limits` allows fail the job with that
message (expansion stops there, however the wildcard files nest).

This module must never import torch, diffusers or a UI library.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...core.prompt_limits import MAX_PROMPT_CHARS, PromptLimitError
from ..api import ArgError, Control, Extension, ExtensionContext, Section

log = logging.getLogger(__name__)

TITLE = "Wildcards"
MAX_DEPTH = 10
_WILDCARD = re.compile(r"__([\w\-]+(?:/[\w\-]+)*)__")
_VARIANTS = re.compile(r"\{([^{}]*\|[^{}]*)\}")  # innermost braces with at least one |


class Templates:
    """Expands templates with the wildcard files of one folder."""

    def __init__(self, folder: Path):
        self.folder = folder

    def lines(self, name: str) -> list[str] | None:
        path = (self.folder / f"{name}.txt").resolve()
        if self.folder.resolve() not in path.parents or not path.is_file():
            return None
        text = path.read_text(encoding="utf-8", errors="replace")
        return [
            s.strip() for s in text.splitlines() if s.strip() and not s.lstrip().startswith("#")
        ]

    def has_templates(self, text: str) -> bool:
        return bool(_WILDCARD.search(text) or _VARIANTS.search(text))

    def missing(self, text: str) -> list[str]:
        return [m.group(1) for m in _WILDCARD.finditer(text) if not self.lines(m.group(1))]

    def expand(self, text: str, rng: random.Random, field: str = "prompt") -> str:
        """The text with its templates filled in; PromptLimitError (naming `field`) as soon
        as wildcards make it longer than a prompt may be."""
        for _ in range(MAX_DEPTH):
            if not self.has_templates(text):
                break
            text = _VARIANTS.sub(lambda m: rng.choice(m.group(1).split("|")), text)
            text = self._fill_wildcards(text, rng, field)
        return text

    def _fill_wildcards(self, text: str, rng: random.Random, field: str) -> str:
        pieces: list[str] = []
        size = position = 0
        for match in _WILDCARD.finditer(text):
            line = self._pick(match, rng)
            pieces += [text[position : match.start()], line]
            size += match.start() - position + len(line)
            position = match.end()
            if size + len(text) - position > MAX_PROMPT_CHARS:
                raise PromptLimitError(
                    field, f"wildcards make it more than {MAX_PROMPT_CHARS:,} characters; "
                    f"at most {MAX_PROMPT_CHARS:,} are allowed"
                )  # fmt: skip
        pieces.append(text[position:])
        return "".join(pieces)

    def _pick(self, match: re.Match, rng: random.Random) -> str:
        lines = self.lines(match.group(1))
        return rng.choice(lines) if lines else match.group(0)  # unknown: left as typed


def setup() -> Extension:
    state: dict[str, Templates] = {}

    def on_startup(ctx: ExtensionContext) -> None:
        folder = Path(ctx.flags.data_dir) / "wildcards"
        state["templates"] = Templates(folder)
        ctx.log.info("wildcards folder: %s", folder)

    def templates_for(data_dir: Path | None = None) -> Templates:
        if "templates" not in state and data_dir is not None:
            state["templates"] = Templates(Path(data_dir) / "wildcards")
        return state["templates"]

    def check_args(args: dict, check: Any) -> dict:
        if not args["enabled"]:
            return args
        templates = templates_for(check.data_dir)
        text = f"{check.params.prompt}\n{check.params.negative_prompt}"
        missing = templates.missing(text)
        if missing:
            raise ArgError(("enabled",), f"wildcard __{missing[0]}__ not found: add "
                           f"{templates.folder / (missing[0] + '.txt')}")  # fmt: skip
        return args

    def before_job(job: Any, params: Any, args: dict) -> Any:
        templates = state.get("templates")
        if not args["enabled"] or templates is None:
            return None
        if not templates.has_templates(params.prompt + params.negative_prompt):
            return None
        return expand_job(templates, params)

    return Extension(
        name="wildcards",
        title=TITLE,
        version="1",
        description="__name__ picks a line of wildcards/name.txt, {a|b|c} picks a variant; "
        "the seed decides.",
        section=Section(
            TITLE,
            (Control("enabled", "Expand __wildcards__ and {a|b} variants", "checkbox", True),),
        ),  # fmt: skip
        on_startup=on_startup,
        before_job=before_job,
        check_args=check_args,
    )


def expand_job(templates: Templates, params: Any) -> Any:
    """One params for the job when every image gets the same prompts, else one per image."""
    seeds = params.image_seeds()
    expanded = []
    for seed in seeds:
        rng = random.Random(seed)
        expanded.append(
            (
                templates.expand(params.prompt, rng, "prompt"),
                templates.expand(params.negative_prompt, rng, "negative_prompt"),
            )
        )
    if len(set(expanded)) == 1:
        prompt, negative = expanded[0]
        return replace(params, prompt=prompt, negative_prompt=negative)
    subseeds = params.image_subseeds()  # each image keeps its variation seed too
    return [replace(params, prompt=p, negative_prompt=n, seed=s, subseed=sub, batch_count=1,
                    batch_size=1)
            for (p, n), s, sub in zip(expanded, seeds, subseeds, strict=True)]  # fmt: skip
