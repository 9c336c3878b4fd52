"""Helpers the built-in scripts share: value lists with A1111's range syntax, infotext fields.

This module must never import torch, diffusers or a UI library.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Mapping
from typing import Any

from ...imaging.infotext import VERSION_KEY, format_value, quote

# A1111's range forms: "1-5", "1-5 (+2)", "1-10 [5]" (5 evenly spaced values)
_NUM = r"[+-]?\s*\d+"
_FLOAT = r"[+-]?\s*\d+(?:\.\d*)?"
RANGE = re.compile(rf"\s*({_NUM})\s*-\s*({_NUM})(?:\s*\(([+-]\d+)\s*\))?\s*")
RANGE_FLOAT = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\(([+-]\d+(?:\.\d*)?)\s*\))?\s*")
RANGE_COUNT = re.compile(rf"\s*({_NUM})\s*-\s*({_NUM})\s*\[(\d+)\s*\]\s*")
RANGE_COUNT_FLOAT = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})\s*\[(\d+(?:\.\d*)?)\s*\]\s*")
MAX_VALUES = 1000


def split_values(text: str) -> list[str]:
    """Comma-separated values as A1111 reads them (CSV: quotes protect commas)."""
    if not text or not text.strip():
        return []
    rows = list(csv.reader(io.StringIO(text), skipinitialspace=True))
    return [v.strip() for row in rows for v in row if v.strip()]


def _num(text: str) -> str:
    return text.replace(" ", "")


def _linspace(start: float, stop: float, count: int) -> list[float]:
    if count <= 1:
        return [start]
    return [start + (stop - start) * i / (count - 1) for i in range(count)]


def expand_ints(values: list[str]) -> list[int]:
    out: list[int] = []
    for value in values:
        if m := RANGE.fullmatch(value):
            start, end = int(_num(m.group(1))), int(_num(m.group(2)))
            step = int(m.group(3)) if m.group(3) else 1
            if step == 0:
                raise ValueError(f"{value}: the step must not be 0")
            out += list(range(start, end + (1 if step > 0 else -1), step))
        elif m := RANGE_COUNT.fullmatch(value):
            start, end, count = int(_num(m.group(1))), int(_num(m.group(2))), int(m.group(3))
            out += [int(x) for x in _linspace(start, end, count)]
        else:
            try:
                out.append(int(value))
            except ValueError:
                raise ValueError(f"{value!r} is not a whole number or a range like 1-5") from None
        _limit(out)
    return out


def expand_floats(values: list[str]) -> list[float]:
    out: list[float] = []
    for value in values:
        if m := RANGE_FLOAT.fullmatch(value):
            start, end = float(_num(m.group(1))), float(_num(m.group(2)))
            step = float(m.group(3)) if m.group(3) else 1.0
            if step == 0:
                raise ValueError(f"{value}: the step must not be 0")
            count = int((end - start) / step + 1e-9) + 1
            out += [round(start + i * step, 10) for i in range(max(0, count))]
        elif m := RANGE_COUNT_FLOAT.fullmatch(value):
            start, end = float(_num(m.group(1))), float(_num(m.group(2)))
            out += [round(x, 10) for x in _linspace(start, end, int(float(m.group(3))))]
        else:
            try:
                out.append(float(value))
            except ValueError:
                raise ValueError(
                    f"{value!r} is not a number or a range like 0.5-1.5 (+0.5)"
                ) from None
        _limit(out)
    return out


def int_range(low: int, high: int) -> Callable[[list[str], Any], list[int]]:
    """An X/Y/Z axis reader of whole numbers from `low` to `high` (ranges expanded)."""

    def read(texts: list[str], check: Any) -> list[int]:
        values = expand_ints(texts)
        for v in values:
            if not low <= v <= high:
                raise ValueError(f"{v} is outside {low}..{high}")
        return values

    return read


def float_range(low: float, high: float) -> Callable[[list[str], Any], list[float]]:
    """An X/Y/Z axis reader of numbers from `low` to `high` (ranges expanded)."""

    def read(texts: list[str], check: Any) -> list[float]:
        values = expand_floats(texts)
        for v in values:
            if not low <= v <= high:
                raise ValueError(f"{v:g} is outside {low:g}..{high:g}")
        return values

    return read


def _limit(values: list) -> None:
    if len(values) > MAX_VALUES:
        raise ValueError(f"more than {MAX_VALUES} values")


def with_fields(infotext: str, fields: Mapping[str, object]) -> str:
    """The infotext with extra `Key: value` fields added before `Version` (A1111 order)."""
    parts = [f"{k}: {quote(format_value(v))}" for k, v in fields.items() if v not in (None, "")]
    if not parts:
        return infotext
    head, sep, last = infotext.rpartition("\n")
    marker = f", {VERSION_KEY}: "
    if marker in last:
        before, _, version = last.rpartition(marker)
        last = f"{before}, {', '.join(parts)}{marker}{version}"
    else:
        last = f"{last}, {', '.join(parts)}" if last else ", ".join(parts)
    return f"{head}{sep}{last}"
