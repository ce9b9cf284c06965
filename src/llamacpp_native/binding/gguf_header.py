"""A small reader of a GGUF file's metadata (its key/value header), in pure Python.

llama.cpp's typed GGUF getters abort the process when a key has another type
than they expect, so a file from an unknown source is read here first, and only
handed to llama.cpp once the keys it reads have the right types.  Every length
in the file is checked against the file's size before anything is allocated.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, BinaryIO

GGUF_MAGIC = b"GGUF"


class GGUFType(IntEnum):
    """GGUF value types, as numbered in the file format."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


_SCALARS = {
    GGUFType.UINT8: struct.Struct("<B"),
    GGUFType.INT8: struct.Struct("<b"),
    GGUFType.UINT16: struct.Struct("<H"),
    GGUFType.INT16: struct.Struct("<h"),
    GGUFType.UINT32: struct.Struct("<I"),
    GGUFType.INT32: struct.Struct("<i"),
    GGUFType.FLOAT32: struct.Struct("<f"),
    GGUFType.BOOL: struct.Struct("<?"),
    GGUFType.UINT64: struct.Struct("<Q"),
    GGUFType.INT64: struct.Struct("<q"),
    GGUFType.FLOAT64: struct.Struct("<d"),
}
_STRING_LENGTH = _SCALARS[GGUFType.UINT64]


class GGUFFormatError(ValueError):
    """The file is not a well-formed GGUF file (its reason says what is wrong)."""


@dataclass(frozen=True)
class GGUFValue:
    """One metadata value and its GGUF type; an array keeps only its item type and length."""

    type: GGUFType
    value: Any
    is_array: bool = False


class _Reader:
    """Reads little-endian GGUF fields, never past the end of the file."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self.handle = handle
        self.remaining = size

    def take(self, n: int) -> bytes:
        if n > self.remaining:
            raise GGUFFormatError("truncated: a field runs past the end of the file")
        data = self.handle.read(n)
        if len(data) != n:
            raise GGUFFormatError("truncated: a field runs past the end of the file")
        self.remaining -= n
        return data

    def skip(self, n: int) -> None:
        if n > self.remaining:
            raise GGUFFormatError("truncated: a field runs past the end of the file")
        self.handle.seek(n, os.SEEK_CUR)
        self.remaining -= n

    def scalar(self, kind: GGUFType) -> Any:
        layout = _SCALARS[kind]
        return layout.unpack(self.take(layout.size))[0]

    def string(self) -> str:
        return self.take(self.scalar(GGUFType.UINT64)).decode("utf-8", "replace")

    def kind(self) -> GGUFType:
        raw = self.scalar(GGUFType.UINT32)
        try:
            return GGUFType(raw)
        except ValueError:
            raise GGUFFormatError(f"unknown value type {raw}") from None

    def value(self, kind: GGUFType) -> Any:
        if kind == GGUFType.STRING:
            return self.string()
        return self.scalar(kind)

    def entry(self) -> GGUFValue:
        kind = self.kind()
        if kind != GGUFType.ARRAY:
            return GGUFValue(kind, self.value(kind))
        item = self.kind()
        if item == GGUFType.ARRAY:
            raise GGUFFormatError("nested arrays are not valid GGUF")
        count = self.scalar(GGUFType.UINT64)
        if item != GGUFType.STRING:
            self.skip(count * _SCALARS[item].size)
        elif count * _STRING_LENGTH.size > self.remaining:
            raise GGUFFormatError("truncated: an array runs past the end of the file")
        else:
            for _ in range(count):
                self.skip(self.scalar(GGUFType.UINT64))
        return GGUFValue(item, count, is_array=True)


def _read_metadata(reader: _Reader, size: int) -> tuple[dict[str, GGUFValue], int]:
    """The metadata of the file ``reader`` is at the start of, and its tensor count."""
    if size < len(GGUF_MAGIC) or reader.take(len(GGUF_MAGIC)) != GGUF_MAGIC:
        raise GGUFFormatError("not a GGUF file (it does not start with b'GGUF')")
    version = reader.scalar(GGUFType.UINT32)
    if version not in (2, 3):
        raise GGUFFormatError(f"unsupported GGUF version {version} (llama.cpp reads 2 and 3)")
    n_tensors = reader.scalar(GGUFType.UINT64)
    n_kv = reader.scalar(GGUFType.UINT64)
    metadata: dict[str, GGUFValue] = {}
    for _ in range(n_kv):
        key = reader.string()
        if not key or key in metadata:
            raise GGUFFormatError(f"empty or duplicate metadata key {key!r}")
        metadata[key] = reader.entry()
    return metadata, n_tensors


def read_gguf_metadata(path: str | os.PathLike[str]) -> dict[str, GGUFValue]:
    """Every metadata key of a GGUF file with its type and value (arrays: their length).

    Raises ``GGUFFormatError`` for a file that is not well-formed GGUF metadata.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        return _read_metadata(_Reader(handle, size), size)[0]


# ggml tensor types: (elements per block, bytes per block), as in ggml.c's type traits.
_BLOCKS = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 40),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110),
    22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8),
    29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17),
}  # fmt: skip


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor's entry in a GGUF file: name, shape in ggml order (``ne``), type and data range."""

    name: str
    shape: tuple[int, ...]
    type: int
    offset: int
    """Where its data starts in the file."""
    nbytes: int | None
    """Its data's size, or None for a type this reader does not know."""


def read_gguf_tensors(path: str | os.PathLike[str]) -> tuple[dict[str, GGUFValue], dict[str, GGUFTensor]]:
    """The metadata and the tensor directory of a GGUF file.

    Raises ``GGUFFormatError`` for a malformed header, and for tensor data that
    runs past the end of the file (a truncated download).
    """
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        reader = _Reader(handle, size)
        metadata, n_tensors = _read_metadata(reader, size)
        entries: list[tuple[str, tuple[int, ...], int, int]] = []
        for _ in range(n_tensors):
            name = reader.string()
            n_dims = reader.scalar(GGUFType.UINT32)
            if n_dims > 4:
                raise GGUFFormatError(f"tensor {name!r} has {n_dims} dimensions (ggml allows 4)")
            shape = tuple(reader.scalar(GGUFType.UINT64) for _ in range(n_dims))
            entries.append((name, shape, reader.scalar(GGUFType.UINT32), reader.scalar(GGUFType.UINT64)))
    entry = metadata.get("general.alignment")
    alignment = int(entry.value) if entry is not None and not entry.is_array else 32
    if alignment <= 0:
        raise GGUFFormatError(f"general.alignment must be positive, not {alignment}")
    start = size - reader.remaining
    data_start = -(-start // alignment) * alignment
    tensors: dict[str, GGUFTensor] = {}
    for name, shape, kind, offset in entries:
        block = _BLOCKS.get(kind)
        count = 1
        for n in shape:
            count *= n
        nbytes = None if block is None else count // block[0] * block[1]
        tensor = GGUFTensor(name, shape, kind, data_start + offset, nbytes)
        if nbytes is not None and tensor.offset + nbytes > size:
            raise GGUFFormatError(f"truncated: the data of tensor {name!r} runs past the end of the file")
        tensors[name] = tensor
    return metadata, tensors
