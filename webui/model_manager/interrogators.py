"""The interrogate models, loaded offline and run: BLIP captions, CLIP ranking, ONNX taggers.

- `ClipInterrogator`: a transformers BLIP captioning model writes the caption (beam count
  and length as A1111's options say); a transformers CLIP model ranks each category list
  against the image as A1111 does (softmax of 100 x cosine similarity, the top N).
  Text features of a list are kept while its file and the dictionary limit stay the same.
- `OnnxTagger`: a DeepDanbooru or WD14-style model run with onnxruntime, giving one
  probability per tag. DeepDanbooru gets A1111's input (RGB in [0, 1], 512 x 512, resized
  and filled); WD14 gets its own (BGR in [0, 255], padded white to a square).
- `InterrogatorCache`: what the worker keeps loaded between jobs (or frees after each job
  when the option "keep models in memory" is off).

Only the job queue's worker thread uses these. This module must never import a UI
library; it never downloads anything (`local_files_only`).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .interrogate_files import (
    GENERAL,
    RATING,
    BadModelFileError,
    Category,
    ClipFiles,
    OnnxTaggerFiles,
    Tag,
)

log = logging.getLogger(__name__)

_TEXT_BATCH = 256


class ClipInterrogator:
    """BLIP caption + CLIP ranking (A1111's "Interrogate CLIP")."""

    def __init__(self, files: ClipFiles, device: torch.device, dtype: torch.dtype):
        from transformers import (
            BlipForConditionalGeneration,
            BlipProcessor,
            CLIPModel,
            CLIPProcessor,
        )

        self.files, self.device, self.dtype = files, device, dtype
        self.blip_processor = BlipProcessor.from_pretrained(files.blip, local_files_only=True)
        self.blip = BlipForConditionalGeneration.from_pretrained(
            files.blip, local_files_only=True, dtype=dtype
        ).to(device).eval()  # fmt: skip
        self.clip_processor = CLIPProcessor.from_pretrained(files.clip, local_files_only=True)
        self.clip = CLIPModel.from_pretrained(files.clip, local_files_only=True, dtype=dtype)
        self.clip = self.clip.to(device).eval()
        self._text: dict[tuple, tuple[list[str], torch.Tensor]] = {}

    @torch.no_grad()
    def caption(self, image: Image.Image, num_beams: int, min_length: int, max_length: int) -> str:
        inputs = self.blip_processor(images=image, return_tensors="pt")
        pixels = inputs.pixel_values.to(self.device, self.dtype)
        out = self.blip.generate(pixel_values=pixels, num_beams=num_beams, do_sample=False,
                                 min_length=min_length, max_length=max_length)  # fmt: skip
        return self.blip_processor.decode(out[0], skip_special_tokens=True).strip()

    @torch.no_grad()
    def image_features(self, image: Image.Image) -> torch.Tensor:
        pixels = self.clip_processor(images=image, return_tensors="pt").pixel_values
        features = _projected(
            self.clip.get_image_features(pixel_values=pixels.to(self.device, self.dtype))
        )
        return features / features.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def rank(
        self, features: torch.Tensor, category: Category, dict_limit: int
    ) -> list[tuple[str, float]]:
        """The category's top N lines for the image, with their score in percent."""
        items, text = self._text_features(category, dict_limit)
        if not items:
            return []
        similarity = (100.0 * features @ text.T).softmax(dim=-1).mean(dim=0)
        top = similarity.float().cpu().topk(min(category.topn, len(items)))
        return [(items[i], float(p) * 100) for p, i in zip(top.values, top.indices, strict=True)]

    def _text_features(self, category: Category, dict_limit: int) -> tuple[list[str], torch.Tensor]:
        stat = category.path.stat()
        key = (category.path, stat.st_mtime_ns, stat.st_size, dict_limit)
        if key not in self._text:
            lines = [x.strip() for x in category.path.read_text("utf-8").splitlines()]
            items = [x for x in lines if x]
            items = items[:dict_limit] if dict_limit > 0 else items
            chunks = [
                self._encode(items[i : i + _TEXT_BATCH]) for i in range(0, len(items), _TEXT_BATCH)
            ]
            text = torch.cat(chunks) if chunks else torch.zeros(0)
            self._text = {k: v for k, v in self._text.items() if k[0] != category.path}
            self._text[key] = (items, text)
        return self._text[key]

    def _encode(self, items: list[str]) -> torch.Tensor:
        max_length = int(getattr(self.clip.config.text_config, "max_position_embeddings", 77))
        tokenizer = self.clip_processor.tokenizer
        tokens = tokenizer(items, padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt")  # fmt: skip
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        features = _projected(self.clip.get_text_features(**tokens))
        return features / features.norm(dim=-1, keepdim=True)


def _projected(output: Any) -> torch.Tensor:
    """transformers 5 returns an output object whose pooler_output is the projection."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class OnnxTagger:
    """A DeepDanbooru or WD14 tagger: image -> {tag: probability}."""

    def __init__(self, files: OnnxTaggerFiles, *, wd14: bool, providers: list[str]):
        import onnxruntime

        self.files, self.wd14 = files, wd14
        self.session = onnxruntime.InferenceSession(str(files.model), providers=providers)
        self.input = self.session.get_inputs()[0]
        self.tags = read_wd14_tags(files.tags) if wd14 else read_deepbooru_tags(files.tags)

    def size(self) -> int:
        """The square input side the model declares (NHWC), else 448 / 512."""
        side = self.input.shape[1] if len(self.input.shape) == 4 else None
        return side if isinstance(side, int) and side > 0 else (448 if self.wd14 else 512)

    def probabilities(self, image: Image.Image) -> dict[Tag, float]:
        side = self.size()
        array = wd14_input(image, side) if self.wd14 else deepbooru_input(image, side)
        out = self.session.run(None, {self.input.name: array[None]})[0][0]
        if len(out) != len(self.tags):
            raise BadModelFileError(
                f"{self.files.model.name} gives {len(out)} scores but "
                f"{self.files.tags.name} lists {len(self.tags)} tags"
            )
        return {tag: float(p) for tag, p in zip(self.tags, out, strict=True)}


def read_wd14_tags(path: Path) -> list[Tag]:
    with path.open(encoding="utf-8", newline="") as file:
        return [Tag(row["name"], int(row.get("category") or 0)) for row in csv.DictReader(file)]


def read_deepbooru_tags(path: Path) -> list[Tag]:
    names = [x.strip() for x in path.read_text("utf-8").splitlines() if x.strip()]
    return [Tag(n, RATING if n.startswith("rating:") else GENERAL) for n in names]


def deepbooru_input(image: Image.Image, side: int) -> np.ndarray:
    """A1111's DeepBooru input: resized to fit and filled (the stretched picture behind), RGB
    in [0, 1], HWC float32."""
    image = image.convert("RGB")
    scale = min(side / image.width, side / image.height)
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    canvas = image.resize((side, side), Image.Resampling.LANCZOS)
    canvas.paste(image.resize((w, h), Image.Resampling.LANCZOS), ((side - w) // 2, (side - h) // 2))
    return np.asarray(canvas, dtype=np.float32) / 255


def wd14_input(image: Image.Image, side: int) -> np.ndarray:
    """The WD14 taggers' input: padded white to a square, resized, BGR in [0, 255]."""
    image = image.convert("RGBA")
    square = max(image.size)
    canvas = Image.new("RGBA", (square, square), (255, 255, 255, 255))
    canvas.alpha_composite(image, ((square - image.width) // 2, (square - image.height) // 2))
    canvas = canvas.convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
    return np.ascontiguousarray(np.asarray(canvas, dtype=np.float32)[:, :, ::-1])


class InterrogatorCache:
    """The loaded interrogate models of one worker, by their files."""

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device, self.dtype = device, dtype
        self._models: dict[Any, Any] = {}

    def clip(self, files: ClipFiles) -> ClipInterrogator:
        key = ("clip", files.blip, files.clip)
        return self._get(key, lambda: ClipInterrogator(files, self.device, self.dtype))

    def tagger(self, files: OnnxTaggerFiles, *, wd14: bool) -> OnnxTagger:
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            providers.insert(0, "CUDAExecutionProvider")
        return self._get(("onnx", files.model, files.tags, wd14),
                         lambda: OnnxTagger(files, wd14=wd14, providers=providers))  # fmt: skip

    def _get(self, key: Any, load: Callable[[], Any]) -> Any:
        if key not in self._models:
            log.info("loading interrogate model %s", key[1:])
            try:
                self._models[key] = load()
            except Exception as exc:  # a bad file (onnxruntime's errors are plain Exceptions)
                files = ", ".join(str(part) for part in key[1:] if isinstance(part, Path))
                raise BadModelFileError(f"cannot load {files}: {exc}") from exc
        return self._models[key]

    def clear(self) -> None:
        self._models.clear()
