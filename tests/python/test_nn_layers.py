"""Every torch.nn layer with parameters/buffers (torch 1.13), and every
torch.nn.init function, built lazily and compared bitwise with eager CPU.

Construction styles:
  device_kwarg:        torch.manual_seed(0); m = nn.Linear(4, 4, device="lazy")
  context:             torch.manual_seed(0); with LazyInitContext(): m = nn.Linear(4, 4)
  context_default_cpu: same under LazyInitContext(default_device="cpu"), then
                       materialize(m) with no device argument.
Eager reference: torch.manual_seed(0); m = nn.Linear(4, 4) on CPU.

Not covered on purpose: nn.Lazy* modules (UninitializedParameter, shapes only
known at the first forward), DataParallel (a wrapper, no state of its own).
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn as nn

import lazyinit
from conftest import (assert_modules_equal, assert_outputs_equal, assert_rng_equal,
                      assert_tensor_equal, named_plain_tensor_attrs, named_tensors,
                      storage_ptr)

SEED = 0
STYLES = ["device_kwarg", "context", "context_default_cpu"]


def _r(*shape, dtype=torch.float32):
    return lambda: torch.randn(*shape, dtype=dtype)


def _ri(high, *shape):
    return lambda: torch.randint(0, high, shape)


def _args(*makers):
    return lambda: tuple(m() for m in makers)


# (id, constructor(**factory_kwargs), input args factory or None)
LAYERS = [
    ("Linear", lambda **kw: nn.Linear(4, 5, **kw), _args(_r(3, 4))),
    ("Linear_nobias", lambda **kw: nn.Linear(4, 5, bias=False, **kw), _args(_r(3, 4))),
    ("Linear_float64", lambda **kw: nn.Linear(4, 5, dtype=torch.float64, **kw),
     _args(_r(3, 4, dtype=torch.float64))),
    ("Bilinear", lambda **kw: nn.Bilinear(3, 4, 5, **kw), _args(_r(2, 3), _r(2, 4))),
    ("Conv1d", lambda **kw: nn.Conv1d(3, 4, 3, **kw), _args(_r(2, 3, 8))),
    ("Conv2d", lambda **kw: nn.Conv2d(3, 4, (3, 2), stride=2, **kw), _args(_r(2, 3, 7, 6))),
    ("Conv2d_groups", lambda **kw: nn.Conv2d(4, 6, 3, groups=2, bias=False, **kw),
     _args(_r(1, 4, 5, 5))),
    ("Conv3d", lambda **kw: nn.Conv3d(2, 3, 2, **kw), _args(_r(1, 2, 4, 4, 4))),
    ("ConvTranspose1d", lambda **kw: nn.ConvTranspose1d(3, 4, 3, **kw), _args(_r(2, 3, 5))),
    ("ConvTranspose2d", lambda **kw: nn.ConvTranspose2d(3, 4, 2, stride=2, **kw),
     _args(_r(1, 3, 4, 4))),
    ("ConvTranspose3d", lambda **kw: nn.ConvTranspose3d(2, 3, 2, groups=1, **kw),
     _args(_r(1, 2, 3, 3, 3))),
    ("Embedding", lambda **kw: nn.Embedding(10, 4, **kw), _args(_ri(10, 2, 5))),
    ("Embedding_padding_idx", lambda **kw: nn.Embedding(10, 4, padding_idx=3, **kw),
     _args(lambda: torch.tensor([[3, 1, 3, 9]]))),
    ("EmbeddingBag", lambda **kw: nn.EmbeddingBag(10, 4, mode="sum", **kw),
     _args(_ri(10, 8), lambda: torch.tensor([0, 3, 5]))),
    ("EmbeddingBag_padding_idx",
     lambda **kw: nn.EmbeddingBag(10, 4, mode="mean", padding_idx=0, **kw),
     _args(lambda: torch.tensor([0, 2, 4, 0, 9, 1]), lambda: torch.tensor([0, 2]))),
    ("LayerNorm", lambda **kw: nn.LayerNorm(6, **kw), _args(_r(2, 3, 6))),
    ("LayerNorm_2d_shape", lambda **kw: nn.LayerNorm([3, 4], eps=1e-3, **kw), _args(_r(2, 3, 4))),
    ("GroupNorm", lambda **kw: nn.GroupNorm(2, 4, **kw), _args(_r(2, 4, 3))),
    ("BatchNorm1d", lambda **kw: nn.BatchNorm1d(4, **kw), _args(_r(3, 4))),
    ("BatchNorm2d", lambda **kw: nn.BatchNorm2d(4, **kw), _args(_r(2, 4, 3, 3))),
    ("BatchNorm3d", lambda **kw: nn.BatchNorm3d(4, **kw), _args(_r(2, 4, 2, 2, 2))),
    ("SyncBatchNorm", lambda **kw: nn.SyncBatchNorm(4, **kw), None),
    ("InstanceNorm1d",
     lambda **kw: nn.InstanceNorm1d(4, affine=True, track_running_stats=True, **kw),
     _args(_r(2, 4, 5))),
    ("InstanceNorm2d",
     lambda **kw: nn.InstanceNorm2d(4, affine=True, track_running_stats=True, **kw),
     _args(_r(2, 4, 3, 3))),
    ("InstanceNorm3d",
     lambda **kw: nn.InstanceNorm3d(4, affine=True, track_running_stats=True, **kw),
     _args(_r(2, 4, 2, 2, 2))),
    ("RNN", lambda **kw: nn.RNN(4, 6, **kw), _args(_r(5, 2, 4))),
    ("RNN_relu_2layer_bidir",
     lambda **kw: nn.RNN(4, 6, num_layers=2, nonlinearity="relu", bidirectional=True, **kw),
     _args(_r(5, 2, 4))),
    ("LSTM", lambda **kw: nn.LSTM(4, 6, **kw), _args(_r(5, 2, 4))),
    ("LSTM_2layer_bidir",
     lambda **kw: nn.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True, **kw),
     _args(_r(2, 5, 4))),
    ("LSTM_proj", lambda **kw: nn.LSTM(4, 6, proj_size=3, **kw), _args(_r(5, 2, 4))),
    ("GRU", lambda **kw: nn.GRU(4, 6, **kw), _args(_r(5, 2, 4))),
    ("GRU_2layer_bidir",
     lambda **kw: nn.GRU(4, 6, num_layers=2, bidirectional=True, bias=False, **kw),
     _args(_r(5, 2, 4))),
    ("RNNCell", lambda **kw: nn.RNNCell(4, 6, **kw), _args(_r(3, 4))),
    ("LSTMCell", lambda **kw: nn.LSTMCell(4, 6, **kw), _args(_r(3, 4))),
    ("GRUCell", lambda **kw: nn.GRUCell(4, 6, **kw), _args(_r(3, 4))),
    ("MultiheadAttention", lambda **kw: nn.MultiheadAttention(8, 2, **kw),
     _args(_r(3, 2, 8), _r(4, 2, 8), _r(4, 2, 8))),
    ("MultiheadAttention_kdim_vdim",
     lambda **kw: nn.MultiheadAttention(8, 2, kdim=6, vdim=5, **kw),
     _args(_r(3, 2, 8), _r(4, 2, 6), _r(4, 2, 5))),
    ("MultiheadAttention_bias_kv_zero_attn",
     lambda **kw: nn.MultiheadAttention(8, 2, add_bias_kv=True, add_zero_attn=True, **kw),
     _args(_r(3, 2, 8), _r(4, 2, 8), _r(4, 2, 8))),
    ("MultiheadAttention_kdim_bias_kv_nobias",
     lambda **kw: nn.MultiheadAttention(8, 2, kdim=6, vdim=6, bias=False, add_bias_kv=True,
                                        batch_first=True, **kw),
     _args(_r(2, 3, 8), _r(2, 4, 6), _r(2, 4, 6))),
    ("Transformer",
     lambda **kw: nn.Transformer(d_model=8, nhead=2, num_encoder_layers=2, num_decoder_layers=1,
                                 dim_feedforward=16, dropout=0.0, **kw),
     _args(_r(5, 2, 8), _r(3, 2, 8))),
    ("TransformerEncoderLayer",
     lambda **kw: nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, **kw),
     _args(_r(5, 2, 8))),
    ("TransformerDecoderLayer",
     lambda **kw: nn.TransformerDecoderLayer(8, 2, dim_feedforward=16, dropout=0.0,
                                             norm_first=True, **kw),
     _args(_r(3, 2, 8), _r(5, 2, 8))),
    ("TransformerEncoder",
     lambda **kw: nn.TransformerEncoder(
         nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, **kw), 2,
         norm=nn.LayerNorm(8, **kw)),
     _args(_r(5, 2, 8))),
    ("PReLU", lambda **kw: nn.PReLU(**kw), _args(_r(3, 4))),
    ("PReLU_channels", lambda **kw: nn.PReLU(num_parameters=3, init=0.1, **kw),
     _args(_r(2, 3, 4))),
    ("AdaptiveLogSoftmaxWithLoss",
     lambda **kw: nn.AdaptiveLogSoftmaxWithLoss(8, 20, cutoffs=[5, 10], div_value=2.0,
                                                head_bias=True, **kw),
     _args(_r(4, 8), lambda: torch.tensor([0, 6, 12, 19]))),
    ("CrossEntropyLoss_weight",
     lambda **kw: nn.CrossEntropyLoss(weight=torch.rand(5, **kw)),
     _args(_r(3, 5), lambda: torch.tensor([0, 4, 2]))),
    ("ParameterList",
     lambda **kw: nn.ParameterList([nn.Parameter(torch.randn(3, **kw)),
                                    nn.Parameter(torch.zeros(2, 2, **kw))]), None),
    ("ParameterDict",
     lambda **kw: nn.ParameterDict({"a": nn.Parameter(torch.rand(4, **kw)),
                                    "b": nn.Parameter(torch.ones(1, **kw))}), None),
    ("weight_norm", lambda **kw: nn.utils.weight_norm(nn.Linear(4, 5, **kw)), _args(_r(3, 4))),
    ("weight_norm_conv_dim1",
     lambda **kw: nn.utils.weight_norm(nn.Conv1d(3, 4, 2, **kw), dim=1), _args(_r(1, 3, 5))),
    ("spectral_norm", lambda **kw: nn.utils.spectral_norm(nn.Linear(4, 5, **kw)),
     _args(_r(3, 4))),
    ("Sequential_mixed",
     lambda **kw: nn.Sequential(nn.Conv2d(3, 4, 3, **kw), nn.BatchNorm2d(4, **kw), nn.ReLU(),
                                nn.Flatten(), nn.Linear(4 * 2 * 2, 3, **kw)),
     _args(_r(2, 3, 4, 4))),
]


def _init(fn, shape, dtype=torch.float32, prep=None, view=None, **fn_kwargs):
    """Factory: allocate with torch.empty (device from kwargs or context), optionally
    prefill with ``prep``, then apply ``fn`` to the tensor (or to ``view(t)``)."""
    def make(**kw):
        t = torch.empty(shape, dtype=dtype, **kw)
        if prep is not None:
            prep(t)
        fn(view(t) if view is not None else t, **fn_kwargs)
        return t
    return make


I = nn.init
TENSORS = [
    ("uniform_", _init(I.uniform_, (5, 7), a=-2.0, b=3.0)),
    ("uniform_bfloat16", _init(I.uniform_, (5, 7), dtype=torch.bfloat16)),
    ("normal_", _init(I.normal_, (5, 7), mean=1.0, std=0.5)),
    ("normal_float64", _init(I.normal_, (9,), dtype=torch.float64)),
    ("normal_scalar", _init(I.normal_, ())),
    ("trunc_normal_", _init(I.trunc_normal_, (64, 33), std=0.02, a=-0.04, b=0.04)),
    ("trunc_normal_defaults", _init(I.trunc_normal_, (3, 4, 5))),
    ("constant_", _init(I.constant_, (4, 3), val=0.3)),
    ("constant_int64", _init(I.constant_, (4, 3), dtype=torch.int64, val=7)),
    ("ones_", _init(I.ones_, (2, 3))),
    ("zeros_", _init(I.zeros_, (2, 3))),
    ("eye_", _init(I.eye_, (3, 5))),
    ("dirac_", _init(I.dirac_, (4, 2, 3))),
    ("dirac_groups", _init(I.dirac_, (4, 2, 3, 3), groups=2)),
    ("dirac_5d", _init(I.dirac_, (2, 2, 3, 3, 3))),
    ("xavier_uniform_", _init(I.xavier_uniform_, (6, 9), gain=2.0)),
    ("xavier_normal_", _init(I.xavier_normal_, (4, 3, 3, 3))),
    ("kaiming_uniform_", _init(I.kaiming_uniform_, (8, 5), a=math.sqrt(5))),
    ("kaiming_normal_", _init(I.kaiming_normal_, (8, 5, 3), mode="fan_out",
                              nonlinearity="relu")),
    ("kaiming_uniform_leaky", _init(I.kaiming_uniform_, (6, 4), a=0.1,
                                    nonlinearity="leaky_relu")),
    ("orthogonal_wide", _init(I.orthogonal_, (4, 6))),
    ("orthogonal_tall", _init(I.orthogonal_, (6, 4), gain=1.5)),
    ("orthogonal_3d", _init(I.orthogonal_, (3, 2, 2))),
    ("sparse_", _init(I.sparse_, (10, 6), sparsity=0.3, std=0.01)),
    # init through views of a lazy tensor
    ("normal_on_slice", _init(I.normal_, (5, 4), prep=I.zeros_, view=lambda t: t[1:3])),
    ("uniform_on_transpose", _init(I.uniform_, (3, 5), prep=I.ones_, view=lambda t: t.t())),
    ("zeros_on_column", _init(I.zeros_, (4, 5), prep=I.normal_, view=lambda t: t[:, 1])),
    ("zero_padding_row_via_data",
     _init(lambda v: v.zero_(), (6, 3), prep=lambda t: t.data.normal_(0.0, 0.02),
           view=lambda t: t.data[2])),
    ("kaiming_on_reshaped_view",
     _init(I.kaiming_uniform_, (4, 6), view=lambda t: t.view(4, 2, 3))),
    ("fill_strided_every_other", _init(lambda v: v.fill_(2.5), (8,), prep=I.normal_,
                                       view=lambda t: t[::2])),
    # random factories
    ("randn", lambda **kw: torch.randn(4, 5, **kw)),
    ("rand_float64", lambda **kw: torch.rand(3, 3, dtype=torch.float64, **kw)),
    ("randint", lambda **kw: torch.randint(0, 10, (6,), **kw)),
    ("randperm", lambda **kw: torch.randperm(9, **kw)),
    ("bernoulli_", lambda **kw: torch.empty(20, **kw).bernoulli_(0.3)),
    ("exponential_", lambda **kw: torch.empty(7, **kw).exponential_(2.0)),
    ("arange_linspace_full", lambda **kw: torch.cat([torch.arange(3.0, **kw),
                                                     torch.linspace(0, 1, 4, **kw),
                                                     torch.full((2,), 7.0, **kw)])),
    ("tensor_from_data", lambda **kw: torch.tensor([[1.5, -2.0], [3.0, 0.25]], **kw)),
    ("clone_of_random", lambda **kw: torch.randn(3, 4, **kw).clone()),
    ("random_then_inplace_chain",
     lambda **kw: torch.randn(5, 5, **kw).mul_(3.0).add_(1.0).clamp_(-1.0, 2.0)),
]

# legacy constructors only exist without a device argument (context style only)
LEGACY = [
    ("Tensor_ctor_uniform_", lambda: I.uniform_(torch.Tensor(3, 4))),
    ("FloatTensor_ctor_normal_", lambda: I.normal_(torch.FloatTensor(2, 5))),
    ("Tensor_ctor_new_normal_", lambda: torch.Tensor(2, 2).new(3, 3).normal_()),
]


# --------------------------------------------------------------------------

def _lazy_ctx(style):
    if style == "device_kwarg":
        return contextlib.nullcontext(), {"device": "lazy"}
    if style == "context":
        return lazyinit.LazyInitContext(), {}
    if style == "context_default_cpu":
        return lazyinit.LazyInitContext(default_device="cpu"), {}
    raise ValueError(style)


def _materialize(obj, style):
    if style == "context_default_cpu":
        return lazyinit.materialize(obj)  # default_device of the context
    return lazyinit.materialize(obj, "cpu")


def _build_pair(make, style):
    torch.manual_seed(SEED)
    eager = make()
    rng_eager = torch.get_rng_state()
    torch.manual_seed(SEED)
    ctx, kw = _lazy_ctx(style)
    with ctx:
        lazy = make(**kw)
    return eager, rng_eager, lazy


def _fixed_input(make_input):
    state = torch.get_rng_state()
    torch.manual_seed(4321)
    args = make_input()
    torch.set_rng_state(state)
    return args


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("make,make_input", [pytest.param(m, i, id=n) for n, m, i in LAYERS])
def test_layer(make, make_input, style):
    eager, rng_eager, lazy = _build_pair(make, style)
    assert lazyinit.is_lazy(lazy)
    before = named_tensors(lazy)
    for n, t in before.items():
        assert t.device.type == "lazy", f"{n}: device {t.device}"

    out = _materialize(lazy, style)
    assert out is lazy
    assert not lazyinit.is_lazy(lazy)
    after = named_tensors(lazy)
    for n in before:
        assert after[n] is before[n], f"{n}: object replaced, not materialized in place"
    assert_modules_equal(eager, lazy)
    assert_rng_equal(rng_eager, torch.get_rng_state())

    # Tensors kept as plain attributes (weight_norm's computed `weight`,
    # spectral_norm's `weight` alias). materialize(module) covers parameters and
    # buffers, like Module.to(); a derived attribute that is still lazy is
    # materialized on its own here and must replay to eager's value without
    # touching the RNG.
    pe, pl = named_plain_tensor_attrs(eager), named_plain_tensor_attrs(lazy)
    assert sorted(pe) == sorted(pl)
    for n in pe:
        if lazyinit.is_lazy(pl[n]):
            assert lazyinit.materialize(pl[n], "cpu") is pl[n]
        assert_tensor_equal(n, pe[n], pl[n])
    assert_rng_equal(rng_eager, torch.get_rng_state())
    # RNNs keep a list of the very Parameter objects
    for mod_e, mod_l in zip(eager.modules(), lazy.modules()):
        if isinstance(mod_l, nn.RNNBase):
            assert len(mod_l._flat_weights) == len(mod_e._flat_weights)
            for wn, w in zip(mod_l._flat_weights_names, mod_l._flat_weights):
                assert w is getattr(mod_l, wn), f"_flat_weights[{wn}] is a stale object"

    if make_input is not None:
        eager.eval()
        lazy.eval()
        args = _fixed_input(make_input)
        with torch.no_grad():
            assert_outputs_equal(eager(*args), lazy(*args))


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("make", [pytest.param(m, id=n) for n, m in TENSORS])
def test_tensor_init(make, style):
    eager, rng_eager, lazy = _build_pair(make, style)
    assert lazyinit.is_lazy(lazy)
    assert lazy.device.type == "lazy"
    assert lazy.shape == eager.shape and lazy.dtype == eager.dtype
    assert lazy.stride() == eager.stride()
    r = _materialize(lazy, style)
    assert r is lazy
    assert_tensor_equal("tensor", eager, lazy)
    assert_rng_equal(rng_eager, torch.get_rng_state())


@pytest.mark.parametrize("make", [pytest.param(m, id=n) for n, m in LEGACY])
def test_legacy_constructor_in_context(make):
    eager, rng_eager, lazy = _build_pair(make, "context")
    assert lazyinit.is_lazy(lazy)
    assert lazy.device.type == "lazy"
    lazyinit.materialize(lazy, "cpu")
    assert_tensor_equal("tensor", eager, lazy)
    assert_rng_equal(rng_eager, torch.get_rng_state())


# --------------------------------------------------------------------------
# RNG stream edge cases during recording

def test_tensor_cpu_and_to_materialize_in_place():
    """t.cpu() and t.to('cpu') materialize in place (spec)."""
    torch.manual_seed(SEED)
    e1, e2 = nn.Linear(4, 3), nn.Linear(3, 2)
    rng_eager = torch.get_rng_state()
    torch.manual_seed(SEED)
    with lazyinit.LazyInitContext():
        l1, l2 = nn.Linear(4, 3), nn.Linear(3, 2)
    w = l2.weight
    r = w.cpu()
    assert not lazyinit.is_lazy(w), "t.cpu() did not materialize in place"
    assert torch.equal(r, e2.weight)
    b = l1.bias
    r = b.to("cpu")
    assert not lazyinit.is_lazy(b), "t.to('cpu') did not materialize in place"
    assert torch.equal(r, e1.bias)
    lazyinit.materialize(l1, "cpu")
    lazyinit.materialize(l2, "cpu")
    assert_modules_equal(e1, l1)
    assert_modules_equal(e2, l2)
    assert_rng_equal(rng_eager, torch.get_rng_state())


def test_reseed_during_construction():
    """torch.manual_seed between layers is part of the recorded stream."""
    def build():
        torch.manual_seed(3)
        a = nn.Linear(5, 4)
        torch.manual_seed(11)
        b = nn.Linear(4, 4)
        c = nn.Embedding(6, 2)
        return nn.ModuleList([a, b, c])

    eager = build()
    rng_eager = torch.get_rng_state()
    with lazyinit.LazyInitContext():
        lazy = build()
    for m in reversed(list(lazy)):
        lazyinit.materialize(m, "cpu")
    assert_modules_equal(eager, lazy)
    assert_rng_equal(rng_eager, torch.get_rng_state())


def test_set_rng_state_during_construction():
    """get_rng_state/set_rng_state (fork_rng) inside construction."""
    def build():
        torch.manual_seed(SEED)
        a = nn.Linear(5, 4)
        with torch.random.fork_rng():
            torch.manual_seed(99)
            b = nn.Linear(4, 4)
        c = nn.Linear(4, 3)
        return nn.ModuleList([a, b, c])

    eager = build()
    rng_eager = torch.get_rng_state()
    with lazyinit.LazyInitContext():
        lazy = build()
    for m in (lazy[2], lazy[0], lazy[1]):
        lazyinit.materialize(m, "cpu")
    assert_modules_equal(eager, lazy)
    assert_rng_equal(rng_eager, torch.get_rng_state())


def test_eager_cpu_draw_between_lazy_draws():
    """A real CPU draw (explicit device='cpu') between two lazy layers must get the
    values eager construction would have drawn there."""
    def build(**kw):
        torch.manual_seed(SEED)
        a = nn.Linear(6, 5)
        noise = torch.randn(4, device="cpu")
        b = nn.Linear(5, 3)
        return a, noise, b

    a_e, noise_e, b_e = build()
    rng_eager = torch.get_rng_state()
    with lazyinit.LazyInitContext():
        a_l, noise_l, b_l = build()
    assert not lazyinit.is_lazy(noise_l) and noise_l.device.type == "cpu"
    assert torch.equal(noise_e, noise_l), "CPU draw during lazy construction got other values"
    lazyinit.materialize(b_l, "cpu")
    lazyinit.materialize(a_l, "cpu")
    assert_modules_equal(a_e, a_l)
    assert_modules_equal(b_e, b_l)
    assert_rng_equal(rng_eager, torch.get_rng_state())


def test_explicit_generator():
    """Random ops with an explicit torch.Generator use (and advance) that generator,
    not the default one."""
    def build(**kw):
        g = torch.Generator().manual_seed(7)
        t = torch.empty(5, 5, **kw)
        t.normal_(generator=g)
        u = torch.randperm(6, generator=g, **kw)
        return t, u, g

    torch.manual_seed(SEED)
    t_e, u_e, g_e = build()
    rng_eager = torch.get_rng_state()
    torch.manual_seed(SEED)
    t_l, u_l, g_l = build(device="lazy")
    lazyinit.materialize(u_l, "cpu")
    lazyinit.materialize(t_l, "cpu")
    assert_tensor_equal("t", t_e, t_l)
    assert_tensor_equal("u", u_e, u_l)
    assert torch.equal(g_e.get_state(), g_l.get_state()), "explicit generator state differs"
    assert_rng_equal(rng_eager, torch.get_rng_state())


def test_deepcopy_of_lazy_module():
    """copy.deepcopy (used by nn.Transformer's _get_clones) of a lazy module draws
    nothing and gives independent copies equal to eager deepcopy."""
    import copy

    def build():
        torch.manual_seed(SEED)
        base = nn.Linear(4, 4)
        clone = copy.deepcopy(base)
        nn.init.zeros_(clone.bias)
        return nn.ModuleList([base, clone])

    eager = build()
    rng_eager = torch.get_rng_state()
    with lazyinit.LazyInitContext():
        lazy = build()
    assert lazy[0].weight is not lazy[1].weight
    lazyinit.materialize(lazy[1], "cpu")
    lazyinit.materialize(lazy[0], "cpu")
    assert_modules_equal(eager, lazy)
    assert storage_ptr(lazy[0].weight) != storage_ptr(lazy[1].weight)
    assert_rng_equal(rng_eager, torch.get_rng_state())



def test_spectral_norm_weight_alias_follows_module():
    """spectral_norm keeps `weight` as weight_orig.data: an alias of a parameter's
    storage, so materializing the module materializes it too."""
    torch.manual_seed(SEED)
    eager = nn.utils.spectral_norm(nn.Linear(4, 5))
    torch.manual_seed(SEED)
    lazy = nn.utils.spectral_norm(nn.Linear(4, 5, device="lazy"))
    alias = lazy.weight
    lazyinit.materialize(lazy, "cpu")
    assert not lazyinit.is_lazy(alias)
    assert_tensor_equal("weight", eager.weight, alias)
    assert storage_ptr(alias) == storage_ptr(lazy.weight_orig)
