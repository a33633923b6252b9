"""Python-level behaviour of lazy tensors that does not go through the
dispatcher: printing, ``tolist()``, ``numpy()``, and a guard against
torch._lazy's TorchScript backend claiming the same dispatch key."""
from __future__ import annotations

from typing import Any

import torch

from . import _C, _torch_compat

_installed = False


def _is_pending(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and _C._tensor_state(t) == 1


def _has_no_values(t: Any) -> bool:
    """Lazy (pending) or discarded: no storage to read values from."""
    return isinstance(t, torch.Tensor) and _C._tensor_state(t) in (1, 3)


def _lazy_repr(t: torch.Tensor) -> str:
    parts = [f"device='{t.device}'", f"size={tuple(t.shape)}"]
    if _C._tensor_state(t) == 3:
        parts.insert(0, "discarded")
    if t.dtype != torch.get_default_dtype():
        parts.append(f"dtype={t.dtype}")
    if t.requires_grad:
        parts.append("requires_grad=True")
    prefix = "Parameter containing:\n" if isinstance(t, torch.nn.Parameter) else ""
    return prefix + "tensor(..., " + ", ".join(parts) + ")"


def install() -> None:
    """Installs the patches once."""
    global _installed
    if _installed:
        return
    _installed = True
    import torch._tensor_str as tensor_str

    original_str = tensor_str._str

    def _str(self: torch.Tensor, *args: Any, **kwargs: Any) -> str:
        # Printing must not materialize: show the shape, not the values.
        if _has_no_values(self):
            return _lazy_repr(self)
        return original_str(self, *args, **kwargs)

    tensor_str._str = _str
    original_param_repr = torch.nn.Parameter.__repr__

    def _param_repr(self: torch.nn.Parameter) -> str:
        if _has_no_values(self):
            return _lazy_repr(self)
        return original_param_repr(self)

    torch.nn.Parameter.__repr__ = _param_repr  # type: ignore[assignment]

    original_tolist = torch.Tensor.tolist
    original_numpy = torch.Tensor.numpy

    def tolist(self: torch.Tensor) -> Any:
        """Values of a lazy tensor are computed early; the tensor stays lazy."""
        if _is_pending(self):
            return _C._value_copy(self).tolist()
        return original_tolist(self)

    def numpy(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """A lazy tensor's values are computed early into a new array."""
        if _is_pending(self):
            value = _C._value_copy(self)
            # the copy does not require grad: eager's refusal is made here
            value.requires_grad_(self.requires_grad)
            return original_numpy(value, *args, **kwargs)
        return original_numpy(self, *args, **kwargs)

    torch.Tensor.tolist = tolist  # type: ignore[assignment]
    torch.Tensor.numpy = numpy  # type: ignore[assignment]

    _refuse_pickling()
    _to_empty_in_place()
    _catch_up_before_rng_reads()
    _deepcopy_by_storage()
    _data_between_lazy_and_real()
    _guard_torch_lazy()
    _torch_compat.install(_is_pending)


def _to_empty_in_place() -> None:
    # Module.to_empty assigns each converted tensor through `param.data`
    # where the types allow it (same Parameter object, as eagerly); a lazy
    # tensor and a real one do not, so torch would make new Parameters and
    # leave the lazy ones pending. Lazy parameters turn real, uninitialized,
    # in place first (their random ops' draws still count for the
    # generator); one whose storage other tensors view is materialized
    # instead. Buffers are replaced by new tensors, eagerly too: the old
    # objects keep their values, so lazy ones stay as they are.
    original = torch.nn.Module.to_empty

    def to_empty(self: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.nn.Module:
        device = kwargs.get("device", args[0] if args else None)
        if device is not None:
            from ._materialize import _lazy_attributes, _module_tensors, materialize
            target = str(torch.device(device))
            for _, t, is_parameter in _module_tensors(self, True):
                if not is_parameter:
                    continue
                if _C._storage_tensor_count(t) > 1:
                    # other tensors view its storage and keep its values
                    # eagerly (the parameter gets a new storage): compute
                    # them, then torch's `param.data = empty` does the rest
                    materialize(t, target, progress=False)
                else:
                    _C._become_empty(t, target)
            for t in _lazy_attributes(self):
                _C._become_empty(t, target)
        return original(self, *args, **kwargs)

    to_empty.__doc__ = original.__doc__
    torch.nn.Module.to_empty = to_empty  # type: ignore[assignment]


def _refuse_pickling() -> None:
    # torch.save and pickle reach a tensor's storage through __reduce_ex__;
    # a lazy tensor has none. Say what to do instead of "Cannot access data
    # pointer of Tensor that doesn't have storage".
    original = torch.Tensor.__reduce_ex__

    def __reduce_ex__(self: torch.Tensor, proto: Any) -> Any:
        if _has_no_values(self):
            what = ("was freed by lazyinit.discard()" if _C._tensor_state(self) == 3
                    else "is lazy: it has no values yet")
            raise RuntimeError(
                f"lazyinit: cannot pickle or torch.save a tensor that {what}. Materialize "
                "it first (lazyinit.materialize(t_or_module, 'cpu')), or save the pieces "
                "lazyinit.materialize_shard returns.")
        return original(self, proto)

    __reduce_ex__.__doc__ = original.__doc__
    torch.Tensor.__reduce_ex__ = __reduce_ex__  # type: ignore[assignment]


def _data_between_lazy_and_real() -> None:
    # `t.data = other` swaps t's storage and metadata for other's; torch
    # allows it only between tensors of compatible dispatch keys (dense
    # CPU/CUDA/... with each other), and the lazy key is none of them.
    # Eagerly both are real tensors, so where one side is lazy and the other
    # real, the lazy one is materialized first (in place: the real tensor the
    # eager program holds at that point), then torch does the rest.
    base_data = torch._C._TensorBase.data

    def _set_data(self: torch.Tensor, value: torch.Tensor) -> None:
        if isinstance(value, torch.Tensor):
            from ._materialize import materialize
            if _is_pending(self) and not _is_pending(value) and not value.is_meta:
                materialize(self, progress=False)
            elif _is_pending(value) and not _is_pending(self) and not self.is_meta:
                materialize(value, self.device, progress=False)
        base_data.__set__(self, value)

    torch.Tensor.data = property(  # type: ignore[assignment]
        base_data.__get__, _set_data, doc=base_data.__doc__)


def _deepcopy_by_storage() -> None:
    # Eager deepcopy copies storages, memoized, so a tensor and its views
    # (or an expanded tensor) stay views in the copy. torch clones each lazy
    # tensor separately; copy the lazy storage once instead.
    original = torch.Tensor.__deepcopy__

    def __deepcopy__(self: torch.Tensor, memo: dict) -> torch.Tensor:
        if type(self) is not torch.Tensor or not _is_pending(self) or not self.is_leaf:
            return original(self, memo)
        if id(self) in memo:
            return memo[id(self)]
        key = ("lazyinit.storage", _C._storage_id(self))
        if key not in memo:
            with torch.no_grad():
                memo[key] = _C._clone_storage(self)
        new = _C._view_like(memo[key], self)
        new.requires_grad_(self.requires_grad)
        if self.grad is not None:
            new.grad = self.grad.__deepcopy__(memo)
        import copy as _copy
        new.__dict__ = _copy.deepcopy(self.__dict__, memo)
        memo[id(self)] = new
        return new

    __deepcopy__.__doc__ = original.__doc__
    torch.Tensor.__deepcopy__ = __deepcopy__  # type: ignore[assignment]


def _catch_up_before_rng_reads() -> None:
    # Lazy random ops leave the generator where recording found it (plus a
    # marker draw), and catch it up where eager construction's position
    # matters: before a real random op draws from it (dispatcher hooks,
    # registration/rng_hooks.cpp) and before Python reads its state, here.
    # torch.Generator is a static extension type: its methods are replaced
    # through its type dict. torch.get_rng_state(), torch.initial_seed(),
    # fork_rng and pickling all read through these methods.
    gen_type = torch._C.Generator
    for name in ("get_state", "initial_seed", "clone_state", "graphsafe_get_state",
                 "__reduce__", "__getstate__"):
        original = gen_type.__dict__.get(name)
        if original is None or getattr(original, "__lazyinit_original__", None) is not None:
            continue

        def method(self: torch.Generator, *args: Any, __original: Any = original,
                   **kwargs: Any) -> Any:
            _C._rng_catch_up(self)
            return __original(self, *args, **kwargs)

        method.__name__ = name
        method.__qualname__ = f"Generator.{name}"
        method.__doc__ = original.__doc__
        method.__lazyinit_original__ = original  # type: ignore[attr-defined]
        _C._set_type_attribute(gen_type, name, method)
    _real_state_for_set_state(gen_type)


def _real_state_for_set_state(gen_type: Any) -> None:
    # A state tensor built inside a LazyInitContext is lazy; eager
    # construction has a real one there. set_state (and torch.set_rng_state,
    # which calls it) gets its current values, so it accepts or rejects the
    # state as eager does.
    original = gen_type.__dict__.get("set_state")
    if original is None or getattr(original, "__lazyinit_original__", None) is not None:
        return

    def set_state(self: torch.Generator, state: Any) -> Any:
        if _is_pending(state):
            state = _C._value_copy(state)
        return original(self, state)

    set_state.__qualname__ = "Generator.set_state"
    set_state.__doc__ = original.__doc__
    set_state.__lazyinit_original__ = original  # type: ignore[attr-defined]
    _C._set_type_attribute(gen_type, "set_state", set_state)


def _guard_torch_lazy() -> None:
    if _C._lazy_device_type() != "lazy":
        return
    try:
        import torch._lazy.ts_backend as ts_backend
    except ImportError:
        return
    original_init = ts_backend.init

    def init(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(
            "lazyinit owns the 'lazy' device in this process, so torch._lazy's "
            "TorchScript backend cannot be initialized. Use torch._lazy in a "
            "process that does not import lazyinit.")

    init.__wrapped__ = original_init  # type: ignore[attr-defined]
    ts_backend.init = init
