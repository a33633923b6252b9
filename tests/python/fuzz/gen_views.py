"""Views: as variables or inline chains of up to three (narrow, slices with
steps, select, transpose, permute, t, view, reshape, flatten, expand,
unsqueeze, squeeze, diagonal, as_strided, detach, .data, unbind/chunk
items, view(dtype))."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .model import BF16, DT_NAME, F16, F32, F64, I32, I64, GeneratorBase, shape_str

SAME_SIZE_VIEWS = {F32: [I32], F64: [I64], I64: [F64], F16: [BF16, torch.int16],
                   BF16: [F16, torch.int16]}
_NEEDS_DIMS = ("narrow", "slice", "select", "transpose", "permute", "diagonal", "squeeze",
               "unbind", "chunk")


class ViewOps(GeneratorBase):
    """``view_expr``, ``view_chain``, ``op_view``."""

    VIEWS = ["narrow", "slice", "select", "transpose", "permute", "view", "unsqueeze",
             "expand", "diagonal", "t", "as_strided", "squeeze", "detach", "data",
             "unbind", "chunk", "view_dtype", "flatten_view"]

    def view_expr(self, expr: str, t: torch.Tensor, pure: bool = True) -> Optional[str]:
        """A view op applied to ``expr`` (whose shadow value is ``t``);
        ``pure=False`` also allows ops that may copy (reshape, flatten,
        contiguous)."""
        ops = self.VIEWS + ([] if pure else ["reshape", "flatten", "contiguous"])
        op = self.ch.choice(ops)
        if op in _NEEDS_DIMS and t.dim() == 0:
            return None
        d = self.ch.int(0, t.dim() - 1) if t.dim() else 0
        return getattr(self, f"_view_{op}")(expr, t, d)

    def _view_narrow(self, expr: str, t: torch.Tensor, d: int) -> Optional[str]:
        start = self.ch.int(0, t.shape[d])
        return f"{expr}.narrow({d}, {start}, {self.ch.int(0, t.shape[d] - start)})"

    def _view_slice(self, expr: str, t: torch.Tensor, d: int) -> Optional[str]:
        a = self.ch.int(0, t.shape[d])
        b = self.ch.int(a, t.shape[d])
        step = self.ch.choice([1, 2, 3])
        idx = ", ".join([":"] * d + [f"{a}:{b}" + (f":{step}" if step != 1 else "")])
        return f"{expr}[{idx}]"

    def _view_select(self, expr: str, t: torch.Tensor, d: int) -> Optional[str]:
        if t.shape[d] == 0:
            return None
        i = self.ch.int(-t.shape[d], t.shape[d] - 1)
        return f"{expr}[{i}]" if d == 0 and self.ch.flag(0.5) else f"{expr}.select({d}, {i})"

    def _view_transpose(self, expr: str, t: torch.Tensor, d: int) -> Optional[str]:
        return f"{expr}.transpose({d}, {self.ch.int(-t.dim(), t.dim() - 1)})"

    def _view_permute(self, expr: str, t: torch.Tensor, d: int) -> Optional[str]:
        return f"{expr}.permute({', '.join(map(str, self.ch.perm(range(t.dim()))))})"

    def _view_t(self, expr: str, t: torch.Tensor, d: int) -> Optional[str]:
        return f"{expr}.t()" if t.dim() <= 2 else None

    def _view_unsqueeze(self, expr: str, t: torch.Tensor, d: int) -> Optional[str]:
        return f"{expr}.unsqueeze({self.ch.int(-t.dim() - 1, t.dim())})"

    def _view_squeeze(self, expr: str, t: torch.Tensor, d: int) -> Optional[str]:
        return f"{expr}.squeeze({d})" if self.ch.flag(0.7) else f"{expr}.squeeze()"

    def _view_diagonal(self, expr: str, t: torch.Tensor, d: int) -> Optional[str]:
        if t.dim() < 2:
            return None
        d2 = self.ch.int(0, t.dim() - 1)
        if d2 == d:
            return None
        return f"{expr}.diagonal({self.ch.int(-3, 3)}, {d}, {d2})"

    def _view_flatten_view(self, expr: str, t: torch.Tensor, d: int) -> Optional[str]:
        return f"{expr}.view(-1)"

    def _view_flatten(self, expr: str, t: torch.Tensor, d: int) -> Optional[str]:
        return f"{expr}.flatten()"

    def _view_view(self, expr: str, t: torch.Tensor, d: int, meth: str = "view") -> Optional[str]:
        ch = self.ch
        n = t.numel()
        divs = [x for x in range(1, min(n, 12) + 1) if n % x == 0] or [1]
        a = ch.choice(divs)
        cand = ch.choice([(n,), (a, n // a), (n // a, a), (1, n), (a, -1), (-1,),
                          (a, 1, n // a)]) if n else ch.choice([(0,), (0, 3), (2, 0, 1)])
        return f"{expr}.{meth}({', '.join(map(str, cand))})"

    def _view_reshape(self, expr: str, t: torch.Tensor, d: int) -> Optional[str]:
        return self._view_view(expr, t, d, "reshape")

    def _view_contiguous(self, expr: str, t: torch.Tensor, d: int) -> Optional[str]:
        return f"{expr}.contiguous()"

    def _view_expand(self, expr: str, t: torch.Tensor, d: int) -> Optional[str]:
        ch = self.ch
        new = [ch.int(1, 4) if x == 1 and ch.flag(0.7) else -1 for x in t.shape]
        sizes = [ch.int(1, 3) for _ in range(ch.int(0, 1))] + new
        return f"{expr}.expand({', '.join(map(str, sizes or [ch.int(1, 3)]))})"

    def _view_as_strided(self, expr: str, t: torch.Tensor, d: int) -> Optional[str]:
        ch = self.ch
        storage_size = t.storage().size()
        sizes = [ch.int(1, 4) for _ in range(ch.int(0, 2))]
        strides, extent = [], 1
        for sz in reversed(sizes):  # innermost last; non-overlapping
            st = extent + ch.int(0, 2)
            strides.insert(0, st)
            extent = st * sz
        span = 1 + sum((sz - 1) * st for sz, st in zip(sizes, strides))
        if span > storage_size:
            return None
        off = ch.int(0, storage_size - span)
        return f"{expr}.as_strided({shape_str(sizes)}, {shape_str(strides)}, {off})"

    def _view_detach(self, expr: str, t: torch.Tensor, d: int) -> Optional[str]:
        return f"{expr}.detach()"

    def _view_data(self, expr: str, t: torch.Tensor, d: int) -> Optional[str]:
        return f"{expr}.data"

    def _view_unbind(self, expr: str, t: torch.Tensor, d: int) -> Optional[str]:
        if t.shape[d] == 0:
            return None
        return f"{expr}.unbind({d})[{self.ch.int(0, t.shape[d] - 1)}]"

    def _view_chunk(self, expr: str, t: torch.Tensor, d: int) -> Optional[str]:
        k = self.ch.int(1, 3)
        try:
            n_chunks = len(t.detach().chunk(k, d)) if t.shape[d] else 0
        except RuntimeError:
            return None
        if n_chunks == 0:
            return None
        return f"{expr}.chunk({k}, {d})[{self.ch.int(0, n_chunks - 1)}]"

    def _view_view_dtype(self, expr: str, t: torch.Tensor, d: int) -> Optional[str]:
        opts = SAME_SIZE_VIEWS.get(t.dtype)
        if not self.has("view_dtype") or not opts:
            return None
        return f"{expr}.view({DT_NAME[self.ch.choice(opts)]})"

    def view_chain(self, src: str, max_len: int = 3) -> Optional[Tuple[str, torch.Tensor]]:
        """``src`` through 1..max_len views, as one expression, and its
        shadow value (None if no view applied)."""
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
