"""ColossalAI's lazy-init API on lazyinit (``lazyinit.compat.colossalai``).

ColossalAI's documented examples (its lazy-initialization tutorial) and the
flows of its own tests (``tests/test_lazy``) run here with the import line
changed from ``colossalai.lazy`` to ``lazyinit.compat.colossalai``, against
eager construction with the same seed. Where ColossalAI's booster would
take over (``booster.boost``), a stand-in does what its plugins do with a
lazy model: ``LazyInitContext.materialize`` (whole model, or module by
module as shardformer's ``from_native_module`` does) and a move to the
device. Deliberate differences (device ``lazy``, ``.to()`` materializing)
are asserted as such.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import io
from typing import Any, Callable, List, Tuple

import pytest
import torch
import torch.nn as nn
from torch.nn import Linear, Parameter

import lazyinit
from conftest import assert_modules_equal, assert_rng_equal
from lazyinit.compat.colossalai import LazyInitContext, LazyTensor  # was: from colossalai.lazy import ...

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def boost(model: nn.Module, optimizer: Any = None, *rest: Any) -> Tuple[Any, ...]:
    """Stands in for ``booster.boost``: ColossalAI's plugins materialize a
    lazy model (``LazyInitContext.materialize``) and move it to the device;
    the optimizer keeps its parameter objects."""
    LazyInitContext.materialize(model)
    model.to(DEVICE)
    return (model, optimizer, *rest)


def eager(build: Callable[[], nn.Module], seed: int = 0) -> Tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = build()
    return model, torch.get_rng_state()


def summary_lines(module: nn.Module, lazy_names: List[str]) -> List[str]:
    """ColossalAI's verbose summary, computed from an eager twin of the
    module: ``lazy_names`` are the tensors that are still lazy."""
    params = list(module.named_parameters())
    buffers = list(module.named_buffers())
    total = sum(t.numel() for _, t in params + buffers)
    non_lazy = sum(t.numel() for n, t in params + buffers if n not in lazy_names)
    ratio = non_lazy / total * 100 if non_lazy != 0 else 0
    return [f"Param lazy rate: {sum(n in lazy_names for n, _ in params)}/{len(params)}",
            f"Buffer lazy rate: {sum(n in lazy_names for n, _ in buffers)}/{len(buffers)}",
            f"Non lazy numel: {non_lazy} ({non_lazy / 1024 ** 2:.3f} M), ratio: {ratio}%"]


# ----------------------------------------------------- the tutorial's examples
def test_tutorial_gemini_example():
    """The tutorial's first example (Gemini, ``Linear(10, 10)``, an optimizer
    made before ``booster.boost``), then a training step: equal to eager."""
    ref, ref_rng = eager(lambda: Linear(10, 10))
    ref_opt = torch.optim.Adam(ref.parameters())
    ref.to(DEVICE)

    torch.manual_seed(0)
    with LazyInitContext():
        model = Linear(10, 10)

    optimizer = torch.optim.Adam(model.parameters())  # was: HybridAdam
    model, optimizer, *_ = boost(model, optimizer)

    assert_modules_equal(ref, model)
    assert_rng_equal(ref_rng, torch.get_rng_state())
    x = torch.randn(4, 10, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    for m, opt in ((ref, ref_opt), (model, optimizer)):
        m(x).pow(2).sum().backward()
        opt.step()
    assert_modules_equal(ref, model)


def _tiny_llama_config():
    transformers = pytest.importorskip("transformers")
    # The tutorial's LlamaConfig(hidden_size=64, intermediate_size=172,
    # num_hidden_layers=4, num_attention_heads=4), with a small vocabulary.
    return transformers, transformers.LlamaConfig(
        vocab_size=1000, hidden_size=64, intermediate_size=172, num_hidden_layers=4,
        num_attention_heads=4)


def test_tutorial_initialize_from_scratch():
    """The tutorial's "1. Initialize model from scratch": a Llama built under
    ``LazyInitContext(default_device=...)``, then ``booster.boost``."""
    transformers, config = _tiny_llama_config()
    LlamaForCausalLM = transformers.LlamaForCausalLM
    with torch.device(DEVICE) if hasattr(torch, "get_default_device") else contextlib.nullcontext():
        ref, ref_rng = eager(lambda: LlamaForCausalLM(config))

    torch.manual_seed(0)
    with LazyInitContext(default_device=DEVICE):
        model = LlamaForCausalLM(config)
    assert isinstance(model.lm_head.weight, LazyTensor)
    model, *_ = boost(model)

    assert_modules_equal(ref, model)
    if DEVICE == "cpu":
        assert_rng_equal(ref_rng, torch.get_rng_state())


def test_tutorial_initialize_from_pretrained(tmp_path):
    """The tutorial's "2. Initialize model from pretrained":
    ``BertForPreTraining.from_pretrained`` under ``LazyInitContext`` (a
    checkpoint saved here: the tutorial's is downloaded), then
    ``booster.boost``: every tensor equals the eager load."""
    transformers = pytest.importorskip("transformers")
    BertForPreTraining = transformers.BertForPreTraining
    config = transformers.BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=64)
    torch.manual_seed(3)
    BertForPreTraining(config).save_pretrained(tmp_path)
    ref = BertForPreTraining.from_pretrained(tmp_path)

    with LazyInitContext():
        model = BertForPreTraining.from_pretrained(tmp_path)
    model, *_ = boost(model)
    ref.to(DEVICE)
    assert_modules_equal(ref, model)


# ------------------------------------------- ColossalAI's tests/test_lazy flows
def test_lazy_ops_flow():
    """ColossalAI's ``test_lazy_ops``: tensors, a Parameter, an in-place
    init and a module moved inside the context, materialized afterwards.
    Differences: a lazy tensor's device is ``lazy`` (ColossalAI fakes the
    target device), and ``.to(device)`` inside the context materializes."""
    torch.manual_seed(0)
    want_x = torch.rand(2, 3)
    want_p = torch.empty(2, 3)
    want_u = torch.empty(2, 3).uniform_()
    ref = nn.Linear(3, 4).to(DEVICE)

    torch.manual_seed(0)
    with LazyInitContext():
        x = torch.rand(2, 3)
        assert tuple(x.shape) == (2, 3)
        assert x.device.type == lazyinit.device_type  # ColossalAI: "cpu"
        assert x.requires_grad is False
        assert x.cpu() is x                # ColossalAI: x stays lazy; lazyinit: real now
        p = Parameter(torch.empty(2, 3))
        assert tuple(p.shape) == (2, 3)
        assert p.requires_grad is True
        assert isinstance(p, Parameter) and isinstance(p, LazyTensor)
    assert x.materialize() is x
    assert tuple(x.shape) == (2, 3) and x.device.type == "cpu" and x.requires_grad is False
    assert torch.equal(x, want_x)
    assert p.materialize() is p
    assert isinstance(p, Parameter) and p.requires_grad is True and not isinstance(p, LazyTensor)
    assert p.shape == want_p.shape

    with LazyInitContext():
        u = torch.empty(2, 3)
        u.uniform_()
    u.materialize()
    assert torch.equal(u, want_u)

    with LazyInitContext():
        model = nn.Linear(3, 4)
        model = model.to(DEVICE)          # ColossalAI: model.cuda(), still lazy
        assert not lazyinit.is_lazy(model)  # lazyinit: materialized here
        model_copied = copy.deepcopy(model)
    LazyInitContext.materialize(model)
    assert model.weight.device.type == DEVICE and model.bias.device.type == DEVICE
    LazyInitContext.materialize(model_copied)
    assert torch.equal(model.weight, model_copied.weight)
    assert torch.equal(model.bias, model_copied.bias)
    assert_modules_equal(ref, model)


def _reference_models() -> List[Tuple[str, Callable[[], nn.Module]]]:
    import models
    return [
        ("llama_tied", lambda: models.Llama(models.llama_config("tiny", tie_word_embeddings=True))),
        ("gpt2", lambda: models.GPT2(models.gpt2_config("tiny"))),
        ("vit", lambda: models.ViT(models.vit_config("tiny"))),
        ("conv_bn", lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                                          nn.Flatten(), nn.Linear(8 * 4 * 4, 5))),
    ]


@pytest.mark.parametrize("name,build", _reference_models(), ids=[n for n, _ in _reference_models()])
def test_check_lazy_init_flow(name, build):
    """ColossalAI's ``check_lazy_init``: build under the context, deep-copy
    the lazy model inside it, ``ctx.materialize(model, verbose=True)`` both:
    equal to each other and to eager (ColossalAI compares with its eager
    ``_MyTensor`` class, reseeded before every op; here plain eager)."""
    ref, ref_rng = eager(build)
    torch.manual_seed(0)
    ctx = LazyInitContext()
    with ctx:
        deferred_model = build()
        copied_deferred_model = copy.deepcopy(deferred_model)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        deferred_model = ctx.materialize(deferred_model, verbose=True)
        copied_deferred_model = ctx.materialize(copied_deferred_model, verbose=True)
    assert_modules_equal(ref, deferred_model)
    assert_modules_equal(deferred_model, copied_deferred_model)
    assert_rng_equal(ref_rng, torch.get_rng_state())
    lazy_names = [n for n, _ in list(ref.named_parameters()) + list(ref.named_buffers())]
    assert out.getvalue().splitlines() == 2 * summary_lines(ref, lazy_names)


def test_shardformer_style_per_module_materialize():
    """Shardformer's ``from_native_module`` materializes one module at a
    time, in policy order (here: reversed), and reads its weights: eager
    values in any order."""
    import models
    build = lambda: models.Llama(models.llama_config("tiny"))  # noqa: E731
    ref, ref_rng = eager(build)
    torch.manual_seed(0)
    with LazyInitContext():
        model = build()
    leaves = [m for m in model.modules() if not list(m.children())]
    for module in reversed(leaves):
        LazyInitContext.materialize(module)
        assert not any(isinstance(p, LazyTensor) for p in module.parameters(recurse=False))
    assert_modules_equal(ref, model)
    assert_rng_equal(ref_rng, torch.get_rng_state())


def test_gemini_style_isinstance_and_materialize():
    """Gemini's pattern: ``isinstance(p, LazyTensor)`` then ``p.materialize()``
    per parameter, tied parameters once."""
    import models
    build = lambda: models.Llama(models.llama_config("tiny", tie_word_embeddings=True))  # noqa: E731
    ref, _ = eager(build)
    torch.manual_seed(0)
    with LazyInitContext():
        model = build()
    params = list(model.parameters())
    assert params and all(isinstance(p, LazyTensor) for p in params)
    for p in params:
        if isinstance(p, LazyTensor):
            assert p.materialize() is p
    for b in model.buffers():
        if isinstance(b, LazyTensor):
            b.materialize()
    assert not lazyinit.is_lazy(model)
    assert_modules_equal(ref, model)


def test_default_device_is_colossalai_cuda_intent():
    """ColossalAI writes ``with ctx: model = MyModel().cuda()`` (a lazy move);
    in lazyinit ``.cuda()`` materializes, so the intent is spelled
    ``LazyInitContext(default_device="cuda")``: nothing allocated until
    materialize, which then builds on that device."""
    build = lambda: nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5))  # noqa: E731
    with torch.device(DEVICE) if hasattr(torch, "get_default_device") else contextlib.nullcontext():
        ref, _ = eager(build)
    torch.manual_seed(0)
    with LazyInitContext(default_device=DEVICE):
        model = build()
    assert lazyinit.is_lazy(model)
    LazyInitContext.materialize(model)
    assert all(t.device.type == DEVICE for t in model.state_dict().values())
    assert_modules_equal(ref, model)


# ------------------------------------------------------------------ LazyTensor
def test_lazy_tensor_docstring_example():
    """ColossalAI's ``LazyTensor`` docstring: ``LazyTensor(torch.zeros, 2,
    3)``, ops on it, ``materialize()`` (its ``.cuda()`` step left out: in
    lazyinit it would materialize there)."""
    want = torch.zeros(2, 3)
    want += 1
    want = (want * want).half()
    want[0, 0] = 0

    x = LazyTensor(torch.zeros, 2, 3)
    assert isinstance(x, LazyTensor) and type(x) is torch.Tensor
    x += 1
    y = x * x
    y = y.half()
    y[0, 0] = 0
    assert isinstance(y, LazyTensor)
    y = y.materialize()
    assert torch.equal(y, want) and y.dtype == torch.float16


def test_lazy_tensor_constructor_random_and_errors():
    torch.manual_seed(5)
    want = torch.randn(3, 4, dtype=torch.float64)
    torch.manual_seed(5)
    t = LazyTensor(torch.randn, 3, 4, dtype=torch.float64, device="cpu")
    assert isinstance(t, LazyTensor)
    assert torch.equal(t.materialize(), want)
    with pytest.raises(TypeError, match="internals of ColossalAI"):
        LazyTensor(torch.zeros, 2, concrete_data=torch.zeros(2))
    with pytest.raises(TypeError, match="did not make a lazy tensor"):
        LazyTensor(lambda *a, **k: torch.zeros(2), 2)


def test_isinstance_and_materialize_attribute():
    assert issubclass(LazyTensor, torch.Tensor)
    real = torch.zeros(2)
    assert not isinstance(real, LazyTensor) and not isinstance("x", LazyTensor)
    assert not hasattr(real, "materialize")
    with pytest.raises(AttributeError, match="materialize.*lazy tensors only"):
        real.materialize()
    with LazyInitContext():
        t = torch.ones(3)
        explicit = torch.ones(3, device="cpu")  # an explicit device: real
    assert isinstance(t, LazyTensor) and not isinstance(explicit, LazyTensor)
    assert torch.Tensor.materialize(t) is t  # the unbound spelling
    assert not isinstance(t, LazyTensor) and torch.equal(t, torch.ones(3))
    assert t.materialize() is t  # materialized by lazyinit: still answers, a no-op
    with LazyInitContext():
        d = torch.ones(3)
    lazyinit.discard(d)
    with pytest.raises(RuntimeError, match="discard"):
        d.materialize()


def test_early_materialized_counts_as_non_lazy():
    """ColossalAI counts early-materialized tensors (an op needed their
    values) and real ones as non-lazy in the summary."""
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 3)
            self.register_buffer("steps", torch.arange(5.0))
            self.register_buffer("real", torch.ones(7, device="cpu"))
            self.scale = float(self.steps.sum().item())  # needs the buffer's values

    ref, _ = eager(M)
    torch.manual_seed(0)
    with LazyInitContext():
        model = M()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        LazyInitContext.materialize(model, verbose=True)
    assert out.getvalue().splitlines() == summary_lines(ref, ["a.weight", "a.bias"])
    assert_modules_equal(ref, model)


def test_summary_of_real_model_and_top_level_context():
    """The top-level ``lazyinit.LazyInitContext.materialize`` prints the same
    summary; a model with nothing lazy prints ratio 100.0%."""
    ref = nn.Linear(3, 2)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        lazyinit.LazyInitContext.materialize(ref, verbose=True)
    assert out.getvalue().splitlines() == summary_lines(ref, [])
    assert out.getvalue().splitlines()[2].endswith("ratio: 100.0%")


# ------------------------------------------------------------------ signatures
def test_signatures_are_colossalai_s():
    params = inspect.signature(LazyInitContext).parameters
    assert list(params) == ["tensor_cls", "default_device", "pause_gc"]
    assert params["tensor_cls"].default is LazyTensor
    assert params["default_device"].default is None
    assert params["pause_gc"].kind is inspect.Parameter.KEYWORD_ONLY
    assert list(inspect.signature(LazyInitContext.materialize).parameters) == ["module", "verbose"]
    assert list(inspect.signature(LazyInitContext.distribute).parameters) == [
        "module", "device_mesh", "sharding_spec_dict", "verbose"]
    # lazyinit's own context keeps default_device first
    assert list(inspect.signature(lazyinit.LazyInitContext).parameters) == [
        "default_device", "pause_gc"]


def test_positional_arguments_and_errors():
    torch.manual_seed(0)
    want = nn.Linear(2, 2)
    torch.manual_seed(0)
    with LazyInitContext(LazyTensor, "cpu") as ctx:
        m = nn.Linear(2, 2)
    assert ctx.tensor_cls is LazyTensor and ctx.default_device == torch.device("cpu")
    LazyInitContext.materialize(m)
    assert_modules_equal(want, m)
    with pytest.raises(TypeError, match="only LazyTensor"):
        LazyInitContext("cuda")  # lazyinit.LazyInitContext("cuda") means default_device
    with pytest.raises(TypeError, match="_MyTensor"):
        LazyInitContext(tensor_cls=torch.Tensor)
    with LazyInitContext():
        with pytest.raises(RuntimeError, match="already active"):
            with LazyInitContext():
                pass


def test_distribute_needs_dtensor_on_old_torch():
    from dist_models import has_dtensor_engines
    if has_dtensor_engines():
        pytest.skip("torch has DTensor: distribute runs in test_compat_distribute.py")
    with LazyInitContext():
        m = nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="torch 2.6"):
        LazyInitContext.distribute(m, object(), {})
    assert lazyinit.is_lazy(m)
