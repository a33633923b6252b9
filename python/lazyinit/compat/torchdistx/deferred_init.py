"""torchdistX's Deferred Module Initialization (``torchdistx.deferred_init``)
on lazyinit.

``deferred_init(module_fn, *args, **kwargs)`` builds the module with every
tensor lazy, also those made with an explicit ``device=`` (they are
materialized on that device), as torchdistX builds them fake.
``materialize_module`` / ``materialize_tensor`` replay them with the values
eager construction with the same seed would have given (torchdistX replays
without the random generator's positions).

Materialization is in place: every tensor keeps its Python object, so tied
weights stay tied and references stay valid (``materialize_tensor`` returns
the tensor it was given; torchdistX returns a new object and fails on a
tie's second name with "has already been materialized"). A lazy tensor
reports device ``lazy`` where torchdistX's fake tensor reports the device it
will have.

This module is callable: ``deferred_init(Model)`` is
``deferred_init.deferred_init(Model)``, so both of torchdistX's import
styles work with the import line changed.
"""
from __future__ import annotations

import sys
import types
from typing import Any, Callable, Dict, List, Optional, Union

from torch import Tensor
from torch.nn import Module

from ... import _C
from ..._context import LazyInitContext
from ..._materialize import is_lazy

_REAL, _LAZY = 0, 1


class _DeferredInitContext(LazyInitContext):
    """A LazyInitContext in which explicitly placed factories record too."""

    _defer_explicit_devices = True


def deferred_init(module_fn: Callable[..., Module], *args: Any, **kwargs: Any) -> Module:
    """Defers the initialization of a ``Module``: calls ``module_fn(*args,
    **kwargs)`` with every tensor it creates recorded on the lazy device
    (nothing allocated), and returns its result. Tensors created with an
    explicit ``device=`` are recorded too and materialize on that device;
    the others on the CPU. Calls cannot be nested (nor made inside a
    ``LazyInitContext``). Ops applied to the returned module's lazy tensors
    afterwards are recorded too (torchdistX records only inside
    ``deferred_init``)."""
    with _DeferredInitContext():
        return module_fn(*args, **kwargs)


def materialize_tensor(tensor: Tensor) -> Tensor:
    """Materializes ``tensor`` in place on its device (the one its factory
    named, else the CPU) and returns it: the same object, now real, with
    the values eager construction would have given. A tensor that is not
    lazy is returned as it is."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"materialize_tensor expects a torch.Tensor, got "
                        f"{type(tensor).__qualname__}")
    if _C._tensor_state(tensor) != _REAL:
        _C._materialize(tensor, None)
        _C._finish()
    return tensor


def _own_lazy_attributes(module: Module) -> List[Tensor]:
    """Lazy tensors ``module`` itself holds as plain attributes (weight_norm's
    computed weight), directly or in a list, tuple or dict."""
    out: List[Tensor] = []
    for name, value in vars(module).items():
        if name in ("_parameters", "_buffers", "_modules"):
            continue
        if isinstance(value, dict):
            values = list(value.values())
        elif isinstance(value, (list, tuple)):
            values = list(value)
        else:
            values = [value]
        out.extend(v for v in values if isinstance(v, Tensor)
                   and _C._tensor_state(v) == _LAZY)
    return out


def _lazy_entries(tensors: Dict[str, Optional[Tensor]]) -> List[Tensor]:
    return [t for t in tensors.values() if t is not None and _C._tensor_state(t) == _LAZY]


def materialize_module(module: Module, buffers_only: bool = False,
                       check_fn: Optional[Callable[[Module], bool]] = None) -> None:
    """Materializes ``module`` and its descendant modules in place:
    children first, then the module's own parameters (unless
    ``buffers_only``) and buffers, for each module for which ``check_fn``
    (if given) returns True. Tensors keep their objects: ties stay tied.
    Lazy tensors a module holds as plain attributes (weight_norm's
    ``weight``) are materialized with its parameters."""
    for child in module.children():
        materialize_module(child, buffers_only, check_fn)
    if check_fn is not None and not check_fn(module):
        return
    pending = [] if buffers_only else _lazy_entries(module._parameters)
    pending += _lazy_entries(module._buffers)
    if pending:
        _C._materialize_flat(pending, None)
    if not buffers_only:
        for t in _own_lazy_attributes(module):
            if _C._tensor_state(t) == _LAZY:
                _C._materialize(t, None, settle=False)
    _C._finish()


def is_deferred(obj: Union[Tensor, Module]) -> bool:
    """Whether a tensor still awaits materialization, or, for a module,
    whether any of its parameters, buffers or tensor attributes does."""
    if isinstance(obj, (Tensor, Module)):
        return is_lazy(obj)
    raise TypeError(f"is_deferred expects a torch.Tensor or nn.Module, got "
                    f"{type(obj).__qualname__}")


class _CallableModule(types.ModuleType):
    """``deferred_init`` the module calls ``deferred_init`` the function."""

    def __call__(self, module_fn: Callable[..., Module], *args: Any, **kwargs: Any) -> Module:
        return deferred_init(module_fn, *args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["deferred_init", "is_deferred", "materialize_module", "materialize_tensor"]
