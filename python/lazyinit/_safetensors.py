"""A reader of the safetensors format that maps the file and reads no
tensor data: every tensor is a view of a private, read-only-by-contract
memory map of the file, registered with lazyinit so that lazy tensors
record it without a copy and replay reads only the pages a piece needs.

The format (https://github.com/huggingface/safetensors): an 8-byte
little-endian header length N, N bytes of JSON mapping each tensor name to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets into the data
that follows the header) and an optional ``"__metadata__"`` of strings,
then the data. Everything the header claims is checked against the file
before any tensor is made; a problem is a :class:`CheckpointError` naming
the file and the tensor.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
import sys
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import torch

from . import _C

# The safetensors library refuses headers above this size (100 MB).
_MAX_HEADER = 100_000_000

# safetensors dtype names -> torch dtype attribute names (those missing
# from this torch are reported when a file uses them).
_DTYPES: Dict[str, str] = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16",
    "I32": "int32", "U32": "uint32", "I64": "int64", "U64": "uint64",
    "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64",
    "C64": "complex64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "F8_E8M0": "float8_e8m0fnu",
}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded as it claims (truncated,
    corrupted, or not matching the model). The message names the file and,
    where there is one, the tensor."""


def torch_dtype(name: str) -> Optional[torch.dtype]:
    """The torch dtype of a safetensors dtype name, or None where this torch
    has none."""
    attr = _DTYPES.get(name)
    return getattr(torch, attr, None) if attr is not None else None


def safetensors_name(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype (``torch.float32`` -> ``"F32"``)."""
    for name, attr in _DTYPES.items():
        if getattr(torch, attr, None) == dtype:
            return name
    raise ValueError(f"lazyinit: safetensors has no name for {dtype}")


class TensorInfo:
    """What the header says of one tensor: dtype, shape, and where its bytes
    lie in the file (absolute offsets)."""

    __slots__ = ("name", "dtype", "dtype_name", "shape", "begin", "end")

    def __init__(self, name: str, dtype: torch.dtype, dtype_name: str, shape: Tuple[int, ...],
                 begin: int, end: int) -> None:
        self.name = name
        self.dtype = dtype
        self.dtype_name = dtype_name
        self.shape = shape
        self.begin = begin
        self.end = end

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _parse_header(path: str, raw: bytes, data_start: int, file_size: int
                  ) -> Tuple[Dict[str, TensorInfo], Dict[str, str]]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"lazyinit: {path}: the safetensors header is not valid JSON "
                              f"({e}); the file is corrupted or not a safetensors file") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"lazyinit: {path}: the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CheckpointError(f"lazyinit: {path}: __metadata__ must map strings to strings")
    data_size = file_size - data_start
    tensors: Dict[str, TensorInfo] = {}
    for name, entry in header.items():
        where = f"lazyinit: {path}: tensor {name!r}"
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
            raise CheckpointError(f"{where}: a header entry needs dtype, shape and data_offsets, "
                                  f"got {entry!r}")
        dtype_name, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        dtype = torch_dtype(dtype_name) if isinstance(dtype_name, str) else None
        if dtype is None:
            known = dtype_name in _DTYPES if isinstance(dtype_name, str) else False
            raise CheckpointError(
                f"{where}: dtype {dtype_name!r} is "
                + ("not supported by this torch" if known else "not a safetensors dtype"))
        if not isinstance(shape, list) or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
            raise CheckpointError(f"{where}: shape must be a list of non-negative integers, "
                                  f"got {shape!r}")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(
                isinstance(n, int) and not isinstance(n, bool) for n in offsets):
            raise CheckpointError(f"{where}: data_offsets must be two integers, got {offsets!r}")
        begin, end = offsets
        numel = 1
        for n in shape:
            numel *= n
        expected = numel * _element_size(dtype)
        if not 0 <= begin <= end:
            raise CheckpointError(f"{where}: data_offsets {offsets} are not an ordered range")
        if end - begin != expected:
            raise CheckpointError(
                f"{where}: data_offsets {offsets} hold {end - begin} bytes, but dtype "
                f"{dtype_name} and shape {shape} need {expected}")
        if end > data_size:
            raise CheckpointError(
                f"{where}: its data ends at byte {data_start + end} of the file, which has "
                f"{file_size} bytes (the file is truncated, or its header is corrupted)")
        tensors[name] = TensorInfo(name, dtype, dtype_name, tuple(shape),
                                   data_start + begin, data_start + end)
    ranges = sorted((t.begin, t.end, t.name) for t in tensors.values() if t.end > t.begin)
    for (b0, e0, n0), (b1, _, n1) in zip(ranges, ranges[1:]):
        if b1 < e0:
            raise CheckpointError(f"lazyinit: {path}: tensors {n0!r} and {n1!r} overlap in the "
                                  "file; the header is corrupted")
    return tensors, dict(metadata)


class SafetensorsFile:
    """One safetensors file, its header parsed and checked, its data mapped.

    ``tensor(name)`` returns a view of the mapping (no byte of it is read
    until something reads the tensor); the mapping is private (nothing
    written through it reaches the file) and registered with lazyinit as a
    mapped source: lazy tensors made from these views record them without a
    copy, and replaying a piece reads only that piece's pages. Nothing may
    write these views.

    Tensors whose offset in the file is not a multiple of their element size
    (the safetensors library never writes such files) cannot be viewed in
    place and are copied when first asked for.
    """

    def __init__(self, path: "str | os.PathLike[str]") -> None:
        self.path = os.fspath(path)
        if sys.byteorder != "little":
            raise CheckpointError(f"lazyinit: {self.path}: safetensors files are little-endian; "
                                  "this machine is not")
        fd = os.open(self.path, os.O_RDONLY)
        try:
            # No readahead through this descriptor (nor the mapping's faults):
            # reads fetch the pages asked for, nothing around them.
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            file_size = os.fstat(fd).st_size
            if file_size < 8:
                raise CheckpointError(f"lazyinit: {self.path}: {file_size} bytes; a safetensors "
                                      "file starts with an 8-byte header length (truncated?)")
            (n,) = struct.unpack("<Q", os.pread(fd, 8, 0))
            if n > _MAX_HEADER or 8 + n > file_size:
                raise CheckpointError(
                    f"lazyinit: {self.path}: the header claims {n} bytes, but the file has "
                    f"{file_size} (truncated, or not a safetensors file)")
            raw = os.pread(fd, n, 8)
            if len(raw) != n:
                raise CheckpointError(f"lazyinit: {self.path}: could not read the {n}-byte header")
            self.infos, self.metadata = _parse_header(self.path, raw, 8 + n, file_size)
            self._mmap: Optional[mmap.mmap] = None
            self._base: Optional[torch.Tensor] = None
            if any(t.nbytes for t in self.infos.values()):
                # Private: nothing written through it could reach the file
                # (lazyinit never writes it; registering it says so).
                self._mmap = mmap.mmap(fd, file_size, flags=mmap.MAP_PRIVATE,
                                       prot=mmap.PROT_READ | mmap.PROT_WRITE)
                self._base = torch.frombuffer(self._mmap, dtype=torch.uint8)
                _C._register_mapped_source(self._base)
        finally:
            os.close(fd)
        self.copied: List[str] = []  # misaligned tensors copied on access

    def keys(self) -> List[str]:
        """Tensor names, in header order."""
        return list(self.infos)

    def __contains__(self, name: object) -> bool:
        return name in self.infos

    def __iter__(self) -> Iterator[str]:
        return iter(self.infos)

    def info(self, name: str) -> TensorInfo:
        """The header's entry for ``name`` (KeyError naming the file if absent)."""
        try:
            return self.infos[name]
        except KeyError:
            raise KeyError(f"lazyinit: {self.path} has no tensor {name!r}") from None

    def tensor(self, name: str) -> torch.Tensor:
        """``name`` as a tensor viewing the file's mapping (reads nothing)."""
        info = self.info(name)
        if info.nbytes == 0 or self._base is None:
            return torch.empty(info.shape, dtype=info.dtype)
        raw = self._base[info.begin:info.end]
        if info.begin % _element_size(info.dtype) != 0:
            self.copied.append(name)
            raw = raw.clone()
        return raw.view(info.dtype).view(info.shape)

    def tensors(self) -> Mapping[str, torch.Tensor]:
        """Every tensor, by name (views of the mapping)."""
        return {name: self.tensor(name) for name in self.infos}
