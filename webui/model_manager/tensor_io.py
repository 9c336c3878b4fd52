"""Tensor files read and written one tensor at a time, for merging large checkpoints.

`TensorFile` opens a `.safetensors` file (memory-mapped through safetensors' `safe_open`)
or a pickled `.ckpt` (through the loader's restricted, memory-mapped unpickler) and gives
each tensor's dtype and shape without reading it, and the tensor on request.
`write_safetensors_streamed` writes a `.safetensors` file tensor by tensor: the header
(names, dtypes, shapes, offsets) is known first, then each tensor is computed, written
and dropped, so a merge of two 7 GB files never holds a whole checkpoint in RAM. The
layout is the safetensors format (8-byte little-endian header size, JSON header padded
with spaces to 8 bytes, the tensors' bytes back to back); `safe_open` reads it back.

This module must never import a UI library, and never write outside the path it is given.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from .loader import CheckpointLoadError, _load_ckpt

DTYPE_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * torch.empty((), dtype=self.dtype).element_size()


class TensorFile:
    """A checkpoint's tensors by name; use as a context manager."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.metadata: dict[str, str] = {}
        self._state: dict[str, torch.Tensor] | None = None
        self._file = None
        try:
            if self.path.suffix.lower() == ".safetensors":
                self._file = safe_open(str(self.path), framework="pt")
                self.metadata = dict(self._file.metadata() or {})
                self._infos = {k: self._slice_info(k) for k in self._file.keys()}
            else:
                state = _load_ckpt(self.path)
                self._state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
                self._infos = {
                    k: TensorInfo(v.dtype, tuple(v.shape)) for k, v in self._state.items()
                }
        except CheckpointLoadError:
            raise
        except Exception as exc:
            raise CheckpointLoadError(f"{self.path.name}: cannot read the file ({exc})") from exc

    def _slice_info(self, key: str) -> TensorInfo:
        part = self._file.get_slice(key)
        dtype = DTYPES.get(part.get_dtype())
        if dtype is None:
            raise CheckpointLoadError(f"{self.path.name}: {key} has dtype {part.get_dtype()}")
        return TensorInfo(dtype, tuple(part.get_shape()))

    def __enter__(self) -> TensorFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None and hasattr(self._file, "__exit__"):
            self._file.__exit__(None, None, None)
        self._file, self._state = None, None

    def keys(self) -> list[str]:
        return list(self._infos)

    def __contains__(self, key: str) -> bool:
        return key in self._infos

    def info(self, key: str) -> TensorInfo:
        return self._infos[key]

    def get(self, key: str) -> torch.Tensor:
        if self._state is not None:
            return self._state[key]
        return self._file.get_tensor(key)


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if flat.dtype != torch.uint8:
        flat = flat.view(torch.uint8)
    return memoryview(flat.numpy()).cast("B")


def write_safetensors_streamed(
    path: Path,
    plan: Iterable[tuple[str, TensorInfo]],
    produce: Callable[[str], torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write `plan`'s tensors (name, dtype and shape known up front) to `path`, calling
    `produce(name)` for each in turn; a produced tensor must match its plan."""
    if sys.byteorder != "little":
        raise RuntimeError("writing safetensors needs a little-endian machine")
    plan = list(plan)
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, info in plan:
        size = info.nbytes
        header[name] = {
            "dtype": DTYPE_NAMES[info.dtype],
            "shape": list(info.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(text)))
        out.write(text)
        for name, info in plan:
            tensor = produce(name)
            if tensor.dtype != info.dtype or tuple(tensor.shape) != info.shape:
                raise RuntimeError(
                    f"{name}: planned {info.dtype} {info.shape}, got {tensor.dtype} "
                    f"{tuple(tensor.shape)}"
                )
            out.write(_tensor_bytes(tensor))
        out.flush()
        os.fsync(out.fileno())
