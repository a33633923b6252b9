"""Factories: tensors from nothing (zeros, rand, arange, eye, tensor
literals, empty + an initializing op, *_like, new_*, legacy constructors)
and small nn modules, lazy (``**DEV``) or real (``device="cpu"``)."""
from __future__ import annotations

from typing import Optional, Tuple

from .model import BF16, DT_NAME, F32, F64, I64, GeneratorBase, fmt, shape_str


class FactoryOps(GeneratorBase):
    """``op_factory``, ``op_real_scalar``, ``op_module``."""

    FACTORY_KINDS = ["zeros", "randn", "rand", "empty_init", "ones", "full", "randint",
                     "randperm", "arange", "linspace", "eye", "tensor", "normal", "init_empty",
                     "like", "new", "legacy"]

    def op_factory(self, real: bool = False) -> bool:
        k = self.ch.choice(self.FACTORY_KINDS)
        name = self.new_name()
        dev = ', device="cpu"' if real else ", **DEV"
        line = getattr(self, f"_factory_{k}")(self.shape(), dev, real)
        if line is None:
            return False
        return self.emit(f"{name} = {line}", self.fx_new(name, lazy=not real))

    def _factory_zeros(self, shape: Tuple[int, ...], dev: str, real: bool) -> Optional[str]:
        return f"torch.{self.ch.choice(['zeros', 'ones'])}({shape_str(shape)}{self.dtype_kw(self.dtype())}{dev})"

    _factory_ones = _factory_zeros

    def _factory_full(self, shape: Tuple[int, ...], dev: str, real: bool) -> Optional[str]:
        ch = self.ch
        # an int fill without dtype gives int64, a float one the default
        if ch.flag(0.4):
            fill = self.number(ch.int(-3, 9)) if ch.flag(0.5) else fmt(self.nice())
            return f"torch.full({shape_str(shape)}, {fill}{dev})"
        dt = self.dtype()
        fill = ch.int(-3, 9) if dt == I64 else self.nice()
        return f"torch.full({shape_str(shape)}, {fmt(fill)}{self.dtype_kw(dt)}{dev})"

    def _factory_randn(self, shape: Tuple[int, ...], dev: str, real: bool) -> Optional[str]:
        f = self.ch.choice(["randn", "rand"])
        dt = self.dtype(floats_only=True)
        return f"torch.{f}({shape_str(shape)}{self.dtype_kw(dt)}{self.generator_kw()}{dev})"

    _factory_rand = _factory_randn

    def _factory_normal(self, shape: Tuple[int, ...], dev: str, real: bool) -> Optional[str]:
        return (f"torch.normal({fmt(self.nice())}, {fmt(abs(self.nice()) + 0.5)}, "
                f"{shape_str(shape)}{self.generator_kw()}{dev})")

    def _factory_randint(self, shape: Tuple[int, ...], dev: str, real: bool) -> Optional[str]:
        lo = self.ch.int(-3, 3)
        hi = lo + self.ch.int(1, 20)
        dt = self.ch.choice([I64, I64, F32, F64])
        dkw = "" if dt == I64 else f", dtype={DT_NAME[dt]}"
        return f"torch.randint({lo}, {hi}, {shape_str(shape)}{dkw}{self.generator_kw()}{dev})"

    def _factory_randperm(self, shape: Tuple[int, ...], dev: str, real: bool) -> Optional[str]:
        return f"torch.randperm({self.ch.int(0, 30)}{self.generator_kw()}{dev})"

    def _factory_arange(self, shape: Tuple[int, ...], dev: str, real: bool) -> Optional[str]:
        ch = self.ch
        # the dtype is inferred from the arguments' Python types when not given
        start, n = ch.int(-4, 4), ch.int(0, 20)
        step = ch.choice([1, 2, 3, 0.5, 0.25])
        form = ch.int(1, 3)
        if form == 1:
            args = self.number(n)
        elif form == 2:
            args = f"{self.number(start)}, {self.number(start + n)}"
        else:
            args = f"{self.number(start)}, {self.number(start + n * step)}, {self.number(step)}"
        dkw = "" if ch.flag(0.4) else f", dtype={DT_NAME[self.dtype()]}"
        return f"torch.arange({args}{dkw}{dev})"

    def _factory_linspace(self, shape: Tuple[int, ...], dev: str, real: bool) -> Optional[str]:
        dt = self.dtype(floats_only=True)
        return (f"torch.linspace({fmt(self.nice())}, {fmt(self.nice())}, "
                f"{self.ch.int(0, 20)}{self.dtype_kw(dt)}{dev})")

    def _factory_eye(self, shape: Tuple[int, ...], dev: str, real: bool) -> Optional[str]:
        dt = self.dtype()
        return f"torch.eye({self.ch.int(0, 6)}, {self.ch.int(0, 6)}{self.dtype_kw(dt)}{dev})"

    def _factory_tensor(self, shape: Tuple[int, ...], dev: str, real: bool) -> Optional[str]:
        shp = tuple(min(s, 4) for s in shape)
        if self.ch.flag(0.3):  # dtype inferred from the literal
            return f"torch.tensor({self.literal(shp, None)}{dev})"
        dt = self.dtype()
        return f"torch.tensor({self.literal(shp, dt)}, dtype={DT_NAME[dt]}{dev})"

    def _factory_empty_init(self, shape: Tuple[int, ...], dev: str, real: bool) -> Optional[str]:
        n = self.nice
        dt = self.dtype(floats_only=True)
        init = self.ch.choice([f".normal_({fmt(n())}, {fmt(abs(n()))}{self.generator_kw()})",
                               f".uniform_({fmt(-abs(n()))}, {fmt(abs(n()))})",
                               f".fill_({fmt(n())})", ".zero_()"])
        return f"torch.empty({shape_str(shape)}{self.dtype_kw(dt)}{dev}){init}"

    def _factory_init_empty(self, shape: Tuple[int, ...], dev: str, real: bool) -> Optional[str]:
        dt = self.dtype(floats_only=True)
        fn = self.init_call("X")
        return fn.replace("X", f"torch.empty({shape_str(shape)}{self.dtype_kw(dt)}{dev})", 1)

    def _factory_like(self, shape: Tuple[int, ...], dev: str, real: bool) -> Optional[str]:
        src = self.pick(self.real_tensors() if real else self.lazy_tensors())
        if src is None:
            return None
        f = self.ch.choice(["zeros_like", "ones_like", "full_like", "randn_like", "rand_like",
                            "empty_like_init"])
        if f == "full_like":
            return f"torch.full_like({src}, {fmt(self.nice())})"
        if f == "empty_like_init":
            return f"torch.empty_like({src}).normal_({self.generator_kw()[2:]})"
        return f"torch.{f}({src})"

    def _factory_new(self, shape: Tuple[int, ...], dev: str, real: bool) -> Optional[str]:
        src = self.pick(self.real_tensors() if real else self.lazy_tensors())
        if src is None:
            return None
        f = self.ch.choice(["new_zeros", "new_ones", "new_full", "new_empty"])
        if f == "new_full":
            return f"{src}.new_full({shape_str(shape)}, {fmt(self.nice())})"
        if f == "new_empty":
            return f"{src}.new_empty({shape_str(shape)}).uniform_()"
        return f"{src}.{f}({shape_str(shape)})"

    def _factory_legacy(self, shape: Tuple[int, ...], dev: str, real: bool) -> Optional[str]:
        if real or not self.in_ctx or not shape:
            return None
        cls = self.ch.choice(["FloatTensor", "DoubleTensor", "Tensor"])
        init = self.ch.choice([".normal_()", ".uniform_()", ".zero_()", ".fill_(2.0)"])
        return f"torch.{cls}({', '.join(map(str, shape))}){init}"

    def op_real_scalar(self) -> bool:
        name = self.new_name()
        dt = self.ch.choice([F32, F64, I64])
        val = self.ch.int(-3, 5) if dt == I64 else self.nice()
        return self.emit(f'{name} = torch.tensor({fmt(val)}, dtype={DT_NAME[dt]}, device="cpu")',
                         self.fx_new(name, lazy=False))

    def module_ctor(self) -> str:
        """An ``nn`` module constructor call on ``**DEV``."""
        ch = self.ch
        a, b = ch.int(1, 6), ch.int(1, 6)
        dt = ch.choice(["", "", ", dtype=torch.float64", f", dtype={DT_NAME[BF16]}"])
        k = ch.choice(["Linear", "Embedding", "Conv1d", "LayerNorm", "BatchNorm1d", "Bilinear"])
        if k == "Linear":
            return f"nn.Linear({a}, {b}, bias={ch.flag(0.7)}{dt}, **DEV)"
        if k == "Embedding":
            pad = f", padding_idx={ch.int(0, a - 1)}" if ch.flag(0.3) else ""
            return f"nn.Embedding({a}, {b}{pad}{dt}, **DEV)"
        if k == "Conv1d":
            return f"nn.Conv1d({a}, {b}, {ch.int(1, 3)}{dt}, **DEV)"
        if k == "LayerNorm":
            return f"nn.LayerNorm({a}{dt}, **DEV)"
        if k == "BatchNorm1d":
            return f"nn.BatchNorm1d({a}{dt}, **DEV)"
        return f"nn.Bilinear({a}, {b}, {ch.int(1, 3)}{dt}, **DEV)"

    def op_module(self) -> bool:
        """An nn module built on the lazy device (its parameters and buffers
        become variables)."""
        ctor = self.module_ctor()
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
