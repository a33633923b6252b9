#!/usr/bin/env python3
"""What reading the CPU generator costs after a lazy model died unreplayed.

Eager construction leaves the generator after every draw of the model; so
must a lazy model that is deleted or discarded before it is materialized
(its draws are kept as counts and skipped with one mt19937 jump when the
generator is next read). For a model of ``--layers`` Linear(h, h) layers:

- eager: building the model eagerly (what eager pays for the same draws),
- lazy build: recording it (after a first, empty context: on torch 2.x that
  one imports torch._dynamo, once per process),
- del + randn / discard + randn: dropping it, then the first real draw
  (which catches the generator up) — each checked against eager's values,
- get_rng_state: the same, with a generator read instead of a draw.

Each measurement runs in a fresh process; medians of ``--reps``.

    .venv/bin/python benchmarks/generator_reads.py --layers 24 --hidden 2048
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))

MODES = ["eager", "lazy_build", "del_randn", "discard_randn", "del_get_rng_state"]


def worker(mode: str, layers: int, hidden: int) -> dict:
    import torch
    import torch.nn as nn

    import lazyinit

    torch.set_num_threads(1)

    def build() -> nn.Module:
        return nn.Sequential(*[nn.Linear(hidden, hidden) for _ in range(layers)])

    # Not timed: the first context of a process imports torch._dynamo on
    # torch 2.x (about 0.8 s, paid once; see docs/architecture.md).
    with lazyinit.LazyInitContext():
        pass
    torch.manual_seed(0)
    if mode == "eager":
        start = time.perf_counter()
        build()
        return {"seconds": time.perf_counter() - start, "check": torch.randn(4).tolist()}
    start = time.perf_counter()
    with lazyinit.LazyInitContext():
        model = build()
    built = time.perf_counter() - start
    if mode == "lazy_build":
        return {"seconds": built, "check": None}
    start = time.perf_counter()
    if mode.startswith("discard"):
        lazyinit.discard(model)
    del model
    if mode.endswith("get_rng_state"):
        state = torch.get_rng_state()
        seconds = time.perf_counter() - start
        torch.set_rng_state(state)
    else:
        value = torch.randn(4)
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "check": value.tolist()}
    return {"seconds": seconds, "check": torch.randn(4).tolist()}


def run(mode: str, args: argparse.Namespace) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", mode, "--layers", str(args.layers),
         "--hidden", str(args.hidden)],
        check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.layers, args.hidden)))
        return
    import torch
    draws = args.layers * (args.hidden * args.hidden + args.hidden)
    print(f"torch {torch.__version__}; {args.layers} x Linear({args.hidden}, {args.hidden}): "
          f"{draws / 1e6:.0f} M uniform draws; median of {args.reps} fresh processes")
    eager_check = None
    print("| step | ms | x eager construction | values after = eager's |")
    print("|---|---|---|---|")
    eager_ms = None
    for mode in MODES:
        results = [run(mode, args) for _ in range(args.reps)]
        ms = 1e3 * statistics.median(r["seconds"] for r in results)
        check = results[0]["check"]
        if mode == "eager":
            eager_check, eager_ms = check, ms
        same = "-" if check is None else ("yes" if check == eager_check else "NO")
        print(f"| {mode} | {ms:.2f} | {ms / eager_ms:.4f} | {same} |")
        if same == "NO":
            sys.exit(f"{mode}: the generator is not where eager construction leaves it")


if __name__ == "__main__":
    main()
