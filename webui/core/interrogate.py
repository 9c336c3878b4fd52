"""The interrogate job: a picture in, a prompt out (A1111's Interrogate CLIP / DeepBooru,
and WD14-style taggers).

The service resolves the model files before the job is queued (`InterrogateParams`
carries them); the worker runs `interrogate` with its `InterrogatorCache` and the job's
options, as A1111 names them:

- clip: "caption, best artist, best flavor, ..." from BLIP and CLIP;
  interrogate_clip_num_beams / _min_length / _max_length / _dict_limit /
  _skip_categories, interrogate_return_ranks ("(flavor:0.123)");
- deepdanbooru: tags scoring interrogate_deepbooru_score_threshold or more, "rating:"
  tags left out, deepbooru_sort_alpha (else by score), deepbooru_use_spaces,
  deepbooru_escape (brackets), deepbooru_filter_tags;
- a tagger: general tags from interrogate_wd14_general_threshold, character tags from
  interrogate_wd14_character_threshold, ratings left out, by score, formatted with the
  DeepBooru options above (spaces, escape, filter).

This module must never import a UI library or torch (the job codec reads its params).
It uses no checkpoint.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..imaging.codec import to_rgb
from ..model_manager.interrogate_files import (
    CHARACTER,
    CLIP,
    DEEPBOORU,
    GENERAL,
    ClipFiles,
    OnnxTaggerFiles,
    Tag,
)
from .params import ParamError
from .progress import Progress

if TYPE_CHECKING:  # the worker's cache imports torch; this module must not
    from ..model_manager.interrogators import InterrogatorCache

Option = Callable[[str], Any]
_SPECIAL = re.compile(r"([\\()])")


@dataclass(frozen=True)
class InterrogateParams:
    image: Any  # PIL image
    model: str  # "clip", "deepdanbooru" or a tagger folder of models/interrogate
    clip: ClipFiles | None = None  # for "clip"
    onnx: OnnxTaggerFiles | None = None  # for the others

    def validated(self) -> InterrogateParams:
        if not isinstance(self.image, Image.Image):
            raise ParamError("image", "is not an image")
        if (self.model == CLIP) != (self.clip is not None) or (
            self.model != CLIP and self.onnx is None
        ):
            raise ParamError("model", f"no model files resolved for {self.model!r}")
        return self


@dataclass
class InterrogateResult:
    caption: str
    params: InterrogateParams
    images: tuple = ()  # no pictures: listings count none


def interrogate(
    params: InterrogateParams, models: InterrogatorCache, opt: Option, progress: Progress
) -> InterrogateResult:
    """The caption or tags of the job's picture."""
    progress.batches, progress.steps, progress.step = 1, 1, 0
    progress.started_at = time.monotonic()
    progress.text = f"Interrogating ({params.model})"
    image = to_rgb(params.image)
    try:
        if params.clip is not None:
            caption = _clip(params.clip, image, models, opt)
        else:
            assert params.onnx is not None
            wd14 = params.model != DEEPBOORU
            tagger = models.tagger(params.onnx, wd14=wd14)
            scores = tagger.probabilities(image)
            caption = _wd14_tags(scores, opt) if wd14 else _deepbooru_tags(scores, opt)
    finally:
        if not opt("interrogate_keep_models_in_memory"):
            models.clear()
        progress.text = ""
    progress.step = 1
    return InterrogateResult(caption, params)


def _clip(files: ClipFiles, image: Image.Image, models: InterrogatorCache, opt: Option) -> str:
    model = models.clip(files)
    caption = model.caption(image, int(opt("interrogate_clip_num_beams")),
                            int(opt("interrogate_clip_min_length")),
                            int(opt("interrogate_clip_max_length")))  # fmt: skip
    skip = set(opt("interrogate_clip_skip_categories") or ())
    ranks = bool(opt("interrogate_return_ranks"))
    limit = int(opt("interrogate_clip_dict_limit"))
    features = model.image_features(image)
    parts = [caption]
    for category in files.categories:
        if category.name in skip:
            continue
        for text, score in model.rank(features, category, limit):
            parts.append(f"({text}:{score / 100:.3f})" if ranks else text)
    return ", ".join(p for p in parts if p)


def _deepbooru_tags(scores: dict[Tag, float], opt: Option) -> str:
    threshold = float(opt("interrogate_deepbooru_score_threshold"))
    kept = {t.name: p for t, p in scores.items() if t.category == GENERAL and p >= threshold}
    if opt("deepbooru_sort_alpha"):
        names = sorted(kept)
    else:
        names = sorted(kept, key=lambda n: -kept[n])
    return format_tags([(n, kept[n]) for n in names], opt)


def _wd14_tags(scores: dict[Tag, float], opt: Option) -> str:
    limits = {GENERAL: float(opt("interrogate_wd14_general_threshold")),
              CHARACTER: float(opt("interrogate_wd14_character_threshold"))}  # fmt: skip
    kept = [
        (t.name, p) for t, p in scores.items() if t.category in limits and p >= limits[t.category]
    ]
    kept.sort(key=lambda item: -item[1])
    return format_tags(kept, opt)


def format_tags(tags: list[tuple[str, float]], opt: Option) -> str:
    """A1111's DeepBooru output: filtered, underscores to spaces, brackets escaped, ranks."""
    filtered = {x.strip().replace(" ", "_") for x in str(opt("deepbooru_filter_tags")).split(",")}
    spaces, escape = bool(opt("deepbooru_use_spaces")), bool(opt("deepbooru_escape"))
    ranks = bool(opt("interrogate_return_ranks"))
    out = []
    for name, probability in tags:
        if name in filtered:
            continue
        text = name.replace("_", " ") if spaces else name
        text = _SPECIAL.sub(r"\\\1", text) if escape else text
        out.append(f"({text}:{probability:.3f})" if ranks else text)
    return ", ".join(out)
