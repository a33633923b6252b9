"""Invalid ops: calls eager PyTorch rejects, written ``rN =
raises(lambda: CALL)`` and kept only if the eager shadow raises there. The
lazy run must raise the same exception type at the same call, and leave
everything as eager leaves it (nothing recorded, nothing drawn): random
fills of integer tensors, out-of-range arguments, bad shapes and dims,
out-of-range indices (Python ints, real and lazy index tensors), dtype
clashes, overlapping in-place writes, autograd refusals, nn.init on
unsupported shapes, bad generator states."""
from __future__ import annotations

from typing import Optional

import torch

from .model import GeneratorBase, fmt, shape_str


class InvalidOps(GeneratorBase):
    """``op_invalid``."""

    INVALID = ["int_fill", "bad_factory", "bad_range", "bad_view", "bad_dim", "bad_index",
               "bad_tensor_index", "bad_binary", "dtype_clash", "overlap", "autograd",
               "bad_init", "bad_state", "bad_module_load", "bad_value_read", "bad_random_read"]

    def op_invalid(self) -> bool:
        k = self.ch.choice(self.INVALID)
        res = getattr(self, f"_invalid_{k}")()
        if res is None:
            return False
        call, grad = res if isinstance(res, tuple) else (res, False)
        return self.emit_raising(self.new_name("r"), call, grad)

    def _any(self, pred=lambda t: True, checks_values: Optional[str] = None) -> Optional[str]:
        """A tensor for an invalid op, lazy (mostly) or real. Where eager's
        check reads the tensor's values (``checks_values``: the feature
        that allows it on lazy tensors; lazyinit raises those at replay,
        docs/fuzzing.md), lazy ones only if that feature is on."""
        if checks_values is not None and not self.has(checks_values):
            return self.pick([k for k in self.real_tensors() if self._holds(pred, k)])
        lazy = [k for k in self.lazy_tensors() if self._holds(pred, k)]
        real = [k for k in self.real_tensors() if self._holds(pred, k)]
        if lazy and (not real or self.ch.flag(0.8)):
            return self.pick(lazy)
        return self.pick(real)

    def _holds(self, pred, k: str) -> bool:
        """``pred`` of tensor ``k``; False where asking raises (``is_leaf``
        of a multi-output view whose base was written)."""
        try:
            return bool(pred(self.t(k)))
        except RuntimeError:
            return False

    def _invalid_int_fill(self) -> Optional[str]:
        f = self.ch.choice(["normal_()", "uniform_()", "exponential_()", "cauchy_()",
                            "log_normal_()", "normal_(0.0, 1.0)"])
        x = self._any(lambda t: not t.dtype.is_floating_point)
        if x is None or self.ch.flag(0.3):
            dt = self.ch.choice(["torch.int64", "torch.int32", "torch.bool", "torch.uint8"])
            x = f"torch.zeros({shape_str(self.shape())}, dtype={dt}, **DEV)"
        return f"{x}.{f}"

    def _invalid_bad_factory(self) -> Optional[str]:
        s = shape_str(self.shape())
        return self.ch.choice([
            f"torch.randn({s}, dtype=torch.int64, **DEV)",
            f"torch.rand({s}, dtype=torch.int32, **DEV)",
            f"torch.normal(0.0, -1.0, {s}, **DEV)",
            f"torch.randint(5, 2, {s}, **DEV)",
            "torch.empty(-1, **DEV)", "torch.zeros(2, -3, **DEV)",
            "torch.linspace(0.0, 1.0, -1, **DEV)", "torch.arange(0, 5, -1, **DEV)",
            "torch.eye(-2, **DEV)", "torch.randperm(-1, **DEV)",
            "torch.tensor([[1.0, 2.0], [3.0]], **DEV)", f"torch.full({s}, 1.5, dtype=torch.int64, **DEV).normal_()",
        ])

    def _invalid_bad_range(self) -> Optional[str]:
        x = self._any(lambda t: t.dtype.is_floating_point)
        if x is None:
            return None
        return self.ch.choice([f"{x}.uniform_(2.0, 1.0)", f"{x}.bernoulli_(1.5)",
                               f"{x}.random_(5, 2)", f"{x}.geometric_(0.0)",
                               f"{x}.exponential_(-1.0)", f"{x}.normal_(0.0, -2.0)",
                               f"{x}.log_normal_(0.0, -1.0)", f"{x}.clamp_(2.0, 1.0).sum().item()"])

    def _invalid_bad_view(self) -> Optional[str]:
        x = self._any()
        if x is None:
            return None
        t = self.t(x)
        n = t.numel()
        s = tuple(t.shape)
        return self.ch.choice([
            f"{x}.view({n + 1})", f"{x}.reshape({n + 1}, -1)", f"{x}.view(-1, -1)",
            f"{x}.expand({', '.join(str(d + 1) for d in s) or '2'}, 0)" if s else f"{x}.expand(-2)",
            f"{x}.view(torch.int16)" if t.element_size() != 2 and s and s[-1] % 2 else f"{x}.view(3, {n + 2})",
            f"{x}.as_strided(({n + 5},), (1,), {t.storage().size()})",
            f"{x}.unflatten(0, ({n + 1}, -1))" if s else f"{x}.view(2)",
        ])

    def _invalid_bad_dim(self) -> Optional[str]:
        x = self._any()
        if x is None:
            return None
        nd = self.t(x).dim()
        return self.ch.choice([
            f"{x}.permute({', '.join(['0'] * max(nd, 2))})", f"{x}.transpose(0, {nd + 1})",
            f"{x}.squeeze({nd + 2})", f"{x}.unsqueeze({nd + 3})", f"{x}.sum({nd + 1})",
            f"{x}.flatten({max(nd - 1, 0)}, 0)" if nd > 1 else f"{x}.flatten(5)",
            f"{x}.chunk(0)", f"{x}.unbind({nd + 1})", f"{x}.diagonal(0, 0, 0)",
            f"torch.cat([{x}, {x}], {nd + 1})", f"torch.stack([{x}], {nd + 2})",
        ])

    def _invalid_bad_index(self) -> Optional[str]:
        x = self._any(lambda t: t.dim() > 0, "kernel_checks")
        if x is None:
            return None
        size = self.t(x).shape[0]
        return self.ch.choice([
            f"{x}[{size}]", f"{x}[{-size - 1}]", f"{x}.select(0, {size})",
            f"{x}.narrow(0, 0, {size + 1})", f"{x}.narrow(0, {size + 1}, 0)",
            f"{x}[[0, {size}]]", f"{x}.__setitem__({size}, 1.0)",
            f"{x}.__setitem__(([0, {size}],), 1.0)",
        ])

    def _invalid_bad_tensor_index(self) -> Optional[str]:
        """Index tensors with an index out of range (lazy index values for a
        lazy target: eager checks the values at the call)."""
        x = self._any(lambda t: t.dim() > 0, "kernel_checks")
        if x is None:
            return None
        t = self.t(x)
        dev = "**DEV" if self.group[x].lazy else 'device="cpu"'
        idx = f"torch.tensor([0, {t.shape[0] + self.ch.int(0, 3)}], {dev})"
        if self.ch.flag(0.3):
            idx = f"torch.tensor([{-t.shape[0] - 1}], {dev})"
        return self.ch.choice([
            f"{x}.index_fill_(0, {idx}, 1.0)", f"{x}.__setitem__({idx}, 0.5)",
            f"{x}.index_select(0, {idx})", f"{x}[{idx}]",
            f"torch.gather({x}, 0, {idx}.view({', '.join(['-1'] + ['1'] * (t.dim() - 1))}))",
            f"nn.functional.embedding({idx}, {x})" if t.dim() == 2 else f"{x}.index_add_(0, {idx}, {x}[:2])",
        ])

    def _invalid_bad_binary(self) -> Optional[str]:
        x = self._any(lambda t: t.dim() > 0)
        if x is None:
            return None
        t = self.t(x)
        bad = tuple(s + 1 for s in t.shape)
        other = f"torch.ones({shape_str(bad)}, dtype={str(t.dtype)}, **DEV)" if self.group[x].lazy \
            else f'torch.ones({shape_str(bad)}, dtype={str(t.dtype)}, device="cpu")'
        opts = [f"{x} + {other}", f"{x}.mul_({other})", f"{x}.copy_({other})",
                f"torch.cat([{x}, {other}], 1)", f"torch.where({x} > 0, {x}, {other})",
                f"{x}.fill_({other})"]
        if not self.group[x].lazy or self.has("kernel_checks"):
            opts.append(f"{x} @ {other}")  # dot's size check is in the CPU kernel
        return self.ch.choice(opts)

    def _invalid_dtype_clash(self) -> Optional[str]:
        x = self._any(lambda t: t.dtype in (torch.int64, torch.bool))
        # matmul's and index_fill_'s dtype checks are in the CPU kernels
        f = self._any(lambda t: t.dtype.is_floating_point and t.dim() == 2, "kernel_checks")
        opts = []
        if x is not None:
            opts += [f"{x}.add_(0.5)", f"{x}.mul_(1.5)", f"{x}.erfinv_()",
                     f"{x}.requires_grad_()", f"nn.Parameter({x})", f"{x}.sqrt_()"]
        if f is not None:
            m = f"torch.ones({shape_str(tuple(self.t(f).shape))}, dtype=torch.int64, **DEV)" \
                if self.group[f].lazy else "None"
            opts += [f"{f}.masked_fill_({m}, 1.0)" if m != "None" else f"{f}.masked_fill_({f}, 1.0)",
                     f"{f} @ {f}.double().t()", f"{f}.index_fill_(0, {f}[0], 1.0)"]
        return self.ch.choice(opts) if opts else None

    def _invalid_overlap(self) -> Optional[str]:
        """In-place writes whose input overlaps the written elements
        partially (eager refuses; aliasing of one lazy storage)."""
        x = self._any(lambda t: t.dim() > 0 and t.shape[0] >= 3, "overlap_errors")
        if x is None:
            return None
        return self.ch.choice([
            f"{x}[1:].copy_({x}[:-1])", f"{x}[:-1].add_({x}[1:])",
            f"torch.add({x}[1:], 1.0, out={x}[:-1])", f"{x}[1:].mul_({x}[:-1])",
            f"{x}.expand(2, *{x}.shape).add_(1)", f"{x}[:2].copy_({x}[1:3])",
            f"torch.mul({x}[:-1], 2, out={x}[1:])", f"torch.normal({x}[:-1], 1.0, out={x}[1:])",
        ])

    def _invalid_autograd(self):
        p = self._any(lambda t: t.requires_grad and t.is_leaf)
        if p is None:
            return None
        return self.ch.choice([f"{p}.normal_()", f"{p}.zero_()", f"{p}.add_(1.0)",
                               f"{p}.copy_({p}.detach() * 2)", f"{p}.numpy()"]), True

    def _invalid_bad_init(self) -> Optional[str]:
        x = self._any(lambda t: t.dtype.is_floating_point)
        if x is None:
            return None
        nd = self.t(x).dim()
        opts = [f"nn.init.kaiming_uniform_({x}, mode='fan_middle')",
                f"nn.init.kaiming_normal_({x}, nonlinearity='bad')"]
        if nd < 2:
            opts += [f"nn.init.orthogonal_({x})", f"nn.init.xavier_uniform_({x})",
                     f"nn.init.xavier_normal_({x})", f"nn.init.kaiming_normal_({x})",
                     f"nn.init.sparse_({x}, 0.5)"]
        if nd != 2:
            opts += [f"nn.init.eye_({x})"]
        if nd not in (3, 4, 5):
            opts += [f"nn.init.dirac_({x})"]
        return self.ch.choice(opts)

    def _invalid_bad_state(self) -> Optional[str]:
        g = self.pick(self.names("g")) or "torch.default_generator"
        return self.ch.choice([
            f"{g}.set_state(torch.zeros(7, dtype=torch.uint8))",
            "torch.set_rng_state(torch.zeros(5000))",
            f"{g}.set_state(torch.zeros(5056, dtype=torch.float32))",
            f"torch.Generator().manual_seed({fmt(0.5)})",
        ])

    def _invalid_bad_module_load(self) -> Optional[str]:
        mods = self.modules()
        c = self.pick(mods)
        if c is None:
            return None
        sd = self.ns[c].state_dict()
        if not sd:
            return None
        k = self.ch.choice(list(sd))
        bad = tuple(s + 1 for s in sd[k].shape) or (2,)
        good = [kk for kk in sd if kk != k]
        extra = f", {good[0]!r}: torch.ones({shape_str(tuple(sd[good[0]].shape))})" if good else ""
        return f"{c}.load_state_dict({{{k!r}: torch.zeros({shape_str(bad)}){extra}}})"

    def _invalid_bad_value_read(self) -> Optional[str]:
        x = self._any(lambda t: t.numel() > 1)
        if x is None:
            return None
        return self.ch.choice([f"{x}.item()", f"bool({x})", f"float({x})", f"int({x})"])

    def _invalid_bad_random_read(self) -> Optional[str]:
        """Random ops whose inputs eager rejects (shape, or values)."""
        x = self._any(lambda t: t.dtype.is_floating_point and 1 <= t.dim() <= 2 and t.numel() > 0,
                      "kernel_checks")
        if x is None:
            return None
        n = self.t(x).shape[-1]
        return self.ch.choice([
            f"torch.multinomial({x}.abs() + 0.1, {n + 1}, replacement=False)",
            f"torch.multinomial({x}.abs() * 0, 1)", f"torch.multinomial(-{x}.abs() - 1, 1)",
            f"torch.bernoulli({x}.abs() + 1.5)", f"torch.poisson(-{x}.abs() - 1)",
            f"torch.normal({x}, -1.0)",
        ])
