"""The --demo checkpoint: a tiny random-weight SD 1.x model, clearly named as such.

It lets every part of the UI be tried with no download; its images are noise.
"""

from __future__ import annotations

from pathlib import Path

DEMO_NAME = "DEMO-random-weights-tiny-sd15.safetensors"


def ensure_demo_checkpoint(folder: Path) -> Path:
    """Create the demo checkpoint in `folder` once; later runs reuse it."""
    path = folder / DEMO_NAME
    if not path.exists():
        from .tiny import save_tiny_checkpoint

        folder.mkdir(parents=True, exist_ok=True)
        save_tiny_checkpoint(path, "sd1", seed=0)
    return path
