"""``deferred``: torch's own parallelism APIs on a lazy model, each rank
computing only its pieces.

On entry, every lazy tensor of the module is swapped for a meta shadow (one
per lazy tensor, so ties hold). The user runs ``fully_shard``,
``parallelize_module`` (any mesh) on it: they see a meta model, as
torchtitan's deferred init does, and issue no collective. On exit, the meta
tensors are allocated on the device (``Module._apply``, so FSDP2 re-pads its
shards) and each one is filled with exactly its rank's piece of the lazy
source, computed in place by :func:`lazyinit.materialize_shard`.
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from .. import _C
from .._materialize import DeviceLike, materialize
from .._shard import PlacementLike, Replicate, materialize_shard, shard_stats
from ._placement import local_shape, placement_of
from ._slots import Shadowed, Slot, is_dtensor, slots


@dataclasses.dataclass
class DeferredReport:
    """What ``deferred`` did on this rank (``d.report`` after the block).

    ``pieces``: DTensor local pieces filled; ``whole``: plain tensors filled
    whole (buffers an engine does not shard, parameters it leaves alone);
    ``local_bytes``: bytes filled; ``pushed_down`` / ``fallbacks``: of the
    :func:`lazyinit.materialize_shard` calls, those computed over the piece
    only / replayed whole then sliced (``lazyinit.shard_stats()``'s counters
    over the block's exit); ``split_ties``: tied tensors an engine made
    separate (each filled with the tie's values, as eager gets);
    ``seconds``: time of the exit (allocation and filling)."""

    pieces: int = 0
    whole: int = 0
    local_bytes: int = 0
    pushed_down: int = 0
    fallbacks: int = 0
    split_ties: List[List[str]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0


@dataclasses.dataclass
class _Fill:
    slots: List[Slot]          # slots holding this destination (before allocation)
    source: torch.Tensor       # lazy (or real) source
    placement: PlacementLike
    dtensor: bool


def _normalize_device(device: DeviceLike) -> torch.device:
    if device is None:
        raise ValueError("lazyinit.distributed.deferred: pass the device the model will live on "
                         "(e.g. \"cuda\" or \"cpu\"), the device type of its DeviceMesh")
    if isinstance(device, int):
        device = torch.device("cuda", device)
    dev = torch.device(device)
    if dev.type in ("meta", "lazy"):
        raise ValueError(f"lazyinit.distributed.deferred: cannot materialize onto {dev}; "
                         "pass a real device such as \"cuda\" or \"cpu\"")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


class deferred:  # noqa: N801 - used as a function: ``with deferred(model, device):``
    """Runs torch's parallelism APIs on a lazy ``module`` so that each rank
    computes and holds only its own pieces::

        with lazyinit.distributed.deferred(model, device="cuda"):
            for block in model.model.layers:
                fully_shard(block, mesh=mesh)      # or parallelize_module(...)
            fully_shard(model, mesh=mesh)

    Inside the block the module's lazy tensors are meta tensors (ties kept:
    one shadow per lazy tensor); torch's ``fully_shard`` (FSDP2),
    ``parallelize_module`` (tensor parallelism, ``ColwiseParallel``,
    ``RowwiseParallel``, ``SequenceParallel``, ...) and both on a 2-D mesh
    shard them as they would shard torchtitan's meta model, with no
    communication. On exit every meta tensor is allocated on ``device``
    (FSDP2 re-pads its shards) and filled with exactly this rank's piece of
    its lazy source: a DTensor's local tensor with the piece its mesh and
    placements give this rank (:func:`lazyinit.distributed.placement_of`),
    other tensors (buffers, parameters no engine took) whole. The values are
    those of eager construction on ``device`` with the same seed, sliced as
    the engine slices them; no collective is issued. Ties are restored where
    allocation split them; where the engine itself made tied tensors
    separate (FSDP2 units, tensor-parallel plans that shard one side), each
    gets the tie's values and a warning says so. Lazy tensors held as plain
    attributes are materialized whole on ``device``. On a CPU device the
    CPU generator is then where eager construction leaves it
    (``sync_rng``).

    Errors before anything is allocated (a model already partly
    materialized, a mesh on another device type, a layout lazyinit does not
    know, an exception in the block) put the lazy tensors back in their
    slots and raise; the engine's own changes to the modules (FSDP2's
    classes and hooks) cannot be undone, so build the model again before
    retrying. ``d.report`` (a :class:`DeferredReport`) tells what was done.
    """

    def __init__(self, module: nn.Module, device: DeviceLike, *, sync_rng: bool = True) -> None:
        self.module = module
        self.device = _normalize_device(device)
        self.sync_rng = sync_rng
        self.report = DeferredReport()
        self._shadowed: Optional[Shadowed] = None

    def __enter__(self) -> "deferred":
        if self._shadowed is not None:
            raise RuntimeError("lazyinit.distributed.deferred cannot be entered twice")
        self._shadowed = Shadowed(self.module, "lazyinit.distributed.deferred")
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        shadowed = self._shadowed
        assert shadowed is not None
        if exc_type is not None:
            shadowed.restore()
            return None  # the exception propagates
        start = time.perf_counter()
        try:
            fills = self._plan(shadowed)
        except BaseException:
            shadowed.restore()
            raise
        self._allocate_and_fill(shadowed, fills)
        self.report.seconds = time.perf_counter() - start
        return None

    # ------------------------------------------------------------------ plan
    def _plan(self, shadowed: Shadowed) -> List[_Fill]:
        """Every destination to fill, its source and placement; checks
        everything that can be checked before allocation."""
        by_object: Dict[int, _Fill] = {}
        objects_of_source: Dict[int, List[Tuple[int, Slot]]] = {}
        for slot, t in slots(self.module):
            source = shadowed.source(slot)
            if source is None:
                if t.is_meta:
                    raise RuntimeError(
                        f"lazyinit.distributed.deferred: {slot.qualname} is a meta tensor that "
                        "was not in the lazy model (made inside the block by an engine lazyinit "
                        "cannot fill, e.g. FSDP1's flat parameters: use "
                        "lazyinit.distributed.fsdp1). Only meta tensors replacing the model's "
                        "lazy tensors can be given values.")
                continue  # real, not ours
            if not t.is_meta:
                raise RuntimeError(
                    f"lazyinit.distributed.deferred: {slot.qualname} was given real memory on "
                    f"{t.device} inside the block; lazyinit fills the meta tensors it put there. "
                    "Do not move the model (.to(), to_empty()) inside the block: leaving it "
                    "does that.")
            fill = by_object.get(id(t))
            if fill is None:
                fill = _Fill([slot], source, Replicate(), is_dtensor(t))
                if fill.dtensor:
                    fill.placement = self._dtensor_placement(slot, t, source)
                elif tuple(t.shape) != tuple(source.shape):
                    raise RuntimeError(
                        f"lazyinit.distributed.deferred: {slot.qualname} has shape "
                        f"{tuple(t.shape)} after the block but {tuple(source.shape)} in the lazy "
                        "model; lazyinit fills tensors whose values it can take from the lazy "
                        "one (a DTensor's piece, or the whole tensor).")
                by_object[id(t)] = fill
                objects_of_source.setdefault(id(source), []).append((id(t), slot))
            else:
                fill.slots.append(slot)
        for entries in objects_of_source.values():
            if len(entries) > 1:
                names = [by_object[i].slots[0].qualname for i, _ in entries]
                self.report.split_ties.append(names)
                warnings.warn(
                    f"lazyinit.distributed.deferred: {', '.join(names)} are one tied tensor in "
                    "the lazy model, but the engine made them separate tensors (FSDP2 units "
                    "that each hold one side, or a tensor-parallel plan for one side only). "
                    "Each gets the tie's values, as with an eagerly built model, but they "
                    "will train apart. To keep the tie, shard the tied modules in one "
                    "fully_shard call (e.g. the root's) and give them one plan.",
                    stacklevel=3)
        return list(by_object.values())

    def _dtensor_placement(self, slot: Slot, t: torch.Tensor,
                           source: torch.Tensor) -> PlacementLike:
        mesh = t.device_mesh  # type: ignore[attr-defined]
        if mesh.device_type != self.device.type:
            raise RuntimeError(
                f"lazyinit.distributed.deferred: {slot.qualname} is sharded over a DeviceMesh "
                f"on '{mesh.device_type}', but deferred() materializes onto '{self.device}'. "
                f"Make the mesh with init_device_mesh('{self.device.type}', ...) or pass "
                f"device='{mesh.device_type}'.")
        if tuple(t.shape) != tuple(source.shape):
            raise RuntimeError(
                f"lazyinit.distributed.deferred: {slot.qualname} is a DTensor of global shape "
                f"{tuple(t.shape)}, but the lazy tensor has shape {tuple(source.shape)}.")
        placement = placement_of(t)
        expected = local_shape(tuple(source.shape), placement)
        actual = tuple(t._local_tensor.shape)  # type: ignore[attr-defined]
        if expected != actual:
            raise RuntimeError(
                f"lazyinit.distributed.deferred: {slot.qualname}'s local piece has shape "
                f"{actual}, but its placements {tuple(t.placements)} on mesh "  # type: ignore
                f"{tuple(mesh.shape)} at {mesh.get_coordinate()} give {expected} "
                f"(lazyinit placement {placement}). This layout is not understood; please "
                "report it.")
        return placement

    # ------------------------------------------------------------------ fill
    def _allocate_and_fill(self, shadowed: Shadowed, fills: List[_Fill]) -> None:
        device = self.device

        def allocate(t: torch.Tensor) -> torch.Tensor:
            return torch.empty_like(t, device=device) if t.is_meta else t

        # Module._apply, not to_empty: real tensors stay as they are, and
        # FSDPModule._apply re-pads its sharded parameters afterwards.
        self.module._apply(allocate)
        # Allocation made a new Parameter per slot where it could not keep
        # the object: slots that held one object hold the first slot's again.
        destinations: List[Tuple[_Fill, torch.Tensor]] = []
        for fill in fills:
            first = fill.slots[0].get()
            assert first is not None
            for other in fill.slots[1:]:
                if other.get() is not first:
                    other.set(first)
            destinations.append((fill, first))
        before = shard_stats()
        done = 0
        try:
            with torch.no_grad():
                for fill, dest in destinations:
                    local = dest._local_tensor if fill.dtensor else dest  # type: ignore
                    self._fill(fill.source, fill.placement, local)
                    done += 1
                    self.report.local_bytes += local.numel() * local.element_size()
                    if fill.dtensor:
                        self.report.pieces += 1
                    else:
                        self.report.whole += 1
        except BaseException as e:
            _poison([d for _, d in destinations[done:]])
            raise RuntimeError(
                f"lazyinit.distributed.deferred: filling {fill.slots[0].qualname} failed after "
                f"the model was allocated ({done} of {len(destinations)} tensors filled; the "
                "others are set to NaN so that nothing trains on garbage). The lazy model cannot "
                "be recovered: build it again.") from e
        after = shard_stats()
        self.report.pushed_down = after["pushed_down"] - before["pushed_down"]
        self.report.fallbacks = after["fallbacks"] - before["fallbacks"]
        for _, t in shadowed.plain_lazy:
            if _C._tensor_state(t) == 1:
                materialize(t, device)
        shadowed.sources.clear()
        shadowed.source_of_shadow.clear()
        shadowed.shadows.clear()
        if self.sync_rng and device.type == "cpu":
            # Eager construction on the CPU left the generator after every
            # draw; pieces never move it. Skip it there now.
            _C._rng_catch_up()
        _C._finish()

    def _fill(self, source: torch.Tensor, placement: PlacementLike,
              local: torch.Tensor) -> None:
        if local.numel() == 0:
            return
        if (local.dtype == source.dtype and local.device == self.device
                and local.is_contiguous()):
            materialize_shard(source, placement, self.device, out=local)
        else:  # another dtype (the model was cast in the block), an offloaded shard
            local.copy_(materialize_shard(source, placement, self.device))


def _poison(tensors: List[torch.Tensor]) -> None:
    with torch.no_grad():
        for t in tensors:
            local = t._local_tensor if is_dtensor(t) else t  # type: ignore[attr-defined]
            if local.is_floating_point() or local.is_complex():
                local.fill_(float("nan"))
