"""A differential fuzzing campaign of lazyinit (see docs/fuzzing.md).

Programs come from the generator in tests/python/fuzz/ with seeded
``random.Random`` choosers (seed i -> program i, reproducible); each runs
eagerly and lazily and the runs are compared. Programs run in child
processes, so a crash (segfault) is recorded against its seed and the
campaign goes on in a new child.

    # from the repository root
    python benchmarks/fuzz_run.py --count 100000 --start 0
    python benchmarks/fuzz_run.py --budget 3600 --start 200000
    python benchmarks/fuzz_run.py --seed 1234 [--minimize [--kind K]]

Prints the torch version, the seed range, the programs' sizes (ops tried and
lines written: mean and distribution), how many mismatched, crashed or were
invalid, the mismatches grouped by kind with the first seed of each, and the
wall time.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
sys.path.insert(0, os.path.join(ROOT, "python"))

import fuzz  # noqa: E402
from fuzz import campaign  # noqa: E402

BUCKETS = [(1, 10), (11, 20), (21, 50), (51, 100)]


def show_and_minimize(args: argparse.Namespace) -> None:
    """Shows one program and its mismatches; with --minimize, shrinks it,
    each candidate checked in a fresh child process."""
    prog = fuzz.generate_program(fuzz.RandomChooser(args.seed), fuzz.feature_list(args.disable),
                                 args.max_ops)
    print(prog)
    ms = campaign.child_check(prog.lines)
    print(campaign.report(prog.lines, ms) if ms is None or ms else "no mismatch")
    kinds = campaign.kinds_of(ms) if ms is None or ms else []
    if not args.minimize or not kinds:
        return
    target = args.kind or kinds[0]
    print(f"\nminimizing for {target!r} ...", flush=True)
    small, small_ms = campaign.shrink_program(prog.lines, target)
    print(f"\nminimal program for {target!r}:\n{fuzz.Program(small)}")
    print(campaign.report(small, small_ms))


class Tally:
    """Counts of a campaign's records."""

    def __init__(self) -> None:
        self.t0 = time.time()
        self.stats: Dict[str, int] = collections.Counter()
        self.kinds: Dict[str, int] = collections.Counter()
        self.sizes: Dict[str, int] = collections.Counter()
        self.first: Dict[str, Any] = {}
        self.bad: List[Dict[str, Any]] = []

    def add(self, rec: Dict[str, Any]) -> None:
        self.stats["programs"] += 1
        if "crash" in rec:
            self._bad(rec, "crash", f"rc {rec['crash']}")
            self.stats["crashed"] += 1
        elif "invalid" in rec:
            self._bad(rec, "invalid (generator)", rec["invalid"])
            self.stats["invalid"] += 1
        else:
            self.stats["lines"] += rec["n"]
            self.stats["ops"] += rec.get("ops", 0)
            self.stats["max_ops"] = max(self.stats["max_ops"], rec.get("ops", 0))
            self.sizes[next((f"{a}-{b}" for a, b in BUCKETS if a <= rec.get("ops", 0) <= b),
                            "other")] += 1
            for k in sorted({fuzz.mismatch_kind(m) for m in rec["mismatches"]}):
                self._bad(rec, k, rec["mismatches"][0])
        n = self.stats["programs"]
        if n % 2000 == 0:
            print(f"  {n} programs, {self.stats['mismatched']} mismatched, "
                  f"{time.time() - self.t0:.0f} s", flush=True)

    def _bad(self, rec: Dict[str, Any], kind: str, msg: str) -> None:
        if not self.bad or self.bad[-1] is not rec:
            self.bad.append(rec)
            self.stats["mismatched"] += 1
        self.kinds[kind] += 1
        self.first.setdefault(kind, (rec["seed"], msg))

    def report(self, start: int, nxt: int, disabled: str) -> None:
        import torch
        wall = time.time() - self.t0
        s = self.stats
        n = s["programs"]
        ran = max(1, n - s["crashed"] - s["invalid"])
        print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, seeds {start}..{nxt - 1}, "
              f"disabled features: {disabled or '(none)'}")
        print(f"programs: {n}  (ops tried: mean {s['ops'] / ran:.1f}, max {s['max_ops']}; "
              f"lines: mean {s['lines'] / ran:.1f})")
        print("ops tried per program: " + ", ".join(
            f"{k}: {self.sizes[k]}" for k in [f"{a}-{b}" for a, b in BUCKETS] + ["other"]
            if self.sizes[k]))
        print(f"mismatched programs: {s['mismatched']}  (crashed: {s['crashed']}, "
              f"invalid programs (generator errors): {s['invalid']})")
        for k, c in sorted(self.kinds.items(), key=lambda kv: -kv[1]):
            seed, msg = self.first[k]
            print(f"  {c:6d}  {k}   [first: seed {seed}: {msg[:160]}]")
        print(f"wall time: {wall:.1f} s ({wall / max(1, n) * 1000:.1f} ms/program)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=None, help="seeds to run (default 10000)")
    ap.add_argument("--budget", type=float, default=None, help="or: seconds to run for")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--max-ops", type=int, default=fuzz.DEFAULT_MAX_OPS)
    ap.add_argument("--disable", default=fuzz.DEFAULT_DISABLED,
                    help="comma-separated generator features to switch off (default: those "
                         f"of open findings, {fuzz.DEFAULT_DISABLED!r}; '' for none)")
    ap.add_argument("--seed", type=int, help="show (and with --minimize, shrink) one program")
    ap.add_argument("--minimize", action="store_true")
    ap.add_argument("--kind", default="", help="with --minimize: the mismatch kind to keep")
    ap.add_argument("--json", default="", help="write every non-clean record to this file")
    args = ap.parse_args()
    fuzz.feature_list(args.disable)  # unknown names fail here
    if args.seed is not None:
        show_and_minimize(args)
        return
    count = args.count if args.count is not None or args.budget is not None else 10000
    deadline = None if args.budget is None else time.time() + args.budget
    tally = Tally()
    nxt = campaign.run_seeds(args.start, count, tally.add, args.max_ops, args.disable, deadline)
    tally.report(args.start, nxt, args.disable)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(tally.bad, f, indent=1)


if __name__ == "__main__":
    main()
