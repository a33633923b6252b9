"""Actionable errors where torch's engines get a lazy model they cannot use.

``DistributedDataParallel(lazy_model)`` fails inside torch with "No backend
type associated with device type lazy", and ``FullyShardedDataParallel``
(FSDP1) with "Inconsistent compute device and `device_id`: lazy vs ...".
Their constructors are wrapped to raise, for a module with lazy tensors, an
error that names the lazyinit call to use instead; nothing changes for other
modules. FSDP1's module is patched when it is first imported (importing it
here would cost every ``import lazyinit`` the FSDP import).
"""
from __future__ import annotations

import functools
import importlib.abc
import inspect
import importlib.util
import sys
from typing import Any, Callable, Optional

import torch.nn as nn

from .. import _C

_FSDP1_MODULE = "torch.distributed.fsdp.fully_sharded_data_parallel"


def _has_lazy(module: Any) -> bool:
    if not isinstance(module, nn.Module):
        return False
    return any(_C._tensor_state(t) == 1 for _, t, _ in _C._module_tensors(module, True))


#: Set by ``lazyinit.compat.torchdistx`` once it serves FSDP1's torchdistX
#: slot: FSDP1 then materializes a lazy model itself (through
#: ``deferred_init.materialize_module``), given a ``device_id``.
torchdistx_slot_served = False


def _guard(cls: type, message: str) -> None:
    original = cls.__init__
    if getattr(original, "__lazyinit_original__", None) is not None:
        return

    @functools.wraps(original)
    def __init__(self: Any, module: Any, *args: Any, **kwargs: Any) -> None:
        if _has_lazy(module):
            if message is _FSDP1_MESSAGE and torchdistx_slot_served:
                _check_fsdp1_slot_call(original, self, module, args, kwargs)
            else:
                raise RuntimeError(message)
        original(self, module, *args, **kwargs)

    __init__.__lazyinit_original__ = original  # type: ignore[attr-defined]
    cls.__init__ = __init__  # type: ignore[method-assign]


_DDP_MESSAGE = (
    "lazyinit: DistributedDataParallel got a model with lazy tensors, which DDP cannot place. "
    "Use lazyinit.distributed.ddp(model, device, ...) (every rank materializes the same eager "
    "values itself; DDP's broadcast is skipped where torch allows), or "
    "lazyinit.materialize(model, device) before DDP.")
_FSDP1_MESSAGE = (
    "lazyinit: FullyShardedDataParallel got a model with lazy tensors, which FSDP1 cannot "
    "place. Use lazyinit.distributed.fsdp1(model, device, **fsdp_kwargs) (FSDP1's "
    "param_init_fn materializes each unit with eager values), or for FSDP2 "
    "lazyinit.distributed.fully_shard / deferred.")


def _check_fsdp1_slot_call(original: Callable[..., None], self: Any, module: Any,
                           args: tuple, kwargs: dict) -> None:
    """FSDP1 of a lazy model through the torchdistX slot: FSDP1 places a
    model by its parameters' device unless ``device_id`` names one, and the
    lazy device is none it can use."""
    try:
        bound = inspect.signature(original).bind_partial(self, module, *args, **kwargs)
        device_id = bound.arguments.get("device_id")
    except TypeError:
        device_id = kwargs.get("device_id")
    if device_id is None:
        raise RuntimeError(
            "lazyinit: FullyShardedDataParallel got a model with lazy tensors and no device_id. "
            "With lazyinit.compat.torchdistx imported, FSDP1 materializes a lazy model itself "
            "(as torchdistX's deferred_init models), but it must be told the device: pass "
            "device_id=torch.device('cuda', local_rank) (or 'cpu'). Or use "
            "lazyinit.distributed.fsdp1(model, device, **fsdp_kwargs).")


def _guard_fsdp1(module: Any) -> None:
    cls = getattr(module, "FullyShardedDataParallel", None)
    if cls is not None:
        _guard(cls, _FSDP1_MESSAGE)


class _AfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Runs ``hook(module)`` right after ``name`` is first imported."""

    def __init__(self, name: str, hook: Callable[[Any], None]) -> None:
        self.name = name
        self.hook = hook
        self.loader: Optional[importlib.abc.Loader] = None

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # find the real spec, once
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        self.loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec: Any) -> Any:
        assert self.loader is not None
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        assert self.loader is not None
        self.loader.exec_module(module)
        try:
            self.hook(module)
        except Exception:  # noqa: BLE001 - a guard must never break torch's import
            pass


def install() -> None:
    """Installs the guards (once; called by ``import lazyinit``)."""
    try:
        from torch.nn.parallel import DistributedDataParallel
    except Exception:  # noqa: BLE001 - a torch without distributed
        return
    _guard(DistributedDataParallel, _DDP_MESSAGE)
    if _FSDP1_MODULE in sys.modules:
        _guard_fsdp1(sys.modules[_FSDP1_MODULE])
    else:
        after_import(_FSDP1_MODULE, _guard_fsdp1)


def after_import(name: str, hook: Callable[[Any], None]) -> None:
    """Runs ``hook(module)`` once the module ``name`` is imported: now if it
    already is, else right after its first import (once per name)."""
    if name in sys.modules:
        hook(sys.modules[name])
    elif not any(isinstance(f, _AfterImport) and f.name == name and f.hook is hook
                 for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, hook))
