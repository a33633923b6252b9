#!/usr/bin/env python3
"""Fixed costs of materialization: a Llama-shaped model with 32 layers of
tiny tensors (kernel time negligible), materialized onto ``--device``;
prints the time per tensor and, with ``--profile``, torch.profiler's table
of the ops and CUDA runtime calls that took the time.

    .venv/bin/python benchmarks/overhead.py --device cuda --profile
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))
sys.path.insert(0, os.path.join(HERE, "..", "python"))

import lazyinit  # noqa: E402
from models import Llama, llama_config  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--shards", action="store_true",
                    help="rank 3 of 8 (Shard(0)) with materialize_module_shards instead")
    args = ap.parse_args(argv)
    cfg = llama_config("7b", hidden_size=64, intermediate_size=128, vocab_size=128,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)

    def lazy() -> torch.nn.Module:
        torch.manual_seed(0)
        with lazyinit.LazyInitContext():
            return Llama(cfg)

    def place(name: str, t: torch.Tensor):
        return lazyinit.Shard(0, 3, 8) if t.dim() else lazyinit.Replicate()

    def run(m: torch.nn.Module) -> None:
        if args.shards:
            lazyinit.materialize_module_shards(m, place, args.device)
        else:
            lazyinit.materialize(m, args.device, progress=False)

    what = "shards of" if args.shards else "materialize"
    print(f"torch {torch.__version__}, device {args.device}")
    for _ in range(args.repeat):
        m = lazy()
        n = len({id(t) for t in list(m.parameters()) + list(m.buffers())})
        _sync(args.device)
        start = time.perf_counter()
        run(m)
        _sync(args.device)
        seconds = time.perf_counter() - start
        print(f"{what} {n} tensors: {seconds * 1e3:.2f} ms, "
              f"{seconds / n * 1e6:.1f} us a tensor")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        m = lazy()
        activities = [ProfilerActivity.CPU]
        if args.device.startswith("cuda"):
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities) as prof:
            run(m)
            _sync(args.device)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))


if __name__ == "__main__":
    main()
