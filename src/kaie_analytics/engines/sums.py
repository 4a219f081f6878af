"""What the engines' rollups held in memory share: integer sums grouped by keys in
numpy, text values as codes, days held within a byte budget, and a zone's UTC
offsets at many times."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Generic, Protocol, TypeVar

import numpy as np


class _Sized(Protocol):
    @property
    def nbytes(self) -> int: ...


K = TypeVar("K")
D = TypeVar("D", bound=_Sized)

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


class Codes:
    """Text values as dense integer codes, so that numpy can group by them."""

    def __init__(self) -> None:
        self._codes: dict[Any, int] = {}
        #: Code → value.
        self.values: list[Any] = []
        self._lock = threading.Lock()

    def codes(self, values: Iterable[Any]) -> np.ndarray:
        """The codes of ``values`` (new values get the next ones)."""
        values = list(values)
        with self._lock:
            for v in set(values) - self._codes.keys():
                self._codes[v] = len(self.values)
                self.values.append(v)
            return np.fromiter(map(self._codes.__getitem__, values), np.int64, len(values))


class HeldDays(Generic[K, D]):
    """Days held in memory within a byte budget (each day's ``nbytes``), least recently
    used first. Not thread-safe: its cache guards it."""

    def __init__(self, budget_bytes: int) -> None:
        self._budget = budget_bytes
        self._days: OrderedDict[K, D] = OrderedDict()
        self.nbytes = 0

    def get(self, key: K) -> D | None:
        return self._days.get(key)

    def put(self, key: K, day: D) -> None:
        self.drop([key])
        self._days[key] = day
        self.nbytes += day.nbytes

    def grew(self, by: int) -> None:
        """A day held grew by ``by`` bytes (a part read later): the least recently used
        beyond the budget go."""
        self.nbytes += by
        self.used(())

    def used(self, keys: Iterable[K]) -> None:
        """``keys`` were just read: the least recently used beyond the budget go."""
        for k in keys:
            if k in self._days:
                self._days.move_to_end(k)
        while self.nbytes > self._budget and self._days:
            self.nbytes -= self._days.popitem(last=False)[1].nbytes

    def drop(self, keys: Iterable[K]) -> None:
        for k in keys:
            day = self._days.pop(k, None)
            if day is not None:
                self.nbytes -= day.nbytes

    def clear(self) -> None:
        self._days.clear()
        self.nbytes = 0


_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
_DAY_US = 86_400_000_000


def utc_offsets_us(times_us: np.ndarray, tz: tzinfo) -> np.ndarray:
    """The UTC offset of ``tz`` (µs) at each time (µs since the epoch, UTC).

    Looked up once per UTC day, and per time only on days whose offset at the
    start and the end differ (no zone changes its offset twice in one day).
    """

    def offset_us(at: datetime) -> int:
        return (at.astimezone(tz).utcoffset() or timedelta(0)) // timedelta(microseconds=1)

    days, inverse = np.unique(times_us // _DAY_US, return_inverse=True)
    starts = [_EPOCH_UTC + timedelta(days=d) for d in days.tolist()]
    first = np.array([offset_us(s) for s in starts], np.int64)
    last = np.array([offset_us(s + timedelta(days=1, microseconds=-1)) for s in starts], np.int64)
    out = first[inverse]
    for i in np.flatnonzero((first != last)[inverse]).tolist():
        out[i] = offset_us(_EPOCH_UTC + timedelta(microseconds=int(times_us[i])))
    return out


def distinct(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct ``values`` (ascending), each value's index among them, and a row of
    each: what ``np.unique`` gives with ``return_index`` and ``return_inverse``, by one
    sort (numpy's ``unique`` took ten to forty times as long on integer keys here)."""
    order = np.argsort(values)
    ordered = values[order]
    starts = np.r_[True, ordered[1:] != ordered[:-1]] if len(values) else np.empty(0, bool)
    index = np.empty(len(values), np.int64)
    index[order] = np.cumsum(starts) - 1
    return ordered[starts], index, order[starts]
