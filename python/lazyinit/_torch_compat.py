"""Every difference between the torch versions lazyinit supports, on the
Python side (the C++ side has ``include/lazyinit/core/compat.h``).

Each difference is recognised by what the running torch does or has, not
by its version number: a behaviour probe or a feature check.
"""
from __future__ import annotations

import importlib
import math
import sys
from typing import Any, Callable, Optional

import torch

# |z| of any standard normal sample torch's kernels can return: Box-Muller
# on a uniform of at most 53 random bits gives sqrt(-2 ln 2**-53) = 8.57
# (float32 kernels, CPU and CUDA, stay below 6.8); 9 leaves a margin.
_MAX_NORMAL_SAMPLE = 9.0


def import_dynamo_before_swaps() -> None:
    """Imports ``torch._dynamo`` where the torch has it and it is not loaded.

    torch >= 2 imports it on the first call of any Python-level Meta kernel
    (``torch._refs`` functions are wrapped by ``torch._disable_dynamo``,
    which imports it), and the import registers ``torch.Tensor.__new__`` and
    the factories by identity. Made inside a LazyInitContext, it would see
    lazyinit's stand-ins, fail, and leave ``torch._dynamo`` half-registered
    for the rest of the process (every later import raising "Duplicate
    dispatch rule"). Called before the first swap; costs the import once.
    """
    if "torch._dynamo" in sys.modules or not hasattr(torch, "compile"):
        return
    try:
        importlib.import_module("torch._dynamo")
    except Exception:  # an incomplete install: torch's own calls will say so
        pass


def _trunc_normal_inspects_values() -> bool:
    """Whether this torch's ``nn.init.trunc_normal_`` is a rejection sampler
    that reads the values it drew (torch 2.14: ``mask.any()`` in a loop)
    rather than an element-wise transform of one ``uniform_`` (earlier)."""
    fn = getattr(torch.nn.init, "_no_grad_trunc_normal_", None)
    code = getattr(fn, "__code__", None)
    return code is not None and "any" in code.co_names


def _round_to(dtype: torch.dtype, value: float) -> float:
    return torch.tensor(value, dtype=dtype, device="cpu").item()


def trunc_normal_never_rejects(dtype: torch.dtype, mean: float, std: float,
                               a: float, b: float) -> bool:
    """True when the rejection sampler's first ``normal_(mean, std)`` can
    produce no value outside ``[a, b]`` as the sampler compares them: every
    sample lies within ``_MAX_NORMAL_SAMPLE`` standard deviations (plus the
    float32 rounding of ``mean``), rounding to ``dtype`` is monotonic, and
    the sampler compares with ``a`` and ``b`` rounded to ``dtype``."""
    if not dtype.is_floating_point:
        return False
    try:
        mean, std, a, b = float(mean), float(std), float(a), float(b)
    except (TypeError, ValueError):
        return False
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0) or math.isnan(a) \
            or math.isnan(b):
        return False
    slack = _MAX_NORMAL_SAMPLE * std + abs(mean) * 2.0 ** -20
    low, high = mean - slack, mean + slack
    if not (math.isfinite(low) and math.isfinite(high)):
        return False
    return _round_to(dtype, a) <= _round_to(dtype, low) and \
        _round_to(dtype, b) >= _round_to(dtype, high)


def patch_trunc_normal(is_pending: Callable[[Any], bool]) -> None:
    """Keeps ``nn.init.trunc_normal_`` recordable where this torch's version
    reads values.

    torch 2.14's rejection sampler draws ``normal_(mean, std)`` and then
    asks ``mask.any()`` whether any value fell outside ``[a, b]``; on a lazy
    tensor that question computes the tensor during construction. Where the
    bounds are wide enough that no sample can fall outside them (the usual
    ``std=0.02, a=-2, b=2``), the answer is known to be "no", and eager's
    whole effect is that one ``normal_``: it is recorded as such, so the
    tensor stays lazy and its shards are computed piece by piece. Narrower
    bounds run torch's own code (values computed early, exact).
    """
    if not _trunc_normal_inspects_values():
        return
    init = torch.nn.init
    original = init._no_grad_trunc_normal_
    if getattr(original, "__lazyinit_original__", None) is not None:
        return

    def _no_grad_trunc_normal_(tensor: torch.Tensor, mean: float, std: float, a: float,
                               b: float, *args: Any, **kwargs: Any) -> torch.Tensor:
        if is_pending(tensor) and trunc_normal_never_rejects(tensor.dtype, mean, std, a, b):
            generator: Optional[torch.Generator] = args[0] if args else kwargs.get("generator")
            with torch.no_grad():
                return tensor.normal_(mean, std, generator=generator)
        return original(tensor, mean, std, a, b, *args, **kwargs)

    _no_grad_trunc_normal_.__doc__ = original.__doc__
    _no_grad_trunc_normal_.__lazyinit_original__ = original  # type: ignore[attr-defined]
    init._no_grad_trunc_normal_ = _no_grad_trunc_normal_


def install(is_pending: Callable[[Any], bool]) -> None:
    """Installs the patches this torch needs (once; called at import)."""
    patch_trunc_normal(is_pending)
