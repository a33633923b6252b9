"""transformers' own ``from_pretrained`` onto the lazy device, reading nothing.

transformers 5 builds the model under ``torch.device("meta")`` and then
loads the checkpoint onto the device its ``device_map`` names; with no
``device_map`` it takes the device of the active device context
(``torch.tensor([]).device``), which is ``lazy`` under
``lazyinit.LazyInitContext()`` and ``with torch.device("lazy")``. Each
checkpoint tensor then reaches the model as
``tensor.to(device="lazy", dtype=...)``: a lazy tensor recording a copy of
the checkpoint's tensor. What that tensor is decides the cost: safetensors'
own mapping or ``torch.load``'s result, which lazyinit must copy at record
time (nothing stops anyone from writing them), i.e. read the whole file.

So while ``PreTrainedModel._load_pretrained_model`` loads onto the lazy
device, the two functions it opens checkpoint files with
(``safe_open`` and ``load_state_dict``, names in
``transformers.modeling_utils``) open them through lazyinit instead:
safetensors files are mapped by lazyinit's own reader
(:mod:`lazyinit._safetensors`, the same file format, nothing of
transformers), and ``torch.load``'s mapped tensors are registered as
read-only sources. transformers' code runs unchanged: key renaming,
dtype casts, ties, missing-key init are its own. Loads onto other devices
are untouched. The patch is installed when ``transformers.modeling_utils``
is first imported (or at ``import lazyinit`` if it already is).
"""
from __future__ import annotations

import functools
import inspect
import sys
import threading
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch

from ._safetensors import SafetensorsFile, safetensors_name

_MODULE = "transformers.modeling_utils"
_state = threading.local()


def _loading_lazily() -> bool:
    return getattr(_state, "depth", 0) > 0


def _names_lazy(device: Any) -> bool:
    if device in ("disk", None) or isinstance(device, int):
        return False
    try:
        return torch.device(device).type == "lazy"
    except (RuntimeError, TypeError, ValueError):
        return False


def targets_lazy(load_config: Any) -> bool:
    """Whether a transformers load (its ``LoadStateDictConfig``) puts any
    tensor on the lazy device."""
    device_map = getattr(load_config, "device_map", None)
    return isinstance(device_map, dict) and any(_names_lazy(d) for d in device_map.values())


class _Slice:
    """What ``safe_open(...).get_slice(name)`` gives: dtype and shape from
    the header; indexing gives a view of the mapping (nothing read)."""

    def __init__(self, file: SafetensorsFile, name: str) -> None:
        self._file = file
        self._name = name

    def get_dtype(self) -> str:
        return self._file.info(self._name).dtype_name

    def get_shape(self) -> List[int]:
        return list(self._file.info(self._name).shape)

    def __getitem__(self, index: Any) -> torch.Tensor:
        return self._file.tensor(self._name)[index]


class SafeOpen:
    """A ``safetensors.safe_open(path, framework="pt")`` over lazyinit's
    reader: ``keys``, ``metadata``, ``get_slice``, ``get_tensor``, and use
    as a context manager. Tensors are views of the file's mapping."""

    def __init__(self, path: Any, framework: str = "pt", device: Any = "cpu",
                 backend: Any = None) -> None:
        # ``backend`` (newer transformers pass it) picks how safetensors
        # reads the bytes, not which values: lazyinit maps the file itself.
        if framework not in ("pt", "torch"):
            raise ValueError(f"lazyinit: safe_open over the lazy device reads framework='pt', "
                             f"not {framework!r}")
        self._file = SafetensorsFile(path)
        self._device = device

    def __enter__(self) -> "SafeOpen":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def keys(self) -> List[str]:
        return sorted(self._file.keys())

    def offset_keys(self) -> List[str]:
        return sorted(self._file.keys(), key=lambda k: self._file.info(k).begin)

    def metadata(self) -> Optional[Dict[str, str]]:
        return dict(self._file.metadata) or None

    def get_slice(self, name: str) -> _Slice:
        self._file.info(name)  # KeyError naming the file
        return _Slice(self._file, name)

    def get_tensor(self, name: str) -> torch.Tensor:
        t = self._file.tensor(name)
        return t if str(self._device) == "cpu" else t.to(self._device)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())


def _dispatching(original: Callable[..., Any], lazy: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def call(*args: Any, **kwargs: Any) -> Any:
        return (lazy if _loading_lazily() else original)(*args, **kwargs)

    call.__lazyinit_original__ = original  # type: ignore[attr-defined]
    return call


def _patch(module: Any) -> None:
    """Installs the lazy readers into ``transformers.modeling_utils``; warns
    (never raises: transformers' import must not break) where this
    transformers lacks the seam."""
    try:
        _install_readers(module)
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"lazyinit: could not patch {_MODULE} ({type(e).__name__}: {e}); "
                      "from_pretrained onto the lazy device still works, but reads and "
                      "copies every checkpoint tensor when it loads", stacklevel=2)


def _install_readers(module: Any) -> None:
    pretrained = getattr(module, "PreTrainedModel", None)
    load = pretrained.__dict__.get("_load_pretrained_model") if pretrained else None
    missing = [name for name, ok in (("PreTrainedModel._load_pretrained_model", load),
                                     ("safe_open", getattr(module, "safe_open", None)),
                                     ("load_state_dict", getattr(module, "load_state_dict", None)))
               if ok is None]
    if missing:
        raise AttributeError(f"this transformers has no {', '.join(missing)}")
    if getattr(load, "__lazyinit_original__", None) is not None:
        return
    original_load = load.__func__ if isinstance(load, staticmethod) else load

    signature = inspect.signature(original_load)
    if "load_config" not in signature.parameters:
        raise AttributeError("PreTrainedModel._load_pretrained_model takes no load_config")

    @functools.wraps(original_load)
    def _load_pretrained_model(*args: Any, **kwargs: Any) -> Any:
        # Bound by name: the position of load_config may move between
        # transformers releases.
        try:
            load_config = signature.bind(*args, **kwargs).arguments.get("load_config")
        except TypeError:
            load_config = None
        if not targets_lazy(load_config):
            return original_load(*args, **kwargs)
        _state.depth = getattr(_state, "depth", 0) + 1
        try:
            return original_load(*args, **kwargs)
        finally:
            _state.depth -= 1

    _load_pretrained_model.__lazyinit_original__ = load  # type: ignore[attr-defined]
    module.safe_open = _dispatching(module.safe_open, SafeOpen)
    original_state_dict = module.load_state_dict
    from ._checkpoint import register_loaded

    def lazy_load_state_dict(checkpoint_file: Any, *args: Any, **kwargs: Any) -> Any:
        # transformers' own reader (torch.load with mmap and weights_only, or
        # safe_open above): its tensors belong to this load alone.
        state = original_state_dict(checkpoint_file, *args, **kwargs)
        if isinstance(state, dict):
            register_loaded(state)
        return state

    module.load_state_dict = _dispatching(original_state_dict, lazy_load_state_dict)
    pretrained._load_pretrained_model = staticmethod(_load_pretrained_model)


def install() -> None:
    """Patches transformers now if it is imported, else when it is."""
    if _MODULE in sys.modules:
        _patch(sys.modules[_MODULE])
        return
    from .distributed._guards import after_import
    after_import(_MODULE, _patch)


__all__ = ["SafeOpen", "install", "safetensors_name", "targets_lazy"]
