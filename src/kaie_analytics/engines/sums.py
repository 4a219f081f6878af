"""Integer sums grouped by keys in numpy: what the engines' in-memory rollups share."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Sums whose total stays below this are exact in float64 (``np.bincount``).
_EXACT_FLOAT = 2**53
#: Combinations of keys beyond this are summed by sorting instead of counting.
_DENSE_KEYS = 1 << 20


def group(keys: list[np.ndarray], sums: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The distinct combinations of ``keys`` (non-negative integer columns) and the
    exact integer sums of the ``sums`` rows (n × k, non-negative) of each."""
    if not len(sums):
        return [k[:0] for k in keys], sums[:0]
    dims = tuple(int(k.max()) + 1 for k in keys)
    key = np.ravel_multi_index(tuple(keys), dims)
    size = int(np.prod(dims))
    if size <= _DENSE_KEYS and int(sums.sum(axis=0).max()) < _EXACT_FLOAT:
        # Every partial sum is an integer below 2**53: float64 adds it exactly.
        present = np.flatnonzero(np.bincount(key, minlength=size))
        totals = np.column_stack(
            [np.bincount(key, weights=sums[:, j], minlength=size) for j in range(sums.shape[1])]
        )
        return list(np.unravel_index(present, dims)), totals[present].astype(np.int64)
    order = np.argsort(key, kind="stable")
    key = key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    totals = np.add.reduceat(sums[order], starts, axis=0)
    return list(np.unravel_index(key[starts], dims)), totals


def runs(values: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted integers as runs ``(first, last)`` of consecutive values."""
    out: list[list[int]] = []
    for v in values:
        if out and out[-1][1] == v - 1:
            out[-1][1] = v
        else:
            out.append([v, v])
    return [(a, b) for a, b in out]
