"""Actionable errors where torch's engines get a lazy model they cannot use."""
from __future__ import annotations

import functools
from typing import Any

import torch.nn as nn

from .. import _C


def _has_lazy(module: Any) -> bool:
    if not isinstance(module, nn.Module):
        return False
    return any(_C._tensor_state(t) == 1 for _, t, _ in _C._module_tensors(module, True))


def install() -> None:
    """Makes ``DistributedDataParallel(lazy_model)`` (which fails inside torch
    with "No backend type associated with device type lazy") raise an error
    that says what to do instead. Nothing changes for other modules."""
    try:
        from torch.nn.parallel import DistributedDataParallel
    except Exception:  # noqa: BLE001 - a torch without distributed
        return
    original = DistributedDataParallel.__init__
    if getattr(original, "__lazyinit_original__", None) is not None:
        return

    @functools.wraps(original)
    def __init__(self: Any, module: Any, *args: Any, **kwargs: Any) -> None:
        if _has_lazy(module):
            raise RuntimeError(
                "lazyinit: DistributedDataParallel got a model with lazy tensors, which DDP "
                "cannot place. Use lazyinit.distributed.ddp(model, device, ...) (every rank "
                "materializes the same eager values itself; DDP's broadcast is skipped where "
                "torch allows), or lazyinit.materialize(model, device) before DDP.")
        original(self, module, *args, **kwargs)

    __init__.__lazyinit_original__ = original  # type: ignore[attr-defined]
    DistributedDataParallel.__init__ = __init__  # type: ignore[method-assign]
