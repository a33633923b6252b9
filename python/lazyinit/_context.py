"""LazyInitContext: build models on the lazy device with unchanged code."""
from __future__ import annotations

import gc
import threading
from typing import Any, Callable, Dict, List, Optional, Set, Union

import torch

from . import _C, _cuda, _torch_compat
from ._materialize import materialize
from ._summary import print_summary

DeviceLike = Union[str, int, torch.device]

# Functions that create tensors and take a device argument (the list torch
# 2.x's `with torch.device(...)` uses), where present in this torch.
_FACTORY_NAMES = [
    "empty", "empty_strided", "empty_quantized", "zeros", "ones", "full",
    "rand", "randn", "randint", "randperm", "arange", "range", "linspace",
    "logspace", "eye", "tensor", "as_tensor", "asarray", "scalar_tensor",
    "tril_indices", "triu_indices", "bartlett_window", "blackman_window",
    "hamming_window", "hann_window", "kaiser_window", "sparse_coo_tensor",
    "empty_permuted", "vander", "normal", "from_file",
]

# Legacy typed constructors: torch.FloatTensor(2, 3), torch.LongTensor([1]).
_LEGACY_DTYPES: Dict[str, torch.dtype] = {
    "FloatTensor": torch.float32, "DoubleTensor": torch.float64,
    "HalfTensor": torch.float16, "BFloat16Tensor": torch.bfloat16,
    "ByteTensor": torch.uint8, "CharTensor": torch.int8,
    "ShortTensor": torch.int16, "IntTensor": torch.int32,
    "LongTensor": torch.int64, "BoolTensor": torch.bool,
}

_active = threading.local()


def _prime_function_tables() -> None:
    """Fills torch's lazily built, identity-keyed function tables while the
    originals are in place, so that none of them caches a stand-in (and
    imports the torch modules that build such tables at import)."""
    _torch_compat.import_dynamo_before_swaps()
    for path in ("torch.utils._device._device_constructors",
                 "torch.overrides.get_ignored_functions"):
        module_name, _, attr = path.rpartition(".")
        try:
            module = __import__(module_name, fromlist=[attr])
            getattr(module, attr)()
        except (ImportError, AttributeError):
            pass


def _lazy_factory(original: Callable[..., Any]) -> Callable[..., Any]:
    """``original`` with ``device="lazy"`` added where the calling thread has
    a context active and the call names no device.

    A function swap rather than a TorchFunctionMode: a mode sees every torch
    call made in the context (``tensor.size()``, ``uniform_``, ...) through
    Python, which costs about as much as recording itself; a swap costs the
    factories alone.
    """
    def factory(*args: Any, **kwargs: Any) -> Any:
        # torch.normal(mean_tensor, std_tensor) follows its inputs, and
        # torch.rand(..., out=t) writes t wherever it lives (real too).
        context = getattr(_active, "context", None)
        if context is not None and kwargs.get("out") is None \
                and not any(isinstance(a, torch.Tensor) for a in args):
            device = kwargs.get("device")
            if device is None:
                if not _inner_device_context(context):
                    kwargs["device"] = "lazy"
            elif context._defer_explicit_devices:
                return record_on(device, original, args, kwargs)
        return original(*args, **kwargs)

    factory.__name__ = getattr(original, "__name__", "factory")
    factory.__qualname__ = getattr(original, "__qualname__", factory.__name__)
    factory.__doc__ = getattr(original, "__doc__", None)
    factory.__wrapped__ = original  # type: ignore[attr-defined]
    return factory


def _device_contexts() -> List[Any]:
    """The ``with torch.device(...)`` modes active in this thread (torch 2.x
    keeps them on the torch-function mode stack; none on torch 1.13)."""
    length = getattr(torch._C, "_len_torch_function_stack", None)
    at = getattr(torch._C, "_get_function_stack_at", None)
    if length is None or at is None or length() == 0:
        return []
    try:
        from torch.utils._device import DeviceContext
    except ImportError:
        return []
    return [m for m in (at(i) for i in range(length())) if isinstance(m, DeviceContext)]


def _inner_device_context(context: "LazyInitContext") -> bool:
    """Whether a ``with torch.device(...)`` entered inside ``context`` is
    active: the innermost device context decides, as torch's own nested
    device contexts do (transformers' ``from_pretrained`` builds its model
    under ``torch.device("meta")`` and then loads the checkpoint onto the
    context's device; eagerly, that build draws no random numbers)."""
    length = getattr(torch._C, "_len_torch_function_stack", None)
    if length is None or length() == 0:
        return False
    return any(id(m) not in context._outer_device_contexts for m in _device_contexts())


def record_on(device: DeviceLike, fn: Callable[..., Any], args: tuple,
              kwargs: Dict[str, Any]) -> Any:
    """``fn(*args, **kwargs)`` (a factory) recorded on the lazy device, with
    its tensors homed on ``device``: materialized there by default, and
    values needed early computed there. A ``device`` that is the lazy or the
    meta device is left as it is."""
    target = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if target.type in (_C._lazy_device_type(), "meta"):
        return fn(*args, **kwargs)
    if target.type == "cuda":
        _cuda.ensure_initialized()
    saved = _C._default_device()
    _C._set_default_device(str(target))
    try:
        return fn(*args, **{**kwargs, "device": "lazy"})
    finally:
        _C._set_default_device(saved)


def _legacy_size_args(args: tuple) -> bool:
    return all(isinstance(a, int) for a in args) or (
        len(args) == 1 and isinstance(args[0], torch.Size))


def _legacy_new(dtype: Optional[torch.dtype]) -> Callable[..., torch.Tensor]:
    def new(*args: Any, **kwargs: Any) -> torch.Tensor:
        device = kwargs.pop("device", None) or "lazy"
        kw: Dict[str, Any] = {"device": device}
        if dtype is not None:
            kw["dtype"] = dtype
        if not args:
            return torch.empty(0, **kw)
        if len(args) == 1 and isinstance(args[0], torch.Tensor):
            return args[0] if dtype is None else args[0].to(dtype)
        if _legacy_size_args(args):
            return torch.empty(*args, **kw)
        if len(args) == 1:
            return torch.tensor(args[0], **kw)
        raise TypeError(f"lazyinit: unsupported legacy constructor arguments {args!r}")
    return new


class _LegacyMeta(type):
    """Stands in for torch.FloatTensor & co.: calls build lazy tensors,
    isinstance() still answers as the original type would."""

    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, cls._original)  # type: ignore[attr-defined]

    def __call__(cls, *args: Any, **kwargs: Any) -> torch.Tensor:
        if getattr(_active, "context", None) is None:  # another thread's context
            return cls._original(*args, **kwargs)  # type: ignore[attr-defined]
        return cls._new(*args, **kwargs)  # type: ignore[attr-defined]


class _WhileInUse:
    """Process-wide state changed while at least one user holds it:
    ``_install`` on the first ``acquire``, ``_uninstall`` on the last
    ``release``, under a lock (threads enter and exit contexts freely)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0

    def acquire(self) -> None:
        with self._lock:
            if self._users == 0:
                self._install()  # counted only once it succeeded
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                self._uninstall()

    def _install(self) -> None:
        raise NotImplementedError

    def _uninstall(self) -> None:
        raise NotImplementedError


class _Swaps(_WhileInUse):
    """Swaps torch's factories and legacy constructors for stand-ins while
    any thread has a context active.

    The swap is process-wide (they are module attributes), so the stand-ins
    check the calling thread's context and behave as the originals elsewhere.
    """

    def __init__(self) -> None:
        super().__init__()
        self._saved: Dict[str, Any] = {}
        # Stand-ins made by earlier swaps, by name: (original, stand-in).
        # Making them anew (a class each for the legacy types) would cost
        # most of a context's entry.
        self._made: Dict[str, Any] = {}

    def _stand_in(self, name: str, make: Callable[[Any], Any]) -> Any:
        original = self._saved[name]
        made = self._made.get(name)
        if made is None or made[0] is not original:
            made = self._made[name] = (original, make(original))
        return made[1]

    def _install(self) -> None:
        _prime_function_tables()
        factories = [name for name in _FACTORY_NAMES if hasattr(torch, name)]
        self._saved = {name: getattr(torch, name) for name in factories + list(_LEGACY_DTYPES)}
        for name in factories:
            setattr(torch, name, self._stand_in(name, _lazy_factory))
        for name, dtype in _LEGACY_DTYPES.items():
            setattr(torch, name, self._stand_in(name, lambda original, name=name, dtype=dtype:
                _LegacyMeta(name, (), {"_original": original,
                                       "_new": staticmethod(_legacy_new(dtype))})))
        # torch.Tensor(...) itself: its type must stay intact, so only the
        # constructor is swapped, and only for torch.Tensor proper.
        self._saved["__new__"] = torch.Tensor.__dict__.get("__new__")
        torch.Tensor.__new__ = self._stand_in(  # type: ignore[assignment]
            "__new__", lambda _: _tensor_new())

    def _uninstall(self) -> None:
        original_new = self._saved.pop("__new__", None)
        if original_new is None:
            if "__new__" in torch.Tensor.__dict__:
                del torch.Tensor.__new__
        else:
            torch.Tensor.__new__ = original_new  # type: ignore[assignment]
        for name, value in self._saved.items():
            setattr(torch, name, value)
        self._saved = {}


def _tensor_new() -> Callable[..., torch.Tensor]:
    base = getattr(torch._C, "TensorBase", None) or torch._C._TensorBase
    base_new = base.__new__
    untyped = _legacy_new(None)

    def tensor_new(cls: type, *args: Any, **kwargs: Any) -> torch.Tensor:
        if cls is torch.Tensor and getattr(_active, "context", None) is not None:
            return untyped(*args, **kwargs)
        return base_new(cls, *args, **kwargs)

    return tensor_new


_swaps = _Swaps()


class _GcPause(_WhileInUse):
    """Pauses Python's cyclic garbage collector while any thread has a
    context that asked for it, and resumes it (if it was on) when the last
    one exits. Building a model creates many long-lived objects and little
    cyclic garbage; the allocations trigger full collections, each walking
    the whole heap (torch's included, tens of milliseconds on torch 2.x),
    which would otherwise land inside the build."""

    def __init__(self) -> None:
        super().__init__()
        self._was_enabled = False

    def _install(self) -> None:
        self._was_enabled = gc.isenabled()
        gc.disable()

    def _uninstall(self) -> None:
        if self._was_enabled:
            gc.enable()


_gc_pause = _GcPause()


class LazyInitContext:
    """Context in which tensors are created on the lazy device.

    Inside it, factories called without ``device=`` (``torch.empty``,
    ``torch.randn``, ``nn.Linear(...)``, the legacy ``torch.Tensor(3, 4)`` and
    ``torch.FloatTensor`` constructors, ...) record instead of allocating.
    A drop-in for ColossalAI's ``colossalai.lazy.LazyInitContext``. A
    ``with torch.device(...)`` entered inside the context takes precedence
    for the factories, as the innermost of torch's nested device contexts
    does (so ``from_pretrained`` of transformers builds its model on
    ``meta`` as it does eagerly, and loads onto the lazy device).

    ColossalAI's signature, ``LazyInitContext(tensor_cls, default_device)``,
    is :class:`lazyinit.compat.colossalai.LazyInitContext`; this one keeps
    ``default_device`` first (``LazyInitContext("cuda")``).

    Args:
        default_device: where tensors created in this context are
            materialized by default, and where values needed early
            (``item()``, ``nonzero()`` ...) are computed. ``None`` means CPU.
        pause_gc: pause Python's cyclic garbage collector inside the
            context (resumed on exit if it was on). A model build makes
            many long-lived objects, and each full collection they trigger
            walks the whole heap (torch's included), which costs tens of
            milliseconds on torch 2.x.
    """

    #: Whether factories called with a real ``device=`` record too (homed on
    #: that device), as torchdistx's ``deferred_init`` does; see
    #: :mod:`lazyinit.compat.torchdistx`.
    _defer_explicit_devices = False

    def __init__(self, default_device: Optional[DeviceLike] = None,
                 pause_gc: bool = True) -> None:
        if isinstance(default_device, int):
            default_device = torch.device("cuda", default_device)
        self.default_device = torch.device(default_device or "cpu")
        if self.default_device.type == _C._lazy_device_type() or self.default_device.type == "meta":
            raise ValueError(
                "lazyinit: default_device is where lazy tensors get their values; "
                f"use a device that holds data such as 'cpu' or 'cuda', not {self.default_device}")
        self._saved_device = "cpu"
        self.pause_gc = pause_gc
        self._paused = False
        # `with torch.device(...)` modes active at entry (by id): one
        # entered later, inside this context, takes precedence.
        self._outer_device_contexts: Set[int] = set()

    def __enter__(self) -> "LazyInitContext":
        if getattr(_active, "context", None) is not None:
            raise RuntimeError(
                "lazyinit: a LazyInitContext is already active in this thread; "
                "contexts cannot be nested or re-entered. Exit the outer one first.")
        if self.default_device.type == "cuda":
            _cuda.ensure_initialized()
        saved_device = _C._default_device()
        _C._set_default_device(str(self.default_device))
        try:
            _swaps.acquire()
        except BaseException:
            _C._set_default_device(saved_device)
            raise
        # Nothing below raises: the context is now fully entered.
        self._outer_device_contexts = {id(m) for m in _device_contexts()}
        self._saved_device = saved_device
        _C._set_in_context(True)
        if self.pause_gc:
            _gc_pause.acquire()
            self._paused = True
        _active.context = self
        return self

    def __exit__(self, *exc: Any) -> None:
        if getattr(_active, "context", None) is not self:
            raise RuntimeError(
                "lazyinit: LazyInitContext.__exit__ without a matching __enter__ in this "
                "thread (a context is exited by the thread that entered it, once). Nothing "
                "was changed; use `with lazyinit.LazyInitContext(): ...`.")
        _swaps.release()
        if self._paused:
            self._paused = False
            _gc_pause.release()
        _C._set_default_device(self._saved_device)
        _C._set_in_context(False)
        _active.context = None

    @staticmethod
    def materialize(module: torch.nn.Module, verbose: bool = False) -> torch.nn.Module:
        """Materializes ``module`` in place on each tensor's default device
        (ColossalAI's signature) and returns it. ``verbose=True`` prints
        ColossalAI's lazy-rate summary (on rank 0 where torch.distributed is
        initialized; counted before materializing) and shows a progress
        bar."""
        if verbose:
            print_summary(module)
        return materialize(module, progress=verbose)
