"""Rounding and trend rules of spec/METRICS.md, in one place."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal


def round_half_up(value: float | None, digits: int) -> float | None:
    if value is None:
        return None
    q = Decimal(1).scaleb(-digits)
    return float(Decimal(repr(value)).quantize(q, rounding=ROUND_HALF_UP))


def rate(num: int, den: int) -> float | None:
    """A fraction in [0, 1], 4 decimals; null over nothing."""
    return round_half_up(num / den, 4) if den else None


def avg_ms(total: int | float | None, count: int) -> int | None:
    """Mean of milliseconds, rounded to an integer (half up); null over nothing."""
    if not count or total is None:
        return None
    return int(Decimal(int(total)) / Decimal(count) + Decimal("0.5")) if total >= 0 else None


def round_ms(value: float | None) -> int | None:
    """Milliseconds rounded to an integer, half up."""
    rounded = round_half_up(value, 0)
    return None if rounded is None else int(rounded)


def mean(total: float | None, count: int, digits: int) -> float | None:
    if not count or total is None:
        return None
    return round_half_up(total / count, digits)


def trend(current: float | None, previous: float | None) -> str:
    """increasing / decreasing / stable, comparing with the previous period."""
    if not previous:
        return "stable" if not current else "increasing"
    if current is None:
        return "stable"
    if current > previous * 1.05:
        return "increasing"
    if current < previous * 0.95:
        return "decreasing"
    return "stable"


def mean_us_as_ms(total_us: int | None, count: int) -> int | None:
    """Mean of microsecond durations, in milliseconds rounded half up; exact."""
    if not count or total_us is None:
        return None
    return int(Decimal(int(total_us)) / Decimal(count * 1000) + Decimal("0.5"))
