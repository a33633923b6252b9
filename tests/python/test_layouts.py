"""Result layouts of recorded ops equal the CPU kernels' (docs/fuzzing.md,
findings 7 and 8): every result is compared with eager PyTorch for strides
and values, over inputs laid out in the ways model code produces them."""
from __future__ import annotations

from typing import Callable, Dict

import pytest
import torch

import lazyinit
from conftest import assert_tensor_equal

# Each builds a (4, 6)-element input from a contiguous base, on ``device``.
LAYOUTS: Dict[str, Callable[[str], torch.Tensor]] = {
    "contiguous": lambda d: torch.arange(24.0, device=d).reshape(4, 6) - 7,
    "t": lambda d: (torch.arange(24.0, device=d).reshape(6, 4) - 7).t(),
    "permute3": lambda d: (torch.arange(24.0, device=d).reshape(2, 3, 4) - 7).permute(2, 0, 1),
    "column_major": lambda d: (torch.arange(24.0, device=d).reshape(6, 4) - 7).t().contiguous().t(),
    "step_slice": lambda d: (torch.arange(48.0, device=d).reshape(4, 12) - 7)[:, ::2],
    "narrow": lambda d: (torch.arange(40.0, device=d).reshape(4, 10) - 7).narrow(1, 2, 6),
    "size1_odd_stride": lambda d: (torch.arange(24.0, device=d).reshape(6, 4) - 7)[:, :1].t(),
    "expanded": lambda d: (torch.arange(6.0, device=d) - 2).expand(4, 6),
    "empty_permuted": lambda d: torch.zeros((0, 2, 3), device=d).permute(2, 1, 0),
    "channels_last": lambda d: (torch.arange(48.0, device=d).reshape(1, 3, 4, 4) - 7)
    .contiguous(memory_format=torch.channels_last),
}

UNARY: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "abs": torch.abs, "neg": torch.neg, "exp": torch.exp, "sigmoid": torch.sigmoid,
    "sign": torch.sign, "floor": torch.floor, "logical_not": torch.logical_not,
    "square": torch.square, "relu": torch.relu, "angle": torch.angle,
    "isinf": torch.isinf, "isnan": torch.isnan, "gt0": lambda x: x > 0,
    "clone": torch.clone, "to_double": lambda x: x.to(torch.float64),
    "mul_scalar": lambda x: x * 0.5, "clamp": lambda x: x.clamp(-1, 1),
    "sum_dim0": lambda x: x.sum(0), "softmax": lambda x: torch.softmax(x, -1),
}

BINARY: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "add": torch.add, "mul": torch.mul, "maximum": torch.maximum,
    "where": lambda x, y: torch.where(x > 0, x, y), "eq": torch.eq,
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary_result_layout_equals_eager(op: str, layout: str) -> None:
    f = UNARY[op]
    e = f(LAYOUTS[layout]("cpu"))
    l = f(LAYOUTS[layout]("lazy"))
    assert l.stride() == e.stride(), (op, layout, l.stride(), e.stride())
    lazyinit.materialize(l, "cpu")
    assert_tensor_equal(f"{op}({layout})", e, l)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("op", sorted(BINARY))
def test_binary_result_layout_equals_eager(op: str, layout: str) -> None:
    f = BINARY[op]

    def run(device: str) -> torch.Tensor:
        x = LAYOUTS[layout](device)
        y = torch.linspace(-3, 3, x.numel(), device=device).reshape(x.shape)
        return f(x, y), f(y, x)

    e1, e2 = run("cpu")
    l1, l2 = run("lazy")
    for name, e, l in ((f"{op}(x, y)", e1, l1), (f"{op}(y, x)", e2, l2)):
        assert l.stride() == e.stride(), (name, layout, l.stride(), e.stride())
        lazyinit.materialize(l, "cpu")
        assert_tensor_equal(f"{name} [{layout}]", e, l)


@pytest.mark.parametrize("layout", ["t", "permute3", "step_slice", "size1_odd_stride"])
def test_random_ops_reading_laid_out_inputs_draw_like_eager(layout: str) -> None:
    """Random ops fill results in memory order: their layout decides which
    element gets which draw. The stand-in run must not draw from the
    generator either."""
    def build(device: str):
        torch.manual_seed(3)
        x = LAYOUTS[layout](device).abs() + 0.5
        return [torch.rand_like(x), torch.randn_like(x), torch.bernoulli(x / 100.0),
                torch.nn.functional.dropout(x, 0.3), torch.normal(x, 1.0)]
    eager = build("cpu")
    rng = torch.get_rng_state()
    lazy = build("lazy")
    for i, (e, l) in enumerate(zip(eager, lazy)):
        assert l.stride() == e.stride(), (i, l.stride(), e.stride())
        lazyinit.materialize(l, "cpu")
        assert_tensor_equal(f"random op {i} [{layout}]", e, l)
    assert torch.equal(torch.get_rng_state(), rng)
