"""lazyinit with torch's distributed engines: each rank computes only its
pieces of a lazy model, equal to eager construction sliced as the engine
slices it.

- :func:`deferred` (torch >= 2.6 for DTensor engines): run torch's own
  ``fully_shard`` (FSDP2), ``parallelize_module`` (tensor parallelism) or
  both on a 2-D mesh inside it; on exit each rank's DTensor pieces and
  other tensors are computed in place, with no collective.
- :func:`fully_shard`: FSDP2 per block and root, inside :func:`deferred`.
- :func:`ddp`: ``DistributedDataParallel`` of a lazy model, every rank
  materializing the same values locally (no broadcast where torch allows).
- :func:`fsdp1` / :func:`fsdp1_init`: ``FullyShardedDataParallel`` through
  its ``param_init_fn``.
- :func:`split_stage` / :func:`pipeline_stage`: a pipeline stage's layers.
- :func:`placement_for` / :func:`placement_of`: DTensor placements on a
  mesh as lazyinit placements.

See docs/user_guide.md, "Distributed".
"""
from __future__ import annotations

from ._ddp import checksum, ddp, verify_replicas
from ._deferred import DeferredReport, deferred
from ._fsdp import default_blocks, fsdp1, fsdp1_init, fully_shard
from ._pipeline import pipeline_stage, split_stage, stage_layers
from ._placement import local_shape, placement_for, placement_of

__all__ = [
    "DeferredReport",
    "checksum",
    "ddp",
    "default_blocks",
    "deferred",
    "fsdp1",
    "fsdp1_init",
    "fully_shard",
    "local_shape",
    "pipeline_stage",
    "placement_for",
    "placement_of",
    "split_stage",
    "stage_layers",
    "verify_replicas",
]
