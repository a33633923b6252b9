"""Comparing an eager and a lazy run of one program, bit for bit.

For every name the program bound: tensors (type, dtype, shape, strides,
storage offset, requires_grad, device, values bitwise: NaN payloads and
signed zeros count; none may be lazy any more), NumPy arrays (dtype, shape,
bytes), explicit generators (``get_state()``), Python values (floats by
their bits; :class:`Raised` by exception type); which names are one object
and which share a storage; and the generator reads after the last line.
"""
from __future__ import annotations

import gc
import struct
from typing import Any, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

import lazyinit

from .runtime import NAME, RunResult, is_pending, lazy_leftovers, name_key, run_program

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class InvalidProgram(Exception):
    """The eager run failed: a generator problem, not a lazyinit one."""


def bits(t: torch.Tensor) -> torch.Tensor:
    """``t`` viewed as integers of its element size (floats, bools)."""
    t = t.detach()
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        t = t.view(_INT_OF_SIZE[t.element_size()])
    return t


def tensors_bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(bits(a), bits(b))


def py_equal(a: Any, b: Any) -> bool:
    """Python values equal, floats by their bits, containers item by item."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(py_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return tensors_bitwise_equal(a, b)
    if isinstance(a, np.ndarray):
        return arrays_equal(a, b)
    return bool(a == b)


def arrays_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def storage_key(t: torch.Tensor) -> Optional[int]:
    """Which storage ``t`` views (its StorageImpl, so also for zero-byte
    storages); None for a discarded lazy tensor."""
    try:
        if hasattr(t, "untyped_storage"):
            return t.untyped_storage()._cdata
        return t.storage()._storage._cdata
    except (NotImplementedError, RuntimeError, AttributeError):  # a discarded lazy tensor
        return None


def describe(t: torch.Tensor) -> str:
    return (f"{type(t).__name__} {t.dtype} shape={tuple(t.shape)} stride={t.stride()} "
            f"offset={t.storage_offset()} requires_grad={t.requires_grad}")


def _preview(t: torch.Tensor) -> str:
    try:
        return str(t.detach().flatten()[:6].tolist())
    except Exception as e:  # noqa: BLE001
        return f"<{e}>"


_FIELDS = [("type", lambda t: type(t).__name__), ("dtype", lambda t: t.dtype),
           ("shape", lambda t: tuple(t.shape)), ("stride", lambda t: t.stride()),
           ("storage_offset", lambda t: t.storage_offset()),
           ("requires_grad", lambda t: t.requires_grad)]


def compare_tensor(name: str, e: torch.Tensor, l: Any) -> List[str]:
    if not isinstance(l, torch.Tensor):
        return [f"{name}: lazy run has {type(l).__name__}, eager a tensor"]
    if is_pending(l):
        return [f"{name}: still lazy after materializing everything"]
    out = []
    if l.device != e.device:
        out.append(f"{name}: device {l.device} != eager {e.device}")
    # Strides of a tensor without elements are not compared: no value reads
    # them, and they are an open difference on torch 2.x (docs/fuzzing.md,
    # findings 33 and 35, strict xfails in test_fuzz_regressions.py).
    diff = [f for f, get in _FIELDS
            if get(l) != get(e) and not (f == "stride" and e.numel() == 0)]
    if diff:
        out.append(f"{name}: metadata differs ({', '.join(diff)}): "
                   f"lazy [{describe(l)}] eager [{describe(e)}]")
    elif l.device == e.device and not tensors_bitwise_equal(e, l):
        out.append(f"{name}: values differ: lazy {_preview(l)} eager {_preview(e)}")
    return out


def _compare_value(k: str, ev: Any, lv: Any) -> List[str]:
    if isinstance(ev, torch.Tensor):
        return compare_tensor(k, ev, lv)
    if isinstance(ev, torch.Generator):
        if not isinstance(lv, torch.Generator) or not torch.equal(ev.get_state(), lv.get_state()):
            return [f"{k}: explicit generator state differs"]
        return []
    if isinstance(ev, np.ndarray):
        if not isinstance(lv, np.ndarray) or not arrays_equal(ev, lv):
            return [f"{k}: NumPy array differs: lazy {lv!r:.120} eager {ev!r:.120}"]
        return []
    if isinstance(ev, (nn.Module, dict)):
        return []  # their tensors are bound to names of their own
    if not py_equal(ev, lv):
        return [f"{k}: Python value lazy {lv!r} != eager {ev!r}"]
    return []


def _compare_aliasing(eager: RunResult, lazy: RunResult, names: List[str]) -> List[str]:
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ea, eb, la, lb = eager.ns[a], eager.ns[b], lazy.ns[a], lazy.ns[b]
            if (ea is eb) != (la is lb):
                out.append(f"{a}, {b}: one object in {'eager' if ea is eb else 'lazy'} only")
            keys = [storage_key(x) for x in (ea, eb, la, lb)]
            if None not in keys and (keys[0] == keys[1]) != (keys[2] == keys[3]):
                out.append(f"{a}, {b}: share storage in {'eager' if keys[0] == keys[1] else 'lazy'} only")
    return out


def compare_runs(eager: RunResult, lazy: RunResult) -> List[str]:
    """Mismatches between an eager and a lazy run of one program."""
    if lazy.error is not None:
        i, e = lazy.error
        where = f"line {i}" if i < len(lazy.lines) else "the final generator reads"
        return [f"lazy run raised at {where}: {type(e).__name__}: {e}"]
    out: List[str] = []
    left = lazy_leftovers(lazy.ns)
    if left:
        out.append("still lazy after materializing everything: " + ", ".join(left))
    names = sorted((k for k in eager.ns if NAME.match(k)), key=name_key)
    tensor_names = []
    for k in names:
        ev, lv = eager.ns[k], lazy.ns.get(k, "<missing>")
        out += _compare_value(k, ev, lv)
        if isinstance(ev, torch.Tensor) and isinstance(lv, torch.Tensor) and not is_pending(lv):
            tensor_names.append(k)
    out += _compare_aliasing(eager, lazy, tensor_names)
    for what, ev in eager.final_reads.items():
        if not py_equal(ev, lazy.final_reads.get(what)):
            out.append(f"{what} after materializing everything differs from eager")
    return out


def check_program(lines: Sequence[str], auto_finish: bool = False) -> List[str]:
    """Runs ``lines`` eagerly and lazily; returns the mismatches (empty if
    none). Raises InvalidProgram if the eager run fails. ``auto_finish``:
    see run_program."""
    try:
        eager = run_program(lines, "eager")
        if eager.error is not None:
            i, e = eager.error
            raise InvalidProgram(f"eager run raised at line {i} ({lines[i]!r}): "
                                 f"{type(e).__name__}: {e}")
        lazy = run_program(lines, "lazy", auto_finish)
        failed = lazy.error is not None
        try:
            return compare_runs(eager, lazy)
        finally:
            del lazy
            if failed:
                # the traceback holds the program's frames: free its lazy
                # tensors now (a full collection costs ~0.1 s, so only here)
                gc.collect()
    finally:
        lazyinit._C._finish()

