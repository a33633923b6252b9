"""torchdistX's Fake Tensor API (``torchdistx.fake``) on lazyinit.

A torchdistX fake tensor is one that has no storage yet; lazyinit's lazy
tensors are that, with their ops recorded. ``fake_mode()`` builds every
tensor lazily (explicitly placed ones too), ``is_fake`` tells a lazy tensor,
``meta_like`` gives a meta tensor of its shape. Unlike torchdistX's fake
tensors, lazy tensors report device ``lazy`` and can be materialized
(:func:`lazyinit.compat.torchdistx.materialize_tensor`).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from ... import _C
from .deferred_init import _DeferredInitContext

_LAZY = 1


@contextlib.contextmanager
def fake_mode() -> Iterator[None]:
    """Instantiates all tensors within its context as fake (lazy): factories
    record instead of allocating, also with an explicit ``device=``, which
    becomes the tensor's materialization device."""
    with _DeferredInitContext():
        yield


def is_fake(tensor: torch.Tensor) -> bool:
    """Indicates whether ``tensor`` is fake: lazy, awaiting materialization."""
    return isinstance(tensor, torch.Tensor) and _C._tensor_state(tensor) == _LAZY


def meta_like(fake: torch.Tensor) -> torch.Tensor:
    """Returns a meta tensor with the same shape, strides and dtype as the
    fake (lazy) tensor ``fake``, outside any autograd graph (as
    ``detach()``)."""
    if not is_fake(fake):
        raise ValueError("`fake` was expected to be a fake tensor.")
    with torch.no_grad():
        return torch.empty_strided(tuple(fake.shape), tuple(fake.stride()), dtype=fake.dtype,
                                   device="meta")


__all__ = ["fake_mode", "is_fake", "meta_like"]
