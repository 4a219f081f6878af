"""What both engines' rollups in memory share (``engines.sums``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kaie_analytics.engines.sums import HeldDays, distinct


@dataclass
class _Day:
    nbytes: int


def test_days_held_keep_to_their_budget_as_they_grow() -> None:
    held: HeldDays[str, _Day] = HeldDays(100)
    a, b = _Day(40), _Day(40)
    held.put("a", a)
    held.put("b", b)
    held.used(["a"])  # b is now the least recently used
    assert held.nbytes == 80
    a.nbytes += 30  # a part read later
    held.grew(30)
    assert held.get("b") is None and held.get("a") is a and held.nbytes == 70
    held.drop(["a"])
    assert held.nbytes == 0


def test_distinct_is_numpys_unique() -> None:
    values = np.random.default_rng(7).integers(-5, 50, 1000)
    found, index, first = distinct(values)
    want, _, want_index = np.unique(values, return_index=True, return_inverse=True)
    assert (found == want).all() and (index == want_index).all()
    assert (values[first] == found).all()  # a row of each (not always the first)
    assert len(distinct(values[:0])[0]) == 0
