"""Run face restorers (GFPGAN, CodeFormer) the way A1111 does: find, align, restore, paste.

facexlib's `FaceRestoreHelper` finds the faces (RetinaFace, ResNet-50), warps each one to
a 512x512 crop aligned on five landmarks, and pastes the restored crop back through the
inverse warp under a soft mask from its face parser (ParseNet), so pixels away from the
faces are never changed. The restorer runs on each crop: GFPGAN (spandrel) or CodeFormer
(spandrel-extra-arches) with its weight (0 = strongest effect, 1 = weakest).

`FaceRestorerCache` belongs to the job worker (the one owner of the accelerator), like
`UpscalerCache`; it keeps the last restorer and the detector/parser in memory.

This module must never import a UI library and never download: every weight file is read
from the path in the job's `FaceRestorerRef` with spandrel's restricted unpickler (a
`.pth` is never unpickled freely), and a file that is gone is a `MissingFaceModelError`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .face_restorer_list import (
    CODEFORMER,
    FaceRestorerRef,
    MissingFaceModelError,
)

log = logging.getLogger(__name__)

FACE_SIZE = 512  # A1111's FaceRestoreHelper(face_size=512)
DETECT_RESIZE = 640  # faces are looked for in the image scaled to this short side
RestoreFn = Callable[[torch.Tensor], torch.Tensor]  # a (1, 3, 512, 512) crop in [-1, 1]


class FaceRestorerError(RuntimeError):
    """A face restorer file cannot be loaded; the message names the file."""


class FaceRestorerCache:
    """Loaded restorers (the most recent one) and the face helper; worker thread only."""

    def __init__(self, device: str = "cpu"):
        self.device = torch.device(device)
        self._model: tuple[str, torch.nn.Module] | None = None
        self._helper: tuple[tuple[str, str], object] | None = None

    def clear(self) -> None:
        self._model = self._helper = None

    def restore(self, image: Image.Image, ref: FaceRestorerRef) -> tuple[Image.Image, int]:
        """(the image with every face found restored, how many faces were found)."""
        helper = self.helper(ref)  # the restorer itself is loaded once a face is found
        return restore_faces(image, helper, lambda face: self.restore_fn(ref)(face))

    def restore_fn(self, ref: FaceRestorerRef) -> RestoreFn:
        """The restorer's call on one normalised crop, as A1111 makes it."""
        model = self.model(ref)
        if ref.name == CODEFORMER:
            return lambda face: model(face, weight=ref.weight, adain=True)[0]
        return lambda face: model(face, return_rgb=False)[0]

    def model(self, ref: FaceRestorerRef) -> torch.nn.Module:
        if self._model is not None and self._model[0] == ref.path:
            return self._model[1]
        self._model = None
        model = load_restorer(Path(ref.path), ref.name).to(self.device).eval()
        self._model = (ref.path, model)
        log.info("Loaded face restorer %s (%s)", Path(ref.path).name, ref.name)
        return model

    def helper(self, ref: FaceRestorerRef):
        """facexlib's `FaceRestoreHelper` with the job's detector and parser weights."""
        key = (ref.detection, ref.parsing)
        if self._helper is not None and self._helper[0] == key:
            return self._helper[1]
        self._helper = None
        helper = make_helper(Path(ref.detection), Path(ref.parsing), self.device)
        self._helper = (key, helper)
        return helper


def load_restorer(path: Path, name: str) -> torch.nn.Module:
    """The restorer's network from its file (spandrel; CodeFormer from its extra arches)."""
    import spandrel
    import spandrel_extra_arches

    if not path.is_file():
        raise MissingFaceModelError(f"{name}: model file {path.name} not found in {path.parent}")
    registry = spandrel.ArchRegistry()
    registry.add(*spandrel.MAIN_REGISTRY, *spandrel_extra_arches.EXTRA_REGISTRY)
    try:
        descriptor = spandrel.ModelLoader(registry=registry).load_from_file(path)
    except spandrel.UnsupportedModelError:
        raise FaceRestorerError(f"{path.name}: not a {name} model spandrel knows") from None
    except Exception as exc:
        raise FaceRestorerError(f"{path.name}: cannot be read: {exc}") from exc
    if descriptor.architecture.id != name:
        raise FaceRestorerError(
            f"{path.name}: is a {descriptor.architecture.name} model, not {name}"
        )
    return descriptor.model


def _weights(path: Path) -> dict:
    """A facexlib weight file, read with spandrel's restricted unpickler."""
    import spandrel

    if not path.is_file():
        raise MissingFaceModelError(
            f"face restoration needs {path.name} in {path.parent} (not found)"
        )
    try:
        state = spandrel.ModelLoader().load_state_dict_from_file(path)
    except Exception as exc:
        raise FaceRestorerError(f"{path.name}: cannot be read: {exc}") from exc
    return {key.removeprefix("module."): value for key, value in state.items()}


def make_helper(detection: Path, parsing: Path, device: torch.device):
    """facexlib's helper with RetinaFace and ParseNet loaded from our files, never fetched."""
    from facexlib.detection import retinaface
    from facexlib.parsing.parsenet import ParseNet

    detector = retinaface.RetinaFace(network_name="resnet50", half=False, device=device)
    parser = ParseNet(in_size=FACE_SIZE, out_size=FACE_SIZE, parsing_ch=19)
    for module, path in ((detector, detection), (parser, parsing)):
        try:
            module.load_state_dict(_weights(path), strict=True)
        except RuntimeError as exc:
            raise FaceRestorerError(f"{path.name}: not facexlib's weights: {exc}") from None
    retinaface.device = device  # facexlib's detector reads its device from the module
    return _new_helper(detector.to(device).eval(), parser.to(device).eval(), device)


def _new_helper(detector, parser, device):
    """A `FaceRestoreHelper` as A1111 makes it (upscale 1, 512 faces, square crops, parser
    masks) with the given detector and parser: facexlib's own __init__ would load (and
    download) its weights itself."""
    from facexlib.utils.face_restoration_helper import FaceRestoreHelper

    helper = FaceRestoreHelper.__new__(FaceRestoreHelper)
    helper.template_3points, helper.pad_blur = False, False
    helper.upscale_factor, helper.crop_ratio = 1, (1, 1)
    helper.face_size = (FACE_SIZE, FACE_SIZE)
    helper.face_template = np.array(  # five landmarks of an FFHQ face at 512x512
        [[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
         [201.26117, 371.41043], [313.08905, 371.15118]]
    )  # fmt: skip
    helper.save_ext, helper.device = "png", device
    helper.face_det, helper.face_parse, helper.use_parse = detector, parser, True
    helper.clean_all()
    return helper


def restore_faces(image: Image.Image, helper, restore_face: RestoreFn) -> tuple[Image.Image, int]:
    """Find the faces of `image`, restore and paste them back (A1111's
    `restore_with_face_helper`); (result, number of faces)."""
    helper.clean_all()
    try:
        bgr = np.ascontiguousarray(np.array(image.convert("RGB"))[:, :, ::-1])  # facexlib's order
        helper.read_image(bgr)
        with torch.inference_mode():
            found = helper.get_face_landmarks_5(
                only_center_face=False, resize=DETECT_RESIZE, eye_dist_threshold=5
            )
        log.debug("found %d faces", found)
        if not found:
            return image.convert("RGB"), 0
        return paste_restored(helper, restore_face), found
    finally:
        helper.clean_all()


def paste_restored(helper, restore_face: RestoreFn) -> Image.Image:
    """Align, restore and paste back the faces whose landmarks `helper` holds (after
    `read_image` and `get_face_landmarks_5`, or landmarks given to it directly)."""
    from torchvision.transforms.functional import normalize

    height, width = helper.input_img.shape[:2]
    helper.align_warp_face()
    param = next(iter(helper.face_parse.parameters()))
    for crop in helper.cropped_faces:
        face = torch.from_numpy(crop[:, :, ::-1].astype(np.float32) / 255.0).permute(2, 0, 1)
        normalize(face, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), inplace=True)
        with torch.inference_mode():
            out = restore_face(face[None].to(param.device))
        out = ((out[0].float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
        helper.add_restored_face((out[:, :, ::-1] * 255.0).astype(np.uint8))  # BGR
    helper.get_inverse_affine(None)
    with torch.inference_mode():
        pasted = helper.paste_faces_to_input_image()
    if pasted.shape[:2] != (height, width):
        pasted = np.array(
            Image.fromarray(pasted).resize((width, height), Image.Resampling.BILINEAR)
        )
    return Image.fromarray(np.ascontiguousarray(pasted[:, :, ::-1]), "RGB")


def blend(original: Image.Image, restored: Image.Image, visibility: float) -> Image.Image:
    """A1111's extras: the restored image at `visibility` over the original."""
    if visibility >= 1.0:
        return restored
    return Image.blend(original.convert("RGB"), restored, visibility)
