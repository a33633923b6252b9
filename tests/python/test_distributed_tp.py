"""Tensor parallelism (``parallelize_module``: ``ColwiseParallel``,
``RowwiseParallel``, ``SequenceParallel``) and tensor parallelism x FSDP2 on
a 2-D mesh, on lazy models through ``lazyinit.distributed.deferred``: 4 gloo
CPU processes, against the same engines on the eager model (pieces and 3
AdamW steps) and ``distribute_tensor``'s oracle."""
from __future__ import annotations

from typing import Dict

import pytest
import torch
import torch.nn as nn

import lazyinit
from dist_harness import Ctx, assert_all_ok, run_world
from dist_models import (SPModel, assert_equal_to_oracle, build_pair, has_dtensor_engines,
                         hf_llama_builder, lm_batch, lm_loss, named_slots)

pytestmark = pytest.mark.skipif(not has_dtensor_engines(),
                                reason="DTensor tensor parallelism and FSDP2 are public from "
                                       "torch 2.6")


def llama_tp_plan(model: nn.Module, head: bool) -> Dict[str, object]:
    """Megatron-style plan for HF Llama: attention and MLP projections
    column- then row-wise; with ``head``, the embedding row-wise and the
    output head column-wise (logits replicated)."""
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel
    plan: Dict[str, object] = {}
    for i in range(len(model.model.layers)):
        p = f"model.layers.{i}."
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                     "mlp.gate_proj", "mlp.up_proj"):
            plan[p + name] = ColwiseParallel()
        plan[p + "self_attn.o_proj"] = RowwiseParallel()
        plan[p + "mlp.down_proj"] = RowwiseParallel()
    if head:
        plan["model.embed_tokens"] = RowwiseParallel(input_layouts=Replicate())
        plan["lm_head"] = ColwiseParallel(output_layouts=Replicate())
    return plan


def sp_plan(model: SPModel) -> Dict[str, object]:
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                   SequenceParallel)
    plan: Dict[str, object] = {}
    for i in range(len(model.blocks)):
        plan[f"blocks.{i}.norm"] = SequenceParallel()
        plan[f"blocks.{i}.up"] = ColwiseParallel(input_layouts=Shard(1))
        plan[f"blocks.{i}.down"] = RowwiseParallel(output_layouts=Shard(1))
    return plan


def world4(ctx: Ctx) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import parallelize_module
    from dist_checks import check_engine

    tp4 = init_device_mesh("cpu", (4,), mesh_dim_names=("tp",))
    mesh2d = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    dp_rank = mesh2d.get_coordinate()[0]
    # Four KV heads: each of 4 TP ranks holds whole heads.
    llama = dict(num_key_value_heads=4)

    def tp_only(head: bool):
        return lambda m: parallelize_module(m, tp4, llama_tp_plan(m, head))

    ids = lm_batch(131, seed=40)  # the same batch on every TP rank
    ctx.check("tp_hf_llama_untied", check_engine, hf_llama_builder(False, **llama),
              tp_only(True), lambda m: lm_loss(m, ids))
    # The plan shards the embedding and the head, each its own way: torch
    # makes the tied weight two tensors (eager too); both get its values.
    ctx.check("tp_hf_llama_tied_split_by_plan", check_engine,
              hf_llama_builder(True, **llama), tp_only(True), lambda m: lm_loss(m, ids),
              keep_ties=False, expect_split_ties=True)

    x_full = torch.randn(2, 8, 24, generator=torch.Generator().manual_seed(7))
    x = x_full.chunk(4, dim=1)[ctx.rank]
    ctx.check("sequence_parallel", check_engine, SPModel,
              lambda m: parallelize_module(m, tp4, sp_plan(m)),
              lambda m: m(x).float().pow(2).mean())

    def tp_fsdp(head: bool):
        def prepare(m: nn.Module) -> None:
            parallelize_module(m, mesh2d["tp"], llama_tp_plan(m, head))
            for block in m.model.layers:
                fully_shard(block, mesh=mesh2d["dp"])
            fully_shard(m, mesh=mesh2d["dp"])
        return prepare

    ids_dp = lm_batch(131, seed=50 + dp_rank)
    ctx.check("tp_x_fsdp2_hf_llama_untied", check_engine, hf_llama_builder(False, **llama),
              tp_fsdp(True), lambda m: lm_loss(m, ids_dp), expect_strided=True)
    ctx.check("tp_x_fsdp2_hf_llama_tied", check_engine, hf_llama_builder(True, **llama),
              tp_fsdp(False), lambda m: lm_loss(m, ids_dp), expect_strided=True)
    ctx.check("plain_parallelize_module_of_lazy_model", _plain_tp, tp4, llama)


def _plain_tp(mesh, llama) -> None:
    """torch's parallelize_module on the lazy model itself keeps working:
    whole tensors, then DTensor's scatter from rank 0."""
    from torch.distributed.tensor.parallel import parallelize_module
    eager, lazy, _ = build_pair(hf_llama_builder(False, **llama))
    full = {n: t.detach() for n, t in named_slots(eager).items()}
    parallelize_module(lazy, mesh, llama_tp_plan(lazy, True))
    lazyinit.materialize(lazy, "cpu")  # what the plan left alone (norms, buffers)
    assert assert_equal_to_oracle(lazy, full) > 0


def test_tp_and_tp_x_fsdp2_world4():
    outs = run_world(4, "test_distributed_tp:world4", timeout=300)
    assert_all_ok(outs, ["tp_hf_llama_untied", "tp_hf_llama_tied_split_by_plan",
                         "sequence_parallel", "tp_x_fsdp2_hf_llama_untied",
                         "tp_x_fsdp2_hf_llama_tied", "plain_parallelize_module_of_lazy_model"])
