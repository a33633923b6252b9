#!/usr/bin/env python3
"""Llama shapes used by the benchmarks, with analytic parameter counts.

The shapes themselves live in tests/python/models.py (``llama_config``) so tests
and benchmarks build exactly the same model code.

    /usr/bin/python3 benchmarks/llama_shapes.py            # table of shapes
    /usr/bin/python3 benchmarks/llama_shapes.py --check    # + count on meta == analytic
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))

from models import LLAMA_SHAPES, Llama, LlamaConfig, llama_config  # noqa: E402

BENCH_SHAPES = ["1b", "7b", "70b"]


def param_count(cfg: LlamaConfig) -> int:
    """Unique parameters of models.Llama (ties counted once)."""
    h, hd = cfg.hidden_size, cfg.head_dim
    attn = h * cfg.num_attention_heads * hd * 2 + h * cfg.num_key_value_heads * hd * 2
    mlp = 3 * h * cfg.intermediate_size
    layer = attn + mlp + 2 * h
    embed = cfg.vocab_size * h
    head = 0 if cfg.tie_word_embeddings else cfg.vocab_size * h
    return embed + cfg.num_hidden_layers * layer + h + head


def buffer_elements(cfg: LlamaConfig) -> int:
    n = cfg.head_dim // 2
    if cfg.rope_cache:
        n += 2 * cfg.max_position_embeddings * cfg.head_dim
    return n


def meta_count(cfg: LlamaConfig) -> int:
    """Build on the meta device (no data) and count unique parameters."""
    from construct import meta_device_context  # same helper the benchmark uses
    with meta_device_context():
        model = Llama(cfg)
    return sum(p.numel() for p in model.parameters())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(LLAMA_SHAPES))
    ap.add_argument("--check", action="store_true", help="verify analytic counts by a meta build")
    args = ap.parse_args(argv)
    sys.path.insert(0, HERE)
    print("| shape | hidden | inter | layers | heads | kv heads | vocab | params | fp32 GiB | bf16 GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ok = True
    for name in args.shapes.split(","):
        cfg = llama_config(name)
        n = param_count(cfg)
        print(f"| {name} | {cfg.hidden_size} | {cfg.intermediate_size} | {cfg.num_hidden_layers} "
              f"| {cfg.num_attention_heads} | {cfg.num_key_value_heads} | {cfg.vocab_size} "
              f"| {n / 1e9:.3f} B | {n * 4 / 2**30:.1f} | {n * 2 / 2**30:.1f} |")
        if args.check:
            m = meta_count(cfg)
            if m != n:
                ok = False
                print(f"  MISMATCH {name}: meta build has {m} parameters, analytic {n}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
