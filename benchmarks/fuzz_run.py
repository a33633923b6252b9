"""A long differential fuzzing run of lazyinit (see docs/fuzzing.md).

Generates programs with the generator of tests/python/fuzz_programs.py from
seeded ``random.Random`` choosers (seed i -> program i, reproducible), runs
each eagerly and lazily and compares. Programs run in a child process, so a
crash (segfault) is recorded against its seed and the run goes on in a new
child.

    # from the repository root
    PYTHONPATH=python /usr/bin/python3 benchmarks/fuzz_run.py --count 10000
    PYTHONPATH=python /usr/bin/python3 benchmarks/fuzz_run.py --seed 1234 --show
    PYTHONPATH=python /usr/bin/python3 benchmarks/fuzz_run.py --seed 1234 --minimize [--kind K]

Prints the number of programs, how many mismatched (and crashed), the
mismatches grouped by kind with the first seed of each, and the wall time.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
sys.path.insert(0, os.path.join(ROOT, "python"))


def _features(args: argparse.Namespace):
    import fuzz_programs as fp
    off = set(args.disable.split(",")) if args.disable else set()
    unknown = off - set(fp.FEATURES)
    if unknown:
        raise SystemExit(f"unknown features {sorted(unknown)}; known: {fp.FEATURES}")
    return [f for f in fp.FEATURES if f not in off]


def child(args: argparse.Namespace) -> None:
    """Runs seeds [start, start+count) and reports one JSON line per event."""
    import fuzz_programs as fp
    features = _features(args)
    for seed in range(args.start, args.start + args.count):
        print(json.dumps({"start": seed}), flush=True)
        prog = fp.generate_program(fp.RandomChooser(seed), features, args.max_ops)
        try:
            ms = fp.check_program(prog.lines)
            rec = {"seed": seed, "n": len(prog.lines), "mismatches": ms}
        except fp.InvalidProgram as e:
            rec = {"seed": seed, "n": len(prog.lines), "invalid": str(e)}
        print(json.dumps(rec), flush=True)


def run_seeds(args: argparse.Namespace, start: int, count: int, on_record) -> None:
    """Runs the seeds in child processes, restarting after crashes."""
    end = start + count
    nxt = start
    while nxt < end:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--start", str(nxt),
               "--count", str(end - nxt), "--max-ops", str(args.max_ops)]
        if args.disable:
            cmd += ["--disable", args.disable]
        env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
        # stderr goes to a file: torch warnings (e.g. resized outputs) would
        # fill a pipe that is only read at the end and block the child.
        with tempfile.TemporaryFile(mode="w+") as err_file:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_file,
                                    text=True, env=env, cwd=ROOT)
            current = None
            assert proc.stdout is not None
            for line in proc.stdout:
                rec = json.loads(line)
                if "start" in rec:
                    current = rec["start"]
                    continue
                on_record(rec)
                nxt = rec["seed"] + 1
                current = None
            rc = proc.wait()
            err_file.seek(0)
            err = err_file.read()
        if current is not None:  # died in the middle of a program
            on_record({"seed": current, "crash": rc, "stderr": err[-2000:]})
            nxt = current + 1
        elif rc != 0:
            raise SystemExit(f"child failed (rc {rc}):\n{err}")


def child_check(lines, auto_finish: bool = False):
    """Checks the program in a fresh child process (no state left by earlier
    programs, and a crash is survived). Returns None if the child crashed,
    else the mismatches."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"lines": list(lines), "auto_finish": auto_finish}, f)
    try:
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "--run-lines", f.name],
                           capture_output=True, text=True, cwd=ROOT,
                           env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python")))
    finally:
        os.unlink(f.name)
    if r.returncode < 0:
        return None
    out = r.stdout.strip().splitlines()
    if r.returncode != 0 or not out:
        raise RuntimeError(r.stderr[-3000:])
    res = json.loads(out[-1])
    if "invalid" in res:
        import fuzz_programs as fp
        raise fp.InvalidProgram(res["invalid"])
    return res["mismatches"]


def show_and_minimize(args: argparse.Namespace) -> None:
    """Shows one program and its mismatches; with --minimize, shrinks it,
    each candidate checked in a fresh child process."""
    import fuzz_programs as fp
    prog = fp.generate_program(fp.RandomChooser(args.seed), _features(args), args.max_ops)
    print(prog)
    ms = child_check(prog.lines)
    if ms is None:
        print("CRASH")
        kinds = {"crash"}
    else:
        for m in ms:
            print("MISMATCH", m)
        kinds = {fp.mismatch_kind(m) for m in ms}
    if not args.minimize or not kinds:
        return
    target = args.kind or sorted(kinds)[0]
    print(f"\nminimizing for {target!r} ...", flush=True)

    def keep(cand):
        got = child_check(cand, auto_finish=True)
        if target == "crash":
            return got is None
        return got is not None and target in {fp.mismatch_kind(m) for m in got}
    small = fp.minimize(prog.lines, keep)
    if target != "crash":
        small = fp.complete(small)
    print(f"\nminimal program for {target!r}:")
    print(fp.Program(small))
    got = child_check(small)
    for m in (got or ["(crash)"]):
        print("MISMATCH", m)
    print("\n--- lazy ---\n" + fp.render(small, "lazy"))
    print("--- eager ---\n" + fp.render(small, "eager"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--max-ops", type=int, default=24)
    ap.add_argument("--disable", default="", help="comma-separated generator features to switch off")
    ap.add_argument("--seed", type=int, help="show (and with --minimize, shrink) one program")
    ap.add_argument("--minimize", action="store_true")
    ap.add_argument("--kind", default="", help="with --minimize: the mismatch kind to keep")
    ap.add_argument("--json", default="", help="write every non-clean record to this file")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--run-lines", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.run_lines:
        import fuzz_programs as fp
        with open(args.run_lines) as f:
            job = json.load(f)
        try:
            print(json.dumps({"mismatches": fp.check_program(job["lines"], job["auto_finish"])}))
        except fp.InvalidProgram as e:
            print(json.dumps({"invalid": str(e)}))
        return
    if args.seed is not None:
        return show_and_minimize(args)

    import torch
    t0 = time.time()
    stats = collections.Counter()
    kinds = collections.Counter()
    first = {}
    bad = []

    def on_record(rec) -> None:
        stats["programs"] += 1
        if "crash" in rec:
            stats["crashed"] += 1
            stats["mismatched"] += 1
            kinds["crash"] += 1
            first.setdefault("crash", (rec["seed"], f"rc {rec['crash']}"))
            bad.append(rec)
        elif "invalid" in rec:
            stats["invalid"] += 1
            first.setdefault("invalid (generator)", (rec["seed"], rec["invalid"]))
            kinds["invalid (generator)"] += 1
            bad.append(rec)
        else:
            stats["lines"] += rec["n"]
            if rec["mismatches"]:
                stats["mismatched"] += 1
                bad.append(rec)
                import fuzz_programs as fp
                for k in sorted({fp.mismatch_kind(m) for m in rec["mismatches"]}):
                    kinds[k] += 1
                    first.setdefault(k, (rec["seed"], rec["mismatches"][0]))
        n = stats["programs"]
        if n % 500 == 0:
            print(f"  {n} programs, {stats['mismatched']} mismatched, "
                  f"{time.time() - t0:.0f} s", flush=True)

    run_seeds(args, args.start, args.count, on_record)
    wall = time.time() - t0
    n = stats["programs"]
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, seeds {args.start}..{args.start + args.count - 1}"
          + (f", disabled: {args.disable}" if args.disable else ""))
    print(f"programs: {n}  (mean {stats['lines'] / max(1, n - stats['crashed']):.1f} lines)")
    print(f"mismatched programs: {stats['mismatched']}  (crashed: {stats['crashed']})")
    print(f"invalid programs (generator errors): {stats['invalid']}")
    for k, c in kinds.most_common():
        seed, msg = first[k]
        print(f"  {c:6d}  {k}   [first: seed {seed}: {msg[:160]}]")
    print(f"wall time: {wall:.1f} s ({wall / max(1, n) * 1000:.1f} ms/program)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(bad, f, indent=1)


if __name__ == "__main__":
    main()
