"""Report files: JSON, CSV (UTF-8 with BOM, for spreadsheets) and PDF with charts."""

from __future__ import annotations

import csv
import io
import time
from datetime import datetime
from multiprocessing import get_context
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any

import orjson

from kaie_analytics.analytics.reports import ReportRequest
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


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if value % 1 else f"{value:.0f}"
    return str(value)


def write_pdf(
    path: Path,
    meta: dict[str, Any],
    req: ReportRequest,
    rows: list[dict[str, Any]],
    series: tuple[str, list[dict[str, Any]]],
) -> None:
    """A document a manager can read: title, description, period, table, one chart per metric."""
    import matplotlib

    matplotlib.use("Agg")
    from xml.sax.saxutils import escape

    import matplotlib.pyplot as plt
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import cm
    from reportlab.platypus import (
        Image,
        LongTable,
        PageBreak,
        Paragraph,
        SimpleDocTemplate,
        Spacer,
        TableStyle,
    )

    styles = getSampleStyleSheet()
    doc = SimpleDocTemplate(
        str(path), pagesize=landscape(A4), title=req.name, author="kaie-analytics",
        leftMargin=1.5 * cm, rightMargin=1.5 * cm, topMargin=1.5 * cm, bottomMargin=1.5 * cm,
    )  # fmt: skip
    period = meta["period"]
    story: list[Any] = [Paragraph(escape(req.name), styles["Title"])]
    if req.description:
        story.append(Paragraph(escape(req.description), styles["Normal"]))
    story += [
        Spacer(1, 0.3 * cm),
        Paragraph(
            f"Period: {period['start_date']} to {period['end_date']} ({escape(meta['timezone'])})",
            styles["Normal"],
        ),
        Paragraph(f"Generated at: {meta['generated_at']}", styles["Normal"]),
        Paragraph(f"Report ID: {meta['report_id']} — {meta['row_count']} rows", styles["Normal"]),
        Spacer(1, 0.5 * cm),
    ]
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
    data = [cols] + [[_fmt(r.get(c)) for c in cols] for r in rows[:MAX_PDF_ROWS]]
    table = LongTable(data, repeatRows=1)
    table.setStyle(
        TableStyle(
            [
                ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#1f3b63")),
                ("TEXTCOLOR", (0, 0), (-1, 0), colors.white),
                ("FONTSIZE", (0, 0), (-1, -1), 7),
                ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
                ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#eef2f7")]),
                ("ALIGN", (len(cols) - len(req.metrics), 1), (-1, -1), "RIGHT"),
            ]
        )
    )
    story += [table, PageBreak(), Paragraph("Metrics over time", styles["Heading1"])]
    granularity, points = series
    labels = [p["date"] for p in points]
    for metric in req.metrics:
        fig, ax = plt.subplots(figsize=(10, 3))
        values = [p.get(metric) for p in points]
        xs = range(len(labels))
        ax.plot(
            [x for x, v in zip(xs, values, strict=True) if v is not None],
            [v for v in values if v is not None],
            marker="o", markersize=2, linewidth=1.2, color="#1f77b4",
        )  # fmt: skip
        ax.set_title(f"{metric} per {granularity}")
        step = max(1, len(labels) // 12)
        ax.set_xticks(list(xs)[::step])
        ax.set_xticklabels(labels[::step], rotation=30, ha="right", fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=110)
        plt.close(fig)
        png.seek(0)
        story += [Image(png, width=25 * cm, height=7.5 * cm), Spacer(1, 0.3 * cm)]
    doc.build(story)


def _pdf_child(
    done: Connection,
    path: str,
    meta: dict[str, Any],
    req: ReportRequest,
    rows: list[dict[str, Any]],
    series: tuple[str, list[dict[str, Any]]],
) -> None:
    try:
        write_pdf(Path(path), meta, req, rows, series)
        done.send(None)
    except BaseException as exc:
        done.send(f"{type(exc).__name__}: {exc}")


def write_pdf_in_child(
    path: Path,
    meta: dict[str, Any],
    req: ReportRequest,
    rows: list[dict[str, Any]],
    series: tuple[str, list[dict[str, Any]]],
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
        args=(sender, str(path), meta, req, rows[:MAX_PDF_ROWS], series),  # the rest stay here
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
