"""Fuzzing findings 13-16 (docs/fuzzing.md, "Findings"), each shrunk to a
minimal program; continued from test_fuzz_regressions.py. Every test asserts
what eager construction does."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import lazyinit
from conftest import assert_rng_equal, assert_tensor_equal


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
