"""ControlNet's built-in preprocessors (no weights), as sd-webui-controlnet names them.

Each `Preprocessor` has the extension's module name, its label (`alias_names=true`), its
resolution and slider settings (the `/controlnet/module_list` detail) and its control
types (tags); calling it turns an RGB (or RGBA with a mask, for inpaint) uint8 array into
the detected map at `processor_res`, as the extension computes it (OpenCV, numpy).
`fit_map` resizes a detected map to the generation size by the unit's resize mode (the
extension's `detectmap_proc`); `pixel_perfect_resolution` is its pixel-perfect estimate.

The annotators with weights (depth, openpose, HED, ...) are entries too, described in
`control_annotators.py`, with `annotator` set: they make no map here (calling one raises
`AnnotatorNeeded`); `core/controlnet_units.detect` hands them to the annotator runner
(`model_manager/annotators.py`). `REFUSED` names the ones not built. The IP-Adapter preprocessors
(`ip-adapter_clip_*`) and the T2I style adapter's (`clip_vision`, label
`t2ia_style_clipvision`) make no map: they name the CLIP vision encoder the worker runs.

This module must never import torch, diffusers or a UI library.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from .control_annotators import ANNOTATOR_CONTROL_TYPES, ANNOTATOR_ENTRIES, REFUSED
from .control_resize import high_quality_resize


@dataclass(frozen=True)
class Slider:
    label: str
    value: float
    minimum: float
    maximum: float
    step: float = 1.0

    def detail(self) -> dict:
        return {"name": self.label, "value": self.value, "min": self.minimum,
                "max": self.maximum, "step": self.step}  # fmt: skip


RESOLUTION = Slider("Resolution", 512, 64, 2048)
Detect = Callable[[np.ndarray, int, float, float, int], np.ndarray]  # img, res, a, b, seed


@dataclass(frozen=True)
class Preprocessor:
    name: str
    run: Detect
    label: str = ""
    resolution: Slider | None = RESOLUTION  # None: the resolution slider is hidden
    slider_1: Slider | None = None
    slider_2: Slider | None = None
    tags: tuple[str, ...] = ()
    inpaint: bool = False  # the map keeps the mask as a 4th channel
    clip: str = ""  # the CLIP vision encoder ("clip_h", "clip_g", "clip_l", "clip_vitl"); no map
    annotator: bool = False  # a network with weights runs it (model_manager/annotators.py)

    @property
    def returns_image(self) -> bool:
        """Whether the result is a map (IP-Adapter's CLIP preprocessors give embeddings)."""
        return not self.clip

    @property
    def clip_model(self) -> str:
        """The model kind a CLIP preprocessor feeds: "ip-adapter", "t2i-style" (the T2I
        style adapter's); "" for a preprocessor that makes a map."""
        if not self.clip:
            return ""
        return "t2i-style" if "T2I-Adapter" in self.tags else "ip-adapter"

    @property
    def title(self) -> str:
        return self.label or self.name

    def __call__(self, image: np.ndarray, res: int, a: float, b: float, seed: int = 0):
        return self.run(hwc3(image) if not self.inpaint else image, int(res), a, b, seed)

    def detail(self) -> dict:
        """The extension's `module_detail` entry."""
        sliders = [s.detail() for s in (self.resolution, self.slider_1, self.slider_2) if s]
        return {"model_free": False, "sliders": sliders}


def hwc3(image: np.ndarray) -> np.ndarray:
    """An RGB uint8 array from grey, RGB or RGBA (alpha over white, as the extension)."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        return np.concatenate([image] * 3, axis=2)
    if image.shape[2] == 4:
        color, alpha = image[:, :, :3].astype(np.float32), image[:, :, 3:4] / 255.0
        return (color * alpha + 255.0 * (1 - alpha)).clip(0, 255).astype(np.uint8)
    return image


def _resize_short_side(image: np.ndarray, resolution: int) -> np.ndarray:
    """The image with its shorter side at `resolution` (the extension's
    resize_image_with_pad, whose padding it removes again)."""
    h, w = image.shape[:2]
    k = float(resolution) / float(min(h, w))
    size = (int(np.round(w * k)), int(np.round(h * k)))
    return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)


def _none(img, res, a, b, seed):
    return img


def _canny(img, res, a, b, seed):
    edges = cv2.Canny(_resize_short_side(img, res), int(a), int(b))
    return cv2.cvtColor(edges, cv2.COLOR_GRAY2RGB)


def _invert(img, res, a, b, seed):
    return 255 - img


def _threshold(img, res, a, b, seed):
    img = _resize_short_side(img, res)
    out = np.zeros_like(img)
    out[np.min(img, axis=2) > a] = 255
    return out


def _scribble_xdog(img, res, a, b, seed):
    img = _resize_short_side(img, res).astype(np.float32)
    g1, g2 = cv2.GaussianBlur(img, (0, 0), 0.5), cv2.GaussianBlur(img, (0, 0), 5.0)
    dog = (255 - np.min(g2 - g1, axis=2)).clip(0, 255).astype(np.uint8)
    out = np.zeros(img.shape, dtype=np.uint8)
    out[2 * (255 - dog.astype(np.int32)) > a] = 255
    return out


def _tile_resample(img, res, a, b, seed):
    if a < 1.1:
        return img
    h, w = int(img.shape[0] / a), int(img.shape[1] / a)
    return cv2.resize(img, (max(w, 1), max(h, 1)), interpolation=cv2.INTER_AREA)


def _blur_gaussian(img, res, a, b, seed):
    return cv2.GaussianBlur(_resize_short_side(img, res), (0, 0), float(a))


def _lineart_standard(img, res, a, b, seed):
    x = _resize_short_side(img, res).astype(np.float32)
    g = cv2.GaussianBlur(x, (0, 0), 6.0)
    intensity = np.min(g - x, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    intensity /= max(16, float(np.median(strong)) if strong.size else 0.0)
    return hwc3((intensity * 127).clip(0, 255).astype(np.uint8))


def _noise_disk(h: int, w: int, f: int, rng: np.random.Generator) -> np.ndarray:
    noise = rng.uniform(0, 1, size=(h // f + 2, w // f + 2)).astype(np.float64)
    noise = cv2.resize(noise, (w + 2 * f, h + 2 * f), interpolation=cv2.INTER_CUBIC)[
        f : f + h, f : f + w
    ]
    noise -= noise.min()
    return noise / max(noise.max(), 1e-12)


def _shuffle(img, res, a, b, seed):
    """Content shuffle: a smooth random warp (seeded: the same job gives the same map)."""
    img = _resize_short_side(img, res)
    h, w = img.shape[:2]
    rng = np.random.default_rng(seed)
    x = _noise_disk(h, w, 256, rng) * float(w - 1)
    y = _noise_disk(h, w, 256, rng) * float(h - 1)
    flow = np.stack([x, y], axis=2).astype(np.float32)
    return cv2.remap(img, flow, None, cv2.INTER_LINEAR)


def _color_grid(img, res, a, b, seed):
    h, w = img.shape[:2]
    if h < w:
        size = (int(round(w / h * res)), res)
    else:
        size = (res, int(round(h / w * res)))
    img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    small = cv2.resize(img, (max(size[0] // 64, 1), max(size[1] // 64, 1)),
                       interpolation=cv2.INTER_CUBIC)  # fmt: skip
    return cv2.resize(small, size, interpolation=cv2.INTER_NEAREST)


def _inpaint_only(img, res, a, b, seed):
    """RGB plus the mask (4th channel, 255: repaint): ControlNet's inpaint protocol."""
    if img.ndim == 3 and img.shape[2] == 4:
        return img
    rgb = hwc3(img)
    return np.concatenate([rgb, np.zeros_like(rgb[:, :, :1])], axis=2)


IP_ADAPTER_AUTO = "ip-adapter-auto"
_LOW = Slider("Low Threshold", 100, 1, 255)
_HIGH = Slider("High Threshold", 200, 1, 255)
PREPROCESSORS: dict[str, Preprocessor] = {p.name: p for p in (
    Preprocessor("none", _none, resolution=None, tags=("InstructP2P",)),
    Preprocessor("canny", _canny, slider_1=_LOW, slider_2=_HIGH, tags=("Canny",)),
    Preprocessor("invert", _invert, "invert (from white bg & black line)", resolution=None,
                 tags=("Canny", "Lineart", "Scribble", "MLSD")),
    Preprocessor("threshold", _threshold, slider_1=Slider("Binarization Threshold", 127, 0, 255)),
    Preprocessor("scribble_xdog", _scribble_xdog, slider_1=Slider("XDoG Threshold", 32, 1, 64),
                 tags=("Scribble",)),
    Preprocessor("tile_resample", _tile_resample, resolution=None,
                 slider_1=Slider("Down Sampling Rate", 1.0, 1.0, 8.0, 0.01), tags=("Tile",)),
    Preprocessor("blur_gaussian", _blur_gaussian,
                 slider_1=Slider("Sigma", 9.0, 0.01, 64.0, 0.01), tags=("Tile",)),
    Preprocessor("inpaint_only", _inpaint_only, resolution=None, tags=("Inpaint",), inpaint=True),
    Preprocessor("lineart_standard", _lineart_standard,
                 "lineart_standard (from white bg & black line)", tags=("Lineart",)),
    Preprocessor("shuffle", _shuffle, resolution=Slider("Resolution", 512, 64, 2048),
                 tags=("Shuffle",)),
    Preprocessor("t2ia_color_grid", _color_grid, tags=("T2I-Adapter",)),
    # the T2I style adapter: CLIP ViT-L/14's hidden states (core/t2i_style.py), no map
    Preprocessor("clip_vision", _none, "t2ia_style_clipvision", resolution=None,
                 tags=("T2I-Adapter",), clip="clip_vitl"),
    # IP-Adapter: the image goes to a CLIP vision encoder (core/ip_adapter.py), no map
    Preprocessor("ip-adapter_clip_sd15", _none, "ip-adapter_clip_h", resolution=None,
                 tags=("IP-Adapter",), clip="clip_h"),
    Preprocessor("ip-adapter_clip_sdxl", _none, "ip-adapter_clip_g", resolution=None,
                 tags=("IP-Adapter",), clip="clip_g"),
    Preprocessor("ip-adapter_clip_sdxl_plus_vith", _none, resolution=None,
                 tags=("IP-Adapter",), clip="clip_h"),
    # XLabs' FLUX.1 IP-Adapter reads CLIP ViT-L/14 (no name in the extension; its pattern)
    Preprocessor("ip-adapter_clip_flux", _none, "ip-adapter_clip_l", resolution=None,
                 tags=("IP-Adapter",), clip="clip_l"),
    # the extension's: the one of the four above that the unit's model was trained with
    Preprocessor(IP_ADAPTER_AUTO, _none, resolution=None, tags=("IP-Adapter",), clip="auto"),
)}  # fmt: skip


class AnnotatorNeeded(RuntimeError):
    """An annotator preprocessor called without the annotator runner."""


def _needs_annotator(img, res, a, b, seed):
    raise AnnotatorNeeded("this preprocessor runs a network: call it through the annotators")


def _slider(spec: tuple | None) -> Slider | None:
    return Slider(*spec) if spec is not None else None


PREPROCESSORS.update({e.name: Preprocessor(
    e.name, _needs_annotator, e.label, resolution=_slider(e.resolution),
    slider_1=_slider(e.slider_1), slider_2=_slider(e.slider_2), tags=e.tags, annotator=True,
) for e in ANNOTATOR_ENTRIES})  # fmt: skip
_BY_LABEL = {p.title: p for p in PREPROCESSORS.values()}
_OLD_NAMES = {"color": "t2ia_color_grid", "binary": "threshold"}  # the extension's aliases
# the extension's control types: (name, default preprocessor, model filter word)
CONTROL_TYPES = (("All", "none", ""), ("Canny", "canny", "canny"),
                 ("Lineart", "lineart_standard", "lineart"),
                 ("Scribble", "scribble_xdog", "scribble"), ("Tile", "tile_resample", "tile"),
                 ("Inpaint", "inpaint_only", "inpaint"), ("Shuffle", "shuffle", "shuffle"),
                 ("InstructP2P", "none", "ip2p"),
                 ("T2I-Adapter", "t2ia_color_grid", "t2iadapter"),
                 ("IP-Adapter", IP_ADAPTER_AUTO, "ip-adapter"),  # the extension's default
                 *ANNOTATOR_CONTROL_TYPES)  # fmt: skip
# the extension's other model-name words of a control type (Preprocessor.tag_to_filters)
_MODEL_WORDS = {"T2I-Adapter": ("t2i-adapter", "t2i_adapter", "t2iadapter", "t2ia"),
                "IP-Adapter": ("ip-adapter", "ip_adapter", "ipadapter")}  # fmt: skip


def model_matches(control_type: str, name: str) -> bool:
    """Whether a model's name belongs to a control type, as the extension filters them
    (the type's word or one of its aliases in the name; "All": every model)."""
    word = next((w for n, _, w in CONTROL_TYPES if n == control_type), "")
    words = _MODEL_WORDS.get(control_type, (word,) if word else ())
    return not words or any(w in name.lower() for w in words)


def ip_adapter_module(clip: str, family: str) -> str:
    """What ip-adapter-auto stands for: the ip-adapter_clip_* preprocessor that feeds an
    IP-Adapter's encoder ("clip_h", "clip_g", "clip_l") on its family."""
    if clip == "clip_l":
        return "ip-adapter_clip_flux"
    if clip == "clip_g":
        return "ip-adapter_clip_sdxl"
    return "ip-adapter_clip_sdxl_plus_vith" if family == "SDXL" else "ip-adapter_clip_sd15"


def refused_reason(name: str) -> str | None:
    """Why an sd-webui-controlnet preprocessor this server does not build is refused."""
    return REFUSED.get(name) if isinstance(name, str) else None


def preprocessor_named(name: str) -> Preprocessor | None:
    """By module name, label or old alias (the extension accepts all three)."""
    name = _OLD_NAMES.get(name, name)
    return PREPROCESSORS.get(name) or _BY_LABEL.get(name)


def modules_of_type(control_type: str) -> list[str]:
    if control_type == "All":
        return list(PREPROCESSORS)
    return [
        "none",
        *(n for n, p in PREPROCESSORS.items() if control_type in p.tags and n != "none"),
    ]


def pixel_perfect_resolution(shape: tuple[int, ...], height: int, width: int,
                             resize_mode: str) -> int:  # fmt: skip
    """The processor resolution that makes the map match the generation size."""
    raw_h, raw_w = shape[:2]
    k0, k1 = height / raw_h, width / raw_w
    k = min(k0, k1) if resize_mode == "Resize and Fill" else max(k0, k1)
    return int(np.round(k * min(raw_h, raw_w)))


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    return high_quality_resize(image, width, height)


def fit_map(detected: np.ndarray, resize_mode: str, height: int, width: int) -> np.ndarray:
    """The detected map at the generation size by the resize mode (detectmap_proc)."""
    if detected.ndim == 2:
        detected = np.repeat(detected[:, :, None], 3, axis=2)
    if resize_mode == "Just Resize":
        return _resize(detected, width, height)
    old_h, old_w = detected.shape[:2]
    k0, k1 = height / old_h, width / old_w
    if resize_mode == "Resize and Fill":
        k = min(k0, k1)
        borders = np.concatenate([detected[0], detected[-1], detected[:, 0], detected[:, -1]])
        fill = np.median(borders, axis=0).astype(detected.dtype)
        inner = _resize(detected, max(int(old_w * k), 1), max(int(old_h * k), 1))
        canvas = np.zeros((height, width, detected.shape[2]), dtype=detected.dtype) + fill
        top, left = (height - inner.shape[0]) // 2, (width - inner.shape[1]) // 2
        canvas[top : top + inner.shape[0], left : left + inner.shape[1]] = inner
        return canvas
    k = max(k0, k1)
    inner = _resize(
        detected, max(int(np.ceil(old_w * k)), width), max(int(np.ceil(old_h * k)), height)
    )
    top, left = (inner.shape[0] - height) // 2, (inner.shape[1] - width) // 2
    return np.ascontiguousarray(inner[top : top + height, left : left + width])
