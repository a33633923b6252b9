"""torchdistX's deferred initialization (``torchdistx``) on lazyinit.

Change ``torchdistx`` to ``lazyinit.compat.torchdistx`` in the import line
and torchdistX code runs, with eager construction's values::

    from lazyinit.compat.torchdistx import deferred_init      # the module
    m = deferred_init.deferred_init(torch.nn.Linear, 10, 20)
    deferred_init.materialize_module(m)

    from lazyinit.compat.torchdistx.deferred_init import deferred_init, materialize_module
    from lazyinit.compat.torchdistx import fake               # fake.is_fake, fake.fake_mode

The functions are also here: :func:`deferred_init` (``deferred_init`` is
both the submodule and, called, the function), :func:`materialize_module`,
:func:`materialize_tensor`, :func:`is_deferred`. Importing this package
fills FSDP1's torchdistX slot where torchdistX is not installed
(:mod:`lazyinit.compat.torchdistx._fsdp_slot`): ``FSDP(deferred_init(Model),
device_id=...)`` materializes each unit itself, as with torchdistX.
"""
from __future__ import annotations

from . import _fsdp_slot, fake
from . import deferred_init
from .deferred_init import is_deferred, materialize_module, materialize_tensor

_fsdp_slot.install()

__all__ = ["deferred_init", "fake", "is_deferred", "materialize_module", "materialize_tensor"]
