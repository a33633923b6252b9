"""Mismatches found by differential fuzzing (test_fuzz.py,
benchmarks/fuzz_run.py; tests/python/fuzz/), each shrunk to a minimal
program, numbered as in docs/fuzzing.md. Every test asserts
what eager construction does; a failing test here is a lazyinit bug that is
not fixed yet (see docs/fuzzing.md, "Findings").

Programs that crash the interpreter run in a child process, so the crash
fails that test only.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn as nn

import lazyinit
from conftest import assert_rng_equal, assert_tensor_equal

_PY = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))


def _run_child(script: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([_PY, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env,
                          capture_output=True, text=True, timeout=300)


def _assert_child_ok(script: str) -> None:
    r = _run_child(script)
    assert r.returncode == 0, (
        f"child exited with {r.returncode}"
        + (f" (signal {-r.returncode}: the interpreter crashed)" if r.returncode < 0 else "")
        + f"\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}")


def _assert_results_equal_eager(build) -> None:
    """``build(**kw)`` returns tensors; built eagerly and with
    ``device="lazy"`` (then materialized on the CPU), each pair is equal."""
    eager = build()
    lazy = build(device="lazy")
    for i, (e, lz) in enumerate(zip(eager, lazy)):
        lazyinit.materialize(lz, "cpu")
        assert_tensor_equal(f"result {i}", e, lz)


def _assert_results_and_generator_equal_eager(build) -> None:
    """As _assert_results_equal_eager, and the CPU generator afterwards is
    where eager's build left it."""
    eager = build()
    eager_rng = torch.get_rng_state()
    lazy = build(device="lazy")
    for i, (e, lz) in enumerate(zip(eager, lazy)):
        lazyinit.materialize(lz, "cpu")
        assert_tensor_equal(f"result {i}", e, lz)
    assert torch.equal(torch.get_rng_state(), eager_rng)


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.is_floating_point:
        a, b = a.view(ints[a.element_size()]), b.view(ints[b.element_size()])
    return torch.equal(a, b)


# --------------------------------------------------------------------------
# 1. RNG chains: the generator state "recording left it in" (a marker draw)
#    is also reached by real draws, so it is taken for "untouched".
# --------------------------------------------------------------------------

_CHILD_PRELUDE = """
import sys, torch, torch.nn as nn, lazyinit
def check(name, lazy, eager):
    if lazy.dtype != eager.dtype or not torch.equal(lazy, eager):
        print(name, "differs:", lazy, eager); sys.exit(3)
"""


def test_random_factory_replayed_after_as_many_draws_as_chain_nodes_does_not_crash():
    """fuzz seed 186 (shrunk). The chain holds two random nodes, so
    recording leaves the generator two draws past the start. Replaying
    ``torch.normal`` (a random factory) with the generator at states[1] --
    also two draws past the start, because ``rand(2)`` draws two numbers --
    enters the BackendSelect catch-up hook, which takes that state for "not
    moved since recording" and replays the chain again: unbounded recursion,
    SIGSEGV (stack overflow) in rng_catch_up / ensure_state."""
    _assert_child_ok(_CHILD_PRELUDE + """
torch.manual_seed(2)
ea = torch.rand(2); eb = torch.normal(10.0, 8.0, (2,)); es = torch.get_rng_state()
torch.manual_seed(2)
a = torch.rand(2, device="lazy")
b = torch.normal(10.0, 8.0, (2,), device="lazy")
lazyinit.materialize(b, "cpu")
lazyinit.materialize(a, "cpu")
check("b", b, eb); check("a", a, ea); check("rng", torch.get_rng_state(), es)
""")


def test_uniform_on_a_two_element_view_then_randn_does_not_crash():
    """fuzz seed 30 (shrunk): the same recursion reached through an in-place
    op -- ``uniform_`` on a 2-element view draws two numbers, the chain has
    two nodes -- then the ``randn`` factory node is replayed. Crashes in
    whichever order the tensors are materialized (random_(0, 16) on a view
    does the same)."""
    _assert_child_ok(_CHILD_PRELUDE + """
torch.manual_seed(2)
ea = torch.zeros(20); ea[:2].uniform_(); eb = torch.randn(3); es = torch.get_rng_state()
torch.manual_seed(2)
a = torch.zeros(20, device="lazy")
a[:2].uniform_()
b = torch.randn(3, device="lazy")
lazyinit.materialize(a, "cpu")
lazyinit.materialize(b, "cpu")
check("a", a, ea); check("b", b, eb); check("rng", torch.get_rng_state(), es)
""")


def test_one_real_draw_after_reseed_does_not_continue_the_old_chain():
    """fuzz seed 3625 (shrunk; found through fork_rng + a real 0-dim rand).
    After a reseed to the chain's start, one real draw brings the generator
    to the chain's marker state, so the next lazy random op is appended to
    the old chain and replayed after ``a``'s draws instead of from where the
    real draw left the generator."""
    torch.manual_seed(0)
    ea = torch.randn(4)
    torch.manual_seed(0)
    ex = torch.rand(1)
    eb = torch.randn(4)
    es = torch.get_rng_state()

    torch.manual_seed(0)
    a = torch.randn(4, device="lazy")
    torch.manual_seed(0)
    x = torch.rand(1)                 # one real draw == the marker draw
    b = torch.randn(4, device="lazy")
    lazyinit.materialize(a, "cpu")
    lazyinit.materialize(b, "cpu")
    assert_tensor_equal("a", ea, a)
    assert_tensor_equal("x", ex, x)
    assert_tensor_equal("b", eb, b)
    assert_rng_equal(es, torch.get_rng_state())


def test_same_through_fork_rng():
    """The shape the fuzzer found it in: fork_rng around a lazy random op
    restores the state, a real 0-dim rand draws once, the next lazy random op
    joins the chain recorded inside fork_rng."""
    torch.manual_seed(1)
    e1 = torch.randn(6)
    e2 = torch.zeros(3)
    with torch.random.fork_rng():
        e2.normal_()
    ex = torch.rand(())
    e1.uniform_()
    es = torch.get_rng_state()

    torch.manual_seed(1)
    l1 = torch.randn(6, device="lazy")
    l2 = torch.zeros(3, device="lazy")
    with torch.random.fork_rng():
        l2.normal_()
    lx = torch.rand(())
    l1.uniform_()
    lazyinit.materialize(l1, "cpu")
    lazyinit.materialize(l2, "cpu")
    assert_tensor_equal("x", ex, lx)
    assert_tensor_equal("t2", e2, l2)
    assert_tensor_equal("t1", e1, l1)
    assert_rng_equal(es, torch.get_rng_state())


def test_materialized_chain_does_not_move_the_generator_of_later_cpu_code():
    """fuzz seeds 1958 -> 1959 (one program left a chain that the next one
    ran into; shrunk). Lazy random ops, a reseed, materialization: the chain
    is never "applied" (the generator was reseeded) and stays registered.
    Later, plain CPU code reseeds and draws exactly as many numbers as the
    chain has nodes: the generator is then in the chain's marker state, and
    torch.get_rng_state() (or any real random factory) "catches up" to the
    old chain's end -- the generator jumps although nothing is lazy any more."""
    torch.manual_seed(0)
    torch.rand(2)
    expected_state = torch.get_rng_state()
    expected_next = torch.rand(3)

    torch.manual_seed(0)
    a = torch.randn(4, device="lazy")
    b = torch.randn(4, device="lazy")
    torch.manual_seed(0)          # e.g. to build an eager reference next
    lazyinit.materialize(a, "cpu")
    lazyinit.materialize(b, "cpu")
    # nothing is lazy any more; plain CPU code from here on
    torch.manual_seed(0)
    torch.rand(2)                 # two draws: as many as the chain has nodes
    assert_rng_equal(expected_state, torch.get_rng_state())
    assert torch.equal(torch.rand(3), expected_next)


def test_explicit_generator_advances_when_its_lazy_tensor_dies():
    """fuzz seed 9441 (shrunk). A lazy random op drawing from an explicit
    torch.Generator, whose tensor is deleted unmaterialized: eager has
    drawn, so ``g.get_state()`` has moved; lazily it stays at the recording
    marker (nothing catches an explicit generator up: the default generator
    has the torch.get_rng_state() wrapper). Materializing any other lazy
    tensor afterwards settles it."""
    g = torch.Generator().manual_seed(1)
    torch.rand((), generator=g)
    expected = g.get_state()
    g = torch.Generator().manual_seed(1)
    v = torch.rand((), generator=g, device="lazy")
    del v
    assert torch.equal(g.get_state(), expected)


def test_real_factory_with_explicit_generator_draws_after_pending_lazy_ones():
    """Found next to seed 9441 (the generator now makes real random
    factories with an explicit generator too). Real random factories catch
    the generator up first (registration/rng_hooks.cpp), but not when a
    ``generator=`` is passed: the real draw comes before the pending lazy
    one, and both get other numbers than eager."""
    g = torch.Generator().manual_seed(1)
    ev = torch.rand(3, generator=g)
    ex = torch.rand(2, generator=g)
    es = g.get_state()
    g = torch.Generator().manual_seed(1)
    v = torch.rand(3, generator=g, device="lazy")
    x = torch.rand(2, generator=g)
    lazyinit.materialize(v, "cpu")
    assert_tensor_equal("real draw", ex, x)
    assert_tensor_equal("lazy draw", ev, v)
    assert torch.equal(g.get_state(), es)


# --------------------------------------------------------------------------
# 2. Tensor.view(dtype)
# --------------------------------------------------------------------------

def test_dtype_view_has_its_own_dtype():
    """fuzz seed 28 (shrunk): ``t.view(torch.int32)`` of a lazy float32
    tensor reports float32, writes through it store floats instead of
    integer bit patterns, and item() returns a float."""
    e = torch.zeros(4)
    ev = e.view(torch.int32)
    ev.fill_(1)
    l = torch.zeros(4, device="lazy")
    lv = l.view(torch.int32)
    assert lv.dtype == torch.int32
    lv.fill_(1)
    r = lv[0].item()
    assert type(r) is int and r == 1
    lazyinit.materialize(lv, "cpu")
    assert_tensor_equal("view", ev, lv)
    assert _bits_equal(l, e), (l, e)


def test_dtype_view_after_materializing_its_base():
    """fuzz seed 24 (shrunk): the view becomes an int64 tensor when its
    float64-viewed base is materialized."""
    e = torch.full((2,), 7, dtype=torch.int64)
    ev = e.view(torch.float64)
    l = torch.full((2,), 7, dtype=torch.int64, device="lazy")
    lv = l.view(torch.float64)
    lazyinit.materialize(l, "cpu")
    assert_tensor_equal("base", e, l)
    assert lv.dtype == torch.float64
    assert _bits_equal(lv, ev)


# --------------------------------------------------------------------------
# 3. copy.deepcopy of lazy tensors that share a storage
# --------------------------------------------------------------------------

def test_deepcopy_keeps_views_on_one_storage():
    """fuzz seed 7 (shrunk). Eager deepcopy copies storages (memoized), so a
    tensor and its view stay a tensor and its view in the copy. For the lazy
    device torch's Tensor.__deepcopy__ clones each tensor separately: the
    copied view is a separate contiguous tensor (offset 0), and writes to one
    copy do not show in the other."""
    torch.manual_seed(0)
    w = torch.randn(4, 4)
    d = copy.deepcopy({"w": w, "row": w[1]})
    d["w"].zero_()
    torch.manual_seed(0)
    lw = torch.randn(4, 4, device="lazy")
    ld = copy.deepcopy({"w": lw, "row": lw[1]})
    ld["w"].zero_()
    lazyinit.materialize(ld["w"], "cpu")
    lazyinit.materialize(ld["row"], "cpu")
    assert_tensor_equal("w", d["w"], ld["w"])
    assert ld["row"].storage().data_ptr() == ld["w"].storage().data_ptr(), "row is not a view of w"
    assert_tensor_equal("row", d["row"], ld["row"])


def test_deepcopy_of_module_keeps_views_on_one_storage():
    """fuzz seed 82 (shrunk): the same through nn.Module deepcopy (a buffer
    that is a view of another tensor of the module)."""
    def build(**kw):
        m = nn.Module()
        m.register_buffer("table", torch.arange(8, dtype=torch.float32, **kw).view(2, 4))
        m.register_buffer("first", m.table[0, 1:])
        return m
    e = copy.deepcopy(build())
    l = copy.deepcopy(build(device="lazy"))
    lazyinit.materialize(l, "cpu")
    assert_tensor_equal("table", e.table, l.table)
    assert_tensor_equal("first", e.first, l.first)
    assert l.first.storage().data_ptr() == l.table.storage().data_ptr()


def test_deepcopy_of_expanded_tensor_keeps_strides():
    """fuzz seed 239 (shrunk): deepcopy of an expanded (stride-0) tensor."""
    e = copy.deepcopy(torch.linspace(1.0, 2.0, 2).expand(2, -1))
    l = copy.deepcopy(torch.linspace(1.0, 2.0, 2, device="lazy").expand(2, -1))
    lazyinit.materialize(l, "cpu")
    assert_tensor_equal("copy", e, l)


# --------------------------------------------------------------------------
# 4. type promotion and the default dtype
# --------------------------------------------------------------------------

def test_promotion_uses_the_default_dtype_of_recording_time():
    """fuzz seed 129 (shrunk): ``int_tensor + 0.5`` is float32 when
    recorded (and lazily reported so), but replay promotes with the default
    dtype current at materialization: it becomes float64."""
    saved = torch.get_default_dtype()
    try:
        e = torch.arange(4) + 0.1
        l = torch.arange(4, device="lazy") + 0.1
        assert l.dtype == torch.float32
        torch.set_default_dtype(torch.float64)
        lazyinit.materialize(l, "cpu")
    finally:
        torch.set_default_dtype(saved)
    assert_tensor_equal("sum", e, l)


@pytest.mark.parametrize("expr, dtype", [
    ("torch.full((2,), 1{dev})", torch.int64),
    ("torch.full((2,), True{dev})", torch.bool),
    ("torch.full((), 1{dev})", torch.int64),
])
def test_full_infers_its_dtype_from_the_fill_value(expr, dtype):
    """fuzz seed 5004 (shrunk): ``torch.full(size, 1)`` is int64 eagerly
    (bool for ``True``); on the lazy device it is float32, before and after
    materialization."""
    e = eval(expr.format(dev=""))
    assert e.dtype == dtype
    l = eval(expr.format(dev=', device="lazy"'))
    assert l.dtype == dtype
    lazyinit.materialize(l, "cpu")
    assert_tensor_equal(expr, e, l)


@pytest.mark.parametrize("args", ["8.0", "0, 8.0", "0.0, 8"])
def test_arange_with_float_bounds_is_floating(args):
    """Found after the fuzzer was taught to spell whole numbers as floats:
    ``torch.arange(8.0)`` is float32 eagerly, int64 on the lazy device
    (with an integral step; ``arange(0, 8, 1.0)`` is right)."""
    e = eval(f"torch.arange({args})")
    l = eval(f'torch.arange({args}, device="lazy")')
    assert l.dtype == e.dtype
    lazyinit.materialize(l, "cpu")
    assert_tensor_equal(f"arange({args})", e, l)


def test_arange_with_float_bounds_in_context():
    e = torch.arange(8.0)
    with lazyinit.LazyInitContext():
        l = torch.arange(8.0)
    lazyinit.materialize(l)
    assert_tensor_equal("arange(8.0)", e, l)


# --------------------------------------------------------------------------
# 5. strides: the Meta kernel's layout taken for the CPU kernel's
# --------------------------------------------------------------------------

def test_where_on_zero_element_tensors_has_eager_strides():
    """fuzz seed 2208 (shrunk): the Meta kernel's strides for torch.where
    of zero-element, permuted inputs differ from the CPU kernel's, and the
    materialized tensor keeps the Meta strides. (Only zero-element results;
    harmless for values, visible in .stride().)"""
    e = torch.zeros((0, 2, 3), dtype=torch.int64).permute(2, 1, 0)
    l = torch.zeros((0, 2, 3), dtype=torch.int64, device="lazy").permute(2, 1, 0)
    er = torch.where(e > 0, e, e)
    lr = torch.where(l > 0, l, l)
    lazyinit.materialize(lr, "cpu")
    assert_tensor_equal("where", er, lr)


def test_where_of_zero_element_and_nonempty_scalar_has_eager_strides():
    """fuzz seeds 45441, 70417 (shrunk): a zero-element condition/input
    with a 0-dim (non-empty) other operand, of another dtype."""
    def build(**kw):
        x = torch.zeros((4,), **kw).unsqueeze(-1).narrow(0, 4, 0)
        other = torch.empty((), dtype=torch.float16, **kw).uniform_(-0.5, 3.0)
        return other, torch.where(x > 0, x, other)
    torch.manual_seed(1)
    _, e = build()
    torch.manual_seed(1)
    lo, l = build(device="lazy")
    lazyinit.materialize(lo, "cpu")
    lazyinit.materialize(l, "cpu")
    assert_tensor_equal("where", e, l)


def test_where_with_size_one_dims_has_eager_strides():
    """fuzz seed 61050 (shrunk): the same with a size-1 dimension (both
    layouts are contiguous; the size-1 dimension's stride differs)."""
    def build(**kw):
        v1 = torch.zeros((6, 1), dtype=torch.float64, **kw).bernoulli(0.3)
        return torch.where(v1.view(-1) > 0, v1.view(-1), v1.t())
    torch.manual_seed(1)
    e = build()
    torch.manual_seed(1)
    l = build(device="lazy")
    lazyinit.materialize(l, "cpu")
    assert_tensor_equal("where", e, l)


@pytest.mark.parametrize("op", ["abs", "logical_not"])
@pytest.mark.parametrize("layout", ["t", "permute", "column_major"])
def test_unary_op_on_non_contiguous_input_keeps_its_layout(op, layout):
    """Survey after fuzz seed 60025: ``abs()`` and ``logical_not()`` of a
    dense non-contiguous tensor keep the input's layout eagerly (preserve
    format); the lazy result is contiguous -- its Meta kernel's strides are
    taken for the real ones. (Other unary/binary ops tried keep the layout.)"""
    make = {"t": lambda t: t.t(), "permute": lambda t: t.view(2, 3, 4).permute(2, 0, 1),
            "column_major": lambda t: t.t().contiguous().t()}[layout]
    e = getattr(make(torch.arange(24.0).reshape(4, 6) - 5), op)()
    l = getattr(make(torch.arange(24.0, device="lazy").reshape(4, 6) - 5), op)()
    assert l.stride() == e.stride()
    lazyinit.materialize(l, "cpu")
    assert_tensor_equal(op, e, l)


def test_random_op_reading_an_abs_result_draws_in_eager_order():
    """fuzz seed 60025 (shrunk): why the layout matters for values.
    ``nonzero()`` returns a column-major tensor; its ``abs()`` is column-major
    eagerly and row-major lazily; multinomial without replacement fills an
    ``empty_like(probs)`` with exponential draws in memory order, so the
    lazily replayed samples differ."""
    def build(**kw):
        v0 = torch.rand((2, 5), **kw)
        v1 = torch.multinomial(v0.abs() + 0.1, 2, replacement=False)
        v8 = v1.nonzero()
        return v1, torch.multinomial(v8.abs() + 0.1, 1, replacement=False)
    torch.manual_seed(0)
    e1, e2 = build()
    es = torch.get_rng_state()
    torch.manual_seed(0)
    l1, l2 = build(device="lazy")
    lazyinit.materialize(l1, "cpu")
    lazyinit.materialize(l2, "cpu")
    assert_tensor_equal("first", e1, l1)
    assert_tensor_equal("second", e2, l2)
    assert_rng_equal(es, torch.get_rng_state())


# --------------------------------------------------------------------------
# 6. dropout on torch 1.13: the "lazy" device takes the fused path
# --------------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_of_non_contiguous_tensor_draws_like_eager(p):
    """fuzz seed 72705 (shrunk). On torch 1.13, ``at::dropout`` takes
    ``native_dropout`` when ``input.is_lazy()`` (is_fused_kernel_acceptable
    is meant for XLA/LTC), and ``_dropout`` on the CPU. native_dropout
    allocates its mask contiguous, _dropout with the input's layout, so for a
    transposed input the Bernoulli draws land on other elements: the lazy
    result equals eager ``torch.native_dropout``, not eager ``dropout``.
    (Contiguous inputs agree.)"""
    def build(**kw):
        x = (torch.rand(5, 7, dtype=torch.float64, **kw) + 0.5).t()
        return x, nn.functional.dropout(x, p, training=True)
    torch.manual_seed(0)
    _, e = build()
    es = torch.get_rng_state()
    torch.manual_seed(0)
    lx, l = build(device="lazy")
    lazyinit.materialize(lx, "cpu")
    lazyinit.materialize(l, "cpu")
    assert_tensor_equal("dropout", e, l)
    assert_rng_equal(es, torch.get_rng_state())


# --------------------------------------------------------------------------
# 7. autograd views
# --------------------------------------------------------------------------

# For DeviceType::Lazy (the lazy device on every torch),
# Device::supports_as_strided() is false, so autograd gives every lazy view
# a view function and, after an in-place write, would regenerate the view's
# grad_fn by calling it on the base; when the base does not require grad,
# torch asserts (finding 10). lazyinit drops that function from every lazy
# view it makes (note_fresh_view, lazy_tensor_impl.h): autograd then takes
# the AsStridedBackward0 branch, as for CPU tensors.


def test_view_of_a_requires_grad_view_after_in_place_write():
    """fuzz seed 9728 (shrunk). ``requires_grad_()`` on a view (of a
    tensor that does not require grad), a view of that view, an in-place
    write to the first view under no_grad, then an op on the second view:
    autograd regenerates the second view's grad_fn and, for lazy tensors,
    fails "new_fn INTERNAL ASSERT FAILED at torch/csrc/autograd/variable.cpp".
    Eager works. (Parameters, which are their own base, are not affected.)"""
    def build(**kw):
        v0 = torch.zeros(4, **kw)
        v1 = v0[1:]
        v1.requires_grad_()
        v2 = v1[1:]
        with torch.no_grad():
            v1.fill_(2)
        return v0, v2 * 1
    e0, e = build()
    l0, l = build(device="lazy")
    assert type(l.grad_fn) is type(e.grad_fn)
    lazyinit.materialize(l0, "cpu")
    lazyinit.materialize(l, "cpu")
    assert_tensor_equal("v2 * 1", e.detach(), l.detach())


def test_view_of_parameter_after_random_factory_out_into_it():
    """test_fuzz.py (hypothesis, shrunk; then made non-empty): the same
    assertion with a Parameter written by ``torch.rand(size, out=p)`` under
    no_grad, and a view of the Parameter used afterwards. (``p.normal_()``
    or ``p.fill_()`` instead of the out= factory work.)"""
    def build(**kw):
        p = nn.Parameter(torch.zeros(2, 3, **kw))
        w = p.view(6)
        with torch.no_grad():
            torch.rand((2, 3), out=p)
        return p, w * 2
    torch.manual_seed(0)
    ep, e = build()
    torch.manual_seed(0)
    lp, l = build(device="lazy")
    assert type(l.grad_fn) is type(e.grad_fn)
    lazyinit.materialize(lp, "cpu")
    lazyinit.materialize(l, "cpu")
    assert_tensor_equal("p", ep, lp)
    assert_tensor_equal("w * 2", e, l)


# --------------------------------------------------------------------------
# 8. real tensors captured by copy_ and then rebound with .data
# --------------------------------------------------------------------------

def test_captured_real_tensor_rebound_with_data_is_detected():
    """fuzz seed 2021 (shrunk; the generator no longer writes real tensors,
    see docs/fuzzing.md). The user guide promises an error when a real
    tensor captured by copy_ is modified before replay; ``real.data = other``
    is not detected (the version counter does not move), so replay silently
    copies the new values. Either eager's values or the documented error is
    acceptable; silently different values are not."""
    src = torch.ones(3)
    a = torch.zeros(3, device="lazy")
    a.copy_(src)
    src.data = torch.full((3,), 5.0)
    try:
        lazyinit.materialize(a, "cpu")
    except RuntimeError as e:
        assert "modified in place since" in str(e)
        return
    assert_tensor_equal("a", torch.ones(3), a)


# --------------------------------------------------------------------------
# 13. an explicit generator settled inside a materialization was reset
# --------------------------------------------------------------------------

def test_explicit_generator_settled_while_materializing_stays_settled():
    """fuzz seed 112407 (shrunk). Materializing a deep copy replays the
    original's random node (drawn from ``g``), and the original storage dies
    during that materialization: settling ``g``'s chain there was undone when
    the materialization restored the generators it had saved."""
    def build(**kw):
        g = torch.Generator().manual_seed(3)
        v5 = torch.rand((3,), generator=g, **kw)
        v8 = copy.deepcopy({"k": v5})["k"]
        with torch.no_grad():
            v8.geometric_(0.9)
        v5.data = torch.tensor(0, **kw)
        return g, v8

    torch.manual_seed(3)
    eg, e = build()
    expected_rng = torch.get_rng_state()
    torch.manual_seed(3)
    lg, l = build(device="lazy")
    lazyinit.materialize(l, "cpu")
    assert_tensor_equal("v8", e, l)
    assert torch.equal(lg.get_state(), eg.get_state()), "explicit generator state differs"
    assert_rng_equal(expected_rng, torch.get_rng_state())


# --------------------------------------------------------------------------
# 14. zero-element results whose CPU strides are 0 after the empty dimension
# --------------------------------------------------------------------------

def test_where_of_scalars_and_empty_tensor_has_eager_strides():
    """fuzz seeds 115276, 118540, 108661 (shrunk). The CPU kernel lays out an
    empty result with the empty dimension fastest, so the strides of the
    dimensions after it are 0: (1, 0, 1) gets strides (0, 1, 0)."""
    def build(**kw):
        v0 = torch.ones((), **kw)
        v2 = torch.zeros((1, 0, 1), dtype=torch.int64, **kw)
        h = torch.empty((), dtype=torch.float16, **kw).fill_(3.0)
        v3 = h.reshape(1, 1).narrow(0, 1, 0)
        return torch.where(v0 > 0, v0, v2), torch.where(h > 0, h, v3)

    eager = build()
    lazy = build(device="lazy")
    for i, (e, l) in enumerate(zip(eager, lazy)):
        assert l.stride() == e.stride(), (i, l.stride(), e.stride())
        lazyinit.materialize(l, "cpu")
        assert_tensor_equal(f"where {i}", e, l)


# --------------------------------------------------------------------------
# 15. out= factories inside LazyInitContext
# --------------------------------------------------------------------------

def test_random_factory_out_into_real_tensor_inside_context():
    """fuzz seed 110365 (shrunk). Inside the context, ``torch.normal(...,
    out=t)`` with ``t`` real (materialized earlier) got ``device="lazy"``
    added and failed "device type lazy does not match device type of out
    parameter (cpu)"; the result is ``t``, wherever it lives."""
    def build(ctx):
        with ctx:
            v0 = torch.empty((1, 3)).normal_(0.001, 1.0)
            v4 = v0.new_zeros((2, 0, 3))
            if isinstance(ctx, lazyinit.LazyInitContext):
                lazyinit.materialize(v4, "cpu")
            with torch.no_grad():
                torch.normal(0.5, 2.0, (1, 3), out=v4)
            return v0, v4

    import contextlib
    torch.manual_seed(0)
    e0, e4 = build(contextlib.nullcontext())
    rng = torch.get_rng_state()
    torch.manual_seed(0)
    l0, l4 = build(lazyinit.LazyInitContext())
    lazyinit.materialize(l0, "cpu")
    assert_tensor_equal("out", e4, l4)
    assert_tensor_equal("v0", e0, l0)
    assert_rng_equal(rng, torch.get_rng_state())


# --------------------------------------------------------------------------
# 16. `.data =` between a lazy and a real tensor
# --------------------------------------------------------------------------

def test_data_assignment_between_lazy_and_real_tensors():
    """fuzz seed 100889 (shrunk). ``lazy.data = real`` (and the reverse)
    failed "variable.set_data(tensor) ... incompatible tensor type": torch
    only swaps data between compatible dispatch keys. Eagerly both are real;
    the lazy side is now materialized first."""
    def build(**kw):
        a = torch.rand(3, **kw)
        b = torch.full((2,), 5.0)
        view = a[1:]
        a.data = b
        c = torch.zeros(2)
        d = torch.randn(4, **kw)
        c.data = d
        p = nn.Parameter(torch.zeros(2, **kw))
        p.data = torch.ones(2, **kw)
        return a, view, c, d, p

    torch.manual_seed(5)
    eager = build()
    rng = torch.get_rng_state()
    torch.manual_seed(5)
    lazy = build(device="lazy")
    for t in lazy:
        lazyinit.materialize(t, "cpu")
    for name, e, l in zip(["a", "view", "c", "d", "p"], eager, lazy):
        assert_tensor_equal(name, e, l)
    assert isinstance(lazy[4], nn.Parameter)
    assert lazy[2].data_ptr() == lazy[3].data_ptr(), "c must share d's storage"
    assert_rng_equal(rng, torch.get_rng_state())


# --------------------------------------------------------------------------
# 17. results that copy an input's strides, on empty or size-1 dimensions
# --------------------------------------------------------------------------

def test_like_ops_keep_strides_of_empty_and_size_one_dims():
    """fuzz seeds 2843, 3668, 4595, 6172, 6630, 7263, 7341 (seed 2843
    shrunk; found after finding 14's fix, which took the stand-in run's
    strides as they were where the sizes matched): ``zeros_like`` of
    ``eye(2, 2).diagonal(-3)`` (shape (0,), stride (3,)) copies the stride
    3; the stand-in has another stride there, so the input's real strides
    must be used."""
    def build(**kw):
        v1 = torch.eye(2, 2, **kw).diagonal(-3, 0, 1)
        w = torch.zeros((3, 4), **kw)[:1, :2]           # (1, 2), strides (4, 1)
        s = torch.zeros((9, 9), **kw)[:0, :0]           # (0, 0), strides (9, 1)
        return [torch.zeros_like(v1), torch.empty_like(w).fill_(1), w.clone(),
                torch.ones_like(s), s * 2, torch.rand_like(w)]

    torch.manual_seed(0)
    eager = build()
    torch.manual_seed(0)
    lazy = build(device="lazy")
    for i, (e, l) in enumerate(zip(eager, lazy)):
        assert l.stride() == e.stride(), (i, l.stride(), e.stride())
        lazyinit.materialize(l, "cpu")
        assert_tensor_equal(f"result {i}", e, l)


# --------------------------------------------------------------------------
# 18. result dtypes where Meta and CPU kernels disagree (torch 2.14)
# --------------------------------------------------------------------------

def test_normal_of_an_empty_integer_mean_keeps_the_cpu_dtype():
    """fuzz seed 202 on torch 2.14 (shrunk): ``torch.normal(mean, 0.6)`` of
    an empty int64 ``mean`` is int64 on the CPU (nothing is drawn, nothing
    checked) and float32 from the Meta kernel. The stand-in run that
    decides result layouts for empty inputs decides the dtype too."""
    def build(**kw):
        v0 = torch.randint(3, 18, (0, 6, 7), **kw)
        try:
            return [v0, torch.normal(v0, 0.6)]
        except (RuntimeError, NotImplementedError) as e:  # torch 1.13 rejects int64
            return [v0, type(e)]

    torch.manual_seed(3)
    eager = build()
    torch.manual_seed(3)
    lazy = build(device="lazy")
    assert not isinstance(eager[1], torch.Tensor) or isinstance(lazy[1], torch.Tensor), lazy[1]
    if not isinstance(eager[1], torch.Tensor):  # rejected at the same call, as eagerly
        assert lazy[1] is eager[1], lazy[1]
        eager, lazy = eager[:1], lazy[:1]
    for i, (e, l) in enumerate(zip(eager, lazy)):
        assert l.dtype == e.dtype, (i, l.dtype, e.dtype)
        lazyinit.materialize(l, "cpu")
        assert_tensor_equal(f"result {i}", e, l)


# --------------------------------------------------------------------------
# 19. Tensor.to of a multi-output view whose base was written (torch 2.x)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("make_view", [lambda t: t.chunk(1, 2)[0], lambda t: t.unbind(0)[1]],
                         ids=["chunk", "unbind"])
def test_to_cpu_of_a_multi_output_view_after_its_base_was_written(make_view):
    """fuzz seeds 28, 3120, 3727 on torch 2.14 (28 shrunk): a chunk() or
    unbind() output of a tensor that requires grad, the base zeroed under
    no_grad, then ``view.cpu()``. Eager's Tensor.to is a composite that
    returns the view; lazyinit's kernel for it went through torch 2.x's
    autograd fallback, which reads the view's grad_fn and raises "Output 0
    of Split is a view and its base ... has been modified inplace"."""
    def build(**kw):
        v1 = torch.empty((5, 2, 2), dtype=torch.bfloat16, **kw).uniform_(-10.0, 0.5)
        v6 = v1.requires_grad_()
        v7 = make_view(v6)
        with torch.no_grad():
            v1.zero_()
        return v1, v7

    torch.manual_seed(0)
    e1, e7 = build()
    torch.manual_seed(0)
    l1, l7 = build(device="lazy")
    out = l7.cpu()
    assert out is l7
    assert_tensor_equal("base", e1.detach(), l1.detach())
    assert torch.equal(e7.detach(), l7.detach())


# --------------------------------------------------------------------------
# 20. in-place random fills whose argument checks only the CPU kernel makes
# --------------------------------------------------------------------------

def _raised(fn) -> str:
    """The type name of what ``fn()`` raises ("no error" if nothing)."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 -- the point is which type
        return type(e).__name__
    return "no error"


@pytest.mark.parametrize("call", ["exponential_(-1.0)", "bernoulli_(1.5)", "geometric_(0.0)",
                                  "geometric_(1.5)", "log_normal_(0.0, -1.0)"])
def test_invalid_random_fill_arguments_raise_at_the_call(call):
    """fuzz seeds 11, 34, 103, 107 (shrunk): the Meta kernels of these fills
    accept any argument, so the call was recorded and eager's error came at
    materialization. Nothing is recorded or drawn by the failing call."""
    def build(**kw):
        torch.manual_seed(1)
        x = torch.rand(4, **kw)
        r = _raised(lambda: eval(f"x.{call}", globals(), {"x": x}))
        return x, r

    ex, er = build()
    expected_rng = torch.get_rng_state()
    lx, lr = build(device="lazy")
    assert er != "no error" and lr == er
    lazyinit.materialize(lx, "cpu")
    assert_tensor_equal("x", ex, lx)
    assert_rng_equal(expected_rng, torch.get_rng_state())


# --------------------------------------------------------------------------
# 21. lazyinit.discard freed what other pending tensors read
# --------------------------------------------------------------------------

def test_discard_keeps_what_other_pending_tensors_read():
    """fuzz seeds 28, 29, 37, 101 (28 shrunk): a tensor recorded from a
    discarded one could not be materialized ("freed by lazyinit.discard()");
    eagerly ``del`` leaves it alone."""
    def build(**kw):
        torch.manual_seed(0)
        a = torch.randn(3, 3, dtype=torch.float64, **kw)
        spd = a @ a.mT + 3 * torch.eye(3, dtype=torch.float64, **kw)
        chol = torch.linalg.cholesky(spd)
        later = torch.rand(2, **kw)
        if kw:
            lazyinit.discard(spd)
        del spd
        return chol, later

    e = build()
    expected_rng = torch.get_rng_state()
    lz = build(device="lazy")
    for name, et, lt in zip(("chol", "later"), e, lz):
        lazyinit.materialize(lt, "cpu")
        assert_tensor_equal(name, et, lt)
    assert_rng_equal(expected_rng, torch.get_rng_state())


# --------------------------------------------------------------------------
# 22. a generator state built inside LazyInitContext
# --------------------------------------------------------------------------

@pytest.mark.parametrize("setter", ["torch.set_rng_state", "g.set_state"])
def test_generator_state_built_inside_the_context(setter):
    """fuzz seed 18 (shrunk): inside the context a state tensor is lazy, and
    ``set_state`` raised TypeError ("RNG state must be a torch.ByteTensor")
    where eager accepts a valid state and raises RuntimeError for a bad
    size."""
    g = torch.Generator()
    saved = torch.get_rng_state().tolist()

    def run(bad: bool) -> str:
        state = torch.zeros(7, dtype=torch.uint8) if bad else torch.tensor(saved, dtype=torch.uint8)
        return _raised(lambda: eval(setter, globals(), {"g": g})(state))

    eager = [run(True), run(False)]
    eager_state = g.get_state() if setter.startswith("g") else torch.get_rng_state()
    with lazyinit.LazyInitContext():
        lazy = [run(True), run(False)]
    lazy_state = g.get_state() if setter.startswith("g") else torch.get_rng_state()
    assert eager == ["RuntimeError", "no error"] and lazy == eager
    assert torch.equal(eager_state, lazy_state)


# --------------------------------------------------------------------------
# 23. numpy() of a lazy tensor that requires grad
# --------------------------------------------------------------------------

def test_numpy_of_a_lazy_tensor_that_requires_grad_raises_like_eager():
    """fuzz seed 425 (shrunk): lazyinit's ``numpy()`` for lazy tensors
    returned the values; eager refuses a tensor that requires grad."""
    assert _raised(lambda: nn.Parameter(torch.zeros(2)).numpy()) == "RuntimeError"
    p = nn.Parameter(torch.zeros(2, device="lazy"))
    assert _raised(lambda: p.numpy()) == "RuntimeError"
    assert p.detach().numpy().tolist() == [0.0, 0.0]


# --------------------------------------------------------------------------
# 24. copy_ from a tensor that does not broadcast to the target
# --------------------------------------------------------------------------

def test_copy_from_a_non_broadcastable_source_raises_at_the_call():
    """fuzz seeds 16, 162, 186, 344, 351 (351 shrunk): copy_'s Meta kernel
    does not check the shapes; the call was recorded and eager's error came
    at materialization."""
    def build(**kw):
        x = torch.zeros(2, 7, **kw)
        r = _raised(lambda: x.copy_(torch.ones(2, 8, **kw)))
        r2 = _raised(lambda: x.copy_(torch.ones(3, 1, 7, **kw)))
        x.copy_(torch.arange(7.0, **kw))
        return x, [r, r2]

    ex, er = build()
    lx, lr = build(device="lazy")
    assert er == ["RuntimeError", "RuntimeError"] and lr == er
    lazyinit.materialize(lx, "cpu")
    assert_tensor_equal("x", ex, lx)


# --------------------------------------------------------------------------
# 25. Module.to_empty: the old buffer objects
# --------------------------------------------------------------------------

def test_to_empty_leaves_old_buffer_objects_their_values():
    """fuzz seeds 249, 439 (249 shrunk): Module.to_empty replaces buffers
    by new tensors; names bound to the old ones keep their values eagerly.
    lazyinit turned every lazy tensor of the module empty in place, buffers
    too, so the old objects held uninitialized memory."""
    def build(**kw):
        torch.manual_seed(2)
        m = nn.BatchNorm1d(3, **kw)
        old = (m.running_mean, m.running_var, m.num_batches_tracked)
        m.to_empty(device="cpu")
        m.reset_parameters()
        return m, old

    em, eold = build()
    lm, lold = build(device="lazy")
    for name, e, l in zip(("running_mean", "running_var", "num_batches_tracked"), eold, lold):
        lazyinit.materialize(l, "cpu")
        assert_tensor_equal(name, e, l)
    for (name, e), l in zip(em.state_dict().items(), lm.state_dict().values()):
        assert_tensor_equal(name, e, l)


def test_to_empty_leaves_views_of_a_parameter_their_values():
    """fuzz seed 2341 (shrunk): ``param.data = empty`` gives the parameter a
    new storage; a view of the old one keeps its values eagerly. lazyinit
    turned the parameter's lazy storage empty in place, under the view too."""
    def build(**kw):
        torch.manual_seed(3)
        m = nn.Conv1d(6, 6, 1, dtype=torch.bfloat16, **kw)
        ids = [id(p) for p in m.parameters()]
        view = m.bias.transpose(0, 0)
        m.to_empty(device="cpu")
        m.reset_parameters()
        assert [id(p) for p in m.parameters()] == ids
        return m, view

    em, ev = build()
    expected_rng = torch.get_rng_state()
    lm, lv = build(device="lazy")
    lazyinit.materialize(lv, "cpu")
    assert_tensor_equal("view", ev.detach(), lv.detach())
    for (name, e), l in zip(em.state_dict().items(), lm.state_dict().values()):
        assert_tensor_equal(name, e, l)
    assert_rng_equal(expected_rng, torch.get_rng_state())

# --------------------------------------------------------------------------
# 28. catching up the default generator moved an explicit one
# --------------------------------------------------------------------------

def test_catching_up_the_default_generator_leaves_explicit_ones():
    """fuzz seed 2410 (shrunk): inside the context, ``w.cpu()`` catches the
    default generator up; ``randint_like(a)`` (default generator) ran into
    scratch and replayed its input ``a``, drawn from ``g``, onto ``g`` itself:
    ``g.get_state()`` ended elsewhere than eagerly."""
    def build(lazy: bool):
        torch.manual_seed(0)
        ctx = lazyinit.LazyInitContext() if lazy else None
        if ctx is not None:
            ctx.__enter__()
        g = torch.Generator().manual_seed(3)
        m = nn.Linear(2, 4, bias=False)
        a = torch.randn((), generator=g)
        b = torch.randint(0, 15, (), generator=g, device="cpu")
        d = torch.randint_like(a, 5)
        m.weight.cpu()
        if ctx is not None:
            ctx.__exit__(None, None, None)
            for t in (a, d):
                lazyinit.materialize(t, "cpu")
        return g, (m.weight, a, b, d)

    eg, e = build(False)
    expected_rng = torch.get_rng_state()
    lg, l = build(True)
    for name, et, lt in zip(("weight", "a", "b", "d"), e, l):
        assert_tensor_equal(name, et.detach(), lt.detach())
    assert torch.equal(eg.get_state(), lg.get_state()), "explicit generator state differs"
    assert_rng_equal(expected_rng, torch.get_rng_state())

# --------------------------------------------------------------------------
# 29. the draws of rand(size, out=t) counted with the default dtype
# --------------------------------------------------------------------------

@pytest.mark.parametrize("fn", ["rand", "randn"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
@pytest.mark.parametrize("n", [7, 20])
def test_random_factory_out_draws_are_counted_in_the_out_dtype(fn, dtype, n):
    """fuzz seed 3773 (shrunk): ``torch.rand((1, 7), out=v)`` with a float64
    ``v``; materializing a later random tensor first skipped the draws as if
    the values were float32 (one draw each, not two), so ``randperm`` got
    other values."""
    def build(**kw):
        torch.manual_seed(2)
        v = torch.zeros((1, n), dtype=dtype, **kw)
        with torch.no_grad():
            getattr(torch, fn)((1, n), out=v)
        p = torch.randperm(23, **kw)
        return v, p

    ev, ep = build()
    expected_rng = torch.get_rng_state()
    lv, lp = build(device="lazy")
    lazyinit.materialize(lp, "cpu")
    lazyinit.materialize(lv, "cpu")
    assert_tensor_equal("randperm", ep, lp)
    assert_tensor_equal("out", ev, lv)
    assert_rng_equal(expected_rng, torch.get_rng_state())

# --------------------------------------------------------------------------
# 30. a view of a parameter whose data was swapped (finding 10's cause)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("other", ["real", "lazy"])
@pytest.mark.parametrize("chain", [1, 2])
def test_view_of_a_parameter_after_its_data_was_swapped(other, chain):
    """fuzz seed 3337 (finding 30, shrunk): a view of a lazy parameter, the
    parameter written in place, then ``p.data = other``: autograd re-creates
    the view's grad_fn by repeating its view calls on the base, which now
    has other's shape ("shape '[3]' is invalid for input of size 28").
    Eagerly the CPU view is re-created through as_strided; lazy views no
    longer keep the repeat (lazy_tensor_impl.h), so they are too, through a
    chain of views as well."""
    def build(**kw):
        p = nn.Parameter(torch.zeros(3, **kw))
        view = p.reshape(3) if chain == 1 else p.reshape(3).view(3, 1)
        with torch.no_grad():
            p.copy_(torch.ones(3))
        p.data = torch.zeros(7, 4, dtype=torch.float64, **(kw if other == "lazy" else {}))
        return view.reshape(3, 1), p

    _assert_results_equal_eager(build)


# --------------------------------------------------------------------------
# 31. as_strided beyond the storage (torch 2.x)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("args", [((7,), (1,), 2), ((2,), (1,), 4), ((2, 2), (3, 1), 2)])
def test_as_strided_beyond_the_storage_raises_at_the_call(args):
    """fuzz seed 900043 on torch 2.14 (shrunk): a view beyond its storage
    raises when a CPU tensor's storage is set; torch 2.x's Meta kernel for
    as_strided does not check, so the lazy view was made silently."""
    def build(**kw):
        x = torch.zeros(5, **kw)
        return _raised(lambda: x.as_strided(*args))

    eager = build()
    assert eager == "RuntimeError"
    assert build(device="lazy") == eager

# --------------------------------------------------------------------------
# 32. in-place arithmetic whose result type does not cast to self (torch 2.x)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("call", ["x.mul_(1.5)", "x.add_(0.5)", "x.div_(2)",
                                  "x.sub_(torch.ones(3))", "x.mul_(2)", "x.add_(torch.tensor(3))"])
def test_in_place_arithmetic_checks_the_result_type_at_the_call(call):
    """fuzz seeds 901343, 901413 on torch 2.14 (shrunk): ``int64.mul_(1.5)``
    raises "result type Float can't be cast to the desired output type Long"
    eagerly; torch 2.14's Meta kernel of mul_ does not check, so the call
    was recorded and failed at materialization."""
    def build(**kw):
        x = torch.arange(3, **kw)
        r = _raised(lambda: eval(call, globals(), {"x": x}))
        return x, r

    ex, er = build()
    lx, lr = build(device="lazy")
    assert lr == er
    lazyinit.materialize(lx, "cpu")
    assert_tensor_equal("x", ex, lx)

# --------------------------------------------------------------------------
# 33. strides of an empty broadcast result (torch 2.x)
# --------------------------------------------------------------------------

def test_empty_broadcast_result_with_a_transposed_operand_has_eager_strides():
    """fuzz seed 902832 on torch 2.14 (shrunk): ``b + v`` of a transposed
    (1, 1) ``b`` and a (17, 0) view ``v`` with strides (1, 3) has strides
    (1, 17) eagerly, (1, 1) lazily. torch 1.13 agrees with eager."""
    def build(**kw):
        v = torch.arange(17, dtype=torch.float64, **kw).unsqueeze(-1)[:, 1:1:3]
        b = torch.ones(1, 1, dtype=torch.float64, **kw).t()
        return b + v

    e = build()
    lz = build(device="lazy")
    lazyinit.materialize(lz, "cpu")
    assert_tensor_equal("sum", e, lz)

# --------------------------------------------------------------------------
# 35. an out= tensor resized to an empty result of a strided view (torch 2.x)
# --------------------------------------------------------------------------

def test_out_resized_to_an_empty_result_of_a_strided_view_has_eager_strides():
    """fuzz seed 131352292 on torch 2.14 (shrunk by the CI fuzz test): a 0-d
    ``out`` resized by ``torch.mul(v2, 1.0, out=...)`` to the (7, 6, 0)
    shape of a sliced view has strides (0, 1, 6) eagerly, (6, 1, 1) lazily.
    Values and shapes agree (there are none)."""
    def build(**kw):
        torch.manual_seed(0)
        v0 = torch.empty((7, 6, 0), dtype=torch.bfloat16, **kw).uniform_(-3.0, 2.0)
        v5 = torch.ones((), dtype=torch.float16, **kw)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "An output ... was resized"
            torch.mul(v0[:, :, 0:0:3], 1.0, out=v5)
        return v5

    e = build()
    lz = build(device="lazy")
    lazyinit.materialize(lz, "cpu")
    assert_tensor_equal("out", e, lz)


# --------------------------------------------------------------------------
# 36. a view of a tensor that out= then resized to 0-d
# --------------------------------------------------------------------------

def test_view_of_a_tensor_resized_to_zero_dims_by_out_keeps_eager_values():
    """fuzz seed 585585560 on torch 1.13 (shrunk by the CI fuzz test):
    ``v10 = v4.expand(3, -1, -1, -1)``, then ``torch.mul(scalar, 0.5,
    out=v4)`` resizes ``v4`` to 0-d; eagerly ``v10`` still views the old
    elements, and ``poisson(v10.abs())`` runs; lazily it raised "numel:
    integer multiplication overflow"."""
    def build(**kw):
        torch.manual_seed(0)
        v1 = torch.full((4, 7, 4), -1.0, **kw).squeeze()
        v4 = v1.contiguous().detach().requires_grad_()
        v6 = v1.max()
        v10 = v4.expand(3, -1, -1, -1)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.mul(v6, 0.5, out=v4)
        return v4, torch.poisson(v10.abs())

    _assert_results_equal_eager(build)


def _resized_by_out(view_first: bool, **kw):
    """A (4, 7, 4) tensor that requires grad, resized to 0-d by out=; with
    ``view_first``, after an ``expand(3, -1, -1, -1)`` view of it."""
    v4 = torch.zeros(4, 7, 4, **kw).requires_grad_()
    if view_first:
        v4.expand(3, -1, -1, -1)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.mul(torch.ones((), **kw), 0.5, out=v4)
    return v4


@pytest.mark.parametrize("view_first", [False, True])
def test_invalid_view_of_a_tensor_resized_by_out_raises_at_the_call(view_first):
    """fuzz seed 36561 (finding 40, shrunk). A view call invalid for the
    resized shape raises at the call, with eager's exception type, also
    where the same call was made on that tensor before the resize (finding
    36 once deferred those: autograd repeated view calls internally; lazy
    views no longer keep the repeat, lazy_tensor_impl.h)."""
    for call in (lambda t: t.expand(3, -1, -1, -1), lambda t: t.unsqueeze(4)):
        with pytest.raises(Exception) as eager:  # noqa: B017 -- eager's own type
            call(_resized_by_out(view_first))
        with pytest.raises(eager.type):
            call(_resized_by_out(view_first, device="lazy"))


# --------------------------------------------------------------------------
# 38. a materialized parameter could not be resized by out=
# --------------------------------------------------------------------------

def test_materialized_parameters_resize_like_eager_ones():
    """fuzz seed 27638 (torch 1.13 campaign, shrunk): after
    ``materialize(module)``, ``torch.add(weight, 1.0, out=bias)`` resizes
    the 1-element bias to the weight's 18 elements eagerly; the module's
    one-allocation buffer gave its slices storages that were not resizable
    ("Trying to resize storage that is not resizable")."""
    def build(**kw):
        torch.manual_seed(1)
        c4 = nn.Bilinear(6, 3, 1, **kw)
        if kw:
            lazyinit.materialize(c4, "cpu")
        w, b = c4.weight, c4.bias
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.add(w, 1.0, out=b)
        return w, b

    for i, (e, lz) in enumerate(zip(build(), build(device="lazy"))):
        assert_tensor_equal(f"result {i}", e, lz)


# --------------------------------------------------------------------------
# 43. a resized out= lost its storage offset to the CPU layout (torch 2.14)
# --------------------------------------------------------------------------

def test_out_resized_to_zero_elements_keeps_its_storage_offset():
    """fuzz seed 75261 (torch 2.14 campaign, shrunk): ``out=`` a row of a
    4x4 tensor (offset 8), resized to (5, 0, 1): eager keeps offset 8 with
    the CPU kernel's strides (0, 1, 0); the recorder took the CPU kernel's
    strides on a new meta tensor, at offset 0."""
    def build(**kw):
        torch.manual_seed(2)
        a = torch.randn((4, 4), dtype=torch.float64, **kw)
        v24 = a.unbind(0)[2].data
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.add(torch.zeros((5, 0, 1), dtype=torch.float64, **kw), 0.0, out=v24)
        return v24, a

    _assert_results_equal_eager(build)


# --------------------------------------------------------------------------
# 42. a view made lazily, materialized, then re-created by autograd
# --------------------------------------------------------------------------

@pytest.mark.parametrize("materialized_by", ["data", "materialize", "none"])
def test_materialized_view_is_recreated_like_an_eager_one(materialized_by):
    """fuzz seed 65274 (finding 42, shrunk). ``v22 = v15.reshape(2, 5)`` is
    a view made on the lazy device, which has no as_strided, so autograd
    keeps a function repeating the view call. ``real.data = v22``
    materializes v22 (and v15); ``v15.data = ones(4)`` replaces v15; a write
    of v22 makes autograd re-create its grad_fn: eager does it with
    as_strided, the kept function repeated ``view(2, 5)`` on a 4-element
    base ("shape '[2, 5]' is invalid for input of size 4"). Unmaterialized
    ("none"), the repeat runs on the lazy device and its error (a
    std::runtime_error on torch 1.13, not a c10::Error) waits for first use
    as finding 36's do."""
    def build(**kw):
        torch.manual_seed(3)
        c3 = nn.Conv1d(2, 5, 1, **kw)
        v15 = c3.weight.half()
        v22 = v15.reshape(2, 5)
        v24 = v15.new_ones((4,))
        if materialized_by == "data":
            torch.tensor(-0.25).data = v22
        elif materialized_by == "none":
            torch.tensor(-0.25, **kw).data = v22
        elif kw:
            lazyinit.materialize(v22, "cpu")
            lazyinit.materialize(v24, "cpu")
        with torch.no_grad():
            v22.uniform_(3.0, 13.0)
        v15.data = v24
        nn.init.eye_(v22.half().squeeze().permute(0, 1))
        return v22, v15, c3.weight

    _assert_results_equal_eager(build)


# --------------------------------------------------------------------------
# 39. an out= write grew a storage whose older value fills a module's slice
# --------------------------------------------------------------------------

@pytest.mark.parametrize("start", ["early", "factory", "random"])
@pytest.mark.parametrize("through_view", [False, True])
def test_storage_grown_by_out_fills_its_slice_of_the_one_allocation(start, through_view):
    """fuzz seed 31454 (finding 39, shrunk). ``v3 = v1[v1 > 0]`` is empty
    (an early value); ``torch.mul(x, s, out=v3)`` (or out= a view of it)
    grows its storage to one element. ``materialize(module)`` gives every
    storage a slice of one allocation, sized to the storage's latest bytes;
    the older value (0 elements) was copied into it whole: "output with
    shape [1] doesn't match the broadcast shape [0]". Eager's values and
    storage sizes."""
    def build(**kw):
        torch.manual_seed(1)
        v1 = torch.normal(-7.5, 0.5, (7, 3), **kw)
        v3 = {"early": lambda: v1[v1 > 0], "factory": lambda: torch.zeros(0, **kw),
              "random": lambda: torch.randn(2, **kw)}[start]()
        x = torch.full((3,), -0.25, **kw)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.mul(x, -0.25, out=v3.permute(0) if through_view else v3)
        holder = nn.Module()
        holder.register_buffer("k0", v3)
        holder.register_buffer("k1", v1)
        if kw:
            lazyinit.materialize(holder, "cpu")
        return holder.k0, holder.k1

    for i, (e, lz) in enumerate(zip(build(), build(device="lazy"))):
        assert_tensor_equal(f"result {i}", e, lz)
        nbytes = [_storage_nbytes(t) for t in (e, lz)]
        assert nbytes[0] == nbytes[1], (i, nbytes)


def test_value_read_after_out_grew_its_storage_is_the_whole_storage():
    """CI's fresh seed 258634690 (torch 1.13, shrunk; finding 46). An early
    value ``v12`` (5 elements) grown by ``out=`` to 15, then read through a
    view (``v29.copy_(v27)``): that replay's value kept its first 5
    elements only (resize_ grows the StorageImpl under a 5-element tensor),
    was cached so, and ``materialize(module)`` then filled the grown part of
    the slice with nothing: a silent wrong value (finding 39's prefix copy
    made it silent; before, a shape error)."""
    def build(**kw):
        torch.manual_seed(3)
        v0 = torch.eye(1, 5, dtype=torch.float64, **kw)
        with torch.no_grad():
            v0.log_normal_(0.0, 0.5)
        v10 = torch.cat([v0, v0, v0], 0)
        v12 = v0[v0 > 0]
        holder = nn.Module()
        holder.register_buffer("k0", v12)
        v27 = v12.unbind(0)[2]
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.mul(v10, -1.0, out=v12)
        torch.zeros(0).copy_(v27)
        if kw:
            lazyinit.materialize(holder, "cpu")
        return holder.k0, v27, v10

    for i, (e, lz) in enumerate(zip(build(), build(device="lazy"))):
        lazyinit.materialize(lz, "cpu")
        assert_tensor_equal(f"result {i}", e, lz)


def _storage_nbytes(t: torch.Tensor) -> int:
    return (t.untyped_storage() if hasattr(t, "untyped_storage") else t.storage()).nbytes()


# --------------------------------------------------------------------------
# 37. a replay that starts over wrote into the constant it first found
# --------------------------------------------------------------------------

def test_replay_that_starts_over_leaves_an_early_value_unwritten():
    """fuzz seed 2091845162 (shrunk by the CI fuzz test, on a change before
    it was committed): ``v5 = poisson(...)`` is an early value (a constant
    node); ``v1.copy_(v5)`` reads it; ``dirac_(v5)`` starts with ``zero_``,
    which overwrites the whole storage; ``v5[v5 > 0]`` computes ``v5`` early.
    That replay starts over at ``zero_`` and must not reuse the constant as
    its buffer: ``v1`` then read dirac's values."""
    def build(**kw):
        torch.manual_seed(3)
        v1 = torch.ones((3, 3, 5), dtype=torch.float64, **kw)
        v5 = torch.poisson(v1.abs())
        with torch.no_grad():
            v1.copy_(v5)
        nn.init.dirac_(v5)
        return v1, v5, v5[v5 > 0]

    _assert_results_equal_eager(build)


# --------------------------------------------------------------------------
# 34. a pending reader of an early result written after materializing
# --------------------------------------------------------------------------

def test_reader_of_an_early_result_keeps_its_values_after_a_later_write():
    """fuzz seed 11105 (shrunk by hand): ``v = torch.poisson(...)`` (no Meta
    kernel: computed early), ``y = 1 + v[8:]`` pending, ``v`` materialized,
    then written in place as a real tensor; ``y`` materialized afterwards
    read the written values: the materialized tensor was the early value
    itself, which the reader's frozen tape also holds. With ``zeros``
    instead of ``poisson`` (a recorded op) the reader kept eager's values."""
    def build(**kw):
        torch.manual_seed(1)
        v = torch.poisson(torch.rand(9, **kw))
        y = torch.ones(2, **kw) + v.narrow(0, 8, 1)
        if kw:
            lazyinit.materialize(v, "cpu")
        nn.init.ones_(v.view(3, 1, 3))
        if kw:
            lazyinit.materialize(y, "cpu")
        return y

    assert_tensor_equal("y", build(), build(device="lazy"))

# --------------------------------------------------------------------------
# 26. checks only the CPU kernel makes, on lazy values or dtypes
# --------------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    "x.index_fill_(0, torch.tensor([0, 5], **kw), 1.0)",
    "x.index_fill_(0, torch.tensor([0.0], **kw), 1.0)",
    "x.index_fill_(0, torch.tensor([-4]), 1.0)",  # a real index, a lazy target
    "x.__setitem__(([0, 3],), 1.0)", "x[torch.tensor([1, 3], **kw)]",
    "x.index_select(0, torch.tensor([3], **kw))",
    "torch.gather(x, 0, torch.tensor([0, 7], **kw))",
    "x.index_add_(0, torch.tensor([0, 9], **kw), x[:2])",
    "nn.functional.embedding(torch.tensor([4], **kw), x.view(3, 1))",
    "torch.bernoulli(x + 1.5)", "torch.multinomial(x * 0, 1)", "torch.poisson(x - 1)",
    "torch.normal(x, x - 1.0)", "x.bernoulli_(x - 2.0)",
    "x.view(3, 1) @ x.view(1, 3).double()", "x @ torch.ones(4, **kw)",
    "torch.mv(x.view(3, 1), torch.ones(1, dtype=torch.float64, **kw))",
    "torch.addmm(x.view(3, 1), x.view(3, 1), x.view(1, 1).double())",
    # torch 2.14's Meta kernel takes a non-bool mask (fresh seed 1800000384)
    "x.masked_fill_(torch.ones(3, dtype=torch.long, **kw), 1.0)",
    "x.masked_fill(torch.ones(3, dtype=torch.long, **kw), 1.0)",
    "x.masked_fill_(torch.ones(3, dtype=torch.bool, **kw), 1.0)",
    # accepted: the check must not raise where eager does not
    "x.index_fill_(0, torch.tensor([0, 2], **kw), 1.0)", "x[torch.tensor([2, -3], **kw)]",
    "torch.bernoulli(x * 0.5)", "torch.multinomial(x + 1, 2)", "torch.normal(x, x + 1.0)",
    "x.view(3, 1) @ x.view(1, 3)",
])
def test_kernel_checks_on_lazy_tensors_raise_at_the_call(call):
    """fuzz seeds 5, 8, 21, 30, 116-118, 442 (finding 26): index values out
    of range, an index of the wrong dtype, probabilities out of range, where
    the values (or the check) live in the CPU kernel only; matrix products
    of two dtypes, dot of two lengths (torch 1.13's Meta kernels accept
    them). Eager's exception type at the call; values and generator as
    eager's afterwards (the check draws nothing from them)."""
    def build(**kw):
        torch.manual_seed(0)
        x = torch.rand(3, **kw)
        raised = _raised(lambda: eval(call, globals(), {"x": x, "kw": kw}))
        after = torch.randn(3, **kw)
        if kw:
            lazyinit.materialize(x, "cpu")
            lazyinit.materialize(after, "cpu")
        return raised, x, after, torch.get_rng_state()

    eager, lazy = build(), build(device="lazy")
    assert lazy[0] == eager[0]
    for i, (e, lz) in enumerate(zip(eager[1:], lazy[1:])):
        assert_tensor_equal(f"result {i}", e, lz)


# --------------------------------------------------------------------------
# 27. in-place writes partially overlapping their input
def test_half_written_random_out_then_discarded_leaves_eager_generator():
    """fuzz seed 1600001356 (shrunk; found when finding 27's generator
    feature came back on): torch.normal's out= draws before refusing the
    overlap; the lazy tensor discarded afterwards, the default generator
    must stand where eager's does."""
    def build(**kw):
        torch.manual_seed(1)
        v5 = torch.empty((9,), **kw).uniform_(-1.0, 0.25)
        raised = _raised(lambda: torch.normal(v5[:-1], 1.0, out=v5[1:]))
        if kw:
            lazyinit.discard(v5)
        return raised, torch.get_rng_state(), torch.randn(4)

    eager, lazy = build(), build(device="lazy")
    assert lazy[0] == eager[0] == "RuntimeError"
    assert torch.equal(lazy[1], eager[1])
    assert torch.equal(lazy[2], eager[2])


# --------------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    "x[1:].copy_(x[:-1])", "x[:-1].add_(x[1:])", "torch.mul(x[:-1], 2, out=x[1:])",
    "torch.normal(x[:-1], 1.0, out=x[1:])", "x[1:].copy_(x[:-1].view(2, 2).t())",
    # eager accepts these: full overlap, disjoint bytes, non-dense views
    "x.add_(x)", "x[:2].copy_(x[3:])", "x.view(5, 1)[:4].mul_(x[1:].view(4, 1).t()[0, 0])",
    "y[:, :1].copy_(y[:, 1:2])", "torch.add(x[:-1], 1.0, out=x[:-1])",
    # the written tensor overlapping itself (torch 2.14's Meta kernels let
    # it through: CI's fresh seed 596568214)
    "x.expand(2, *x.shape).add_(1)", "x[:1].expand(4).copy_(y.view(-1)[:4])",
    "torch.mul(y[0], 2, out=x[:1].expand(2))",
])
def test_partially_overlapping_in_place_write_raises_at_the_call(call):
    """fuzz seeds 19, 100, 126 (finding 27): eager refuses an in-place write
    whose input partially overlaps the written elements; the Meta stand-ins
    of one lazy storage are separate tensors, so nothing saw the overlap
    and the error came at replay. Eager's exception at the call, eager's
    values and generator otherwise (torch.normal's out= fills and draws,
    then refuses the overlapping mean: x is left half-written, eagerly and
    lazily)."""
    def build(**kw):
        torch.manual_seed(0)
        x = torch.arange(5.0, **kw)
        y = torch.arange(6.0, **kw).view(3, 2)
        raised = _raised(lambda: eval(call, globals(), {"x": x, "y": y}))
        return raised, x, y, torch.randn(3, **kw)

    eager = build()
    lazy = build(device="lazy")
    assert lazy[0] == eager[0]
    for i, (e, lz) in enumerate(zip(eager[1:], lazy[1:])):
        lazyinit.materialize(lz, "cpu")
        assert_tensor_equal(f"result {i}", e, lz)


def test_older_view_used_after_its_base_was_replaced_written_and_discarded():
    """CI's fresh seed 1893011167 (both torches, shrunk; finding 47).
    ``v12 = w.select(1, -2)``, then ``w.data = other``, a write to ``w``
    (``reset_parameters``) and ``lazyinit.discard(w)``: ``v12``'s values are
    its own (the old storage), but its first use makes autograd re-create
    its grad_fn by calling ``select`` on the Python base ``w`` again, and
    that call raised "freed by lazyinit.discard()" where eager runs."""
    def build(**kw):
        torch.manual_seed(1)
        lin = nn.Linear(2, 1, bias=False, **kw)
        w = lin.weight
        v8 = torch.randint(-3, 11, (9, 2, 3), dtype=torch.float64, **kw)
        other = v8.bernoulli(0.3)
        v12 = w.select(1, -2)
        w.data = other
        lin.reset_parameters()
        if kw:
            lazyinit.discard(w)
        return torch.zeros((1,)).copy_(v12), v12, v8

    _assert_results_and_generator_equal_eager(build)


def test_view_of_discarded_tensor_has_its_shape_and_raises_at_use():
    """A view of a discarded tensor (autograd makes them, finding 47) has
    eager's shape and raises the discard error when its value is used."""
    w = torch.randn(3, 4, device="lazy")
    lazyinit.discard(w)
    v = w.t()
    assert v.shape == (4, 3)
    with pytest.raises(RuntimeError, match="freed by lazyinit.discard"):
        lazyinit.materialize(v, "cpu")


def test_older_view_after_its_base_data_was_replaced_and_materialized():
    """Fresh seed 1700007439 (torch 1.13, shrunk): ``v19 = b.expand(3, -1)``,
    then ``b.data = v1`` (another shape), a write to ``b`` and ``v1``
    materialized (so ``b`` is real): the next use of ``v19`` made autograd
    repeat ``expand(3, -1)`` on ``b``, now a real (3, 5, 1) tensor, which
    raised where eager re-creates the view with as_strided."""
    def build(**kw):
        torch.manual_seed(2)
        v1 = nn.init.uniform_(torch.empty((3, 5, 1), dtype=torch.bfloat16, **kw), 3.0, 13.0)
        lin = nn.Linear(6, 5, bias=True, **kw)
        v10 = lin.weight.transpose(1, -2)
        v19 = lin.bias.expand(3, -1)
        lin.bias.data = v1
        nn.init.ones_(lin.bias.narrow(1, 3, 2))
        v25 = v1.to("cpu")
        return torch.cat([v10, v19], 0), v25, v19

    _assert_results_and_generator_equal_eager(build)


def test_result_of_a_view_with_a_strided_size_one_dimension_has_eager_strides():
    """Fresh seed 2100050450 (torch 2.14, shrunk): ``v2[:, 0:1:2]`` of a
    (4, 1) tensor has strides (1, 2); ``v + -7.5`` is laid out (1, 4)
    eagerly on torch 2.14, and was (1, 1) lazily: the size map of the
    stand-in run cannot keep a size-1 dimension's stride between 1 and 4,
    so the Meta answer stayed. Small inputs now stand in with their real
    geometry."""
    def build(**kw):
        torch.manual_seed(0)
        v2 = torch.eye(4, 1, dtype=torch.float16, **kw)
        return v2, v2[:, 0:1:2] + -7.5

    _assert_results_equal_eager(build)
