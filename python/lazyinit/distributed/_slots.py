"""The tensors of a module by slot, and meta shadows of its lazy ones.

A *slot* is one entry of a module's ``_parameters`` or ``_buffers``. A tied
weight is one tensor in several slots. Engines (FSDP2, tensor parallelism)
replace the objects in slots, so lazyinit keeps, for each slot, the lazy
tensor it held (its *source*) and finds the slot's new object afterwards.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn

from .. import _C
from .._materialize import plain_tensor_attributes  # noqa: F401 (used by _deferred)

_REAL, _LAZY, _MATERIALIZED = 0, 1, 2
KINDS = ("_parameters", "_buffers")
SlotKey = Tuple[int, str, str]  # (id(module), kind, name)


@dataclasses.dataclass
class Slot:
    """One ``_parameters`` / ``_buffers`` entry, under its first name."""

    qualname: str
    module: nn.Module
    kind: str
    name: str

    @property
    def key(self) -> SlotKey:
        return (id(self.module), self.kind, self.name)

    def get(self) -> Optional[torch.Tensor]:
        return getattr(self.module, self.kind).get(self.name)

    def set(self, tensor: torch.Tensor) -> None:
        getattr(self.module, self.kind)[self.name] = tensor


def slots(module: nn.Module) -> Iterator[Tuple[Slot, torch.Tensor]]:
    """Every non-None slot of ``module`` once (a submodule reachable twice is
    walked once), with its tensor, in ``named_modules`` order."""
    seen = set()
    for qual, mod in module.named_modules(remove_duplicate=False):
        prefix = qual + "." if qual else ""
        for kind in KINDS:
            for name, t in getattr(mod, kind).items():
                if t is None or (id(mod), kind, name) in seen:
                    continue
                seen.add((id(mod), kind, name))
                yield Slot(prefix + name, mod, kind, name), t


def state(t: torch.Tensor) -> int:
    return _C._tensor_state(t)


def is_dtensor(t: torch.Tensor) -> bool:
    return hasattr(t, "device_mesh") and hasattr(t, "_local_tensor")


def meta_shadow(t: torch.Tensor) -> torch.Tensor:
    """A meta tensor of ``t``'s geometry, dtype, kind (Parameter or not) and
    Python attributes."""
    with torch.no_grad():
        meta = torch.empty_strided(tuple(t.shape), tuple(t.stride()), dtype=t.dtype,
                                   device="meta")
    if isinstance(t, nn.Parameter):
        shadow: torch.Tensor = nn.Parameter(meta, requires_grad=t.requires_grad)
    else:
        shadow = meta.requires_grad_(t.requires_grad)
    shadow.__dict__.update(t.__dict__)
    return shadow


class Shadowed:
    """A lazy module whose lazy tensors are swapped for meta shadows (one
    shadow per lazy tensor, so a tie stays one tensor), with every slot's
    lazy source recorded. ``restore()`` puts the sources back."""

    def __init__(self, module: nn.Module, what: str) -> None:
        self.module = module
        entries = list(slots(module))
        lazy = [(s, t) for s, t in entries if state(t) == _LAZY]
        materialized = [s.qualname for s, t in entries if state(t) == _MATERIALIZED]
        meta = [s.qualname for s, t in entries if state(t) == _REAL and t.is_meta]
        if materialized:
            raise RuntimeError(
                f"lazyinit: {what} got a model that is already partly materialized "
                f"({len(materialized)} tensor(s), e.g. {', '.join(materialized[:3])}); its "
                "tensors are real now and lazyinit cannot give each rank only its piece of them. "
                "Build the model again under lazyinit.LazyInitContext() and hand it over "
                "before anything materializes it (printing values, .to(device), an engine "
                "called on it directly).")
        if meta:
            raise RuntimeError(
                f"lazyinit: {what} got meta tensors ({', '.join(meta[:3])}), which hold no "
                "values. Build the model under lazyinit.LazyInitContext() instead of the meta "
                "device.")
        if not lazy:
            raise RuntimeError(
                f"lazyinit: {what} got a model with no lazy tensor. Build it under "
                "lazyinit.LazyInitContext(), or use torch's engines on it directly.")
        #: slot key -> (slot, lazy source or real tensor it held)
        self.sources: Dict[SlotKey, Tuple[Slot, torch.Tensor]] = {}
        #: id(shadow) -> source; the shadows are kept alive here
        self.source_of_shadow: Dict[int, torch.Tensor] = {}
        self.shadows: List[torch.Tensor] = []
        shadow_of: Dict[int, torch.Tensor] = {}
        for slot, t in entries:
            if t.is_meta or state(t) != _LAZY:
                continue  # real tensors stay where they are
            shadow = shadow_of.get(id(t))
            if shadow is None:
                shadow = meta_shadow(t)
                shadow_of[id(t)] = shadow
                self.source_of_shadow[id(shadow)] = t
                self.shadows.append(shadow)
            self.sources[slot.key] = (slot, t)
        #: lazy tensors held as plain attributes (materialized whole later)
        self.plain_lazy = [(n, t) for n, t in plain_tensor_attributes(module)
                           if state(t) == _LAZY]
        for slot, t in self.sources.values():
            slot.set(shadow_of[id(t)])

    def restore(self) -> None:
        """Puts every recorded lazy source back in its slot."""
        for slot, source in self.sources.values():
            slot.set(source)

    def source(self, slot: Slot) -> Optional[torch.Tensor]:
        entry = self.sources.get(slot.key)
        return None if entry is None else entry[1]
