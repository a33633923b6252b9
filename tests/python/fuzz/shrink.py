"""Showing and shrinking programs: standalone scripts of either run, the
greedy line-deleting minimizer, and a coarse signature of a mismatch."""
from __future__ import annotations

import re
from typing import Callable, List, Sequence

import lazyinit

from .compare import InvalidProgram
from .runtime import NAME_IN_LINE, run_program

_PRELUDE_HOLDER = [
    "", "class Holder(nn.Module):",
    "    def __init__(self, **ts):",
    "        super().__init__()",
    "        for k, t in ts.items():",
    "            if isinstance(t, nn.Parameter): self.register_parameter(k, t)",
    "            else: self.register_buffer(k, t)"]
_PRELUDE_RAISES = [
    "", "def raises(fn, grad=False):",
    "    try:",
    "        with torch.enable_grad() if grad else torch.no_grad(): fn()",
    "    except Exception as e: return type(e).__name__",
    "    return 'no error'"]


def _render_line(line: str, mode: str, in_ctx: bool) -> List[str]:
    if line.startswith("enter_ctx("):
        arg = line[len("enter_ctx("):-1]
        return [f"ctx = lazyinit.LazyInitContext({arg}); ctx.__enter__()"] if mode == "lazy" else []
    if line == "exit_ctx()":
        return ["ctx.__exit__(None, None, None)"] if mode == "lazy" else []
    m = re.match(r"^mat\((\w+)(?:, (None))?\)$", line)
    if m:
        dev = "" if m.group(2) else ', "cpu"'
        return [f"lazyinit.materialize({m.group(1)}{dev})"] if mode == "lazy" else []
    if mode == "eager" and line.startswith("lazyinit."):
        rest = line.split("; ", 1)
        return [rest[1]] if len(rest) == 2 else []
    dev = ', device="lazy"' if (mode == "lazy" and not in_ctx) else ""
    return [line.replace(", **DEV", dev).replace("(**DEV)", f"({dev[2:]})")]


def render(lines: Sequence[str], mode: str) -> str:
    """A standalone script of the program in one mode (for reports)."""
    out = ["import copy, math", "import numpy as np", "import torch", "import torch.nn as nn"]
    if mode == "lazy":
        out.append("import lazyinit")
    body = "\n".join(lines)
    if "Holder(" in body:
        out += _PRELUDE_HOLDER
    if "raises(" in body:
        out += _PRELUDE_RAISES
    out.append("")
    in_ctx = False
    for line in lines:
        out += _render_line(line, mode, in_ctx)
        if line.startswith("enter_ctx("):
            in_ctx = True
        elif line == "exit_ctx()":
            in_ctx = False
    return "\n".join(out) + "\n"


_DEFINES = re.compile(r"(?:^|; )(\w+) = ")


def without(lines: List[str], drop: set) -> List[str]:
    """``lines`` without the indices in ``drop`` and, transitively, the later
    lines that use a name those lines defined."""
    gone: set = set()
    out = []
    for i, line in enumerate(lines):
        uses = set(NAME_IN_LINE.findall(line))
        if i in drop or (uses & gone):
            gone |= set(_DEFINES.findall(line))
            continue
        out.append(line)
    return out


def complete(lines: Sequence[str]) -> List[str]:
    """``lines`` plus the materializations auto_finish would run."""
    eager = run_program(lines, "eager")
    del eager
    lazy = run_program(lines, "lazy", auto_finish=True)
    extra = list(lazy.auto_lines)
    del lazy
    lazyinit._C._finish()
    return list(lines) + extra


def minimize(lines: Sequence[str], keep: Callable[[List[str]], bool]) -> List[str]:
    """Greedy deletion (chunks first, then single lines; a deleted line takes
    the lines using the names it defined with it): the smallest program for
    which ``keep`` still holds. The first line (the seed) is kept. ``keep``
    should run programs with auto_finish=True; append ``complete``'s
    materializations to the result."""
    cur = list(lines)
    chunk = max(1, len(cur) // 2)
    while True:
        i = 1
        changed = False
        while i < len(cur):
            cand = without(cur, set(range(i, min(len(cur), i + chunk))))
            if cand != cur and _keeps(cand, keep):
                cur = cand
                changed = True
            else:
                i += chunk
        if changed:
            continue
        if chunk == 1:
            break
        chunk //= 2
    return cur


def _keeps(cand: List[str], keep: Callable[[List[str]], bool]) -> bool:
    try:
        return keep(cand)
    except InvalidProgram:
        return False


def mismatch_kind(m: str) -> str:
    """A coarse signature of a mismatch message (to group and to minimize)."""
    m = re.sub(r"^[vrcsgn]\d+(, [vrcsgn]\d+)?: ", "", m)
    m = re.sub(r"line \d+", "line N", m)
    if not m.startswith("lazy run raised"):
        m = re.sub(r":? ?lazy (\[|[-\w.]+ !=|Raised|\{|\(|array).*", "", m, flags=re.S)
    m = re.sub(r"\d+(\.\d+)?", "#", m)
    return m.strip()[:100]
