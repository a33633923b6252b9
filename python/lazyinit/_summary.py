"""ColossalAI's lazy-rate summary of a module (``verbose=True``).

ColossalAI's ``LazyInitContext.materialize(module, verbose=True)`` and
``distribute(..., verbose=True)`` print, before materializing, three lines
on rank 0::

    Param lazy rate: 3/4
    Buffer lazy rate: 0/1
    Non lazy numel: 1024 (0.001 M), ratio: 12.5%

Parameters and buffers are counted as ``named_parameters()`` and
``named_buffers()`` give them (a tied tensor once). A tensor is *lazy* when
its values are still unknown: a lazy tensor whose values no op needed early.
Real tensors and lazy tensors whose values were computed early (``item()``,
ops without a Meta kernel) are *non-lazy*, as ColossalAI counts its
early-materialized tensors; their elements make up the non-lazy numel.
"""
from __future__ import annotations

import dataclasses
from typing import List

import torch

from . import _C

_LAZY = 1


@dataclasses.dataclass
class LazyRate:
    """The counts behind the summary."""

    params: int = 0
    params_lazy: int = 0
    buffers: int = 0
    buffers_lazy: int = 0
    numel: int = 0
    non_lazy_numel: int = 0

    def lines(self) -> List[str]:
        """The summary, ColossalAI's three lines. The ratio is printed as
        ColossalAI prints it: the integer 0 when nothing is non-lazy, else a
        float percentage of every counted element."""
        ratio = (self.non_lazy_numel / self.numel * 100) if self.non_lazy_numel != 0 else 0
        return [
            f"Param lazy rate: {self.params_lazy}/{self.params}",
            f"Buffer lazy rate: {self.buffers_lazy}/{self.buffers}",
            f"Non lazy numel: {self.non_lazy_numel} "
            f"({self.non_lazy_numel / 1024 ** 2:.3f} M), ratio: {ratio}%",
        ]


def _still_lazy(t: torch.Tensor) -> bool:
    return _C._tensor_state(t) == _LAZY and not _C._was_early(t)


def lazy_rate(module: torch.nn.Module) -> LazyRate:
    """Counts ``module``'s parameters and buffers as ColossalAI's summary
    does (see the module docstring)."""
    rate = LazyRate()
    for _, p in module.named_parameters():
        rate.params += 1
        rate.numel += p.numel()
        if _still_lazy(p):
            rate.params_lazy += 1
        else:
            rate.non_lazy_numel += p.numel()
    for _, b in module.named_buffers():
        rate.buffers += 1
        rate.numel += b.numel()
        if _still_lazy(b):
            rate.buffers_lazy += 1
        else:
            rate.non_lazy_numel += b.numel()
    return rate


def _is_rank_0() -> bool:
    dist = getattr(torch, "distributed", None)
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return True
    return dist.get_rank() == 0


def print_summary(module: torch.nn.Module) -> None:
    """Prints ``module``'s lazy-rate summary (ColossalAI's format) on rank 0,
    or everywhere when torch.distributed is not initialized."""
    if _is_rank_0():
        for line in lazy_rate(module).lines():
            print(line)
