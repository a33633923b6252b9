"""The ``torch.lazy`` device module torch expects for a registered device.

The lazy device holds no memory and runs no kernels; it has one device and
no streams. Random state lives with the device values get replayed on, so
the RNG functions here delegate to the CPU generator.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, List

import torch


def is_available() -> bool:
    """The lazy device is always available once lazyinit is imported."""
    return True


def device_count() -> int:
    """One lazy device."""
    return 1


def current_device() -> int:
    """Index of the (only) lazy device."""
    return 0


def set_device(device: Any) -> None:
    """No-op: there is one lazy device."""


def is_initialized() -> bool:
    return True


def init() -> None:
    """No-op: nothing to initialize."""


def _lazy_init() -> None:
    """No-op: nothing to initialize."""


def _is_in_bad_fork() -> bool:
    return False


def synchronize(device: Any = None) -> None:
    """No-op: the lazy device runs nothing asynchronously."""


def manual_seed(seed: int) -> None:
    """No-op: lazy random ops use the generator of the device they replay on."""


def manual_seed_all(seed: int) -> None:
    """No-op, see :func:`manual_seed`."""


def seed() -> None:
    """No-op, see :func:`manual_seed`."""


def seed_all() -> None:
    """No-op, see :func:`manual_seed`."""


def initial_seed() -> int:
    return torch.initial_seed()


def get_rng_state(device: Any = None) -> torch.Tensor:
    """The CPU generator's state (lazy draws are replayed from it)."""
    return torch.get_rng_state()


def set_rng_state(state: torch.Tensor, device: Any = None) -> None:
    """Sets the CPU generator's state."""
    torch.set_rng_state(state)


def get_rng_state_all() -> List[torch.Tensor]:
    return [get_rng_state()]


def set_rng_state_all(states: List[torch.Tensor]) -> None:
    set_rng_state(states[0])


def get_amp_supported_dtype() -> List[torch.dtype]:
    return [torch.float16, torch.bfloat16]


@contextlib.contextmanager
def device(index: Any) -> Iterator[None]:
    """Context manager selecting a lazy device (there is only one)."""
    yield
