"""FSDP2 (``fully_shard``) on lazy models through ``lazyinit.distributed``:
gloo worlds of 2 and 3 CPU processes, Hugging Face Llama (tied and untied,
fp32 and bf16) and the reference models, against FSDP2 on the eager model
and ``distribute_tensor``'s oracle; errors; per-rank peak memory."""
from __future__ import annotations


import pytest
import torch
import torch.nn as nn

import lazyinit
import lazyinit.distributed as ld
from dist_harness import (Ctx, assert_all_ok, collective_count, reset_peak_rss, run_world,
                          vm_kib)
from dist_models import (assert_equal_to_oracle, build_pair, has_dtensor_engines,
                         hf_llama_builder, lm_batch, lm_loss, named_slots)

pytestmark = pytest.mark.skipif(not has_dtensor_engines(),
                                reason="FSDP2 and DTensor are public from torch 2.6")


def _mesh(world: int):
    from torch.distributed.device_mesh import init_device_mesh
    return init_device_mesh("cpu", (world,))


def _per_block(mesh, **kw):
    from torch.distributed.fsdp import fully_shard

    def prepare(model: nn.Module) -> None:
        for block in ld.default_blocks(model):
            fully_shard(block, mesh=mesh, **kw)
        fully_shard(model, mesh=mesh, **kw)
    return prepare


class OddShapes(nn.Module):
    """Parameters whose first dim is smaller than the world (empty pieces),
    odd sizes, a 1-D parameter, buffers (one non-persistent, one 0-dim)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(2, 5))
        self.b = nn.Parameter(torch.rand(7))
        self.c = nn.Parameter(torch.empty(1, 3).uniform_(-1, 1))
        self.e = nn.Linear(5, 7)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 7))
        self.register_buffer("step", torch.tensor(3.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.e(x) * self.scale + self.b
        return y.pow(2).mean() + self.a.pow(2).sum() + self.c.sum() * self.step


# ---------------------------------------------------------------- world 2
def world2(ctx: Ctx) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy
    from torch.distributed.tensor import Shard
    from dist_checks import check_engine
    import models

    mesh = _mesh(ctx.world)
    ids = lm_batch(131, seed=10 + ctx.rank)

    ctx.check("hf_llama_tied_fp32", check_engine, hf_llama_builder(tied=True),
              _per_block(mesh), lambda m: lm_loss(m, ids))
    # Debian's gloo has no 16-bit collectives ("Invalid scalar type"): the
    # bf16 compute of mp_policy trains on the GPU leg (test_distributed_gpu.py).
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    ctx.check("hf_llama_untied_mp_no_reshard", check_engine, hf_llama_builder(tied=False),
              _per_block(mesh, reshard_after_forward=False, mp_policy=mp), None)
    ctx.check("hf_llama_untied_no_reshard_training", check_engine,
              hf_llama_builder(tied=False), _per_block(mesh, reshard_after_forward=False),
              lambda m: lm_loss(m, ids))

    def dim1(p: nn.Parameter):
        return Shard(1) if p.ndim == 2 and p.shape[1] % ctx.world == 0 else Shard(0)
    ctx.check("hf_llama_shard_placement_fn_dim1", check_engine, hf_llama_builder(tied=False),
              _per_block(mesh, shard_placement_fn=dim1), lambda m: lm_loss(m, ids))

    ref_ids = lm_batch(128, seed=20 + ctx.rank)
    ctx.check("models_llama_rope_caches", check_engine,
              lambda: models.Llama(models.llama_config("tiny")), _per_block(mesh),
              lambda m: m(ref_ids).float().pow(2).mean())
    ctx.check("models_gpt2_tied", check_engine, lambda: models.GPT2(models.gpt2_config("tiny")),
              _per_block(mesh), None)
    ctx.check("convenience_fully_shard", _convenience, mesh)
    ctx.check("plain_fully_shard_of_lazy_model", _plain_fully_shard, mesh)
    ctx.check("errors", _errors, mesh)


def _convenience(mesh) -> None:
    eager, lazy, _ = build_pair(hf_llama_builder(tied=True))
    full = {n: t.detach() for n, t in named_slots(eager).items()}
    before = collective_count()
    out = ld.fully_shard(lazy, mesh)
    assert out is lazy and collective_count() == before
    assert type(lazy).__name__.startswith("FSDP")
    assert all(type(b).__name__.startswith("FSDP") for b in lazy.model.layers)
    assert lazy.lm_head.weight is lazy.model.embed_tokens.weight
    assert assert_equal_to_oracle(lazy, full) > 0


def _plain_fully_shard(mesh) -> None:
    """torch's fully_shard on the lazy model itself (no deferred) keeps
    working: every tensor is materialized whole, then FSDP2 keeps its shard."""
    from torch.distributed.fsdp import fully_shard
    eager, lazy, _ = build_pair(hf_llama_builder(tied=False))
    full = {n: t.detach() for n, t in named_slots(eager).items()}
    for block in lazy.model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(lazy, mesh=mesh)
    assert assert_equal_to_oracle(lazy, full) > 0


def _errors(mesh) -> None:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard
    build = hf_llama_builder(tied=True)
    # Partly materialized: refused before anything changes.
    _, lazy, _ = build_pair(build)
    lazyinit.materialize(lazy.model.norm, "cpu")
    with pytest.raises(RuntimeError, match="partly materialized"):
        with ld.deferred(lazy, "cpu"):
            pass
    assert lazyinit.is_lazy(lazy.model.layers[0].mlp.up_proj.weight)
    # An exception in the block puts the lazy tensors back.
    _, lazy, _ = build_pair(build)
    before = dict(named_slots(lazy))
    with pytest.raises(ZeroDivisionError):
        with ld.deferred(lazy, "cpu"):
            assert lazy.lm_head.weight.is_meta
            assert lazy.lm_head.weight is lazy.model.embed_tokens.weight
            1 / 0
    after = named_slots(lazy)
    assert all(after[n] is t for n, t in before.items()) and lazyinit.is_lazy(lazy)
    # An engine error inside the block: the same.
    with pytest.raises(Exception):
        with ld.deferred(lazy, "cpu"):
            fully_shard(lazy.model.layers[0], mesh=mesh, shard_placement_fn=lambda p: Shard(5))
    after = named_slots(lazy)
    assert all(after[n] is t for n, t in before.items()) and lazyinit.is_lazy(lazy)
    # Moving the model inside the block.
    _, lazy, _ = build_pair(build)
    with pytest.raises(RuntimeError, match="inside the block"):
        with ld.deferred(lazy, "cpu"):
            lazy.model.norm.to_empty(device="cpu")
    assert lazyinit.is_lazy(lazy.model.norm.weight)
    # A mesh on another device type than the target (only a CUDA machine can
    # make a real one; the check itself, on a stand-in DTensor).
    _, lazy, _ = build_pair(build)
    d = ld.deferred(lazy, "cpu")

    class FakeMesh:
        device_type = "cuda"

    class FakeDTensor:
        device_mesh = FakeMesh()
        shape = lazy.lm_head.weight.shape

    slot = ld._slots.Slot("lm_head.weight", lazy.lm_head, "_parameters", "weight")
    with pytest.raises(RuntimeError, match="init_device_mesh\\('cpu'"):
        d._dtensor_placement(slot, FakeDTensor(), lazy.lm_head.weight)
    # Nothing lazy; entered twice.
    with pytest.raises(RuntimeError, match="no lazy tensor"):
        with ld.deferred(nn.Linear(2, 2), "cpu"):
            pass
    with pytest.raises(ValueError, match="real device"):
        ld.deferred(lazy, "meta")


def test_fsdp2_world2():
    outs = run_world(2, "test_distributed_fsdp2:world2")
    assert_all_ok(outs, ["hf_llama_tied_fp32", "hf_llama_untied_mp_no_reshard",
                         "hf_llama_untied_no_reshard_training",
                         "hf_llama_shard_placement_fn_dim1", "models_llama_rope_caches",
                         "models_gpt2_tied", "convenience_fully_shard",
                         "plain_fully_shard_of_lazy_model", "errors"])


# ---------------------------------------------------------------- world 3
def world3(ctx: Ctx) -> None:
    from dist_checks import check_engine
    import models

    mesh = _mesh(ctx.world)
    ids = lm_batch(131, seed=30 + ctx.rank)
    # bf16 models train on the GPU leg (Debian's gloo has no 16-bit collectives).
    ctx.check("hf_llama_untied_bf16", check_engine,
              hf_llama_builder(tied=False, dtype=torch.bfloat16), _per_block(mesh), None)
    ctx.check("hf_llama_untied_fp32_training", check_engine, hf_llama_builder(tied=False),
              _per_block(mesh), lambda m: lm_loss(m, ids))
    ctx.check("hf_llama_tied_bf16", check_engine,
              hf_llama_builder(tied=True, dtype=torch.bfloat16), _per_block(mesh), None)
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(ctx.rank))
    ctx.check("odd_shapes_empty_pieces", check_engine, OddShapes,
              _per_block(mesh), lambda m: m(x))
    ctx.check("models_gpt2_tied", check_engine, lambda: models.GPT2(models.gpt2_config("tiny")),
              _per_block(mesh), None)


def test_fsdp2_world3():
    outs = run_world(3, "test_distributed_fsdp2:world3")
    assert_all_ok(outs, ["hf_llama_untied_bf16", "hf_llama_untied_fp32_training",
                         "hf_llama_tied_bf16",
                         "odd_shapes_empty_pieces", "models_gpt2_tied"])


# ---------------------------------------------------------------- memory
def memory(ctx: Ctx) -> None:
    import models
    from torch.distributed.fsdp import fully_shard

    cfg = models.LlamaConfig(vocab_size=16384, hidden_size=1024, intermediate_size=2816,
                             num_hidden_layers=8, num_attention_heads=8,
                             max_position_embeddings=64, rope_cache=False)
    torch.manual_seed(0)
    with lazyinit.LazyInitContext():
        lazy = models.Llama(cfg)
    total = sum(t.numel() * t.element_size() for t in named_slots(lazy).values())
    mesh = _mesh(ctx.world)
    if not reset_peak_rss():
        ctx.info["skipped"] = "cannot reset the RSS high-water mark (/proc/self/clear_refs)"
        return
    base = vm_kib("VmRSS")
    with ld.deferred(lazy, "cpu") as d:
        for block in lazy.model.layers:
            fully_shard(block, mesh=mesh)
        fully_shard(lazy, mesh=mesh)
    peak = (vm_kib("VmHWM") - base) * 1024
    local = d.report.local_bytes
    ctx.info.update(peak=peak, local=local, total=total, seconds=d.report.seconds)

    def bound() -> None:
        assert local < 0.6 * total, (local, total)
        assert peak <= 1.1 * local + (64 << 20), \
            f"peak {peak / 2**20:.0f} MiB above the lazy model for {local / 2**20:.0f} MiB local"
    ctx.check("peak_within_bound", bound)
    ctx.check("only_pieces", lambda: (d.report.fallbacks == 0 and d.report.pushed_down > 0)
              or (_ for _ in ()).throw(AssertionError(d.report)))


def test_fsdp2_peak_memory():
    """Per-rank peak RSS above the lazy model while FSDP2 prepares a 540 MB
    fp32 model over 2 ranks: at most 1.1 x the rank's local bytes + 64 MiB."""
    outs = run_world(2, "test_distributed_fsdp2:memory")
    if "skipped" in outs[0]["info"]:
        pytest.skip(outs[0]["info"]["skipped"])
    assert_all_ok(outs, ["peak_within_bound", "only_pieces"])
    for rank, out in enumerate(outs):
        info = out["info"]
        print(f"rank {rank}: peak +{info['peak'] / 2**20:.0f} MiB, local "
              f"{info['local'] / 2**20:.0f} MiB of {info['total'] / 2**20:.0f} MiB, "
              f"{info['seconds']:.2f} s")
