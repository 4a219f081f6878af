"""Customer facts (engagement) and journey facts, in ClickHouse SQL.

With the same definitions as the DuckDB engine's derived tables: a
customer's first event and first message received; conversations (sessions)
as runs of a customer's messages on one channel with no gap over 30 minutes;
a journey as every event of its id. The fold keeps each of them as of its
watermark (``folds``); an answer reads them as of the watermark it uses and
works out itself what the events ingested since change (``session_changes``,
``first_changes``, journeys from their states). With a segment filter, or on
a server (nothing folded), everything comes from the events and the states.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from kaie_analytics.analytics.facts import (
    SESSION_GAP_US,
    ChannelFacts,
    CustomerFacts,
    CustomerQuery,
    JourneyFacts,
    JourneyQuery,
    StepFacts,
    Window,
)
from kaie_analytics.engines.clickhouse import sql
from kaie_analytics.engines.clickhouse.schema import FIRST_TIMES, JOURNEY_TYPES
from kaie_analytics.engines.clickhouse.transport import Transport

_LO, _HI = sql.time_param("lo"), sql.time_param("hi")


def _split(per_conversation: str) -> str:
    """The sessions of ``per_conversation`` (customer_id, channel, ``t``: the sorted µs
    of its messages): a new one starts at a message more than 30 minutes after the
    one before."""
    return f"""
SELECT customer_id, channel, fromUnixTimestamp64Micro(x[1], 'UTC') AS first_ts,
    fromUnixTimestamp64Micro(x[-1], 'UTC') AS last_ts, toUInt64(length(x)) AS size
FROM ({per_conversation})
ARRAY JOIN arraySplit((v, starts) -> starts, t,
    arrayMap((v, i) -> i = 1 OR v - t[i - 1] > {SESSION_GAP_US}, t, arrayEnumerate(t))) AS x
"""


#: The conversations (sessions) of ``{tenant}`` that can start from ``{from_us}`` on,
#: from the events: whether a message starts one depends only on the 30 minutes
#: before it, so the messages from ``from_us`` less 30 minutes on decide every start
#: from ``from_us``; a session runs on as long as its messages do.
SESSIONS = _split(
    f"""SELECT customer_id, channel, arraySort(groupArray({sql.us("ts")})) AS t
    FROM ({sql.tenant_events(
        sql.MESSAGE_TYPES, "customer_id, channel, ts",
        f"ts >= fromUnixTimestamp64Micro({{from_us:Int64}} - {SESSION_GAP_US}, 'UTC')",
    )})
    GROUP BY customer_id, channel"""
)  # fmt: skip


def session_changes(after: str, upto: str | None) -> str:
    """How the sessions of ``{tenant}`` change with the messages ingested after fold
    ``after`` (and up to ``upto``, µs of ``ingested_at``; None: all): rows of
    ``schema.SESSIONS`` less fold and tenant, +1 for a session made, -1 for one of
    fold ``after`` replaced.

    A conversation with new messages is made again from the earliest of its
    sessions that ends less than 30 minutes before its earliest new message (or
    that message): the sessions before that one cannot change.
    """
    upto_ = f" AND {sql.ingested(None, upto)}" if upto else ""
    touched = f"""SELECT assumeNotNull(customer_id) AS c, assumeNotNull(channel) AS ch,
            min(ts) AS t_new
        FROM ({sql.tenant_events(sql.MESSAGE_TYPES, "customer_id, channel, ts", sql.ingested(after, upto))})
        GROUP BY c, ch"""
    # Per touched conversation, its sessions as of fold ``after``.
    old = f"""SELECT c, ch, groupArray((first_ts, last_ts, size)) AS olds FROM (
            SELECT customer_id AS c, channel AS ch, first_ts, last_ts, size FROM sessions
            WHERE tenant = {{tenant:String}} AND fold <= {after}
              AND (customer_id, channel) IN (SELECT c, ch FROM touched)
            GROUP BY c, ch, first_ts, last_ts, size HAVING sum(sign) > 0
        ) GROUP BY c, ch"""
    # Per touched conversation: the time it is made again from, and the sessions replaced.
    conversations = f"""SELECT t.c AS c, t.ch AS ch,
            arrayMin(arrayConcat([t.t_new], arrayMap(s -> s.1, arrayFilter(
                s -> {sql.us("s.2")} >= {sql.us("t.t_new")} - {SESSION_GAP_US}, o.olds))))
                AS from_ts,
            arrayFilter(s -> s.1 >= from_ts, o.olds) AS replaced
        FROM touched t LEFT JOIN old o ON o.c = t.c AND o.ch = t.ch"""
    messages = f"""SELECT assumeNotNull(customer_id) AS c, assumeNotNull(channel) AS ch,
            groupArray({sql.us("ts")}) AS times
        FROM events FINAL
        WHERE tenant = {{tenant:String}} AND type IN {sql.MESSAGE_TYPES}
          AND ts >= (SELECT min(from_ts) FROM conversations)
          AND (customer_id, channel) IN (SELECT c, ch FROM touched){upto_}
        GROUP BY c, ch"""
    split = f"""arraySplit((v, starts) -> starts, t,
        arrayMap((v, i) -> i = 1 OR v - t[i - 1] > {SESSION_GAP_US}, t, arrayEnumerate(t)))"""
    made = f"""arrayMap(x -> (fromUnixTimestamp64Micro(x[1], 'UTC'),
        fromUnixTimestamp64Micro(x[-1], 'UTC'), toUInt64(length(x)), toInt8(1)), {split})"""
    return f"""
WITH touched AS ({touched}), old AS ({old}), conversations AS ({conversations})
SELECT customer_id, channel, x.1 AS first_ts, x.2 AS last_ts, x.3 AS size,
    toInt8(sum(x.4)) AS sign
FROM (
    SELECT v.c AS customer_id, v.ch AS channel, v.replaced,
        arraySort(arrayFilter(u -> u >= {sql.us("v.from_ts")}, m.times)) AS t
    FROM conversations v LEFT JOIN ({messages}) m ON m.c = v.c AND m.ch = v.ch
)
ARRAY JOIN arrayConcat({made}, arrayMap(s -> (s.1, s.2, s.3, toInt8(-1)), replaced)) AS x
GROUP BY customer_id, channel, first_ts, last_ts, size HAVING sum(x.4) != 0
"""


def first_changes(after: str, upto: str | None) -> str:
    """How the first-seen times of ``{tenant}``'s customers change with the events
    ingested after fold ``after`` (and up to ``upto``; None: all): rows of
    ``schema.customer_firsts`` less fold and tenant, +1 for the times a customer
    has now, -1 for those it had as of fold ``after`` (when they differ)."""
    # Per customer and channel, and over all (''), as ``schema.CUSTOMER_STATES``.
    touched = f"""SELECT assumeNotNull(customer_id) AS c, ch, min(ts) AS t_event,
            minOrNullIf(ts, type = 'message.received') AS t_received
        FROM events
        ARRAY JOIN if(channel IS NULL, [''], [assumeNotNull(channel), '']) AS ch
        WHERE tenant = {{tenant:String}} AND customer_id IS NOT NULL
          AND {sql.ingested(after, upto)}
        GROUP BY c, ch"""
    old = f"""SELECT c, ch, groupArray((first_event, first_received)) AS olds FROM (
            SELECT customer_id AS c, channel AS ch, first_event, first_received
            FROM customer_firsts
            WHERE tenant = {{tenant:String}} AND fold <= {after}
              AND (customer_id, channel) IN (SELECT c, ch FROM touched)
            GROUP BY c, ch, first_event, first_received HAVING sum(sign) > 0
        ) GROUP BY c, ch"""
    # A customer has one row as of a fold, or none (``olds`` empty).
    a, b = "olds[1].2", "t.t_received"
    return f"""
WITH touched AS ({touched}), old AS ({old})
SELECT c AS customer_id, ch AS channel, x.1 AS first_event, x.2 AS first_received,
    x.3 AS sign
FROM (
    SELECT t.c AS c, t.ch AS ch, o.olds AS olds,
        if(empty(olds), t.t_event, least(olds[1].1, t.t_event)) AS e,
        if(empty(olds) OR {a} IS NULL, {b}, if({b} IS NULL, {a}, least({a}, {b}))) AS r
    FROM touched t LEFT JOIN old o ON o.c = t.c AND o.ch = t.ch
)
ARRAY JOIN arrayConcat(
    arrayMap(o -> (o.1, o.2, toInt8(-1)), olds), [(e, r, toInt8(1))]) AS x
WHERE empty(olds) OR NOT (olds[1].1 = e AND ifNull(olds[1].2 = r, olds[1].2 IS NULL AND r IS NULL))
"""


def customers(
    transport: Transport, q: CustomerQuery, folded: int, pending: bool
) -> list[CustomerFacts]:
    """One per window; the first one's also by channel (later ones serve trends, which
    need totals only). ``folded``: the fold's watermark; ``pending``: whether the
    tenant has events after it. Every statement of every window side by side."""
    statements = [
        st for i, w in enumerate(q.windows) for st in _statements(q, w, folded, pending, i == 0)
    ]
    tables = transport.query_all(statements)
    return [_facts(tables[4 * i : 4 * i + 4], by_channel=i == 0) for i in range(len(q.windows))]


def _statements(
    q: CustomerQuery, window: Window, folded: int, pending: bool, by_channel: bool
) -> list[tuple[str, dict[str, Any]]]:
    """Of one window: first events, active customers (per channel too if ``by_channel``),
    sessions, feedback."""
    params: dict[str, Any] = {
        "tenant": q.tenant,
        "folded": folded,
        "channel": q.channel,
        "segment": q.segment,
        **sql.window_params(window),
    }
    params["from_us"] = params["lo"]
    in_segment = (
        f" AND customer_id IN (SELECT customer_id FROM ({sql.SEGMENTS})"
        " WHERE segment = {segment:String})"
        if q.segment is not None
        else ""
    )
    channel = " AND channel = {channel:String}" if q.channel is not None else ""
    feedback = sql.tenant_events(
        "('feedback.submitted')",
        "channel, csat, nps",
        f"ts BETWEEN {_LO} AND {_HI} AND customer_id IS NOT NULL{channel}{in_segment}",
    )
    texts = [
        _firsts(q, folded, pending, in_segment),
        _active(window, folded, pending, channel, in_segment, by_channel),
        _session_sums(window, folded, pending, channel, in_segment),
        f"""SELECT channel, sum(csat), count(csat), count(nps), countIf(nps >= 9),
                countIf(nps <= 6)
            FROM ({feedback}) GROUP BY channel""",
    ]
    return [(text, params) for text in texts]


def _firsts(q: CustomerQuery, folded: int, pending: bool, in_segment: str) -> str:
    """Customers (of the channel, or of all: '') first seen up to the window's end, and
    those whose first message received is in the window.

    As of the watermark ``{folded}``: sums of signs over ranges of ``first_times``,
    plus how the events ingested since change them (if the tenant has any:
    ``pending``). From ``customers_state`` when nothing is folded yet (on a server)
    or a segment filters the customers.
    """
    channel = "{channel:String}" if q.channel is not None else "''"

    def counts(value: str) -> str:
        return f"""sumIf({value}, kind = 0 AND t <= {_HI}),
            sumIf({value}, kind = 1 AND t BETWEEN {_LO} AND {_HI})"""

    if in_segment or not folded:
        # From the aggregate states, per customer.
        return f"""SELECT {counts("1")} FROM (
            SELECT 0 AS kind, min(first_event) AS t FROM customers_state
            WHERE tenant = {{tenant:String}} AND channel = {channel}{in_segment}
            GROUP BY customer_id
            UNION ALL
            SELECT 1, min(first_received) AS t FROM customers_state
            WHERE tenant = {{tenant:String}} AND channel = {channel}{in_segment}
            GROUP BY customer_id HAVING t IS NOT NULL
        )"""
    parts = [
        f"""SELECT kind, t, sign FROM first_times
        WHERE tenant = {{tenant:String}} AND channel = {channel} AND fold <= {{folded:Int64}}
          AND (kind = 0 AND t <= {_HI} OR kind = 1 AND t BETWEEN {_LO} AND {_HI})"""
    ]
    if pending:
        parts.append(
            f"SELECT x.1, assumeNotNull(x.2), sign"
            f" FROM ({first_changes('{folded:Int64}', None)})"
            f" ARRAY JOIN {FIRST_TIMES} AS x WHERE channel = {channel}"
        )
    return f"SELECT {counts('sign')} FROM ({' UNION ALL '.join(parts)})"


def _active(
    window: Window, folded: int, pending: bool, channel: str, in_segment: str, by_channel: bool
) -> str:
    """Per channel (if ``by_channel``), and over all (the row whose channel is NULL):
    customers that sent a message in the window.

    As of the watermark ``{folded}``: the numbers of the customers active in the
    slots no edge cuts, less those given after it, with the numbers of those who
    sent the messages of the cut slots or ingested since (if the tenant has any:
    ``pending``), as a bitmap per channel (and their union); those of them without
    a number as of the watermark sent nothing before it, so they are in no slot
    and are counted apart. From the events when nothing is folded yet (on a
    server) or a segment filters the customers.
    """
    in_window = f"ts BETWEEN {_LO} AND {_HI} AND customer_id IS NOT NULL{channel}"
    grouped = "GROUP BY GROUPING SETS ((ch), ()) SETTINGS group_by_use_nulls = 1"
    if in_segment or not folded:
        received = sql.tenant_events(
            "('message.received')", "channel AS ch, customer_id", in_window + in_segment
        )
        return f"SELECT ch IS NOT NULL, ch, uniqExact(customer_id) FROM ({received}) {grouped}"
    cut = sql.cut_slots([window])
    raw = [f"({sql.in_slots('ts', cut)})"] + ([sql.ingested("{folded:Int64}")] if pending else [])
    messages = sql.tenant_events(
        "('message.received')",
        "assumeNotNull(channel) AS ch, assumeNotNull(customer_id) AS c",
        f"{in_window} AND ({' OR '.join(raw)})",
    )
    of_tenant = "tenant = {tenant:String}"
    known = f"""SELECT customer_id, num FROM customer_numbers FINAL
        WHERE {of_tenant} AND fold <= {{folded:Int64}} AND customer_id IN (SELECT c FROM raw)"""
    top = f"(SELECT max(num) FROM customer_numbers WHERE {of_tenant} AND fold <= {{folded:Int64}})"
    # A bitmap per channel, or one of all (as channel '', which no message has).
    per_channel = f"""SELECT {"ch" if by_channel else "''"} AS ch, groupBitmapState(num) AS b FROM (
            SELECT channel AS ch, num FROM active_customers
            WHERE {of_tenant} AND {sql.whole_slots(window.start, window.end, cut)}
              AND num <= {top}{channel}
            UNION ALL
            SELECT raw.ch, known.num FROM raw JOIN known ON raw.c = known.customer_id
        ){" GROUP BY ch" if by_channel else ""}"""
    return f"""
WITH raw AS ({messages}), known AS ({known}), per_channel AS ({per_channel})
SELECT grouped, ch, sum(n) FROM (
    (SELECT ch IS NOT NULL AS grouped, ch, groupBitmapOr(b) AS n FROM per_channel {grouped})
    UNION ALL
    (SELECT ch IS NOT NULL, ch, uniqExact(c) FROM raw
     WHERE c NOT IN (SELECT customer_id FROM known) {grouped})
)
GROUP BY grouped, ch
"""


def _session_sums(window: Window, folded: int, pending: bool, channel: str, in_segment: str) -> str:
    """Per channel: the sessions that start in the window, their total duration (µs)
    and messages.

    As of the watermark ``{folded}``: from ``session_slots`` for the slots no edge
    cuts, and ``session_starts`` for the rest; plus how the messages ingested since
    change them (if the tenant has any: ``pending``). From the events when nothing
    is folded yet (on a server) or a segment filters the customers.
    """
    in_window = f"first_ts BETWEEN {_LO} AND {_HI}{channel}"
    if in_segment or not folded:
        return f"""SELECT channel, count(), sum({sql.us("last_ts")} - {sql.us("first_ts")}),
                sum(size)
            FROM ({SESSIONS}) WHERE {in_window}{in_segment} GROUP BY channel"""
    signed = f"""channel, toInt64(sign) AS n,
        sign * ({sql.us("last_ts")} - {sql.us("first_ts")}) AS duration_us,
        sign * toInt64(size) AS messages"""
    of_folds = "tenant = {tenant:String} AND fold <= {folded:Int64}"
    cut = sql.cut_slots([window])
    parts = [
        f"""SELECT channel, sessions AS n, duration_us AS d, messages AS m FROM session_slots
        WHERE {of_folds} AND {sql.whole_slots(window.start, window.end, cut)}{channel}"""
    ]
    if cut:
        parts.append(
            f"SELECT {signed} FROM session_starts"
            f" WHERE {of_folds} AND {in_window} AND ({sql.in_slots('first_ts', cut)})"
        )
    if pending:
        parts.append(
            f"SELECT {signed} FROM ({session_changes('{folded:Int64}', None)}) WHERE {in_window}"
        )
    return f"""SELECT channel, sum(n), sum(d), sum(m)
        FROM ({" UNION ALL ".join(parts)})
        GROUP BY channel HAVING sum(n) != 0"""


def _facts(tables: list[pa.Table], *, by_channel: bool) -> CustomerFacts:
    """One window's facts from the results of its ``_statements``."""
    firsts, active, sessions, feedback = (sql.rows(t) for t in tables)
    ((known, new),) = firsts
    out = CustomerFacts(known=known, new=new)

    def per(ch: str) -> ChannelFacts:
        return out.by_channel.setdefault(ch, ChannelFacts())

    def targets(ch: Any) -> tuple[ChannelFacts, ...]:
        return (out.total, per(ch)) if by_channel and ch is not None else (out.total,)

    for grouped, ch, n in active:
        if grouped == 0:
            out.total.active = n
        elif by_channel and ch is not None:
            per(ch).active = n
    for ch, n, dur_us, size in sessions:
        for target in targets(ch):
            target.sessions += n
            target.session_us += dur_us or 0
            target.session_messages += size or 0
    for ch, csat_sum, csat_n, answers, promoters, detractors in feedback:
        for target in targets(ch):
            target.csat_sum += csat_sum or 0
            target.csat_count += csat_n
            target.nps_answers += answers
            target.promoters += promoters
            target.detractors += detractors
    return out


# ------------------------------------------------------------------- journeys

#: A step event of step ``s`` (inside a lambda over a journey's events ``e``: ts, type,
#: step, step name).
_STEP_S = "e.2 = 'journey.step' AND e.3 = s"
#: The first event after reaching step ``s`` that is not itself of that step.
_NEXT = f"e.1 > arrayFirst(e -> {_STEP_S}, evs).1 AND NOT ({_STEP_S})"
#: Whether event ``e`` (as ``schema.JOURNEY_EVENT``) is a step, a completion, a drop.
_IS = {k: f"e.3 = 'journey.{k}'" for k in ("step", "completed", "dropped")}


def journeys_sql(where: str) -> str:
    """The journeys of ``{tenant}`` whose states match ``where`` (on ``journeys_state``):
    each with its type (its earliest event's that has one), first step, completion,
    highest step, drop reasons, and the steps it reached (each: when first, the time
    to the journey's next event, the step's latest name and that name's time,
    whether the step before was reached, and whether the step after was not),
    worked out from the journey's events in time order (one pass, arrays)."""

    def first_ts(kind: str) -> str:
        return f"if(arrayExists(e -> {_IS[kind]}, xs), arrayFirst(e -> {_IS[kind]}, xs).2, NULL)"

    steps_of = f"arrayFilter(e -> {_IS['step']} AND e.5 IS NOT NULL, xs)"
    return f"""
SELECT journey_id, journey_type, first_step, completed, top_step, reasons,
    arrayMap(s -> (
        s,
        arrayFirst(e -> {_STEP_S}, evs).1,
        if(arrayExists(e -> {_NEXT}, evs),
           {sql.us(f"arrayFirst(e -> {_NEXT}, evs).1")}
               - {sql.us(f"arrayFirst(e -> {_STEP_S}, evs).1")},
           NULL),
        arrayLast(e -> {_STEP_S} AND e.4 IS NOT NULL, evs).4,
        arrayLast(e -> {_STEP_S}, evs).1,
        toUInt8(has(reached, s - 1)),
        toUInt8(NOT has(reached, s + 1))
    ), reached) AS steps
FROM (
    SELECT *, arraySort(arrayDistinct(arrayMap(e -> assumeNotNull(e.3),
        arrayFilter(e -> e.2 = 'journey.step' AND e.3 IS NOT NULL, evs)))) AS reached
    FROM (
    SELECT journey_id, arrayFirst(e -> e.4 IS NOT NULL, xs).4 AS journey_type,
        {first_ts("step")} AS first_step, {first_ts("completed")} AS completed,
        if(empty({steps_of}), NULL, arrayMax(arrayMap(e -> assumeNotNull(e.5), {steps_of})))
            AS top_step,
        arraySort(arrayMap(e -> assumeNotNull(e.7),
            arrayFilter(e -> {_IS["dropped"]} AND e.7 IS NOT NULL, xs))) AS reasons,
        arrayMap(e -> (e.2, e.3, e.5, e.6), xs) AS evs
    FROM (
        SELECT journey_id, arraySort(e -> (e.2, e.1), groupUniqArrayMerge(evs)) AS xs
        FROM journeys_state WHERE tenant = {{tenant:String}} AND {where}
        GROUP BY journey_id
    )
    )
)
"""


_PENDING_JOURNEYS = sql.pending_ids(JOURNEY_TYPES, "journey_id")


def _journeys(folded: int, pending: bool, where: str, candidates: str = "1") -> str:
    """``{tenant}``'s journeys matching ``where`` (on their facts): the folded ones,
    except those with events after the watermark ``{folded}`` (if the tenant has any:
    ``pending``), which are worked out from their states; on a server (nothing
    folded), all are, of those whose states match ``candidates``."""
    if not folded:
        return f"SELECT * FROM ({journeys_sql(candidates)}) WHERE {where}"
    rows = f"""SELECT journey_id, journey_type, first_step, completed, top_step, reasons, steps
        FROM journeys FINAL WHERE tenant = {{tenant:String}} AND {where}"""
    if not pending:
        return rows
    return f"""{rows} AND journey_id NOT IN ({_PENDING_JOURNEYS})
        UNION ALL
        SELECT * FROM ({journeys_sql(f"journey_id IN ({_PENDING_JOURNEYS})")}) WHERE {where}"""


def journey_types(transport: Transport, tenant: str, folded: int, pending: bool) -> list[str]:
    """The types of the tenant's journeys that have a step."""
    kinds = _journeys(folded, pending, "first_step IS NOT NULL AND journey_type IS NOT NULL")
    table = transport.query(
        f"SELECT DISTINCT journey_type FROM ({kinds}) ORDER BY journey_type",
        {"tenant": tenant, "folded": folded},
    )
    return [str(t) for t in table.column(0).to_pylist()]


def journey_sums(source: str, by: str = "") -> str:
    """Each journey of ``source`` (rows of ``journeys``, with the columns ``by``) as
    sums of one journey: how many (1), completed, the time from first step to
    completion (µs); per step reached (as ``schema.JOURNEY_STEP_SUMS``), its name and
    that name's time, reached (1), whether the step before was reached too, whether
    the step after was not (a drop-off), and the time to the journey's next event
    (µs; and whether it has one); and its drop reasons (the step after its highest
    one reached, the reason, 1). Sums of many journeys (``journey_slots``) are these
    added up (``add_up_journeys``)."""
    key = f"{by}, " if by else ""
    return f"""SELECT {key}toInt64(1) AS journeys, toInt64(completed IS NOT NULL) AS completions,
        toInt64(ifNull({sql.us("completed")} - {sql.us("first_step")}, 0)) AS completion_us,
        arrayMap(s -> (s.1, s.4, s.5, toInt64(1), toInt64(s.6), toInt64(s.7), ifNull(s.3, 0),
                       toInt64(s.3 IS NOT NULL)), steps) AS steps,
        arrayMap(r -> (toInt64(top_step + 1), r, toInt64(1)), reasons) AS reasons
    FROM {source}"""


def steps_added(x: str, at: int) -> list[str]:
    """A step's sums over many rows of sums of journeys, from tuples ``x`` holding the
    sums of a step (as ``schema.JOURNEY_STEP_SUMS`` without the step) from element
    ``at`` on: its latest name (a name's time is when a journey last reached the
    step), that time, and the counts and times added."""
    name, when = f"{x}.{at}", f"{x}.{at + 1}"
    return [
        f"argMax({name}, {when})",
        f"maxIf({when}, {name} IS NOT NULL)",
        *(f"sum({x}.{i})" for i in range(at + 2, at + 7)),
    ]


def add_up_journeys(sums: str, by: str) -> str:
    """Rows of sums of journeys (as ``journey_sums``) added up per ``by``."""
    added = steps_added("s", 2)
    return f"""
SELECT * FROM (
    SELECT {by}, sum(journeys) AS journeys, sum(completions) AS completions,
        sum(completion_us) AS completion_us
    FROM ({sums}) GROUP BY {by}
) t
LEFT JOIN (
    SELECT {by}, groupArray((step, {", ".join(f"x{i}" for i in range(len(added)))})) AS steps
    FROM (
        SELECT {by}, s.1 AS step, {", ".join(f"{e} AS x{i}" for i, e in enumerate(added))}
        FROM ({sums}) ARRAY JOIN steps AS s GROUP BY {by}, step
    ) GROUP BY {by}
) s USING ({by})
LEFT JOIN (
    SELECT {by}, groupArray((k, reason, n)) AS reasons
    FROM (
        SELECT {by}, r.1 AS k, r.2 AS reason, sum(r.3) AS n
        FROM ({sums}) ARRAY JOIN reasons AS r GROUP BY {by}, k, reason
    ) GROUP BY {by}
) r USING ({by})
"""


def journeys(transport: Transport, q: JourneyQuery, folded: int, pending: bool) -> JourneyFacts:
    """As of the watermark ``folded``, when none of the tenant's events wait for a
    fold: the sums the fold keeps per slot of the first step (``journey_slots``) for
    the slots the window covers whole, with those of the journeys that began in the
    part of a slot it covers. Otherwise the journeys are added up themselves."""
    params = {
        "tenant": q.tenant,
        "jtype": q.journey_type,
        "folded": folded,
        **sql.window_params(q.window),
    }
    # A journey whose first step is in the window has a step event in it.
    in_window = sql.tenant_events(
        "('journey.step')", "journey_id", f"ts BETWEEN {_LO} AND {_HI} AND journey_id IS NOT NULL"
    )
    of_type = f"journey_type = {{jtype:String}} AND first_step BETWEEN {_LO} AND {_HI}"
    by_slot = bool(folded) and not pending
    if by_slot:
        cut = sql.cut_slots([q.window])
        of_type += f" AND ({sql.in_slots('first_step', cut)})"
    chosen = _journeys(folded, pending, of_type, f"journey_id IN ({in_window})")
    sums = [journey_sums(f"({chosen})")]
    if by_slot:
        sums.append(
            f"""SELECT journeys, completions, completion_us, steps, reasons
            FROM journey_slots FINAL
            WHERE tenant = {{tenant:String}} AND journey_type = {{jtype:String}}
              AND {sql.whole_slots(q.window.start, q.window.end, cut)}"""
        )
    # One pass over the rows of ``sums``, each taken apart into rows of its totals
    # (part 0), its steps (part 1) and its drop reasons (part 2), added up per part,
    # step and reason: fewer statements to plan, which costs more than the adding.
    name, _, *counts = steps_added("x", 3)
    no_time, no_step = "toDateTime64(0, 6, 'UTC')", "CAST(NULL, 'Nullable(Int64)')"
    of_reasons = (
        f""", arrayMap(r -> (toUInt8(2), r.1, toNullable(r.2), {no_time}, r.3, toInt64(0),
            toInt64(0), toInt64(0), toInt64(0)), reasons)"""
        if q.reasons
        else ""
    )
    rows = sql.rows(
        transport.query(
            f"""SELECT x.1 AS part, x.2 AS step, {name} AS name, {", ".join(counts)}
            FROM ({" UNION ALL ".join(sums)})
            ARRAY JOIN arrayConcat(
                [(toUInt8(0), {no_step}, CAST(NULL, 'Nullable(String)'), {no_time}, journeys,
                  completions, completion_us, toInt64(0), toInt64(0))],
                arrayMap(s -> (toUInt8(1), toNullable(toInt64(s.1)), s.2, s.3, s.4, s.5, s.6,
                    s.7, s.8), steps){of_reasons}) AS x
            GROUP BY part, step, if(part = 2, x.3, NULL)
            ORDER BY part, step, sum(x.5) DESC, name""",
            params,
        )
    )
    # No row of totals: no journeys.
    ((total, completed, completed_us),) = [r[3:6] for r in rows if r[0] == 0] or [(0, 0, 0)]
    return JourneyFacts(
        total,
        completed,
        completed_us,
        tuple(StepFacts(*r[1:]) for r in rows if r[0] == 1),
        tuple((k, reason, n) for part, k, reason, n, *_ in rows if part == 2),
    )
