"""transformers and timm models from small configs, built lazily and eagerly
with the same seed: every tensor equal. Skipped where the libraries are
missing (Debian 12 has neither; the accelerator image has both).

    python tests/python/test_hf_timm.py --report out.md   # the table for docs/compatibility.md
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, Dict, List, Tuple

import pytest
import torch
import torch.nn as nn

import lazyinit


def _hf_models() -> Dict[str, Callable[[], nn.Module]]:
    transformers = pytest.importorskip("transformers")
    t = transformers

    def small(cfg_cls, **kw):
        return cfg_cls(**kw)

    vit = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               image_size=32, patch_size=8, num_labels=3)
    llama = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    blip2 = dict(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8),
        qformer_config=dict(vocab_size=128, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=64, encoder_hidden_size=32),
        text_config=dict(model_type="opt", vocab_size=128, hidden_size=32, num_hidden_layers=2,
                         ffn_dim=64, num_attention_heads=2, max_position_embeddings=64,
                         word_embed_proj_dim=32),
        num_query_tokens=4)
    return {
        "ViTModel": lambda: t.ViTModel(small(t.ViTConfig, **vit)),
        "ViTForMaskedImageModeling": lambda: t.ViTForMaskedImageModeling(small(t.ViTConfig, **vit)),
        "ViTForImageClassification": lambda: t.ViTForImageClassification(small(t.ViTConfig, **vit)),
        "Blip2Model": lambda: t.Blip2Model(t.Blip2Config(**blip2)),
        "Blip2ForConditionalGeneration": lambda: t.Blip2ForConditionalGeneration(t.Blip2Config(**blip2)),
        "LlamaForCausalLM": lambda: t.LlamaForCausalLM(t.LlamaConfig(**llama)),
        "MistralForCausalLM": lambda: t.MistralForCausalLM(t.MistralConfig(**llama)),
        "GPT2LMHeadModel": lambda: t.GPT2LMHeadModel(t.GPT2Config(
            vocab_size=128, n_positions=64, n_embd=32, n_layer=2, n_head=2,
            bos_token_id=1, eos_token_id=2)),
        "BertForPreTraining": lambda: t.BertForPreTraining(t.BertConfig(
            vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=64)),
        "T5ForConditionalGeneration": lambda: t.T5ForConditionalGeneration(t.T5Config(
            vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)),
        "WhisperForConditionalGeneration": lambda: t.WhisperForConditionalGeneration(t.WhisperConfig(
            vocab_size=128, d_model=32, encoder_layers=2, decoder_layers=2,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
            decoder_ffn_dim=64, num_mel_bins=16, max_source_positions=32,
            max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            decoder_start_token_id=1, suppress_tokens=None, begin_suppress_tokens=None)),
    }


def _timm_models() -> Dict[str, Callable[[], nn.Module]]:
    timm = pytest.importorskip("timm")
    kw = dict(pretrained=False, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
              num_classes=5)
    return {
        "timm vision_transformer": lambda: timm.create_model("vit_tiny_patch16_224", **kw),
        "timm deit": lambda: timm.create_model("deit_tiny_patch16_224", **kw),
        "timm beit": lambda: timm.create_model("beit_base_patch16_224", **kw),
        "timm convit": lambda: timm.create_model("convit_tiny", **dict(kw, local_up_to_layer=1)),
    }


def _all_names(module: nn.Module) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    for mod_name, mod in module.named_modules(remove_duplicate=False):
        for kind in ("_parameters", "_buffers"):
            for name, t in getattr(mod, kind).items():
                if t is not None:
                    out[f"{mod_name}.{name}" if mod_name else name] = t
    return out


def compare(build: Callable[[], nn.Module], device: str = "cpu") -> Tuple[int, int, List[str]]:
    """(parameters, early elements, mismatching names) for one model, built
    eagerly on ``device`` and lazily, then materialized there."""
    torch.manual_seed(0)
    if device == "cpu":
        eager = build()
    else:
        with torch.device(device):
            eager = build()
    eager_rng = torch.get_rng_state()
    eager_cuda_rng = torch.cuda.get_rng_state() if device.startswith("cuda") else None
    torch.manual_seed(0)
    with lazyinit.LazyInitContext():
        lazy = build()
    early = lazyinit.stats(lazy).elements_early
    lazyinit.materialize(lazy, device)
    bad = []
    if eager_cuda_rng is not None and not torch.equal(eager_cuda_rng, torch.cuda.get_rng_state()):
        bad.append("CUDA RNG state after materialization differs")
    e, l = _all_names(eager), _all_names(lazy)
    if e.keys() != l.keys():
        bad.append(f"names differ: {sorted(set(e) ^ set(l))[:5]}")
    for k in e.keys() & l.keys():
        if e[k].dtype != l[k].dtype or e[k].shape != l[k].shape or not torch.equal(e[k], l[k]):
            bad.append(k)
    # ties: the same names share one tensor in both
    ties = lambda m: sorted(sorted(n for n, t in m.items() if t is v) for v in {id(t): t for t in m.values()}.values())
    if ties(e) != ties(l):
        bad.append("ties differ")
    if not torch.equal(eager_rng, torch.get_rng_state()):
        bad.append("RNG state after materialization differs")
    return sum(p.numel() for p in eager.parameters()), early, bad


def _cases():
    cases = {}
    for factory in (_hf_models, _timm_models):
        try:
            cases.update(factory())
        except pytest.skip.Exception:
            pass
    return cases


CASES = _cases()


@pytest.mark.skipif(not CASES, reason="neither transformers nor timm is installed")
@pytest.mark.parametrize("name", sorted(CASES))
def test_equal_to_eager(name):
    _, _, bad = compare(CASES[name])
    assert not bad, bad


@pytest.mark.skipif(not CASES, reason="neither transformers nor timm is installed")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(CASES))
def test_equal_to_eager_cuda(name):
    _, _, bad = compare(CASES[name], "cuda")
    assert not bad, bad


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--report", default=None)
    args = parser.parse_args()
    import importlib
    versions = []
    for lib in ("transformers", "timm"):
        try:
            versions.append(f"{lib} {importlib.import_module(lib).__version__}")
        except ImportError:
            pass
    rows = [f"torch {torch.__version__}, " + ", ".join(versions), "",
            "| model | parameters | early-materialized elements | result |", "|---|---|---|---|"]
    failed = 0
    for name in sorted(CASES):
        start = time.perf_counter()
        try:
            n, early, bad = compare(CASES[name])
            result = "pass: every tensor equal" if not bad else f"FAIL: {bad[:3]}"
            failed += bool(bad)
        except Exception as exc:  # reported in the table
            n, early, result = 0, 0, f"FAIL: {type(exc).__name__}: {str(exc)[:200]}"
            failed += 1
        rows.append(f"| {name} | {n:,} | {early:,} | {result} ({time.perf_counter() - start:.1f} s) |")
        print(rows[-1], flush=True)
    text = "\n".join(rows) + "\n"
    if args.report:
        with open(args.report, "w") as f:
            f.write(text)
    print(f"{len(CASES) - failed} passed, {failed} failed")


if __name__ == "__main__":
    sys.exit(main())
