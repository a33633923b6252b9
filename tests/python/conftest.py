"""Shared helpers for the lazyinit Python tests.

Run with the Debian interpreter (torch 1.13.1 lives there, not in the PATH python3):

    PYTHONPATH=python /usr/bin/python3 -m pytest -q tests/python

``python/`` is also put on sys.path here, so PYTHONPATH is optional. The compiled
extension (python/lazyinit/_C*.so, built by ``make build``) must exist: a missing
build is an error, not a skip.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import Dict, List

import pytest
import torch
import torch.nn as nn

_HERE = os.path.dirname(os.path.abspath(__file__))
_PY = os.path.normpath(os.path.join(_HERE, "..", "..", "python"))
if _PY not in sys.path:
    sys.path.insert(0, _PY)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


# --------------------------------------------------------------------------
# walking a module
# --------------------------------------------------------------------------

def named_tensors(module: nn.Module) -> Dict[str, torch.Tensor]:
    """Every parameter and buffer by its full name, non-persistent buffers and
    tied duplicates included (torch 1.13 ``named_parameters`` has no
    ``remove_duplicate`` argument, so walk ``_parameters``/``_buffers``)."""
    out: Dict[str, torch.Tensor] = {}
    for mod_name, mod in module.named_modules(remove_duplicate=False):
        prefix = mod_name + "." if mod_name else ""
        for n, t in mod._parameters.items():
            if t is not None:
                out[prefix + n] = t
        for n, t in mod._buffers.items():
            if t is not None:
                out[prefix + n] = t
    return out


def named_plain_tensor_attrs(module: nn.Module) -> Dict[str, torch.Tensor]:
    """Tensors held as plain attributes (not params/buffers), e.g. the
    ``weight`` spectral_norm keeps as ``weight_orig.data``."""
    out: Dict[str, torch.Tensor] = {}
    for mod_name, mod in module.named_modules(remove_duplicate=False):
        prefix = mod_name + "." if mod_name else ""
        for n, v in vars(mod).items():
            if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter):
                out[prefix + n] = v
    return out


def unique_tensors(module: nn.Module) -> List[torch.Tensor]:
    seen, out = set(), []
    for t in named_tensors(module).values():
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def storage_ptr(t: torch.Tensor) -> int:
    if hasattr(t, "untyped_storage"):
        return t.untyped_storage().data_ptr()
    return t.storage().data_ptr()


# --------------------------------------------------------------------------
# assertions
# --------------------------------------------------------------------------

def assert_tensor_equal(name: str, expected: torch.Tensor, actual: torch.Tensor):
    """Bitwise equality plus full metadata of a materialized tensor."""
    import lazyinit
    assert not lazyinit.is_lazy(actual), f"{name}: still lazy after materialization"
    assert actual.device == expected.device, f"{name}: device {actual.device} != {expected.device}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.stride() == expected.stride(), f"{name}: stride {actual.stride()} != {expected.stride()}"
    assert actual.storage_offset() == expected.storage_offset(), \
        f"{name}: storage_offset {actual.storage_offset()} != {expected.storage_offset()}"
    assert type(actual) is type(expected), f"{name}: type {type(actual)} != {type(expected)}"
    assert actual.requires_grad == expected.requires_grad, f"{name}: requires_grad differs"
    if not torch.equal(actual, expected):
        diff = (actual.double() - expected.double()).abs()
        raise AssertionError(
            f"{name}: values differ: {int((diff != 0).sum())}/{diff.numel()} elements, "
            f"max abs diff {diff.max().item():.3g}\nexpected[:8]={expected.flatten()[:8]}\n"
            f"actual[:8]={actual.flatten()[:8]}")


def assert_modules_equal(eager: nn.Module, lazy: nn.Module):
    """Same params and buffers (persistent or not), same state_dict keys,
    every tensor bitwise equal with identical metadata."""
    assert list(eager.state_dict().keys()) == list(lazy.state_dict().keys())
    e, l = named_tensors(eager), named_tensors(lazy)
    assert list(e.keys()) == list(l.keys())
    for name in e:
        assert_tensor_equal(name, e[name], l[name])
    # ties / sharing: which names point to one object must match
    assert _alias_groups(eager) == _alias_groups(lazy)


def _alias_groups(module: nn.Module):
    groups: Dict[int, List[str]] = {}
    for n, t in named_tensors(module).items():
        groups.setdefault(id(t), []).append(n)
    return sorted(tuple(v) for v in groups.values() if len(v) > 1)


def assert_rng_equal(expected: torch.Tensor, actual: torch.Tensor, what: str = "CPU RNG state"):
    assert torch.equal(expected, actual), (
        f"{what} after lazy construction + materialization differs from eager "
        f"(first differing byte index "
        f"{int((expected != actual).nonzero()[0]) if expected.shape == actual.shape else 'shape'})")


def assert_outputs_equal(expected, actual, path="out"):
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), f"{path}: {type(actual)}"
        assert_tensor_equal(path, expected.detach(), actual.detach())
    elif isinstance(expected, (tuple, list)):
        assert len(expected) == len(actual), path
        for i, (a, b) in enumerate(zip(expected, actual)):
            assert_outputs_equal(a, b, f"{path}[{i}]")
    else:
        assert expected == actual, path


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _restore_rng_and_gc():
    """Tests seed explicitly; restore the global RNG so tests stay independent."""
    state = torch.get_rng_state()
    yield
    torch.set_rng_state(state)
    gc.collect()


def pytest_report_header(config):
    try:
        import lazyinit
        where = os.path.dirname(lazyinit.__file__)
    except Exception as e:  # reported, then the tests themselves fail on import
        where = f"NOT IMPORTABLE ({type(e).__name__}: {e})"
    return [f"torch {torch.__version__}; lazyinit from {where}"]


def pytest_configure(config):
    # registered here so that no pytest.ini is needed (test_zoo.py marks its
    # large models with it; LAZYINIT_SLOW=1 runs them)
    config.addinivalue_line("markers", "slow: large/slow model zoo entry; run with LAZYINIT_SLOW=1")
