"""Report files: JSON, CSV (UTF-8 with BOM, for spreadsheets) and PDF with charts."""

from __future__ import annotations

import csv
import io
import time
from datetime import datetime
from datetime import time as time_of_day
from multiprocessing import get_context
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any

import orjson

from kaie_analytics.analytics.periods import Period
from kaie_analytics.analytics.reports import SUMMARY_METRICS, ChartData, ReportRequest
from kaie_analytics.jobs.exports import JobTimeout

#: A PDF shows at most this many table rows (the CSV and JSON downloads hold them all),
#: so that laying it out takes a bounded time whatever the report's size.
MAX_PDF_ROWS = 500
CONTENT_TYPES = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "pdf": "application/pdf",
}


def report_metadata(
    job_id: str, req: ReportRequest, generated: datetime, rows: int
) -> dict[str, Any]:
    return {
        "report_id": job_id,
        "name": req.name,
        "description": req.description,
        "period": req.period.render(),
        "timezone": req.period.tz.key,
        "generated_at": generated.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "metrics": list(req.metrics),
        "group_by": list(req.group_by),
        "granularity": req.granularity,
        "filters": {"workflow_ids": list(req.workflow_ids), "channels": list(req.channels)},
        "row_count": rows,
    }


def columns_of(req: ReportRequest) -> list[str]:
    return [*req.group_by, *(["date"] if req.granularity else []), *req.metrics]


def write_json(out: IO[bytes], meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    out.write(orjson.dumps({**meta, "rows": rows}))


def write_csv(out: IO[bytes], req: ReportRequest, rows: list[dict[str, Any]]) -> None:
    text = io.TextIOWrapper(out, encoding="utf-8-sig", newline="")
    writer = csv.writer(text)
    cols = columns_of(req)
    writer.writerow(cols)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in cols])
    text.flush()
    text.detach()


#: What people call each column, and how its values read (rates as percentages,
#: durations in seconds).
LABELS = {
    "workflow_id": "Workflow", "channel": "Channel", "customer_segment": "Segment",
    "date": "Period", "total_executions": "Executions", "successful_executions": "Successful",
    "failed_executions": "Failed", "success_rate": "Success rate",
    "average_duration_ms": "Average duration", "median_duration_ms": "Median duration",
    "p95_duration_ms": "p95 duration", "total_messages_sent": "Messages sent",
    "total_messages_received": "Messages received", "unique_customers": "Customers",
    "customer_satisfaction": "Satisfaction (1–5)",
}  # fmt: skip
_UNITS = {"success_rate": "%", "average_duration_ms": "seconds", "median_duration_ms": "seconds",
          "p95_duration_ms": "seconds", "customer_satisfaction": "score, 1–5"}  # fmt: skip


def _is_duration(column: str) -> bool:
    return column.endswith("_ms")


def human(column: str, value: Any) -> str:
    """A value as the PDF shows it."""
    if value is None:
        return "—"
    if column == "success_rate":
        return f"{value * 100:.1f}%"
    if _is_duration(column):
        return f"{value / 1000:,.1f} s"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _plotted(column: str, value: Any) -> Any:
    """A value on a chart's axis (its unit in ``_UNITS``)."""
    if value is None:
        return None
    if column == "success_rate":
        return value * 100
    return value / 1000 if _is_duration(column) else value


def change(column: str, now: Any, before: Any) -> str:
    """How a summary figure moved against the previous period."""
    if now is None or before is None:
        return "no earlier figure" if now is not None else "—"
    if column == "success_rate":
        return f"{(now - before) * 100:+.1f} points"
    if before == 0:
        return "new" if now else "no change"
    return f"{(now - before) / before * 100:+.1f}%"


def human_period(period: Period) -> str:
    """``1–31 January 2024, UTC``: the period's days, in its time zone."""
    start = period.start.astimezone(period.tz)
    end = period.end.astimezone(period.tz)
    whole_days = start.time() == time_of_day.min and end.time() >= time_of_day(23, 59, 59)
    if not whole_days:
        fmt = "%-d %B %Y, %H:%M"
        return f"{start.strftime(fmt)} – {end.strftime(fmt)}, {period.tz.key}"
    if (start.year, start.month) == (end.year, end.month):
        days = f"{start.day}–{end.day}" if start.day != end.day else f"{start.day}"
        text = f"{days} {start.strftime('%B %Y')}"
    elif start.year == end.year:
        text = f"{start.strftime('%-d %B')} – {end.strftime('%-d %B %Y')}"
    else:
        text = f"{start.strftime('%-d %B %Y')} – {end.strftime('%-d %B %Y')}"
    return f"{text}, {period.tz.key}"


_PER = {"hour": "hour", "day": "day", "week": "week", "month": "month"}


def write_pdf(
    path: Path,
    meta: dict[str, Any],
    req: ReportRequest,
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    charts: ChartData,
) -> None:
    """A document a manager forwards: a first page with the period and the summary
    figures against the previous period, a chart per metric with a line per group,
    then the table; a header and "page N of M" on every page."""
    import matplotlib

    matplotlib.use("Agg")
    from xml.sax.saxutils import escape

    import matplotlib.pyplot as plt
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import cm
    from reportlab.pdfgen.canvas import Canvas
    from reportlab.platypus import (
        Image,
        LongTable,
        PageBreak,
        Paragraph,
        SimpleDocTemplate,
        Spacer,
        Table,
        TableStyle,
    )

    styles = getSampleStyleSheet()
    period_text = human_period(req.period)
    page_width, page_height = landscape(A4)

    class NumberedCanvas(Canvas):
        """Draws each page's header and footer once the number of pages is known."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._pages: list[dict[str, Any]] = []

        def showPage(self) -> None:
            self._pages.append(dict(self.__dict__))
            self._startPage()

        def save(self) -> None:
            for number, state in enumerate(self._pages, start=1):
                self.__dict__.update(state)
                self.setFont("Helvetica", 8)
                self.setFillColor(colors.HexColor("#5b6475"))
                self.drawString(1.5 * cm, page_height - 1 * cm, f"{req.name} — {period_text}")
                self.drawRightString(page_width - 1.5 * cm, 0.8 * cm,
                                     f"Page {number} of {len(self._pages)}")  # fmt: skip
                self.drawString(1.5 * cm, 0.8 * cm, f"kaie-analytics · {meta['report_id']}")
                super().showPage()
            super().save()

    doc = SimpleDocTemplate(
        str(path), pagesize=landscape(A4), title=req.name, author="kaie-analytics",
        subject=period_text, leftMargin=1.5 * cm, rightMargin=1.5 * cm, topMargin=1.6 * cm,
        bottomMargin=1.5 * cm,
    )  # fmt: skip
    grouping = " and ".join(LABELS[g].lower() for g in req.group_by)
    shape = ", ".join(filter(None, [
        f"grouped by {grouping}" if grouping else "",
        f"per {_PER[req.granularity]}" if req.granularity else "",
    ]))  # fmt: skip
    story: list[Any] = [Paragraph(escape(req.name), styles["Title"])]
    if req.description:
        story.append(Paragraph(escape(req.description), styles["Normal"]))
    story += [
        Spacer(1, 0.2 * cm),
        Paragraph(f"<b>{escape(period_text)}</b>" + (f" — {escape(shape)}" if shape else ""),
                  styles["Normal"]),
        Paragraph(f"Generated {escape(meta['generated_at'])}", styles["Normal"]),
        Spacer(1, 0.5 * cm),
    ]  # fmt: skip
    now, before = summary["current"], summary["previous"]
    previous_text = human_period(req.period.previous())
    figures = [["", "This period", "Previous period", "Change"]] + [
        [LABELS[m], human(m, now.get(m)), human(m, before.get(m)), change(m, now.get(m), before.get(m))]
        for m in SUMMARY_METRICS
    ]  # fmt: skip
    summary_table = Table(figures, colWidths=[5 * cm, 4 * cm, 4 * cm, 4 * cm], hAlign="LEFT")
    summary_table.setStyle(TableStyle([
        ("FONTSIZE", (0, 0), (-1, -1), 11), ("FONTNAME", (0, 0), (-1, 0), "Helvetica-Bold"),
        ("FONTNAME", (1, 1), (1, -1), "Helvetica-Bold"), ("ALIGN", (1, 0), (-1, -1), "RIGHT"),
        ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.HexColor("#dde1e8")),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 6), ("TOPPADDING", (0, 0), (-1, -1), 6),
    ]))  # fmt: skip
    story += [
        Paragraph("Summary", styles["Heading2"]), summary_table, Spacer(1, 0.2 * cm),
        Paragraph(f"Previous period: {escape(previous_text)}.", styles["Italic"]),
        PageBreak(), Paragraph("Over time", styles["Heading1"]),
    ]  # fmt: skip
    labels = charts.labels
    xs = list(range(len(labels)))
    step = max(1, len(labels) // 12)
    zone = req.period.tz.key
    for metric in req.metrics:
        fig, ax = plt.subplots(figsize=(10, 3.2))
        for name, values in charts.lines[metric]:
            points = [
                (x, _plotted(metric, v)) for x, v in zip(xs, values, strict=True) if v is not None
            ]
            ax.plot([x for x, _ in points], [y for _, y in points], marker="o", markersize=2,
                    linewidth=1.4, label=name,
                    linestyle="--" if name in ("other", "all groups") else "-")  # fmt: skip
        ax.set_title(f"{LABELS[metric]} per {_PER[charts.granularity]}")
        ax.set_ylabel(_UNITS.get(metric, LABELS[metric].lower()))
        ax.set_xlabel(f"{_PER[charts.granularity].capitalize()} ({zone})")
        ax.set_xticks(xs[::step])
        ax.set_xticklabels(labels[::step], rotation=30, ha="right", fontsize=7)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if len(charts.lines[metric]) > 1:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=110)
        plt.close(fig)
        png.seek(0)
        story += [Image(png, width=25 * cm, height=8 * cm), Spacer(1, 0.3 * cm)]
    story += [PageBreak(), Paragraph("Table", styles["Heading1"])]
    total = meta["row_count"]  # ``rows`` may hold only the first MAX_PDF_ROWS
    if total > MAX_PDF_ROWS:
        story += [
            Paragraph(
                f"The table shows the first {MAX_PDF_ROWS:,} of {total:,} rows;"
                " the CSV or JSON download of this report holds every row.",
                styles["Italic"],
            ),
            Spacer(1, 0.3 * cm),
        ]
    cols = columns_of(req)
    data = [[LABELS[c] for c in cols]] + [
        [human(c, r.get(c)) for c in cols] for r in rows[:MAX_PDF_ROWS]
    ]
    table = LongTable(data, repeatRows=1)
    table.setStyle(
        TableStyle(
            [
                ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#1f3b63")),
                ("TEXTCOLOR", (0, 0), (-1, 0), colors.white),
                ("FONTSIZE", (0, 0), (-1, -1), 8),
                ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
                ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#eef2f7")]),
                ("ALIGN", (len(cols) - len(req.metrics), 0), (-1, -1), "RIGHT"),
            ]
        )
    )
    story.append(table)
    doc.build(story, canvasmaker=NumberedCanvas)


def _pdf_child(
    done: Connection,
    path: str,
    meta: dict[str, Any],
    req: ReportRequest,
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    charts: ChartData,
) -> None:
    try:
        write_pdf(Path(path), meta, req, rows, summary, charts)
        done.send(None)
    except BaseException as exc:
        done.send(f"{type(exc).__name__}: {exc}")


def write_pdf_in_child(
    path: Path,
    meta: dict[str, Any],
    req: ReportRequest,
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    charts: ChartData,
    deadline: float,
) -> None:
    """``write_pdf`` in a child process, killed if it is not done by ``deadline``.

    Layout and charts are pure Python: in a child they hold neither the API's
    GIL nor a worker past the job's time limit.
    """
    ctx = get_context("spawn")  # never fork a process that runs DuckDB's threads
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(
        target=_pdf_child,
        args=(sender, str(path), meta, req, rows[:MAX_PDF_ROWS], summary, charts),  # the rest stay
        name="kaie-pdf",
        daemon=True,
    )
    child.start()
    sender.close()
    try:
        if not receiver.poll(max(0.0, deadline - time.monotonic())):
            raise JobTimeout("the report ran past its time limit (KAIE_JOB_TIME_LIMIT_S)")
        error = receiver.recv()
    except EOFError:
        error = f"the PDF renderer stopped unexpectedly (exit code {child.exitcode})"
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receiver.close()
    if error:
        raise RuntimeError(error)
