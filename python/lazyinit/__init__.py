"""lazyinit: a "lazy" device for PyTorch.

Build a model on the lazy device and no parameter memory is allocated:
factories and init ops are recorded. Later, :func:`materialize` replays the
records onto a real device, producing exactly the values eager construction
with the same seed would have produced::

    import torch, lazyinit
    torch.manual_seed(0)
    with lazyinit.LazyInitContext():
        model = MyTransformer(cfg)          # allocates nothing
    lazyinit.materialize(model, "cpu")      # in place; same values as eager

Pretrained weights load without being read: transformers' own
``from_pretrained`` under ``LazyInitContext()`` or ``torch.device("lazy")``,
or :func:`load_checkpoint` for safetensors / ``torch.save`` files; each
rank's pieces then read only their own bytes.
"""
from __future__ import annotations

import torch  # noqa: F401 (loads libtorch before the extension)

from . import _C
from ._registration import register as _register

_register()

from ._context import LazyInitContext  # noqa: E402
from ._materialize import (  # noqa: E402
    LazyStats,
    capture_stats,
    discard,
    is_lazy,
    live_graph_nodes,
    materialize,
    replay_count,
    stats,
)
from ._shard import (  # noqa: E402
    ByKind,
    FlatRange,
    Replicate,
    Shard,
    chunk_bounds,
    materialize_module_shards,
    materialize_shard,
    reset_shard_stats,
    shard_stats,
)

from ._checkpoint import LoadResult, load_checkpoint  # noqa: E402
from ._safetensors import CheckpointError  # noqa: E402

from . import distributed  # noqa: E402
from .distributed import _guards  # noqa: E402
from . import _transformers  # noqa: E402

_guards.install()
_transformers.install()

#: The device type lazy tensors report: "lazy" (torch's ``DeviceType::Lazy``).
device_type: str = _C._lazy_device_type()

__all__ = [
    "ByKind",
    "CheckpointError",
    "FlatRange",
    "LazyInitContext",
    "LazyStats",
    "LoadResult",
    "Replicate",
    "Shard",
    "capture_stats",
    "chunk_bounds",
    "discard",
    "distributed",
    "device_type",
    "is_lazy",
    "live_graph_nodes",
    "load_checkpoint",
    "materialize",
    "materialize_module_shards",
    "materialize_shard",
    "replay_count",
    "reset_shard_stats",
    "shard_stats",
    "stats",
]
