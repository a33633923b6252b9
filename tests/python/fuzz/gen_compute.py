"""Out-of-place ops (arithmetic, matmul, cat/stack, casts, reductions,
unary ops, comparisons, where), random ops that read a tensor, values needed
early (item, tolist, nonzero, ...) and linalg (inv, cholesky, qr, solve,
det) on well-posed inputs."""
from __future__ import annotations

from typing import Optional

import torch

from .model import BF16, DT_NAME, F16, F32, F64, I64, GeneratorBase, fmt


def _broadcastable(x: torch.Tensor, y: torch.Tensor) -> bool:
    try:
        torch.broadcast_shapes(x.shape, y.shape)
        return True
    except RuntimeError:
        return False


def _matmul_ok(x: torch.Tensor, y: torch.Tensor) -> bool:
    if x.dtype != y.dtype or x.dim() == 0 or y.dim() == 0:
        return False
    return x.shape[-1] == (y.shape[0] if y.dim() == 1 else y.shape[-2])


class ComputeOps(GeneratorBase):
    """``op_outofplace``, ``op_random_oop``, ``op_value``, ``op_linalg``."""

    OUT_OF_PLACE = ["add", "mul", "matmul", "cat", "clone", "to", "scalar", "sum", "max",
                    "unary", "stack", "contiguous", "compare", "where"]

    def partner(self, a: str, pred) -> Optional[str]:
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
        name = self.new_name()
        op = self.ch.choice(self.OUT_OF_PLACE)
        res = getattr(self, f"_oop_{op}")(a)
        if res is None:
            return False
        rhs, lazy, maybe_alias = res
        line = f"{name} = {rhs}"
        if maybe_alias:
            return self.emit(line, self.fx_maybe_alias(name, a, lazy))
        return self.emit(line, self.fx_new(name, lazy))

    # each returns (expression, lazy result?, may alias its input?) or None

    def _oop_add(self, a: str, op: str = "add"):
        b = self.partner(a, _broadcastable)
        if b is None:
            return None
        lazy = self.group[a].lazy or self.group[b].lazy
        if op == "add" and self.ch.flag(0.3):
            return f"torch.add({a}, {b}, alpha={fmt(self.nice())})", lazy, False
        return f"{a} {'+' if op == 'add' else '*'} {b}", lazy, False

    def _oop_mul(self, a: str):
        return self._oop_add(a, "mul")

    def _oop_matmul(self, a: str):
        b = self.partner(a, _matmul_ok)
        if b is None:
            return None
        expr = f"{a} @ {b}" if self.ch.flag(0.5) else f"torch.matmul({a}, {b})"
        return expr, self.group[a].lazy or self.group[b].lazy, False

    def _oop_cat(self, a: str, op: str = "cat"):
        ta = self.t(a)
        if ta.dim() == 0 and op == "cat":
            return None
        d = self.ch.int(0, max(ta.dim() - 1, 0)) if op == "cat" else self.ch.int(0, ta.dim())

        def same(x: torch.Tensor, y: torch.Tensor) -> bool:
            if x.dim() != y.dim() or x.dtype != y.dtype:
                return False
            return all(p == q or (i == d and op == "cat") for i, (p, q) in
                       enumerate(zip(x.shape, y.shape)))
        others = [k for k in self.tensors()
                  if self.group[k].lazy == self.group[a].lazy and same(ta, self.t(k))]
        parts = [a] + [self.pick(others) for _ in range(self.ch.int(0, 2))]
        return f"torch.{op}([{', '.join(parts)}], {d})", self.group[a].lazy, False

    def _oop_stack(self, a: str):
        return self._oop_cat(a, "stack")

    def _oop_clone(self, a: str):
        mf = self.ch.choice(["", "memory_format=torch.contiguous_format",
                             "memory_format=torch.preserve_format"])
        return f"{a}.clone({mf})", self.group[a].lazy, False

    def _oop_to(self, a: str):
        dt = self.dtype()
        if self.ch.flag(0.5):
            return f"{a}.to({DT_NAME[dt]})", self.group[a].lazy, True
        meth = {F32: "float", F64: "double", F16: "half", BF16: "bfloat16", I64: "long"}[dt]
        return f"{a}.{meth}()", self.group[a].lazy, True

    def _oop_contiguous(self, a: str):
        return f"{a}.contiguous()", self.group[a].lazy, True

    def _oop_scalar(self, a: str):
        return f"{a} {self.ch.choice(['+', '*', '-', '/'])} {fmt(self.nice())}", self.group[a].lazy, False

    def _oop_sum(self, a: str):
        ta = self.t(a)
        if ta.dim() and self.ch.flag(0.5):
            return f"{a}.sum({self.ch.int(0, ta.dim() - 1)})", self.group[a].lazy, False
        return f"{a}.sum()", self.group[a].lazy, False

    def _oop_max(self, a: str):
        return f"{a}.max()", self.group[a].lazy, False

    def _oop_unary(self, a: str):
        f = self.ch.choice(["abs", "neg", "exp", "sqrt", "tanh", "erfinv", "clamp", "sigmoid",
                            "sign", "floor", "logical_not", "square", "reciprocal", "relu"])
        expr = f"{a}.clamp(-0.5, 0.5)" if f == "clamp" else f"{a}.{f}()"
        return expr, self.group[a].lazy, False

    def _oop_compare(self, a: str):
        return f"{a} {self.ch.choice(['>', '<=', '=='])} {fmt(self.nice())}", self.group[a].lazy, False

    def _oop_where(self, a: str):
        b = self.partner(a, _broadcastable)
        if b is None:
            return None
        return f"torch.where({a} > 0, {a}, {b})", self.group[a].lazy or self.group[b].lazy, False

    def op_random_oop(self) -> bool:
        """Random ops that read a tensor: bernoulli(p), multinomial,
        normal(mean_tensor, std), randint_like, dropout, poisson; of lazy
        tensors, or (``real_writes``) of real ones."""
        real = self.has("real_writes") and self.ch.flag(0.15)
        a = self.pick(self.real_tensors() if real else self.lazy_tensors())
        if a is None:
            return False
        ch = self.ch
        name = self.new_name()
        gen = self.generator_kw()
        op = ch.choice(["bernoulli", "bernoulli_p", "multinomial", "normal", "randint_like",
                        "dropout", "poisson", "rand_like_dtype"])
        if op == "bernoulli":
            line = f"{name} = torch.bernoulli({a}.clamp(0, 1){gen})"
        elif op == "bernoulli_p":
            line = f"{name} = {a}.bernoulli({ch.choice([0.3, 0.5, 0.9])}{gen})"
        elif op == "multinomial":
            line = (f"{name} = torch.multinomial({a}.abs() + 0.1, {ch.int(1, 4)}, "
                    f"replacement={ch.flag(0.5)}{gen})")
        elif op == "normal":
            line = f"{name} = torch.normal({a}, {fmt(abs(self.nice()) + 0.1)}{gen})"
        elif op == "randint_like":
            line = f"{name} = torch.randint_like({a}, {ch.int(1, 10)})"
        elif op == "dropout":
            line = f"{name} = nn.functional.dropout({a}, {ch.choice([0.1, 0.5, 0.9])}, training=True)"
        elif op == "poisson":
            line = f"{name} = torch.poisson({a}.abs(){gen})"
        else:
            line = f"{name} = torch.rand_like({a}, dtype={DT_NAME[self.dtype(floats_only=True)]})"
        # dropout of an empty tensor returns the input itself
        return self.emit(line, self.fx_maybe_alias(name, a, lazy=not real))

    # ---- values needed early -------------------------------------------------

    VALUES = ["item", "tolist", "nonzero", "bool", "max_item", "sum_item", "equal", "mask",
              "argmax", "any", "numpy"]

    def op_value(self) -> bool:
        a = self.pick(self.tensors())
        if a is None:
            return False
        op = self.ch.choice(self.VALUES)
        if op in ("nonzero", "mask"):
            v = self.new_name()
            line = f"{v} = {a}.nonzero()" if op == "nonzero" else f"{v} = {a}[{a} > 0]"
            return self.emit(line, self.fx_new(v, self.group[a].lazy))
        one = self.t(a).numel() == 1
        if op in ("item", "bool") and not one:
            return False
        if op == "equal":
            b = self.pick([k for k in self.tensors() if self.group[k].lazy == self.group[a].lazy])
            expr = f"torch.equal({a}, {b})"
        else:
            expr = {"item": f"{a}.item()", "tolist": f"{a}.tolist()",
                    "numpy": f"{a}.numpy().tolist()", "bool": f"bool({a})",
                    "max_item": f"{a}.max().item()", "sum_item": f"{a}.sum().item()",
                    "argmax": f"int({a}.argmax())", "any": f"bool(({a} > 0).any())"}[op]
        r = self.new_name("r")
        return self.emit(f"{r} = {expr}", self.fx_kind(r, "r"))

    # ---- linalg --------------------------------------------------------------

    def square_input(self) -> Optional[str]:
        """A new lazy (batched) square float matrix, often well-posed
        (``x @ x.mT + n * I``: symmetric positive definite), sometimes
        singular (all ones, zeros, a repeated row)."""
        ch = self.ch
        n = ch.int(1, 5)
        batch = "" if ch.flag(0.7) else f"{ch.int(1, 3)}, "
        dt = ch.choice(["", ", dtype=torch.float64"])
        name = self.new_name()
        form = ch.choice(["spd", "spd", "randn", "ones", "zeros", "eye", "repeat"])
        size = f"({batch}{n}, {n})"
        if form == "spd":
            rhs = (f"(lambda x: x @ x.mT + {n} * torch.eye({n}{dt}, **DEV))"
                   f"(torch.randn({size}{dt}, **DEV))")
        elif form == "repeat":
            rhs = f"torch.randn({size}{dt}, **DEV); {name}[..., -1, :] = {name}[..., 0, :]"
        else:
            rhs = {"randn": f"torch.randn({size}{dt}, **DEV)",
                   "ones": f"torch.ones({size}{dt}, **DEV)",
                   "zeros": f"torch.zeros({size}{dt}, **DEV)",
                   "eye": f"torch.eye({n}{dt}, **DEV).expand({size[1:-1]}).clone()"}[form]
        if not self.emit(f"{name} = {rhs}", self.fx_new(name, lazy=True)):
            return None
        return name

    def op_linalg(self) -> bool:
        """A linalg op on a square input: bound to a name where eager
        accepts it, an invalid-op line (``raises``) where eager rejects it
        (singular, not positive definite)."""
        a = self.pick([k for k in self.lazy_tensors()
                       if self.t(k).dim() >= 2 and self.t(k).shape[-1] == self.t(k).shape[-2]
                       and self.t(k).dtype in (F32, F64) and self.t(k).numel() > 0])
        if a is None or self.ch.flag(0.5):
            a = self.square_input()
            if a is None:
                return False
        f = self.ch.choice(["torch.linalg.inv({a})", "torch.linalg.cholesky({a})",
                            "torch.linalg.qr({a})[{i}]", "torch.linalg.solve({a}, {b})",
                            "torch.linalg.det({a})", "torch.inverse({a})", "torch.det({a})"])
        ta = self.t(a)
        b = self.pick([k for k in self.lazy_tensors() if self.t(k).dtype == ta.dtype
                       and self.t(k).dim() >= 1 and self.t(k).shape[:-1] == ta.shape[:-1]])
        if "{b}" in f and b is None:
            return False
        call = f.format(a=a, b=b, i=self.ch.int(0, 1))
        name = self.new_name()
        if self.emit(f"{name} = {call}", self.fx_new(name, lazy=True)):
            return True
        return self.emit_raising(self.new_name("r"), call)
