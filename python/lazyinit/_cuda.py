"""CUDA bookkeeping: what the C++ replay needs to know about CUDA devices.

Exact CUDA replay (``philox.h``) computes where eager construction's Philox
generator would be before each random op. That needs each device's launch
grid, which is read here once torch initializes CUDA (so importing lazyinit
initializes nothing), and torch's own lazy CUDA initialization to have run
before lazyinit creates CUDA tensors from C++, so that a pending
``torch.manual_seed`` reaches the CUDA generators first.
"""
from __future__ import annotations

import warnings

import torch

from . import _C

_BLOCK_SIZE = 256  # threads a block of PyTorch's distribution kernels


def _grid_limits() -> None:
    try:
        limits = []
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            threads = getattr(props, "max_threads_per_multi_processor", 0)
            limits.append(props.multi_processor_count * (threads // _BLOCK_SIZE))
        _C._set_philox_grid_limits(limits)
    except Exception as e:  # never break torch's CUDA initialization
        _C._set_philox_grid_limits([])  # initialized all the same
        warnings.warn(f"lazyinit: CUDA device properties unavailable ({e}); "
                      "random ops replayed on CUDA will be measured, not computed")


def watch_initialization() -> None:
    """Arranges for the device grids to reach the C++ side when torch
    initializes CUDA (at once if it already has)."""
    if not torch.backends.cuda.is_built():
        return
    lazy_call = getattr(torch.cuda, "_lazy_call", None)
    if lazy_call is not None:
        lazy_call(_grid_limits)


def ensure_initialized() -> None:
    """Runs torch's lazy CUDA initialization (queued seeds included) before
    lazyinit puts tensors on CUDA. Raises torch's error when CUDA is missing."""
    if torch.backends.cuda.is_built() and torch.cuda.is_available():
        torch.cuda.init()
