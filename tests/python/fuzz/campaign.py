"""Running many programs: seed i is program i (``RandomChooser(i)``), in
child processes, so that a crash (lazyinit is C++) is recorded against its
seed and the run goes on in a new child; within a count or a time budget.
Also: checking one program in a fresh process, and shrinking a failing
seed's program (each candidate in a child).

    python -m fuzz.campaign --child --start S --count N [--deadline T]

is the child (PYTHONPATH holds ``python/`` and ``tests/python/``); it
prints one JSON line per program.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
ROOT = os.path.dirname(os.path.dirname(TESTS))

Record = Dict[str, Any]


def child_env() -> Dict[str, str]:
    paths = [os.path.join(ROOT, "python"), TESTS, os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))


def _child_cmd(*args: str) -> List[str]:
    return [sys.executable, "-m", "fuzz.campaign", *args]


def run_seeds(start: int, count: Optional[int], on_record: Callable[[Record], None],
              max_ops: int, disabled: str, deadline: Optional[float] = None) -> int:
    """Runs seeds from ``start`` (``count`` of them, or until ``deadline``,
    a ``time.time()``) in child processes, restarting after crashes; calls
    ``on_record`` for each program. Returns the next seed not run."""
    nxt = start
    end = None if count is None else start + count
    while (end is None or nxt < end) and (deadline is None or time.time() < deadline):
        args = ["--child", "--start", str(nxt), "--max-ops", str(max_ops)]
        args += ["--count", str(end - nxt)] if end is not None else []
        args += ["--deadline", repr(deadline)] if deadline is not None else []
        args += ["--disable", disabled]
        # stderr goes to a file: torch warnings would fill a pipe read only
        # at the end and block the child
        with tempfile.TemporaryFile(mode="w+") as err_file:
            proc = subprocess.Popen(_child_cmd(*args), stdout=subprocess.PIPE, stderr=err_file,
                                    text=True, env=child_env(), cwd=ROOT)
            current = None
            assert proc.stdout is not None
            for line in proc.stdout:
                if not line.startswith("{"):
                    continue  # a library's own output (e.g. UCX without /proc)
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
            on_record({"seed": current, "crash": rc, "stderr": err[-3000:]})
            nxt = current + 1
        elif rc != 0:
            raise RuntimeError(f"fuzz child failed (rc {rc}):\n{err[-5000:]}")
        else:
            break  # the child ran to its count or deadline
    return nxt


def _child_main(args: argparse.Namespace) -> None:
    from . import check_program, generate_program, feature_list, InvalidProgram, RandomChooser
    features = feature_list(args.disable) if args.disable is not None else feature_list()
    seed = args.start
    while args.count is None or seed < args.start + args.count:
        if args.deadline is not None and time.time() >= args.deadline:
            break
        print(json.dumps({"start": seed}), flush=True)
        try:
            prog = generate_program(RandomChooser(seed), features, args.max_ops)
        except Exception as e:  # noqa: BLE001 -- a generator bug, recorded as such
            print(json.dumps({"seed": seed, "n": 0, "ops": 0,
                              "invalid": f"the generator raised {type(e).__name__}: {e}"}),
                  flush=True)
            seed += 1
            continue
        try:
            rec = {"seed": seed, "n": len(prog.lines), "ops": prog.ops,
                   "mismatches": check_program(prog.lines)}
        except InvalidProgram as e:
            rec = {"seed": seed, "n": len(prog.lines), "ops": prog.ops, "invalid": str(e)}
        print(json.dumps(rec), flush=True)
        seed += 1


def _run_lines_main(path: str) -> None:
    from . import InvalidProgram, check_program
    with open(path) as f:
        job = json.load(f)
    try:
        print(json.dumps({"mismatches": check_program(job["lines"], job["auto_finish"])}))
    except InvalidProgram as e:
        print(json.dumps({"invalid": str(e)}))


def child_check(lines: Sequence[str], auto_finish: bool = False) -> Optional[List[str]]:
    """Checks a program in a fresh child process (no state left by earlier
    programs, and a crash is survived). Returns None if the child crashed,
    else the mismatches; raises InvalidProgram if eager rejects it."""
    from . import InvalidProgram
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"lines": list(lines), "auto_finish": auto_finish}, f)
    try:
        r = subprocess.run(_child_cmd("--run-lines", f.name), capture_output=True, text=True,
                           cwd=ROOT, env=child_env())
    finally:
        os.unlink(f.name)
    if r.returncode < 0:
        return None
    out = r.stdout.strip().splitlines()
    if r.returncode != 0 or not out:
        raise RuntimeError(r.stderr[-3000:])
    res = json.loads(out[-1])
    if "invalid" in res:
        raise InvalidProgram(res["invalid"])
    return res["mismatches"]


def kinds_of(mismatches: Optional[Sequence[str]]) -> List[str]:
    from . import mismatch_kind
    if mismatches is None:
        return ["crash"]
    return sorted({mismatch_kind(m) for m in mismatches})


def shrink_program(lines: Sequence[str], target: str,
                   budget_s: Optional[float] = None) -> Tuple[List[str], Optional[List[str]]]:
    """Shrinks ``lines`` while mismatch kind ``target`` (or "crash")
    persists, each candidate in a fresh child, for at most ``budget_s``
    seconds (then the smallest so far). Returns the program (with the
    materializations it needs) and its mismatches (None: it crashes)."""
    from . import complete, minimize
    stop = None if budget_s is None else time.time() + budget_s

    def keep(cand: List[str]) -> bool:
        if stop is not None and time.time() > stop:
            return False
        return target in kinds_of(child_check(cand, auto_finish=True))
    small = minimize(list(lines), keep)
    if target != "crash":
        small = complete(small)
    return small, child_check(small)


def report(lines: Sequence[str], mismatches: Optional[Sequence[str]]) -> str:
    """The program in both spellings and what went wrong, for a failure
    message."""
    from . import render
    what = ["  (the interpreter crashed)"] if mismatches is None else [f"  {m}" for m in mismatches]
    return ("\n".join(what) + "\n\n--- lazy ---\n" + render(lines, "lazy")
            + "--- eager ---\n" + render(lines, "eager"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--run-lines", default="")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--count", type=int, default=None)
    ap.add_argument("--deadline", type=float, default=None)
    ap.add_argument("--max-ops", type=int, default=100)
    ap.add_argument("--disable", default=None)
    args = ap.parse_args()
    if args.run_lines:
        _run_lines_main(args.run_lines)
    elif args.child:
        _child_main(args)
    else:
        ap.error("--child or --run-lines")


if __name__ == "__main__":
    main()
