"""Materialize-on-shard onto CUDA against eager CUDA tensors.

The Philox region kernel (src/shard/cuda/region_fill.cu): any element range of
what ``normal_`` / ``uniform_`` write into a whole tensor, generated alone,
equals that range of the whole, bit for bit. Then ``materialize_shard`` onto
"cuda" for the models of test_shard.py (nn.init functions, random factories,
element-wise edits) built eagerly ``with torch.device("cuda")``: every
placement, in random order, pushed down (no fallback), generators left
alone; and its peak memory.

Needs a GPU and a build with the CUDA kernels (the default where torch has
CUDA); skipped otherwise.
"""
from __future__ import annotations

import random

import pytest
import torch

import lazyinit
from lazyinit import FlatRange, Shard, _C
from test_shard import BUILDERS, DTYPES, build_both, expected_piece, placements_for


def _kernels_built() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        _C._philox_region_fill([(0, torch.empty(0, device="cuda"))], "normal", 0, 0, 1, 1, 0.0, 1.0)
    except RuntimeError as e:
        if "built without" in str(e):
            return False
        raise
    return True


pytestmark = pytest.mark.skipif(not _kernels_built(),
                                reason="needs a GPU and LAZYINIT_CUDA_KERNELS=ON")


def _grid_limit() -> int:
    p = torch.cuda.get_device_properties(torch.cuda.current_device())
    return p.multi_processor_count * (p.max_threads_per_multi_processor // 256)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["normal", "uniform"])
@pytest.mark.parametrize("numel", [1, 7, 4097 * 11, 1_100_000, 3_000_001])
def test_region_equals_slice_of_eager(dtype: torch.dtype, kind: str, numel: int) -> None:
    gen = torch.cuda.default_generators[torch.cuda.current_device()]
    torch.cuda.manual_seed(123)
    torch.randn(1000, device="cuda")          # a non-zero offset
    seed, offset = gen.initial_seed(), gen.get_offset()
    a, b = (0.5, 0.02) if kind == "normal" else (-0.3, 0.7)
    full = torch.empty(numel, dtype=dtype, device="cuda")
    getattr(full, kind + "_")(a, b)
    rng = random.Random(numel)
    for world in range(1, 9):
        pieces = torch.arange(numel).chunk(world)
        for rank in rng.sample(range(len(pieces)), len(pieces)):
            if pieces[rank].numel() == 0:
                continue
            begin = int(pieces[rank][0])
            out = torch.empty(pieces[rank].numel(), dtype=dtype, device="cuda")
            _C._philox_region_fill([(begin, out)], kind, seed, offset, numel, _grid_limit(), a, b)
            assert torch.equal(out, full[begin:begin + out.numel()]), (world, rank)
    # Many pieces in one call: long ones (one Philox call per `unroll`
    # elements) and short ones (one per element, one launch), any order.
    cuts = sorted(rng.sample(range(1, numel), min(numel - 1, 40)))
    bounds = list(zip([0] + cuts, cuts + [numel]))
    rng.shuffle(bounds)
    pieces = [(lo, torch.empty(hi - lo, dtype=dtype, device="cuda")) for lo, hi in bounds]
    _C._philox_region_fill(pieces, kind, seed, offset, numel, _grid_limit(), a, b)
    for begin, out in pieces:
        assert torch.equal(out, full[begin:begin + out.numel()]), begin


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("kind", ["normal", "uniform"])
def test_rows_in_one_buffer_equal_the_eager_columns(dtype: torch.dtype, kind: str) -> None:
    """Pieces that are the rows of a column block, back to back in one
    buffer (a Shard(1)), go out as one job of rows; a piece that breaks the
    pattern starts a new job. Each must still hold eager's values."""
    gen = torch.cuda.default_generators[torch.cuda.current_device()]
    torch.cuda.manual_seed(7)
    a, b = (0.0, 0.02) if kind == "normal" else (-1.0, 2.0)
    for rows, cols, lo, hi in [(4097, 11, 3, 9), (300, 1000, 0, 1000), (3, 5000, 4999, 5000),
                               (2000, 700, 350, 438)]:
        seed, offset = gen.initial_seed(), gen.get_offset()
        full = torch.empty(rows, cols, dtype=dtype, device="cuda")
        getattr(full, kind + "_")(a, b)
        buf = torch.empty(rows, hi - lo, dtype=dtype, device="cuda")
        other = torch.empty(hi - lo, dtype=dtype, device="cuda")
        pieces = [(r * cols + lo, buf[r]) for r in range(rows)]
        pieces[rows // 2] = (pieces[rows // 2][0], other)  # not adjacent: breaks the run
        _C._philox_region_fill(pieces, kind, seed, offset, rows * cols, _grid_limit(), a, b)
        want = full[:, lo:hi]
        assert torch.equal(other, want[rows // 2]), (rows, cols)
        got = buf.clone()
        got[rows // 2] = want[rows // 2]
        assert torch.equal(got, want), (rows, cols, lo, hi)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_every_cuda_shard_equals_the_eager_slice_in_random_order(kind: str,
                                                                 dtype: torch.dtype) -> None:
    eager, eager_state, lazy = build_both(BUILDERS[kind], dtype, device="cuda")
    rng = random.Random(f"cuda-{kind}-{dtype}")
    work = [(name, p) for name in lazy for p in placements_for(lazy[name].shape, rng)]
    rng.shuffle(work)
    lazyinit.reset_shard_stats()
    state = torch.cuda.get_rng_state()
    for name, p in work:
        got = lazyinit.materialize_shard(lazy[name], p, "cuda")
        want = expected_piece(eager[name], p)
        assert got.device.type == "cuda" and got.dtype == want.dtype, (name, p)
        assert got.shape == want.shape, (name, p)
        assert torch.equal(got, want), (name, p)
    assert torch.equal(torch.cuda.get_rng_state(), state)  # shards move no generator
    stats = lazyinit.shard_stats()
    assert stats["fallbacks"] == 0, stats["fallback_reasons"]
    # Full materialization afterwards: same values, generator where eager left it.
    for name in sorted(lazy, reverse=True):
        lazyinit.materialize(lazy[name], "cuda")
        assert torch.equal(lazy[name], eager[name]), name
    assert torch.equal(torch.cuda.get_rng_state(), eager_state)


def test_large_cuda_shards_across_the_grid_limit() -> None:
    """Tensors larger than one grid-stride pass (several Philox calls a
    thread), sharded on either dim and as flat ranges."""
    def build(dtype):
        return {"n": torch.empty(4097, 1111, dtype=dtype).normal_(0, 0.02),
                "u": torch.empty(3 * 2**20 + 5, dtype=dtype).uniform_(-2, 3),
                "r": torch.randn(1025, 2049, dtype=dtype),
                # Rows too long for one Philox call an element: a job a row.
                "w": torch.empty(3, 2**21 + 3, dtype=dtype).uniform_(-1, 1),
                # Shard(1) pieces as one span of rows (with a flat range: a
                # partial row, a span of rows, a partial row).
                "c": torch.empty(2117, 4096, dtype=dtype).normal_(0, 0.02)}

    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        eager, _, lazy = build_both(build, dtype, device="cuda")
        lazyinit.reset_shard_stats()
        for name, p in [("n", Shard(0, 3, 8)), ("n", Shard(1, 5, 7)), ("u", Shard(0, 1, 3)),
                        ("u", FlatRange(12345, 2**21 + 7)), ("r", [Shard(0, 1, 2), Shard(1, 2, 4)]),
                        ("r", Shard(1, 0, 8)), ("w", Shard(1, 0, 2)), ("w", Shard(1, 1, 2)),
                        ("w", [Shard(1, 1, 2), FlatRange(5, 3 * 2**20 - 7)]),
                        ("c", Shard(1, 2, 3)), ("c", [Shard(1, 7, 8), FlatRange(300, 100000)])]:
            got = lazyinit.materialize_shard(lazy[name], p, "cuda")
            assert torch.equal(got, expected_piece(eager[name], p)), (dtype, name, p)
        assert lazyinit.shard_stats()["fallbacks"] == 0


def test_peak_cuda_memory_of_a_shard_is_bounded() -> None:
    with lazyinit.LazyInitContext():
        w = torch.empty(8192, 8192).normal_(0, 0.02)
        v = torch.empty(8192, 8192)
        torch.nn.init.kaiming_uniform_(v, a=5 ** 0.5)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    lazyinit.reset_shard_stats()
    shards = [lazyinit.materialize_shard(w, Shard(0, 7, 8), "cuda"),
              lazyinit.materialize_shard(v, Shard(1, 7, 8), "cuda")]
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    shard_bytes = sum(s.numel() * s.element_size() for s in shards)
    assert shard_bytes == 2 * 8192 * 1024 * 4
    assert lazyinit.shard_stats()["fallbacks"] == 0
    assert peak <= shard_bytes + 64 * 2**20, peak / 2**20


def _many_tensors(dtype: torch.dtype) -> torch.nn.Module:
    """151 buffers of assorted shapes whose last write is kaiming_uniform_,
    normal_ or (not queueable) an element-wise edit after uniform_."""
    m = torch.nn.Module()
    for i in range(150):
        t = torch.empty([1, 3, 7, 64, 513, 4097][i % 6], [1, 11, 128, 1111][i % 4], dtype=dtype)
        if i % 3 == 0:
            torch.nn.init.kaiming_uniform_(t, a=5 ** 0.5)
        elif i % 3 == 1:
            t.normal_(0.01 * i, 0.02)
        else:
            t.uniform_(-i, 2 * i).mul_(0.5)
        m.register_buffer(f"t{i}", t)
    m.register_buffer("big", torch.empty(4097, 1111, dtype=dtype).normal_())
    return m


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_module_shards_on_cuda_launch_batched_and_equal_eager(dtype: torch.dtype) -> None:
    """materialize_module_shards queues the fills and launches them batched
    (up to 128 a kernel, flushed every 48): every rank's every piece still
    equals the eager slice, whatever its shape, placement and dtype."""
    eager, _, lazy = build_both(_many_tensors, dtype, device="cuda")
    want_all = dict(eager.named_buffers())
    state = torch.cuda.get_rng_state()
    for world in (3, 8):
        for rank in range(world):
            def place(name: str, t: torch.Tensor):
                i = (int(name[1:]) // 3 if name != "big" else 0) % 3
                if i == 0:
                    return Shard(0, rank, world)
                if i == 1:
                    return Shard(1, rank, world)  # one span a row
                return FlatRange(*lazyinit.chunk_bounds(t.numel(), rank, world))
            lazyinit.reset_shard_stats()
            got = lazyinit.materialize_module_shards(lazy, place, "cuda")
            assert lazyinit.shard_stats()["fallbacks"] == 0
            # On a GPU the pieces come in parts: none lost, none reordered.
            assert list(got) == list(want_all), (world, rank)
            for name, piece in got.items():
                want = expected_piece(want_all[name], place(name, want_all[name]))
                assert torch.equal(piece, want), (world, rank, name)
    assert torch.equal(torch.cuda.get_rng_state(), state)


def test_allocation_failure_is_raised() -> None:
    """An allocation that fails (1 TiB) is raised as torch's out-of-memory
    error, by materialize_module_shards and by materialize, and the next
    call works."""
    with lazyinit.LazyInitContext():
        m = torch.nn.Module()
        for i in range(6):
            m.register_buffer(f"small{i}", torch.empty(1000).normal_())
        m.register_buffer("huge", torch.empty(2 ** 38))  # 1 TiB of float32
    with pytest.raises(torch.cuda.OutOfMemoryError):
        lazyinit.materialize_module_shards(m, lambda name, t: lazyinit.Replicate(), "cuda")
    with pytest.raises(torch.cuda.OutOfMemoryError):
        lazyinit.materialize(m, "cuda")
    torch.manual_seed(0)
    want = torch.empty(1000, device="cuda").normal_()
    torch.manual_seed(0)
    with lazyinit.LazyInitContext():
        ok = torch.nn.Module()
        ok.register_buffer("t", torch.empty(1000).normal_())
    got = lazyinit.materialize_module_shards(ok, lambda name, t: Shard(0, 1, 2), "cuda")
    assert torch.equal(got["t"], want[500:])


def test_placement_error_is_raised_on_a_gpu() -> None:
    """The placement function of a later part runs after the first part's
    fills were launched: its exception still reaches the caller."""
    with lazyinit.LazyInitContext():
        m = torch.nn.Module()
        for i in range(40):
            m.register_buffer(f"t{i}", torch.empty(100 + i).normal_())

    def place(name: str, t: torch.Tensor):
        if name == "t30":
            raise ValueError("no placement for t30")
        return Shard(0, 0, 2)
    with pytest.raises(ValueError, match="no placement for t30"):
        lazyinit.materialize_module_shards(m, place, "cuda")
    got = lazyinit.materialize_module_shards(m, lambda name, t: Shard(0, 0, 2), "cuda")
    assert list(got) == [f"t{i}" for i in range(40)]


def test_by_kind_on_a_gpu_equals_eager() -> None:
    """A ByKind policy (FSDP's layout: parameters Shard(0), buffers and
    0-dim tensors replicated) over the growing parts of a GPU: every rank's
    pieces equal the eager CUDA slices."""
    def build() -> torch.nn.Module:
        m = torch.nn.Module()
        for i in range(30):
            m.add_module(f"lin{i}", torch.nn.Linear(33 + i, 17 + 2 * i))
        m.gain = torch.nn.Parameter(torch.randn(()))
        m.register_buffer("table", torch.randn(7, 5))
        return m
    torch.manual_seed(11)
    with torch.device("cuda"):
        eager = build()
    torch.manual_seed(11)
    with lazyinit.LazyInitContext():
        lazy = build()
    want = dict(list(eager.named_parameters()) + list(eager.named_buffers()))
    for rank in range(4):
        got = lazyinit.materialize_module_shards(lazy, lazyinit.ByKind(Shard(0, rank, 4)), "cuda")
        assert list(got) == list(want)
        for name, piece in got.items():
            t = want[name]
            placement = (Shard(0, rank, 4) if isinstance(t, torch.nn.Parameter) and t.dim()
                         else lazyinit.Replicate())
            assert torch.equal(piece, expected_piece(t, placement)), (rank, name)
