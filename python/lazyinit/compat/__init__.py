"""The peers' APIs on lazyinit: code written for them runs with its import
line changed.

- :mod:`lazyinit.compat.colossalai`: ColossalAI's ``LazyInitContext``
  (``tensor_cls``, ``default_device``; ``materialize``, ``distribute``) and
  ``LazyTensor`` (``isinstance`` checks, ``t.materialize()``). Replace
  ``from colossalai.lazy import LazyInitContext`` by
  ``from lazyinit.compat.colossalai import LazyInitContext``.
- :mod:`lazyinit.compat.torchdistx`: torchdistX's ``deferred_init``,
  ``materialize_module``, ``materialize_tensor`` and ``fake.is_fake``, and
  FSDP1's torchdistX slot. Replace ``torchdistx`` by
  ``lazyinit.compat.torchdistx`` in the import.

Neither is imported by ``import lazyinit``: importing
:mod:`lazyinit.compat.colossalai` adds ``materialize()`` to lazy tensors,
and importing :mod:`lazyinit.compat.torchdistx` fills FSDP1's torchdistX
slot. The user guide's "Migrating" section lists the differences.
"""
