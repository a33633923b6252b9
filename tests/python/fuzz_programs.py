"""Differential fuzzing of lazyinit: random init programs run eagerly on the CPU
and lazily, compared bit for bit.

A *program* is a list of Python source lines over a small vocabulary (see
``Generator``). The same lines run in two modes:

* ``eager``: ``DEV`` is ``{}``, ``enter_ctx``/``exit_ctx``/``mat`` do nothing,
  so every tensor is an ordinary CPU tensor;
* ``lazy``: ``DEV`` is ``{"device": "lazy"}`` outside a LazyInitContext and
  ``{}`` inside one (``enter_ctx()`` enters a ``lazyinit.LazyInitContext``),
  and ``mat(x)`` is ``lazyinit.materialize(x, "cpu")``.

Tensors meant to stay real in both modes are created with ``device="cpu"``.
Every program starts with ``torch.manual_seed(k)`` and ends by materializing
every live lazy tensor in a generator-chosen order. ``check_program`` then
compares, name by name: every tensor (dtype, shape, strides, storage offset,
type, requires_grad, values bitwise -- NaN payloads and signed zeros
included), which tensors share storage and which names are one object,
every Python value a value-needing op returned (``item()``, ``tolist()``,
``bool()``, ...), RNG states read mid-program, explicit generators' states,
and finally ``torch.get_rng_state()`` (the raw generator state, read
without lazyinit's catch-up, is kept in ``RunResult.rng_raw`` but not
compared: see docs/fuzzing.md).

The generator runs each candidate line eagerly on a *shadow* namespace as it
goes, so it knows exact shapes (also of value-dependent ops such as
``nonzero``) and drops lines eager PyTorch rejects. It models which storages
are lazy in the lazy run, so that it never generates the documented
limitation: an in-place random op on a real CPU tensor while lazy random ops
are pending (real tensors are only ever used as sources; the only writes into
real tensors are ``copy_`` from lazy tensors into fresh CPU tensors).

Choices come from a ``Chooser``: ``HypothesisChooser`` (``programs()``, a
hypothesis strategy that shrinks) or ``RandomChooser`` (seeded
``random.Random``, used by benchmarks/fuzz_run.py). ``minimize`` shrinks a
failing program line by line.
"""
from __future__ import annotations

import copy
import gc
import math
import random
import re
import struct
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

import lazyinit

# --------------------------------------------------------------------------
# choosers
# --------------------------------------------------------------------------


class RandomChooser:
    """Choices from a seeded random.Random."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def int(self, lo: int, hi: int) -> int:
        return self.r.randint(lo, hi)

    def choice(self, seq: Sequence[Any]) -> Any:
        return seq[self.r.randrange(len(seq))]

    def flag(self, p: float) -> bool:
        return self.r.random() < p

    def perm(self, seq: Sequence[Any]) -> List[Any]:
        out = list(seq)
        self.r.shuffle(out)
        return out


class HypothesisChooser:
    """Choices drawn from hypothesis (``draw`` of st.composite / st.data()).
    Everything shrinks toward the first option / the smallest int / False."""

    def __init__(self, draw: Callable[[Any], Any]) -> None:
        from hypothesis import strategies as st
        self.st = st
        self.draw = draw

    def int(self, lo: int, hi: int) -> int:
        return self.draw(self.st.integers(lo, hi))

    def choice(self, seq: Sequence[Any]) -> Any:
        return self.draw(self.st.sampled_from(list(seq)))

    def flag(self, p: float) -> bool:
        return self.draw(self.st.integers(0, 99)) >= round(100 * (1 - p))

    def perm(self, seq: Sequence[Any]) -> List[Any]:
        return list(self.draw(self.st.permutations(list(seq))))


# --------------------------------------------------------------------------
# the two interpreters
# --------------------------------------------------------------------------

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


def _mat_lazy(obj: Any, device: Any = "cpu") -> Any:
    if isinstance(obj, dict):
        for v in obj.values():
            _mat_lazy(v, device)
        return obj
    return lazyinit.materialize(obj, device)


class _EagerLazyinit:
    """``lazyinit`` as the eager run sees it: materializing does nothing."""

    class LazyInitContext:
        @staticmethod
        def materialize(module: Any, verbose: bool = False) -> Any:
            return module

    @staticmethod
    def materialize(obj: Any, device: Any = None, progress: Any = None) -> Any:
        return obj


def make_namespace(mode: str) -> Dict[str, Any]:
    """Globals a program runs in. ``mode`` is "eager" or "lazy"."""
    ns: Dict[str, Any] = {"torch": torch, "nn": nn, "copy": copy, "math": math,
                          "Holder": Holder}
    if mode == "eager":
        ns["lazyinit"] = _EagerLazyinit
        ns["DEV"] = {}
        ns["enter_ctx"] = lambda default_device=None: None
        ns["exit_ctx"] = lambda: None
        ns["mat"] = lambda obj, device="cpu": obj
    elif mode == "lazy":
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

        ns["DEV"] = dev
        ns["enter_ctx"] = enter_ctx
        ns["exit_ctx"] = exit_ctx
        ns["mat"] = _mat_lazy
        ns["lazyinit"] = lazyinit
        ns["__ctx_state"] = state
    else:
        raise ValueError(mode)
    return ns


_CODE_CACHE: Dict[str, Any] = {}


def _code(line: str) -> Any:
    c = _CODE_CACHE.get(line)
    if c is None:
        c = compile(line, "<fuzz program>", "exec")
        if len(_CODE_CACHE) > 200_000:
            _CODE_CACHE.clear()
        _CODE_CACHE[line] = c
    return c


class RunResult:
    def __init__(self, ns: Dict[str, Any], error: Optional[Tuple[int, BaseException]],
                 rng_raw: torch.Tensor, rng_api: torch.Tensor) -> None:
        self.ns = ns
        self.error = error
        self.rng_raw = rng_raw
        self.rng_api = rng_api
        self.auto_lines: List[str] = []
        self.lines: List[str] = []


def _name_key(k: str) -> Tuple[str, int]:
    return (k[0], int(k[1:]))


def run_program(lines: Sequence[str], mode: str, auto_finish: bool = False) -> RunResult:
    """Runs the lines; stops at the first exception (recorded, not raised).
    ``auto_finish`` (lazy mode): afterwards, materializes whatever is still
    lazy, name by name (``RunResult.auto_lines`` says how); used when
    minimizing, where removing lines also removes materializations."""
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
                    exec(_code(line), ns)
                except Exception as e:  # noqa: BLE001 -- reported as a result
                    error = (i, e)
                    break
            if auto_finish and mode == "lazy" and error is None:
                st = ns.get("__ctx_state")
                if st is not None and st["ctx"] is not None:
                    auto_lines.append("exit_ctx()")
                    ns["exit_ctx"]()
                for k in sorted((k for k in ns if _NAME.match(k)), key=_name_key):
                    if _lazy_leftovers({k: ns[k]}):
                        auto_lines.append(f"mat({k})")
                        try:
                            exec(_code(auto_lines[-1]), ns)
                        except Exception as e:  # noqa: BLE001
                            error = (len(lines), e)
                            break
        finally:
            st = ns.get("__ctx_state")
            if st is not None and st["ctx"] is not None:
                ns["exit_ctx"]()
            torch.set_default_dtype(default_dtype)
            torch.set_grad_enabled(grad)
    rng_raw = torch.default_generator.get_state()
    try:
        rng_api = torch.get_rng_state()
    except Exception as e:  # noqa: BLE001 -- lazyinit's catch-up replays pending ops
        if error is None:
            error = (len(lines), e)
        rng_api = rng_raw
    res = RunResult(ns, error, rng_raw, rng_api)
    res.auto_lines = auto_lines
    res.lines = list(lines) + auto_lines
    return res


# --------------------------------------------------------------------------
# comparison
# --------------------------------------------------------------------------

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_NAME = re.compile(r"^[vrcsg]\d+$")


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        t = t.view(_INT_OF_SIZE[t.element_size()])
    return t


def tensors_bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(_bits(a), _bits(b))


def _py_equal(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_py_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return tensors_bitwise_equal(a, b)
    return a == b


def _storage_key(t: torch.Tensor) -> Optional[int]:
    s = t.storage()
    if s.nbytes() == 0 or s.data_ptr() == 0:
        return None
    return s.data_ptr()


def _is_pending(t: torch.Tensor) -> bool:
    return lazyinit.is_lazy(t)


def _describe(t: torch.Tensor) -> str:
    return (f"{type(t).__name__} {t.dtype} shape={tuple(t.shape)} stride={t.stride()} "
            f"offset={t.storage_offset()} requires_grad={t.requires_grad}")


def _preview(t: torch.Tensor) -> str:
    try:
        return str(t.detach().flatten()[:6].tolist())
    except Exception as e:  # noqa: BLE001
        return f"<{e}>"


def compare_tensor(name: str, e: torch.Tensor, l: Any) -> List[str]:
    if not isinstance(l, torch.Tensor):
        return [f"{name}: lazy run has {type(l).__name__}, eager a tensor"]
    if _is_pending(l):
        return [f"{name}: still lazy after materializing everything"]
    out = []
    if l.device != e.device:
        out.append(f"{name}: device {l.device} != eager {e.device}")
    fields = [("type", lambda t: type(t).__name__), ("dtype", lambda t: t.dtype),
              ("shape", lambda t: tuple(t.shape)), ("stride", lambda t: t.stride()),
              ("storage_offset", lambda t: t.storage_offset()),
              ("requires_grad", lambda t: t.requires_grad)]
    diff = [f for f, get in fields if get(l) != get(e)]
    if diff:
        out.append(f"{name}: metadata differs ({', '.join(diff)}): "
                   f"lazy [{_describe(l)}] eager [{_describe(e)}]")
    elif l.device == e.device and not tensors_bitwise_equal(e, l):
        out.append(f"{name}: values differ: lazy {_preview(l)} eager {_preview(e)}")
    return out


def _lazy_leftovers(ns: Dict[str, Any]) -> List[str]:
    out = []
    for k, v in ns.items():
        if not _NAME.match(k):
            continue
        items: List[Tuple[str, Any]] = []
        if isinstance(v, nn.Module):
            items = [(f"{k}.{n}", t) for n, t in list(v.named_parameters()) + list(v.named_buffers())]
        elif isinstance(v, dict):
            items = [(f"{k}[{n!r}]", t) for n, t in v.items()]
        else:
            items = [(k, v)]
        for n, t in items:
            if isinstance(t, torch.Tensor) and _is_pending(t):
                out.append(n)
    return out


def compare_runs(eager: RunResult, lazy: RunResult) -> List[str]:
    """Mismatches between an eager and a lazy run of one program."""
    if lazy.error is not None:
        i, e = lazy.error
        where = f"line {i}" if i < len(lazy.lines) else "the final torch.get_rng_state()"
        return [f"lazy run raised at {where}: {type(e).__name__}: {e}"]
    out: List[str] = []
    left = _lazy_leftovers(lazy.ns)
    if left:
        out.append("still lazy after materializing everything: " + ", ".join(left))
    names = sorted((k for k in eager.ns if _NAME.match(k)), key=lambda k: (k[0], int(k[1:])))
    tensor_names = []
    for k in names:
        ev, lv = eager.ns[k], lazy.ns.get(k, "<missing>")
        if isinstance(ev, torch.Tensor):
            out += compare_tensor(k, ev, lv)
            if isinstance(lv, torch.Tensor) and not _is_pending(lv):
                tensor_names.append(k)
        elif isinstance(ev, torch.Generator):
            if not isinstance(lv, torch.Generator) or not torch.equal(ev.get_state(), lv.get_state()):
                out.append(f"{k}: explicit generator state differs")
        elif isinstance(ev, (nn.Module, dict)):
            continue  # their tensors are bound to names of their own
        elif not _py_equal(ev, lv):
            out.append(f"{k}: Python value lazy {lv!r} != eager {ev!r}")
    # aliasing: which names share storage / are one object
    for i, a in enumerate(tensor_names):
        for b in tensor_names[i + 1:]:
            ea, eb, la, lb = eager.ns[a], eager.ns[b], lazy.ns[a], lazy.ns[b]
            if (ea is eb) != (la is lb):
                out.append(f"{a}, {b}: one object in {'eager' if ea is eb else 'lazy'} only")
            ka, kb, kla, klb = _storage_key(ea), _storage_key(eb), _storage_key(la), _storage_key(lb)
            if ka is not None and kb is not None and kla is not None and klb is not None:
                if (ka == kb) != (kla == klb):
                    out.append(f"{a}, {b}: share storage in {'eager' if ka == kb else 'lazy'} only")
    # The contract is torch.get_rng_state() (which catches up). The raw
    # generator may lag when the last lazy random tensors died unmaterialized
    # (see docs/fuzzing.md); that is not counted.
    if not torch.equal(eager.rng_api, lazy.rng_api):
        out.append("torch.get_rng_state() after materializing everything differs from eager")
    return out


class InvalidProgram(Exception):
    """The eager run failed: a generator problem, not a lazyinit one."""


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
                # tensors now. (A full collection costs ~0.1 s with torch
                # and hypothesis loaded, so only here.)
                gc.collect()
    finally:
        lazyinit._C._finish()


# --------------------------------------------------------------------------
# rendering and minimizing
# --------------------------------------------------------------------------

def render(lines: Sequence[str], mode: str) -> str:
    """A standalone script of the program in one mode (for reports)."""
    out = ["import copy, math", "import torch", "import torch.nn as nn"]
    if mode == "lazy":
        out.append("import lazyinit")
    body = "\n".join(lines)
    if "Holder(" in body:
        out += ["", "class Holder(nn.Module):",
                "    def __init__(self, **ts):",
                "        super().__init__()",
                "        for k, t in ts.items():",
                "            if isinstance(t, nn.Parameter): self.register_parameter(k, t)",
                "            else: self.register_buffer(k, t)"]
    out.append("")
    in_ctx = False
    for line in lines:
        if line.startswith("enter_ctx("):
            in_ctx = True
            if mode == "lazy":
                arg = line[len("enter_ctx("):-1]
                out.append(f"ctx = lazyinit.LazyInitContext({arg}); ctx.__enter__()")
            continue
        if line == "exit_ctx()":
            in_ctx = False
            if mode == "lazy":
                out.append("ctx.__exit__(None, None, None)")
            continue
        m = re.match(r"^mat\((\w+)(?:, (None))?\)$", line)
        if m:
            if mode == "lazy":
                dev = "" if m.group(2) else ', "cpu"'
                out.append(f"lazyinit.materialize({m.group(1)}{dev})")
            continue
        if mode == "eager" and line.startswith("lazyinit."):
            continue
        dev = ', device="lazy"' if (mode == "lazy" and not in_ctx) else ""
        out.append(line.replace(", **DEV", dev))
    return "\n".join(out) + "\n"


_DEFINES = re.compile(r"(?:^|; )(\w+) = ")


def _without(lines: List[str], drop: set) -> List[str]:
    """``lines`` without the indices in ``drop`` and, transitively, the later
    lines that use a name those lines defined."""
    gone: set = set()
    out = []
    for i, line in enumerate(lines):
        uses = set(re.findall(r"\b[vrcsg]\d+\b", line))
        if i in drop or (uses & gone):
            gone |= set(_DEFINES.findall(line))
            continue
        out.append(line)
    return out


def complete(lines: Sequence[str]) -> List[str]:
    """``lines`` plus the materializations auto_finish would run."""
    eager = run_program(lines, "eager")
    del eager
    lazy = run_program(lines, "lazy", auto_finish=True)
    extra = list(lazy.auto_lines)
    del lazy
    lazyinit._C._finish()
    return list(lines) + extra


def minimize(lines: Sequence[str], keep: Callable[[List[str]], bool]) -> List[str]:
    """Greedy deletion (chunks first, then single lines; a deleted line takes
    the lines using the names it defined with it): the smallest program for
    which ``keep`` still holds. The first line (the seed) is kept. ``keep``
    should run programs with auto_finish=True; the result has the
    materializations it needs appended (``complete``)."""
    cur = list(lines)
    chunk = max(1, len(cur) // 2)
    while True:
        i = 1
        changed = False
        while i < len(cur):
            cand = _without(cur, set(range(i, min(len(cur), i + chunk))))
            if cand != cur and _keeps(cand, keep):
                cur = cand
                changed = True
            else:
                i += chunk
        if changed:
            continue
        if chunk == 1:
            break
        chunk //= 2
    return cur


def _keeps(cand: List[str], keep: Callable[[List[str]], bool]) -> bool:
    try:
        return keep(cand)
    except InvalidProgram:
        return False


def mismatch_kind(m: str) -> str:
    """A coarse signature of a mismatch message (to group and to minimize)."""
    m = re.sub(r"^[vrcsg]\d+(, [vrcsg]\d+)?: ", "", m)
    m = re.sub(r"line \d+", "line N", m)
    if not m.startswith("lazy run raised"):
        m = re.sub(r":? ?lazy (\[|[-\w.]+ !=).*", "", m, flags=re.S)
    m = re.sub(r"\d+(\.\d+)?", "#", m)
    return m.strip()[:100]


# --------------------------------------------------------------------------
# the generator
# --------------------------------------------------------------------------

F32, F64, F16, BF16, I64, BOOL = (torch.float32, torch.float64, torch.float16,
                                   torch.bfloat16, torch.int64, torch.bool)
DT_NAME = {F32: "torch.float32", F64: "torch.float64", F16: "torch.float16",
           BF16: "torch.bfloat16", I64: "torch.int64", BOOL: "torch.bool",
           torch.int32: "torch.int32", torch.int16: "torch.int16"}
FLOAT_DTYPES = [F32, F64, F16, BF16]
ANY_DTYPES = [F32, F64, F16, BF16, I64]
NICE = [1.0, 0.0, -1.0, 0.5, 2.0, -0.25, 3.0, 0.001, -7.5, 10.0]
SAME_SIZE_VIEWS = {F32: [torch.int32], F64: [I64], I64: [F64], F16: [BF16, torch.int16],
                   BF16: [F16, torch.int16]}

# Feature names a Generator can switch off (all on by default).
#: Where "lazy" is DeviceType::Lazy (torch < 2.9), autograd keeps a view
#: function for every lazy view (Device::supports_as_strided() is false for
#: Lazy, as for XLA) and regenerates a view's grad_fn through it after an
#: in-place write; when the view's base does not require grad (any more),
#: torch fails "new_fn INTERNAL ASSERT FAILED" (finding 10 in
#: docs/fuzzing.md, a torch bug lazyinit cannot reach). The generator does not
#: write the two ways to get there on such torch versions: requires_grad_()
#: on a view, and an out= random factory (whose Python binding resets
#: requires_grad) into a tensor that requires grad.
AUTOGRAD_VIEW_FN = lazyinit.device_type == "lazy"

FEATURES = ("context", "real_sources", "views", "inplace", "copy", "outofplace", "ties",
            "deepcopy", "values", "init", "rng", "materialize_mid", "delete",
            "default_dtype", "generators", "set_data", "view_dtype", "modules", "random_oop")


def _fmt(x: Any) -> str:
    return repr(x)


def _shape_str(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _offsets(t: torch.Tensor) -> set:
    offs = {t.storage_offset()}
    for size, stride in zip(t.shape, t.stride()):
        offs = {o + i * stride for o in offs for i in range(size)}
    return offs


def _no_internal_overlap(t: torch.Tensor) -> bool:
    return len(_offsets(t)) == t.numel()


class _Group:
    __slots__ = ("lazy",)

    def __init__(self, lazy: bool) -> None:
        self.lazy = lazy


class Generator:
    """Builds a program op by op, running each line on an eager shadow."""

    def __init__(self, ch: Any, features: Sequence[str] = FEATURES, max_ops: int = 24) -> None:
        self.ch = ch
        self.features = set(features)
        self.max_ops = max_ops
        self.lines: List[str] = []
        self.ns = make_namespace("eager")
        self.group: Dict[str, _Group] = {}   # tensor var -> storage group
        self.kind: Dict[str, str] = {}       # var -> "t" tensor, "c" container, "s", "r", "g"
        self.counter = 0
        self.in_ctx = False
        self.default_dtype = F32

    # ---- bookkeeping ---------------------------------------------------

    def new_name(self, prefix: str = "v") -> str:
        name = f"{prefix}{self.counter}"
        self.counter += 1
        return name

    def t(self, name: str) -> torch.Tensor:
        return self.ns[name]

    def tensors(self) -> List[str]:
        return [k for k, v in self.kind.items() if v == "t"]

    def lazy_tensors(self) -> List[str]:
        return [k for k in self.tensors() if self.group[k].lazy]

    def real_tensors(self) -> List[str]:
        return [k for k in self.tensors() if not self.group[k].lazy]

    def writable(self) -> List[str]:
        return [k for k in self.lazy_tensors() if _no_internal_overlap(self.t(k))]

    def _exec(self, line: str) -> bool:
        before = set(self.ns)
        rng = torch.default_generator.get_state()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                exec(_code(line), self.ns)
        except Exception:  # noqa: BLE001 -- eager rejects it: drop the line
            for k in set(self.ns) - before:
                del self.ns[k]
            if not torch.equal(rng, torch.default_generator.get_state()):
                self._rebuild()
            return False
        return True

    def _rebuild(self) -> None:
        """Re-runs the accepted lines on a fresh shadow (after a rejected
        line that may have drawn random numbers)."""
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
        if not self._exec(line):
            return False
        self.lines.append(line)
        if effect is not None:
            effect()
        return True

    def eval(self, expr: str) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return eval(expr, self.ns)

    # effects
    def fx_new(self, name: str, lazy: bool) -> Callable[[], None]:
        def f() -> None:
            self.kind[name] = "t"
            self.group[name] = _Group(lazy)
        return f

    def fx_view(self, name: str, src: str) -> Callable[[], None]:
        def f() -> None:
            self.kind[name] = "t"
            self.group[name] = self.group[src]
        return f

    def fx_maybe_alias(self, name: str, src: str, lazy: Optional[bool] = None) -> Callable[[], None]:
        def f() -> None:
            self.kind[name] = "t"
            a, b = self.t(name), self.t(src)
            # zero-byte storages have no address to compare: ask autograd's
            # view tracking too
            view = a._base is not None and (a._base is b or a._base is b._base)
            if a is b or view or (_storage_key(a) is not None and _storage_key(a) == _storage_key(b)):
                self.group[name] = self.group[src]
            else:
                self.group[name] = _Group(self.group[src].lazy if lazy is None else lazy)
        return f

    # ---- small choices -------------------------------------------------

    def shape(self, max_dims: int = 3) -> Tuple[int, ...]:
        nd = self.ch.int(0, max_dims)
        return tuple(self.ch.int(0, 9) for _ in range(nd))

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

    # ---- factories ------------------------------------------------------

    def op_factory(self, real: bool = False) -> bool:
        ch = self.ch
        name = self.new_name()
        dev = ', device="cpu"' if real else ", **DEV"
        kinds = ["zeros", "randn", "rand", "empty_init", "ones", "full", "randint", "randperm",
                 "arange", "linspace", "eye", "tensor", "normal", "init_empty", "like",
                 "new", "legacy"]
        k = ch.choice(kinds)
        shape = self.shape()
        ss = _shape_str(shape)
        if k in ("zeros", "ones"):
            dt = self.dtype()
            line = f"{name} = torch.{k}({ss}{self.dtype_kw(dt)}{dev})"
        elif k == "full":
            # an int fill without dtype gives int64, a float one the default
            if ch.flag(0.4):
                fill = self.number(ch.int(-3, 9)) if ch.flag(0.5) else _fmt(self.nice())
                line = f"{name} = torch.full({ss}, {fill}{dev})"
            else:
                dt = self.dtype()
                fill = ch.int(-3, 9) if dt == I64 else self.nice()
                line = f"{name} = torch.full({ss}, {_fmt(fill)}{self.dtype_kw(dt)}{dev})"
        elif k in ("randn", "rand"):
            dt = self.dtype(floats_only=True)
            line = f"{name} = torch.{k}({ss}{self.dtype_kw(dt)}{dev})"
        elif k == "normal":
            line = f"{name} = torch.normal({_fmt(self.nice())}, {_fmt(abs(self.nice()) + 0.5)}, {ss}{dev})"
        elif k == "randint":
            lo = ch.int(-3, 3)
            hi = lo + ch.int(1, 20)
            dt = ch.choice([I64, I64, F32, F64])
            dkw = "" if dt == I64 else f", dtype={DT_NAME[dt]}"
            line = f"{name} = torch.randint({lo}, {hi}, {ss}{dkw}{dev})"
        elif k == "randperm":
            line = f"{name} = torch.randperm({ch.int(0, 30)}{dev})"
        elif k == "arange":
            # the dtype is inferred from the arguments' Python types when not given
            start, n = ch.int(-4, 4), ch.int(0, 20)
            step = ch.choice([1, 2, 3, 0.5, 0.25])
            form = ch.int(1, 3)
            if form == 1:
                args = self.number(n)
            elif form == 2:
                args = f"{self.number(start)}, {self.number(start + n)}"
            else:
                args = (f"{self.number(start)}, {self.number(start + n * step)}, "
                        f"{self.number(step)}")
            dkw = "" if ch.flag(0.4) else f", dtype={DT_NAME[self.dtype()]}"
            line = f"{name} = torch.arange({args}{dkw}{dev})"
        elif k == "linspace":
            dt = self.dtype(floats_only=True)
            line = (f"{name} = torch.linspace({_fmt(self.nice())}, {_fmt(self.nice())}, "
                    f"{ch.int(0, 20)}{self.dtype_kw(dt)}{dev})")
        elif k == "eye":
            dt = self.dtype()
            line = f"{name} = torch.eye({ch.int(0, 6)}, {ch.int(0, 6)}{self.dtype_kw(dt)}{dev})"
        elif k == "tensor":
            shp = tuple(min(s, 4) for s in shape)
            if ch.flag(0.3):  # dtype inferred from the literal
                line = f"{name} = torch.tensor({self.literal(shp, None)}{dev})"
            else:
                dt = self.dtype()
                line = f"{name} = torch.tensor({self.literal(shp, dt)}, dtype={DT_NAME[dt]}{dev})"
        elif k == "empty_init":
            dt = self.dtype(floats_only=True)
            init = ch.choice([f".normal_({_fmt(self.nice())}, {_fmt(abs(self.nice()))})",
                              f".uniform_({_fmt(-abs(self.nice()))}, {_fmt(abs(self.nice()))})",
                              f".fill_({_fmt(self.nice())})", ".zero_()"])
            if real and ("normal_" in init or "uniform_" in init):
                init = ".zero_()"  # no in-place random op on a real tensor
            line = f"{name} = torch.empty({ss}{self.dtype_kw(dt)}{dev}){init}"
        elif k == "init_empty":
            if real:
                return False
            dt = self.dtype(floats_only=True)
            fn = self.init_call("X")
            line = f"{name} = {fn.replace('X', f'torch.empty({ss}{self.dtype_kw(dt)}{dev})', 1)}"
        elif k == "like":
            src = self.pick(self.real_tensors() if real else self.lazy_tensors())
            if src is None:
                return False
            f = ch.choice(["zeros_like", "ones_like", "full_like", "randn_like", "rand_like",
                           "empty_like_init"])
            if real and f in ("randn_like", "rand_like"):
                return False  # an in-place random op on a real tensor
            if f == "full_like":
                line = f"{name} = torch.full_like({src}, {_fmt(self.nice())})"
            elif f == "empty_like_init":
                if real:
                    return False
                line = f"{name} = torch.empty_like({src}).normal_()"
            else:
                line = f"{name} = torch.{f}({src})"
        elif k == "new":
            src = self.pick(self.real_tensors() if real else self.lazy_tensors())
            if src is None:
                return False
            f = ch.choice(["new_zeros", "new_ones", "new_full", "new_empty"])
            if f == "new_full":
                line = f"{name} = {src}.new_full({ss}, {_fmt(self.nice())})"
            elif f == "new_empty":
                if real:
                    return False
                line = f"{name} = {src}.new_empty({ss}).uniform_()"
            else:
                line = f"{name} = {src}.{f}({ss})"
        elif k == "legacy":
            if real or not self.in_ctx or not shape:
                return False
            cls = ch.choice(["FloatTensor", "DoubleTensor", "Tensor"])
            init = ch.choice([".normal_()", ".uniform_()", ".zero_()", ".fill_(2.0)"])
            line = f"{name} = torch.{cls}({', '.join(map(str, shape))}){init}"
        else:  # pragma: no cover
            raise AssertionError(k)
        return self.emit(line, self.fx_new(name, lazy=not real))

    def op_real_scalar(self) -> bool:
        name = self.new_name()
        dt = self.ch.choice([F32, F64, I64])
        val = self.ch.int(-3, 5) if dt == I64 else self.nice()
        return self.emit(f'{name} = torch.tensor({_fmt(val)}, dtype={DT_NAME[dt]}, device="cpu")',
                         self.fx_new(name, lazy=False))

    def op_module(self) -> bool:
        """An nn module built on the lazy device (its parameters and buffers
        become variables)."""
        ch = self.ch
        a, b = ch.int(1, 6), ch.int(1, 6)
        dt = ch.choice(["", ", dtype=torch.float64", ", dtype=torch.bfloat16"])
        k = ch.choice(["Linear", "Embedding", "Conv1d", "LayerNorm", "BatchNorm1d", "Bilinear"])
        if k == "Linear":
            ctor = f"nn.Linear({a}, {b}, bias={ch.flag(0.7)}{dt}, **DEV)"
        elif k == "Embedding":
            pad = f", padding_idx={ch.int(0, a - 1)}" if ch.flag(0.3) else ""
            ctor = f"nn.Embedding({a}, {b}{pad}{dt}, **DEV)"
        elif k == "Conv1d":
            ctor = f"nn.Conv1d({a}, {b}, {ch.int(1, 3)}{dt}, **DEV)"
        elif k == "LayerNorm":
            ctor = f"nn.LayerNorm({a}{dt}, **DEV)"
        elif k == "BatchNorm1d":
            ctor = f"nn.BatchNorm1d({a}{dt}, **DEV)"
        else:
            ctor = f"nn.Bilinear({a}, {b}, {ch.int(1, 3)}{dt}, **DEV)"
        c = self.new_name("c")
        try:  # names of its tensors, from a meta-device twin (draws nothing)
            mod = self.eval(ctor.replace("**DEV", 'device="meta"'))
        except Exception:  # noqa: BLE001
            return False
        names = [n for n, _ in mod.named_parameters()] + [n for n, _ in mod.named_buffers()]
        outs = [self.new_name() for _ in names]
        line = f"{c} = {ctor}; " + "; ".join(f"{o} = {c}.{n}" for o, n in zip(outs, names))

        def fx() -> None:
            self.kind[c] = "c"
            for o in outs:
                self.fx_new(o, lazy=True)()
        return self.emit(line, fx)

    # ---- views ----------------------------------------------------------

    def view_expr(self, expr: str, t: torch.Tensor, pure: bool = True) -> Optional[str]:
        """A view op applied to ``expr`` (whose shadow value is ``t``)."""
        ch = self.ch
        nd = t.dim()
        s = tuple(t.shape)
        ops = ["narrow", "slice", "select", "transpose", "permute", "view", "unsqueeze",
               "expand", "diagonal", "t", "as_strided", "squeeze", "detach", "data",
               "unbind", "chunk", "view_dtype", "flatten_view"]
        if not pure:
            ops += ["reshape", "flatten", "contiguous"]
        op = ch.choice(ops)
        if op in ("narrow", "slice", "select", "transpose", "permute", "diagonal", "squeeze",
                  "unbind", "chunk") and nd == 0:
            return None
        d = ch.int(0, nd - 1) if nd else 0
        if op == "narrow":
            start = ch.int(0, s[d])
            return f"{expr}.narrow({d}, {start}, {ch.int(0, s[d] - start)})"
        if op == "slice":
            a = ch.int(0, s[d])
            b = ch.int(a, s[d])
            step = ch.choice([1, 2, 3])
            idx = ", ".join([":"] * d + [f"{a}:{b}" + (f":{step}" if step != 1 else "")])
            return f"{expr}[{idx}]"
        if op == "select":
            if s[d] == 0:
                return None
            i = ch.int(-s[d], s[d] - 1)
            return f"{expr}[{i}]" if d == 0 and ch.flag(0.5) else f"{expr}.select({d}, {i})"
        if op == "transpose":
            return f"{expr}.transpose({d}, {ch.int(-nd, nd - 1)})"
        if op == "permute":
            return f"{expr}.permute({', '.join(map(str, ch.perm(range(nd))))})"
        if op == "t":
            return f"{expr}.t()" if nd <= 2 else None
        if op == "unsqueeze":
            return f"{expr}.unsqueeze({ch.int(-nd - 1, nd)})"
        if op == "squeeze":
            return f"{expr}.squeeze({d})" if ch.flag(0.7) else f"{expr}.squeeze()"
        if op == "diagonal":
            if nd < 2:
                return None
            d2 = ch.int(0, nd - 1)
            if d2 == d:
                return None
            return f"{expr}.diagonal({ch.int(-3, 3)}, {d}, {d2})"
        if op in ("view", "flatten_view", "reshape", "flatten"):
            if op in ("flatten", "flatten_view"):
                return f"{expr}.view(-1)" if op == "flatten_view" else f"{expr}.flatten()"
            n = t.numel()
            divs = [x for x in range(1, min(n, 12) + 1) if n % x == 0] or [1]
            a = ch.choice(divs)
            cand = ch.choice([(n,), (a, n // a), (n // a, a), (1, n), (a, -1), (-1,),
                              (a, 1, n // a)]) if n else ch.choice([(0,), (0, 3), (2, 0, 1)])
            return f"{expr}.{'reshape' if op == 'reshape' else 'view'}({', '.join(map(str, cand))})"
        if op == "contiguous":
            return f"{expr}.contiguous()"
        if op == "expand":
            new = [ch.int(1, 4) if x == 1 and ch.flag(0.7) else -1 for x in s]
            lead = [ch.int(1, 3) for _ in range(ch.int(0, 1))]
            sizes = lead + new
            if not sizes:
                sizes = [ch.int(1, 3)]
            return f"{expr}.expand({', '.join(map(str, sizes))})"
        if op == "as_strided":
            storage_size = t.storage().size()
            ndim = ch.int(0, 2)
            sizes = [ch.int(1, 4) for _ in range(ndim)]
            strides, extent = [], 1
            for sz in reversed(sizes):  # innermost last; non-overlapping
                st = extent + ch.int(0, 2)
                strides.insert(0, st)
                extent = st * sz
            span = 1 + sum((sz - 1) * st for sz, st in zip(sizes, strides))
            if span > storage_size:
                return None
            off = ch.int(0, storage_size - span)
            return (f"{expr}.as_strided({_shape_str(sizes)}, {_shape_str(strides)}, {off})")
        if op == "detach":
            return f"{expr}.detach()"
        if op == "data":
            return f"{expr}.data"
        if op == "unbind":
            if s[d] == 0:
                return None
            return f"{expr}.unbind({d})[{ch.int(0, s[d] - 1)}]"
        if op == "chunk":
            k = ch.int(1, 3)
            try:
                n_chunks = len(t.detach().chunk(k, d)) if s[d] else 0
            except RuntimeError:
                return None
            if n_chunks == 0:
                return None
            return f"{expr}.chunk({k}, {d})[{ch.int(0, n_chunks - 1)}]"
        if op == "view_dtype":
            if "view_dtype" not in self.features:
                return None
            opts = SAME_SIZE_VIEWS.get(t.dtype)
            if not opts:
                return None
            return f"{expr}.view({DT_NAME[ch.choice(opts)]})"
        raise AssertionError(op)  # pragma: no cover

    def view_chain(self, src: str, max_len: int = 3) -> Optional[Tuple[str, torch.Tensor]]:
        expr, t = src, self.t(src)
        for _ in range(self.ch.int(1, max_len)):
            e = self.view_expr(expr, t)
            if e is None:
                continue
            try:
                t2 = self.eval(e)
            except Exception:  # noqa: BLE001
                continue
            expr, t = e, t2
        return (expr, t) if expr != src else None

    def op_view(self) -> bool:
        src = self.pick(self.tensors())
        if src is None:
            return False
        e = self.view_expr(src, self.t(src), pure=False)
        if e is None:
            return False
        name = self.new_name()
        if any(x in e for x in (".reshape(", ".flatten(", ".contiguous(")):
            return self.emit(f"{name} = {e}", self.fx_maybe_alias(name, src))
        return self.emit(f"{name} = {e}", self.fx_view(name, src))

    # ---- in-place ops (lazy targets only) -----------------------------------

    def target(self) -> Optional[Tuple[str, str, torch.Tensor]]:
        """(var, expression, shadow) of a writable lazy tensor, maybe through
        an inline chain of views."""
        src = self.pick(self.writable())
        if src is None:
            return None
        if self.ch.flag(0.35):
            vc = self.view_chain(src)
            if vc is not None and _no_internal_overlap(vc[1]):
                return src, vc[0], vc[1]
        return src, src, self.t(src)

    def operand(self, tgt: str, tt: torch.Tensor, real_any: bool) -> Optional[str]:
        """A tensor operand for an in-place op on ``tt`` (of var ``tgt``): a lazy
        tensor of another storage, or of the same storage if disjoint from the
        target (or the very same tensor), or a real one (0-dim unless
        ``real_any``, i.e. for copy_)."""
        cands = []
        toffs = None
        for k in self.tensors():
            t = self.t(k)
            try:
                torch.broadcast_shapes(t.shape, tt.shape)
            except RuntimeError:
                continue
            if not self.group[k].lazy:
                if real_any or t.dim() == 0:
                    cands.append(k)
            elif self.group[k] is not self.group[tgt]:
                cands.append(k)
            else:
                if toffs is None:
                    toffs = _offsets(tt)
                if t is tt or not (_offsets(t) & toffs):
                    cands.append(k)
        return self.pick(cands)

    def op_inplace(self) -> bool:
        tg = self.target()
        if tg is None:
            return False
        var, expr, tt = tg
        ch = self.ch
        op = ch.choice(["normal_", "uniform_", "fill_", "zero_", "mul_", "add_", "clamp_",
                        "erfinv_", "setitem", "exponential_", "bernoulli_", "random_",
                        "log_normal_", "cauchy_", "geometric_", "fork_rng", "masked_fill_",
                        "index_fill_", "index_put", "out_random", "out_binary"])
        n = self.nice
        if op == "normal_":
            call = f"{expr}.normal_({_fmt(n())}, {_fmt(abs(n()))})"
        elif op == "uniform_":
            a = n()
            call = f"{expr}.uniform_({_fmt(a)}, {_fmt(a + abs(n()))})"
        elif op == "fill_":
            if ch.flag(0.3):
                o = self.operand(var, tt, real_any=False)
                if o is None or self.t(o).dim() != 0:
                    return False
                call = f"{expr}.fill_({o})"
            else:
                call = f"{expr}.fill_({_fmt(n())})"
        elif op == "zero_":
            call = f"{expr}.zero_()"
        elif op in ("mul_", "add_"):
            if ch.flag(0.5):
                o = self.operand(var, tt, real_any=False)
                if o is None:
                    return False
                alpha = f", alpha={_fmt(n())}" if op == "add_" and ch.flag(0.3) else ""
                call = f"{expr}.{op}({o}{alpha})"
            else:
                call = f"{expr}.{op}({_fmt(n())})"
        elif op == "clamp_":
            a = n()
            call = f"{expr}.clamp_({_fmt(a)}, {_fmt(a + abs(n()))})"
        elif op == "erfinv_":
            call = f"{expr}.erfinv_()"
        elif op == "setitem":
            nd = tt.dim()
            if nd == 0:
                idx = "..."
            else:
                d = ch.int(0, nd - 1)
                a = ch.int(0, tt.shape[d])
                idx = ", ".join([":"] * d + [f"{a}:{ch.int(a, tt.shape[d])}"])
            if ch.flag(0.5):
                o = self.operand(var, tt, real_any=True)
                if o is None:
                    return False
                if self.group[o].lazy and self.group[o] is self.group[var] and self.t(o) is not tt:
                    # reads its own storage: x[a:b] = -y where y is disjoint
                    rhs = f"-{o}" if ch.flag(0.5) else o
                else:
                    rhs = o
                call = f"{expr}[{idx}] = {rhs}"
            else:
                call = f"{expr}[{idx}] = {_fmt(n())}"
        elif op == "exponential_":
            call = f"{expr}.exponential_({_fmt(abs(n()) + 0.5)})"
        elif op == "bernoulli_":
            call = f"{expr}.bernoulli_({ch.choice([0.5, 0.1, 0.9, 0.0, 1.0])})"
        elif op == "random_":
            call = f"{expr}.random_({ch.int(0, 3)}, {ch.int(4, 20)})"
        elif op == "log_normal_":
            call = f"{expr}.log_normal_(0.0, 0.5)"
        elif op == "cauchy_":
            call = f"{expr}.cauchy_()"
        elif op == "geometric_":
            call = f"{expr}.geometric_({ch.choice([0.5, 0.2, 0.9])})"
        elif op == "fork_rng":
            if "rng" not in self.features:
                return False
            return self.emit(f"with torch.random.fork_rng(): {expr}.normal_()")
        elif op == "masked_fill_":
            # the mask is read from the target itself, or from another tensor
            m = self.operand(var, tt, real_any=False) if ch.flag(0.4) else None
            mask = f"({m} > 0)" if m is not None else f"({expr} > 0)"
            call = f"{expr}.masked_fill_({mask}, {_fmt(n())})"
        elif op in ("index_fill_", "index_put"):
            if tt.dim() == 0:
                return False
            d = ch.int(0, tt.dim() - 1) if op == "index_fill_" else 0
            if tt.shape[d] == 0:
                return False
            idx = sorted({ch.int(0, tt.shape[d] - 1) for _ in range(ch.int(1, 3))})
            index = f"torch.tensor({idx}, **DEV)"
            if op == "index_fill_":
                call = f"{expr}.index_fill_({d}, {index}, {_fmt(n())})"
            else:
                call = f"{expr}[{index}] = {_fmt(n())}"
        elif op == "out_random":
            if AUTOGRAD_VIEW_FN and (tt.requires_grad or (
                    tt._base is not None and tt._base.requires_grad)):
                return False
            size = _shape_str(tuple(tt.shape))
            f = ch.choice([f"torch.randn({size}", f"torch.rand({size}",
                           f"torch.normal(0.5, 2.0, {size}", f"torch.randint(0, 7, {size}"])
            call = f"{f}, out={expr})"
        elif op == "out_binary":
            # a lazy input: with only CPU scalars in, an out= on another device
            # is refused by TensorIterator (as for CUDA)
            o = self.operand(var, tt, real_any=False)
            if o is None or not self.group[o].lazy:
                return False
            call = f"torch.{ch.choice(['add', 'mul'])}({o}, {_fmt(n())}, out={expr})"
        else:  # pragma: no cover
            raise AssertionError(op)
        return self.emit(f"with torch.no_grad(): {call}")

    def op_copy(self) -> bool:
        tg = self.target()
        if tg is None:
            return False
        var, expr, tt = tg
        o = self.operand(var, tt, real_any=True)
        if o is None:
            return False
        # copy_ refuses overlapping source and destination: operand() only
        # offers tensors of the target's storage that are disjoint from it
        nb = ", non_blocking=True" if self.ch.flag(0.1) else ""
        return self.emit(f"with torch.no_grad(): {expr}.copy_({o}{nb})")

    def op_copy_into_real(self) -> bool:
        src = self.pick(self.lazy_tensors())
        if src is None:
            return False
        name = self.new_name()
        t = self.t(src)
        if self.ch.flag(0.5):
            line = f'{name} = torch.empty_like({src}, device="cpu").copy_({src})'
        else:
            dt = self.dtype()
            line = (f'{name} = torch.zeros({_shape_str(tuple(t.shape))}, dtype={DT_NAME[dt]}, '
                    f'device="cpu").copy_({src})')
        return self.emit(line, self.fx_new(name, lazy=False))

    # ---- out-of-place ops -------------------------------------------------

    def partner(self, a: str, pred: Callable[[torch.Tensor, torch.Tensor], bool]) -> Optional[str]:
        """A second operand: same lazy-ness as ``a``, or a real 0-dim tensor."""
        ta = self.t(a)
        cands = []
        for k in self.tensors():
            tk = self.t(k)
            ok_dev = (self.group[k].lazy == self.group[a].lazy) or (
                not self.group[k].lazy and tk.dim() == 0)
            if ok_dev and pred(ta, tk):
                cands.append(k)
        return self.pick(cands)

    def op_outofplace(self) -> bool:
        a = self.pick(self.tensors())
        if a is None:
            return False
        ch = self.ch
        name = self.new_name()
        op = ch.choice(["add", "mul", "matmul", "cat", "clone", "to", "scalar", "sum", "max",
                        "unary", "stack", "contiguous", "compare", "where"])
        lazy = self.group[a].lazy
        maybe_alias = False

        def bcast(x: torch.Tensor, y: torch.Tensor) -> bool:
            try:
                torch.broadcast_shapes(x.shape, y.shape)
                return True
            except RuntimeError:
                return False

        if op in ("add", "mul"):
            b = self.partner(a, bcast)
            if b is None:
                return False
            if op == "add" and ch.flag(0.3):
                line = f"{name} = torch.add({a}, {b}, alpha={_fmt(self.nice())})"
            else:
                line = f"{name} = {a} {'+' if op == 'add' else '*'} {b}"
            lazy = lazy or self.group[b].lazy
        elif op == "matmul":
            def mm(x: torch.Tensor, y: torch.Tensor) -> bool:
                if x.dtype != y.dtype or x.dim() == 0 or y.dim() == 0:
                    return False
                kx = x.shape[-1]
                ky = y.shape[0] if y.dim() == 1 else y.shape[-2]
                return kx == ky
            b = self.partner(a, mm)
            if b is None:
                return False
            line = f"{name} = {a} @ {b}" if ch.flag(0.5) else f"{name} = torch.matmul({a}, {b})"
            lazy = lazy or self.group[b].lazy
        elif op in ("cat", "stack"):
            ta = self.t(a)
            if ta.dim() == 0 and op == "cat":
                return False
            d = ch.int(0, max(ta.dim() - 1, 0)) if op == "cat" else ch.int(0, ta.dim())

            def same(x: torch.Tensor, y: torch.Tensor) -> bool:
                if x.dim() != y.dim() or x.dtype != y.dtype:
                    return False
                return all(p == q or (i == d and op == "cat") for i, (p, q) in
                           enumerate(zip(x.shape, y.shape)))
            others = [k for k in self.tensors()
                      if self.group[k].lazy == self.group[a].lazy and same(ta, self.t(k))]
            parts = [a] + [self.pick(others) for _ in range(ch.int(0, 2))]
            line = f"{name} = torch.{op}([{', '.join(parts)}], {d})"
        elif op == "clone":
            mf = ch.choice(["", "memory_format=torch.contiguous_format",
                            "memory_format=torch.preserve_format"])
            line = f"{name} = {a}.clone({mf})"
        elif op == "to":
            dt = self.dtype()
            form = ch.choice(["to", "method"])
            if form == "to":
                line = f"{name} = {a}.to({DT_NAME[dt]})"
            else:
                meth = {F32: "float", F64: "double", F16: "half", BF16: "bfloat16", I64: "long"}[dt]
                line = f"{name} = {a}.{meth}()"
            maybe_alias = True
        elif op == "contiguous":
            line = f"{name} = {a}.contiguous()"
            maybe_alias = True
        elif op == "scalar":
            line = f"{name} = {a} {ch.choice(['+', '*', '-', '/'])} {_fmt(self.nice())}"
        elif op == "sum":
            ta = self.t(a)
            if ta.dim() and ch.flag(0.5):
                line = f"{name} = {a}.sum({ch.int(0, ta.dim() - 1)})"
            else:
                line = f"{name} = {a}.sum()"
        elif op == "max":
            line = f"{name} = {a}.max()"
        elif op == "unary":
            f = ch.choice(["abs", "neg", "exp", "sqrt", "tanh", "erfinv", "clamp", "sigmoid",
                           "sign", "floor", "logical_not", "square", "reciprocal", "relu"])
            line = f"{name} = {a}.clamp(-0.5, 0.5)" if f == "clamp" else f"{name} = {a}.{f}()"
        elif op == "compare":
            line = f"{name} = {a} {ch.choice(['>', '<=', '=='])} {_fmt(self.nice())}"
        elif op == "where":
            b = self.partner(a, bcast)
            if b is None:
                return False
            line = f"{name} = torch.where({a} > 0, {a}, {b})"
            lazy = lazy or self.group[b].lazy
        else:  # pragma: no cover
            raise AssertionError(op)
        if maybe_alias:
            return self.emit(line, self.fx_maybe_alias(name, a, lazy))
        return self.emit(line, self.fx_new(name, lazy))

    def op_random_oop(self) -> bool:
        """Random ops that read a (lazy) tensor: bernoulli(p), multinomial,
        normal(mean_tensor, std), randint_like, dropout, poisson."""
        a = self.pick(self.lazy_tensors())
        if a is None:
            return False
        ch = self.ch
        name = self.new_name()
        gens = [k for k, kk in self.kind.items() if kk == "g"]
        gen = f", generator={self.pick(gens)}" if gens and ch.flag(0.2) else ""
        op = ch.choice(["bernoulli", "bernoulli_p", "multinomial", "normal", "randint_like",
                        "dropout", "poisson", "rand_like_dtype"])
        if op == "bernoulli":
            line = f"{name} = torch.bernoulli({a}.clamp(0, 1){gen})"
        elif op == "bernoulli_p":
            line = f"{name} = {a}.bernoulli({ch.choice([0.3, 0.5, 0.9])}{gen})"
        elif op == "multinomial":
            k = ch.int(1, 4)
            line = (f"{name} = torch.multinomial({a}.abs() + 0.1, {k}, "
                    f"replacement={ch.flag(0.5)}{gen})")
        elif op == "normal":
            line = f"{name} = torch.normal({a}, {_fmt(abs(self.nice()) + 0.1)}{gen})"
        elif op == "randint_like":
            line = f"{name} = torch.randint_like({a}, {ch.int(1, 10)})"
        elif op == "dropout":
            line = (f"{name} = nn.functional.dropout({a}, {ch.choice([0.1, 0.5, 0.9])}, "
                    f"training=True)")
        elif op == "poisson":
            line = f"{name} = torch.poisson({a}.abs(){gen})"
        else:
            line = f"{name} = torch.rand_like({a}, dtype={DT_NAME[self.dtype(floats_only=True)]})"
        # dropout of an empty tensor returns the input itself
        return self.emit(line, self.fx_maybe_alias(name, a, lazy=True))

    def op_requires_grad(self) -> bool:
        a = self.pick([k for k in self.tensors() if self.t(k).dtype.is_floating_point])
        if a is None:
            return False
        name = self.new_name()
        if self.ch.flag(0.5) or (AUTOGRAD_VIEW_FN and self.t(a)._base is not None):
            return self.emit(f"{name} = {a}.detach().requires_grad_()", self.fx_view(name, a))
        return self.emit(f"{name} = {a}.requires_grad_()", self.fx_view(name, a))

    # ---- ties and copies --------------------------------------------------

    def op_tie(self) -> bool:
        ch = self.ch
        k = ch.choice(["alias", "parameter", "deepcopy_dict", "deepcopy_module", "deepcopy_one"])
        if k.startswith("deepcopy") and "deepcopy" not in self.features:
            return False
        src = self.pick(self.tensors())
        if src is None:
            return False
        name = self.new_name()
        if k == "alias":
            return self.emit(f"{name} = {src}", self.fx_view(name, src))
        if k == "parameter":
            rg = "" if self.t(src).dtype.is_floating_point else ", requires_grad=False"
            if rg == "" and ch.flag(0.2):
                rg = ", requires_grad=False"
            return self.emit(f"{name} = nn.Parameter({src}{rg})", self.fx_view(name, src))
        if k == "deepcopy_one":
            return self.emit(f"{name} = copy.deepcopy({src})", self.fx_copy([name], [src]))
        members = [src] + [self.pick(self.tensors()) for _ in range(ch.int(0, 3))]
        keys = [f"k{i}" for i in range(len(members))]
        outs = [self.new_name() for _ in members]
        if k == "deepcopy_dict":
            d = "{" + ", ".join(f"'{kk}': {m}" for kk, m in zip(keys, members)) + "}"
            line = f"{name} = copy.deepcopy({d}); " + "; ".join(
                f"{o} = {name}['{kk}']" for o, kk in zip(outs, keys))
        else:
            hold = self.new_name("c")
            args = ", ".join(f"{kk}={m}" for kk, m in zip(keys, members))
            line = f"{hold} = Holder({args}); {name} = copy.deepcopy({hold}); " + "; ".join(
                f"{o} = {name}.{kk}" for o, kk in zip(outs, keys))
        name_c = name

        def fx() -> None:
            self.fx_copy(outs, members)()
            self.kind[name_c] = "c"
            if k == "deepcopy_module":
                self.kind[hold] = "c"
        return self.emit(line, fx)

    def fx_copy(self, outs: List[str], srcs: List[str]) -> Callable[[], None]:
        """Deep copies: new storages, shared among the copies where the eager
        copies share (views of one storage stay views of one copy)."""
        def f() -> None:
            by_key: Dict[Any, _Group] = {}
            for o, s in zip(outs, srcs):
                self.kind[o] = "t"
                key = _storage_key(self.t(o))
                g = by_key.get(key) if key is not None else None
                if g is None:
                    g = _Group(self.group[s].lazy)
                    if key is not None:
                        by_key[key] = g
                self.group[o] = g
        return f

    def op_set_data(self) -> bool:
        # ``a.data = b`` rebinds a; on a real tensor that would be writing a
        # real tensor (real tensors are sources only), so both are lazy.
        a = self.pick(self.lazy_tensors())
        if a is None:
            return False
        b = self.pick(self.lazy_tensors())
        if b is None or a == b:
            return False
        ta = self.t(a)
        others = [k for k in self.tensors() if k != a and self.t(k) is ta]

        def fx() -> None:
            for k in [a] + others:
                self.group[k] = self.group[b]
        return self.emit(f"{a}.data = {b}", fx)

    # ---- values needed early ------------------------------------------------

    def op_value(self) -> bool:
        a = self.pick(self.tensors())
        if a is None:
            return False
        ch = self.ch
        t = self.t(a)
        op = ch.choice(["item", "tolist", "nonzero", "bool", "max_item", "sum_item", "equal",
                        "mask", "argmax", "any", "numpy"])
        r = self.new_name("r")
        if op == "item":
            if t.numel() != 1:
                return False
            line = f"{r} = {a}.item()"
        elif op == "tolist":
            line = f"{r} = {a}.tolist()"
        elif op == "numpy":
            line = f"{r} = {a}.numpy().tolist()"
        elif op == "bool":
            if t.numel() != 1:
                return False
            line = f"{r} = bool({a})"
        elif op == "max_item":
            line = f"{r} = {a}.max().item()"
        elif op == "sum_item":
            line = f"{r} = {a}.sum().item()"
        elif op == "argmax":
            line = f"{r} = int({a}.argmax())"
        elif op == "any":
            line = f"{r} = bool(({a} > 0).any())"
        elif op == "equal":
            b = self.pick([k for k in self.tensors() if self.group[k].lazy == self.group[a].lazy])
            line = f"{r} = torch.equal({a}, {b})"
        elif op in ("nonzero", "mask"):
            v = self.new_name()
            line = f"{v} = {a}.nonzero()" if op == "nonzero" else f"{v} = {a}[{a} > 0]"
            return self.emit(line, self.fx_new(v, self.group[a].lazy))
        else:  # pragma: no cover
            raise AssertionError(op)

        def fx() -> None:
            self.kind[r] = "r"
        return self.emit(line, fx)

    # ---- torch.nn.init --------------------------------------------------------

    def init_call(self, x: str) -> str:
        ch = self.ch
        n = self.nice
        f = ch.choice(["normal_", "uniform_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                       "xavier_uniform_", "xavier_normal_", "kaiming_uniform_",
                       "kaiming_normal_", "trunc_normal_", "orthogonal_", "sparse_"])
        if f == "normal_":
            return f"nn.init.normal_({x}, {_fmt(n())}, {_fmt(abs(n()))})"
        if f == "uniform_":
            a = n()
            return f"nn.init.uniform_({x}, {_fmt(a)}, {_fmt(a + abs(n()))})"
        if f == "constant_":
            return f"nn.init.constant_({x}, {_fmt(n())})"
        if f in ("ones_", "zeros_", "eye_", "dirac_"):
            return f"nn.init.{f}({x})"
        if f in ("xavier_uniform_", "xavier_normal_"):
            return f"nn.init.{f}({x}, gain={_fmt(abs(n()) + 0.5)})"
        if f in ("kaiming_uniform_", "kaiming_normal_"):
            a = ch.choice(["math.sqrt(5)", "0", "0.1"])
            mode = ch.choice(["fan_in", "fan_out"])
            nl = ch.choice(["leaky_relu", "relu", "linear", "tanh"])
            return f"nn.init.{f}({x}, a={a}, mode='{mode}', nonlinearity='{nl}')"
        if f == "trunc_normal_":
            return f"nn.init.trunc_normal_({x}, std={ch.choice(['0.02', '1.0', '0.5'])})"
        if f == "orthogonal_":
            return f"nn.init.orthogonal_({x}, gain={_fmt(abs(n()) + 0.5)})"
        if f == "sparse_":
            return f"nn.init.sparse_({x}, {ch.choice(['0.1', '0.5', '0.9'])})"
        raise AssertionError(f)  # pragma: no cover

    def op_init(self) -> bool:
        tg = self.target()
        if tg is None:
            return False
        _, expr, _ = tg
        return self.emit(self.init_call(expr))

    # ---- RNG -----------------------------------------------------------------

    def op_rng(self) -> bool:
        ch = self.ch
        k = ch.choice(["manual_seed", "get_state", "set_state", "initial_seed", "generator",
                       "gen_factory", "gen_inplace"])
        states = [n for n, kk in self.kind.items() if kk == "s"]
        gens = [n for n, kk in self.kind.items() if kk == "g"]
        if k == "manual_seed":
            return self.emit(f"torch.manual_seed({ch.int(0, 3)})")
        if k == "get_state":
            s = self.new_name("s")
            return self.emit(f"{s} = torch.get_rng_state()", lambda: self.kind.__setitem__(s, "s"))
        if k == "set_state":
            if not states:
                return False
            return self.emit(f"torch.set_rng_state({self.pick(states)})")
        if k == "initial_seed":
            r = self.new_name("r")
            return self.emit(f"{r} = torch.initial_seed()", lambda: self.kind.__setitem__(r, "r"))
        if "generators" not in self.features:
            return False
        if k == "generator" or not gens:
            g = self.new_name("g")
            return self.emit(f"{g} = torch.Generator().manual_seed({ch.int(0, 3)})",
                             lambda: self.kind.__setitem__(g, "g"))
        g = self.pick(gens)
        if k == "gen_factory":
            name = self.new_name()
            f = ch.choice(["randn", "rand"])
            real = "real_sources" in self.features and ch.flag(0.25)  # a real random factory
            dev = ', device="cpu"' if real else ", **DEV"
            return self.emit(f"{name} = torch.{f}({_shape_str(self.shape())}, generator={g}{dev})",
                             self.fx_new(name, lazy=not real))
        tg = self.target()
        if tg is None:
            return False
        _, expr, _ = tg
        f = ch.choice(["normal_()", "uniform_()", "random_(0, 10)"])
        return self.emit(f"with torch.no_grad(): {expr}.{f[:-1]}{', ' if f[-2] != '(' else ''}"
                         f"generator={g})")

    # ---- materialization, deletion, context -------------------------------------

    def op_materialize(self) -> bool:
        mods = [k for k, kk in self.kind.items() if kk == "c" and isinstance(self.ns.get(k), nn.Module)]
        if mods and self.ch.flag(0.2):
            c = self.pick(mods)
            mod = self.ns[c]
            ts = [t for t in list(mod.parameters()) + list(mod.buffers())]

            def fxm() -> None:
                for k in self.tensors():
                    if any(self.t(k) is t or (_storage_key(self.t(k)) is not None and
                                              _storage_key(self.t(k)) == _storage_key(t))
                           for t in ts):
                        self.group[k].lazy = False
            form = self.ch.choice(["mat({0})", '{0}.to("cpu")', "{0}.cpu()"])
            return self.emit(form.format(c), fxm)
        cands = self.lazy_tensors()
        name = self.pick(cands)
        if name is None:
            return False
        form = self.ch.choice(["mat", "mat_default", "cpu", "to"])
        g = self.group[name]

        def fx() -> None:
            g.lazy = False
        if form == "mat":
            return self.emit(f"mat({name})", fx)
        if form == "mat_default":
            return self.emit(f"mat({name}, None)", fx)
        if form == "cpu":
            return self.emit(f"{name}.cpu()", fx)
        new = self.new_name()

        def fx2() -> None:
            fx()
            self.fx_view(new, name)()
        return self.emit(f'{new} = {name}.to("cpu")', fx2)

    def op_delete(self) -> bool:
        names = [k for k, kk in self.kind.items() if kk in ("t", "c")]
        name = self.pick(names)
        if name is None:
            return False

        def fx() -> None:
            del self.kind[name]
            self.group.pop(name, None)
        return self.emit(f"del {name}", fx)

    def op_context(self) -> bool:
        if self.in_ctx:
            def fx() -> None:
                self.in_ctx = False
            return self.emit("exit_ctx()", fx)

        def fx2() -> None:
            self.in_ctx = True
        arg = '"cpu"' if self.ch.flag(0.3) else ""
        return self.emit(f"enter_ctx({arg})", fx2)

    def op_default_dtype(self) -> bool:
        dt = self.ch.choice([F64, F32])

        def fx() -> None:
            self.default_dtype = dt
        return self.emit(f"torch.set_default_dtype({DT_NAME[dt]})", fx)

    # ---- driver --------------------------------------------------------------

    OPS = [  # (name, weight, feature)
        ("factory", 10, None), ("module", 2, "modules"), ("view", 8, "views"), ("inplace", 10, "inplace"),
        ("copy", 4, "copy"), ("outofplace", 7, "outofplace"), ("real_factory", 3, "real_sources"),
        ("real_scalar", 1, "real_sources"), ("copy_into_real", 1, "real_sources"),
        ("value", 4, "values"), ("init", 5, "init"), ("tie", 3, "ties"), ("rng", 3, "rng"),
        ("materialize", 2, "materialize_mid"), ("delete", 2, "delete"),
        ("random_oop", 3, "random_oop"), ("requires_grad", 1, "ties"),
        ("context", 1, "context"), ("default_dtype", 1, "default_dtype"),
        ("set_data", 1, "set_data"),
    ]

    def step(self) -> None:
        table = [name for name, w, feat in self.OPS if feat is None or feat in self.features
                 for _ in range(w)]
        if not self.tensors():
            table = ["factory"]
        op = self.ch.choice(table)
        fn = {
            "factory": lambda: self.op_factory(), "module": self.op_module,
            "real_factory": lambda: self.op_factory(real=True),
            "real_scalar": self.op_real_scalar, "copy_into_real": self.op_copy_into_real,
            "view": self.op_view, "inplace": self.op_inplace, "copy": self.op_copy,
            "outofplace": self.op_outofplace, "value": self.op_value, "init": self.op_init,
            "tie": self.op_tie, "rng": self.op_rng, "materialize": self.op_materialize,
            "delete": self.op_delete, "context": self.op_context,
            "default_dtype": self.op_default_dtype, "set_data": self.op_set_data,
            "random_oop": self.op_random_oop, "requires_grad": self.op_requires_grad,
        }[op]
        fn()

    def generate(self) -> "Program":
        ch = self.ch
        self.emit(f"torch.manual_seed({ch.int(0, 3)})")
        if "context" in self.features and ch.flag(0.3):
            self.op_context()
        for _ in range(ch.int(1, self.max_ops)):
            self.step()
        self.finish()
        return Program(self.lines)

    def finish(self) -> None:
        if self.in_ctx:
            self.op_context()
        # materialize every live lazy tensor (and containers), in a chosen order
        names = [k for k in self.tensors() if self.group[k].lazy]
        names += [k for k, kk in self.kind.items() if kk == "c"]
        for name in self.ch.perm(sorted(names, key=lambda k: int(k[1:]))):
            if self.kind.get(name) == "c":
                if isinstance(self.ns.get(name), nn.Module):
                    form = self.ch.choice(["mat({0})", "mat({0}, None)", '{0}.to("cpu")',
                                           "{0}.cpu()",
                                           "lazyinit.LazyInitContext.materialize({0})"])
                    self.lines.append(form.format(name))
                else:
                    self.lines.append(f"mat({name})")
                continue
            form = self.ch.choice(["mat", "mat", "mat_default", "cpu", "to"])
            self.lines.append({"mat": f"mat({name})", "mat_default": f"mat({name}, None)",
                               "cpu": f"{name}.cpu()", "to": f'{name}.to("cpu")'}[form])
        self.ns = {}  # drop the shadow's tensors


class Program:
    """A generated program: its lines, shown as the lazy-mode script."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = list(lines)

    def __repr__(self) -> str:
        return "Program([\n" + "".join(f"    {line!r},\n" for line in self.lines) + "])"


def generate_program(ch: Any, features: Sequence[str] = FEATURES, max_ops: int = 24) -> Program:
    default_dtype = torch.get_default_dtype()
    grad = torch.is_grad_enabled()
    try:
        return Generator(ch, features, max_ops).generate()
    finally:
        torch.set_default_dtype(default_dtype)
        torch.set_grad_enabled(grad)


def programs(features: Sequence[str] = FEATURES, max_ops: int = 24) -> Any:
    """A hypothesis strategy of Programs."""
    from hypothesis import strategies as st

    @st.composite
    def _programs(draw: Callable[[Any], Any]) -> Program:
        return generate_program(HypothesisChooser(draw), features, max_ops)
    return _programs()
