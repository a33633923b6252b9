"""The program generator: the op families put together, a weighted choice
of the next op, and the end of a program (leave the context, materialize
every live lazy tensor and module in a chosen order)."""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence

import torch
import torch.nn as nn

from .gen_compute import ComputeOps
from .gen_factories import FactoryOps
from .gen_invalid import InvalidOps
from .gen_lifecycle import LifecycleOps
from .gen_rng import RngOps
from .gen_sources import SourceOps
from .gen_views import ViewOps
from .gen_writes import WriteOps
from .model import FEATURES, KNOWN_OPEN

DEFAULT_MAX_OPS = 100


class Generator(FactoryOps, ViewOps, WriteOps, ComputeOps, RngOps, SourceOps, LifecycleOps,
                InvalidOps):
    """Builds one program from a chooser (see choosers.py)."""

    OPS = [  # (op, weight, feature)
        ("factory", 10, None), ("module", 2, "modules"), ("view", 8, "views"),
        ("inplace", 10, "inplace"), ("copy", 4, "copy"), ("outofplace", 7, "outofplace"),
        ("real_factory", 3, "real_sources"), ("real_scalar", 1, "real_sources"),
        ("copy_into_real", 1, "real_sources"), ("value", 4, "values"), ("init", 5, "init"),
        ("tie", 3, "ties"), ("rng", 3, "rng"), ("rng_read", 2, "rng_reads"),
        ("materialize", 2, "materialize_mid"), ("delete", 2, "delete"),
        ("discard", 1, "discard"), ("random_oop", 3, "random_oop"),
        ("requires_grad", 1, "ties"), ("context", 1, "context"),
        ("default_dtype", 1, "default_dtype"), ("set_data", 1, "set_data"),
        ("numpy", 3, "numpy"), ("load_state_dict", 1, "numpy"), ("invalid", 3, "invalid"),
        ("linalg", 1, "linalg"), ("module_reset", 1, "modules"),
    ]

    def _op(self, name: str) -> Callable[[], bool]:
        if name == "real_factory":
            return lambda: self.op_factory(real=True)
        return getattr(self, f"op_{name}")

    def step(self) -> None:
        table = [name for name, w, feat in self.OPS if feat is None or feat in self.features
                 for _ in range(w)]
        if not self.tensors():
            table = ["factory"]
        self._op(self.ch.choice(table))()

    def generate(self) -> "Program":
        self.emit(f"torch.manual_seed({self.ch.int(0, 3)})")
        if self.has("context") and self.ch.flag(0.3):
            self.op_context()
        ops = self.op_count()
        for _ in range(ops):
            self.step()
        self.finish()
        return Program(self.lines, ops)

    def op_count(self) -> int:
        """How many ops to try: many short programs, some long ones (60 %
        up to 20 ops, 30 % up to 50, 10 % up to ``max_ops``)."""
        cap = self.ch.choice([20] * 6 + [50] * 3 + [self.max_ops])
        return self.ch.int(1, min(cap, self.max_ops))

    def finish(self) -> None:
        """Leaves the context; materializes every live lazy tensor and
        container, in a chosen order and spelling."""
        if self.in_ctx:
            self.op_context()
        names = [k for k in self.tensors() if self.group[k].lazy] + self.names("c")
        for name in self.ch.perm(sorted(names, key=lambda k: int(k[1:]))):
            if self.kind.get(name) == "c":
                if isinstance(self.ns.get(name), nn.Module):
                    form = self.ch.choice(["mat({0})", "mat({0}, None)", '{0}.to("cpu")',
                                           "{0}.cpu()", "lazyinit.LazyInitContext.materialize({0})"])
                    self.lines.append(form.format(name))
                else:
                    self.lines.append(f"mat({name})")
                continue
            form = self.ch.choice(["mat", "mat", "mat_default", "cpu", "to"])
            self.lines.append({"mat": f"mat({name})", "mat_default": f"mat({name}, None)",
                               "cpu": f"{name}.cpu()", "to": f'{name}.to("cpu")'}[form])
        if self.has("rng_reads") and self.ch.flag(0.3):
            self.op_rng_read()
        self.ns = {}  # drop the shadow's tensors


class Program:
    """A generated program: its lines, shown as the lazy-mode script."""

    def __init__(self, lines: Sequence[str], ops: int = 0) -> None:
        self.lines = list(lines)
        self.ops = ops  # ops tried (some write no line: eager refused them)

    def __repr__(self) -> str:
        return "Program([\n" + "".join(f"    {line!r},\n" for line in self.lines) + "])"


def generate_program(ch: Any, features: Optional[Sequence[str]] = None,
                     max_ops: int = DEFAULT_MAX_OPS) -> Program:
    """One program from chooser ``ch`` (torch's global settings restored)."""
    default_dtype = torch.get_default_dtype()
    grad = torch.is_grad_enabled()
    if features is None:
        features = feature_list()
    try:
        return Generator(ch, features, max_ops).generate()
    finally:
        torch.set_default_dtype(default_dtype)
        torch.set_grad_enabled(grad)


def programs(features: Optional[Sequence[str]] = None, max_ops: int = DEFAULT_MAX_OPS) -> Any:
    """A hypothesis strategy of Programs."""
    from hypothesis import strategies as st

    @st.composite
    def _programs(draw: Callable[[Any], Any]) -> Program:
        from .choosers import HypothesisChooser
        return generate_program(HypothesisChooser(draw), features, max_ops)
    return _programs()


#: The features campaigns and CI use unless told otherwise.
DEFAULT_DISABLED = ",".join(KNOWN_OPEN)


def feature_list(disabled: str = DEFAULT_DISABLED) -> List[str]:
    """FEATURES without the comma-separated ``disabled`` ones (by default
    those of open findings, KNOWN_OPEN)."""
    off = {f for f in disabled.split(",") if f}
    unknown = off - set(FEATURES)
    if unknown:
        raise ValueError(f"unknown features {sorted(unknown)}; known: {list(FEATURES)}")
    return [f for f in FEATURES if f not in off]
