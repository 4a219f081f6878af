"""Times as the DuckDB engine counts them: microseconds since the epoch, 15-minute slots.

A *slot* is a 15-minute stretch of UTC time, numbered from the epoch. Every
time zone's hours and days start on a slot edge (zone offsets are whole
quarter hours), so sums kept per slot add up exactly into any bucket.
"""

from __future__ import annotations

from datetime import datetime, timedelta

SLOT_US = 15 * 60 * 1_000_000
DAY_US = 24 * 60 * 60 * 1_000_000
_EPOCH = datetime(1970, 1, 1)


def epoch_us(ts: datetime) -> int:
    """Microseconds since the epoch of a naive UTC time."""
    return (ts - _EPOCH) // timedelta(microseconds=1)


def from_epoch_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)
