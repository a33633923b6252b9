"""``t.materialize()`` on lazy tensors (ColossalAI's ``LazyTensor.materialize``).

Lazy tensors are plain ``torch.Tensor`` objects (their class is
``Tensor`` or ``Parameter``), so the method is an attribute of
``torch.Tensor``: a descriptor that, read from a lazy tensor (or one lazyinit
has materialized), gives the bound method, and read from any other tensor
raises ``AttributeError`` as an unknown attribute does (``hasattr(t,
"materialize")`` stays ``False`` for them, so duck-typing code is unaffected).
Nothing else about tensors changes: no subclass, no ``__torch_function__``,
and attribute reads other than ``materialize`` never reach it.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import torch

from .. import _C
from .._materialize import materialize

_REAL, _LAZY, _MATERIALIZED, _DISCARDED = 0, 1, 2, 3
_ATTRIBUTE = "materialize"


def materialize_in_place(tensor: torch.Tensor) -> torch.Tensor:
    """Materializes a lazy ``tensor`` in place on its default device (the
    ``default_device`` of the context it was created in; CPU if none) and
    returns it, the same object. A tensor lazyinit has already materialized
    is returned as it is."""
    state = _C._tensor_state(tensor)
    if state == _REAL:
        raise TypeError(_not_lazy_message(tensor))
    if state == _LAZY or state == _DISCARDED:  # a discarded one raises lazyinit's error
        materialize(tensor)
    return tensor


def _not_lazy_message(tensor: torch.Tensor) -> str:
    kind = "Parameter" if isinstance(tensor, torch.nn.Parameter) else "Tensor"
    return (f"'{kind}' object has no attribute 'materialize': lazyinit.compat.colossalai gives "
            f"materialize() to lazy tensors only, and this {kind.lower()} is real (on "
            f"{tensor.device}): created outside a LazyInitContext or with an explicit device=, "
            "or computed from a tensor that .to() / .cuda() / .cpu() had already materialized "
            "(lazyinit materializes at those calls, where ColossalAI's LazyTensor stays lazy). "
            "Check isinstance(t, lazyinit.compat.colossalai.LazyTensor) before calling it.")


class MaterializeMethod:
    """``torch.Tensor.materialize``: ColossalAI's ``LazyTensor.materialize()``
    for lazyinit's lazy tensors (see the module docstring)."""

    def __get__(self, obj: Optional[torch.Tensor], objtype: Any = None) -> Any:
        if obj is None:
            return self
        if _C._tensor_state(obj) == _REAL:
            raise AttributeError(_not_lazy_message(obj))
        return functools.partial(materialize_in_place, obj)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        """``torch.Tensor.materialize(t)``, the unbound spelling."""
        return materialize_in_place(tensor)


def install() -> None:
    """Adds ``materialize`` to ``torch.Tensor`` (once). Refuses to replace an
    attribute of that name that is not lazyinit's."""
    existing = torch.Tensor.__dict__.get(_ATTRIBUTE)
    if isinstance(existing, MaterializeMethod):
        return
    if existing is not None or hasattr(torch.Tensor, _ATTRIBUTE):
        raise RuntimeError(
            "lazyinit.compat.colossalai: torch.Tensor already has a 'materialize' attribute "
            f"({existing!r}), which lazyinit will not replace. Materialize lazy tensors with "
            "lazyinit.materialize(t) instead of t.materialize().")
    setattr(torch.Tensor, _ATTRIBUTE, MaterializeMethod())
