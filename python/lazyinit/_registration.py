"""Registers the lazy backend with torch: dispatcher, device module, patches."""
from __future__ import annotations

import os

import torch

from . import _C
from . import _cuda
from . import _device_module
from . import _patches


def register() -> None:
    """Registers everything once; later calls do nothing.

    The C++ side registers on the Lazy dispatch key, which "lazy" parses to
    on every supported torch; ``torch.lazy`` is the device module.
    """
    _C._register()
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(before=_C._fork_prepare, after_in_parent=_C._fork_parent,
                            after_in_child=_C._fork_child)
    if not hasattr(torch, "lazy"):
        torch._register_device_module("lazy", _device_module)
    _patches.install()
    _cuda.watch_initialization()
