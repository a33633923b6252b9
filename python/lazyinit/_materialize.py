"""Materialization and inspection of lazy tensors and modules."""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple, TypeVar, Union

import torch

from . import _C, _cuda

T = TypeVar("T", torch.Tensor, torch.nn.Module)
DeviceLike = Union[str, int, torch.device, None]

_LAZY, _MATERIALIZED, _DISCARDED = 1, 2, 3
_PROGRESS_MIN_BYTES = 1 << 30


def _device_str(device: DeviceLike) -> Optional[str]:
    if device is None:
        return None
    if isinstance(device, int):
        device = torch.device("cuda", device)
    return str(torch.device(device))


def _target(device: DeviceLike, what: str = "") -> Optional[str]:
    """``device`` as a string (None stays None), with CUDA initialized for
    lazyinit (grid limits, generators) when it names a GPU. A device that
    cannot hold data here raises now, as ``module.to(device)`` would, also
    when nothing is lazy any more."""
    target = _device_str(device)
    if target is not None:
        _C._check_target_device(target, what)
        if target.startswith("cuda"):
            _cuda.ensure_initialized()
    return target


def _module_tensors(module: torch.nn.Module,
                    only_lazy: bool = False) -> List[Tuple[str, torch.Tensor, bool]]:
    """(name, tensor, is_parameter) for every parameter and buffer, once each,
    in ``named_parameters()`` then ``named_buffers()`` order (tied tensors
    under their first name); ``only_lazy``: the lazy ones alone. The walk
    runs in C++: on models of hundreds of modules, ``named_modules``'
    generators cost more than materializing the tensors. It follows the
    ``_modules`` / ``_parameters`` / ``_buffers`` mappings as
    ``named_modules()`` does; a class that overrides ``named_modules`` or
    ``named_parameters`` is not consulted."""
    return _C._module_tensors(module, only_lazy)


def plain_tensor_attributes(module: torch.nn.Module) -> List[Tuple[str, torch.Tensor]]:
    """(name, tensor) for tensors a module holds as plain attributes, neither
    parameter nor buffer (weight_norm's computed ``weight``, positional
    tables), directly or in a list, tuple or dict attribute, once each."""
    out: List[Tuple[str, torch.Tensor]] = []
    seen = set()

    def add(name: str, value: object) -> None:
        if isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter) \
                and id(value) not in seen:
            seen.add(id(value))
            out.append((name, value))

    for qual, mod in module.named_modules():
        prefix = qual + "." if qual else ""
        for name, value in vars(mod).items():
            if name in ("_parameters", "_buffers", "_modules"):
                continue
            if isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    add(f"{prefix}{name}[{i}]", item)
            elif isinstance(value, dict):
                for key, item in value.items():
                    add(f"{prefix}{name}[{key!r}]", item)
            else:
                add(prefix + name, value)
    return out


def _lazy_attributes(module: torch.nn.Module) -> List[torch.Tensor]:
    return [t for _, t in plain_tensor_attributes(module) if _C._tensor_state(t) == _LAZY]


def is_lazy(obj: Union[torch.Tensor, torch.nn.Module]) -> bool:
    """True if the tensor (or any parameter, buffer or tensor attribute of
    the module) still awaits materialization."""
    if isinstance(obj, torch.nn.Module):
        return any(_C._tensor_state(t) == _LAZY for _, t, _ in _module_tensors(obj)) or \
            bool(_lazy_attributes(obj))
    return _C._tensor_state(obj) == _LAZY


def _progress_bar(total: int, enabled: Optional[bool]):
    if enabled is False or (enabled is None and total < _PROGRESS_MIN_BYTES):
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # progress is a nicety, not a requirement
        return None
    return tqdm(total=total, unit="B", unit_scale=True, desc="materialize")


def materialize(obj: T, device: DeviceLike = None, progress: Optional[bool] = None,
                flat: bool = True) -> T:
    """Replays lazy tensors onto ``device``, in place, and returns ``obj``.

    ``obj`` is a tensor or a module (all its parameters and buffers). Every
    tensor object stays the same object: Parameters, tied weights and
    optimizer references remain valid. ``device=None`` uses the
    ``default_device`` of the LazyInitContext each tensor was created in
    (CPU if none). Values equal eager construction with the same seed, in
    any materialization order. ``progress`` shows a progress bar (default:
    when more than 1 GiB is materialized).

    For a module, tensors it holds as plain attributes (weight_norm's
    computed ``weight``, positional tables; see
    :func:`plain_tensor_attributes`) are materialized too.

    For a module, ``flat=True`` (the default) makes one allocation per
    device and dtype (on a GPU three growing ones, holding 1/21, 4/21 and
    16/21 of the bytes, so that kernels start before all of the memory is
    allocated), and gives each parameter and buffer a storage of its own
    over a slice of it, aligned as the CUDA caching allocator aligns
    blocks. That saves an allocator call per tensor (on a GPU, a
    ``cudaMalloc`` per large tensor). The tensors look like eager ones
    (storage offset 0, no storage shared), and optimizers, ``state_dict()``,
    ``torch.save`` and ``load_state_dict`` work as usual; but the memory is
    freed only once every tensor of an allocation is, and their storages
    cannot be resized or shared between processes through CUDA IPC.
    ``flat=False`` gives each tensor its own allocation, as eager
    construction does.
    """
    target = _target(device)
    if isinstance(obj, torch.Tensor):
        _C._materialize(obj, target)
        _C._finish()
        return obj
    pending: List[torch.Tensor] = [t for _, t, _ in _module_tensors(obj, only_lazy=True)]
    if target is None and any(_C._home_device(t).startswith("cuda") for t in pending):
        _cuda.ensure_initialized()
    bar = None if progress is False else _progress_bar(
        sum(t.numel() * t.element_size() for t in pending), progress)
    try:
        if flat:
            _C._materialize_flat(pending, target, None if bar is None else bar.update)
        else:
            for t in pending:
                _C._materialize(t, target, settle=False)  # settled once, by _finish()
                if bar is not None:
                    bar.update(t.numel() * t.element_size())
    finally:
        if bar is not None:
            bar.close()
    # Tensors held as plain attributes (not parameters or buffers), after
    # them: those that are views of parameters turned real with them.
    for t in _lazy_attributes(obj):
        _C._materialize(t, target, settle=False)
    _C._finish()
    return obj


@dataclasses.dataclass
class LazyStats:
    """Counts of a module's tensors (tied tensors once) by state.

    ``lazy``: still awaiting materialization; ``materialized``: real now;
    ``early``: whose values had to be computed before materialization (an op
    needed them), whether or not they have been materialized since.
    ``discarded``: freed by :func:`lazyinit.discard` (no value any more;
    counted in no other field). ``attributes_lazy``: lazy tensors held as
    plain module attributes (:func:`plain_tensor_attributes`). ``shard_fallbacks``: lazy tensors for which
    :func:`lazyinit.materialize_shard` had to replay the whole storage and
    slice it (an op on its tape is not element-local).
    """

    parameters_lazy: int = 0
    parameters_materialized: int = 0
    parameters_early: int = 0
    buffers_lazy: int = 0
    buffers_materialized: int = 0
    buffers_early: int = 0
    elements_lazy: int = 0
    elements_materialized: int = 0
    elements_early: int = 0
    discarded: int = 0
    attributes_lazy: int = 0
    shard_fallbacks: int = 0


def stats(module: torch.nn.Module) -> LazyStats:
    """How many parameters, buffers and elements of ``module`` are still lazy,
    materialized, and were early-materialized."""
    s = LazyStats()
    for _, t, is_param in _module_tensors(module):
        kind = "parameters" if is_param else "buffers"
        state = _C._tensor_state(t)
        n = t.numel()
        if state == _DISCARDED:
            s.discarded += 1
            continue
        if state == _LAZY:
            setattr(s, kind + "_lazy", getattr(s, kind + "_lazy") + 1)
            s.elements_lazy += n
        else:  # materialized by lazyinit, or created real
            setattr(s, kind + "_materialized", getattr(s, kind + "_materialized") + 1)
            s.elements_materialized += n
        if state == _LAZY and _C._shard_fell_back(t):
            s.shard_fallbacks += 1
        if state != 0 and _C._was_early(t):
            setattr(s, kind + "_early", getattr(s, kind + "_early") + 1)
            s.elements_early += n
    s.attributes_lazy = len(_lazy_attributes(module))
    return s


def capture_stats() -> Dict[str, int]:
    """Process-wide counts of real tensors that recorded ops read: ``copies``
    (copied when recorded, so later writes to the source cannot change
    replay), ``bytes`` (their size) and ``zero_copy`` (registered immutable
    sources, such as checkpoint mappings, kept without a copy); and reads of
    checkpoint mappings: ``mapped_reads`` / ``mapped_read_bytes`` (chunks
    requested from the file, page-rounded) and ``private_maps`` (tensors
    materialized as a new private mapping of their file bytes)."""
    return dict(_C._capture_stats())


def replay_count(tensor: torch.Tensor) -> int:
    """How many times the tensor's storage has been replayed (a test aid)."""
    return _C._replay_count(tensor)


def live_graph_nodes() -> int:
    """Recorded nodes still held in this process (0 once every lazy tensor
    has been materialized or freed)."""
    return _C._live_nodes()


def discard(obj: Union[torch.Tensor, torch.nn.Module]) -> None:
    """Frees the recorded graph of lazy tensors without materializing them.

    Using the value of such a tensor, or of a view of its storage, raises an
    error afterwards; its shape and dtype, and new views of it, still work.
    Pending tensors computed from it keep what they read."""
    tensors = [t for _, t, _ in _module_tensors(obj)] if isinstance(obj, torch.nn.Module) else [obj]
    for t in tensors:
        _C._discard(t)
