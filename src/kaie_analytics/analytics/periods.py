"""Parsing the common query parameters of spec/METRICS.md into validated values."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

from kaie_analytics.analytics.facts import Window
from kaie_analytics.errors import InvalidDateRange, InvalidGranularity, InvalidParameter

MAX_PERIOD = timedelta(days=366)
DEFAULT_PERIOD = timedelta(days=30)
GRANULARITIES = ("hour", "day", "week", "month")
MAX_BUCKETS = 9000
MAX_LIST = 1000  # 366 days of hours, with room for DST
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$", re.ASCII)
ZERO = timedelta(0)
_ONE_US = timedelta(microseconds=1)
TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
FALSE_WORDS = frozenset({"false", "0", "no", "off"})


@dataclass(frozen=True, slots=True)
class Period:
    """An inclusive period [start, end], as aware UTC datetimes."""

    start: datetime
    end: datetime
    tz: ZoneInfo

    @property
    def start_naive(self) -> datetime:
        return self.start.astimezone(UTC).replace(tzinfo=None)

    @property
    def end_naive(self) -> datetime:
        return self.end.astimezone(UTC).replace(tzinfo=None)

    @property
    def window(self) -> Window:
        return Window(self.start_naive, self.end_naive)

    def previous(self) -> Period:
        """The period of equal length that ends just before ``start``."""
        end = self.start - _ONE_US
        return Period(end - (self.end - self.start), end, self.tz)

    @property
    def hours(self) -> float:
        return (self.end - self.start).total_seconds() / 3600

    def render(self) -> dict[str, str]:
        return {"start_date": iso(self.start), "end_date": iso(self.end)}


def iso(value: datetime) -> str:
    """RFC 3339 in UTC with Z; microseconds only when present."""
    v = value.astimezone(UTC)
    spec = "microseconds" if v.microsecond else "seconds"
    return v.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


#: Dates outside this range are refused: every bucket, offset and previous
#: period of a query then stays within the calendar.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(3000, 1, 1, tzinfo=UTC)
MAX_TEXT = 64  # longest date or time-zone text worth reading


@functools.cache
@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones()) | {"UTC"}


def zone_names() -> list[str]:
    """Every time zone name ``timezone`` takes, sorted (for the API's description)."""
    return sorted(_zone_names())


def parse_timezone(value: Any, field: str = "timezone") -> ZoneInfo:
    """An IANA time zone from the closed list the server knows (tzdata)."""
    if value is None or value == "":
        return ZoneInfo("UTC")
    if not isinstance(value, str) or value not in _zone_names():
        shown = repr(value)[:MAX_TEXT]
        raise InvalidParameter(
            f"unknown time zone {shown}; use an IANA name such as Europe/Paris", field=field
        )
    return ZoneInfo(value)


def _parse_bound(value: Any, name: str, tz: ZoneInfo, *, end: bool) -> datetime:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise InvalidDateRange(
            f"{name} must be a date (2024-01-31) or date-time (2024-01-31T23:59:59Z) string",
            field=name,
        )
    text = value.strip()
    try:
        if _DATE.match(text):
            day = date.fromisoformat(text)
            if end:
                day += timedelta(days=1)
            bound = datetime(day.year, day.month, day.day, tzinfo=tz) - (_ONE_US if end else ZERO)
        else:
            bound = datetime.fromisoformat(text.upper())
            if bound.tzinfo is None:
                bound = bound.replace(tzinfo=tz)
        bound = bound.astimezone(UTC)
    except ValueError:
        raise InvalidDateRange(
            f"{name} must be an ISO 8601 date (2024-01-31) or date-time"
            f" (2024-01-31T23:59:59Z); got {value!r}",
            field=name,
        ) from None
    except OverflowError:
        bound = LATEST  # past the calendar's end: refused just below
    if not EARLIEST <= bound < LATEST:
        raise InvalidDateRange(f"{name} must lie between 1900-01-01 and 2999-12-31", field=name)
    return bound


def parse_period(
    start_date: Any,
    end_date: Any,
    tz: ZoneInfo,
    *,
    now: datetime | None = None,
    fields: tuple[str, str] = ("start_date", "end_date"),
) -> Period:
    """The period of ``start_date`` / ``end_date`` (spec/METRICS.md, "Period").

    ``fields`` names the two parameters in errors (``filters.start_date`` in a report).
    """
    start_field, end_field = fields
    now = now or datetime.now(UTC)
    # Absent is None or "" (an empty query parameter); anything else must be a bound.
    end = _parse_bound(end_date, end_field, tz, end=True) if end_date not in (None, "") else now
    start = (
        _parse_bound(start_date, start_field, tz, end=False)
        if start_date not in (None, "")
        else end - DEFAULT_PERIOD
    )
    if end < start:
        raise InvalidDateRange("End date must be after start date", field=end_field)
    if end - start > MAX_PERIOD:
        raise InvalidDateRange(
            "The period must be at most 366 days; ask for a shorter range", field=start_field
        )
    return Period(start.astimezone(UTC), end.astimezone(UTC), tz)


def parse_granularity(value: str | None) -> str:
    if value is None or value == "":
        return "day"
    if value not in GRANULARITIES:
        raise InvalidGranularity(
            f"granularity must be one of: {', '.join(GRANULARITIES)}", field="granularity"
        )
    return value


def parse_list(params: Mapping[str, Sequence[str]], name: str) -> tuple[str, ...]:
    """A list given as repeated parameters and/or comma-separated values."""
    out: list[str] = []
    for raw in params.get(name, ()):
        out.extend(p.strip() for p in raw.split(",") if p.strip())
    return tuple(dict.fromkeys(out))


def parse_string_list(value: Any, field: str) -> tuple[str, ...]:
    """A JSON list of strings (or one comma-separated string), deduplicated, bounded."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidParameter(f"{field} must be a list of strings", field=field)
    if len(value) > MAX_LIST:
        raise InvalidParameter(f"{field} holds at most {MAX_LIST} values", field=field)
    return tuple(dict.fromkeys(value))


#: A filter naming a channel takes what an event's ``channel`` can be (spec/EVENTS.md);
#: one naming anything else, what an identifier can be.
CHANNEL_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
IDENTIFIER_PATTERN = re.compile(r"^[^\x00-\x1f\x7f-\x9f]{1,256}$")


def parse_filter(value: str | None, name: str) -> str | None:
    """A filter's value (absent or empty: no filter), refused if no event could match it."""
    if value is None or value == "":
        return None
    pattern = CHANNEL_PATTERN if name == "channel" else IDENTIFIER_PATTERN
    if not pattern.fullmatch(value):
        rule = ("a channel name (lower case letters, digits, _; up to 32)" if name == "channel"
                else "1 to 256 characters without control characters")  # fmt: skip
        raise InvalidParameter(f"{name} must be {rule}", field=name)
    return value


def parse_bool(value: str | None, name: str, default: bool) -> bool:
    if value is None or value == "":
        return default
    low = value.lower()
    if low in TRUE_WORDS:
        return True
    if low in FALSE_WORDS:
        return False
    raise InvalidParameter(f"{name} must be true or false", field=name)


def _floor_local(value: datetime, granularity: str, tz: ZoneInfo) -> datetime:
    local = value.astimezone(tz)
    if granularity == "hour":
        return local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
    day = local.date()
    if granularity == "week":
        day -= timedelta(days=day.weekday())
    elif granularity == "month":
        day = day.replace(day=1)
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)


def _next_bucket(start: datetime, granularity: str, tz: ZoneInfo) -> datetime:
    if granularity == "hour":
        return start + timedelta(hours=1)
    local = start.astimezone(tz).date()
    if granularity == "day":
        nxt = local + timedelta(days=1)
    elif granularity == "week":
        nxt = local + timedelta(days=7)
    else:
        nxt = (local.replace(day=28) + timedelta(days=4)).replace(day=1)
    return datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz).astimezone(UTC)


def buckets(period: Period, granularity: str) -> list[datetime]:
    """Starts (aware UTC) of every bucket that overlaps the period, in order."""
    out = [_floor_local(period.start, granularity, period.tz)]
    while True:
        nxt = _next_bucket(out[-1], granularity, period.tz)
        if nxt > period.end:
            return out
        out.append(nxt)
        if len(out) > MAX_BUCKETS:
            raise InvalidParameter(
                f"the period holds more than {MAX_BUCKETS} buckets; use a coarser granularity",
                field="granularity",
            )


def bucket_label(start: datetime, granularity: str, tz: ZoneInfo) -> str:
    local = start.astimezone(tz)
    if granularity == "hour":
        return local.isoformat(timespec="seconds").replace("+00:00", "Z")
    return local.date().isoformat()


def naive_utc(value: datetime) -> datetime:
    """An aware time as naive UTC (the engines' time)."""
    return value.astimezone(UTC).replace(tzinfo=None)


def bucket_windows(period: Period, granularity: str) -> list[tuple[datetime, Window]]:
    """Each bucket of the period: its start (aware UTC, for its label) and its part of
    the period (the first starts at the period's start, the last ends at its end)."""
    starts = buckets(period, granularity)  # aware UTC
    naive = [s.replace(tzinfo=None) for s in starts]
    naive[0] = max(naive[0], period.start_naive)
    ends = [s - _ONE_US for s in naive[1:]] + [period.end_naive]
    return [(s, Window(a, e)) for s, a, e in zip(starts, naive, ends, strict=True)]


def local_times(times: Iterable[datetime], tz: tzinfo) -> list[datetime]:
    """Naive UTC times as naive local times of ``tz``.

    The zone's offset is looked up once per UTC day, and per time only on days
    when it changes (no zone changes its offset twice in one day).
    """
    out = []
    day_offsets: dict[date, timedelta | None] = {}
    for t in times:
        day = t.date()
        if day not in day_offsets:
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            first = start.astimezone(tz).utcoffset()
            last = (start + timedelta(days=1, microseconds=-1)).astimezone(tz).utcoffset()
            day_offsets[day] = first if first == last else None
        offset = day_offsets[day]
        if offset is None:
            offset = t.replace(tzinfo=UTC).astimezone(tz).utcoffset()
        out.append(t + (offset or timedelta(0)))
    return out
