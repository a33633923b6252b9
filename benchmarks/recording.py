#!/usr/bin/env python3
"""Where lazy construction spends its time: the 7B-shaped reference Llama
built under LazyInitContext (and on "meta" where torch has device contexts,
for the cost of the module code alone), per-op recording costs, and the top
of a cProfile of one lazy build.

    .venv/bin/python benchmarks/recording.py [--shape 7b] [--profile 25]
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
from typing import Callable, List

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))
sys.path.insert(0, os.path.join(HERE, "..", "python"))

import lazyinit  # noqa: E402
from models import Llama, llama_config  # noqa: E402


def _median_seconds(fn: Callable[[], object], repeat: int) -> float:
    times: List[float] = []
    for _ in range(repeat):
        torch.manual_seed(0)
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
        del out
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shape", default="7b")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", type=int, default=25, help="rows of the profile (0: none)")
    args = ap.parse_args(argv)
    cfg = llama_config(args.shape)

    def lazy():
        with lazyinit.LazyInitContext():
            return Llama(cfg)

    def lazy_gc():
        with lazyinit.LazyInitContext(pause_gc=False):
            return Llama(cfg)

    print(f"torch {torch.__version__}, shape {args.shape}")
    print(f"lazy build: {_median_seconds(lazy, args.repeat) * 1e3:.1f} ms")
    print(f"lazy build, garbage collector left on: "
          f"{_median_seconds(lazy_gc, args.repeat) * 1e3:.1f} ms")
    if hasattr(torch.device, "__enter__"):
        def meta():
            with torch.device("meta"):
                return Llama(cfg)
        print(f"meta build: {_median_seconds(meta, args.repeat) * 1e3:.1f} ms")
    n = 2000
    ops = [("torch.empty(64, 64)", lambda: torch.empty(64, 64)),
           ("torch.zeros(64)", lambda: torch.zeros(64)),
           ("torch.empty(64, 64).normal_()", lambda: torch.empty(64, 64).normal_()),
           ("empty + kaiming_uniform_", lambda: torch.nn.init.kaiming_uniform_(torch.empty(64, 64))),
           ("nn.Linear(64, 64)", lambda: torch.nn.Linear(64, 64))]
    with lazyinit.LazyInitContext():
        for name, fn in ops:
            keep = []
            start = time.perf_counter()
            for _ in range(n):
                keep.append(fn())
            print(f"{name}: {(time.perf_counter() - start) / n * 1e6:.1f} us")
            del keep
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        lazy()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(args.profile)


if __name__ == "__main__":
    main()
