"""Registers the lazy backend with torch: dispatcher, device module, patches."""
from __future__ import annotations

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
    if not hasattr(torch, "lazy"):
        torch._register_device_module("lazy", _device_module)
    _patches.install()
    _cuda.watch_initialization()
