"""Sources and ties: NumPy arrays (``torch.tensor(array)``,
``torch.from_numpy`` then writes to the array, ``load_state_dict`` from
reused buffers), ``.data`` assignment (lazy and real either side,
``param.data = ...``), names tied to one tensor, ``nn.Parameter``,
``requires_grad_``, ``copy.deepcopy`` of tensors, dicts and modules."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from .compare import storage_key
from .model import GeneratorBase, Group, fmt, shape_str

NP_DTYPES = {torch.float32: "np.float32", torch.float64: "np.float64",
             torch.float16: "np.float16", torch.int64: "np.int64", torch.bool: "np.bool_"}


class SourceOps(GeneratorBase):
    """``op_numpy``, ``op_load_state_dict``, ``op_set_data``, ``op_tie``,
    ``op_requires_grad``."""

    # ---- NumPy ---------------------------------------------------------------

    def new_array(self, shape: Optional[tuple] = None, dtype: Optional[str] = None) -> Optional[str]:
        """Emits a new NumPy array (values from NumPy, a seeded NumPy
        generator or a real tensor's ``numpy()``, which shares its memory)."""
        ch = self.ch
        n = self.new_name("n")
        shape = self.shape(max_size=5) if shape is None else shape
        dt = dtype or ch.choice(["np.float32", "np.float32", "np.float64", "np.float16", "np.int64"])
        real = [k for k in self.real_tensors() if self.t(k).dtype in NP_DTYPES
                and not self.t(k).requires_grad]
        form = ch.choice(["arange", "full", "random", "numpy"]) if dtype is None else ch.choice(
            ["arange", "full", "random"])
        count = int(np.prod(shape)) if shape else 1
        if form == "numpy" and real:
            rhs = f"{self.pick(real)}.numpy()"
        elif form == "full":
            rhs = f"np.full({shape_str(shape)}, {fmt(self.nice())}, dtype={dt})"
        elif form == "random":
            rhs = (f"np.random.RandomState({ch.int(0, 9)}).standard_normal({shape_str(shape)})"
                   f".astype({dt})")
        else:
            rhs = f"(np.arange({count}, dtype={dt}) * {fmt(self.nice())}).reshape({shape_str(shape)})"
        if not self.emit(f"{n} = {rhs}", self.fx_kind(n, "n")):
            return None
        return n

    def op_numpy(self) -> bool:
        ch = self.ch
        arrays = self.names("n")
        k = ch.choice(["new", "tensor", "from_numpy", "write", "write", "as_tensor_cpu"])
        if k == "new" or not arrays:
            return self.new_array() is not None
        a = self.pick(arrays)
        name = self.new_name()
        if k == "tensor":
            dt = f", dtype={ch.choice(['torch.float32', 'torch.float64'])}" if ch.flag(0.3) else ""
            return self.emit(f"{name} = torch.tensor({a}{dt}, **DEV)", self.fx_new(name, lazy=True))
        if k in ("from_numpy", "as_tensor_cpu"):
            rhs = f"torch.from_numpy({a})" if k == "from_numpy" else f'torch.as_tensor({a}, device="cpu")'
            return self.emit(f"{name} = {rhs}", self.fx_new(name, lazy=False))
        return self.emit(self.array_write(a))

    def array_write(self, a: str) -> str:
        """A write into array ``a`` (and so into real tensors sharing it)."""
        arr = self.t(a)
        v = fmt(self.nice()) if arr.dtype.kind == "f" else str(self.ch.int(-3, 9))
        form = self.ch.choice(["all", "iadd", "row", "copyto"])
        if form == "iadd":
            return f"{a} += {v}" if arr.dtype.kind != "b" else f"{a}[...] = True"
        if form == "row" and arr.ndim:
            return f"{a}[{self.ch.int(0, max(arr.shape[0] - 1, 0))}] = {v}"
        if form == "copyto":
            return f"np.copyto({a}, np.full({a}.shape, {v}, dtype={a}.dtype))"
        return f"{a}[...] = {v}"

    def op_load_state_dict(self) -> bool:
        """``module.load_state_dict`` from ``torch.from_numpy`` of arrays
        (new ones, or arrays reused and rewritten since an earlier load)."""
        mods = self.modules()
        c = self.pick(mods)
        if c is None:
            return False
        sd = self.ns[c].state_dict()
        keys = [k for k in sd if self.ch.flag(0.7)] or list(sd)[:1]
        parts = []
        for k in keys:
            t = sd[k]
            dt = NP_DTYPES.get(t.dtype, "np.float32")
            reuse = [n for n in self.names("n") if self.t(n).shape == tuple(t.shape)
                     and str(self.t(n).dtype) == dt[3:].rstrip("_")]
            a = self.pick(reuse) if reuse and self.ch.flag(0.6) else None
            if a is not None and self.ch.flag(0.7):
                self.emit(self.array_write(a))
            if a is None:
                a = self.new_array(tuple(t.shape), dt)
                if a is None:
                    return False
            parts.append(f"{k!r}: torch.from_numpy({a})")
        return self.emit(f"{c}.load_state_dict({{{', '.join(parts)}}}, strict=False)")

    # ---- .data -----------------------------------------------------------------

    def op_set_data(self) -> bool:
        """``a.data = b``: a takes b's storage and metadata. Lazy and real
        either side: lazyinit materializes the lazy one first."""
        ch = self.ch
        cands = self.tensors()
        a = self.pick(cands)
        if ch.flag(0.3) and self.modules():  # a module's parameter
            c = self.pick(self.modules())
            pnames = [n for n, _ in self.ns[c].named_parameters()]
            if pnames:
                p = ch.choice(pnames)
                same = [k for k in cands if self.t(k) is getattr(self.ns[c], p)]
                a = same[0] if same else None
        b = self.pick(cands)
        if a is None or b is None or a == b:
            return False
        ta = self.t(a)
        ga, gb = self.group[a], self.group[b]
        same_obj = [k for k in cands if self.t(k) is ta]

        def fx() -> None:
            if ga.lazy != gb.lazy:  # the lazy side was materialized first
                ga.lazy = gb.lazy = False
            for k in same_obj:
                self.group[k] = gb
        return self.emit(f"{a}.data = {b}", fx)

    # ---- ties and copies ---------------------------------------------------------

    def op_tie(self) -> bool:
        ch = self.ch
        k = ch.choice(["alias", "parameter", "deepcopy_dict", "deepcopy_module", "deepcopy_one"])
        if k.startswith("deepcopy") and not self.has("deepcopy"):
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
        return self._deepcopy_many(k, name, src)

    def _deepcopy_many(self, k: str, name: str, src: str) -> bool:
        members = [src] + [self.pick(self.tensors()) for _ in range(self.ch.int(0, 3))]
        keys = [f"k{i}" for i in range(len(members))]
        outs = [self.new_name() for _ in members]
        hold = self.new_name("c")
        if k == "deepcopy_dict":
            d = "{" + ", ".join(f"'{kk}': {m}" for kk, m in zip(keys, members)) + "}"
            line = f"{name} = copy.deepcopy({d}); " + "; ".join(
                f"{o} = {name}['{kk}']" for o, kk in zip(outs, keys))
        else:
            args = ", ".join(f"{kk}={m}" for kk, m in zip(keys, members))
            line = f"{hold} = Holder({args}); {name} = copy.deepcopy({hold}); " + "; ".join(
                f"{o} = {name}.{kk}" for o, kk in zip(outs, keys))

        def fx() -> None:
            self.fx_copy(outs, members)()
            self.kind[name] = "c"
            if k == "deepcopy_module":
                self.kind[hold] = "c"
        return self.emit(line, fx)

    def fx_copy(self, outs: List[str], srcs: List[str]) -> Callable[[], None]:
        """Deep copies: new storages, shared among the copies where the eager
        copies share (views of one storage stay views of one copy)."""
        def f() -> None:
            by_key: Dict[Any, Group] = {}
            for o, s in zip(outs, srcs):
                self.kind[o] = "t"
                # one object under two names (the memo), or one storage;
                # zero-byte storages have no address: the object decides
                keys = [("id", id(self.t(o))), ("storage", storage_key(self.t(o)))]
                g = next((by_key[k] for k in keys if k in by_key), None)
                if g is None:
                    g = Group(self.group[s].lazy)
                for k in keys:
                    if k[1] is not None:
                        by_key[k] = g
                self.group[o] = g
        return f

    def op_requires_grad(self) -> bool:
        a = self.pick([k for k in self.tensors() if self.t(k).dtype.is_floating_point])
        if a is None:
            return False
        name = self.new_name()
        if self.ch.flag(0.5):
            return self.emit(f"{name} = {a}.detach().requires_grad_()", self.fx_view(name, a))
        return self.emit(f"{name} = {a}.requires_grad_()", self.fx_view(name, a))
