"""materialize_shard: every piece equals the same slice of the eager tensor.

Eager references are built with the same seed and the same code; pieces are
cut from them here with torch.chunk / reshape, independently of the C++
placement code.
"""
from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import textwrap
from typing import Callable, Dict, List, Sequence

import pytest
import torch
import torch.nn as nn

import lazyinit
from lazyinit import FlatRange, Replicate, Shard

Builder = Callable[[torch.dtype], Dict[str, torch.Tensor]]


def expected_piece(full: torch.Tensor, placement) -> torch.Tensor:
    items = list(placement) if isinstance(placement, (list, tuple)) else [placement]
    t = full
    for p in items:
        if isinstance(p, Shard):
            chunks = torch.chunk(t, p.world_size, dim=p.dim)
            t = chunks[p.rank] if p.rank < len(chunks) else t.narrow(p.dim, t.shape[p.dim], 0)
        elif isinstance(p, FlatRange):
            t = t.reshape(-1)[p.start:p.end]
    return t


def placements_for(shape: Sequence[int], rng: random.Random, worlds=range(1, 9)) -> List:
    """Every rank of Shard(0)/Shard(1) for world sizes 1..8, plus nested
    shards and flat ranges."""
    out: List = [Replicate()]
    dims = list(range(len(shape)))
    for w in worlds:
        for r in range(w):
            out += [Shard(d, r, w) for d in dims]
    if len(shape) >= 2:
        for tp, fsdp in [(2, 4), (4, 2), (3, 3)]:
            for d in (0, 1):
                out.append([Shard(0, rng.randrange(tp), tp), Shard(d, rng.randrange(fsdp), fsdp)])
    n = math.prod(shape)
    for w in (1, 3, 8):
        chunk = -(-n // w)
        out += [FlatRange(min(r * chunk, n), min((r + 1) * chunk, n)) for r in range(w)]
    if dims:
        a = rng.randrange(n + 1)
        out.append([Shard(dims[-1], 1 % 2, 2), FlatRange(0, 0)])
        out.append(FlatRange(a, rng.randrange(a, n + 1)))
    return out


def nn_init_model(dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    """Init functions built on uniform_ / normal_, in one generator stream,
    over odd and tiny shapes."""
    t: Dict[str, torch.Tensor] = {}

    def new(name, *shape):
        t[name] = torch.empty(*shape, dtype=dtype)
        return t[name]

    nn.init.kaiming_uniform_(new("kaiming", 4097, 11), a=math.sqrt(5))
    nn.init.normal_(new("normal", 37, 33), std=0.02)
    nn.init.xavier_normal_(new("xavier", 33, 17))
    nn.init.xavier_uniform_(new("xavier_u", 18, 5))
    nn.init.kaiming_normal_(new("kaiming_n", 21, 9), nonlinearity="relu")
    nn.init.uniform_(new("uniform_tiny", 3, 5), -0.5, 0.5)
    nn.init.normal_(new("normal_tiny", 7), std=0.02)   # < 16: serial kernel
    nn.init.normal_(new("normal_15", 3, 5))
    nn.init.normal_(new("normal_16", 16))
    nn.init.normal_(new("normal_odd", 4097, 11), std=0.02)
    nn.init.uniform_(new("uniform_1x40", 1, 40))
    if dtype != torch.float16:  # erfinv_ has no Half CPU kernel in torch 1.13
        nn.init.trunc_normal_(new("trunc", 129, 7), std=0.02)
    t["randn_scaled"] = torch.randn(37, 5, dtype=dtype) * 0.02  # random factory, then mul
    t["rand"] = torch.rand(41, dtype=dtype)
    t["randn_tiny"] = torch.randn(3, 4, dtype=dtype)  # < 16: serial kernel
    return t


def edit_model(dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    """Constant factories and element-wise edits, views included."""
    t: Dict[str, torch.Tensor] = {}
    t["zeros_view"] = torch.zeros(23, 6, dtype=dtype)
    t["zeros_view"][3:9].fill_(2.5)
    t["zeros_view"][11].mul_(3).add_(1)
    t["full"] = torch.full((5, 19), 0.25, dtype=dtype)
    t["full"].mul_(torch.tensor(3.0))
    t["ones_copy"] = torch.ones(9, 8, dtype=dtype)
    t["ones_copy"].copy_(torch.arange(72, dtype=torch.float64).reshape(9, 8) / 7)
    if dtype != torch.float16:  # no Half CPU clamp kernel in torch 1.13
        t["ones_copy"].clamp_(0.5, 6.0)
    t["after_normal"] = torch.empty(40, 3, dtype=dtype).normal_()
    t["after_normal"][1:3].zero_()
    t["after_normal"].add_(t["after_normal"])  # reads itself, same geometry
    # Storages made element-wise from lazy inputs: replayed over the spans.
    base = torch.empty(45, 7).normal_(0, 0.02)
    t["derived"] = (base * 2).to(dtype)
    t["derived"].add_(1)
    t["derived_rows"] = base[3:9].clone().to(dtype)
    t["derived_sum"] = (t["zeros_view"] + torch.ones(23, 6, dtype=dtype)) / 3
    base.mul_(0.5)  # the derived ones read the version before this
    t["base_after"] = base
    return t


def fill_model(dtype: torch.dtype, gen: "torch.Generator | None") -> Dict[str, torch.Tensor]:
    """Every region generator (uniform_, normal_, rand, randn) over odd
    sizes, normal_'s recomputed tail (numel % 16 != 0), whole blocks only,
    and the serial kernel (< 16 elements), drawing from ``gen`` (None: the
    default generator)."""
    kw = {} if gen is None else {"generator": gen}
    t: Dict[str, torch.Tensor] = {}
    t["uniform"] = torch.empty(4097, 3, dtype=dtype).uniform_(-1, 2, **kw)
    t["normal_tail"] = torch.empty(37, 33, dtype=dtype).normal_(0.5, 2, **kw)
    t["normal_blocks"] = torch.empty(64, 8, dtype=dtype).normal_(**kw)
    t["normal_17"] = torch.empty(17, dtype=dtype).normal_(**kw)
    t["normal_tiny"] = torch.empty(7, dtype=dtype).normal_(**kw)
    t["rand"] = torch.rand(41, 5, dtype=dtype, **kw)
    t["randn"] = torch.randn(3, 29, dtype=dtype, **kw)
    t["randn_tiny"] = torch.randn(2, 5, dtype=dtype, **kw)
    t["uniform_after"] = torch.empty(100, dtype=dtype).uniform_(**kw)
    return t


BUILDERS: Dict[str, Builder] = {"nn_init": nn_init_model, "edits": edit_model}
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def build_both(builder: Builder, dtype: torch.dtype, seed: int = 1234, device: str = "cpu"):
    """(eager tensors, the eager generator state of `device` after them,
    lazy tensors), built with the same seed; eager ones on `device`."""
    torch.manual_seed(seed)
    if device == "cpu":
        eager = builder(dtype)
        eager_state = torch.get_rng_state()
    else:
        with torch.device(device):
            eager = builder(dtype)
        eager_state = torch.cuda.get_rng_state()
    torch.manual_seed(seed)
    with lazyinit.LazyInitContext():
        lazy = builder(dtype)
    return eager, eager_state, lazy


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_every_shard_equals_the_eager_slice_in_random_order(kind: str, dtype: torch.dtype) -> None:
    eager, eager_state, lazy = build_both(BUILDERS[kind], dtype)
    rng = random.Random(f"{kind}-{dtype}")
    work = [(name, p) for name in lazy for p in placements_for(lazy[name].shape, rng)]
    rng.shuffle(work)
    lazyinit.reset_shard_stats()
    for name, p in work:
        got = lazyinit.materialize_shard(lazy[name], p)
        want = expected_piece(eager[name], p)
        assert got.dtype == want.dtype and got.shape == want.shape, (name, p)
        assert torch.equal(got, want), (name, p)
        assert lazyinit.is_lazy(lazy[name])
    stats = lazyinit.shard_stats()
    assert stats["fallbacks"] == 0, stats["fallback_reasons"]
    assert stats["pushed_down"] + stats["whole"] == len(work)
    assert stats["whole"] >= len(lazy)  # Replicate() at least
    # Full materialization afterwards: same values, generator where eager left it.
    for name in sorted(lazy, reverse=True):
        lazyinit.materialize(lazy[name])
        assert torch.equal(lazy[name], eager[name]), name
    assert torch.equal(torch.get_rng_state(), eager_state)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("generator", ["default", "explicit"])
def test_every_dtype_generator_and_placement_equals_eager(generator: str,
                                                          dtype: torch.dtype) -> None:
    """dtype x generator x placement: every piece of every region-generated
    tensor equals the eager slice, in random order; afterwards the generator
    drawn from is where eager left it."""
    def gen():
        return None if generator == "default" else torch.Generator().manual_seed(77)

    eager_gen, lazy_gen = gen(), gen()
    torch.manual_seed(1234)
    eager = fill_model(dtype, eager_gen)
    eager_state = (torch.get_rng_state() if eager_gen is None else eager_gen.get_state())
    torch.manual_seed(1234)
    with lazyinit.LazyInitContext():
        lazy = fill_model(dtype, lazy_gen)
    rng = random.Random(f"{generator}-{dtype}")
    work = [(name, p) for name in lazy for p in placements_for(lazy[name].shape, rng)]
    rng.shuffle(work)
    lazyinit.reset_shard_stats()
    for name, p in work:
        got = lazyinit.materialize_shard(lazy[name], p)
        assert torch.equal(got, expected_piece(eager[name], p)), (name, p)
    assert lazyinit.shard_stats()["fallbacks"] == 0, lazyinit.shard_stats()["fallback_reasons"]
    for name in rng.sample(sorted(lazy), len(lazy)):
        lazyinit.materialize(lazy[name])
        assert torch.equal(lazy[name], eager[name]), name
    state = torch.get_rng_state() if lazy_gen is None else lazy_gen.get_state()
    assert torch.equal(state, eager_state)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16],
                         ids=["float32", "float64", "bfloat16"])
def test_pieces_longer_than_a_generation_chunk(dtype: torch.dtype, threads: int) -> None:
    """Region generators work in chunks of 2**20 elements, and pieces of
    2**20 elements or more on several threads, each from its own jump in
    the stream: pieces that cross chunk boundaries, at odd offsets, with a
    normal_ tail, split into rows (Shard(1))."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _pieces_longer_than_a_generation_chunk(dtype)
    finally:
        torch.set_num_threads(old)


def _pieces_longer_than_a_generation_chunk(dtype: torch.dtype) -> None:
    def build(dtype):
        n = torch.empty(3 * 2**20 + 7, dtype=dtype).normal_()
        return {"n": n, "u": torch.empty(2**20 + 3, 3, dtype=dtype).uniform_(),
                # derived pieces are computed 2**20 elements at a time
                "d": (n * 3).to(torch.bfloat16)}

    eager, _, lazy = build_both(build, dtype)
    for name, p in [("n", Shard(0, 1, 3)), ("n", Shard(0, 2, 3)), ("n", FlatRange(5, 2**21 + 9)),
                    ("u", Shard(0, 0, 2)), ("u", Shard(1, 1, 3)), ("n", Shard(0, 0, 3)),
                    ("d", Shard(0, 1, 2)), ("d", FlatRange(2**20 - 5, 2**21 + 2**19)),
                    ("d", Shard(0, 0, 1))]:
        assert torch.equal(lazyinit.materialize_shard(lazy[name], p), expected_piece(eager[name], p))


def test_shards_of_views_of_a_lazy_tensor() -> None:
    """The tensor asked for may itself be a view: transposed (its rows are
    not contiguous in storage: one bounding span), a column slice, a row."""
    eager, _, lazy = build_both(nn_init_model, torch.float32)
    lazyinit.reset_shard_stats()
    views = [lambda t: t.t(), lambda t: t[:, 3:9], lambda t: t[5], lambda t: t[2:30:3]]
    rng = random.Random(0)
    for view in views:
        e, l = view(eager["normal"]), view(lazy["normal"])
        for p in placements_for(e.shape, rng, worlds=(1, 2, 5)):
            assert torch.equal(lazyinit.materialize_shard(l, p), expected_piece(e, p)), p
    assert lazyinit.shard_stats()["fallbacks"] == 0


def test_shards_leave_the_generator_and_later_recording_alone() -> None:
    def build(dtype):
        a = torch.empty(300, 7).normal_()
        b = torch.empty(65).uniform_()
        return {"a": a, "b": b}

    def more():
        return torch.empty(50, 3).normal_(0, 2)

    torch.manual_seed(7)
    eager = build(torch.float32)
    eager_more = more()
    eager_final = torch.get_rng_state()
    torch.manual_seed(7)
    with lazyinit.LazyInitContext():
        lazy = build(torch.float32)
    for w in (8, 3):
        for r in reversed(range(w)):
            for name in ("b", "a"):
                assert torch.equal(lazyinit.materialize_shard(lazy[name], Shard(0, r, w)),
                                   expected_piece(eager[name], Shard(0, r, w)))
    with lazyinit.LazyInitContext():
        lazy_more = more()  # continues the stream as eager did
    assert torch.equal(lazyinit.materialize_shard(lazy_more, Shard(1, 2, 3)),
                       expected_piece(eager_more, Shard(1, 2, 3)))
    lazyinit.materialize(lazy_more)
    for name in lazy:
        lazyinit.materialize(lazy[name])
        assert torch.equal(lazy[name], eager[name])
    assert torch.equal(lazy_more, eager_more)
    assert torch.equal(torch.get_rng_state(), eager_final)


def _fallback_model() -> nn.Module:
    m = nn.Module()
    m.ortho = nn.Parameter(torch.empty(270, 260))
    nn.init.orthogonal_(m.ortho)              # copies a QR result: not element-local
    m.lin = nn.Linear(10, 6)                  # pushed down
    m.t = nn.Parameter(torch.empty(5, 8))
    m.t.data.t().uniform_()                   # transposed write
    m.register_buffer("cat", torch.cat([torch.ones(3), torch.zeros(4)]))
    m.other = nn.Parameter(torch.empty(300, 300))
    with torch.no_grad():                     # reads a large lazy tensor
        m.other.copy_(torch.empty(300, 300).uniform_().t() * 2)
    m.cols = nn.Parameter(torch.empty(300, 250).normal_().t().contiguous())  # transposed copy
    m.small = nn.Parameter(torch.empty(6, 10))
    with torch.no_grad():                     # a small lazy operand: pushed down
        m.small.copy_(m.lin.weight * 2)
    # Pushed down; its generator position is found by counting the draws of
    # everything above, the transposed uniform_ included.
    m.after = nn.Linear(31, 17)
    return m


def test_non_local_tapes_fall_back_exactly_and_are_counted() -> None:
    torch.manual_seed(3)
    eager = _fallback_model()
    torch.manual_seed(3)
    with lazyinit.LazyInitContext():
        lazy = _fallback_model()
    lazyinit.reset_shard_stats()
    # First, so that its generator position comes from counted draws only.
    assert torch.equal(lazyinit.materialize_shard(lazy.after.weight, Shard(0, 1, 2)),
                       expected_piece(eager.after.weight, Shard(0, 1, 2)))
    assert lazyinit.shard_stats()["rng_scratch_runs"] == 0
    want = {n: t for n, t in list(eager.named_parameters()) + list(eager.named_buffers())}
    for w in (1, 2, 5):
        for r in range(w):
            fn = lambda name, t, r=r, w=w: [Shard(0, r, w)]
            got = lazyinit.materialize_module_shards(lazy, fn)
            assert set(got) == set(want)
            for name, piece in got.items():
                assert torch.equal(piece, expected_piece(want[name], Shard(0, r, w))), name
                assert piece.storage_offset() == 0 and piece.is_contiguous(), name
            # One allocation per dtype, a storage of its own for each piece.
            ptrs = [p.data_ptr() for p in got.values() if p.numel() > 0]
            assert len(set(ptrs)) == len(ptrs)
    stats = lazyinit.shard_stats()
    assert stats["fallbacks"] > 0 and stats["pushed_down"] > 0
    reasons = " | ".join(stats["fallback_reasons"])
    for why in ("created by aten::cat", "non-contiguous", "reads another large lazy tensor",
                "reads a lazy tensor of another shape or layout"):
        assert why in reasons, reasons
    s = lazyinit.stats(lazy)
    # ortho, t, cat, other, cols; lin.*, small, after.* pushed down
    assert s.shard_fallbacks == 5
    assert s.parameters_lazy == 9
    lazyinit.materialize(lazy)
    for name, t in want.items():
        assert torch.equal(dict(list(lazy.named_parameters()) + list(lazy.named_buffers()))[name], t)


def test_real_tensors_and_placement_errors() -> None:
    x = torch.arange(30.0).reshape(5, 6)
    piece = lazyinit.materialize_shard(x, [Shard(1, 1, 2), FlatRange(2, 7)])
    assert torch.equal(piece, expected_piece(x, [Shard(1, 1, 2), FlatRange(2, 7)]))
    piece.fill_(0)
    assert x.sum() == 435  # a copy, not a view
    assert lazyinit.chunk_bounds(5, 3, 4) == (5, 5)
    assert torch.equal(lazyinit.materialize_shard(x, Shard(-1, 1, 4)), x.chunk(4, -1)[1])
    with lazyinit.LazyInitContext():
        z = torch.zeros(5, 6)
        z[:, 2].fill_(1.0)  # a strided write: falls back, still exact
    assert torch.equal(lazyinit.materialize_shard(z, Shard(-1, 1, 4)),
                       expected_piece(torch.zeros(5, 6).index_fill_(1, torch.tensor([2]), 1.0),
                                      Shard(-1, 1, 4)))
    with pytest.raises(ValueError):
        Shard(0, 3, 3)
    with pytest.raises(RuntimeError, match="out of range"):
        lazyinit.materialize_shard(x, Shard(2, 0, 2))
    with pytest.raises(RuntimeError, match="FlatRange"):
        lazyinit.materialize_shard(x, FlatRange(0, 31))
    with pytest.raises(RuntimeError, match="FlatRange leaves a 1-D piece"):
        lazyinit.materialize_shard(x, [FlatRange(0, 6), Shard(1, 0, 2)])
    with lazyinit.LazyInitContext():
        y = torch.empty(4, 4).normal_()
    with pytest.raises(RuntimeError, match="holds data"):
        lazyinit.materialize_shard(y, Shard(0, 0, 2), device="meta")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cannot materialize a shard onto 'cuda'"):
            lazyinit.materialize_shard(y, Shard(0, 0, 2), device="cuda")


def test_shard_of_a_tensor_whose_value_was_needed_early() -> None:
    """A value computed early (tolist) is cached: pieces start from it."""
    def build(dtype):
        t = torch.empty(50, 3, dtype=dtype).normal_()
        t.tolist()
        t.mul_(2)
        return {"t": t}

    eager, _, lazy = build_both(build, torch.float32)
    for p in (Shard(0, 1, 3), Shard(1, 2, 3), FlatRange(7, 99)):
        assert torch.equal(lazyinit.materialize_shard(lazy["t"], p), expected_piece(eager["t"], p))


_MEMORY_SCRIPT = textwrap.dedent("""
    import sys, torch, lazyinit
    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    torch.manual_seed(0)
    with lazyinit.LazyInitContext():
        w = torch.empty(8192, 8192)
        torch.nn.init.trunc_normal_(w, std=0.02)
        v = torch.empty(8192, 8192).normal_(0, 0.02)
        d = (v * 2).to(torch.bfloat16)  # derived: fp32 inputs, bf16 piece
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak RSS (VmHWM) to the current RSS
    base = rss("VmRSS")
    if sys.argv[1] == "derived":
        shards = [lazyinit.materialize_shard(d, lazyinit.Shard(0, 1, 2))]
    else:
        shards = [lazyinit.materialize_shard(w, lazyinit.Shard(0, 7, 8)),
                  lazyinit.materialize_shard(v, lazyinit.Shard(1, 7, 8))]
    peak = rss("VmHWM")
    print(base, peak, sum(s.numel() * s.element_size() for s in shards),
          lazyinit.shard_stats()["fallbacks"])
""")


@pytest.mark.parametrize("kind", ["random", "derived"])
def test_peak_memory_of_a_large_shard_is_bounded(kind: str) -> None:
    """Peak RSS <= shard bytes + 64 MiB: random fills of rank 7 of 8, and
    a bf16 piece derived from fp32 lazy tensors (half of 8192 x 8192: its
    inputs alone would be 256 MiB if not computed a chunk at a time)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, kind], capture_output=True,
                         text=True, env=env, check=True)
    base, peak, shard_bytes, fallbacks = map(int, out.stdout.split())
    assert fallbacks == 0
    assert shard_bytes == (2 * 8192 * 1024 * 4 if kind == "random" else 8192 * 4096 * 2)
    assert peak - base <= shard_bytes + 64 * 2**20, (peak - base) / 2**20


def _shared_model() -> nn.Module:
    m = nn.Module()
    block = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6))
    m.a = block
    m.b = nn.Sequential(block, nn.BatchNorm1d(6))  # a module reached twice
    m.head = nn.Linear(6, 4, bias=False)
    m.emb = nn.Embedding(4, 6)
    m.head.weight = m.emb.weight                   # tied (and transposed use)
    m.register_parameter("missing", None)          # None entries are skipped
    m.register_buffer("scale", torch.ones(3))
    m.register_buffer("none_buffer", None)
    return m


def test_module_walk_matches_named_parameters_and_buffers() -> None:
    """The C++ walk behind materialize / materialize_module_shards / stats
    gives named_parameters() then named_buffers(): names, order, tied
    tensors once, and calls placement_fn in that order."""
    with lazyinit.LazyInitContext():
        lazy = _shared_model()
    want = [(n, t) for n, t in list(lazy.named_parameters()) + list(lazy.named_buffers())]
    got = [(n, t) for n, t, _ in lazyinit._materialize._module_tensors(lazy)]
    assert [n for n, _ in got] == [n for n, _ in want]
    assert all(a is b for (_, a), (_, b) in zip(got, want))
    calls = []

    def fn(name, t):
        calls.append((name, t))
        return Replicate()
    shards = lazyinit.materialize_module_shards(lazy, fn)
    assert [n for n, _ in calls] == [n for n, _ in want]
    assert list(shards) == [n for n, _ in want]
    s = lazyinit.stats(lazy)
    assert s.parameters_lazy == len(list(lazy.parameters()))
    assert s.buffers_lazy == len(list(lazy.buffers()))


def _by_kind_model() -> nn.Module:
    m = _shared_model()
    m.gain = nn.Parameter(torch.randn(()))             # 0-dim: replicated
    m.register_buffer("steps", torch.zeros((), dtype=torch.int64))
    m.register_buffer("table", torch.randn(5, 3))
    return m


@pytest.mark.parametrize("buffers", [Replicate(), Shard(0, 1, 2)], ids=["replicated", "dim0"])
def test_by_kind_places_parameters_and_buffers_and_equals_eager(buffers) -> None:
    """ByKind decides in C++ what its __call__ (the same rule, in Python)
    decides: parameters one placement, buffers another, 0-dim tensors
    replicated; every piece equals the eager slice."""
    torch.manual_seed(5)
    eager = _by_kind_model()
    torch.manual_seed(5)
    with lazyinit.LazyInitContext():
        lazy = _by_kind_model()
    want = dict(list(eager.named_parameters()) + list(eager.named_buffers()))
    for world in (1, 3):
        for rank in range(world):
            policy = lazyinit.ByKind(Shard(0, rank, world), buffers)
            got = lazyinit.materialize_module_shards(lazy, policy)
            via_python = lazyinit.materialize_module_shards(lazy, lambda n, t: policy(n, t))
            assert list(got) == list(via_python) == list(want)
            for name, piece in got.items():
                t = want[name]
                placement = (Replicate() if t.dim() == 0 else
                             Shard(0, rank, world) if isinstance(t, nn.Parameter) else buffers)
                assert torch.equal(piece, expected_piece(t, placement)), (name, rank, world)
                assert torch.equal(piece, via_python[name]), name
    assert lazyinit.is_lazy(lazy)


def test_by_kind_and_placement_fn_type_errors() -> None:
    with lazyinit.LazyInitContext():
        lazy = _shared_model()
    with pytest.raises(TypeError, match="expected Replicate, Shard, FlatRange"):
        lazyinit.materialize_module_shards(lazy, lazyinit.ByKind("dim0"))
    with pytest.raises(TypeError, match="must be a callable"):
        lazyinit.materialize_module_shards(lazy, Shard(0, 0, 2))
    assert lazyinit.is_lazy(lazy)


def test_placement_function_errors_propagate() -> None:
    with lazyinit.LazyInitContext():
        lazy = _shared_model()

    def bad(name, t):
        raise KeyError(name)
    with pytest.raises(KeyError):
        lazyinit.materialize_module_shards(lazy, bad)
    with pytest.raises(TypeError, match="expected Replicate, Shard, FlatRange"):
        lazyinit.materialize_module_shards(lazy, lambda n, t: "dim0")
    assert lazyinit.is_lazy(lazy)
