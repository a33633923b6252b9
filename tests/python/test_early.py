"""Ops that need values run early on the context's default device; the
tensors stay lazy and lazyinit.stats reports them."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

import lazyinit


def test_value_needing_ops_carry_on():
    torch.manual_seed(0)
    e = torch.randn(6)
    torch.manual_seed(0)
    with lazyinit.LazyInitContext():
        t = torch.randn(6)
        s = t.sum().item()
        lst = t.tolist()
        arr = t.numpy()
        nz = torch.nonzero(t > 0)
        flag = bool((t > -100).all())
    assert s == e.sum().item()
    assert lst == e.tolist()
    assert np.array_equal(arr, e.numpy())
    assert flag
    assert lazyinit.is_lazy(t) and lazyinit.is_lazy(nz)
    lazyinit.materialize(t)
    lazyinit.materialize(nz)
    assert torch.equal(t, e) and torch.equal(nz, torch.nonzero(e > 0))


class DropPathSchedule(nn.Module):
    """timm-style: a schedule read with item(), then an ordinary init."""

    def __init__(self) -> None:
        super().__init__()
        self.rates = [x.item() for x in torch.linspace(0, 0.1, 4)]
        self.scale = nn.Parameter(torch.ones(3) * self.rates[-1])
        self.w = nn.Parameter(torch.empty(5, 3))
        nn.init.trunc_normal_(self.w, std=0.02)
        self.register_buffer("table", torch.arange(10).float())
        self.table.mul_(self.table.max().item())  # needs the table's values


def test_stats_count_early_materialized_tensors():
    torch.manual_seed(1)
    eager = DropPathSchedule()
    torch.manual_seed(1)
    with lazyinit.LazyInitContext():
        m = DropPathSchedule()
    assert m.rates == eager.rates
    s = lazyinit.stats(m)
    assert s.parameters_lazy == 2 and s.buffers_lazy == 1
    assert s.buffers_early == 1 and s.elements_early == 10
    lazyinit.materialize(m)
    s = lazyinit.stats(m)
    assert s.parameters_materialized == 2 and s.buffers_materialized == 1
    assert s.buffers_early == 1 and s.elements_lazy == 0
    for (k, v), (_, ev) in zip(m.state_dict().items(), eager.state_dict().items()):
        assert torch.equal(v, ev), k


def test_real_tensor_written_from_a_lazy_one():
    torch.manual_seed(2)
    e = torch.rand(4)
    torch.manual_seed(2)
    lazy = torch.rand(4, device="lazy")
    real = torch.zeros(4)
    real.copy_(lazy)  # a write into a real tensor: runs early
    assert torch.equal(real, e) and lazyinit.is_lazy(lazy)
    lazyinit.materialize(lazy)
    assert torch.equal(lazy, e)
