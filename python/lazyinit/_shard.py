"""Materialize-on-shard: the local piece of lazy tensors, for one rank.

A placement says which piece of a tensor a rank holds. It is a
:class:`Replicate`, a :class:`Shard`, a :class:`FlatRange`, or a list of them
applied in order, each to the piece the previous one left (tensor
parallelism on dim 0, then FSDP on dim 0 or 1 of that piece; or a flat range
of a rank's piece). :func:`materialize_shard` computes only that piece: tapes
of element-local ops are replayed over the piece's storage elements alone;
other tapes are replayed whole and sliced (counted in :func:`shard_stats`
and ``lazyinit.stats(module).shard_fallbacks``). Values equal the same slice
of eager construction with the same seed, in any order of shards and
tensors; the lazy tensors stay lazy and the generators are left untouched.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from . import _C
from ._materialize import DeviceLike, _target


@dataclasses.dataclass(frozen=True)
class Replicate:
    """The whole tensor (or the whole piece left by earlier placements)."""


@dataclasses.dataclass(frozen=True)
class Shard:
    """Chunk ``rank`` of ``world_size`` along ``dim``, split as
    ``torch.chunk`` splits: chunks of ``ceil(size / world_size)``, the last
    one shorter, and empty chunks for ranks past the end (size 5 over 4
    ranks: 2, 2, 1, 0). DTensor's ``Shard`` and FSDP use this split;
    ``torch.tensor_split`` (2, 1, 1, 1) does not."""

    dim: int
    rank: int
    world_size: int

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"Shard(dim={self.dim}, rank={self.rank}, world_size={self.world_size}): "
                "need world_size >= 1 and 0 <= rank < world_size")


@dataclasses.dataclass(frozen=True)
class FlatRange:
    """Elements ``[start, end)`` of the tensor (or piece) flattened in
    row-major order, as ZeRO / FSDP flat parameters hold them. The piece is
    1-D afterwards: only ``Shard(0, ...)`` or another ``FlatRange`` may
    follow."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"FlatRange({self.start}, {self.end}): need 0 <= start <= end")


PlacementLike = Union[Replicate, Shard, FlatRange, Sequence[Union[Replicate, Shard, FlatRange]]]


@dataclasses.dataclass(frozen=True)
class ByKind:
    """A placement policy for :func:`materialize_module_shards`: every
    parameter gets ``parameters``, every buffer ``buffers``, and a 0-dim
    tensor (nothing to split) is replicated. FSDP's layout is
    ``ByKind(Shard(0, rank, world_size))``. The placements are decided in
    C++, without a Python call a tensor; "parameter" means an entry of a
    module's ``_parameters`` (what ``named_parameters()`` yields)."""

    parameters: PlacementLike
    buffers: PlacementLike = Replicate()

    def __call__(self, name: str, tensor: torch.Tensor) -> PlacementLike:
        """The placement of ``tensor`` (as :func:`materialize_module_shards`
        decides it; a plain tensor counts as a buffer)."""
        if tensor.dim() == 0:
            return Replicate()
        return self.parameters if isinstance(tensor, torch.nn.Parameter) else self.buffers


def _encode(placement: PlacementLike) -> List[Tuple[int, int, int, int]]:
    items = list(placement) if isinstance(placement, (list, tuple)) else [placement]
    out: List[Tuple[int, int, int, int]] = []
    for p in items:
        if isinstance(p, Replicate):
            out.append((0, 0, 0, 0))
        elif isinstance(p, Shard):
            out.append((1, p.dim, p.rank, p.world_size))
        elif isinstance(p, FlatRange):
            out.append((2, p.start, p.end, 0))
        else:
            raise TypeError(
                f"lazyinit: expected Replicate, Shard, FlatRange or a list of them, got {p!r}")
    return out


def materialize_shard(tensor: torch.Tensor, placement: PlacementLike,
                      device: DeviceLike = "cpu",
                      out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Returns this rank's piece of ``tensor`` as a new contiguous tensor on
    ``device``; ``tensor`` itself stays lazy.

    The piece equals the same slice of the eagerly built tensor (same seed),
    whatever the order in which shards and tensors are materialized, and the
    random generators are left as they were. Only the piece is computed when
    every op on the tensor's storage is element-local (constant factories,
    ``uniform_`` / ``normal_`` and the ``nn.init`` functions built on them,
    ``fill_``, ``zero_``, element-wise in-place arithmetic, ``copy_`` from
    real tensors, on contiguous views); otherwise the storage is replayed
    whole and sliced, which :func:`shard_stats` counts. Real tensors are
    sliced and copied.

    ``out``: a contiguous tensor of the piece's shape (or any shape with the
    piece's number of elements), ``tensor``'s dtype, on ``device``, that
    receives the piece (the piece is computed in its memory, with no
    temporary of its size, wherever it is pushed down); ``out`` is returned.
    Distributed engines' local shards are filled this way
    (``lazyinit.distributed``).
    """
    target = _target(device, "a shard ") or "cpu"
    encoded = _encode(placement)
    if out is None:
        return _C._materialize_shard(tensor, encoded, target)
    shape = _piece_shape(tuple(tensor.shape), placement)
    numel = 1
    for n in shape:
        numel *= n
    problems = []
    if out.numel() != numel:
        problems.append(f"{out.numel()} elements, the piece has {numel} (shape {list(shape)})")
    if out.dtype != tensor.dtype:
        problems.append(f"dtype {out.dtype}, the tensor's is {tensor.dtype}")
    want = torch.device(target)
    if out.device.type != want.type or (want.index is not None
                                        and out.device.index != want.index):
        problems.append(f"device {out.device}, the target is {target}")
    if not out.is_contiguous():
        problems.append("not contiguous")
    if problems:
        raise ValueError("lazyinit.materialize_shard(out=...): out has " + "; ".join(problems)
                         + ". Pass a contiguous tensor of the piece's size, dtype and device, "
                         "or no out.")
    with torch.no_grad():
        _C._materialize_shard(tensor, encoded, str(out.device), out.detach().view(-1))
    return out


def _piece_shape(shape: Tuple[int, ...], placement: PlacementLike) -> Tuple[int, ...]:
    """The shape of the piece ``placement`` leaves of a tensor of ``shape``
    (the C++ ``local_piece``'s; no tensor is touched)."""
    return tuple(_C._piece_shape(list(shape), _encode(placement)))


def materialize_module_shards(
        module: torch.nn.Module,
        placement_fn: Union[ByKind, Callable[[str, torch.Tensor], PlacementLike]],
        device: DeviceLike = "cpu") -> Dict[str, torch.Tensor]:
    """Materializes this rank's piece of every parameter and buffer of
    ``module``: ``placement_fn(name, tensor)`` gives each one's placement,
    or a :class:`ByKind` policy gives them by kind (parameter or buffer).
    Returns ``{name: local tensor}`` (tied tensors once, under their first
    name, as ``named_parameters`` reports them); the module stays lazy.
    The pieces take one allocation per dtype, each in a storage of its own
    over a slice of it (as :func:`lazyinit.materialize` with ``flat=True``);
    on a GPU three growing ones (the tensors holding the first 1/21 of the
    elements, the next 4/21, the rest), so that the GPU fills each part
    while the CPU calls ``placement_fn`` for the next and allocates it.
    Call :func:`lazyinit.discard` on it afterwards to free the recorded graph.
    """
    target = _target(device, "shards ") or "cpu"
    # The walk, the calls of placement_fn and the encoding (once for each
    # placement object returned) run in C++; placement_fn is called in
    # named_parameters() then named_buffers() order.
    if isinstance(placement_fn, ByKind):
        by_kind = (_encode(placement_fn.parameters), _encode(placement_fn.buffers))
        return _C._materialize_module_shards(module, None, _encode, by_kind, target)
    if not callable(placement_fn):
        raise TypeError("lazyinit: placement_fn must be a callable (name, tensor) -> placement "
                        f"or a lazyinit.ByKind, got {placement_fn!r}")
    return _C._materialize_module_shards(module, placement_fn, _encode, None, target)


def shard_stats() -> Dict[str, Any]:
    """Process-wide counters of :func:`materialize_shard`: ``shards`` (calls
    on lazy tensors), ``pushed_down`` (of those, replayed over the piece
    only), ``whole`` (the piece is the whole storage, e.g. ``Replicate()``:
    replayed whole, which costs nothing extra), ``fallbacks`` (a non-local
    op: whole storage replayed, then sliced),
    ``rng_scratch_runs`` (random ops run whole into scratch to find the
    generator position after them), ``draws_skipped`` (mt19937 outputs
    skipped to reach positions) and ``fallback_reasons`` (the latest few)."""
    return dict(_C._shard_stats())


def reset_shard_stats() -> None:
    """Zeroes the counters of :func:`shard_stats`."""
    _C._reset_shard_stats()


def chunk_bounds(size: int, rank: int, world_size: int) -> Tuple[int, int]:
    """``[start, end)`` of ``rank``'s chunk of ``size`` indices under
    :class:`Shard`'s ``torch.chunk`` split."""
    start, end = _C._chunk_bounds(size, rank, world_size)
    return start, end
