"""``lazyinit.load_checkpoint``: a checkpoint's tensors into a module, lazily.

Safetensors files (one, or the shards of an index) are mapped, not read
(:mod:`lazyinit._safetensors`); ``torch.save`` files are loaded with
``torch.load(mmap=True, weights_only=True)`` where the torch has ``mmap``.
A lazy parameter gets ``copy_`` from its checkpoint tensor recorded (no
byte read, no copy kept): materializing it, or a rank's piece of it, reads
then exactly the bytes it needs. Real parameters are copied into at once.
Everything is checked before the module changes.
"""
from __future__ import annotations

import inspect
import json
import os
import pickle
import zipfile
from typing import Any, Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn

from . import _C
from ._safetensors import CheckpointError, SafetensorsFile

_LAZY, _DISCARDED = 1, 3
# Real targets are filled from mapped files this many bytes at a time.
_CHUNK_BYTES = 16 << 20


class LoadResult(NamedTuple):
    """What :func:`load_checkpoint` did not match, as ``load_state_dict``
    reports it: module keys the checkpoint lacks, checkpoint keys the
    module lacks."""

    missing_keys: List[str]
    unexpected_keys: List[str]


class _Entry(NamedTuple):
    file: str
    dtype: torch.dtype
    shape: Tuple[int, ...]
    get: Callable[[], torch.Tensor]


class Checkpoint(Mapping[str, "_Entry"]):
    """The tensors of a checkpoint by name: dtype, shape and file of each,
    known without reading data; ``tensor(name)`` gives it (a view of the
    file's mapping where the format allows)."""

    def __init__(self, entries: Dict[str, _Entry], describe: str) -> None:
        self._entries = entries
        self.describe = describe

    def __getitem__(self, key: str) -> _Entry:
        return self._entries[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def tensor(self, key: str) -> torch.Tensor:
        """The checkpoint's tensor ``key``."""
        return self._entries[key].get()


# ---------------------------------------------------------------- opening
def _safetensors_entries(path: str) -> Dict[str, _Entry]:
    f = SafetensorsFile(path)
    return {name: _Entry(path, info.dtype, info.shape, lambda name=name: f.tensor(name))
            for name, info in f.infos.items()}


def torch_load_kwargs(path: str, weights_only: bool) -> Dict[str, Any]:
    """``torch.load`` arguments for a checkpoint on this torch: CPU,
    ``weights_only``, and ``mmap=True`` for zip files where the torch has it."""
    params = inspect.signature(torch.load).parameters
    kwargs: Dict[str, Any] = {"map_location": "cpu"}
    if "weights_only" in params:
        kwargs["weights_only"] = weights_only
    elif weights_only:
        raise CheckpointError(
            f"lazyinit: {path}: this torch's torch.load cannot refuse arbitrary objects "
            "(no weights_only); pass weights_only=False only for a file you trust")
    if "mmap" in params and zipfile.is_zipfile(path):
        kwargs["mmap"] = True
    return kwargs


def register_loaded(tensors: Mapping[str, Any]) -> None:
    """Declares the CPU tensors ``torch.load`` returned immutable (nobody
    else holds them): as mapped file sources where ``torch.load`` mapped
    the file (``mmap=True``), as in-memory ones otherwise. Lazy tensors
    then record them without a copy. Tensors lazyinit's safetensors reader
    made are registered already."""
    for value in tensors.values():
        if not isinstance(value, torch.Tensor) or value.device.type != "cpu" \
                or _C._is_mapped_source(value):
            continue
        if _storage_filename(value) is not None:
            _C._register_mapped_source(value)
        else:
            _C._register_immutable_source(value)


def _storage_filename(t: torch.Tensor) -> Optional[str]:
    """The file a tensor's storage maps (torch.load(mmap=True)), or None."""
    storage = t.untyped_storage() if hasattr(t, "untyped_storage") else None
    return getattr(storage, "filename", None)


def _torch_entries(path: str, weights_only: bool) -> Dict[str, _Entry]:
    kwargs = torch_load_kwargs(path, weights_only)
    try:
        obj = torch.load(path, **kwargs)
    except pickle.UnpicklingError as e:
        hint = (" It holds objects other than tensors, which weights_only=True refuses to "
                "unpickle; pass weights_only=False only for a file you trust."
                if weights_only else "")
        raise CheckpointError(f"lazyinit: {path}: torch.load failed: {e}.{hint}") from e
    except Exception as e:  # noqa: BLE001 - torch's many error types for a bad file
        raise CheckpointError(f"lazyinit: {path}: torch.load failed ({type(e).__name__}: {e}); "
                              "the file is truncated, corrupted, or not a torch.save "
                              "checkpoint") from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"lazyinit: {path}: holds a {type(obj).__name__}, not a mapping of "
                              "names to tensors (a state_dict)")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"lazyinit: {path}: entry {key!r} is a {type(value).__name__}; a checkpoint "
                "is a mapping of names to tensors (a state_dict; save model.state_dict())")
    register_loaded(obj)
    return {key: _Entry(path, t.dtype, tuple(t.shape), lambda t=t: t) for key, t in obj.items()}


def _file_entries(path: str, weights_only: bool) -> Dict[str, _Entry]:
    if path.endswith(".safetensors"):
        return _safetensors_entries(path)
    return _torch_entries(path, weights_only)


def _index_entries(path: str, weights_only: bool) -> Dict[str, _Entry]:
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"lazyinit: {path}: not a readable JSON index ({e})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise CheckpointError(f"lazyinit: {path}: an index needs a \"weight_map\" of tensor "
                              "names to file names")
    folder = os.path.dirname(os.path.abspath(path))
    files: Dict[str, Dict[str, _Entry]] = {}
    for key, name in weight_map.items():
        if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
            raise CheckpointError(f"lazyinit: {path}: tensor {key!r} is mapped to {name!r}, "
                                  "outside the index's folder")
        if name not in files:
            files[name] = _file_entries(os.path.join(folder, name), weights_only)
        if key not in files[name]:
            raise CheckpointError(f"lazyinit: {path}: tensor {key!r} is mapped to {name}, "
                                  "which does not hold it")
    entries: Dict[str, _Entry] = {}
    for name, shard in files.items():
        for key, entry in shard.items():
            if key in entries:
                raise CheckpointError(f"lazyinit: {path}: tensor {key!r} is in both "
                                      f"{entries[key].file} and {entry.file}")
            entries[key] = entry
    return entries


_DIRECTORY_FILES = ("model.safetensors.index.json", "model.safetensors",
                    "pytorch_model.bin.index.json", "pytorch_model.bin")


def open_checkpoint(path: "str | os.PathLike[str]", *, weights_only: bool = True) -> Checkpoint:
    """Opens a checkpoint without reading tensor data: a safetensors file, an
    index (``*.index.json``, safetensors or ``torch.save`` shards), a
    ``torch.save`` file, or a directory holding one of
    ``model.safetensors[.index.json]``, ``pytorch_model.bin[.index.json]``
    (in that order of preference). ``torch.save`` files are read with
    ``weights_only`` (default True: no arbitrary objects unpickled) and,
    where the torch has it, ``mmap=True``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in _DIRECTORY_FILES:
            if os.path.exists(os.path.join(path, name)):
                return open_checkpoint(os.path.join(path, name), weights_only=weights_only)
        raise CheckpointError(f"lazyinit: {path}: a folder without any of "
                              f"{', '.join(_DIRECTORY_FILES)}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"lazyinit: no checkpoint at {path}")
    if path.endswith(".json"):
        return Checkpoint(_index_entries(path, weights_only), path)
    return Checkpoint(_file_entries(path, weights_only), path)


# ---------------------------------------------------------------- loading
def _kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    if dtype.is_floating_point:
        return "floating-point"
    return "integer"


def _targets(module: nn.Module) -> Dict[str, torch.Tensor]:
    """The module's loadable tensors by state_dict key (tied ones under
    every name; extra states, which are not tensors, left out)."""
    return {k: v for k, v in module.state_dict(keep_vars=True).items()
            if isinstance(v, torch.Tensor)}


def _plan(module: nn.Module, ckpt: Checkpoint, key_map: Optional[Callable[[str], Optional[str]]]
          ) -> Tuple[List[Tuple[str, str, torch.Tensor]], List[str], List[str]]:
    """(model key, checkpoint key, target) to load, missing, unexpected;
    raises a CheckpointError for any mismatch, before anything changes."""
    targets = _targets(module)
    mapped: Dict[str, str] = {}
    unexpected: List[str] = []
    for key in ckpt:
        name = key_map(key) if key_map is not None else key
        if name is None:
            continue  # dropped by key_map
        if not isinstance(name, str):
            raise TypeError(f"lazyinit.load_checkpoint: key_map({key!r}) returned {name!r}; "
                            "return a str, or None to skip the key")
        if name in mapped:
            raise CheckpointError(f"lazyinit: {ckpt.describe}: {mapped[name]!r} and {key!r} "
                                  f"both map to {name!r}")
        mapped[name] = key
        if name not in targets:
            unexpected.append(key)
    problems: List[str] = []
    loads: List[Tuple[str, str, torch.Tensor]] = []
    for name, target in targets.items():
        key = mapped.get(name)
        if key is None:
            continue
        entry = ckpt[key]
        what = f"{name!r}" + (f" (checkpoint key {key!r})" if key != name else "")
        if tuple(entry.shape) != tuple(target.shape):
            problems.append(f"{what}: the checkpoint's shape {list(entry.shape)} in "
                            f"{entry.file} does not match the module's {list(target.shape)}")
        elif _kind(entry.dtype) != _kind(target.dtype):
            problems.append(f"{what}: the checkpoint's {entry.dtype} ({_kind(entry.dtype)}) in "
                            f"{entry.file} cannot be loaded into the module's {target.dtype}")
        elif target.is_meta:
            problems.append(f"{what}: the module's tensor is on 'meta', which holds no values; "
                            "build the module lazily (lazyinit.LazyInitContext) or for real")
        elif _C._tensor_state(target) == _DISCARDED:
            problems.append(f"{what}: the module's tensor was freed by lazyinit.discard()")
        else:
            loads.append((name, key, target))
    if problems:
        raise CheckpointError(f"lazyinit.load_checkpoint: {ckpt.describe} does not fit "
                              f"{type(module).__name__} (nothing was loaded):\n  "
                              + "\n  ".join(problems))
    loaded = {id(t) for _, _, t in loads}
    missing = [name for name, t in targets.items() if name not in mapped and id(t) not in loaded]
    return loads, missing, unexpected


def _copy_real(target: torch.Tensor, source: torch.Tensor) -> None:
    """``target.copy_(source)`` for a real target; a mapped source is read a
    chunk at a time, each chunk's pages unmapped after it."""
    if not _C._is_mapped_source(source) or not (target.is_contiguous() and source.is_contiguous()):
        target.copy_(source)
        _C._release_source(source)
        return
    dst, src = target.view(-1), source.reshape(-1)
    step = max(1, _CHUNK_BYTES // source.element_size())
    for begin in range(0, src.numel(), step):
        piece = src[begin:begin + step]
        _C._prefetch_source(piece)
        dst[begin:begin + step].copy_(piece)
        _C._release_source(piece)


def load_checkpoint(module: nn.Module, path: "str | os.PathLike[str]", *, strict: bool = True,
                    key_map: Optional[Callable[[str], Optional[str]]] = None,
                    weights_only: bool = True) -> LoadResult:
    """Loads a checkpoint into ``module``'s parameters and buffers, as
    ``module.load_state_dict(state_dict)`` would, without reading it.

    ``path``: a safetensors file, a sharded index (``*.index.json``), a
    ``torch.save`` file of a state_dict, or a folder holding one of those
    under its Hugging Face name (see :func:`open_checkpoint`). Keys are the
    module's ``state_dict()`` keys; ``key_map(checkpoint_key)`` may rename
    each checkpoint key (return None to skip it).

    Lazy tensors get ``copy_`` from the checkpoint's tensor recorded: the
    file is mapped, not read, and materializing the module, or a rank's
    pieces (``materialize_shard``, ``materialize_module_shards``,
    ``lazyinit.distributed``), reads exactly the bytes needed. Their
    values then equal eager construction followed by ``load_state_dict``
    with the same seed (checkpoint keys: the checkpoint's values, cast as
    ``copy_`` casts; the others: their init; the generator is left where
    eager leaves it); an init the checkpoint overwrites is never computed.
    Real tensors are copied into now.

    Checked before anything changes, each a :class:`CheckpointError` naming
    the file and key: a truncated or corrupted file, a shape that differs
    from the module's, a dtype of another kind (floating-point, integer,
    bool, complex; floating-point casts such as fp32 into bf16 are
    allowed), a target on ``meta``; with ``strict`` (the default), also
    missing and unexpected keys. A tied tensor is not missing when any of
    its names is in the checkpoint (under several, the last one in
    ``state_dict()`` order wins, as with ``load_state_dict``).

    ``weights_only`` (default True): ``torch.save`` files are unpickled
    with ``weights_only=True``, refusing anything but tensors and plain
    containers; pass False only for files you trust.

    Returns ``LoadResult(missing_keys, unexpected_keys)``.
    """
    ckpt = open_checkpoint(path, weights_only=weights_only)
    loads, missing, unexpected = _plan(module, ckpt, key_map)
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        raise CheckpointError(
            f"lazyinit.load_checkpoint: {ckpt.describe} does not match "
            f"{type(module).__name__}: {'; '.join(parts)} (nothing was loaded). Pass "
            "strict=False to load the matching keys, or key_map= to rename checkpoint keys.")
    with torch.no_grad():
        for _, key, target in loads:  # state_dict order, as load_state_dict copies
            source = ckpt.tensor(key)
            if _C._tensor_state(target) == _LAZY:
                target.copy_(source)  # recorded; the source is kept, not copied
            else:
                _copy_real(target, source)
    return LoadResult(missing, unexpected)
