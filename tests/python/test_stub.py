"""python/lazyinit/_C.pyi types the C++ extension: every name the extension
exports has a signature there with the binding's parameter names, and the
stub names nothing the extension lacks."""
from __future__ import annotations

import ast
import os
import re

from lazyinit import _C

_STUB = os.path.join(os.path.dirname(_C.__file__), "_C.pyi")


def _stub_functions():
    with open(_STUB) as f:
        tree = ast.parse(f.read())
    return {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}


def test_stub_names_what_the_extension_exports() -> None:
    exported = {n for n in dir(_C) if not n.startswith("__")}
    assert set(_stub_functions()) == exported


def test_stub_parameters_are_the_bindings() -> None:
    for name, node in _stub_functions().items():
        doc = getattr(_C, name).__doc__.split("\n")[0]
        bound = re.findall(r"(\w+): ", doc.split("(", 1)[1].rsplit(") ->", 1)[0])
        args = node.args
        stub = [a.arg for a in args.posonlyargs + args.args]
        assert stub == bound, name
