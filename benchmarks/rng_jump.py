#!/usr/bin/env python3
"""mt19937 jump-ahead benchmark (src/rng/mt19937_jump.cpp).

1. Skipping n outputs of a CPU generator (n = 1e6 .. 1e10) by the former
   block-by-block loop ("step": one next_state() per 624 outputs) and by the
   GF(2) jump, in one process. The jump is timed cold (x^N mod p computed;
   each repetition a different N of the same size, so the cache of recent
   jump polynomials does not answer) and warm (the same N again: Horner
   only). Each n's two results are checked equal.
2. End to end: CPU ``materialize_module_shards`` of rank 0 and rank 7 of 8
   of a Llama-shaped model (FSDP layout, ``ByKind(Shard(0, rank, 8))``),
   with the jump (default threshold) and with stepping only (threshold set
   out of reach), each in a fresh process (a process remembers generator
   states it found). Only the rank's pieces are allocated (7b fp32: 3.4 GB).
   The pieces' bit checksums must agree between the two modes.

    .venv/bin/python benchmarks/rng_jump.py                  # both parts, 7b
    .venv/bin/python benchmarks/rng_jump.py --no-model       # part 1 only
    .venv/bin/python benchmarks/rng_jump.py --shape 1b --dtype bfloat16
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))
sys.path.insert(0, os.path.join(HERE, "..", "python"))

COUNTS = [10**6, 10**8, 10**9, 7 * 10**9, 10**10]
BLOCK = 624


def skip_table(counts: List[int], reps: int) -> List[Dict]:
    import torch
    import lazyinit

    start = torch.Generator().manual_seed(20260101)
    torch.rand(101, generator=start)  # start inside a block

    def timed(n: int, how: str):
        """Seconds of one skip of n outputs from `start`, and the generator."""
        g = torch.Generator()
        g.set_state(start.get_state())
        t0 = time.perf_counter()
        lazyinit._C._mt19937_discard(g, n, how)
        return time.perf_counter() - t0, g

    # The process's first jump also computes p(x) (Berlekamp-Massey).
    first, _ = timed(10**7, "jump")
    print(f"first jump of the process (p(x) computed, then a jump of 1e7): {first * 1e3:.1f} ms")
    rows = []
    for n in counts:
        step, stepped = timed(n, "step")
        if n <= 10**8:
            step = min([step] + [timed(n, "step")[0] for _ in range(2)])
        cold = [timed(n + BLOCK * k, "jump")[0] for k in range(1, reps + 1)]
        _, jumped = timed(n, "jump")
        warm = [timed(n, "jump")[0] for _ in range(reps)]
        equal = torch.equal(jumped.get_state(), stepped.get_state())
        rows.append({"n": n, "step": step, "cold": statistics.median(cold),
                     "warm": statistics.median(warm), "equal": equal})
        print(f"  n={n:.0e}: step {step:.4g} s, jump cold {rows[-1]['cold'] * 1e3:.3f} ms, "
              f"warm {rows[-1]['warm'] * 1e3:.3f} ms, equal {equal}", flush=True)
    return rows


def worker(args) -> None:
    import torch
    import lazyinit
    from models import Llama, llama_config

    torch.set_num_threads(args.threads)
    torch.set_default_dtype(getattr(torch, args.dtype))
    if args.mode == "step":
        lazyinit._C._set_mt19937_jump_twists(2**62)
    overrides = {} if args.layers < 0 else {"num_hidden_layers": args.layers}
    torch.manual_seed(args.seed)
    with lazyinit.LazyInitContext():
        model = Llama(llama_config(args.shape, **overrides))
    lazyinit.reset_shard_stats()
    policy = lazyinit.ByKind(lazyinit.Shard(0, args.rank, args.world))
    t0 = time.perf_counter()
    shards = lazyinit.materialize_module_shards(model, policy)
    seconds = time.perf_counter() - t0
    stats = lazyinit.shard_stats()
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    sums = [int(t.contiguous().view(ints[t.element_size()]).sum(dtype=torch.int64))
            for _, t in sorted(shards.items())]
    print(json.dumps({
        "seconds": seconds, "draws_skipped": stats["draws_skipped"],
        "fallbacks": stats["fallbacks"], "scratch": stats["rng_scratch_runs"],
        "shard_bytes": sum(t.numel() * t.element_size() for t in shards.values()),
        "checksum": f"{hash(tuple(sums)) & (2**64 - 1):016x}"}))


def model_table(args) -> List[Dict]:
    rows = []
    for rank in (0, args.world - 1):
        for mode in ("jump", "step"):
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--mode", mode,
                   "--rank", str(rank), "--world", str(args.world), "--shape", args.shape,
                   "--layers", str(args.layers), "--dtype", args.dtype,
                   "--threads", str(args.threads), "--seed", str(args.seed)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=dict(
                os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONHASHSEED="0"))
            if out.returncode != 0:
                raise RuntimeError(f"worker {mode} rank {rank} failed:\n{out.stderr}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row.update(rank=rank, mode=mode)
            rows.append(row)
            print(f"  rank {rank} {mode}: {row['seconds']:.2f} s, "
                  f"{row['draws_skipped']:.3e} draws skipped, checksum {row['checksum']}",
                  flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default=",".join(str(c) for c in COUNTS))
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--no-model", action="store_true")
    ap.add_argument("--shape", default="7b")
    ap.add_argument("--layers", type=int, default=-1, help="decoder layers (-1: the shape's)")
    ap.add_argument("--world", type=int, default=8)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="jump", help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return

    import torch
    import lazyinit
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, jump threshold {lazyinit._C._mt19937_jump_twists()} "
          f"twists ({lazyinit._C._mt19937_jump_twists() * BLOCK} outputs)")
    rows = skip_table([int(float(c)) for c in args.counts.split(",")], args.reps)
    print("\n| outputs skipped | step (s) | jump, cold (ms) | jump, warm (ms) "
          "| step / jump cold | equal |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:.0e} | {r['step']:.4g} | {r['cold'] * 1e3:.3f} | {r['warm'] * 1e3:.3f} "
              f"| {r['step'] / r['cold']:.0f}x | {r['equal']} |")
    if not all(r["equal"] for r in rows):
        raise SystemExit("jump and step disagree")
    if args.no_model:
        return

    print(f"\nmaterialize_module_shards, {args.shape} ({args.dtype}, "
          f"{'all' if args.layers < 0 else args.layers} layers), world {args.world}, "
          f"{args.threads} thread(s), a fresh process each:")
    rows = model_table(args)
    by = {(r["rank"], r["mode"]): r for r in rows}
    print("\n| rank | draws skipped | jump (s) | step (s) | step / jump | pieces (GiB) |")
    print("|---|---|---|---|---|---|")
    for rank in (0, args.world - 1):
        j, s = by[(rank, "jump")], by[(rank, "step")]
        print(f"| {rank} of {args.world} | {j['draws_skipped']:.3e} | {j['seconds']:.2f} "
              f"| {s['seconds']:.2f} | {s['seconds'] / j['seconds']:.2f}x "
              f"| {j['shard_bytes'] / 2**30:.2f} |")
    last = args.world - 1
    for mode in ("jump", "step"):
        print(f"rank {last} - rank 0, {mode}: "
              f"{by[(last, mode)]['seconds'] - by[(0, mode)]['seconds']:+.2f} s")
    for rank in (0, last):
        if by[(rank, "jump")]["checksum"] != by[(rank, "step")]["checksum"]:
            raise SystemExit(f"rank {rank}: jump and step pieces differ")
        if by[(rank, "jump")]["fallbacks"] or by[(rank, "jump")]["scratch"]:
            print(f"note: rank {rank} had fallbacks or scratch runs: {by[(rank, 'jump')]}")
    print("pieces equal between jump and step (checksums)")


if __name__ == "__main__":
    main()
