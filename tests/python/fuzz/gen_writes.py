"""In-place writes: random fills, arithmetic, setitem, masked and indexed
fills, out= factories, copy_, and the 14 nn.init functions, on lazy
tensors and (feature ``real_writes``) on real ones, through views."""
from __future__ import annotations

import inspect
from typing import Optional, Tuple

import torch
import torch.nn as nn

from .model import DT_NAME, GeneratorBase, fmt, no_internal_overlap, offsets, shape_str

#: torch >= 2.1: nn.init functions take a generator.
INIT_TAKES_GENERATOR = "generator" in inspect.signature(nn.init.normal_).parameters

Target = Tuple[str, str, torch.Tensor]


class WriteOps(GeneratorBase):
    """``op_inplace``, ``op_copy``, ``op_copy_into_real``, ``op_init``."""

    INPLACE = ["normal_", "uniform_", "fill_", "zero_", "mul_", "add_", "clamp_", "erfinv_",
               "setitem", "exponential_", "bernoulli_", "random_", "log_normal_", "cauchy_",
               "geometric_", "fork_rng", "masked_fill_", "index_fill_", "index_put",
               "out_random", "out_binary"]

    def target(self, real: Optional[bool] = None) -> Optional[Target]:
        """(var, expression, shadow) of a writable tensor, maybe through an
        inline chain of views: lazy, or now and then real."""
        if real is None:
            real = self.has("real_writes") and self.ch.flag(0.15)
        src = self.pick(self.writable(real))
        if src is None:
            return None
        if self.ch.flag(0.35) and hasattr(self, "view_chain"):
            vc = self.view_chain(src)  # type: ignore[attr-defined]
            if vc is not None and no_internal_overlap(vc[1]):
                return src, vc[0], vc[1]
        return src, src, self.t(src)

    def operand(self, tgt: str, tt: torch.Tensor, real_any: bool) -> Optional[str]:
        """A tensor operand for an in-place op on ``tt`` (of var ``tgt``): of
        the target's kind (lazy or real) and another storage, or of the same
        storage if disjoint from the target (or the very same tensor); a real
        0-dim one for a lazy target; anything broadcastable with ``real_any``
        (copy_, setitem: a lazy value copied into a real tensor is an early
        op, a real one into a lazy tensor is captured)."""
        cands = []
        toffs = None
        lazy_target = self.group[tgt].lazy
        for k in self.tensors():
            t = self.t(k)
            try:
                torch.broadcast_shapes(t.shape, tt.shape)
            except RuntimeError:
                continue
            if self.group[k].lazy != lazy_target:
                if real_any or (lazy_target and t.dim() == 0):
                    cands.append(k)
            elif self.group[k] is not self.group[tgt]:
                cands.append(k)
            else:
                if toffs is None:
                    toffs = offsets(tt)
                if t is tt or not (offsets(t) & toffs):
                    cands.append(k)
        return self.pick(cands)

    def op_inplace(self) -> bool:
        tg = self.target()
        if tg is None:
            return False
        op = self.ch.choice(self.INPLACE)
        if op == "fork_rng":
            if not self.has("rng"):
                return False
            return self.emit(f"with torch.random.fork_rng(): {tg[1]}.normal_()")
        call = getattr(self, f"_inplace_{op}")(*tg)
        if call is None:
            return False
        return self.emit(f"with torch.no_grad(): {call}")

    def _random_call(self, expr: str, op: str, args: str) -> str:
        gen = self.generator_kw()
        if not args:
            gen = gen[2:]
        return f"{expr}.{op}({args}{gen})"

    def _inplace_normal_(self, var: str, expr: str, tt: torch.Tensor) -> Optional[str]:
        return self._random_call(expr, "normal_", f"{fmt(self.nice())}, {fmt(abs(self.nice()))}")

    def _inplace_uniform_(self, var: str, expr: str, tt: torch.Tensor) -> Optional[str]:
        a = self.nice()
        return self._random_call(expr, "uniform_", f"{fmt(a)}, {fmt(a + abs(self.nice()))}")

    def _inplace_exponential_(self, var: str, expr: str, tt: torch.Tensor) -> Optional[str]:
        return self._random_call(expr, "exponential_", fmt(abs(self.nice()) + 0.5))

    def _inplace_bernoulli_(self, var: str, expr: str, tt: torch.Tensor) -> Optional[str]:
        return self._random_call(expr, "bernoulli_", str(self.ch.choice([0.5, 0.1, 0.9, 0.0, 1.0])))

    def _inplace_random_(self, var: str, expr: str, tt: torch.Tensor) -> Optional[str]:
        return self._random_call(expr, "random_", f"{self.ch.int(0, 3)}, {self.ch.int(4, 20)}")

    def _inplace_log_normal_(self, var: str, expr: str, tt: torch.Tensor) -> Optional[str]:
        return self._random_call(expr, "log_normal_", "0.0, 0.5")

    def _inplace_cauchy_(self, var: str, expr: str, tt: torch.Tensor) -> Optional[str]:
        return self._random_call(expr, "cauchy_", "")

    def _inplace_geometric_(self, var: str, expr: str, tt: torch.Tensor) -> Optional[str]:
        return self._random_call(expr, "geometric_", str(self.ch.choice([0.5, 0.2, 0.9])))

    def _inplace_fill_(self, var: str, expr: str, tt: torch.Tensor) -> Optional[str]:
        if self.ch.flag(0.3):
            o = self.operand(var, tt, real_any=False)
            if o is None or self.t(o).dim() != 0:
                return None
            return f"{expr}.fill_({o})"
        return f"{expr}.fill_({fmt(self.nice())})"

    def _inplace_zero_(self, var: str, expr: str, tt: torch.Tensor) -> Optional[str]:
        return f"{expr}.zero_()"

    def _inplace_mul_(self, var: str, expr: str, tt: torch.Tensor, op: str = "mul_") -> Optional[str]:
        if self.ch.flag(0.5):
            o = self.operand(var, tt, real_any=False)
            if o is None:
                return None
            alpha = f", alpha={fmt(self.nice())}" if op == "add_" and self.ch.flag(0.3) else ""
            return f"{expr}.{op}({o}{alpha})"
        return f"{expr}.{op}({fmt(self.nice())})"

    def _inplace_add_(self, var: str, expr: str, tt: torch.Tensor) -> Optional[str]:
        return self._inplace_mul_(var, expr, tt, "add_")

    def _inplace_clamp_(self, var: str, expr: str, tt: torch.Tensor) -> Optional[str]:
        a = self.nice()
        return f"{expr}.clamp_({fmt(a)}, {fmt(a + abs(self.nice()))})"

    def _inplace_erfinv_(self, var: str, expr: str, tt: torch.Tensor) -> Optional[str]:
        return f"{expr}.erfinv_()"

    def _inplace_setitem(self, var: str, expr: str, tt: torch.Tensor) -> Optional[str]:
        if tt.dim() == 0:
            idx = "..."
        else:
            d = self.ch.int(0, tt.dim() - 1)
            a = self.ch.int(0, tt.shape[d])
            idx = ", ".join([":"] * d + [f"{a}:{self.ch.int(a, tt.shape[d])}"])
        if not self.ch.flag(0.5):
            return f"{expr}[{idx}] = {fmt(self.nice())}"
        o = self.operand(var, tt, real_any=True)
        if o is None:
            return None
        if self.group[o] is self.group[var] and self.t(o) is not tt and self.ch.flag(0.5):
            return f"{expr}[{idx}] = -{o}"  # reads its own storage (disjoint)
        return f"{expr}[{idx}] = {o}"

    def _inplace_masked_fill_(self, var: str, expr: str, tt: torch.Tensor) -> Optional[str]:
        # the mask is read from the target itself, or from another tensor
        m = self.operand(var, tt, real_any=False) if self.ch.flag(0.4) else None
        mask = f"({m} > 0)" if m is not None else f"({expr} > 0)"
        return f"{expr}.masked_fill_({mask}, {fmt(self.nice())})"

    def _inplace_index_fill_(self, var: str, expr: str, tt: torch.Tensor,
                             put: bool = False) -> Optional[str]:
        if tt.dim() == 0:
            return None
        d = 0 if put else self.ch.int(0, tt.dim() - 1)
        if tt.shape[d] == 0:
            return None
        idx = sorted({self.ch.int(0, tt.shape[d] - 1) for _ in range(self.ch.int(1, 3))})
        dev = "**DEV" if self.group[var].lazy else 'device="cpu"'
        index = f"torch.tensor({idx}, {dev})"
        if put:
            return f"{expr}[{index}] = {fmt(self.nice())}"
        return f"{expr}.index_fill_({d}, {index}, {fmt(self.nice())})"

    def _inplace_index_put(self, var: str, expr: str, tt: torch.Tensor) -> Optional[str]:
        return self._inplace_index_fill_(var, expr, tt, put=True)

    def _inplace_out_random(self, var: str, expr: str, tt: torch.Tensor) -> Optional[str]:
        size = shape_str(tuple(tt.shape))
        f = self.ch.choice([f"torch.randn({size}", f"torch.rand({size}",
                            f"torch.normal(0.5, 2.0, {size}", f"torch.randint(0, 7, {size}"])
        return f"{f}{self.generator_kw()}, out={expr})"

    def _inplace_out_binary(self, var: str, expr: str, tt: torch.Tensor) -> Optional[str]:
        # an input of the target's kind: with only CPU scalars in, an out= on
        # another device is refused by TensorIterator (as for CUDA)
        o = self.operand(var, tt, real_any=False)
        if o is None or self.group[o].lazy != self.group[var].lazy:
            return None
        return f"torch.{self.ch.choice(['add', 'mul'])}({o}, {fmt(self.nice())}, out={expr})"

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
        if self.ch.flag(0.5):
            line = f'{name} = torch.empty_like({src}, device="cpu").copy_({src})'
        else:
            line = (f'{name} = torch.zeros({shape_str(tuple(self.t(src).shape))}, '
                    f'dtype={DT_NAME[self.dtype()]}, device="cpu").copy_({src})')
        return self.emit(line, self.fx_new(name, lazy=False))

    # ---- torch.nn.init ------------------------------------------------------

    def init_call(self, x: str) -> str:
        """A call of one of the 14 nn.init functions on expression ``x``."""
        ch = self.ch
        n = self.nice
        f = ch.choice(["normal_", "uniform_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                       "xavier_uniform_", "xavier_normal_", "kaiming_uniform_",
                       "kaiming_normal_", "trunc_normal_", "orthogonal_", "sparse_"])
        gen = self.generator_kw() if INIT_TAKES_GENERATOR else ""
        if f == "normal_":
            return f"nn.init.normal_({x}, {fmt(n())}, {fmt(abs(n()))}{gen})"
        if f == "uniform_":
            a = n()
            return f"nn.init.uniform_({x}, {fmt(a)}, {fmt(a + abs(n()))}{gen})"
        if f == "constant_":
            return f"nn.init.constant_({x}, {fmt(n())})"
        if f in ("ones_", "zeros_", "eye_", "dirac_"):
            return f"nn.init.{f}({x})"
        if f in ("xavier_uniform_", "xavier_normal_"):
            return f"nn.init.{f}({x}, gain={fmt(abs(n()) + 0.5)}{gen})"
        if f in ("kaiming_uniform_", "kaiming_normal_"):
            a = ch.choice(["math.sqrt(5)", "0", "0.1"])
            mode = ch.choice(["fan_in", "fan_out"])
            nl = ch.choice(["leaky_relu", "relu", "linear", "tanh"])
            return f"nn.init.{f}({x}, a={a}, mode='{mode}', nonlinearity='{nl}'{gen})"
        if f == "trunc_normal_":
            return f"nn.init.trunc_normal_({x}, std={ch.choice(['0.02', '1.0', '0.5'])}{gen})"
        if f == "orthogonal_":
            return f"nn.init.orthogonal_({x}, gain={fmt(abs(n()) + 0.5)}{gen})"
        return f"nn.init.sparse_({x}, {ch.choice(['0.1', '0.5', '0.9'])}{gen})"

    def op_init(self) -> bool:
        tg = self.target()
        if tg is None:
            return False
        return self.emit(self.init_call(tg[1]))
