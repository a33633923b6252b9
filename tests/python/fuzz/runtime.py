"""The two interpreters of a program: ``eager`` (plain CPU PyTorch) and
``lazy`` (lazyinit), and the helpers a program's lines call.

A program is a list of Python lines run with ``exec`` in a namespace that
``make_namespace(mode)`` builds:

* ``DEV``: ``{}`` eagerly; ``{"device": "lazy"}`` lazily outside a
  LazyInitContext and ``{}`` inside one (``enter_ctx()`` / ``exit_ctx()``);
* ``mat(x[, None])``: nothing eagerly; ``lazyinit.materialize(x, "cpu")``
  (or the default device) lazily;
* ``lazyinit``: the real module lazily; eagerly a stand-in whose
  ``materialize`` and ``discard`` do nothing;
* ``raises(fn, grad=False)``: calls ``fn`` (under ``torch.no_grad()``
  unless ``grad``) and returns a :class:`Raised`: the exception type's
  name, or ``"no error"``. Invalid-op lines bind it to a name, so the two
  runs' errors are compared like any other Python value;
* ``torch``, ``nn``, ``np``, ``copy``, ``math`` and ``Holder``.
"""
from __future__ import annotations

import copy
import math
import re
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

import lazyinit

#: Names a program binds: v tensor, r Python value, c container (module,
#: dict), s RNG state tensor, g torch.Generator, n NumPy array.
NAME = re.compile(r"^[vrcsgn]\d+$")
NAME_IN_LINE = re.compile(r"\b[vrcsgn]\d+\b")


class Holder(nn.Module):
    """A module holding the given tensors: Parameters as parameters, other
    tensors as buffers (deepcopy / materialize targets)."""

    def __init__(self, **tensors: torch.Tensor) -> None:
        super().__init__()
        for k, t in tensors.items():
            if isinstance(t, nn.Parameter):
                self.register_parameter(k, t)
            else:
                self.register_buffer(k, t)


class Raised:
    """What ``raises()`` saw: equal when the exception types are equal (the
    messages name devices and may differ; they are shown, not compared)."""

    def __init__(self, kind: str, message: str = "") -> None:
        self.kind = kind
        self.message = message

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Raised) and other.kind == self.kind

    def __hash__(self) -> int:
        return hash(self.kind)

    def __repr__(self) -> str:
        first = self.message.strip().splitlines()[0][:160] if self.message.strip() else ""
        return f"Raised({self.kind}{': ' + first if first else ''})"


def raises(fn: Callable[[], Any], grad: bool = False) -> Raised:
    """Runs ``fn``; returns the type of what it raised (or "no error")."""
    try:
        if grad:
            fn()
        else:
            with torch.no_grad():
                fn()
    except Exception as e:  # noqa: BLE001 -- the point is which type
        return Raised(type(e).__name__, str(e))
    return Raised("no error")


def _mat_lazy(obj: Any, device: Any = "cpu") -> Any:
    if isinstance(obj, dict):
        for v in obj.values():
            _mat_lazy(v, device)
        return obj
    return lazyinit.materialize(obj, device)


class _EagerLazyinit:
    """``lazyinit`` as the eager run sees it: materializing and discarding
    do nothing."""

    class LazyInitContext:
        @staticmethod
        def materialize(module: Any, verbose: bool = False) -> Any:
            return module

    @staticmethod
    def materialize(obj: Any, device: Any = None, progress: Any = None) -> Any:
        return obj

    @staticmethod
    def discard(obj: Any) -> None:
        return None


def _common_namespace() -> Dict[str, Any]:
    return {"torch": torch, "nn": nn, "np": np, "copy": copy, "math": math,
            "Holder": Holder, "raises": raises}


def make_namespace(mode: str) -> Dict[str, Any]:
    """Globals a program runs in. ``mode`` is "eager" or "lazy"."""
    ns = _common_namespace()
    if mode == "eager":
        ns["lazyinit"] = _EagerLazyinit
        ns["DEV"] = {}
        ns["enter_ctx"] = lambda default_device=None: None
        ns["exit_ctx"] = lambda: None
        ns["mat"] = lambda obj, device="cpu": obj
        return ns
    if mode != "lazy":
        raise ValueError(mode)
    dev: Dict[str, Any] = {"device": "lazy"}
    state: Dict[str, Any] = {"ctx": None}

    def enter_ctx(default_device: Any = None) -> None:
        ctx = lazyinit.LazyInitContext(default_device)
        ctx.__enter__()
        state["ctx"] = ctx
        dev.clear()

    def exit_ctx() -> None:
        ctx, state["ctx"] = state["ctx"], None
        dev["device"] = "lazy"
        ctx.__exit__(None, None, None)

    ns.update({"DEV": dev, "enter_ctx": enter_ctx, "exit_ctx": exit_ctx, "mat": _mat_lazy,
               "lazyinit": lazyinit, "__ctx_state": state})
    return ns


_CODE_CACHE: Dict[str, Any] = {}


def code(line: str) -> Any:
    """``line`` compiled (cached: the generator's shadow and both runs
    execute the same lines)."""
    c = _CODE_CACHE.get(line)
    if c is None:
        c = compile(line, "<fuzz program>", "exec")
        if len(_CODE_CACHE) > 200_000:
            _CODE_CACHE.clear()
        _CODE_CACHE[line] = c
    return c


class RunResult:
    """A finished run: its namespace, the first error (line index,
    exception) if any, and the generator reads made after the last line."""

    def __init__(self, ns: Dict[str, Any], error: Optional[Tuple[int, BaseException]],
                 final_reads: Dict[str, Any]) -> None:
        self.ns = ns
        self.error = error
        self.final_reads = final_reads
        self.auto_lines: List[str] = []
        self.lines: List[str] = []


def name_key(k: str) -> Tuple[str, int]:
    return (k[0], int(k[1:]))


def is_pending(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and lazyinit.is_lazy(t)


def lazy_leftovers(ns: Dict[str, Any]) -> List[str]:
    """Names (and members of bound modules and dicts) still lazy."""
    out = []
    for k, v in ns.items():
        if not NAME.match(k):
            continue
        items: List[Tuple[str, Any]] = []
        if isinstance(v, nn.Module):
            items = [(f"{k}.{n}", t) for n, t in list(v.named_parameters()) + list(v.named_buffers())]
        elif isinstance(v, dict):
            items = [(f"{k}[{n!r}]", t) for n, t in v.items()]
        else:
            items = [(k, v)]
        out += [n for n, t in items if is_pending(t)]
    return out


def _auto_finish(ns: Dict[str, Any], n_lines: int) -> Tuple[List[str], Optional[Tuple[int, BaseException]]]:
    """Leaves the context and materializes whatever is still lazy, name by
    name (when minimizing, deleting lines deletes materializations)."""
    lines: List[str] = []
    st = ns.get("__ctx_state")
    if st is not None and st["ctx"] is not None:
        lines.append("exit_ctx()")
        ns["exit_ctx"]()
    for k in sorted((k for k in ns if NAME.match(k)), key=name_key):
        if lazy_leftovers({k: ns[k]}):
            lines.append(f"mat({k})")
            try:
                exec(code(lines[-1]), ns)
            except Exception as e:  # noqa: BLE001
                return lines, (n_lines, e)
    return lines, None


def _final_reads() -> Dict[str, Any]:
    """The generator as a program's end leaves it (lazyinit catches up)."""
    return {"torch.get_rng_state()": torch.get_rng_state(),
            "torch.initial_seed()": torch.initial_seed()}


def run_program(lines: Sequence[str], mode: str, auto_finish: bool = False) -> RunResult:
    """Runs the lines; stops at the first exception (recorded, not raised).
    ``auto_finish`` (lazy mode): afterwards, materializes whatever is still
    lazy (``RunResult.auto_lines`` says how)."""
    ns = make_namespace(mode)
    auto_lines: List[str] = []
    default_dtype = torch.get_default_dtype()
    grad = torch.is_grad_enabled()
    error = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            for i, line in enumerate(lines):
                try:
                    exec(code(line), ns)
                except Exception as e:  # noqa: BLE001 -- reported as a result
                    error = (i, e)
                    break
            if auto_finish and mode == "lazy" and error is None:
                auto_lines, error = _auto_finish(ns, len(lines))
        finally:
            st = ns.get("__ctx_state")
            if st is not None and st["ctx"] is not None:
                ns["exit_ctx"]()
            torch.set_default_dtype(default_dtype)
            torch.set_grad_enabled(grad)
    try:
        reads = _final_reads()
    except Exception as e:  # noqa: BLE001 -- lazyinit's catch-up replays pending ops
        if error is None:
            error = (len(lines) + len(auto_lines), e)
        reads = {}
    res = RunResult(ns, error, reads)
    res.auto_lines = auto_lines
    res.lines = list(lines) + auto_lines
    return res
