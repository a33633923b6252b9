"""Whole-model exactness: lazy construction + materialize == eager construction.

For each small reference model (tests/python/models.py):
  eager:  torch.manual_seed(0); model = Model(cfg)                          (CPU)
  lazy:   torch.manual_seed(0); with LazyInitContext(): model = Model(cfg); materialize
and then every parameter/buffer must be torch.equal with identical metadata, the
CPU RNG state must equal what eager construction left, Parameters keep their
Python identity, ties stay ties, and a forward pass gives identical outputs.
"""

from __future__ import annotations

import gc
import random

import pytest
import torch

import lazyinit
from conftest import (assert_modules_equal, assert_outputs_equal, assert_rng_equal,
                      assert_tensor_equal, named_plain_tensor_attrs, named_tensors,
                      storage_ptr, unique_tensors)
from models import MODEL_BUILDERS, tied_pairs

MODELS = sorted(MODEL_BUILDERS)
SEED = 0


def build_eager(name):
    builder, _ = MODEL_BUILDERS[name]
    torch.manual_seed(SEED)
    model = builder()
    return model, torch.get_rng_state()


def build_lazy(name):
    builder, _ = MODEL_BUILDERS[name]
    torch.manual_seed(SEED)
    with lazyinit.LazyInitContext():
        model = builder()
    return model


def get(model, dotted):
    obj = model
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def example_input(name):
    _, make_input = MODEL_BUILDERS[name]
    g = torch.get_rng_state()
    torch.manual_seed(1234)
    x = make_input()
    torch.set_rng_state(g)
    return x


# --------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_lazy_metadata_before_materialize(name):
    """Before materialization every tensor is lazy with eager's exact geometry."""
    eager, _ = build_eager(name)
    lazy = build_lazy(name)
    assert lazyinit.is_lazy(lazy)
    e, l = named_tensors(eager), named_tensors(lazy)
    assert list(e) == list(l)
    for n in e:
        assert lazyinit.is_lazy(l[n]), f"{n} is not lazy"
        assert l[n].device.type == "lazy", f"{n}: device {l[n].device}"
        assert l[n].dtype == e[n].dtype, n
        assert l[n].shape == e[n].shape, n
        assert l[n].stride() == e[n].stride(), n
        assert type(l[n]) is type(e[n]), n
        assert l[n].requires_grad == e[n].requires_grad, n


@pytest.mark.parametrize("name", MODELS)
def test_materialize_whole_model(name):
    eager, rng_eager = build_eager(name)
    lazy = build_lazy(name)
    out = lazyinit.materialize(lazy, "cpu")
    assert out is lazy
    assert not lazyinit.is_lazy(lazy)
    assert_modules_equal(eager, lazy)
    assert_rng_equal(rng_eager, torch.get_rng_state())
    for n, t in named_plain_tensor_attrs(eager).items():
        assert_tensor_equal(n, t, named_plain_tensor_attrs(lazy)[n])


@pytest.mark.parametrize("order", ["reverse", "random"])
@pytest.mark.parametrize("name", MODELS)
def test_materialize_tensor_by_tensor(name, order):
    """materialize(tensor) one at a time, out of construction order."""
    eager, rng_eager = build_eager(name)
    lazy = build_lazy(name)
    tensors = unique_tensors(lazy)
    if order == "reverse":
        tensors = tensors[::-1]
    else:
        random.Random(20240601).shuffle(tensors)
    for i, t in enumerate(tensors):
        # t may already be real: replaying a dependent storage may install it
        r = lazyinit.materialize(t)  # device None -> context default (None) -> "cpu"
        assert r is t
        assert not lazyinit.is_lazy(t), f"tensor #{i} still lazy after materialize(tensor)"
        assert t.device.type == "cpu"
    assert not lazyinit.is_lazy(lazy)
    assert_modules_equal(eager, lazy)
    assert_rng_equal(rng_eager, torch.get_rng_state())


@pytest.mark.parametrize("name", MODELS)
def test_materialize_half_then_rest(name):
    """Every other tensor individually (from the end), then the whole module."""
    eager, rng_eager = build_eager(name)
    lazy = build_lazy(name)
    for t in unique_tensors(lazy)[::-2]:
        lazyinit.materialize(t, "cpu")
    lazyinit.materialize(lazy, "cpu")
    assert_modules_equal(eager, lazy)
    assert_rng_equal(rng_eager, torch.get_rng_state())


@pytest.mark.parametrize("via", ["materialize", "module_to", "materialize_then_to"])
@pytest.mark.parametrize("name", MODELS)
def test_identity_and_ties_preserved(name, via):
    eager, rng_eager = build_eager(name)
    lazy = build_lazy(name)
    before = named_tensors(lazy)  # strong refs: ids cannot be recycled
    before_ids = {n: id(t) for n, t in before.items()}
    pairs = tied_pairs(lazy)
    for a, b in pairs:
        assert get(lazy, a) is get(lazy, b), f"{a} is not {b} before materialize"

    if via == "materialize":
        lazyinit.materialize(lazy, "cpu")
    elif via == "module_to":
        r = lazy.to("cpu")
        assert r is lazy
    else:
        lazyinit.materialize(lazy, "cpu")
        lazy.to("cpu")

    after = named_tensors(lazy)
    assert {n: id(t) for n, t in after.items()} == before_ids, \
        "parameter/buffer objects were replaced instead of materialized in place"
    for n in before:
        assert after[n] is before[n], n
    for a, b in pairs:
        assert get(lazy, a) is get(lazy, b), f"tie {a} / {b} broken by {via}"
        assert storage_ptr(get(lazy, a)) == storage_ptr(get(lazy, b))
    assert_modules_equal(eager, lazy)
    assert_rng_equal(rng_eager, torch.get_rng_state())


@pytest.mark.parametrize("name", MODELS)
def test_forward_matches_eager(name):
    eager, _ = build_eager(name)
    lazy = build_lazy(name)
    lazyinit.materialize(lazy, "cpu")
    eager.eval()
    lazy.eval()
    x = example_input(name)
    with torch.no_grad():
        assert_outputs_equal(eager(x), lazy(x))


@pytest.mark.parametrize("name", MODELS)
def test_optimizer_refs_stay_valid(name):
    """An optimizer built on the lazy model's parameters trains the materialized model."""
    lazy = build_lazy(name)
    opt = torch.optim.SGD(lazy.parameters(), lr=0.1)
    lazyinit.materialize(lazy, "cpu")
    opt_params = [p for g in opt.param_groups for p in g["params"]]
    model_params = list(lazy.parameters())
    assert len(opt_params) == len(model_params)
    assert all(a is b for a, b in zip(opt_params, model_params))
    lazy.train()
    x = example_input(name)
    out = lazy(x)
    out.float().pow(2).mean().backward()
    snapshot = [p.detach().clone() for p in model_params]
    opt.step()
    changed = [not torch.equal(s, p) for s, p in zip(snapshot, model_params) if p.grad is not None]
    assert any(changed), "optimizer step did not update the materialized parameters"


@pytest.mark.parametrize("name", MODELS)
def test_views_and_data_aliases_follow_materialization(name):
    """Views and .data aliases taken while lazy see the materialized storage."""
    eager, _ = build_eager(name)
    lazy = build_lazy(name)
    n, p = next(iter(lazy.named_parameters()))
    pe = dict(eager.named_parameters())[n]
    data_alias = p.data
    row_view = p[0] if p.dim() > 0 else p.view(())
    lazyinit.materialize(lazy, "cpu")
    assert not lazyinit.is_lazy(data_alias)
    assert not lazyinit.is_lazy(row_view)
    assert torch.equal(data_alias, pe.data)
    assert torch.equal(row_view, pe[0] if pe.dim() > 0 else pe.view(()))
    assert storage_ptr(data_alias) == storage_ptr(p)
    assert storage_ptr(row_view) == storage_ptr(p)


@pytest.mark.parametrize("name", MODELS)
def test_stats_and_graph_freed(name):
    gc.collect()
    nodes_before = lazyinit.live_graph_nodes()
    lazy = build_lazy(name)
    params = list(lazy.parameters())
    buffers = list(lazy.buffers())
    n_el = sum(t.numel() for t in params + buffers)

    s = lazyinit.stats(lazy)
    assert s.parameters_lazy + s.parameters_early == len(params), s
    assert s.parameters_materialized == 0, s
    assert s.buffers_lazy + s.buffers_early == len(buffers), s
    assert s.buffers_materialized == 0, s
    assert s.elements_lazy + s.elements_early == n_el, s
    # every weight init in these models is recordable; none needs early data
    assert s.parameters_early == 0, s
    assert lazyinit.live_graph_nodes() > nodes_before

    lazyinit.materialize(lazy, "cpu")
    s = lazyinit.stats(lazy)
    assert s.parameters_lazy == 0 and s.buffers_lazy == 0 and s.elements_lazy == 0, s
    assert s.parameters_materialized + s.parameters_early == len(params), s
    assert s.buffers_materialized + s.buffers_early == len(buffers), s
    assert s.elements_materialized + s.elements_early == n_el, s
    for t in unique_tensors(lazy):
        assert lazyinit.replay_count(t) <= 1, "a storage was replayed more than once"
    gc.collect()
    left = lazyinit.live_graph_nodes() - nodes_before
    assert left == 0, f"{left} recorded nodes still held after the whole model was materialized"


def test_legacy_context_materialize_api():
    """ColossalAI-compatible static LazyInitContext.materialize(module)."""
    eager, rng_eager = build_eager("llama_tiny_tied")
    lazy = build_lazy("llama_tiny_tied")
    r = lazyinit.LazyInitContext.materialize(lazy)
    assert r is lazy
    assert_modules_equal(eager, lazy)
    assert lazy.lm_head.weight is lazy.model.embed_tokens.weight
    assert_rng_equal(rng_eager, torch.get_rng_state())


def test_two_models_interleaved_materialization():
    """Two lazy models recorded back to back; materializing the second first must
    still give each its eager values (the RNG stream is shared)."""
    torch.manual_seed(SEED)
    a_e = MODEL_BUILDERS["gpt2_tiny"][0]()
    b_e = MODEL_BUILDERS["llama_tiny"][0]()
    rng_eager = torch.get_rng_state()

    torch.manual_seed(SEED)
    with lazyinit.LazyInitContext():
        a_l = MODEL_BUILDERS["gpt2_tiny"][0]()
        b_l = MODEL_BUILDERS["llama_tiny"][0]()
    lazyinit.materialize(b_l, "cpu")
    lazyinit.materialize(a_l, "cpu")
    assert_modules_equal(a_e, a_l)
    assert_modules_equal(b_e, b_l)
    assert_rng_equal(rng_eager, torch.get_rng_state())
