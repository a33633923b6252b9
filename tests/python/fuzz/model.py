"""The generator's core: the program so far, an eager *shadow* that runs
every candidate line as it is chosen (so exact shapes, dtypes and values are
known, and lines eager PyTorch rejects are dropped), and a model of which
storages are lazy in the lazy run.

The op families (``gen_*.py``) are mixins over :class:`GeneratorBase`;
``generator.py`` puts them together.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .compare import storage_key
from .runtime import Raised, code, make_namespace, run_program

F32, F64, F16, BF16, I64, BOOL = (torch.float32, torch.float64, torch.float16,
                                   torch.bfloat16, torch.int64, torch.bool)
I32 = torch.int32
DT_NAME = {F32: "torch.float32", F64: "torch.float64", F16: "torch.float16",
           BF16: "torch.bfloat16", I64: "torch.int64", BOOL: "torch.bool",
           I32: "torch.int32", torch.int16: "torch.int16", torch.uint8: "torch.uint8"}
NICE = [1.0, 0.0, -1.0, 0.5, 2.0, -0.25, 3.0, 0.001, -7.5, 10.0]

#: Feature names a generator can switch off (all on by default).
FEATURES = ("context", "real_sources", "views", "inplace", "copy", "outofplace", "ties",
            "deepcopy", "values", "init", "rng", "materialize_mid", "delete",
            "default_dtype", "generators", "set_data", "view_dtype", "modules", "random_oop",
            "numpy", "discard", "invalid", "linalg", "real_writes", "rng_reads",
            "kernel_checks", "overlap_errors")

#: Features that write programs of an open finding (docs/fuzzing.md), off
#: in campaigns and CI unless asked for (``--disable ""``). None today.
KNOWN_OPEN: Dict[str, int] = {}

def fits_storage(t: torch.Tensor) -> bool:
    """Whether every element of ``t`` lies inside its storage."""
    if t.numel() == 0 or t.layout != torch.strided:
        return True
    last = t.storage_offset() + sum((n - 1) * st for n, st in zip(t.shape, t.stride()))
    storage = t.untyped_storage() if hasattr(t, "untyped_storage") else t.storage()
    return (last + 1) * t.element_size() <= storage.nbytes()


def fmt(x: Any) -> str:
    return repr(x)


def shape_str(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def offsets(t: torch.Tensor) -> set:
    """Storage offsets of every element of ``t``."""
    offs = {t.storage_offset()}
    for size, stride in zip(t.shape, t.stride()):
        offs = {o + i * stride for o in offs for i in range(size)}
    return offs


def no_internal_overlap(t: torch.Tensor) -> bool:
    return len(offsets(t)) == t.numel()


class Group:
    """One storage of the lazy run (shared by views and ties): lazy or real."""

    __slots__ = ("lazy",)

    def __init__(self, lazy: bool) -> None:
        self.lazy = lazy


class GeneratorBase:
    """Builds a program op by op, running each line on an eager shadow."""

    def __init__(self, ch: Any, features: Sequence[str], max_ops: int) -> None:
        self.ch = ch
        self.features = set(features)
        self.max_ops = max_ops
        self.lines: List[str] = []
        self.ns = make_namespace("eager")
        self.group: Dict[str, Group] = {}   # tensor var -> storage group
        self.kind: Dict[str, str] = {}      # var -> "t", "c", "s", "r", "g", "n"
        self.counter = 0
        self.in_ctx = False
        self.default_dtype = F32

    # ---- names -----------------------------------------------------------

    def new_name(self, prefix: str = "v") -> str:
        name = f"{prefix}{self.counter}"
        self.counter += 1
        return name

    def t(self, name: str) -> Any:
        return self.ns[name]

    def names(self, kind: str) -> List[str]:
        return [k for k, v in self.kind.items() if v == kind]

    def tensors(self) -> List[str]:
        return self.names("t")

    def lazy_tensors(self) -> List[str]:
        return [k for k in self.tensors() if self.group[k].lazy]

    def real_tensors(self) -> List[str]:
        return [k for k in self.tensors() if not self.group[k].lazy]

    def writable(self, real: bool = False) -> List[str]:
        pool = self.real_tensors() if real else self.lazy_tensors()
        return [k for k in pool if no_internal_overlap(self.t(k))]

    def modules(self) -> List[str]:
        import torch.nn as nn
        return [k for k in self.names("c") if isinstance(self.ns.get(k), nn.Module)]

    def has(self, feature: str) -> bool:
        return feature in self.features

    # ---- running lines on the shadow ---------------------------------------

    def _exec(self, line: str) -> bool:
        before = set(self.ns)
        rng = torch.default_generator.get_state()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                exec(code(line), self.ns)
        except Exception:  # noqa: BLE001 -- eager rejects it: drop the line
            for k in set(self.ns) - before:
                del self.ns[k]
            if not torch.equal(rng, torch.default_generator.get_state()) or self._torn():
                self.rebuild()
            return False
        return True

    def _torn(self) -> bool:
        """Whether a tensor of the shadow claims more elements than its
        storage holds. An out= write that fails to resize a storage which is
        not resizable leaves eager's tensor so (its sizes set, its storage
        not grown; torch 1.13 and 2.14), and any later read or write of it is
        out of bounds: a segfault in eager itself (finding 41)."""
        seen = list(self.ns.values())
        for v in list(seen):
            if isinstance(v, torch.nn.Module):
                seen.extend(v.parameters())
                seen.extend(v.buffers())
        return any(isinstance(v, torch.Tensor) and not fits_storage(v) for v in seen)

    def rebuild(self) -> None:
        """Re-runs the accepted lines on a fresh shadow (after a rejected
        line that may have drawn random numbers or written tensors)."""
        # programs start with float32 as the default dtype; the shadow may
        # have changed it (torch.set_default_dtype lines)
        torch.set_default_dtype(F32)
        res = run_program(self.lines, "eager")
        assert res.error is None, res.error
        # keep bookkeeping; only the values change. run_program restored
        # the default dtype: the program may have changed it.
        self.ns = res.ns
        torch.set_default_dtype(self.default_dtype)

    def emit(self, line: str, effect: Optional[Callable[[], None]] = None) -> bool:
        """Runs ``line`` on the shadow; keeps it (and applies ``effect`` to
        the model) if eager PyTorch accepts it."""
        if not self._exec(line):
            return False
        self.lines.append(line)
        if effect is not None:
            effect()
        return True

    def emit_raising(self, r: str, call: str, grad: bool = False) -> bool:
        """``r = raises(lambda: call)``, kept only if eager raises there
        (the call must not have done anything then)."""
        line = f"{r} = raises(lambda: {call}{', grad=True' if grad else ''})"
        if not self._exec(line):
            return False
        res = self.ns.get(r)
        if not isinstance(res, Raised) or res.kind == "no error" or self._torn():
            del self.ns[r]
            self.rebuild()  # it ran (or tore a tensor): it may have written or drawn
            return False
        self.lines.append(line)
        self.kind[r] = "r"
        return True

    def eval(self, expr: str) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return eval(expr, self.ns)

    # ---- effects on the model ----------------------------------------------

    def fx_new(self, name: str, lazy: bool) -> Callable[[], None]:
        def f() -> None:
            self.kind[name] = "t"
            self.group[name] = Group(lazy)
        return f

    def fx_view(self, name: str, src: str) -> Callable[[], None]:
        def f() -> None:
            self.kind[name] = "t"
            self.group[name] = self.group[src]
        return f

    def fx_kind(self, name: str, kind: str) -> Callable[[], None]:
        def f() -> None:
            self.kind[name] = kind
        return f

    def fx_maybe_alias(self, name: str, src: str, lazy: Optional[bool] = None) -> Callable[[], None]:
        def f() -> None:
            self.kind[name] = "t"
            a, b = self.t(name), self.t(src)
            # zero-byte storages have no address to compare: ask autograd's
            # view tracking too
            view = a._base is not None and (a._base is b or a._base is b._base)
            if a is b or view or (storage_key(a) is not None and storage_key(a) == storage_key(b)):
                self.group[name] = self.group[src]
            else:
                self.group[name] = Group(self.group[src].lazy if lazy is None else lazy)
        return f

    def shares_storage(self, a: torch.Tensor, b: torch.Tensor) -> bool:
        if a is b:
            return True
        ka = storage_key(a)
        return ka is not None and ka == storage_key(b)

    def names_sharing(self, tensors: Sequence[torch.Tensor]) -> List[str]:
        """Tensor names whose storage is one of ``tensors``' storages (or
        that are one of those objects)."""
        return [k for k in self.tensors()
                if any(self.shares_storage(self.t(k), t) for t in tensors)]

    # ---- small choices -----------------------------------------------------

    def shape(self, max_dims: int = 3, max_size: int = 9) -> Tuple[int, ...]:
        nd = self.ch.int(0, max_dims)
        return tuple(self.ch.int(0, max_size) for _ in range(nd))

    def dtype(self, floats_only: bool = False) -> torch.dtype:
        if floats_only:
            return self.ch.choice([F32, F32, F64, F16, BF16])
        return self.ch.choice([F32, F32, F64, F16, BF16, I64])

    def dtype_kw(self, dt: torch.dtype) -> str:
        # sometimes rely on the default dtype (pinned at recording)
        if dt == self.default_dtype and dt in (F32, F64) and self.ch.flag(0.3):
            return ""
        return f", dtype={DT_NAME[dt]}"

    def nice(self) -> float:
        return self.ch.choice(NICE)

    def pick(self, names: Sequence[str]) -> Optional[str]:
        if not names:
            return None
        return self.ch.choice(sorted(names, key=lambda k: int(k[1:])))

    def number(self, x: float) -> str:
        """``x`` as a literal; whole numbers sometimes as floats ("8.0")."""
        if float(x).is_integer():
            return repr(float(x)) if self.ch.flag(0.4) else str(int(x))
        return repr(float(x))

    def literal(self, shape: Tuple[int, ...], dt: Optional[torch.dtype]) -> str:
        def build(dims: Tuple[int, ...]) -> Any:
            if not dims:
                if dt == I64 or (dt is None and self.ch.flag(0.5)):
                    return self.ch.int(-5, 9)
                return self.nice()
            return [build(dims[1:]) for _ in range(dims[0])]
        return repr(build(shape))

    def generator_kw(self, p: float = 0.2) -> str:
        """``, generator=gN`` now and then, when a generator exists."""
        gens = self.names("g")
        if gens and self.has("generators") and self.ch.flag(p):
            return f", generator={self.pick(gens)}"
        return ""
