#!/usr/bin/env python3
"""The main job (`make demo`): a 70B-shaped Llama built lazily on a small machine.

1. Builds a Llama-2-70B-shaped model (69 B parameters, 276 GB in fp32) under
   ``lazyinit.LazyInitContext()`` and prints what that cost.
2. Materializes one transformer block on the CPU, out of order (every random
   draw recorded before it is accounted for), and checks it bitwise against
   the same block built eagerly with the same seed.

The model initializes each block as it is built (Megatron-LM style:
normal(0, 0.02), output projections scaled by 1/sqrt(2 * layers)), so the
eager reference only needs the embedding and the first block.
"""
from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))
sys.path.insert(0, os.path.join(HERE, "..", "python"))

import lazyinit  # noqa: E402
from models import LlamaConfig, LlamaDecoderLayer, LlamaRMSNorm, llama_config  # noqa: E402

GiB = 1 << 30


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def init_block(block: nn.Module, cfg: LlamaConfig) -> None:
    std = cfg.initializer_range
    out_std = std / math.sqrt(2 * cfg.num_hidden_layers)
    with torch.no_grad():
        for name, p in block.named_parameters():
            if p.dim() < 2:
                continue  # norm weights stay ones
            is_output = name.endswith("o_proj.weight") or name.endswith("down_proj.weight")
            p.normal_(0.0, out_std if is_output else std)


class Llama(nn.Module):
    """Llama shape, Megatron-style init applied block by block."""

    def __init__(self, cfg: LlamaConfig, num_layers: int) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        with torch.no_grad():
            self.embed_tokens.weight.normal_(0.0, cfg.initializer_range)
        self.layers = nn.ModuleList()
        for _ in range(num_layers):
            block = LlamaDecoderLayer(cfg)
            init_block(block, cfg)
            self.layers.append(block)
        self.norm = LlamaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        with torch.no_grad():
            self.lm_head.weight.normal_(0.0, cfg.initializer_range)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="70b", help="llama shape: 1b, 7b, 70b")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cfg = llama_config(args.shape)

    print(f"torch {torch.__version__}, lazyinit device type '{lazyinit.device_type}'")
    base_rss = rss_bytes()
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    with lazyinit.LazyInitContext():
        model = Llama(cfg, cfg.num_hidden_layers)
    build_s = time.perf_counter() - start
    n_params = sum(p.numel() for p in model.parameters())
    print(f"\n1. Built a Llama-{args.shape} shape lazily in {build_s:.2f} s")
    print(f"   parameters:            {n_params / 1e9:.2f} B")
    print(f"   fp32 bytes it needs:   {n_params * 4 / GiB:.1f} GiB")
    print(f"   memory actually used:  {(rss_bytes() - base_rss) / (1 << 20):.1f} MiB "
          f"(process RSS {rss_bytes() / (1 << 20):.0f} MiB, peak {peak_rss_bytes() / (1 << 20):.0f} MiB)")
    print(f"   model.lm_head.weight:  {model.lm_head.weight!r}")
    print(f"   lazyinit.stats:        {lazyinit.stats(model)}")

    block = model.layers[0]
    start = time.perf_counter()
    lazyinit.materialize(block, "cpu")
    mat_s = time.perf_counter() - start
    block_bytes = sum(p.numel() * p.element_size() for p in block.parameters())
    print(f"\n2. Materialized model.layers[0] ({block_bytes / GiB:.2f} GiB) on cpu in {mat_s:.1f} s;"
          f" {lazyinit.stats(model).parameters_lazy} parameters are still lazy")

    # The eager reference: the same code, eagerly, up to the first block.
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
    with torch.no_grad():
        embed.weight.normal_(0.0, cfg.initializer_range)
    del embed
    eager_block = LlamaDecoderLayer(cfg)
    init_block(eager_block, cfg)
    eager_s = time.perf_counter() - start
    lazy_sd, eager_sd = block.state_dict(), eager_block.state_dict()
    equal = all(torch.equal(lazy_sd[k], eager_sd[k]) for k in eager_sd) and lazy_sd.keys() == eager_sd.keys()
    print(f"   eager reference block built in {eager_s:.1f} s")
    print(f"   every tensor of the block torch.equal to eager: {equal}")
    print(f"   peak RSS of the whole run: {peak_rss_bytes() / GiB:.2f} GiB")
    if not equal:
        sys.exit("demo: the lazily materialized block differs from eager construction")


if __name__ == "__main__":
    main()
