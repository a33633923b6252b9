"""The generators: reseeding, reading and restoring the default generator's
state (``torch.get_rng_state()``, ``torch.default_generator.get_state()``,
``initial_seed()``), explicit ``torch.Generator``s (created, seeded, read,
restored, drawn from by lazy and real ops)."""
from __future__ import annotations

from .model import GeneratorBase, shape_str


class RngOps(GeneratorBase):
    """``op_rng``, ``op_rng_read``."""

    RNG = ["manual_seed", "get_state", "set_state", "initial_seed", "generator",
           "gen_factory", "gen_inplace", "gen_seed", "gen_set_state"]

    def op_rng(self) -> bool:
        k = self.ch.choice(self.RNG)
        if k in ("manual_seed", "get_state", "set_state", "initial_seed"):
            return getattr(self, f"_rng_{k}")()
        if not self.has("generators"):
            return False
        if k == "generator" or not self.names("g"):
            return self._rng_generator()
        return getattr(self, f"_rng_{k}")(self.pick(self.names("g")))

    def _rng_manual_seed(self) -> bool:
        if self.ch.flag(0.2):
            return self.emit(f"torch.default_generator.manual_seed({self.ch.int(0, 3)})")
        return self.emit(f"torch.manual_seed({self.ch.int(0, 3)})")

    def _rng_get_state(self) -> bool:
        s = self.new_name("s")
        return self.emit(f"{s} = torch.get_rng_state()", self.fx_kind(s, "s"))

    def _rng_set_state(self) -> bool:
        states = self.names("s")
        if not states:
            return False
        if self.ch.flag(0.3):
            return self.emit(f"torch.default_generator.set_state({self.pick(states)})")
        return self.emit(f"torch.set_rng_state({self.pick(states)})")

    def _rng_initial_seed(self) -> bool:
        r = self.new_name("r")
        return self.emit(f"{r} = torch.initial_seed()", self.fx_kind(r, "r"))

    def _rng_generator(self) -> bool:
        g = self.new_name("g")
        if self.ch.flag(0.2) and self.names("s"):
            # a generator started from a saved default state
            return self.emit(f"{g} = torch.Generator(); {g}.set_state({self.pick(self.names('s'))})",
                             self.fx_kind(g, "g"))
        return self.emit(f"{g} = torch.Generator().manual_seed({self.ch.int(0, 3)})",
                         self.fx_kind(g, "g"))

    def _rng_gen_seed(self, g: str) -> bool:
        return self.emit(f"{g}.manual_seed({self.ch.int(0, 5)})")

    def _rng_gen_set_state(self, g: str) -> bool:
        states = self.names("s")
        if not states:
            return False
        return self.emit(f"{g}.set_state({self.pick(states)})")

    def _rng_gen_factory(self, g: str) -> bool:
        name = self.new_name()
        f = self.ch.choice(["randn", "rand", "randperm", "randint", "normal"])
        real = self.has("real_sources") and self.ch.flag(0.25)  # a real random factory
        dev = ', device="cpu"' if real else ", **DEV"
        shape = shape_str(self.shape())
        call = {"randn": f"torch.randn({shape}", "rand": f"torch.rand({shape}",
                "randperm": f"torch.randperm({self.ch.int(0, 20)}",
                "randint": f"torch.randint(0, {self.ch.int(1, 9)}, {shape}",
                "normal": f"torch.normal(0.0, 2.0, {shape}"}[f]
        return self.emit(f"{name} = {call}, generator={g}{dev})", self.fx_new(name, lazy=not real))

    def _rng_gen_inplace(self, g: str) -> bool:
        tg = self.target()  # type: ignore[attr-defined]
        if tg is None:
            return False
        f = self.ch.choice(["normal_(", "uniform_(", "random_(0, 10, ", "exponential_(",
                            "bernoulli_(0.5, "])
        return self.emit(f"with torch.no_grad(): {tg[1]}.{f}generator={g})")

    # ---- reads ---------------------------------------------------------------

    READS = ["torch.get_rng_state()", "torch.default_generator.get_state()",
             "torch.initial_seed()", "torch.default_generator.initial_seed()",
             "{g}.get_state()", "{g}.initial_seed()", "{g}.clone_state().get_state()"]

    def op_rng_read(self) -> bool:
        """A read of a generator's state or seed, bound to a name (compared
        with eager's): where lazy draws are pending, discarded or deleted,
        lazyinit must catch the generator up first."""
        read = self.ch.choice(self.READS)
        if "{g}" in read:
            gens = self.names("g")
            if not gens or not self.has("generators"):
                return False
            read = read.format(g=self.pick(gens))
            if "clone_state" in read and not hasattr(self.eval(read.split(".")[0]), "clone_state"):
                return False
        is_state = "state" in read
        name = self.new_name("s" if is_state else "r")
        return self.emit(f"{name} = {read}", self.fx_kind(name, "s" if is_state else "r"))
