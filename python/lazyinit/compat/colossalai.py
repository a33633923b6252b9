"""ColossalAI's lazy-initialization API (``colossalai.lazy``) on lazyinit.

Code written for ColossalAI runs with its import line changed::

    from lazyinit.compat.colossalai import LazyInitContext, LazyTensor

    with LazyInitContext(default_device="cuda"):
        model = LlamaForCausalLM(config)          # nothing allocated
    assert isinstance(model.lm_head.weight, LazyTensor)
    LazyInitContext.materialize(model, verbose=True)   # eager values, in place

- :class:`LazyInitContext` has ColossalAI's signature,
  ``LazyInitContext(tensor_cls=LazyTensor, default_device=None)`` (lazyinit's
  ``pause_gc`` is keyword-only), and its static ``materialize(module,
  verbose=False)`` (printing ColossalAI's lazy-rate summary when verbose)
  and ``distribute(module, device_mesh, sharding_spec_dict, verbose=False)``
  (torch's ``DeviceMesh`` and DTensor placements; torch >= 2.6).
- :class:`LazyTensor` is what ``isinstance`` checks against: a tensor is a
  ``LazyTensor`` while it awaits materialization. Lazy tensors stay plain
  ``torch.Tensor`` / ``Parameter`` objects; the check asks lazyinit.
- ``t.materialize()`` works on lazy tensors: importing this module adds a
  ``materialize`` attribute to ``torch.Tensor`` that answers for lazy
  tensors only (other tensors raise ``AttributeError``, as for any unknown
  attribute).

Deliberate differences from ColossalAI (values equal eager construction
with the same seed, where ColossalAI's tests reseed before every op): a
lazy tensor reports device ``lazy``; ``.to()`` / ``.cuda()`` / ``.cpu()``
materialize (in place) where ColossalAI records a lazy copy, so to build
straight onto a GPU pass ``default_device="cuda"`` instead of
``MyModel().cuda()``; ``tensor_cls`` must be :class:`LazyTensor`
(ColossalAI's eager ``_MyTensor`` verification class is not offered).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch
import torch.nn as nn

from .. import _C
from .._context import DeviceLike, record_on
from .._context import LazyInitContext as _LazyInitContext
from . import _tensor_method

_LAZY = 1

_tensor_method.install()


class _LazyTensorMeta(type(torch.Tensor)):  # type: ignore[misc]
    """Makes ``isinstance(t, LazyTensor)`` ask lazyinit whether ``t`` is lazy."""

    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, torch.Tensor) and _C._tensor_state(obj) == _LAZY


class LazyTensor(torch.Tensor, metaclass=_LazyTensorMeta):
    """A tensor awaiting materialization, for ``isinstance`` checks:
    ``isinstance(t, LazyTensor)`` is true while ``t`` (a plain
    ``torch.Tensor`` or ``Parameter`` on the lazy device) has not been
    materialized, as ColossalAI's ``LazyTensor`` is until its
    ``materialize()``. No object is ever of this class.

    ``LazyTensor(func, *args, **kwargs)`` calls the factory ``func`` (e.g.
    ``torch.zeros``) on the lazy device and returns the lazy tensor, homed on
    ``kwargs["device"]`` (else the active context's ``default_device``, else
    the CPU), as ColossalAI's ``LazyTensor(torch.zeros, 2, 3)`` does::

        x = LazyTensor(torch.zeros, 2, 3)
        x += 1
        y = (x * x).half()
        y = y.materialize()          # == the same ops done eagerly
    """

    #: Kept for code that reads it (ColossalAI's class attribute); lazyinit
    #: takes the default device from the context.
    default_device: Optional[torch.device] = None

    def __new__(cls, func: Callable[..., torch.Tensor], *args: Any,  # type: ignore[misc]
                meta_data: Any = None, concrete_data: Any = None,
                **kwargs: Any) -> torch.Tensor:
        if meta_data is not None or concrete_data is not None:
            raise TypeError(
                "lazyinit.compat.colossalai.LazyTensor: meta_data= and concrete_data= are "
                "internals of ColossalAI's LazyTensor; lazyinit records the factory itself. Call "
                "LazyTensor(factory, *args, **kwargs), or build tensors inside LazyInitContext.")
        if not callable(func):
            raise TypeError(f"LazyTensor(func, *args, **kwargs): func must be a tensor factory "
                            f"such as torch.zeros, got {func!r}")
        home = kwargs.pop("device", None)
        if home is None:
            home = _C._default_device()
        out = record_on(home, func, args, kwargs)
        if not isinstance(out, torch.Tensor) or _C._tensor_state(out) != _LAZY:
            raise TypeError(
                f"LazyTensor({getattr(func, '__name__', func)!s}, ...): the factory did not make "
                "a lazy tensor (it ignores device=, or returns something else); pass a torch "
                "factory that takes device=, such as torch.zeros or torch.empty.")
        return out


def _check_tensor_cls(tensor_cls: Any) -> None:
    if tensor_cls is LazyTensor:
        return
    name = getattr(tensor_cls, "__name__", repr(tensor_cls))
    raise TypeError(
        f"lazyinit.compat.colossalai.LazyInitContext(tensor_cls={name}): only LazyTensor is "
        "supported. ColossalAI's _MyTensor (eager construction, reseeded before every op, for "
        "its tests) has no counterpart: build the reference model eagerly, outside the "
        "context, after the same torch.manual_seed; lazyinit's values equal it without "
        "reseeding.")


class LazyInitContext(_LazyInitContext):
    """ColossalAI's ``LazyInitContext(tensor_cls=LazyTensor,
    default_device=None)``: inside it, factories called without ``device=``
    record on the lazy device instead of allocating.

    Args:
        tensor_cls: :class:`LazyTensor` (ColossalAI's default and the only
            choice here).
        default_device: where the context's tensors are materialized by
            default and where values needed early are computed (a device,
            a string such as ``"cuda"``, or a CUDA index). ``None``: CPU.
        pause_gc: keyword-only, lazyinit's: pause Python's cyclic garbage
            collector inside the context (see
            :class:`lazyinit.LazyInitContext`).

    Contexts are not reentrant (a ``RuntimeError``, as in ColossalAI).
    """

    def __init__(self, tensor_cls: type = LazyTensor,
                 default_device: Optional[DeviceLike] = None, *,
                 pause_gc: bool = True) -> None:
        _check_tensor_cls(tensor_cls)
        self.tensor_cls = tensor_cls
        super().__init__(default_device, pause_gc=pause_gc)

    @staticmethod
    def distribute(module: nn.Module, device_mesh: Any, sharding_spec_dict: Dict[str, Any],
                   verbose: bool = False) -> nn.Module:
        """Gives each rank its pieces of ``module``'s lazy tensors, in place,
        as DTensors on ``device_mesh`` (a torch ``DeviceMesh``), and returns
        ``module``. ``sharding_spec_dict`` maps parameter and buffer names
        (``named_parameters()`` / ``named_buffers()``) to DTensor placements,
        one per mesh dim (``[Shard(0)]``, ``(Shard(0), Replicate())``; a single
        placement on a 1-D mesh), or to an object with ColossalAI's
        ``dim_partition_dict`` (``{tensor_dim: [mesh_dims]}``). Lazy tensors
        it does not name are materialized whole on the mesh's device. Each
        piece equals ``distribute_tensor(eager, mesh, placements,
        src_data_rank=None).to_local()`` of the eager model (same seed), and
        is computed alone: no rank builds a full tensor, no collective runs.
        ``verbose`` prints ColossalAI's lazy-rate summary first. Needs
        torch >= 2.6 (DTensor); see :func:`lazyinit.distributed.deferred`.
        """
        from ._distribute import distribute
        return distribute(module, device_mesh, sharding_spec_dict, verbose=verbose)


__all__ = ["LazyInitContext", "LazyTensor"]
