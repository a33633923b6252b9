"""Pipeline stages: a stage's layers, split off a lazy model."""
from __future__ import annotations

import copy
from typing import Iterable, List, Set

import torch.nn as nn

from .._materialize import DeviceLike, materialize


def split_stage(module: nn.Module, keep: Iterable[str], *, copy_model: bool = True) -> nn.Module:
    """The part of ``module`` holding the submodules named in ``keep`` (as
    ``named_modules`` names them, e.g. ``"model.embed_tokens"``,
    ``"model.layers.3"``): a deep copy (``copy_model=True``, as torchtitan
    splits stages; a lazy copy costs no tensor memory) with every other
    submodule deleted. Names do not change (a ``ModuleList`` keeps its
    numbering, with gaps: iterating it, or slicing it, gives the kept layers).
    Parameters and buffers of the kept modules' ancestors (none in a
    transformer's containers) stay. The stage stays lazy: materialize it
    with :func:`lazyinit.materialize` (or :func:`pipeline_stage` does both);
    it then holds exactly the values of those layers in eager
    single-device construction, with no per-stage seed."""
    wanted: Set[str] = set(keep)
    names = {n for n, _ in module.named_modules()}
    missing = sorted(wanted - names)
    if missing:
        raise ValueError(f"lazyinit.distributed.split_stage: no submodule named {missing}; "
                         f"names look like {sorted(names)[1:6]}")
    stage = copy.deepcopy(module) if copy_model else module

    def kept_or_above(name: str) -> bool:
        return any(w == name or w.startswith(name + ".") for w in wanted) or any(
            name.startswith(w + ".") for w in wanted)

    def prune(mod: nn.Module, prefix: str) -> None:
        for child_name in list(mod._modules.keys()):
            qual = prefix + child_name
            child = mod._modules[child_name]
            if child is None:
                continue
            if not kept_or_above(qual):
                del mod._modules[child_name]
            elif qual not in wanted:
                prune(child, qual + ".")

    if "" not in wanted:
        prune(stage, "")
    return stage


def pipeline_stage(module: nn.Module, keep: Iterable[str], device: DeviceLike,
                   *, copy_model: bool = True) -> nn.Module:
    """:func:`split_stage`, then :func:`lazyinit.materialize` of the stage on
    ``device``: each rank computes only its stage's tensors."""
    stage = split_stage(module, keep, copy_model=copy_model)
    return materialize(stage, device)


def stage_layers(num_layers: int, num_stages: int, stage: int) -> List[int]:
    """The layer indices of ``stage`` when ``num_layers`` are split into
    ``num_stages`` contiguous stages as evenly as possible (earlier stages
    take the remainder)."""
    base, extra = divmod(num_layers, num_stages)
    start = stage * base + min(stage, extra)
    return list(range(start, start + base + (1 if stage < extra else 0)))
