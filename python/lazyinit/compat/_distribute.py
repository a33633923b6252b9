"""ColossalAI's ``LazyInitContext.distribute`` on torch's DeviceMesh.

ColossalAI's ``distribute(module, device_mesh, sharding_spec_dict)`` takes
its own mesh and ``ShardingSpec`` objects. Here the mesh is torch's
``DeviceMesh`` and each entry is what DTensor takes: one placement per mesh
dim. An object with ColossalAI's ``dim_partition_dict`` (``{tensor_dim:
[mesh_dims]}``) is read as those placements: ``Shard(tensor_dim)`` on each
listed mesh dim, ``Replicate()`` elsewhere.

The work is :func:`lazyinit.distributed.deferred`'s: inside it the lazy
tensors are meta tensors, each named one becomes a DTensor
(``distribute_tensor`` of a meta tensor: no data, no collective), and on exit
every rank's local piece is computed in place from the lazy source (the
placement mapping of ``lazyinit.distributed.placement_of``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.nn as nn

from .. import _C
from .._summary import print_summary
from ..distributed._deferred import deferred
from ..distributed._slots import Slot, slots

_LAZY = 1


def _dtensor_api() -> Any:
    try:
        import torch.distributed.tensor as dtensor
        from torch.distributed.device_mesh import DeviceMesh  # noqa: F401
        for name in ("distribute_tensor", "Placement", "Replicate", "Shard"):
            getattr(dtensor, name)
    except (ImportError, AttributeError) as e:
        raise RuntimeError(
            "lazyinit.compat.colossalai: LazyInitContext.distribute needs DTensor "
            f"(torch.distributed.tensor, public from torch 2.6); this is torch {torch.__version__}. "
            "Use LazyInitContext.materialize, or lazyinit.materialize_module_shards for "
            "per-rank pieces.") from e
    return dtensor


def _check_mesh(device_mesh: Any) -> None:
    from torch.distributed.device_mesh import DeviceMesh
    if not isinstance(device_mesh, DeviceMesh):
        raise TypeError(
            "lazyinit.compat.colossalai: LazyInitContext.distribute takes torch's DeviceMesh "
            "(torch.distributed.device_mesh.init_device_mesh(...)), not "
            f"{type(device_mesh).__module__}.{type(device_mesh).__qualname__}; ColossalAI's own "
            "DeviceMesh is not supported.")


def to_placements(spec: Any, mesh_ndim: int, tensor_ndim: int, name: str) -> Tuple[Any, ...]:
    """DTensor placements, one per mesh dim, from a ``sharding_spec_dict``
    entry: a sequence of placements, a single placement (1-D mesh), or an
    object (or dict) with ColossalAI's ``dim_partition_dict``."""
    dtensor = _dtensor_api()
    where = f"sharding_spec_dict[{name!r}]"
    if isinstance(spec, dtensor.Placement):
        spec = (spec,)
    partition = getattr(spec, "dim_partition_dict", None)
    if partition is None and isinstance(spec, dict):
        partition = spec
    if partition is not None:
        placements: List[Any] = [dtensor.Replicate()] * mesh_ndim
        for tensor_dim, mesh_dims in dict(partition).items():
            if not -tensor_ndim <= int(tensor_dim) < max(tensor_ndim, 1):
                raise ValueError(f"lazyinit: {where} shards dim {tensor_dim} of a "
                                 f"{tensor_ndim}-dim tensor")
            mesh_dims = [int(m) for m in mesh_dims]
            if mesh_dims != sorted(mesh_dims):
                raise NotImplementedError(
                    f"lazyinit: {where} shards tensor dim {tensor_dim} over mesh dims {mesh_dims} "
                    "in that order; DTensor shards a tensor dim over mesh dims in increasing "
                    "order only. List them increasing.")
            for m in mesh_dims:
                if not 0 <= m < mesh_ndim:
                    raise ValueError(f"lazyinit: {where} names mesh dim {m} of a "
                                     f"{mesh_ndim}-dim mesh")
                if not isinstance(placements[m], dtensor.Replicate):
                    raise ValueError(f"lazyinit: {where} uses mesh dim {m} for two tensor dims")
                placements[m] = dtensor.Shard(int(tensor_dim) % max(tensor_ndim, 1))
        return tuple(placements)
    if isinstance(spec, Sequence) and not isinstance(spec, (str, bytes)):
        items = tuple(spec)
        if len(items) != mesh_ndim:
            raise ValueError(f"lazyinit: {where} has {len(items)} placement(s) for a "
                             f"{mesh_ndim}-dim DeviceMesh; give one per mesh dim")
        for p in items:
            if not isinstance(p, dtensor.Placement):
                raise TypeError(f"lazyinit: {where} holds {p!r}; expected DTensor placements "
                                "(torch.distributed.tensor.Shard / Replicate)")
        return items
    raise TypeError(
        f"lazyinit: {where} is {spec!r}; expected DTensor placements (one per mesh dim, e.g. "
        "[Shard(0)]) or an object with ColossalAI's dim_partition_dict")


def _named_slots(module: nn.Module) -> Dict[str, Tuple[Slot, torch.Tensor]]:
    """Every slot under every name it is reachable by (tied duplicates too)."""
    out: Dict[str, Tuple[Slot, torch.Tensor]] = {}
    for qual, mod in module.named_modules(remove_duplicate=False):
        prefix = qual + "." if qual else ""
        for kind in ("_parameters", "_buffers"):
            for name, t in getattr(mod, kind).items():
                if t is not None:
                    out.setdefault(prefix + name, (Slot(prefix + name, mod, kind, name), t))
    return out


def _plan(module: nn.Module, device_mesh: Any,
          sharding_spec_dict: Dict[str, Any]) -> Dict[int, Tuple[Tuple[Any, ...], List[str]]]:
    """id(lazy tensor) -> (placements, names), checked before anything changes."""
    named = _named_slots(module)
    unknown = sorted(set(sharding_spec_dict) - set(named))
    if unknown:
        raise KeyError(
            f"lazyinit: sharding_spec_dict names {unknown[:5]} that are no parameter or buffer "
            f"of the module (its names look like {sorted(named)[:3]}); use the names of "
            "named_parameters() / named_buffers().")
    plan: Dict[int, Tuple[Tuple[Any, ...], List[str]]] = {}
    for name, spec in sharding_spec_dict.items():
        _, t = named[name]
        if _C._tensor_state(t) != _LAZY:
            raise ValueError(
                f"lazyinit: sharding_spec_dict[{name!r}] names a tensor that is not lazy (real on "
                f"{t.device}); distribute() gives each rank its piece of lazy tensors. Build the "
                "model inside LazyInitContext without device=, or use torch's distribute_tensor "
                "for real tensors.")
        placements = to_placements(spec, device_mesh.ndim, t.dim(), name)
        entry = plan.get(id(t))
        if entry is None:
            plan[id(t)] = (placements, [name])
        elif tuple(entry[0]) != tuple(placements):
            raise ValueError(
                f"lazyinit: {entry[1][0]!r} and {name!r} are one tied tensor but "
                f"sharding_spec_dict gives them different placements ({entry[0]} and "
                f"{placements}); give a tie one placement.")
        else:
            entry[1].append(name)
    return plan


def _as_dtensor(shadow: torch.Tensor, device_mesh: Any, placements: Tuple[Any, ...]) -> Any:
    import inspect
    dtensor = _dtensor_api()
    kwargs: Dict[str, Any] = {}
    if "src_data_rank" in inspect.signature(dtensor.distribute_tensor).parameters:
        kwargs["src_data_rank"] = None  # a meta tensor: nothing to scatter
    with torch.no_grad():
        dt = dtensor.distribute_tensor(shadow.detach(), device_mesh, list(placements), **kwargs)
    if isinstance(shadow, nn.Parameter):
        out = nn.Parameter(dt, requires_grad=shadow.requires_grad)
    else:
        out = dt.requires_grad_(shadow.requires_grad)
    out.__dict__.update({k: v for k, v in shadow.__dict__.items() if k not in out.__dict__})
    return out


def distribute(module: nn.Module, device_mesh: Any, sharding_spec_dict: Dict[str, Any],
               verbose: bool = False) -> nn.Module:
    """See :meth:`lazyinit.compat.colossalai.LazyInitContext.distribute`."""
    _dtensor_api()
    _check_mesh(device_mesh)
    if not isinstance(sharding_spec_dict, dict):
        raise TypeError("lazyinit: sharding_spec_dict must be a dict of parameter/buffer name -> "
                        f"placements, got {type(sharding_spec_dict).__name__}")
    plan = _plan(module, device_mesh, sharding_spec_dict)
    if verbose:
        print_summary(module)
    with deferred(module, device_mesh.device_type) as d:
        # The slots hold meta shadows now, one per lazy tensor: each planned
        # one becomes a DTensor, in every slot that holds it.
        shadowed = d._shadowed
        assert shadowed is not None
        slots_of: Dict[int, List[Slot]] = {}
        shadow_of: Dict[int, torch.Tensor] = {}
        for slot, t in slots(module):
            slots_of.setdefault(id(t), []).append(slot)
            shadow_of[id(t)] = t
        for key, slot_list in slots_of.items():
            source = shadowed.source_of_shadow.get(key)
            if source is None or id(source) not in plan:
                continue
            new = _as_dtensor(shadow_of[key], device_mesh, plan[id(source)][0])
            for slot in slot_list:
                slot.set(new)
    return module
