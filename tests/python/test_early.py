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


def test_trunc_normal_with_bounds_that_reject():
    """trunc_normal_ with its default std=1 rejects samples: torch 2.14's
    sampler reads values to decide (computed early, exactly), earlier ones
    transform one uniform_. Either way values, pieces and the generator
    equal eager's; wide bounds stay lazy without early values."""
    def build():
        m = nn.Module()
        m.narrow = nn.Parameter(torch.empty(300, 7))
        nn.init.trunc_normal_(m.narrow)                      # a=-2, b=2, std=1
        m.shifted = nn.Parameter(torch.empty(64))
        nn.init.trunc_normal_(m.shifted, mean=1.0, std=0.5, a=0.9, b=1.05)
        m.wide = nn.Parameter(torch.empty(33, 5))
        nn.init.trunc_normal_(m.wide, std=0.02)
        m.after = nn.Parameter(torch.randn(40))
        return m

    torch.manual_seed(11)
    eager = build()
    state = torch.get_rng_state()
    torch.manual_seed(11)
    with lazyinit.LazyInitContext():
        lazy = build()
    assert lazyinit.stats(lazy).parameters_early <= 2       # narrow, shifted at most
    for name, t in lazy.named_parameters():
        want = dict(eager.named_parameters())[name]
        for p in (lazyinit.Shard(0, 1, 3), lazyinit.FlatRange(5, 30)):
            piece = lazyinit.materialize_shard(t, p)
            assert torch.equal(piece, lazyinit.materialize_shard(want.detach(), p)), name
    lazyinit.materialize(lazy)
    for (name, e), (_, l) in zip(eager.named_parameters(), lazy.named_parameters()):
        assert torch.equal(e, l), name
    assert torch.equal(torch.get_rng_state(), state)
