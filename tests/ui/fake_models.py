"""A stand-in for `ctx.models` in the tests of UI controls that follow the checkpoint:
`resolve` knows the titles of a table (LookupError otherwise), and the one model question
the control asks (`flow_shift`, `skip_layer_guidance`, ...) reads the title's value."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


def fake_ctx(question: str, answers: dict[str, Any]) -> SimpleNamespace:
    def resolve(title):
        if title not in answers:
            raise LookupError(title)
        return title

    models = SimpleNamespace(resolve=resolve, **{question: answers.__getitem__})
    return SimpleNamespace(models=models)
