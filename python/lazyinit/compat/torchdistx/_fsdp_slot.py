"""FSDP1's torchdistX slot, served by lazyinit.

FSDP1 (``FullyShardedDataParallel``) imports ``torchdistx``'s
``deferred_init`` and ``fake`` modules where installed and, for a unit whose
parameters ``fake.is_fake``, calls ``deferred_init.materialize_module(unit,
check_fn=...)`` before flattening it (torch 2.x: module globals
``_TORCHDISTX_AVAIL``, ``deferred_init``, ``fake`` of
``torch.distributed.fsdp._init_utils``; torch 1.13: of
``torch.distributed.fsdp.fully_sharded_data_parallel``). Where torchdistX is
not installed, those globals are set to lazyinit's counterparts once the
FSDP1 module is imported, so that ``FSDP(deferred_init(Model),
device_id=...)`` materializes each unit with eager values, as FSDP1 did with
torchdistX. A real torchdistX, where installed, is left in place.
"""
from __future__ import annotations

from types import ModuleType

from ...distributed import _guards

#: FSDP1's modules that hold the slot, newest torch first.
SLOT_MODULES = (
    "torch.distributed.fsdp._init_utils",
    "torch.distributed.fsdp.fully_sharded_data_parallel",
)


def _fill(fsdp_module: ModuleType) -> None:
    if not hasattr(fsdp_module, "_TORCHDISTX_AVAIL"):
        return  # not the module that holds the slot in this torch
    from . import deferred_init, fake
    current = getattr(fsdp_module, "deferred_init", None)
    if fsdp_module._TORCHDISTX_AVAIL and current is not deferred_init:
        return  # the real torchdistX is installed: it keeps the slot
    fsdp_module.deferred_init = deferred_init
    fsdp_module.fake = fake
    fsdp_module._TORCHDISTX_AVAIL = True
    _guards.torchdistx_slot_served = True


def install() -> None:
    """Fills the slot now, or when FSDP1 is first imported (idempotent)."""
    for name in SLOT_MODULES:
        _guards.after_import(name, _fill)


def served() -> bool:
    """Whether FSDP1's torchdistX slot is lazyinit's (once FSDP1 is imported)."""
    return bool(_guards.torchdistx_slot_served)
