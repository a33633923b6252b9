"""Where a generator's choices come from: a seeded ``random.Random`` (long
runs, CI; seed i is program i) or hypothesis (a strategy that shrinks)."""
from __future__ import annotations

import random
from typing import Any, Callable, List, Sequence


class RandomChooser:
    """Choices from a seeded random.Random."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def int(self, lo: int, hi: int) -> int:
        return self.r.randint(lo, hi)

    def choice(self, seq: Sequence[Any]) -> Any:
        return seq[self.r.randrange(len(seq))]

    def flag(self, p: float) -> bool:
        return self.r.random() < p

    def perm(self, seq: Sequence[Any]) -> List[Any]:
        out = list(seq)
        self.r.shuffle(out)
        return out


class HypothesisChooser:
    """Choices drawn from hypothesis (``draw`` of st.composite / st.data()).
    Everything shrinks toward the first option / the smallest int / False."""

    def __init__(self, draw: Callable[[Any], Any]) -> None:
        from hypothesis import strategies as st
        self.st = st
        self.draw = draw

    def int(self, lo: int, hi: int) -> int:
        return self.draw(self.st.integers(lo, hi))

    def choice(self, seq: Sequence[Any]) -> Any:
        return self.draw(self.st.sampled_from(list(seq)))

    def flag(self, p: float) -> bool:
        return self.draw(self.st.integers(0, 99)) >= round(100 * (1 - p))

    def perm(self, seq: Sequence[Any]) -> List[Any]:
        return list(self.draw(self.st.permutations(list(seq))))
