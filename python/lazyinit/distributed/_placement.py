"""DTensor placements on a DeviceMesh, as lazyinit placements.

A DTensor's local piece is described by its mesh (a shape, and this rank's
coordinate in it) and one placement per mesh dim. lazyinit describes the
same piece as a list of :class:`lazyinit.Shard` applied in order, each to
the piece the previous one left (``torch.chunk``'s split, empty chunks for
ranks past the end), which is how DTensor's ``Shard`` and FSDP split too:

- ``Replicate()`` (and a mesh dim of size 1) adds nothing;
- ``Shard(d)`` on mesh dim ``i`` is ``lazyinit.Shard(d, coordinate[i],
  mesh_shape[i])``, in mesh-dim order (DTensor shards left to right);
- ``_StridedShard(d, split_factor=sf)`` on mesh dim ``i`` is the sharding
  FSDP2 makes over a tensor-parallel mesh: the mesh dims after ``i`` that
  shard tensor dim ``d`` (their sizes multiply to ``sf``) split it first,
  and dim ``i`` then splits the piece they left. It becomes
  ``lazyinit.Shard(d, coordinate[i], mesh_shape[i])`` placed after those
  (right to left). That is the data FSDP2 holds (it chunks the TP-local
  tensor), and it is what ``distribute_tensor`` gives wherever the sizes
  split evenly; where they do not, torch's own ``distribute_tensor`` cuts a
  ``_StridedShard`` differently from the data FSDP2 holds
  (docs/architecture.md, "Distributed plugins"), and lazyinit follows
  FSDP2's data;
- ``Partial`` holds partial sums, not a parameter's layout: an error.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import torch

from .._shard import PlacementLike, Replicate, Shard, _piece_shape


def _placement_kind(p: Any) -> Tuple[str, int, int]:
    """("replicate" | "shard" | "strided", dim, split_factor) of a DTensor
    placement, recognised by what it has (torch 2.5 made ``_StridedShard`` a
    subclass of ``Shard``; torch 2.14 does not)."""
    name = type(p).__name__
    if name == "_StridedShard" or hasattr(p, "split_factor"):
        return "strided", int(p.dim), int(p.split_factor)
    is_shard = getattr(p, "is_shard", None)
    if callable(is_shard) and is_shard():
        return "shard", int(p.dim), 1
    is_replicate = getattr(p, "is_replicate", None)
    if callable(is_replicate) and is_replicate():
        return "replicate", 0, 1
    is_partial = getattr(p, "is_partial", None)
    if callable(is_partial) and is_partial():
        raise ValueError(
            f"lazyinit: a {p} placement holds partial sums, not a parameter's values; "
            "lazyinit fills parameters and buffers laid out by Shard, _StridedShard and "
            "Replicate only. Redistribute it to Replicate() or Shard(d) first.")
    raise ValueError(f"lazyinit: unknown DTensor placement {p!r} ({type(p).__qualname__})")


def placement_for(shape: Sequence[int], mesh_shape: Sequence[int],
                  coordinate: Sequence[int], placements: Sequence[Any]) -> PlacementLike:
    """The lazyinit placement of the local piece a rank at ``coordinate`` of
    a mesh of ``mesh_shape`` holds of a tensor of ``shape`` laid out by the
    DTensor ``placements`` (one per mesh dim): a list of :class:`lazyinit.Shard`,
    or ``Replicate()`` where nothing is split. Pure arithmetic; see the
    module's docstring for the rules."""
    n = len(mesh_shape)
    if len(placements) != n or len(coordinate) != n:
        raise ValueError(
            f"lazyinit: {len(placements)} placement(s) and a {len(coordinate)}-dim coordinate "
            f"for a {n}-dim mesh; give one of each per mesh dim")
    ndim = len(shape)
    kinds = [_placement_kind(p) for p in placements]
    keyed: List[Tuple[Tuple[int, int, int], Shard]] = []
    for i, (kind, dim, split_factor) in enumerate(kinds):
        if kind == "replicate":
            continue
        if not -ndim <= dim < ndim:
            raise ValueError(
                f"lazyinit: {placements[i]} on mesh dim {i} shards dim {dim} of a "
                f"{ndim}-dim tensor of shape {tuple(shape)}")
        dim %= ndim
        shard = Shard(dim, int(coordinate[i]), int(mesh_shape[i]))
        if kind == "shard":
            keyed.append(((i, 0, 0), shard))
            continue
        later = [j for j in range(i + 1, n)
                 if kinds[j][0] != "replicate" and kinds[j][1] % ndim == dim]
        product = 1
        for j in later:
            product *= int(mesh_shape[j])
        if product != split_factor:
            raise NotImplementedError(
                f"lazyinit: {placements[i]} on mesh dim {i} (placements {tuple(placements)}, "
                f"mesh {tuple(mesh_shape)}): its split factor {split_factor} is not the number "
                f"of pieces the later mesh dims cut dim {dim} into ({product}), the layout "
                "FSDP2 makes over tensor parallelism. Other _StridedShard layouts are not "
                "supported; materialize the tensor whole (lazyinit.materialize) and use "
                "distribute_tensor.")
        # Right to left: after the later mesh dims that shard the same dim
        # (the one nearest the end first when several are strided).
        keyed.append(((max(later) if later else i, 1, -i), shard))
    keyed.sort(key=lambda entry: entry[0])
    shards = [shard for _, shard in keyed if shard.world_size > 1]
    return shards if shards else Replicate()


def placement_of(tensor: torch.Tensor) -> PlacementLike:
    """The lazyinit placement of this rank's local piece of a DTensor (its
    mesh, this rank's coordinate in it, its placements and global shape)."""
    mesh = tensor.device_mesh  # type: ignore[attr-defined]
    coordinate = mesh.get_coordinate()
    if coordinate is None:
        raise ValueError(
            f"lazyinit: this rank is not in the DeviceMesh {mesh} of a DTensor of shape "
            f"{tuple(tensor.shape)}; it holds no piece of it. Build the mesh over the ranks "
            "that hold the model.")
    return placement_for(tuple(tensor.shape), _mesh_shape(mesh), coordinate,
                         tensor.placements)  # type: ignore[attr-defined]


def _mesh_shape(mesh: Any) -> Tuple[int, ...]:
    shape = getattr(mesh, "shape", None)
    if shape is None:
        shape = mesh.mesh.shape
    return tuple(int(s) for s in shape)


def local_shape(shape: Sequence[int], placement: PlacementLike) -> Tuple[int, ...]:
    """The shape of the piece ``placement`` leaves of a tensor of ``shape``."""
    return _piece_shape(tuple(shape), placement)


def dtensor_class() -> Optional[type]:
    """torch's DTensor class where this torch has one (2.0+), else None."""
    for name in ("torch.distributed.tensor", "torch.distributed._tensor"):
        try:
            module = __import__(name, fromlist=["DTensor"])
        except Exception:  # noqa: BLE001 - an older torch, or no distributed build
            continue
        cls = getattr(module, "DTensor", None)
        if cls is not None:
            return cls
    return None
