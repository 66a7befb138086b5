"""How ``scripts/spend`` shows a report: aligned 80-column tables, CSV, and PNG charts.

Every function here takes the JSON-ready dict of ``addon.spend_reports`` and touches no
database. Tables fit 80 columns: two spaces between columns, one if that makes them fit,
then the widest name columns are cut with an ellipsis. Token counts over 7 characters are
shown compactly (``12.3M``); money uses 2, 4 or 6 decimals depending on the largest amount
of its column. matplotlib is imported only when a chart is asked for (Agg, no pyplot).
"""

from __future__ import annotations

import csv
import io
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from addon.spend_reports import TOTAL_KEYS, month_number

WIDTH = 80
ELLIPSIS = "…"
MIX_MODELS = 8  # summary: models shown in the mix before "(other)"

# -- cells --------------------------------------------------------------------------------------


def money(value: Decimal | str | None) -> str:
    """For people: 6 decimals under $1, else 4 ('?' when unknown)."""
    if value is None:
        return "?"
    value = Decimal(value)
    places = Decimal("0.000001") if abs(value) < 1 else Decimal("0.0001")
    return f"{value.quantize(places, rounding=ROUND_HALF_UP):,}"


def money_column(values: Sequence[Decimal | str | None]) -> list[str]:
    """Amounts with one number of decimals: 2 when the largest is >= 100, 4 when >= 1, else 6;
    a non-zero amount those round to zero gets the decimals it needs to read non-zero (a paid
    call never reads as free beside a larger one)."""
    amounts = [None if v is None else Decimal(v) for v in values]
    largest = max((abs(a) for a in amounts if a is not None), default=Decimal(0))
    places = Decimal("0.01") if largest >= 100 else Decimal("0.0001") if largest >= 1 else Decimal("0.000001")
    return ["?" if a is None else _nonzero(a, places) for a in amounts]


def _nonzero(amount: Decimal, places: Decimal) -> str:
    """``amount`` to ``places``, or to as many more decimals (up to 10, the stored scale) as it
    takes not to read zero when it is not: 0.000027 beside 1.05 reads 0.000027, not 0.0000."""
    rounded = amount.quantize(places, rounding=ROUND_HALF_UP)
    while not rounded and amount and places > Decimal("1e-10"):
        places = places / 10
        rounded = amount.quantize(places, rounding=ROUND_HALF_UP)
    return f"{rounded:,f}"


UNPRICED_NOTE = "* calls with no known price are not in the cost (scripts/spend unpriced)"


def marked_cells(cells: Sequence[str], unpriced: Sequence[int]) -> list[str]:
    """``cells`` with each whose amount leaves out calls with no known price (``unpriced`` > 0)
    marked ``*``, the others padded to keep decimals aligned."""
    if not any(unpriced):
        return list(cells)
    return [cell + ("*" if n else " ") for cell, n in zip(cells, unpriced, strict=True)]


def unpriced_note(calls: int, what: str = "are not in the cost") -> list[str]:
    """The note under a table some of whose amounts are marked ``*`` (none when ``calls`` is 0)."""
    if not calls:
        return []
    return [f"* {calls:,} call(s) with no known price {what} (scripts/spend unpriced)"]


def marked_money_column(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The ``cost_usd`` of ``rows`` as ``money_column`` cells, a cost that leaves out calls with
    no known price (``unpriced_calls``) marked ``*``, the others padded to keep decimals aligned."""
    cells = [
        cell + "*" if row.get("unpriced_calls") and row["cost_usd"] is not None else cell
        for row, cell in zip(rows, money_column([row["cost_usd"] for row in rows]), strict=True)
    ]
    if any(cell.endswith("*") for cell in cells):
        cells = [cell if cell.endswith("*") else cell + " " for cell in cells]
    return cells


def count(value: int | float | None) -> str:
    """``1,234,567`` when it fits 7 characters, else ``12.3M`` / ``1.23B``; '-' when unknown."""
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        value = round(value)
    exact = f"{int(value):,}"
    if len(exact) <= 7:
        return exact
    for size, unit in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "k")):
        if abs(value) >= size:
            scaled = value / size
            text = (
                f"{scaled:.2f}"
                if abs(scaled) < 10
                else f"{scaled:.1f}"
                if abs(scaled) < 100
                else f"{scaled:.0f}"
            )
            return text + unit
    return exact  # pragma: no cover


def percent(value: float | None, places: int = 1) -> str:
    """0.1234 -> '12.3%' (halves round up); '-' when unknown."""
    if value is None:
        return "-"
    scaled = (Decimal(repr(value)) * 100).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return f"{scaled}%"


def cut(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, an ellipsis marking a cut."""
    if len(text) <= width:
        return text
    return text[: max(0, width - 1)] + ELLIPSIS if width > 0 else ""


def name(value: Any) -> str:
    """A group's name; ``(none)`` for a missing value."""
    return "(none)" if value is None or value == "" else str(value)


# -- tables -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Column:
    """A table column: numbers align right; ``shrink`` columns may be cut to fit the width."""

    header: str
    right: bool = True
    shrink: bool = False
    min_width: int = 6


def printable(text: str) -> str:
    """``text`` without control characters: model names and the like come from clients and
    providers, and an escape sequence must not reach the terminal."""
    return text if text.isprintable() else "".join(ch if ch.isprintable() else "?" for ch in text)


def table(
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    footer: Sequence[str] | None = None,
    width: int = WIDTH,
) -> list[str]:
    """Aligned lines (no trailing spaces), at most ``width`` wide when the shrinkable columns allow."""
    rows = [[printable(cell) for cell in row] for row in rows]
    footer = None if footer is None else [printable(cell) for cell in footer]
    every = [*rows, *([footer] if footer is not None else [])]
    widths = [max([len(c.header), *(len(r[i]) for r in every)]) for i, c in enumerate(columns)]

    def total(gap: int) -> int:
        return sum(widths) + gap * (len(widths) - 1)

    gap = 2 if total(2) <= width else 1
    while total(gap) > width:
        candidates = [i for i, c in enumerate(columns) if c.shrink and widths[i] > c.min_width]
        if not candidates:
            break
        widest = max(candidates, key=lambda i: (widths[i], -i))
        widths[widest] -= 1

    def line(cells: Sequence[str]) -> str:
        out = []
        for cell, col, w in zip(cells, columns, widths, strict=True):
            text = cut(cell, w)  # cells are printable (``printable``): widths count characters
            out.append(text.rjust(w) if col.right else text.ljust(w))
        return (" " * gap).join(out).rstrip()

    lines = [line([c.header for c in columns]), *(line(r) for r in rows)]
    if footer is not None:
        lines.append("-" * total(gap))
        lines.append(line(footer))
    return lines


def csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """RFC 4180 CSV with a header line (None is an empty field, a bool is true/false)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else str(v).lower() if isinstance(v, bool) else v for v in row])
    return buffer.getvalue()


def _range_line(report: Mapping[str, Any]) -> str:
    """``2026-11-01 .. 2026-11-07 UTC`` (whole days, the last included), ``since ...``, ``all time``."""
    start, end = report["range"]["from"], report["range"]["to"]

    def short(ts: str, *, last: bool = False) -> str:
        when = datetime.fromisoformat(ts)
        if when.time() != time(0):
            return when.strftime("%Y-%m-%d %H:%M")
        return (when - timedelta(days=1) if last else when).strftime("%Y-%m-%d")

    if start is None and end is None:
        text = "all time"
    elif end is None:
        text = f"since {short(start)} UTC"
    elif start is None:
        text = f"until {short(end, last=True)} UTC"
    else:
        text = f"{short(start)} .. {short(end, last=True)} UTC"
    filters = ", ".join(f"{k}={'|'.join(v)}" for k, v in report["filters"].items() if v)
    return text + (f"; {filters}" if filters else "")


def _head(title: str, report: Mapping[str, Any]) -> list[str]:
    """The title and the range (with filters): one line when it fits, else two."""
    line = f"{title}, {_range_line(report)}"
    return [line] if len(line) <= WIDTH else [title, _range_line(report)]


def _cost_cell(total: Mapping[str, Any], text: str) -> str:
    return text + "*" if total.get("unpriced_calls") and total.get("cost_usd") is not None else text


def _notes(total: Mapping[str, Any]) -> list[str]:
    notes = []
    if total.get("unpriced_calls"):
        notes.append(f"* {total['unpriced_calls']:,} call(s) with no known price are not in the cost")
    if total.get("no_usage_calls"):
        notes.append(
            f"{total['no_usage_calls']:,} call(s) without usage (aborted or unreadable), not in the cost"
        )
    if total.get("refused_calls"):
        notes.append(
            f"{total['refused_calls']:,} call(s) refused by policy (blocked, over budget, rate limited)"
        )
    return notes


# -- session ------------------------------------------------------------------------------------

_HEADERS = ("calls", "input", "cached", "cache-w", "output", "reason", "cost $")


def _cells(row: Mapping[str, Any], cost: str) -> list[str]:
    """A row's cells; ``cost`` its cell of the table's ``money_column`` (one number of decimals)."""
    if row["cost_usd"] is not None and row["unpriced_calls"]:
        cost += "*"  # some calls of the group have no known price
    return [
        f"{row['calls']:,}",
        f"{row['input_tokens']:,}",
        f"{row['cache_read_tokens']:,}",
        f"{row['cache_write_tokens']:,}",
        f"{row['output_tokens']:,}",
        f"{row['reasoning_tokens']:,}",
        cost,
    ]


def _table(rows: Sequence[Mapping[str, Any]], total: Mapping[str, Any]) -> list[list[str]]:
    """The cells of ``rows`` then ``total``, their costs one ``money_column`` (a paid row of
    $0.0000004 beside $0.0035 reads 0.0000004, not 0.000000)."""
    costs = money_column([row["cost_usd"] for row in [*rows, total]])
    return [_cells(row, cost) for row, cost in zip([*rows, total], costs, strict=True)]


def _session_line(session: Mapping[str, Any]) -> str:
    started = (session["started_at"] or "?")[:19].replace("T", " ")
    if session["ended_at"]:
        state = f"ended {session['ended_at'][:19].replace('T', ' ')} UTC"
    elif _alive(session):
        state = "running"
    else:
        state = "not closed (running elsewhere, or it stopped abruptly)"
    return f"started {started} UTC, {state}"


def _alive(session: Mapping[str, Any]) -> bool:
    pid, host = session.get("pid"), session.get("hostname")
    if not pid or host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _session_block(label: str, body: list[tuple[str, list[str]]], footer: tuple[str, list[str]]) -> list[str]:
    """The session's token table: names too long for the line go on a line of their own (never cut)."""
    if any(cells[-1].endswith("*") for _, cells in [*body, footer]):  # keep the decimals aligned
        for _, cells in [*body, footer]:
            cells[-1] = cells[-1] if cells[-1].endswith("*") else cells[-1] + " "
    widths = [
        max(len(_HEADERS[i]), *(len(cells[i]) for _, cells in [*body, footer])) for i in range(len(_HEADERS))
    ]
    longest = max(len(n) for n, _ in [*body, footer, (label, [])])

    def numbers_width(gap: int) -> int:
        return 2 + sum(widths) + gap * (len(widths) - 1)

    wrapped = longest + numbers_width(1) > WIDTH
    name_width = len(label) if wrapped else longest
    gap = 2 if name_width + numbers_width(2) <= WIDTH else 1

    def fmt(text: str, cells: Sequence[str]) -> str:
        numbers = (" " * gap).join(cell.rjust(width) for cell, width in zip(cells, widths, strict=True))
        return (text.ljust(name_width) + "  " + numbers).rstrip()

    lines = [fmt(label, _HEADERS)]
    for text, cells in body:
        if wrapped:
            lines.append(text)
            text = ""
        lines.append(fmt(text, cells))
    lines.append("-" * (name_width + numbers_width(gap)))
    lines.append(fmt(*footer))
    return lines


def render_session(report: Mapping[str, Any]) -> str:
    """A session's calls by model, then by environment, in 80 columns (unless the numbers alone are wider).

    Cost: ``?`` when no call of the row has a known price, a ``*`` suffix when some lack one.
    """
    lines = [f"database: {report['db']}"]
    session = report["session"]
    if session is None:
        lines.append("No calls recorded yet.")
        return "\n".join(lines) + "\n"
    lines.insert(0, f"session {session['session_id']}")
    lines.insert(1, _session_line(session))
    total = report["total"]
    if total["calls"] == 0:
        lines.append("No calls in this session yet.")
        return "\n".join(lines) + "\n"

    lines.append("")
    *cells, footer = _table(report["by_model"], total)
    lines += _session_block(
        "model",
        [(row["model"], c) for row, c in zip(report["by_model"], cells, strict=True)],
        ("total", footer),
    )
    environments = report.get("by_environment", [])
    if environments:
        lines.append("")
        *cells, footer = _table(environments, total)
        lines += _session_block(
            "environment",
            [(name(row["environment"]), c) for row, c in zip(environments, cells, strict=True)],
            ("total", footer),
        )
    if total["unpriced_calls"]:
        unknown = ", ".join(
            f"{row['model']} ({row['unpriced_calls']})" for row in report["by_model"] if row["unpriced_calls"]
        )
        lines.append("")
        lines.append(f"{total['unpriced_calls']:,} call(s) with no known price, not in the cost: {unknown}")
    if total["no_usage_calls"]:
        lines.append(
            f"{total['no_usage_calls']:,} call(s) without usage (aborted or unreadable), not in the cost"
        )
    if total.get("refused_calls"):
        lines.append(
            f"{total['refused_calls']:,} call(s) refused by policy (blocked, over budget, rate limited)"
        )
    return "\n".join(lines) + "\n"


def csv_session(report: Mapping[str, Any]) -> str:
    """One line per model and per environment (``group`` says which)."""
    rows = [["model", r["model"], *(r[k] for k in TOTAL_KEYS)] for r in report["by_model"]]
    rows += [["environment", r["environment"], *(r[k] for k in TOTAL_KEYS)] for r in report["by_environment"]]
    return csv_text(["group", "name", *TOTAL_KEYS], rows)


# -- sessions -----------------------------------------------------------------------------------


def render_sessions(report: Mapping[str, Any]) -> str:
    """The newest sessions, one a line."""
    sessions = report["sessions"]
    if not sessions:
        return f"database: {report['db']}\nNo sessions recorded yet.\n"
    costs = marked_money_column(sessions)

    def when(ts: str | None) -> str:
        return "-" if ts is None else ts[:16].replace("T", " ")

    rows = [
        [s["session_id"], when(s["started_at"]), when(s["ended_at"]), count(s["calls"]), cost]
        for s, cost in zip(sessions, costs, strict=True)
    ]
    columns = [
        Column("session", right=False, shrink=True, min_width=12),
        Column("started (UTC)", right=False),
        Column("ended (UTC)", right=False),
        Column("calls"),
        Column("cost $"),
    ]
    notes = ["", UNPRICED_NOTE] if any(cost.endswith("*") for cost in costs) else []
    return "\n".join([f"database: {report['db']}", "", *table(columns, rows), *notes]) + "\n"


def csv_sessions(report: Mapping[str, Any]) -> str:
    """One line per session."""
    keys = [
        "session_id",
        "started_at",
        "ended_at",
        "last_call_at",
        "hostname",
        "pid",
        "version",
        "calls",
        "cost_usd",
        "unpriced_calls",
    ]
    return csv_text(keys, [[s[k] for k in keys] for s in report["sessions"]])


# -- by -----------------------------------------------------------------------------------------

_DIMENSION_LABELS = {"env": "environment", "user": "user", "key": "key"}


def render_by(report: Mapping[str, Any]) -> str:
    """One line per group: calls, tokens, cost and share of the cost."""
    label = _DIMENSION_LABELS.get(report["dimension"], report["dimension"])
    head = _head(f"spend by {label}", report)
    rows_in = report["rows"]
    if not rows_in:
        return "\n".join([*head, "No calls in this range."]) + "\n"
    total = report["total"]
    costs = money_column([r["cost_usd"] for r in [*rows_in, total]])
    rows = []
    for r, cost in zip(rows_in, costs, strict=False):
        rows.append(
            [
                name(r["key"]),
                count(r["calls"]),
                count(r["input_tokens"]),
                count(r["cache_read_tokens"]),
                count(r["output_tokens"]),
                _cost_cell(r, cost),
                percent(r["share"]),
            ]
        )
    footer = [
        "total",
        count(total["calls"]),
        count(total["input_tokens"]),
        count(total["cache_read_tokens"]),
        count(total["output_tokens"]),
        _cost_cell(total, costs[-1]),
        "100.0%" if total["cost_usd"] not in (None, "0") else "-",
    ]
    columns = [
        Column(label, right=False, shrink=True),
        Column("calls"),
        Column("input"),
        Column("cached"),
        Column("output"),
        Column("cost $"),
        Column("share"),
    ]
    return "\n".join([*head, "", *table(columns, rows, footer), *_notes(total)]) + "\n"


def csv_by(report: Mapping[str, Any]) -> str:
    """One line per group (no total line)."""
    rows = [[r["key"], *(r[k] for k in TOTAL_KEYS), r["share"]] for r in report["rows"]]
    return csv_text([report["dimension"], *TOTAL_KEYS, "share"], rows)


# -- summary --------------------------------------------------------------------------------------


def render_summary(report: Mapping[str, Any]) -> str:
    """Environments side by side (one column each, plus total), in blocks that fit 80 columns."""
    head = _head("summary", report)
    envs = report["environments"]
    if not envs:
        return "\n".join([*head, "No calls in this range."]) + "\n"
    entries = [(name(e["environment"]), e) for e in envs]
    if len(envs) > 1:
        entries.append(("total", report["total"]))
    metric_rows: list[tuple[str, list[str]]] = [
        ("calls", [count(e["calls"]) for _, e in entries]),
        ("refused calls", [count(e["refused_calls"]) for _, e in entries]),
        (
            "total cost $",
            [
                _cost_cell(e, c)
                for (_, e), c in zip(entries, money_column([e["cost_usd"] for _, e in entries]), strict=True)
            ],
        ),
        ("cost per call $", money_column([e["cost_per_call_usd"] for _, e in entries])),
        ("avg input tokens", [count(e["avg_input_tokens"]) for _, e in entries]),
        ("avg output tokens", [count(e["avg_output_tokens"]) for _, e in entries]),
        ("cache hit rate", [percent(e["cache_hit_rate"]) for _, e in entries]),
    ]
    total_models = [m["model"] for m in report["total"]["models"]]
    shown = total_models[:MIX_MODELS]
    mix_rows: list[tuple[str, list[str]]] = []
    for model in shown:
        cells = []
        for _, e in entries:
            share = next((m["share"] for m in e["models"] if m["model"] == model), None)
            cells.append(percent(share, 0) if share else "-")
        mix_rows.append((model, cells))
    if len(total_models) > len(shown):
        cells = []
        for _, e in entries:
            rest = sum(m["share"] or 0 for m in e["models"] if m["model"] not in shown)
            cells.append(percent(rest, 0) if rest else "-")
        mix_rows.append(("(other models)", cells))

    label_width = min(
        22, max(len(label) for label, _ in [*metric_rows, *mix_rows, ("model mix, % of calls", [])])
    )
    col_widths = [
        min(14, max(len(env_name), *(len(cells[i]) for _, cells in [*metric_rows, *mix_rows])))
        for i, (env_name, _) in enumerate(entries)
    ]
    blocks: list[list[int]] = [[]]
    used = label_width
    for i, w in enumerate(col_widths):
        if blocks[-1] and used + 2 + w > WIDTH:
            blocks.append([])
            used = label_width
        blocks[-1].append(i)
        used += 2 + w

    lines = list(head)
    for block in blocks:

        def fmt(label: str, cells: Sequence[str], block: Sequence[int] = block) -> str:
            parts = [cut(label, label_width).ljust(label_width)]
            parts += [cut(cells[i], col_widths[i]).rjust(col_widths[i]) for i in block]
            return "  ".join(parts).rstrip()

        lines.append("")
        lines.append(fmt("", [entries[i][0] if i in block else "" for i in range(len(entries))]))
        lines += [fmt(label, cells) for label, cells in metric_rows]
        lines.append("model mix, % of calls")
        lines += [fmt("  " + label, cells) for label, cells in mix_rows]
    return "\n".join([*lines, *_notes(report["total"])]) + "\n"


_SUMMARY_KEYS = (
    *TOTAL_KEYS,
    "usage_calls",
    "avg_input_tokens",
    "avg_output_tokens",
    "cache_hit_rate",
    "cost_per_call_usd",
)


def csv_summary(report: Mapping[str, Any]) -> str:
    """One line per environment; ``model_mix`` is ``model:share`` pairs joined by ``;``."""
    rows = []
    for e in report["environments"]:
        mix = ";".join(f"{m['model']}:{m['share']}" for m in e["models"])
        rows.append([e["environment"], *(e[k] for k in _SUMMARY_KEYS), mix])
    return csv_text(["environment", *_SUMMARY_KEYS, "model_mix"], rows)


# -- ratio ----------------------------------------------------------------------------------------


def _one_to(month: Mapping[str, Any]) -> str:
    if month["one_to"] is None:
        return "-"
    one_to = month["one_to"]
    if 0 < one_to < 0.1:  # a little production cost is not none: 1:0.002, 1:0.000021, not 1:0.0
        return "1:" + format(Decimal(repr(one_to)), "f")
    return f"1:{one_to:.1f}"


def render_ratio(report: Mapping[str, Any]) -> str:
    """Per month: non-production and production cost, the ratio as 1:x, its change, flags."""
    head = [
        *_head("non-production : production cost per month", report),
        "healthy teams run 1:3 to 1:5; ! marks months worse than 1:2",
    ]
    months = report["months"]
    if not months:
        return "\n".join([*head, "No calls in this range."]) + "\n"
    nonprod = marked_cells(
        money_column([m["nonprod_cost_usd"] for m in months]),
        [m.get("nonprod_unpriced_calls", 0) for m in months],
    )
    prod = marked_cells(
        money_column([m["prod_cost_usd"] for m in months]), [m.get("prod_unpriced_calls", 0) for m in months]
    )
    rows = []
    for m, a, b in zip(months, nonprod, prod, strict=True):
        change = "" if m["change"] is None else f"{m['change']:+.2f}"
        rows.append([m["month"], a, b, _one_to(m), change, "! worse than 1:2" if m["flagged"] else ""])
    columns = [
        Column("month", right=False),
        Column("non-prod $"),
        Column("prod $"),
        Column("ratio"),
        Column("change"),
        Column("", right=False),
    ]
    trend = report["trend"]
    tail = unpriced_note(sum(m.get("unpriced_calls", 0) for m in months))
    if trend["direction"] is not None:
        tail.append(
            f"trend: {trend['direction']} ({trend['slope_per_month']:+.3f} non-prod $ per prod $ per month)"
        )
    return "\n".join([*head, "", *table(columns, rows), "", *tail]).rstrip("\n") + "\n"


def csv_ratio(report: Mapping[str, Any]) -> str:
    """One line per month."""
    keys = [
        "month",
        "nonprod_cost_usd",
        "prod_cost_usd",
        "nonprod_calls",
        "prod_calls",
        "ratio",
        "one_to",
        "flagged",
        "change",
        "nonprod_unpriced_calls",
        "prod_unpriced_calls",
        "unpriced_calls",
    ]
    return csv_text(keys, [[m[k] for k in keys] for m in report["months"]])


# -- models ---------------------------------------------------------------------------------------


def _reasons(row: Mapping[str, Any]) -> str:
    """``! not allowed, $10/M``: why a model is premium (its output price per million tokens)."""
    words = []
    if "not_allowed" in row["premium_reasons"]:
        words.append("not allowed")
    if "price" in row["premium_reasons"]:
        words.append(f"${row['output_usd_per_mtok']}/M")
    if not words:
        return ""
    return ("! " if row["flagged"] else "") + ", ".join(words)


def render_models(report: Mapping[str, Any]) -> str:
    """Model use per week (a heading each), environment and user; ! marks premium use outside production."""
    threshold = report["premium_usd_per_mtok"]
    rule = "not in the environment's allowlist" + (
        f", or output over ${threshold} per 1M tokens" if threshold is not None else ""
    )
    head = [*_head("model use by week, environment and user", report), f"premium: {rule}"]
    rows_in = report["rows"]
    if not rows_in:
        return "\n".join([*head, "No calls in this range."]) + "\n"
    costs = marked_money_column(rows_in)
    rows = [
        [name(r["environment"]), name(r["user"]), r["model"], count(r["calls"]), cost, _reasons(r)]
        for r, cost in zip(rows_in, costs, strict=True)
    ]
    columns = [
        Column("environment", right=False, shrink=True, min_width=7),
        Column("user", right=False, shrink=True, min_width=5),
        Column("model", right=False, shrink=True, min_width=8),
        Column("calls"),
        Column("cost $"),
        Column("premium", right=False, shrink=True, min_width=7),
    ]
    lines = table(columns, rows)
    body = [lines[0]]
    previous = None
    for r, line in zip(rows_in, lines[1:], strict=True):
        if r["week"] != previous:
            body.append(f"week of {r['week']}")
            previous = r["week"]
        body.append(line)
    flagged = report["flagged"]
    tail = [""]
    if flagged["calls"]:
        tail.append(f"premium calls outside production: {flagged['calls']:,}, ${money(flagged['cost_usd'])}")
        tail += [
            f"  {name(u['user'])}: {u['calls']:,} call(s), ${money(u['cost_usd'])}"
            for u in flagged["by_user"]
        ]
    else:
        tail.append("no premium calls outside production")
    if any(cost.endswith("*") for cost in costs):
        tail.append(UNPRICED_NOTE)
    return "\n".join([*head, "", *body, *tail]) + "\n"


_MODEL_KEYS = (
    "week",
    "environment",
    "user",
    "provider",
    "model",
    "calls",
    "refused_calls",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "unpriced_calls",
    "output_usd_per_mtok",
    "premium",
    "premium_reasons",
    "flagged",
)


def csv_models(report: Mapping[str, Any]) -> str:
    """One line per week, environment, user and model; ``premium_reasons`` joined by ``;``."""
    rows = [[";".join(r[k]) if k == "premium_reasons" else r[k] for k in _MODEL_KEYS] for r in report["rows"]]
    return csv_text(_MODEL_KEYS, rows)


# -- savings --------------------------------------------------------------------------------------


def render_savings(report: Mapping[str, Any]) -> str:
    """Per environment, then each model its rules change (indented): cost, what-if cost, saving."""
    head = _head("what-if: the same token-priced calls with each environment's downgrade targets", report)
    left_out = report.get("left_out") or {}
    videos = (
        [
            f"token-priced calls only: {left_out['video_jobs']:,} video job(s) "
            f"(${money(left_out['video_cost_usd'])}) are not in these totals"
        ]
        if left_out.get("video_jobs")
        else []
    )
    envs = report["environments"]
    if not envs:
        return "\n".join([*head, "No calls with usage in this range.", *videos]) + "\n"
    total = report["total"]
    entries: list[tuple[str, Mapping[str, Any]]] = []
    for e in envs:
        entries.append((name(e["environment"]), e))
        for m in e["models"]:
            if m["outcome"] == "downgrade":
                unknown = " (no price for it: no saving counted)" if m.get("target_unpriced") else ""
                entries.append((f"  {m['model']} -> {m['target']}{unknown}", m))
            elif m["outcome"] == "block" and m["calls"]:
                entries.append((f"  {m['model']}: would be blocked", m))
    amounts = [*(x for _, x in entries), total]
    cost = money_column([x["cost_usd"] for x in amounts])
    whatif = money_column([x["whatif_cost_usd"] for x in amounts])
    saved = money_column([x["savings_usd"] for x in amounts])

    def share(x: Mapping[str, Any]) -> str:
        if "savings_share" in x:
            return percent(x["savings_share"])
        base = Decimal(x["cost_usd"] or 0)
        return percent(float(Decimal(x["savings_usd"]) / base)) if base else "-"

    rows = [
        [label, count(x["calls"]), cost[i], whatif[i], saved[i], share(x)]
        for i, (label, x) in enumerate(entries)
    ]
    footer = ["total", count(total["calls"]), cost[-1], whatif[-1], saved[-1], share(total)]
    columns = [
        Column("environment / model changed", right=False, shrink=True, min_width=12),
        Column("calls"),
        Column("cost $"),
        Column("what-if $"),
        Column("saved $"),
        Column("saved"),
    ]
    tail = []
    if total["blocked_calls"]:
        tail.append(
            f"{total['blocked_calls']:,} call(s) of models the rules would block "
            f"(${money(total['blocked_cost_usd'])}) are kept at their cost"
        )
    if total["unpriced_calls"]:
        tail.append(f"{total['unpriced_calls']:,} call(s) without a known price are left out")
    tail.extend(videos)
    tail.append("approximate: re-priced per month and model, tiered prices per average call")
    return "\n".join([*head, "", *table(columns, rows, footer), "", *tail]) + "\n"


_SAVING_KEYS = ("calls", "cost_usd", "whatif_cost_usd", "savings_usd", "unpriced_calls")


def csv_savings(report: Mapping[str, Any]) -> str:
    """One line per environment and model."""
    rows = [
        [
            e["environment"],
            m["provider"],
            m["model"],
            m["outcome"],
            m["target"],
            *(m[k] for k in _SAVING_KEYS),
            m.get("target_unpriced", False),
        ]
        for e in report["environments"]
        for m in e["models"]
    ]
    header = ["environment", "provider", "model", "outcome", "target", *_SAVING_KEYS, "target_unpriced"]
    return csv_text(header, rows)


# -- budgets --------------------------------------------------------------------------------------

_STATUS = {"ok": "ok", "alert": "alert", "projected_over": "will exceed", "over": "! spent"}
_SCOPES = {"environment": "env", "key": "key", "user": "user"}


def render_budgets(report: Mapping[str, Any]) -> str:
    """Each budget: cap, spend this period, share used, projection at the period's end."""
    head = [
        f"budgets at {report['now'][:16].replace('T', ' ')} UTC",
        f"policies: {report['policies'] or 'no policy file'}",
    ]
    budgets = report["budgets"]
    if not budgets:
        return "\n".join([*head, "No budgets are set."]) + "\n"
    unpriced = [b.get("unpriced_calls", 0) for b in budgets]
    spent = marked_cells(money_column([b["spent_usd"] for b in budgets]), unpriced)
    projected = money_column([b["projected_usd"] for b in budgets])
    rows = [
        [
            _SCOPES.get(b["scope"], b["scope"]),
            b["name"],
            f"{b['usd']}/{b['period']}",
            s,
            percent(b["used"], 0),
            p,
            percent(b["projected_used"], 0),
            _STATUS.get(b["status"], b["status"]),
        ]
        for b, s, p in zip(budgets, spent, projected, strict=True)
    ]
    columns = [
        Column("", right=False),
        Column("name", right=False, shrink=True),
        Column("cap $", right=False),
        Column("spent $"),
        Column("used"),
        Column("projected $"),
        Column("proj."),
        Column("status", right=False),
    ]
    notes = [
        f"* {row[0]} {row[1]}: {n:,} call(s) with no known price count nothing"
        for row, n in zip(rows, unpriced, strict=True)
        if n
    ]
    if notes:
        notes = ["", *notes, "  (scripts/spend unpriced lists them; policies.yaml prices: gives a price)"]
    return "\n".join([*head, "", *table(columns, rows), *notes]) + "\n"


_BUDGET_KEYS = (
    "scope",
    "name",
    "usd",
    "period",
    "period_start",
    "period_end",
    "calls",
    "spent_usd",
    "used",
    "projected_usd",
    "projected_used",
    "alert_at",
    "status",
    "unpriced_calls",
)


def csv_budgets(report: Mapping[str, Any]) -> str:
    """One line per budget; ``alert_at`` joined by ``;``."""
    rows = [
        [";".join(str(a) for a in b[k]) if k == "alert_at" else b[k] for k in _BUDGET_KEYS]
        for b in report["budgets"]
    ]
    return csv_text(_BUDGET_KEYS, rows)


# -- charts ---------------------------------------------------------------------------------------


def _figure() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(10, 5), dpi=100, layout="constrained")


def chart_stacked(series: Sequence[tuple[str, str | None, Decimal]], unit: str, path: Path) -> None:
    """Spend per ``unit`` (day, week, month), one stacked bar segment per environment."""
    periods = sorted({p for p, _, _ in series})
    envs = sorted(
        {e for _, e, _ in series},
        key=lambda e: (e is None, (e or "").lower() in ("production", "prod"), e or ""),
    )
    values = {(p, e): float(c) for p, e, c in series}
    fig = _figure()
    ax = fig.add_subplot()
    bottoms = [0.0] * len(periods)
    for env in envs:
        heights = [values.get((p, env), 0.0) for p in periods]
        ax.bar(range(len(periods)), heights, bottom=bottoms, label=name(env), width=0.8)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    ax.set_title(f"LLM spend per {unit}, stacked by environment")
    ax.set_ylabel("USD")
    step = max(1, len(periods) // 15)
    ax.set_xticks(
        range(0, len(periods), step),
        [periods[i] for i in range(0, len(periods), step)],
        rotation=45,
        ha="right",
    )
    if envs:
        handles, labels = ax.get_legend_handles_labels()  # top of the stack first
        ax.legend(handles[::-1], labels[::-1], loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.text(0.5, 0.5, "no calls", ha="center", va="center", transform=ax.transAxes)
    fig.savefig(path, format="png")


def chart_ratio(report: Mapping[str, Any], path: Path) -> None:
    """The monthly non-production : production ratio, with the 1:2 flag line and the 1:3-1:5 band."""
    months = [m for m in report["months"] if m["ratio"] is not None]
    fig = _figure()
    ax = fig.add_subplot()
    ax.axhspan(0.2, 1 / 3, color="tab:green", alpha=0.15, label="healthy (1:5 to 1:3)")
    ax.axhline(0.5, color="tab:red", linestyle="--", label="1:2")
    if months:
        xs = [month_number(m["month"]) for m in months]  # calendar spacing, as the trend's slope
        ax.plot(xs, [m["ratio"] for m in months], marker="o", color="tab:blue", label="non-prod / prod cost")
        flagged = [(x, m["ratio"]) for x, m in zip(xs, months, strict=True) if m["flagged"]]
        if flagged:
            ax.scatter([x for x, _ in flagged], [r for _, r in flagged], color="tab:red", zorder=3, s=60)
        ax.set_xticks(xs, [m["month"] for m in months], rotation=45, ha="right")
    else:
        ax.text(0.5, 0.5, "no month with production spend", ha="center", va="center", transform=ax.transAxes)
    top = max([0.6, *(m["ratio"] for m in months)])
    ax.set_ylim(0, top * 1.1)
    ax.set_title("Non-production to production LLM cost per month")
    ax.set_ylabel(r"non-production \$ per production \$")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path, format="png")


# -- unpriced -------------------------------------------------------------------------------------


def render_unpriced(report: Mapping[str, Any]) -> str:
    """The calls no price list knows, and how to give them a price."""
    head = _head("calls with no known price", report)
    rows_in = report["rows"]
    if not rows_in:
        return "\n".join([*head, "Every call with usage has a price."]) + "\n"
    rows = [
        [r["provider"], r["model"], r["price_status"] or "-", count(r["calls"]), count(r["input_tokens"]),
         count(r["output_tokens"]), (r["last_at"] or "-")[:10]]
        for r in rows_in
    ]  # fmt: skip
    columns = [
        Column("provider", right=False, shrink=True, min_width=6),
        Column("model", right=False, shrink=True, min_width=12),
        Column("why", right=False, shrink=True, min_width=7),
        Column("calls"),
        Column("input"),
        Column("output"),
        Column("last", right=False),
    ]
    first = rows_in[0]
    hint = [
        "",
        "These calls are in no cost total. Give their models a price in",
        "policies.yaml (USD per million tokens; cached_input, cache_write optional):",
        "",
        "prices:",
        f'  "{first["provider"]}/{first["model"]}": {{input: 0.50, cached_input: 0.05, output: 1.50}}',
        "",
        "New calls are priced with it at once; stored calls keep their empty cost.",
    ]
    return "\n".join([*head, *table(columns, rows), *hint]) + "\n"


def csv_unpriced(report: Mapping[str, Any]) -> str:
    """One line per provider and model."""
    keys = [
        "provider",
        "model",
        "price_status",
        "calls",
        "input_tokens",
        "output_tokens",
        "first_at",
        "last_at",
    ]
    return csv_text(keys, [[r[k] for k in keys] for r in report["rows"]])
