"""DistributedDataParallel of a lazy model."""
from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn as nn

from .._materialize import DeviceLike, is_lazy, materialize
from ._slots import slots

_CHUNK = 1 << 22  # elements hashed at a time


def _ddp_init_sync_supported() -> bool:
    from torch.nn.parallel import DistributedDataParallel
    return "init_sync" in inspect.signature(DistributedDataParallel.__init__).parameters


def _int_view(t: torch.Tensor) -> torch.Tensor:
    flat = t.detach().contiguous().reshape(-1)
    if flat.dtype == torch.bool:
        return flat.to(torch.uint8)
    if flat.is_floating_point():
        size = flat.element_size()
        as_int = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}[size]
        return flat.view(as_int)
    if flat.is_complex():
        return _int_view(torch.view_as_real(flat))
    return flat


def checksum(module: nn.Module) -> int:
    """A position-weighted sum of the bits of every parameter and buffer
    (tied tensors once), as a Python int: equal bits give equal checksums,
    and any changed element changes it with near certainty."""
    total = 0
    seen = set()
    for index, (_, t) in enumerate(slots(module)):
        if id(t) in seen:
            continue
        seen.add(id(t))
        bits = _int_view(t)
        acc = torch.zeros((), dtype=torch.int64)
        for start in range(0, bits.numel(), _CHUNK):
            part = bits[start:start + _CHUNK].to(torch.int64)
            weights = torch.arange(start, start + part.numel(), dtype=torch.int64) % 65521 + 1
            acc += (part.cpu() * weights).sum()
        total = (total * 1000003 + int(acc) + index) % (1 << 61)
    return total


def verify_replicas(module: nn.Module, process_group: Any = None) -> None:
    """Raises if this rank's parameters and buffers differ from another
    rank's (one all_gather of a checksum each)."""
    import torch.distributed as dist
    mine = checksum(module)
    world = dist.get_world_size(process_group)
    gathered = [None] * world
    dist.all_gather_object(gathered, mine, group=process_group)
    if len(set(gathered)) != 1:
        raise RuntimeError(
            f"lazyinit.distributed: the replicas differ across ranks (checksums {gathered}). "
            "Every rank must build the model with the same code and seed "
            "(torch.manual_seed before LazyInitContext).")


def ddp(module: nn.Module, device: DeviceLike = None, *, verify: bool = False,
        process_group: Any = None, **kwargs: Any) -> nn.Module:
    """``DistributedDataParallel`` of a lazy ``module`` in one call.

    Every rank materializes the whole model on ``device`` itself (default:
    ``kwargs["device_ids"][0]`` when given, else the current CUDA device,
    else the CPU): built with the same seed, the ranks get the same (eager)
    values, so DDP's broadcast of rank 0's tensors is skipped where torch has
    ``init_sync`` (2.7+); on older torch DDP broadcasts them once, which
    changes nothing. ``verify=True`` checks across ranks that every replica
    is equal (one small all_gather). Other arguments go to
    ``DistributedDataParallel``. Returns the DDP module.
    """
    from torch.nn.parallel import DistributedDataParallel
    if device is None:
        ids = kwargs.get("device_ids")
        if ids:
            device = ids[0]
        else:
            device = "cuda" if torch.cuda.is_available() else "cpu"
    if is_lazy(module):
        materialize(module, device)
    if verify:
        verify_replicas(module, process_group)
    if "init_sync" not in kwargs and _ddp_init_sync_supported():
        kwargs["init_sync"] = False
    return DistributedDataParallel(module, process_group=process_group, **kwargs)
