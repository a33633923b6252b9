#!/usr/bin/env python3
"""Prints the dependency graph between lazyinit's C++ subsystems, read from
``#include <lazyinit/...>`` lines.

A subsystem is a folder under ``src/`` and ``include/lazyinit/`` (``core``,
``record``, ``replay``, ``rng``, ``shard``) or ``registration/``. An edge
A -> B means some file of A includes a header of B. ``--check`` exits 1 if
an edge not in ``ALLOWED`` appears (docs/architecture.md, "Layout").

    python3 tests/lint/subsystem_deps.py            # edges, with the files behind each
    python3 tests/lint/subsystem_deps.py --check
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from collections import defaultdict
from typing import Dict, Set, Tuple

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
INCLUDE = re.compile(r'#include\s*[<"]lazyinit/([a-z0-9_]+)/')
FLAT = re.compile(r'#include\s*[<"]lazyinit/([a-z0-9_]+)\.h')

# The edges the layout has today (docs/architecture.md, "Layout"). Any new
# edge fails --check; removing one here is how a cycle is declared fixed.
ALLOWED: Set[Tuple[str, str]] = {
    ("record", "core"), ("replay", "core"), ("rng", "core"), ("shard", "core"),
    ("replay", "record"), ("rng", "record"), ("shard", "record"),
    ("rng", "replay"), ("shard", "replay"), ("shard", "rng"),
    ("registration", "core"), ("registration", "record"), ("registration", "replay"),
    ("registration", "rng"), ("registration", "shard"),
    # Upward edges still to be removed:
    ("core", "rng"), ("core", "replay"), ("record", "replay"), ("record", "rng"),
    ("replay", "rng"), ("replay", "shard"), ("rng", "shard"),
}


def subsystem(path: str) -> str:
    parts = path.split(os.sep)
    if parts[0] == "registration":
        return "registration"
    if parts[0] in ("src", "include") and len(parts) > 2:
        return parts[2] if parts[0] == "include" else parts[1]
    return ""


def edges() -> Dict[Tuple[str, str], Set[str]]:
    found: Dict[Tuple[str, str], Set[str]] = defaultdict(set)
    for top in ("src", "include", "registration"):
        for dirpath, _, names in os.walk(os.path.join(ROOT, top)):
            for name in names:
                if not name.endswith((".cpp", ".h", ".cu")):
                    continue
                path = os.path.relpath(os.path.join(dirpath, name), ROOT)
                source = subsystem(path)
                if not source:
                    continue
                with open(os.path.join(ROOT, path)) as f:
                    text = f.read()
                for target in INCLUDE.findall(text):
                    if target != source:
                        found[(source, target)].add(path)
                for header in FLAT.findall(text):
                    if header != "registration":
                        found[(source, "(flat) " + header)].add(path)
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    found = edges()
    bad = []
    for (a, b), files in sorted(found.items()):
        mark = "" if (a, b) in ALLOWED or b.startswith("(flat) registration") else "  NEW"
        print(f"{a} -> {b}{mark}: {', '.join(sorted(files))}")
        if mark:
            bad.append((a, b))
    if args.check and bad:
        sys.exit(f"subsystem_deps: edges not in the layout: {bad}")


if __name__ == "__main__":
    main()
