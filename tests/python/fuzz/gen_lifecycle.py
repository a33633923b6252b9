"""Lifetimes: materializing a tensor or module mid-program, ``del`` of
names (one, or every name of a storage or of a module: the tensors die
unmaterialized), ``lazyinit.discard`` of pending tensors and modules,
``reset_parameters`` and ``to_empty``, entering and leaving the context,
``torch.set_default_dtype``."""
from __future__ import annotations

from typing import List, Set

import torch
import torch.nn as nn

from .model import F32, F64, DT_NAME, GeneratorBase, Group


def resets_every_parameter(module: nn.Module) -> bool:
    """Whether ``module.reset_parameters()`` writes every parameter: torch's
    convolutions leave the bias as it is where the weight has no elements
    (``fan_in == 0``), so after ``to_empty`` it holds whatever the new memory
    held, eagerly as lazily (finding 52)."""
    return all(p.numel() > 0 for p in module.parameters())


class LifecycleOps(GeneratorBase):
    """``op_materialize``, ``op_delete``, ``op_discard``, ``op_module_reset``,
    ``op_context``, ``op_default_dtype``."""

    def module_tensors(self, c: str) -> List[torch.Tensor]:
        mod = self.ns[c]
        return list(mod.parameters()) + list(mod.buffers())

    def op_materialize(self) -> bool:
        mods = self.modules()
        if mods and self.ch.flag(0.2):
            c = self.pick(mods)
            ts = self.module_tensors(c)

            def fxm() -> None:
                for k in self.names_sharing(ts):
                    self.group[k].lazy = False
            form = self.ch.choice(["mat({0})", '{0}.to("cpu")', "{0}.cpu()"])
            return self.emit(form.format(c), fxm)
        name = self.pick(self.lazy_tensors())
        if name is None:
            return False
        g = self.group[name]

        def fx() -> None:
            g.lazy = False
        form = self.ch.choice(["mat", "mat_default", "cpu", "to"])
        if form != "to":
            line = {"mat": f"mat({name})", "mat_default": f"mat({name}, None)",
                    "cpu": f"{name}.cpu()"}[form]
            return self.emit(line, fx)
        new = self.new_name()

        def fx2() -> None:
            fx()
            self.fx_view(new, name)()
        return self.emit(f'{new} = {name}.to("cpu")', fx2)

    # ---- deaths --------------------------------------------------------------

    def doomed_by(self, groups: Set[int]) -> List[str]:
        """Every name that dies with the storages ``groups`` (ids of Group
        objects): its tensors, and containers holding one of them."""
        tensors = [k for k in self.tensors() if id(self.group[k]) in groups]
        objs = [self.t(k) for k in tensors]
        out = list(tensors)
        for c in self.names("c"):
            v = self.ns.get(c)
            held = (self.module_tensors(c) if isinstance(v, nn.Module)
                    else list(v.values()) if isinstance(v, dict) else [])
            if any(h is o or self.shares_storage(h, o) for h in held for o in objs):
                out.append(c)
        return out

    def fx_forget(self, names: List[str]):
        def f() -> None:
            for k in names:
                self.kind.pop(k, None)
                self.group.pop(k, None)
        return f

    def op_delete(self) -> bool:
        """``del`` of one name, of every name of one storage, or of a module
        and every name of its tensors (they die unmaterialized)."""
        k = self.ch.choice(["one", "one", "storage", "module"])
        if k == "one":
            name = self.pick(self.tensors() + self.names("c"))
            if name is None:
                return False
            return self.emit(f"del {name}", self.fx_forget([name]))
        if k == "storage":
            name = self.pick(self.tensors())
            if name is None:
                return False
            names = self.doomed_by({id(self.group[name])})
        else:
            c = self.pick(self.modules())
            if c is None:
                return False
            names = [c] + self.doomed_by({id(self.group[k]) for k in
                                          self.names_sharing(self.module_tensors(c))})
        names = sorted(set(names), key=lambda n: int(n[1:]))
        return self.emit(f"del {', '.join(names)}", self.fx_forget(names))

    def op_discard(self) -> bool:
        """``lazyinit.discard`` of a pending tensor or module, then ``del``
        of every name that died with it (eagerly: only the ``del``)."""
        mods = [c for c in self.modules()
                if any(self.group[k].lazy for k in self.names_sharing(self.module_tensors(c)))]
        if mods and self.ch.flag(0.4):
            what = self.pick(mods)
            groups = {id(self.group[k]) for k in self.names_sharing(self.module_tensors(what))
                      if self.group[k].lazy}
            names = [what]
        else:
            what = self.pick(self.lazy_tensors())
            if what is None:
                return False
            groups = {id(self.group[what])}
            names = []
        names = sorted(set(names + self.doomed_by(groups)), key=lambda n: int(n[1:]))
        return self.emit(f"lazyinit.discard({what}); del {', '.join(names)}",
                         self.fx_forget(names))

    # ---- modules ---------------------------------------------------------------

    def op_module_reset(self) -> bool:
        """``reset_parameters()`` (again), or ``to_empty`` then
        ``reset_parameters`` where that writes every tensor of the module
        again (``resets_every_parameter``)."""
        c = self.pick([c for c in self.modules() if hasattr(self.ns[c], "reset_parameters")])
        if c is None:
            return False
        if self.ch.flag(0.6):
            return self.emit(f"{c}.reset_parameters()")
        params = list(self.ns[c].parameters())
        if not resets_every_parameter(self.ns[c]):
            return False
        same = [[k for k in self.tensors() if self.t(k) is t] for t in params]
        # a lazy parameter whose storage other named tensors view is
        # materialized first (lazyinit keeps their values): that storage
        # turns real
        shared = [self.group[names[0]] for names in same if names
                  and any(self.group[k] is self.group[names[0]] and k not in names
                          for k in self.tensors())]

        def fx() -> None:
            # to_empty gives each parameter a new (real) storage; names of
            # the parameters follow them, views keep the old storage. Buffers
            # are replaced by new objects: names of the old ones keep them
            for g in shared:
                g.lazy = False
            for names in same:
                g = Group(False)
                for k in names:
                    self.group[k] = g
        return self.emit(f'{c}.to_empty(device="cpu"); {c}.reset_parameters()', fx)

    # ---- context, default dtype ---------------------------------------------

    def op_context(self) -> bool:
        if self.in_ctx:
            def fx() -> None:
                self.in_ctx = False
            return self.emit("exit_ctx()", fx)

        def fx2() -> None:
            self.in_ctx = True
        arg = '"cpu"' if self.ch.flag(0.3) else ""
        return self.emit(f"enter_ctx({arg})", fx2)

    def op_default_dtype(self) -> bool:
        dt = self.ch.choice([F64, F32])

        def fx() -> None:
            self.default_dtype = dt
        return self.emit(f"torch.set_default_dtype({DT_NAME[dt]})", fx)
