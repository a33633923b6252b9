"""Registration: "lazy" is a device, and importing lazyinit changes nothing
for CPU / CUDA code (pinning, DataLoader, torch.cuda, torch.accelerator)."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

import lazyinit


def test_lazy_is_a_device_with_the_expected_key():
    t = torch.empty(2, 3, device="lazy")
    assert t.device.type == "lazy"
    assert lazyinit.device_type == "lazy"
    assert lazyinit.is_lazy(t)
    # The Lazy dispatch key on every torch; PrivateUse1 stays free (and
    # unnamed) for other backends.
    assert getattr(t, "is_lazy", True)  # Tensor.is_lazy: torch >= 2
    name = getattr(torch._C, "_get_privateuse1_backend_name", None)
    assert name is None or name() == "privateuseone"
    assert hasattr(torch, "lazy") and torch.lazy.device_count() == 1


def test_module_factories_take_the_lazy_device():
    lin = torch.nn.Linear(4, 4, device="lazy")
    assert lazyinit.is_lazy(lin.weight) and lin.weight.device.type == "lazy"
    assert isinstance(lin.weight, torch.nn.Parameter)


def test_repr_does_not_materialize():
    w = torch.empty(32000, 4096, device="lazy")
    assert repr(w) == "tensor(..., device='lazy', size=(32000, 4096))"
    assert lazyinit.is_lazy(w)


def test_cpu_code_is_unaffected_pinning_and_dataloader():
    x = torch.arange(12.0).reshape(6, 2)
    loader = DataLoader(TensorDataset(x), batch_size=3, pin_memory=True)
    batches = [b[0] for b in loader]
    assert torch.equal(torch.cat(batches), x)
    assert not x.is_pinned()
    if torch.cuda.is_available():
        assert x.pin_memory().is_pinned()
        assert all(b.is_pinned() for b in batches)


def test_torch_cuda_and_accelerator_are_unaffected():
    assert isinstance(torch.cuda.is_available(), bool)
    if torch.cuda.is_available():
        y = torch.ones(3, device="cuda") * 2
        assert y.device.type == "cuda" and torch.equal(y.cpu(), torch.full((3,), 2.0))
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None:
        assert isinstance(accelerator.is_available(), bool)
        accelerator.current_accelerator()


def test_dtype_moves_stay_lazy_and_device_moves_materialize():
    torch.manual_seed(0)
    eager = torch.randn(4, 4).to(torch.float64)
    torch.manual_seed(0)
    t = torch.randn(4, 4, device="lazy")
    d = t.to(torch.float64)
    assert lazyinit.is_lazy(d) and d.dtype == torch.float64
    same = d.cpu()
    assert same is d and not lazyinit.is_lazy(d)
    assert torch.equal(d, eager)
