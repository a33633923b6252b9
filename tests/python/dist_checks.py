"""The check every DTensor-engine test runs: an engine applied to a lazy
model inside ``lazyinit.distributed.deferred`` against the same engine on
the eager model (same seed) and against ``distribute_tensor``'s oracle."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn

import lazyinit
import lazyinit.distributed as ld
from dist_harness import collective_count
from dist_models import (assert_equal_to_oracle, assert_same_local_pieces,
                         assert_training_equal, build_pair, named_slots, ties)


def check_engine(build: Callable[[], nn.Module], prepare: Callable[[nn.Module], None],
                 loss_fn: Optional[Callable[[nn.Module], torch.Tensor]], *,
                 keep_ties: bool = True, expect_strided: bool = False,
                 expect_split_ties: bool = False, seed: int = 0) -> ld.DeferredReport:
    """Builds ``build()`` eagerly and lazily with one seed; prepares the lazy
    one with ``prepare`` inside ``deferred`` and checks: no collective, no
    tensor left lazy, the CPU generator where eager left it, every piece
    equal to the oracle, only pieces computed (no fallback), ties as eager's
    (``keep_ties``); then prepares the eager one with ``prepare`` and checks
    that both hold the same pieces, and (``loss_fn``) that 3 AdamW steps
    give equal losses and gathered parameters."""
    eager, lazy, eager_rng = build_pair(build, seed)
    eager_full = {n: t.detach() for n, t in named_slots(eager).items()}
    eager_ties = ties(eager)
    lazyinit.reset_shard_stats()
    before = collective_count()
    with ld.deferred(lazy, "cpu") as d:
        prepare(lazy)
    assert collective_count() == before, \
        f"{collective_count() - before} collective(s) during preparation"
    assert not lazyinit.is_lazy(lazy), "a tensor is still lazy"
    assert torch.equal(torch._C.default_generator.get_state(), eager_rng), \
        "the CPU generator is not where eager construction left it"
    dtensors = assert_equal_to_oracle(lazy, eager_full)
    assert dtensors > 0, "the engine sharded nothing"
    report = d.report
    assert report.fallbacks == 0, lazyinit.shard_stats()["fallback_reasons"]
    assert report.pushed_down > 0 and report.pieces > 0, report
    stats = lazyinit.shard_stats()
    assert stats["fallbacks"] == 0 and stats["pushed_down"] == report.pushed_down, stats
    if keep_ties:
        assert ties(lazy) == eager_ties, (ties(lazy), eager_ties)
    assert bool(report.split_ties) == expect_split_ties, report.split_ties
    if expect_strided:
        assert any(type(p).__name__ == "_StridedShard"
                   for t in named_slots(lazy).values() for p in getattr(t, "placements", ())), \
            "no _StridedShard placement: the 2-D layout was not exercised"
    prepare(eager)
    assert_same_local_pieces(lazy, eager)
    if loss_fn is not None:
        assert_training_equal(eager, lazy, loss_fn)
    return report
