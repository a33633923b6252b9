"""DTensor placements as lazyinit placements (pure arithmetic, no process
group): against an index model of what DTensor's Shard and FSDP2's
_StridedShard hold, and torch.chunk; the errors."""
from __future__ import annotations

import itertools
from typing import List, Sequence

import pytest
import torch

import lazyinit
import lazyinit.distributed as ld
from dist_models import has_dtensor_engines


def _chunk(items: List[int], n: int, i: int) -> List[int]:
    size = -(-len(items) // n) if items else 0
    return items[i * size:(i + 1) * size]


def _rows_engine(n: int, mesh: Sequence[int], coord: Sequence[int], kinds) -> List[int]:
    """Rows of dim 0 a rank holds: Shard left to right; a strided shard
    (FSDP2 over TP) after the later mesh dims that shard the same dim."""
    order = []
    for i, k in enumerate(kinds):
        if k == "S":
            order.append((i, 0, i))
        elif k == "SS":
            later = [j for j in range(i + 1, len(kinds)) if kinds[j] in ("S", "SS")]
            order.append((max(later) if later else i, 1, -i))
    rows = list(range(n))
    for _, _, key in sorted(order):
        i = key if key >= 0 else -key
        rows = _chunk(rows, mesh[i], coord[i])
    return rows


def _dtensor_local(full: torch.Tensor, mesh: Sequence[int], coord: Sequence[int],
                   placements) -> torch.Tensor:
    """What ``distribute_tensor(full, mesh, placements, src_data_rank=None)``
    gives the rank at ``coord``, without a process group: each placement's
    own ``_split_tensor``, left to right."""
    local = full
    for i, p in enumerate(placements):
        if p.is_replicate():
            continue
        chunks, _ = p._split_tensor(local, mesh[i], with_padding=False)
        local = chunks[coord[i]]
    return local


@pytest.mark.skipif(not has_dtensor_engines(), reason="DTensor placements: torch >= 2.6")
def test_mapping_against_dtensor_and_fsdp2_data():
    """Every layout FSDP2 and tensor parallelism make, on odd, tiny and empty
    dims: lazyinit's piece is FSDP2's data (the TP piece chunked by FSDP),
    which is DTensor's own split wherever the sizes divide evenly. Where
    they do not, torch's ``_StridedShard`` split differs from the data FSDP2
    holds; that is counted, and happens only for strided layouts."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.placement_types import _StridedShard
    shapes = [(7, 3), (2, 5), (131, 4), (1, 1), (0, 3), (9,), (16, 2)]
    layouts = [((2,), ["S"]), ((3,), ["S"]), ((4,), ["R"]), ((2, 2), ["SS", "S"]),
               ((3, 2), ["SS", "S"]), ((2, 3), ["S", "S"]), ((2, 2), ["R", "S"]),
               ((2, 2, 2), ["R", "SS", "S"]), ((2, 2, 3), ["SS", "S", "S"])]
    differ = 0
    for shape, (mesh, kinds) in itertools.product(shapes, layouts):
        full = torch.arange(int(torch.tensor(shape).prod())).reshape(shape)
        for coord in itertools.product(*(range(m) for m in mesh)):
            placements = []
            for i, k in enumerate(kinds):
                if k == "R":
                    placements.append(Replicate())
                elif k == "S":
                    placements.append(Shard(0))
                else:
                    sf = 1
                    for j in range(i + 1, len(kinds)):
                        if kinds[j] in ("S", "SS"):
                            sf *= mesh[j]
                    placements.append(_StridedShard(0, split_factor=sf))
            lp = ld.placement_for(shape, mesh, coord, placements)
            mine = lazyinit.materialize_shard(full, lp)
            assert tuple(mine.shape) == ld.local_shape(shape, lp)
            fsdp = full[_rows_engine(shape[0], mesh, coord, kinds)]
            assert torch.equal(mine, fsdp), (shape, mesh, kinds, coord, lp)
            dt = _dtensor_local(full, mesh, coord, placements)
            if not (dt.shape == mine.shape and torch.equal(dt, mine)):
                assert "SS" in kinds, (shape, mesh, kinds, coord, lp, dt, mine)
                differ += 1
    # (7, 3) on a (3, 2) mesh is such a case: rows 6 on rank (2, 0) for
    # DTensor, on rank (2, 1) for FSDP2.
    assert differ > 0


def test_shard_and_replicate_mapping_and_errors():
    class P:  # duck-typed DTensor placements, any torch
        def __init__(self, kind, dim=0):
            self.kind, self.dim = kind, dim

        def is_shard(self):
            return self.kind == "S"

        def is_replicate(self):
            return self.kind == "R"

        def is_partial(self):
            return self.kind == "P"

    assert ld.placement_for((8, 6), (2, 3), (1, 2), [P("S", 1), P("S", 0)]) == \
        [lazyinit.Shard(1, 1, 2), lazyinit.Shard(0, 2, 3)]
    assert ld.placement_for((8, 6), (4,), (3,), [P("R")]) == lazyinit.Replicate()
    assert ld.placement_for((8, 6), (1, 2), (0, 1), [P("S"), P("S", -1)]) == \
        [lazyinit.Shard(1, 1, 2)]
    with pytest.raises(ValueError, match="partial sums"):
        ld.placement_for((8,), (2,), (0,), [P("P")])
    with pytest.raises(ValueError, match="one of each per mesh dim"):
        ld.placement_for((8,), (2, 2), (0,), [P("S")])
    with pytest.raises(ValueError, match="shards dim 2"):
        ld.placement_for((8, 3), (2,), (0,), [P("S", 2)])


@pytest.mark.skipif(not has_dtensor_engines(), reason="_StridedShard: torch >= 2.6")
def test_strided_shard_with_a_foreign_split_factor_is_refused():
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.placement_types import _StridedShard
    with pytest.raises(NotImplementedError, match="split factor 3"):
        ld.placement_for((12, 2), (2, 2), (0, 0), [_StridedShard(0, split_factor=3), Shard(0)])


def test_materialize_shard_out_checks():
    w = torch.empty(7, 5, device="lazy")
    torch.nn.init.normal_(w)
    with pytest.raises(ValueError, match="20 elements, the piece has 15"):
        lazyinit.materialize_shard(w, lazyinit.Shard(0, 1, 2), "cpu", out=torch.empty(4, 5))
    with pytest.raises(ValueError, match="dtype"):
        lazyinit.materialize_shard(w, lazyinit.Shard(0, 1, 2), "cpu",
                                   out=torch.empty(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="not contiguous"):
        lazyinit.materialize_shard(w, lazyinit.Shard(0, 1, 2), "cpu", out=torch.empty(5, 3).t())
