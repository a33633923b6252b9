"""Lazy models built concurrently in threads, then materialized concurrently,
equal the sequential results. Each model draws from its own generator, so its
values do not depend on how the threads interleave (eager or lazy)."""
from __future__ import annotations

import threading
from typing import Dict, List

import torch
import torch.nn as nn

import lazyinit


class Seeded(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.empty(64, 33))
        self.b = nn.Parameter(torch.empty(33))
        with torch.no_grad():
            self.w.normal_(0, 0.02, generator=g)
            self.w[:, :4].uniform_(-1, 1, generator=g)
            self.b.copy_(torch.randperm(33, generator=g).float())
        self.register_buffer("steps", torch.arange(10).float() * seed)
        self.legacy = nn.Parameter(torch.Tensor(3, 5).fill_(float(seed)))


def state(m: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_concurrent_build_and_materialize_equal_sequential():
    seeds = list(range(1, 9))
    eager = {s: state(Seeded(s)) for s in seeds}
    models: Dict[int, nn.Module] = {}
    errors: List[BaseException] = []
    barrier = threading.Barrier(len(seeds))

    def build(seed: int) -> None:
        try:
            barrier.wait()
            with lazyinit.LazyInitContext():
                models[seed] = Seeded(seed)
        except BaseException as e:  # surfaced below
            errors.append(e)

    def materialize(seed: int) -> None:
        try:
            barrier.wait()
            lazyinit.materialize(models[seed], "cpu")
        except BaseException as e:
            errors.append(e)

    for target in (build, materialize):
        threads = [threading.Thread(target=target, args=(s,)) for s in seeds]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
    for s in seeds:
        assert not lazyinit.is_lazy(models[s])
        got = models[s].state_dict()
        for k, v in eager[s].items():
            assert torch.equal(got[k], v), (s, k)


def test_context_in_one_thread_leaves_others_alone():
    seen: Dict[str, str] = {}
    inside = threading.Event()
    done = threading.Event()

    def other() -> None:
        inside.wait()
        seen["factory"] = torch.empty(2).device.type
        seen["legacy"] = torch.Tensor(2, 2).device.type
        seen["typed"] = torch.FloatTensor(2).device.type
        done.set()

    t = threading.Thread(target=other)
    t.start()
    with lazyinit.LazyInitContext():
        inside.set()
        done.wait()
        assert torch.Tensor(2, 2).device.type == "lazy"
    t.join()
    assert seen == {"factory": "cpu", "legacy": "cpu", "typed": "cpu"}


def test_factories_are_restored_and_device_contexts_still_work() -> None:
    """The context swaps torch's factories while it is active (cheaper than a
    TorchFunctionMode, which sees every torch call): afterwards the
    originals are back, and torch's own device contexts, which look
    factories up by identity, still recognise them."""
    before = {name: getattr(torch, name) for name in ("empty", "zeros", "randn", "tensor")}
    with lazyinit.LazyInitContext():
        assert torch.empty is not before["empty"]
        assert torch.zeros(3).device.type == "lazy"
        assert torch.tensor([1.0]).device.type == "lazy"
        assert torch.zeros(3, device="cpu").device.type == "cpu"
        assert torch.randn(2, out=torch.empty(2, device="cpu")).device.type == "cpu"
    assert {name: getattr(torch, name) for name in before} == before
    if hasattr(torch.device, "__enter__"):  # torch >= 2.0
        with torch.device("meta"):
            assert torch.empty(2).device.type == "meta"


def test_context_pauses_gc_and_restores_it() -> None:
    import gc
    assert gc.isenabled()
    with lazyinit.LazyInitContext():
        assert not gc.isenabled()
    assert gc.isenabled()
    with lazyinit.LazyInitContext(pause_gc=False):
        assert gc.isenabled()
    gc.disable()
    try:
        with lazyinit.LazyInitContext():
            pass
        assert not gc.isenabled()  # left as the user had it
    finally:
        gc.enable()
    try:
        with lazyinit.LazyInitContext():
            raise KeyError("x")
    except KeyError:
        pass
    assert gc.isenabled()
