"""torchdistX's deferred initialization on lazyinit
(``lazyinit.compat.torchdistx``).

torchdistX's README and documentation examples run here with ``torchdistx``
replaced by ``lazyinit.compat.torchdistx`` in the import line, against
eager construction with the same seed (torchdistX itself ignores the random
generator's positions, so its own values differ from eager). FSDP1's
torchdistX slot runs in a gloo world on torch 2.x.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import lazyinit
from conftest import assert_modules_equal, assert_rng_equal
from dist_harness import Ctx, assert_all_ok, run_world
# was: from torchdistx import deferred_init, fake
from lazyinit.compat.torchdistx import deferred_init, fake
# was: from torchdistx.deferred_init import deferred_init, materialize_module, materialize_tensor
from lazyinit.compat.torchdistx.deferred_init import deferred_init as deferred_init_fn
from lazyinit.compat.torchdistx.deferred_init import materialize_module, materialize_tensor
import lazyinit.compat.torchdistx as td


def eager(build, *args, seed: int = 0):
    torch.manual_seed(seed)
    model = build(*args)
    return model, torch.get_rng_state()


# ---------------------------------------------------------------- the README
def test_readme_deferred_module_initialization():
    """The README's example: ``deferred_init.deferred_init(torch.nn.Linear,
    10, 20)``, then ``deferred_init.materialize_module(m)``."""
    ref, ref_rng = eager(torch.nn.Linear, 10, 20)

    torch.manual_seed(0)
    m = deferred_init.deferred_init(torch.nn.Linear, 10, 20)
    assert "device='lazy'" in repr(m.weight)  # torchdistX: "fake=True", device cpu
    assert tuple(m.weight.shape) == (20, 10) and m.weight.requires_grad
    w = m.weight
    deferred_init.materialize_module(m)
    assert m.weight is w
    assert_modules_equal(ref, m)
    assert_rng_equal(ref_rng, torch.get_rng_state())


def test_readme_fake_tensor():
    """The README's Fake Tensor example: ``fake.fake_mode()``, one tensor
    without a device and one on CUDA; both fake (lazy, nothing allocated)."""
    with fake.fake_mode():
        a = torch.ones([10])
        b = torch.ones([20], device="cuda")
    assert fake.is_fake(a) and fake.is_fake(b)
    assert tuple(a.shape) == (10,) and tuple(b.shape) == (20,)
    assert "device='lazy'" in repr(a)  # torchdistX: tensor(..., size=(10,), fake=True)
    assert torch.equal(materialize_tensor(a), torch.ones([10]))
    if torch.cuda.is_available():
        assert torch.equal(materialize_tensor(b), torch.ones([20], device="cuda"))
    assert fake.meta_like(b).is_meta and fake.meta_like(b).shape == b.shape
    with pytest.raises(ValueError, match="fake tensor"):
        fake.meta_like(torch.ones(2))


# ------------------------------------------------------------ the docs' examples
def test_docs_simplest_use_case():
    """``deferred_init(torch.nn.Linear, 5, 1)``, inspection, then
    ``materialize_module(m)``."""
    ref, ref_rng = eager(torch.nn.Linear, 5, 1)
    torch.manual_seed(0)
    m = deferred_init_fn(torch.nn.Linear, 5, 1)
    assert td.is_deferred(m) and fake.is_fake(m.weight)
    materialize_module(m)
    assert not td.is_deferred(m)
    assert_modules_equal(ref, m)
    assert_rng_equal(ref_rng, torch.get_rng_state())


class MyLargeModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.sublayer1 = nn.Linear(8, 8)
        self.sublayer1.register_parameter("param1", nn.Parameter(torch.randn(3, 5)))
        self.sublayer2 = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16))
        self.sublayer3 = nn.Embedding(11, 4)
        self.register_buffer("table", torch.rand(6))


def test_docs_materialize_a_subset():
    """Only ``sublayer1`` and ``sublayer2``, or one parameter, materialized;
    the rest stays deferred, and every value is eager's in any order."""
    ref, ref_rng = eager(MyLargeModel)
    torch.manual_seed(0)
    m = deferred_init_fn(MyLargeModel)
    param1 = m.sublayer1.param1
    materialized_param = materialize_tensor(m.sublayer1.param1)
    assert materialized_param is param1 and not fake.is_fake(param1)
    materialize_module(m.sublayer2)
    materialize_module(m.sublayer1)
    assert td.is_deferred(m.sublayer3.weight) and td.is_deferred(m.table)
    assert not td.is_deferred(m.sublayer1) and not td.is_deferred(m.sublayer2)
    materialize_module(m)
    assert_modules_equal(ref, m)
    assert_rng_equal(ref_rng, torch.get_rng_state())


class MyModule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.param = nn.Parameter(torch.ones([3], device="cpu"))


def test_docs_explicit_device_is_deferred_too():
    """"deferred_init() skips storage allocation even for explicitly passed
    device arguments"; the tensor materializes on that device."""
    ref, _ = eager(MyModule)
    m = deferred_init_fn(MyModule)
    assert fake.is_fake(m.param)
    materialize_module(m)
    assert m.param.device.type == "cpu"
    assert_modules_equal(ref, m)


def MyLazyModule(out_features: int) -> nn.Module:
    lazy_m = torch.nn.LazyLinear(out_features)
    # Dry-run the module to infer the parameter and buffer shapes.
    lazy_m(torch.ones([10, 10]))
    return lazy_m


def test_docs_lazy_modules():
    """A ``LazyLinear`` dry-run inside ``deferred_init``."""
    ref, ref_rng = eager(MyLazyModule, 10)
    torch.manual_seed(0)
    m = deferred_init_fn(MyLazyModule, 10)
    assert td.is_deferred(m) and tuple(m.weight.shape) == (10, 10)
    materialize_module(m)
    assert_modules_equal(ref, m)
    assert_rng_equal(ref_rng, torch.get_rng_state())


# ------------------------------------------------------------------ semantics
def test_buffers_only_and_check_fn():
    ref, _ = eager(MyLargeModel)
    torch.manual_seed(0)
    m = deferred_init_fn(MyLargeModel)
    materialize_module(m, buffers_only=True)
    assert not td.is_deferred(m.table)
    assert all(fake.is_fake(p) for p in m.parameters())
    materialize_module(m, check_fn=lambda mod: not isinstance(mod, nn.Embedding))
    assert fake.is_fake(m.sublayer3.weight)
    assert not any(fake.is_fake(p) for n, p in m.named_parameters() if "sublayer3" not in n)
    materialize_module(m)
    assert_modules_equal(ref, m)


def test_tied_weights_and_to():
    """A tie materializes once and stays one object (torchdistX raises
    "has already been materialized" for its second name); ``.to()`` after
    ``deferred_init`` materializes (torchdistX ignored it)."""
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(7, 4)
            self.head = nn.Linear(4, 7, bias=False)
            self.head.weight = self.emb.weight

    ref, _ = eager(Tied)
    torch.manual_seed(0)
    m = deferred_init_fn(Tied)
    materialize_module(m)
    assert m.head.weight is m.emb.weight
    assert_modules_equal(ref, m)

    torch.manual_seed(0)
    m2 = deferred_init_fn(Tied).to("cpu")
    assert not td.is_deferred(m2)
    assert_modules_equal(ref, m2)


def test_non_deferred_and_errors():
    real = torch.zeros(3)
    assert materialize_tensor(real) is real
    assert not td.is_deferred(real)
    with pytest.raises(TypeError):
        td.is_deferred("weight")
    with pytest.raises(TypeError):
        materialize_tensor([1, 2])
    with lazyinit.LazyInitContext():
        with pytest.raises(RuntimeError, match="already active"):
            deferred_init_fn(nn.Linear, 2, 2)
    assert callable(td.deferred_init) and td.deferred_init.deferred_init is deferred_init_fn
    torch.manual_seed(0)
    via_module_call = td.deferred_init(nn.Linear, 3, 2)
    ref, _ = eager(nn.Linear, 3, 2)
    materialize_module(via_module_call)
    assert_modules_equal(ref, via_module_call)


# --------------------------------------------------------------- the FSDP1 slot
def _fsdp1_usable() -> bool:
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel  # noqa: F401
    except Exception:  # noqa: BLE001 - torch 1.13's fsdp does not import on Python 3.11
        return False
    return hasattr(torch, "compile")  # FSDP1 on CPU devices: torch 2.x


def fsdp1_world(ctx: Ctx) -> None:
    import models
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    import lazyinit.compat.torchdistx as compat_td
    from lazyinit.compat.torchdistx import deferred_init as di, fake as fk
    from dist_models import assert_training_equal

    def slot_filled() -> None:
        from torch.distributed.fsdp import _init_utils
        assert _init_utils._TORCHDISTX_AVAIL and _init_utils.fake is fk
        assert _init_utils.deferred_init is di
    ctx.check("slot_filled", slot_filled)

    policy = ModuleWrapPolicy({models.LlamaDecoderLayer})
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(ctx.rank))

    def fsdp1_of_deferred(tied: bool) -> None:
        def build() -> nn.Module:
            return models.Llama(models.llama_config("tiny", tie_word_embeddings=tied))
        torch.manual_seed(0)
        eager_model = build()
        torch.manual_seed(0)
        deferred = di.deferred_init(build)
        assert compat_td.is_deferred(deferred)
        kw = dict(auto_wrap_policy=policy, device_id=torch.device("cpu"), use_orig_params=tied)
        fe, fd = FSDP(eager_model, **kw), FSDP(deferred, **kw)
        assert not compat_td.is_deferred(fd)
        pe, pd = dict(fe.named_parameters()), dict(fd.named_parameters())
        assert list(pe) == list(pd)
        for name in pe:
            assert torch.equal(pe[name], pd[name]), name
        assert_training_equal(fe, fd, lambda m: m(ids).float().pow(2).mean())
    ctx.check("fsdp1_of_deferred_untied", fsdp1_of_deferred, False)
    ctx.check("fsdp1_of_deferred_tied", fsdp1_of_deferred, True)

    def needs_device_id() -> None:
        deferred = di.deferred_init(lambda: models.Llama(models.llama_config("tiny")))
        with pytest.raises(RuntimeError, match="device_id"):
            FSDP(deferred, auto_wrap_policy=policy)
        assert compat_td.is_deferred(deferred)
    ctx.check("fsdp1_slot_needs_device_id", needs_device_id)


@pytest.mark.skipif(not _fsdp1_usable(), reason="FSDP1 on CPU with gloo needs torch 2.x "
                                                "(torch 1.13's fsdp module does not import on "
                                                "Python 3.11)")
def test_fsdp1_torchdistx_slot():
    outs = run_world(2, "test_compat_torchdistx:fsdp1_world")
    assert_all_ok(outs, ["slot_filled", "fsdp1_of_deferred_untied", "fsdp1_of_deferred_tied",
                         "fsdp1_slot_needs_device_id"])
