"""materialize(module, flat=True): one allocation per device and dtype, each
tensor in a storage of its own over its slice."""
from __future__ import annotations

import io
import gc
import warnings
import weakref

import pytest
import torch
import torch.nn as nn

import lazyinit
from models import Llama, llama_config


def _model() -> nn.Module:
    m = Llama(llama_config("tiny"))
    m.extra = nn.Linear(5, 3).to(torch.float64)  # a second dtype
    return m


def _build(lazy: bool) -> nn.Module:
    torch.manual_seed(3)
    if not lazy:
        return _model()
    with lazyinit.LazyInitContext():
        return _model()


def _tensors(m: nn.Module):
    return list(m.parameters()) + list(m.buffers())


def _storage(t: torch.Tensor):
    return t.untyped_storage() if hasattr(t, "untyped_storage") else t.storage()


@pytest.mark.parametrize("flat", [True, False])
def test_values_and_metadata_equal_eager(flat: bool) -> None:
    eager = _build(lazy=False)
    lazy = _build(lazy=True)
    lazyinit.materialize(lazy, "cpu", flat=flat)
    ref, got = eager.state_dict(), lazy.state_dict()
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
        assert got[k].storage_offset() == ref[k].storage_offset() == 0, k
        assert _storage(got[k]).nbytes() == _storage(ref[k]).nbytes(), k
    ptrs = [_storage(t).data_ptr() for t in _tensors(lazy)]
    assert len(set(ptrs)) == len(ptrs)  # no storage shared


def test_one_allocation_per_dtype_in_module_order() -> None:
    lazy = _build(lazy=True)
    lazyinit.materialize(lazy, "cpu")
    by_dtype = {}
    for t in _tensors(lazy):
        by_dtype.setdefault(t.dtype, []).append(t)
    assert set(by_dtype) == {torch.float32, torch.float64}
    for tensors in by_dtype.values():
        ptrs = [t.data_ptr() for t in tensors]
        assert all((p - ptrs[0]) % 512 == 0 for p in ptrs)
        # Consecutive slices of one buffer: each starts where the previous
        # one ends, rounded up to 512 bytes.
        for a, b in zip(tensors, tensors[1:]):
            end = a.data_ptr() + a.numel() * a.element_size()
            assert b.data_ptr() - ptrs[0] == (end - ptrs[0] + 511) // 512 * 512


def test_training_state_dict_and_save_load() -> None:
    lazy = _build(lazy=True)
    lazyinit.materialize(lazy, "cpu")
    opt = torch.optim.AdamW(lazy.parameters(), lr=1e-3)
    x = torch.randint(0, llama_config("tiny").vocab_size, (2, 7))
    lazy(x).float().sum().backward()
    opt.step()
    buf = io.BytesIO()
    torch.save(lazy.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf)
    for k, v in lazy.state_dict().items():
        assert torch.equal(loaded[k], v), k
        assert _storage(loaded[k]).nbytes() == _storage(v).nbytes(), k
    fresh = _build(lazy=True)
    lazyinit.materialize(fresh, "cpu")
    fresh.load_state_dict(loaded)
    for k, v in lazy.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_resizing_a_slice_is_eager_and_memory_lives_while_a_slice_does() -> None:
    """A slice resizes as an eager tensor does (an out= argument of another
    size moves it to memory of its own); its neighbours keep their values."""
    lazy = _build(lazy=True)
    eager = _build(lazy=False)
    lazyinit.materialize(lazy, "cpu")
    for m in (lazy, eager):
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "An output ... was resized"
            torch.add(m.extra.weight, 1.0, out=m.extra.bias)
    ref, got = eager.state_dict(), lazy.state_dict()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    w = lazy.extra.weight
    keep = lazy.extra.bias.detach()
    values = keep.clone()
    ref = weakref.ref(lazy)
    del lazy, w
    gc.collect()
    assert ref() is None
    assert torch.equal(keep, values)  # the buffer outlives the module
