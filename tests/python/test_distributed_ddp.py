"""DistributedDataParallel of lazy models (``lazyinit.distributed.ddp``):
2 gloo CPU processes, on every torch leg; against DDP of the eager model
(same seed): values, 3 AdamW steps, no broadcast where torch allows,
checksums, and the error for ``DistributedDataParallel(lazy_model)``."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import lazyinit
import lazyinit.distributed as ld
from dist_harness import Ctx, assert_all_ok, collective_count, run_world
from dist_models import assert_training_equal, build_pair, named_slots

try:
    import torch.distributed as _dist
    _HAVE_DIST = _dist.is_available()
except Exception:  # noqa: BLE001
    _HAVE_DIST = False

pytestmark = pytest.mark.skipif(not _HAVE_DIST, reason="torch.distributed is not available")


def _has_seq_numbers() -> bool:
    pg = torch.distributed.distributed_c10d._get_default_group()
    try:
        pg._get_backend(torch.device("cpu"))._get_sequence_number_for_group()
    except Exception:  # noqa: BLE001 - torch 1.13
        return False
    return True


def world2(ctx: Ctx) -> None:
    import models
    from torch.nn.parallel import DistributedDataParallel

    builders = {"llama_tied": lambda: models.Llama(models.llama_config("tiny",
                                                                       tie_word_embeddings=True)),
                "gpt2": lambda: models.GPT2(models.gpt2_config("tiny"))}
    try:
        from dist_models import hf_llama_builder
        import transformers  # noqa: F401
        builders["hf_llama_untied"] = hf_llama_builder(tied=False)
    except ImportError:
        pass
    seq = _has_seq_numbers()
    init_sync = ld._ddp._ddp_init_sync_supported()
    if not init_sync:
        # DDP then broadcasts rank 0's tensors, and torch 1.13's gloo has no
        # broadcast for GPT-2's bool mask buffer or for bf16 (eager DDP fails
        # the same way): those run where init_sync skips the broadcast.
        builders.pop("gpt2")
    ctx.info["models"] = sorted(builders)

    def one(build) -> None:
        eager, lazy, eager_rng = build_pair(build)
        before = collective_count() if seq else 0
        dl = ld.ddp(lazy, "cpu")
        if seq and init_sync:
            assert collective_count() == before, "DDP broadcast although init_sync=False"
        assert not lazyinit.is_lazy(lazy)
        de = DistributedDataParallel(eager)
        e, l = named_slots(de), named_slots(dl)
        assert set(e) == set(l)
        for name in e:
            assert torch.equal(e[name], l[name]), name
        ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(ctx.rank))

        def loss(m: nn.Module) -> torch.Tensor:
            out = m(ids)
            out = out.logits if hasattr(out, "logits") else out
            return out.float().pow(2).mean()
        assert_training_equal(de, dl, loss)

    for name, build in builders.items():
        ctx.check(f"ddp_{name}", one, build)

    def bf16_values() -> None:
        def build() -> nn.Module:
            return models.Llama(models.llama_config("tiny")).to(torch.bfloat16)
        eager, lazy, _ = build_pair(build)
        ld.ddp(lazy, "cpu")  # bf16 values only: Debian's gloo has no 16-bit all_reduce
        for (n, a), (_, b) in zip(named_slots(eager).items(), named_slots(lazy).items()):
            assert a.dtype == b.dtype and torch.equal(a, b), n
    if init_sync:
        ctx.check("ddp_bf16_values", bf16_values)

    def verify() -> None:
        _, lazy, _ = build_pair(builders["llama_tied"])
        lazyinit.materialize(lazy, "cpu")
        ld.verify_replicas(lazy)  # equal everywhere
        assert ld.checksum(lazy) == ld.checksum(lazy)
        if ctx.rank == 1:
            with torch.no_grad():
                lazy.model.embed_tokens.weight[3, 4] += 1
        with pytest.raises(RuntimeError, match="replicas differ"):
            ld.verify_replicas(lazy)
        _, lazy2, _ = build_pair(builders["llama_tied"])
        ld.ddp(lazy2, "cpu", verify=True)
    ctx.check("verify_replicas", verify)


    def plain_ddp_error() -> None:
        _, lazy, _ = build_pair(builders["llama_tied"])
        with pytest.raises(RuntimeError, match="lazyinit.distributed.ddp"):
            DistributedDataParallel(lazy)
        assert lazyinit.is_lazy(lazy)
    ctx.check("plain_ddp_of_lazy_model_says_what_to_do", plain_ddp_error)


def test_ddp_world2():
    outs = run_world(2, "test_distributed_ddp:world2")
    names = ["ddp_" + n for n in outs[0]["info"].get("models", [])]
    extra = ["ddp_bf16_values"] if ld._ddp._ddp_init_sync_supported() else []
    assert_all_ok(outs, names + extra + ["verify_replicas",
                                         "plain_ddp_of_lazy_model_says_what_to_do"])


def test_checksum_sees_every_bit():
    m = nn.Linear(3, 4)
    c = ld.checksum(m)
    with torch.no_grad():
        w = m.weight.view(-1).view(torch.int32)
        w[5] ^= 1
    assert ld.checksum(m) != c
