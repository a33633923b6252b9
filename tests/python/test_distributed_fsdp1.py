"""FSDP1 (``FullyShardedDataParallel``) of lazy models through its
``param_init_fn`` (``lazyinit.distributed.fsdp1``): 2 gloo CPU processes,
against FSDP1 of the eager model (same seed): pieces and 3 AdamW steps."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import lazyinit
import lazyinit.distributed as ld
from dist_harness import Ctx, assert_all_ok, run_world
from dist_models import assert_training_equal, build_pair


def _fsdp1_usable() -> bool:
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel  # noqa: F401
    except Exception:  # noqa: BLE001 - torch 1.13's fsdp does not import on Python 3.11
        return False
    return hasattr(torch, "compile")  # FSDP1 on CPU devices: torch 2.x


pytestmark = pytest.mark.skipif(not _fsdp1_usable(),
                                reason="FSDP1 on CPU with gloo needs torch 2.x (torch 1.13's "
                                       "fsdp module does not import on Python 3.11)")


def world2(ctx: Ctx) -> None:
    import models
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    policy = ModuleWrapPolicy({models.LlamaDecoderLayer})
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(ctx.rank))

    def one(tied: bool, use_orig_params: bool) -> None:
        def build() -> nn.Module:
            return models.Llama(models.llama_config("tiny", tie_word_embeddings=tied))
        eager, lazy, _ = build_pair(build)
        kw = dict(auto_wrap_policy=policy, device_id=torch.device("cpu"),
                  use_orig_params=use_orig_params)
        fe = FSDP(eager, **kw)
        fl = ld.fsdp1(lazy, "cpu", **kw)
        assert not lazyinit.is_lazy(fl)
        pe, pl = dict(fe.named_parameters()), dict(fl.named_parameters())
        assert list(pe) == list(pl)
        for name in pe:
            assert torch.equal(pe[name], pl[name]), name
        be, bl = dict(fe.named_buffers()), dict(fl.named_buffers())
        for name in be:
            assert torch.equal(be[name], bl[name]), name
        assert_training_equal(fe, fl, lambda m: m(ids).float().pow(2).mean())

    ctx.check("fsdp1_llama_untied_flat", one, False, False)
    ctx.check("fsdp1_llama_tied_orig_params", one, True, True)

    def error_restores() -> None:
        _, lazy, _ = build_pair(lambda: models.Llama(models.llama_config("tiny")))
        with pytest.raises(ValueError):
            with ld.fsdp1_init(lazy, "cpu"):
                raise ValueError("inside")
        assert lazyinit.is_lazy(lazy) and not any(p.is_meta for p in lazy.parameters())
    ctx.check("fsdp1_error_restores_lazy_tensors", error_restores)

    def plain_fsdp1_error() -> None:
        _, lazy, _ = build_pair(lambda: models.Llama(models.llama_config("tiny")))
        with pytest.raises(RuntimeError, match="lazyinit.distributed.fsdp1"):
            FSDP(lazy, auto_wrap_policy=policy, device_id=torch.device("cpu"))
        assert lazyinit.is_lazy(lazy)
    ctx.check("plain_fsdp1_of_lazy_model_says_what_to_do", plain_fsdp1_error)


def test_fsdp1_world2():
    outs = run_world(2, "test_distributed_fsdp1:world2")
    assert_all_ok(outs, ["fsdp1_llama_untied_flat", "fsdp1_llama_tied_orig_params",
                         "fsdp1_error_restores_lazy_tensors",
                         "plain_fsdp1_of_lazy_model_says_what_to_do"])
