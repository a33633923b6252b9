"""Registers the lazy backend with torch: dispatcher, device module, patches."""
from __future__ import annotations

import torch

from . import _C
from . import _cuda
from . import _device_module
from . import _patches


def register() -> None:
    """Registers everything once; later calls do nothing.

    On torch >= 2.9 the C++ side names PrivateUse1 "lazy" first, so that
    torch.device("lazy") parses to it; older torch parses "lazy" to the Lazy key.
    """
    _C._register()
    if not hasattr(torch, "lazy"):
        torch._register_device_module("lazy", _device_module)
    if _C._lazy_device_type() == "privateuseone":
        gen = getattr(torch.utils, "generate_methods_for_privateuse1_backend", None)
        if gen is not None and not hasattr(torch.Tensor, "is_lazy"):
            gen(for_tensor=True, for_module=False, for_storage=False)
    _patches.install()
    _cuda.watch_initialization()
