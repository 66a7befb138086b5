"""``scripts/spend``: what the metered calls cost. Reports are SQL in DuckDB, read-only.

Usage: ``spend [--db PATH] [--json] [session [--session ID]]``. With no subcommand it
reports the latest session (the newest ``sessions.started_at``; a session known only from
``calls`` counts from its first call).

``--json`` prints one object (stable; fields are only ever added)::

    {
      "schema": 1,
      "db": "/path/spend.duckdb",
      "session": null | {"session_id": str, "started_at": str|null, "ended_at": str|null,
                         "hostname": str|null, "pid": int|null, "version": str|null},
      "total": TOTALS,
      "by_model": [{"model": str, ...TOTALS}, ...]   # by cost, then calls, descending
    }

where TOTALS is ``{"calls", "input_tokens", "cache_read_tokens", "cache_write_tokens",
"output_tokens", "reasoning_tokens", "unpriced_calls", "no_usage_calls": int,
"cost_usd": str|null}``. ``input_tokens`` is all input (cache reads and writes included),
``output_tokens`` all output (reasoning included). ``cost_usd`` is an exact decimal string,
the sum of the calls whose price is known, or null when none is. ``unpriced_calls``: calls
with usage but no known price (their cost is not in ``cost_usd``). ``no_usage_calls``:
calls whose usage is unknown (for example an aborted stream), errors not billed aside.
Times are ISO 8601 UTC. ``model`` is the reported model, else the one sent, else "(unknown)".

Exit status: 0 report printed, 1 no database, no such session or the file cannot be read,
2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import duckdb

from addon.paths import resolve_db_path
from addon.store import reading

SCHEMA = 1
WIDTH = 80
TOTAL_KEYS = (
    "calls",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "unpriced_calls",
    "no_usage_calls",
    "cost_usd",
)

LATEST_SESSION_SQL = """
SELECT session_id FROM (
    SELECT session_id, started_at AS t FROM sessions
    UNION ALL
    SELECT session_id, min(ts) AS t FROM calls
    WHERE session_id NOT IN (SELECT session_id FROM sessions)
    GROUP BY session_id
)
ORDER BY t DESC NULLS LAST, session_id DESC
LIMIT 1
"""

SESSION_SQL = """
SELECT ?::VARCHAR AS session_id,
       coalesce(s.started_at, (SELECT min(ts) FROM calls WHERE session_id = ?)) AS started_at,
       s.ended_at, s.hostname, s.pid, s.version
FROM (SELECT 1) AS one
LEFT JOIN sessions AS s ON s.session_id = ?
"""

# One pass: a row per model plus the grand total (GROUPING SETS).
TOTALS_SQL = """
SELECT
    grouping(model) = 1 AS is_total,
    model,
    count(*) AS calls,
    coalesce(sum(input_tokens), 0) AS input_tokens,
    coalesce(sum(cache_read_tokens), 0) AS cache_read_tokens,
    coalesce(sum(cache_write_tokens), 0) AS cache_write_tokens,
    coalesce(sum(output_tokens), 0) AS output_tokens,
    coalesce(sum(reasoning_tokens), 0) AS reasoning_tokens,
    count(*) FILTER (
        WHERE cost_usd IS NULL AND (input_tokens IS NOT NULL OR output_tokens IS NOT NULL)
    ) AS unpriced_calls,
    count(*) FILTER (
        WHERE input_tokens IS NULL AND output_tokens IS NULL
          AND coalesce(price_status, '') <> 'not_billed'
    ) AS no_usage_calls,
    sum(cost_usd) AS cost_usd
FROM (
    SELECT coalesce(model_reported, model_sent, '(unknown)') AS model, *
    FROM calls
    WHERE session_id = ?
)
GROUP BY GROUPING SETS ((model), ())
ORDER BY is_total DESC, cost_usd DESC NULLS LAST, calls DESC, model
"""


# -- helpers ------------------------------------------------------------------------------------


def _iso(ts: datetime | None) -> str | None:
    return None if ts is None else ts.replace(tzinfo=UTC).isoformat()


def _decimal_str(value: Decimal | None) -> str | None:
    """Exact, without trailing zeros or exponent: Decimal('0.0100350000') -> '0.010035'."""
    if value is None:
        return None
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def _money(value: Decimal | None) -> str:
    """For people: 6 decimals under $1, else 4 ('?' when unknown)."""
    if value is None:
        return "?"
    places = Decimal("0.000001") if abs(value) < 1 else Decimal("0.0001")
    return f"{value.quantize(places, rounding=ROUND_HALF_UP):,}"


def _int(value: int) -> str:
    return f"{value:,}"


def _tables_exist(con: duckdb.DuckDBPyConnection) -> bool:
    found = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name IN ('calls', 'sessions')"
    ).fetchone()
    return bool(found and found[0] == 2)


# -- reports (data) -----------------------------------------------------------------------------


def _empty_totals() -> dict[str, Any]:
    return {key: (None if key == "cost_usd" else 0) for key in TOTAL_KEYS}


def session_report(con: duckdb.DuckDBPyConnection, db: Path, session_id: str | None) -> dict[str, Any]:
    """The JSON-ready report of one session (the latest when ``session_id`` is None)."""
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "db": str(db),
        "session": None,
        "total": _empty_totals(),
        "by_model": [],
    }
    if not _tables_exist(con):
        return report
    if session_id is None:
        row = con.execute(LATEST_SESSION_SQL).fetchone()
        if row is None:
            return report
        session_id = row[0]
    srow = con.execute(SESSION_SQL, [session_id, session_id, session_id]).fetchone()
    assert srow is not None
    if srow[1] is None and srow[2] is None:  # no sessions row, no call
        raise LookupError(f"no session {session_id!r} in {db}")
    report["session"] = {
        "session_id": srow[0],
        "started_at": _iso(srow[1]),
        "ended_at": _iso(srow[2]),
        "hostname": srow[3],
        "pid": srow[4],
        "version": srow[5],
    }
    cur = con.execute(TOTALS_SQL, [session_id])
    names = [d[0] for d in cur.description]
    for values in cur.fetchall():
        row_map = dict(zip(names, values, strict=True))
        totals = {key: row_map[key] for key in TOTAL_KEYS}
        totals["cost_usd"] = _decimal_str(totals["cost_usd"])
        if row_map["is_total"]:
            report["total"] = totals
        else:
            report["by_model"].append({"model": row_map["model"], **totals})
    return report


# -- reports (text) -----------------------------------------------------------------------------

_HEADERS = ("calls", "input", "cached", "cache-w", "output", "reason", "cost $")


def _cells(row: dict[str, Any]) -> list[str]:
    cost = None if row["cost_usd"] is None else Decimal(row["cost_usd"])
    money = _money(cost)
    if cost is not None and row["unpriced_calls"]:
        money += "*"  # some calls of the group have no known price
    return [
        _int(row["calls"]),
        _int(row["input_tokens"]),
        _int(row["cache_read_tokens"]),
        _int(row["cache_write_tokens"]),
        _int(row["output_tokens"]),
        _int(row["reasoning_tokens"]),
        money,
    ]


def _session_line(session: dict[str, Any]) -> str:
    started = (session["started_at"] or "?")[:19].replace("T", " ")
    if session["ended_at"]:
        state = f"ended {session['ended_at'][:19].replace('T', ' ')} UTC"
    elif _alive(session):
        state = "running"
    else:
        state = "not closed (running elsewhere, or it stopped abruptly)"
    return f"started {started} UTC, {state}"


def _alive(session: dict[str, Any]) -> bool:
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


def render_session(report: dict[str, Any]) -> str:
    """An aligned table in 80 columns (unless the numbers alone are wider).

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

    body = [(row["model"], _cells(row)) for row in report["by_model"]]
    footer = ("total", _cells(total))
    if any(cells[-1].endswith("*") for _, cells in [*body, footer]):  # keep the decimals aligned
        for _, cells in [*body, footer]:
            cells[-1] = cells[-1] if cells[-1].endswith("*") else cells[-1] + " "
    widths = [
        max(len(_HEADERS[i]), *(len(cells[i]) for _, cells in [*body, footer])) for i in range(len(_HEADERS))
    ]
    longest = max(len(name) for name, _ in [*body, footer, ("model", [])])

    # Two spaces between columns, one if that makes it fit; names still too long for the line
    # go on a line of their own above their numbers (never cut).
    def numbers_width(gap: int) -> int:
        return 2 + sum(widths) + gap * (len(widths) - 1)

    wrapped = longest + numbers_width(1) > WIDTH
    model_width = len("model") if wrapped else longest
    gap = 2 if model_width + numbers_width(2) <= WIDTH else 1

    def fmt(name: str, cells: Sequence[str]) -> str:
        numbers = (" " * gap).join(cell.rjust(width) for cell, width in zip(cells, widths, strict=True))
        return (name.ljust(model_width) + "  " + numbers).rstrip()

    lines.append("")
    lines.append(fmt("model", _HEADERS))
    for name, cells in body:
        if wrapped:
            lines.append(name)
            name = ""
        lines.append(fmt(name, cells))
    lines.append("-" * (model_width + numbers_width(gap)))
    lines.append(fmt(*footer))
    if total["unpriced_calls"]:
        unknown = ", ".join(
            f"{row['model']} ({row['unpriced_calls']})" for row in report["by_model"] if row["unpriced_calls"]
        )
        lines.append("")
        lines.append(f"{total['unpriced_calls']} call(s) with no known price, not in the cost: {unknown}")
    if total["no_usage_calls"]:
        lines.append(
            f"{total['no_usage_calls']} call(s) without usage (aborted or unreadable), not in the cost"
        )
    return "\n".join(lines) + "\n"


# -- command line -------------------------------------------------------------------------------


def _cmd_session(con: duckdb.DuckDBPyConnection, args: argparse.Namespace) -> dict[str, Any]:
    return session_report(con, args.db_path, getattr(args, "session", None))


COMMANDS: dict[
    str,
    tuple[
        Callable[[duckdb.DuckDBPyConnection, argparse.Namespace], dict[str, Any]],
        Callable[[dict[str, Any]], str],
    ],
] = {
    "session": (_cmd_session, render_session),
}


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db",
        default=argparse.SUPPRESS,
        help="database file (default: $TOKOMETER_DB, else $XDG_DATA_HOME/tokometer/spend.duckdb)",
    )
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    common.add_argument(
        "--session", metavar="ID", default=argparse.SUPPRESS, help="this session instead of the latest"
    )
    parser = argparse.ArgumentParser(
        prog="spend", description="What your metered LLM calls cost.", parents=[common]
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("session", parents=[common], help="one session's calls, tokens and cost (default)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``spend``; returns the exit status."""
    args = _parser().parse_args(argv)
    command = args.command or "session"
    args.db_path = resolve_db_path(getattr(args, "db", "") or "").absolute()
    as_json = getattr(args, "json", False)
    build, render = COMMANDS[command]
    try:
        with reading(args.db_path) as con:
            report = build(con, args)
    except FileNotFoundError:
        print(
            f"spend: no database at {args.db_path}\n"
            "It is created by the first metered call through scripts/proxy.",
            file=sys.stderr,
        )
        return 1
    except duckdb.Error as exc:
        print(f"spend: cannot read {args.db_path}: {exc}", file=sys.stderr)
        return 1
    except LookupError as exc:
        print(f"spend: {exc.args[0]}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        sys.stdout.write(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
