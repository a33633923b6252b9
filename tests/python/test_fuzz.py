"""Differential fuzzing: random init programs (tests/python/fuzz_programs.py)
run eagerly on the CPU and lazily from the same seed must agree bit for bit
-- every tensor's values and metadata, aliasing, Python values returned by
value-needing ops, RNG states read on the way, and torch.get_rng_state() once
everything is materialized (in a hypothesis-chosen order).

Hypothesis runs in a child process, so that a crash of the interpreter
(lazyinit is C++) fails this test with the program that crashed instead of
taking pytest down. ``LAZYINIT_FUZZ_INPROCESS=1`` runs it in the pytest
process (shrinking output is then shown directly);
``LAZYINIT_FUZZ_EXAMPLES=N`` changes the number of programs (300).

A failure prints the shrunk program in both spellings; make it a test in
test_fuzz_regressions.py. benchmarks/fuzz_run.py runs >= 10,000 programs and
minimizes by seed; docs/fuzzing.md describes both.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
_PY = os.path.normpath(os.path.join(_HERE, "..", "..", "python"))
if _PY not in sys.path:
    sys.path.insert(0, _PY)

import fuzz_programs as fp  # noqa: E402

MAX_EXAMPLES = int(os.environ.get("LAZYINIT_FUZZ_EXAMPLES", "300"))
_CURRENT = os.environ.get("LAZYINIT_FUZZ_CURRENT")  # child: where the program under test goes


@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          print_blob=False,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.filter_too_much, HealthCheck.large_base_example])
@given(fp.programs())
def check_random_programs(prog: fp.Program) -> None:
    if _CURRENT:
        with open(_CURRENT, "w") as f:
            f.write(repr(prog) + "\n\n" + fp.render(prog.lines, "lazy"))
    mismatches = fp.check_program(prog.lines)
    assert not mismatches, (
        "lazy construction differs from eager:\n  " + "\n  ".join(mismatches)
        + "\n\n--- lazy ---\n" + fp.render(prog.lines, "lazy")
        + "--- eager ---\n" + fp.render(prog.lines, "eager"))


def test_random_programs_lazy_equals_eager(tmp_path):
    if os.environ.get("LAZYINIT_FUZZ_INPROCESS"):
        check_random_programs()
        return
    current = tmp_path / "current_program.txt"
    env = dict(os.environ, LAZYINIT_FUZZ_CURRENT=str(current),
               PYTHONPATH=os.pathsep.join([_PY, os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env,
                       capture_output=True, text=True, timeout=1800)
    if r.returncode < 0:
        program = current.read_text() if current.exists() else "(none recorded)"
        pytest.fail(f"the interpreter crashed (signal {-r.returncode}) while checking:\n"
                    f"{program}\n{r.stderr[-3000:]}", pytrace=False)
    if r.returncode != 0:
        pytest.fail((r.stdout[-12000:] + "\n" + r.stderr[-12000:]).strip(), pytrace=False)


if __name__ == "__main__":
    check_random_programs()
