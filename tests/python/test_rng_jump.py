"""The mt19937 jump-ahead (src/rng/mt19937_jump.cpp) seen from Python.

A CPU shard of a lazy tensor recorded after a lazy tensor of 2^28 draws,
which is never materialized, equals the same slice of eager: the generator
position before it is found by skipping (jumping) past the big one. The
eager reference draws the same numbers from a torch.Generator in chunks, so
no tensor of 2^28 elements exists at any point.

Seeds are chosen at test time and printed (pytest -s, or shown on failure).
"""
from __future__ import annotations

import random

import pytest
import torch

import lazyinit
from lazyinit import Shard

BIG_DRAWS = 2**28
CHUNK = 2**22


def _fresh_seed(what: str) -> int:
    seed = random.SystemRandom().randrange(2**32)
    print(f"[rng jump] {what}: seed {seed}")
    return seed


def _draw(gen: torch.Generator, draws: int) -> None:
    """Advances `gen` by `draws` mt19937 outputs through PyTorch's own
    kernel: float32 uniform_ takes one output per element."""
    buf = torch.empty(min(draws, CHUNK))
    while draws > 0:
        n = min(draws, CHUNK)
        buf[:n].uniform_(generator=gen)
        draws -= n


@pytest.mark.parametrize("kind", ["uniform_float32", "normal_float64"])
def test_shard_far_into_the_stream_equals_eager(kind: str) -> None:
    seed = _fresh_seed(kind)
    dtype = torch.float32 if kind == "uniform_float32" else torch.float64
    big_numel = BIG_DRAWS if dtype == torch.float32 else BIG_DRAWS // 2  # double: 2 draws each
    n = 2**20 + 37  # not a multiple of 8 ranks nor of normal_'s 16-element blocks
    torch.manual_seed(seed)
    with lazyinit.LazyInitContext():
        big = torch.empty(big_numel, dtype=dtype).uniform_()
        t = torch.empty(n, dtype=dtype)
        if kind == "uniform_float32":
            t.uniform_()
        else:
            t.normal_(0, 0.02)
    lazyinit.reset_shard_stats()
    piece = lazyinit.materialize_shard(t, Shard(0, 7, 8))
    stats = lazyinit.shard_stats()
    assert lazyinit._C._tensor_state(big) == 1  # still lazy: never materialized
    assert stats["pushed_down"] == 1 and stats["fallbacks"] == 0, stats
    assert stats["rng_scratch_runs"] == 0, stats
    if kind == "uniform_float32":
        # The big node's draws, then rank 7's offset into t (one draw each).
        assert stats["draws_skipped"] == BIG_DRAWS + 7 * -(-n // 8), stats
    else:
        assert stats["draws_skipped"] > BIG_DRAWS, stats

    gen = torch.Generator().manual_seed(seed)
    _draw(gen, BIG_DRAWS)
    full = torch.empty(n, dtype=dtype)
    if kind == "uniform_float32":
        full.uniform_(generator=gen)
    else:
        full.normal_(0, 0.02, generator=gen)
    assert torch.equal(piece, full.chunk(8)[7])
    del big


def test_generator_discard_matches_drawing() -> None:
    """lazyinit._C._mt19937_discard (every method) against drawing, from a
    random point inside a block, up to 3e8 draws: the generator's whole
    state (torch.Generator.get_state) must be equal."""
    seed = _fresh_seed("discard")
    rng = random.Random(seed)
    start = torch.Generator().manual_seed(seed)
    _draw(start, rng.randrange(1, 624))
    counts = sorted({0, 1, 623, 624, 625, 1247, 1248, 624 * 3000, 624 * 3000 + 1,
                     rng.randrange(10**6, 10**7), 300_000_007})
    drawn = torch.Generator()
    drawn.set_state(start.get_state())
    done = 0
    for n in counts:
        _draw(drawn, n - done)
        done = n
        for how in ("auto", "jump", "step"):
            if how == "step" and n > 10**7:
                continue  # stepping is the slow path the jump replaces
            skipped = torch.Generator()
            skipped.set_state(start.get_state())
            lazyinit._C._mt19937_discard(skipped, n, how)
            assert torch.equal(skipped.get_state(), drawn.get_state()), (n, how)
            reference = torch.Generator()
            reference.set_state(drawn.get_state())
            assert torch.equal(torch.rand(700, generator=skipped),
                               torch.rand(700, generator=reference)), (n, how)
