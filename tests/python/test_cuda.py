"""CUDA targets: lazy construction materialized on a GPU equals eager
construction on that GPU (``with torch.device("cuda")``, same seed), bit for
bit, in any order, and leaves the CUDA and CPU generators where eager does.

Skipped without a CUDA device (the CI machine has none); ``make test-gpu``
runs this file on a GPU machine.
"""
from __future__ import annotations

import random
from typing import Callable, Dict

import pytest
import torch
import torch.nn as nn

import lazyinit
from models import MODEL_BUILDERS

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not hasattr(torch, "get_default_device") and
                       not hasattr(torch.device, "__enter__"),
                       reason="eager reference needs `with torch.device('cuda')` (torch >= 2.0)"),
]


class InitZoo(nn.Module):
    """Every torch.nn.init function, several dtypes, and sizes on both sides
    of the distribution kernels' grid limit (so offsets grow by more than 4
    a kernel on any GPU of up to ~400 SMs)."""

    def __init__(self) -> None:
        super().__init__()
        shapes = {
            "small": (3, 5), "odd": (4097, 11), "big": (1100, 1000), "huge": (2, 3_300_000),
        }
        init: Dict[str, Callable[[torch.Tensor], object]] = {
            "uniform": lambda t: nn.init.uniform_(t, -0.5, 0.5),
            "normal": lambda t: nn.init.normal_(t, 0.0, 0.02),
            "trunc_normal": lambda t: nn.init.trunc_normal_(t, std=0.02),
            "kaiming_uniform": lambda t: nn.init.kaiming_uniform_(t, a=5 ** 0.5),
            "kaiming_normal": lambda t: nn.init.kaiming_normal_(t),
            "xavier_uniform": lambda t: nn.init.xavier_uniform_(t),
            "xavier_normal": lambda t: nn.init.xavier_normal_(t),
        }
        k = 0
        for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
            for sname, shape in shapes.items():
                if dtype != torch.float32 and sname == "huge":
                    continue
                for iname, fn in init.items():
                    p = nn.Parameter(torch.empty(shape, dtype=dtype))
                    with torch.no_grad():
                        fn(p)
                    self.register_parameter(f"p{k}_{iname}_{sname}_{str(dtype)[6:]}", p)
                    k += 1
        self.orth = nn.Parameter(torch.empty(64, 48))
        nn.init.orthogonal_(self.orth)
        self.sparse = nn.Parameter(torch.empty(40, 30))
        nn.init.sparse_(self.sparse, 0.3)
        self.eye = nn.Parameter(torch.empty(5, 7))
        nn.init.eye_(self.eye)
        self.dirac = nn.Parameter(torch.empty(4, 2, 3, 3))
        nn.init.dirac_(self.dirac, groups=2)
        self.const = nn.Parameter(torch.empty(6))
        nn.init.constant_(self.const, 0.25)
        self.lin = nn.Linear(300, 200)   # kaiming_uniform_ then overwritten below
        nn.init.normal_(self.lin.weight, std=0.02)
        self.emb = nn.Embedding(1000, 64, padding_idx=3)
        self.norm = nn.LayerNorm(64)
        self.register_buffer("counter", torch.zeros((), dtype=torch.long))


def _eager(build: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    with torch.device("cuda"):
        return build()


def _tensors(m: nn.Module) -> Dict[str, torch.Tensor]:
    out = dict(m.named_parameters())
    out.update(dict(m.named_buffers()))
    return out


def _assert_equal(eager: nn.Module, lazy: nn.Module) -> None:
    e, l = _tensors(eager), _tensors(lazy)
    assert e.keys() == l.keys()
    bad = [k for k in e if l[k].device != e[k].device or l[k].dtype != e[k].dtype
           or not torch.equal(l[k], e[k])]
    assert not bad, f"{len(bad)} differ, e.g. {bad[:5]}"


def _check(build: Callable[[], nn.Module], order: str) -> None:
    eager = _eager(build)
    eager_cuda_rng, eager_cpu_rng = torch.cuda.get_rng_state(), torch.get_rng_state()

    torch.manual_seed(0)
    with lazyinit.LazyInitContext():
        lazy = build()
    assert lazyinit.is_lazy(lazy)
    params = list(lazy.parameters()) + list(lazy.buffers())
    if order == "reverse":
        params.reverse()
    elif order == "random":
        random.Random(1).shuffle(params)
    if order == "module":
        lazyinit.materialize(lazy, "cuda")
    else:
        for p in params:
            lazyinit.materialize(p, "cuda")
    _assert_equal(eager, lazy)
    assert torch.equal(torch.cuda.get_rng_state(), eager_cuda_rng), "CUDA generator differs from eager"
    assert torch.equal(torch.get_rng_state(), eager_cpu_rng), "CPU generator differs from eager"


@pytest.mark.parametrize("order", ["module", "forward", "reverse", "random"])
def test_every_init_function_equals_eager_cuda(order: str) -> None:
    _check(InitZoo, order)


@pytest.mark.parametrize("name", sorted(MODEL_BUILDERS))
@pytest.mark.parametrize("order", ["module", "reverse"])
def test_reference_models_equal_eager_cuda(name: str, order: str) -> None:
    _check(MODEL_BUILDERS[name][0], order)


def test_module_to_cuda_keeps_objects_and_ties() -> None:
    build = MODEL_BUILDERS["llama_tiny_tied"][0]
    eager = _eager(build)
    torch.manual_seed(0)
    with lazyinit.LazyInitContext():
        lazy = build()
    ids = {n: id(p) for n, p in lazy.named_parameters()}
    assert lazy.to("cuda") is lazy
    _assert_equal(eager, lazy)
    assert {n: id(p) for n, p in lazy.named_parameters()} == ids
    assert lazy.lm_head.weight is lazy.model.embed_tokens.weight


def test_context_default_device_cuda() -> None:
    build = MODEL_BUILDERS["gpt2_tiny"][0]
    eager = _eager(build)
    torch.manual_seed(0)
    with lazyinit.LazyInitContext(default_device="cuda"):
        lazy = build()
    lazyinit.LazyInitContext.materialize(lazy)
    _assert_equal(eager, lazy)


def test_tensor_cuda_and_to() -> None:
    torch.manual_seed(3)
    a = torch.randn(1500, 1000, device="cuda")
    b = torch.rand(77, device="cuda", dtype=torch.float64)
    torch.manual_seed(3)
    la = torch.randn(1500, 1000, device="lazy")
    lb = torch.rand(77, device="lazy", dtype=torch.float64)
    assert torch.equal(lb.to("cuda"), b)   # out of order: a's offset is computed
    assert torch.equal(la.cuda(), a)


def test_real_cuda_draw_after_materialization_continues_like_eager() -> None:
    def build() -> nn.Module:
        return nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 8))
    eager = _eager(build)
    after_eager = torch.randn(10, device="cuda")
    torch.manual_seed(0)
    with lazyinit.LazyInitContext():
        lazy = build()
    lazyinit.materialize(lazy, "cuda")
    _assert_equal(eager, lazy)
    assert torch.equal(torch.randn(10, device="cuda"), after_eager)


def test_peak_memory_is_the_parameter_bytes() -> None:
    from models import Llama, llama_config
    cfg = llama_config("tiny", hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                       vocab_size=8000)
    torch.manual_seed(0)
    with lazyinit.LazyInitContext():
        lazy = Llama(cfg)
    nbytes = sum(t.numel() * t.element_size() for t in _tensors(lazy).values())
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    lazyinit.materialize(lazy, "cuda")
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    assert peak <= 1.05 * nbytes, (peak, nbytes)


class Readers(nn.Module):
    """More random storages and constant fills than one batch of queued
    fills holds, and storages that read others whose last write was queued
    (a dtype conversion, a copy_, an element-wise product), before and
    after them in module order."""

    def __init__(self) -> None:
        super().__init__()
        self.early_copy = nn.Parameter(torch.empty(1000, 3))
        self.early_ones = nn.Parameter(torch.empty(69))
        dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64,
                  torch.bool, torch.uint8, torch.int32]
        for i in range(70):
            dtype = dtypes[i % len(dtypes)]
            value = i / 3 if dtype.is_floating_point else i - 35
            self.register_buffer(f"c{i}", torch.full((i + 1, 7), value, dtype=dtype))
            self.register_parameter(f"n{i}", nn.Parameter(torch.ones(64 + i)))
        with torch.no_grad():
            self.early_ones.copy_(self.n5)
        self.register_buffer("c_twice", self.c8 * 2)
        self.register_buffer("zeros_plus", torch.zeros(133).add_(self.n69))
        for i in range(150):
            self.register_parameter(f"w{i}", nn.Parameter(torch.empty(257, 33).normal_(0, 1 + i)))
        self.a = nn.Parameter(torch.empty(1000, 3).uniform_(-1, 1))
        with torch.no_grad():
            self.early_copy.copy_(self.a)
        self.register_buffer("a_bf16", self.a.detach().to(torch.bfloat16))
        self.register_buffer("a_twice", self.a.detach() * 2)
        self.late_copy = nn.Parameter(torch.empty(257, 33))
        with torch.no_grad():
            self.late_copy.copy_(self.w7)


@pytest.mark.parametrize("order", ["module", "random"])
def test_queued_fills_are_written_before_anything_reads_them(order: str) -> None:
    _check(Readers, order)


TORCHVISION = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "vit_b_32", "convnext_tiny"]


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_models_equal_eager_cuda(name: str) -> None:
    models = pytest.importorskip("torchvision.models")
    _check(lambda: getattr(models, name)(), "module")


# ------------------------------------------------ one construction, two devices

def _two_random_tensors(**kw):
    return torch.randn(64, 8, **kw), torch.rand(32, **kw)


def test_first_on_cuda_then_second_on_the_cpu_equals_eager_built_so():
    """A random tensor materialized on CUDA was built there, eagerly: it
    draws nothing from the CPU generator, so a later one materialized on the
    CPU continues the CPU stream where eager's does."""
    torch.manual_seed(5)
    want_a = torch.randn(64, 8, device="cuda")
    want_b = torch.rand(32)
    want_next = torch.randn(3)
    torch.manual_seed(5)
    a, b = _two_random_tensors(device="lazy")
    lazyinit.materialize(a, "cuda")
    lazyinit.materialize(b, "cpu")
    assert torch.equal(a, want_a) and torch.equal(b, want_b)
    assert torch.equal(torch.randn(3), want_next)


def test_cpu_generator_read_between_cuda_materializations_equals_eager():
    """`.to("cuda")` inside a context, then a CPU read: the tensors built on
    CUDA drew nothing from the CPU generator (ColossalAI's `model.cuda()`
    flow, then a real CPU draw)."""
    torch.manual_seed(6)
    with torch.device("cuda"):
        want = nn.Linear(8, 8)
    want_next = torch.randn(3)
    torch.manual_seed(6)
    with lazyinit.LazyInitContext():
        model = nn.Linear(8, 8).to("cuda")
    assert torch.equal(model.weight, want.weight) and torch.equal(model.bias, want.bias)
    assert torch.equal(torch.randn(3), want_next)


def test_cuda_after_the_cpu_counted_it_raises():
    """The second tensor materialized on the CPU first counts the first as
    drawn on the CPU; building the first on CUDA afterwards would match no
    eager run, so it is refused with a message."""
    torch.manual_seed(7)
    a, b = _two_random_tensors(device="lazy")
    lazyinit.materialize(b, "cpu")
    with pytest.raises(RuntimeError, match="counted it as drawn on the CPU"):
        lazyinit.materialize(a, "cuda")
    lazyinit.materialize(a, "cpu")  # the CPU is still exact
    torch.manual_seed(7)
    want_a, want_b = _two_random_tensors()
    assert torch.equal(a, want_a) and torch.equal(b, want_b)
