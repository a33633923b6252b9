"""FSDP conveniences: FSDP2 in one call, FSDP1 through ``param_init_fn``."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator, List, Union

import torch
import torch.nn as nn

from .. import _C
from .._materialize import DeviceLike, materialize
from ._deferred import _normalize_device, deferred
from ._slots import Shadowed, slots

BlocksLike = Union[None, Iterable[nn.Module], Callable[[str, nn.Module], bool]]


def _fsdp2() -> Callable[..., Any]:
    try:
        from torch.distributed.fsdp import fully_shard  # torch >= 2.6
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import fully_shard  # type: ignore
        except ImportError as e:
            raise RuntimeError(
                f"lazyinit.distributed.fully_shard needs FSDP2 (torch >= 2.6); this is torch "
                f"{torch.__version__}. Use lazyinit.distributed.fsdp1 or ddp.") from e
    return fully_shard


def default_blocks(module: nn.Module) -> List[nn.Module]:
    """The modules a model is usually sharded by: those whose class is named
    in Hugging Face's ``_no_split_modules``, else the members of every
    ``nn.ModuleList`` (transformer layers)."""
    names = set(getattr(module, "_no_split_modules", None) or ())
    if names:
        found = [m for m in module.modules() if type(m).__name__ in names]
        if found:
            return found
    blocks: List[nn.Module] = []
    for m in module.modules():
        if isinstance(m, nn.ModuleList):
            blocks.extend(m)
    return blocks


def fully_shard(module: nn.Module, mesh: Any = None, *, device: DeviceLike = None,
                blocks: BlocksLike = None, **kwargs: Any) -> nn.Module:
    """FSDP2 for a lazy model in one call: inside :func:`deferred`, torch's
    ``fully_shard(block, mesh=mesh, **kwargs)`` on every block, then on
    ``module``; each rank computes only its shards. ``blocks``: the modules
    to shard one by one (default :func:`default_blocks`), or a predicate
    ``(name, module) -> bool``. ``mesh``: a 1-D DeviceMesh (FSDP) or 2-D
    (HSDP), default one over every rank on ``device``'s type; ``device``:
    default the mesh's device type (the current CUDA device for "cuda").
    Tied parameters outside the blocks (embeddings and an output head) end
    in the root's unit and stay tied. Returns ``module`` (now an FSDPModule).
    """
    shard = _fsdp2()
    if mesh is None:
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        if not dist.is_initialized():
            raise RuntimeError("lazyinit.distributed.fully_shard: call "
                               "torch.distributed.init_process_group() first, or pass a mesh")
        dev_type = torch.device(device).type if device is not None else (
            "cuda" if torch.cuda.is_available() else "cpu")
        mesh = init_device_mesh(dev_type, (dist.get_world_size(),))
    target = _normalize_device(device if device is not None else mesh.device_type)
    if callable(blocks):
        predicate = blocks
        chosen = [m for n, m in module.named_modules() if n and predicate(n, m)]
    elif blocks is None:
        chosen = default_blocks(module)
    else:
        chosen = list(blocks)
    with deferred(module, target):
        for block in chosen:
            shard(block, mesh=mesh, **kwargs)
        shard(module, mesh=mesh, **kwargs)
    return module


@contextlib.contextmanager
def fsdp1_init(module: nn.Module, device: DeviceLike) -> Iterator[Callable[[nn.Module], None]]:
    """FSDP1 (``FullyShardedDataParallel``) of a lazy model::

        with lazyinit.distributed.fsdp1_init(model, "cuda") as init_fn:
            model = FSDP(model, param_init_fn=init_fn, auto_wrap_policy=...)

    Inside, the model's lazy tensors are meta tensors, so FSDP1 asks
    ``init_fn`` to materialize each unit's modules before flattening them;
    ``init_fn`` puts the lazy tensors back and materializes them in place on
    ``device`` (whole: FSDP1 flattens a unit's full parameters, then keeps
    its shard), with eager values, ties and ``Parameter`` objects intact. On
    exit, tensors FSDP1 did not ask for (ignored modules) are put back lazy.
    """
    target = _normalize_device(device)
    shadowed = Shadowed(module, "lazyinit.distributed.fsdp1_init")
    slots_of_source = {}
    for slot, source in shadowed.sources.values():
        slots_of_source.setdefault(id(source), []).append(slot)

    def param_init_fn(sub: nn.Module) -> None:
        for kind in ("_parameters", "_buffers"):
            for name, t in list(getattr(sub, kind).items()):
                source = shadowed.source_of_shadow.get(id(t)) if t is not None else None
                if source is None:
                    continue
                if _C._tensor_state(source) == 1:
                    materialize(source, target)
                for slot in slots_of_source[id(source)]:
                    if slot.get() is t:
                        slot.set(source)

    try:
        yield param_init_fn
    except BaseException:
        shadowed.restore()
        raise
    # Anything FSDP1 left on meta (ignored modules) is lazy again.
    for slot, t in slots(module):
        if t.is_meta and id(t) in shadowed.source_of_shadow:
            slot.set(shadowed.source_of_shadow[id(t)])
    _C._finish()


def fsdp1(module: nn.Module, device: DeviceLike = None, **kwargs: Any) -> nn.Module:
    """``FullyShardedDataParallel(module, param_init_fn=..., **kwargs)`` for a
    lazy module (see :func:`fsdp1_init`); ``device`` defaults to
    ``kwargs["device_id"]``, else the current CUDA device, else the CPU."""
    from torch.distributed.fsdp import FullyShardedDataParallel
    if device is None:
        device_id = kwargs.get("device_id")
        if device_id is not None:
            device = device_id
        else:
            device = "cuda" if torch.cuda.is_available() else "cpu"
    if "param_init_fn" in kwargs:
        raise ValueError("lazyinit.distributed.fsdp1 sets param_init_fn itself")
    with fsdp1_init(module, device) as init_fn:
        return FullyShardedDataParallel(module, param_init_fn=init_fn, **kwargs)
