"""Checkpoint files and I/O accounting for the checkpoint tests.

``write_safetensors`` writes the safetensors format itself (an 8-byte
header length, a JSON header, the data at 8-aligned offsets), so that the
tests run where the safetensors library is missing (Debian 12); where it is
present, tests also load files the library wrote. ``read_bytes`` and
``drop_cached`` measure what a process reads from the disk: the file's
pages are dropped from the page cache first (``posix_fadvise``: only that
file's clean pages, no root needed), and ``/proc/self/io`` counts the bytes
read from the device since.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Dict, Mapping, Optional

import torch

from dist_harness import reset_peak_rss, vm_kib  # noqa: F401 (reset_peak_rss re-exported)

_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.float64: "F64", torch.int64: "I64", torch.int32: "I32", torch.int8: "I8",
          torch.uint8: "U8", torch.bool: "BOOL", torch.int16: "I16"}


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw little-endian bytes of ``t`` (contiguous, on the CPU)."""
    t = t.detach().contiguous().cpu()
    if t.numel() == 0:
        return b""
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def write_safetensors(path: str, tensors: Mapping[str, torch.Tensor],
                      metadata: Optional[Dict[str, str]] = None) -> None:
    """Writes ``tensors`` as a safetensors file (names sorted, as the library
    writes them)."""
    header: Dict[str, object] = {}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        data = tensor_bytes(t)
        header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata is not None:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for data in blobs:
            f.write(data)


def write_index(folder: str, shards: Mapping[str, Mapping[str, torch.Tensor]],
                name: str = "model.safetensors.index.json") -> str:
    """Writes each ``shards[file]`` as a safetensors file in ``folder`` and an
    index mapping every tensor to its file; returns the index's path."""
    weight_map = {}
    for file, tensors in shards.items():
        write_safetensors(os.path.join(folder, file), tensors)
        weight_map.update({k: file for k in tensors})
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return path


def drop_cached(path: str) -> None:
    """Drops the page cache of every file under ``path`` (a file or folder),
    so that reading them again reads the disk."""
    files = [path] if os.path.isfile(path) else [
        os.path.join(root, f) for root, _, names in os.walk(path) for f in names]
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_bytes() -> int:
    """Bytes this process has read from storage (``/proc/self/io``)."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    raise KeyError("read_bytes")


def rss_kib(field: str = "VmRSS") -> int:
    """A ``/proc/self/status`` figure in KiB (VmRSS, VmHWM, ...)."""
    return vm_kib(field)


def io_accounting_works(probe_file: str) -> bool:
    """Whether dropping ``probe_file``'s cache and reading it shows up in
    ``read_bytes`` (not on tmpfs, nor where /proc/self/io is missing)."""
    try:
        drop_cached(probe_file)
        before = read_bytes()
        with open(probe_file, "rb") as f:
            f.read()
        return read_bytes() - before >= os.path.getsize(probe_file) // 2
    except (OSError, KeyError):
        return False
