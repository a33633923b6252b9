"""ColossalAI's ``LazyInitContext.distribute`` on torch's DeviceMesh
(``lazyinit.compat.colossalai``): 4 gloo CPU ranks, a 1-D and a 2-D mesh.

The flow of ColossalAI's ``tests/test_lazy/test_distribute.py`` runs with
its imports changed: a ``ShardingSpec`` with ``dim_partition_dict`` for
every lazy tensor (the first even dim sharded over mesh dim 0), then
``ctx.distribute(model, device_mesh, sharding_spec_dict, verbose=True)``.
Each rank's pieces are compared with ``distribute_tensor`` of the eager
model (same seed), the oracle that needs no communication.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
from typing import Dict, List, Optional

import pytest
import torch
import torch.nn as nn

from dist_harness import Ctx, assert_all_ok, collective_count, run_world
import lazyinit
from dist_models import assert_equal_to_oracle, has_dtensor_engines, is_dtensor, named_slots

pytestmark = pytest.mark.skipif(not has_dtensor_engines(),
                                reason="DTensor and DeviceMesh are public from torch 2.6")


@dataclasses.dataclass
class ShardingSpec:
    """Stands in for ``colossalai.tensor.d_tensor.sharding_spec.ShardingSpec``:
    what ``distribute`` reads of it is ``dim_partition_dict``."""

    dim_size: int
    dim_partition_dict: Dict[int, List[int]]


def find_shard_dim(shape: torch.Size) -> Optional[int]:
    for dim, size in enumerate(shape):
        if size % 2 == 0:
            return dim
    return None


def make_sharding_spec(original_tensor: torch.Tensor) -> ShardingSpec:
    shard_dim = find_shard_dim(original_tensor.shape)
    dim_partition_dict = {shard_dim: [0]} if shard_dim is not None else {}
    return ShardingSpec(dim_size=original_tensor.dim(), dim_partition_dict=dim_partition_dict)


def _get_current_name(prefix: str, name: str) -> str:
    return f"{prefix}.{name}".lstrip(".")


def generate_sharding_spec_dict(model: nn.Module) -> dict:
    from lazyinit.compat.colossalai import LazyTensor
    sharding_spec_dict = {}

    @torch.no_grad()
    def generate_recursively(module: nn.Module, prefix: str = ""):
        for name, mod in module.named_children():
            generate_recursively(mod, prefix=_get_current_name(prefix, name))
        for name, param in module.named_parameters(recurse=False):
            if isinstance(param, LazyTensor):
                sharding_spec_dict[_get_current_name(prefix, name)] = make_sharding_spec(param)
        for name, buf in module.named_buffers(recurse=False):
            if isinstance(buf, LazyTensor):
                sharding_spec_dict[_get_current_name(prefix, name)] = make_sharding_spec(buf)

    generate_recursively(model)
    return sharding_spec_dict


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 10))
        self.lin = nn.Linear(10, 5)
        self.register_buffer("table", torch.rand(4, 3))
        self.register_buffer("scale", torch.linspace(0.0, 1.0, 5), persistent=False)


def world(ctx: Ctx) -> None:
    import models
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard
    from lazyinit.compat.colossalai import LazyInitContext  # was: colossalai.lazy.lazy_init

    seed = 42
    mesh_1d = init_device_mesh("cpu", (ctx.world,))
    mesh_2d = init_device_mesh("cpu", (2, ctx.world // 2))

    def pair(build):
        torch.manual_seed(seed)
        model = build()
        torch.manual_seed(seed)
        ctx_ = LazyInitContext()
        with ctx_:
            deferred_model = build()
        return model, deferred_model, ctx_

    def colossalai_flow(build, device_mesh) -> None:
        model, deferred_model, lazy_ctx = pair(build)
        sharding_spec_dict = generate_sharding_spec_dict(deferred_model)
        before = collective_count()
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            lazy_ctx.distribute(deferred_model, device_mesh, sharding_spec_dict, verbose=True)
        assert collective_count() == before, "distribute ran collectives"
        lines = out.getvalue().splitlines()
        if ctx.rank == 0:
            assert len(lines) == 3 and lines[0].startswith("Param lazy rate: "), lines
        else:
            assert lines == [], lines
        assert_equal_to_oracle(deferred_model, named_slots(model))
        slots = named_slots(deferred_model)
        assert sharding_spec_dict and all(is_dtensor(slots[n]) for n in sharding_spec_dict)

    for name, build in [
        ("llama_tied", lambda: models.Llama(models.llama_config("tiny", tie_word_embeddings=True))),
        ("gpt2", lambda: models.GPT2(models.gpt2_config("tiny"))),
        ("vit", lambda: models.ViT(models.vit_config("tiny"))),
    ]:
        ctx.check(f"colossalai_flow_{name}_1d", colossalai_flow, build, mesh_1d)
        ctx.check(f"colossalai_flow_{name}_2d", colossalai_flow, build, mesh_2d)

    def placements_2d() -> None:
        model, lazy, _ = pair(Small)
        spec = {
            "w": [Shard(0), Shard(1)],
            "lin.weight": ShardingSpec(2, {0: [0, 1]}),  # dim 0 over both mesh dims
            "lin.bias": (Replicate(), Shard(0)),
            "table": {1: [1]},
        }
        out = LazyInitContext.distribute(lazy, mesh_2d, spec)
        assert out is lazy
        assert tuple(lazy.w.placements) == (Shard(0), Shard(1))
        assert tuple(lazy.lin.weight.placements) == (Shard(0), Shard(0))
        assert tuple(lazy.table.placements) == (Replicate(), Shard(1))
        assert isinstance(lazy.w, nn.Parameter) and lazy.w.requires_grad
        assert assert_equal_to_oracle(lazy, named_slots(model)) == 4
        assert not is_dtensor(lazy.scale) and not lazyinit.is_lazy(lazy.scale)  # unnamed: whole
    ctx.check("placements_2d", placements_2d)

    def errors() -> None:
        _, lazy, _ = pair(Small)
        with pytest.raises(KeyError, match="no parameter or buffer"):
            LazyInitContext.distribute(lazy, mesh_1d, {"nope": [Shard(0)]})
        with pytest.raises(ValueError, match="one per mesh dim"):
            LazyInitContext.distribute(lazy, mesh_2d, {"w": [Shard(0)]})
        with pytest.raises(NotImplementedError, match="increasing"):
            LazyInitContext.distribute(lazy, mesh_2d, {"w": ShardingSpec(2, {0: [1, 0]})})
        with pytest.raises(TypeError, match="DeviceMesh"):
            LazyInitContext.distribute(lazy, object(), {})
        assert lazyinit.is_lazy(lazy) and all(not t.is_meta for t in named_slots(lazy).values())

        class Tied(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.a = nn.Linear(4, 4)
                self.b = nn.Linear(4, 4)
                self.b.weight = self.a.weight
        _, tied, _ = pair(Tied)
        with pytest.raises(ValueError, match="tied"):
            LazyInitContext.distribute(tied, mesh_1d, {"a.weight": [Shard(0)],
                                                       "b.weight": [Replicate()]})
        with LazyInitContext():
            mixed = Small()
            mixed.extra = nn.Parameter(torch.ones(4, device="cpu"))
        with pytest.raises(ValueError, match="not lazy"):
            LazyInitContext.distribute(mixed, mesh_1d, {"extra": [Shard(0)]})
    ctx.check("errors", errors)


def test_distribute_world4():
    outs = run_world(4, "test_compat_distribute:world", timeout=300)
    names = [f"colossalai_flow_{m}_{d}" for m in ("llama_tied", "gpt2", "vit") for d in ("1d", "2d")]
    assert_all_ok(outs, names + ["placements_2d", "errors"])
