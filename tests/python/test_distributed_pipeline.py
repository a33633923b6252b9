"""Pipeline stages split off a lazy model (``lazyinit.distributed``
``split_stage`` / ``pipeline_stage``): each stage materializes exactly its
layers of eager single-device construction, with no per-stage seed."""
from __future__ import annotations

import pytest
import torch

import lazyinit
import lazyinit.distributed as ld
from dist_models import named_slots


def _pair(tied: bool, layers: int = 5):
    import models
    cfg = models.llama_config("tiny", num_hidden_layers=layers, tie_word_embeddings=tied)
    torch.manual_seed(3)
    eager = models.Llama(cfg)
    torch.manual_seed(3)
    with lazyinit.LazyInitContext():
        lazy = models.Llama(cfg)
    return eager, lazy


def _stage_names(num_layers: int, stages: int, stage: int):
    keep = [f"model.layers.{i}" for i in ld.stage_layers(num_layers, stages, stage)]
    if stage == 0:
        keep.append("model.embed_tokens")
    if stage == stages - 1:
        keep += ["model.norm", "lm_head"]
    keep.append("model.rotary_emb")
    return keep


@pytest.mark.parametrize("tied", [False, True])
def test_every_stage_equals_eager_layers(tied):
    eager, lazy = _pair(tied)
    expected = named_slots(eager)
    seen = set()
    for stage in range(3):
        keep = _stage_names(5, 3, stage)
        part = ld.pipeline_stage(lazy, keep, "cpu")
        got = named_slots(part)
        assert got and not lazyinit.is_lazy(part)
        for name, t in got.items():
            assert torch.equal(t, expected[name]), name
            seen.add(name)
        layer_ids = {n.split(".")[2] for n in got if n.startswith("model.layers.")}
        assert layer_ids == {str(i) for i in ld.stage_layers(5, 3, stage)}
        if tied and stage == 2:
            # The head's weight is the embedding's (eager's values) though the
            # embedding lives on stage 0.
            assert torch.equal(part.lm_head.weight, eager.model.embed_tokens.weight)
    assert seen == set(expected)
    assert lazyinit.is_lazy(lazy), "split_stage copies: the full lazy model stays lazy"


def test_stage_computes_only_its_layers():
    eager, lazy = _pair(False, layers=4)
    part = ld.split_stage(lazy, ["model.layers.2"])
    assert set(named_slots(part)) == {n for n in named_slots(eager)
                                      if n.startswith("model.layers.2.")}
    stats = lazyinit.stats(part)
    lazyinit.materialize(part, "cpu")
    assert lazyinit.stats(part).elements_materialized == stats.elements_lazy
    x = torch.randn(1, 3, eager.config.hidden_size)
    cos, sin = eager.model.rotary_emb(3)
    assert torch.equal(list(part.model.layers)[0](x, cos, sin),
                       eager.model.layers[2](x, cos, sin))


def test_in_place_split_and_errors():
    _, lazy = _pair(False, layers=2)
    with pytest.raises(ValueError, match="no submodule named"):
        ld.split_stage(lazy, ["model.layers.7"])
    part = ld.split_stage(lazy, ["lm_head"], copy_model=False)
    assert part is lazy and set(named_slots(lazy)) == {"lm_head.weight"}


def test_stage_layers_split():
    assert [ld.stage_layers(10, 4, s) for s in range(4)] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
