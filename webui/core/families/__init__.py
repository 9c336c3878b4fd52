"""Model families as modules: SD 1.x and 2.x (`sd.py`), SDXL (`sdxl.py`), the SDXL refiner
(`sdxl_refiner.py`), FLUX.1 (`flux.py`, a transformer family), FLUX.1 Fill (`flux_fill.py`),
FLUX.1 Kontext (`flux_kontext.py`, told by its file name), SD 3.5 (`sd3.py`), Z-Image
(`zimage.py`); see `base.py`.

`default_families()` is what the composition root passes to the model manager and the
worker: recognition asks them in this order (SDXL's second encoder first, then OpenCLIP
for SD 2.x, then CLIP for SD 1.x; the refiner's lone OpenCLIP bigG has its own key). A new family is a new module with a `Family` subclass,
added here.
"""

from __future__ import annotations

from .base import Families, Family
from .flux import FLUX1
from .flux_fill import FLUX1_FILL
from .flux_kontext import FLUX1_KONTEXT
from .sd import SD1, SD2
from .sd3 import SD3
from .sdxl import SDXL
from .sdxl_refiner import SDXL_REFINER
from .zimage import ZIMAGE

__all__ = [
    "FLUX1", "FLUX1_FILL", "FLUX1_KONTEXT", "SD1", "SD2", "SD3", "SDXL", "SDXL_REFINER",
    "ZIMAGE", "Families", "Family", "default_families",
]  # fmt: skip


def default_families() -> Families:
    return Families((SDXL, SDXL_REFINER, SD2, SD1, FLUX1, FLUX1_FILL, FLUX1_KONTEXT, SD3, ZIMAGE))
