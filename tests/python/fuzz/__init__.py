"""Differential fuzzing of lazyinit: random init programs run eagerly on
the CPU and lazily from the same seed, compared bit for bit (docs/fuzzing.md).

Modules:

* ``choosers``: where choices come from (seeded random, hypothesis);
* ``runtime``: the two interpreters and the helpers programs call;
* ``compare``: the bitwise comparison of two runs, ``check_program``;
* ``model`` and ``gen_*``: the generator's core and its op families
  (factories, views, writes, compute and linalg, generators, sources and
  ties, lifetimes, invalid ops), put together in ``generator``;
* ``shrink``: rendering as standalone scripts, the minimizer;
* ``campaign``: many seeds in child processes, within a count or a time
  budget; shrinking a failing seed.
"""
from __future__ import annotations

from .choosers import HypothesisChooser, RandomChooser
from .compare import InvalidProgram, check_program, compare_runs, tensors_bitwise_equal
from .generator import DEFAULT_DISABLED, DEFAULT_MAX_OPS, Generator, Program, feature_list, generate_program, programs
from .model import FEATURES, KNOWN_OPEN
from .runtime import Raised, make_namespace, run_program
from .shrink import complete, minimize, mismatch_kind, render

__all__ = [
    "DEFAULT_DISABLED", "DEFAULT_MAX_OPS", "FEATURES", "KNOWN_OPEN", "Generator", "HypothesisChooser",
    "InvalidProgram", "Program", "RandomChooser", "Raised", "check_program", "compare_runs",
    "complete", "feature_list", "generate_program", "make_namespace", "minimize",
    "mismatch_kind", "programs", "render", "run_program", "tensors_bitwise_equal",
]
