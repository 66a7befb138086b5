"""``scripts/spend statusline`` and ``scripts/spend watch``: spend as it happens.

statusline
    One short line for a shell prompt, tmux or an editor's status bar, from the proxies'
    live-state files (``<db>.live/<session>.json``, one per running proxy, combined, see
    ``addon.live_state.combine``; ``<db>.live.json`` of older proxies too) only: no DuckDB, and
    nothing but the standard library is imported, so it runs on every prompt::

        dev · $0.42 today · 18 calls · 62% of budget

    The environment is ``--env NAME``, else where the proxy books this shell's calls by its
    ``$APP_ENV`` (the variables the proxy reads, as its live file says), else the one with the most
    calls today (UTC). ``development`` and ``production`` are shortened to ``dev`` and ``prod``.
    Without a live file, or when every proxy that wrote one is gone: ``tokometer: off`` (exit 0).
    ``--format json`` prints ``{"schema": 1, "status": "on" | "off", "text": LINE, ...}``
    (see ``statusline_json``). Colour (the budget part: green, yellow from the first
    alert_at, red when spent) only on a terminal; ``--color`` forces it, ``--no-color``
    and ``NO_COLOR`` turn it off.

watch
    A full-screen view refreshed every ``--interval`` seconds (default 1): the session's
    total and burn rate ($/hour), today's spend per environment and each budget's
    period spend as bars, the last calls (newest first). Each refresh opens the database
    read-only for one batch of queries and closes it at once. Ctrl-C quits; ``--once``
    prints one frame and exits.

``python -m addon.spend_watch statusline|watch [OPTIONS]`` is the fast way in (what
``scripts/spend statusline`` runs); ``python -m addon.spend statusline|watch`` works too.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path

from addon.live_state import proxy_alive, read_combined
from addon.live_state import read as read_live
from addon.paths import resolve_db_path, resolve_policies_path

TYPE_CHECKING = False  # not typing's: see addon.live_state (the status line must start fast)
if TYPE_CHECKING:
    import argparse
    from decimal import Decimal
    from typing import Any

    import duckdb
    from rich.console import Console, RenderableType

    from addon.policies import Policies

SCHEMA = 1
OFF_TEXT = "tokometer: off"
SHORT_NAMES = {"development": "dev", "production": "prod"}
# The same aliases as addon.policies.ENVIRONMENT_ALIASES (not imported: it pulls in yaml).
_ALIASES = {"dev": "development", "prod": "production", "stage": "staging", "stg": "staging"}
_SEP = " \u00b7 "  # " · "
_GREEN, _YELLOW, _RED, _DIM, _RESET = "\x1b[32m", "\x1b[33m", "\x1b[31m", "\x1b[2m", "\x1b[0m"
REFUSED_ACTIONS = ("blocked", "over_budget", "rate_limited")
DEFAULT_ALERT = 0.8  # a budget without alert_at turns yellow here
BAR_WIDTH = 15
RECENT_CALLS = 10
WATCH_FLUSH_EVERY = 1.0  # seconds between the watch view's flush requests to the proxy


def normalize_environment(name: str) -> str:
    """Lower-cased, stripped, aliases resolved (as ``addon.policies.normalize_environment``)."""
    key = name.strip().lower()
    return _ALIASES.get(key, key)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _money(text: Any) -> str:
    """A decimal (string) as ``$0.0031``, ``$0.0133``, ``$0.42`` (up to four decimals under a
    dollar, at least two) or ``$1,234.50``, rounded half up."""
    from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

    try:
        value = Decimal(str(text))
    except (InvalidOperation, ValueError):
        return "$?"
    if not value.is_finite():
        return "$?"
    if value == 0:
        return "$0.00"
    sign, value = ("-" if value < 0 else ""), abs(value)
    if value < 1:  # up to four decimals under a dollar: $0.0133 is not $0.01
        small = value.quantize(Decimal("0.0001"), ROUND_HALF_UP)
        if not small:
            return f"{sign}<$0.0001"
        text = f"{small:f}"
        while text.endswith("0") and len(text.split(".")[1]) > 2:
            text = text[:-1]
        return f"{sign}${text}"
    return f"{sign}${value.quantize(Decimal('0.01'), ROUND_HALF_UP):,.2f}"


# -- statusline ------------------------------------------------------------------------------------


def _env_budget(state: Mapping[str, Any], env: str, now: datetime) -> dict[str, Any] | None:
    """The environment's budget entry, with ``fraction`` 0 once its period is over."""
    for item in state.get("budgets") or ():
        if item.get("scope_kind") != "environment" or item.get("scope_name") != env:
            continue
        found = dict(item)
        end = _parse_time(found.get("period_end"))
        if end is not None and now >= end:  # a new period started since the proxy last wrote
            found.update(spent_usd="0", fraction=0.0, exhausted=False)
        return found
    return None


def _shell_environment(lookup: Any) -> str | None:
    """Where the proxy books this shell's calls by its variables, as the live file says the proxy
    reads them (``LiveState.set_claimable``; addon.attribution, rules 3-5): the first variable the
    proxy reads that is set and names an environment a caller may name; with some set and none
    such, or when the proxy reads none (the lookup off: every shell's calls go there), the proxy's
    fallback (its TOKOMETER_ENVIRONMENT or hosts rule, else the default environment). None when
    none of them is set. A file that does not say (older proxies): APP_ENV, and the default for
    one naming no declared environment."""
    lookup = lookup if isinstance(lookup, Mapping) else {}
    variables = lookup.get("variables")
    if not (isinstance(variables, list) and all(isinstance(name, str) for name in variables)):
        variables = ["APP_ENV"]
    declared = lookup.get("declared")
    default = lookup.get("default_environment")
    fallback = lookup.get("fallback_environment") or default
    if not variables and fallback:  # the lookup is off: every shell's calls go there
        return normalize_environment(str(fallback))
    named = [value for name in variables if (value := os.environ.get(name, "").strip())]
    if not named:
        return None
    if not isinstance(declared, list):  # any name may be claimed (or the file does not say)
        return normalize_environment(named[0])
    for value in named:
        env = normalize_environment(value)
        if env in declared or env == default:
            return env
    return normalize_environment(str(fallback)) if fallback else normalize_environment(named[0])


def statusline_json(
    state: Mapping[str, Any] | None,
    *,
    env: str | None = None,
    now: datetime | None = None,
    alive: bool | None = None,
) -> dict[str, Any]:
    """What the status line shows, as data.

    ``{"schema": 1, "status": "off", "reason": "no live state" | "proxy not running",
    "text": "tokometer: off"}`` or ``{"schema": 1, "status": "on", "environment": NAME | null,
    "today": "YYYY-MM-DD", "today_usd": str, "calls": int, "refused_calls": int,
    "unpriced_calls": int (calls with usage but no known price: ``today_usd`` leaves them out),
    "budget": null | {"period", "cap_usd", "spent_usd", "fraction", "exhausted",
    "alert_at"}, "session_id", "session_usd", "session_calls", "updated_at", "proxies": int
    (how many run on the database; the session is the newest one's), "text": LINE}``.
    ``alive`` overrides the pid check (tests).
    """
    now = now or _utcnow()
    if state is None:
        return {"schema": SCHEMA, "status": "off", "reason": "no live state", "text": OFF_TEXT}
    if not (proxy_alive(state) if alive is None else alive):
        return {"schema": SCHEMA, "status": "off", "reason": "proxy not running", "text": OFF_TEXT}
    today = state.get("today") or {}
    day = now.astimezone(UTC).date().isoformat()
    environments: Mapping[str, Any] = (today.get("environments") or {}) if today.get("date") == day else {}
    if env is not None:
        env = normalize_environment(env)
    else:
        env = _shell_environment(state.get("claimable_environments"))
    if env is None and environments:
        env = max(sorted(environments), key=lambda name: environments[name].get("calls", 0))
    entry = environments.get(env or "", {})
    session = state.get("session") or {}
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "status": "on",
        "environment": env,
        "today": day,
        "today_usd": str(entry.get("cost_usd", "0")),
        "calls": int(entry.get("calls", 0)),
        "refused_calls": int(entry.get("refused_calls", 0)),
        "unpriced_calls": int(entry.get("unpriced_calls", 0)),
        "budget": None,
        "session_id": state.get("session_id"),
        "session_usd": str(session.get("cost_usd", "0")),
        "session_calls": int(session.get("calls", 0)),
        "updated_at": state.get("updated_at"),
        "proxies": int(state.get("proxies") or 1),  # running on this database (read_combined)
    }
    budget = _env_budget(state, env, now) if env else None
    if budget is not None:
        result["budget"] = {
            key: budget.get(key)
            for key in ("period", "cap_usd", "spent_usd", "fraction", "exhausted", "alert_at")
        }
    result["text"] = statusline_text(result, color=False)
    return result


def _budget_color(budget: Mapping[str, Any]) -> str:
    fraction = budget.get("fraction") or 0.0
    if budget.get("exhausted") or fraction >= 1:
        return _RED
    alerts = [a for a in budget.get("alert_at") or () if isinstance(a, int | float)]
    return _YELLOW if fraction >= (min(alerts) if alerts else DEFAULT_ALERT) else _GREEN


def statusline_text(data: Mapping[str, Any], *, color: bool) -> str:
    """The line of ``statusline_json``'s data."""
    if data.get("status") != "on":
        return f"{_DIM}{OFF_TEXT}{_RESET}" if color else OFF_TEXT
    env = data.get("environment")
    calls = data.get("calls", 0)
    parts = [
        SHORT_NAMES.get(env, env) if env else "tokometer",
        # "+?": some of today's calls have no known price, so the sum is a floor (as in the reports)
        f"{_money(data.get('today_usd'))}{'+?' if data.get('unpriced_calls') else ''} today",
        f"{calls} call" if calls == 1 else f"{calls} calls",
    ]
    budget = data.get("budget")
    if budget is not None:
        fraction = budget.get("fraction")
        if budget.get("exhausted"):
            text = f"{budget.get('period')} budget spent"
        elif isinstance(fraction, int | float):
            text = f"{fraction * 100:.0f}% of budget"
        else:
            text = "budget ?"
        parts.append(f"{_budget_color(budget)}{text}{_RESET}" if color else text)
    return _SEP.join(parts)


def _want_color(flag: bool | None) -> bool:
    if flag is not None:
        return flag
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return sys.stdout.isatty()


STATUSLINE_DEFAULTS: dict[str, Any] = {"env": None, "format": "text", "color": None, "db": "", "live": ""}


def _defaults(table: dict[str, Any], given: bool) -> Callable[[str], Any]:
    """An option's default from ``table``, or none at all (``argparse.SUPPRESS``) when not ``given``."""
    import argparse

    return (lambda name: table[name]) if given else (lambda name: argparse.SUPPRESS)


def add_statusline_arguments(parser: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """The statusline options (shared with ``addon.spend``, which passes ``defaults=False`` so that
    its own ``--db``/``--format`` before the command are not overwritten: see ``with_defaults``)."""
    default = _defaults(STATUSLINE_DEFAULTS, defaults)

    parser.add_argument(
        "--env",
        default=default("env"),
        metavar="NAME",
        help="environment (default: $APP_ENV, else the busiest today)",
    )
    parser.add_argument("--format", choices=("text", "json"), default=default("format"), help="output format")
    parser.add_argument(
        "--color", dest="color", action="store_true", default=default("color"), help="always colour"
    )
    parser.add_argument(
        "--no-color", dest="color", action="store_false", default=default("color"), help="never colour"
    )
    parser.add_argument(
        "--db",
        default=default("db"),
        help="database whose live file to read (default: $TOKOMETER_DB, else the usual)",
    )
    parser.add_argument("--live", default=default("live"), metavar="PATH", help="the live-state file itself")


def with_defaults(args: argparse.Namespace, defaults: dict[str, Any]) -> argparse.Namespace:
    """``args`` with every option it lacks at its default (``addon.spend``'s shared options win)."""
    import argparse

    values = {**defaults, **vars(args)}
    if "format" in defaults:  # statusline: text or json; ``spend --json`` / ``--format json`` say json
        values["format"] = "json" if values.get("json") or values["format"] == "json" else "text"
    return argparse.Namespace(**values)


def run_statusline(args: argparse.Namespace) -> int:
    """Print the status line; always exit 0."""
    state = read_live(Path(args.live)) if args.live else read_combined(resolve_db_path(args.db))
    data = statusline_json(state, env=args.env)
    if args.format == "json":
        sys.stdout.write(json.dumps(data) + "\n")
    else:
        sys.stdout.write(statusline_text(data, color=_want_color(args.color)) + "\n")
    return 0


# -- watch: data -----------------------------------------------------------------------------------


def _naive(ts: datetime) -> datetime:
    return ts if ts.tzinfo is None else ts.astimezone(UTC).replace(tzinfo=None)


def _aware(ts: datetime | None) -> datetime | None:
    return None if ts is None else (ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts)


_LATEST_SESSION_SQL = """
SELECT session_id FROM (
    SELECT session_id, started_at AS t FROM sessions
    UNION ALL
    SELECT session_id, min(ts) AS t FROM calls
    WHERE session_id NOT IN (SELECT session_id FROM sessions) GROUP BY session_id
) ORDER BY t DESC NULLS LAST, session_id DESC LIMIT 1
"""
_REFUSED_SQL = "coalesce(action, 'allowed') IN ('blocked', 'over_budget', 'rate_limited')"
_UNPRICED_SQL = "cost_usd IS NULL AND (input_tokens IS NOT NULL OR output_tokens IS NOT NULL)"
# Marks an amount that leaves out calls with no known price (a floor), as the status line does.
UNPRICED_MARK = "+?"
_RECENT_COLUMNS = (
    "ts",
    "environment",
    "provider",
    "model_requested",
    "model_sent",
    "action",
    "status_code",
    "aborted",
    "input_tokens",
    "cache_read_tokens",
    "output_tokens",
    "usage_source",
    "cost_usd",
    "price_status",
    "error",
)


def collect(
    con: duckdb.DuckDBPyConnection,
    db: Path,
    policies: Policies,
    now: datetime,
    *,
    session_id: str | None = None,
    limit: int = RECENT_CALLS,
) -> dict[str, Any]:
    """One refresh's data from an open read-only connection (one batch of queries).

    ``session_id``: the session to total (the running proxy's, from its live file), else the
    latest in the database.
    """
    from addon import spend_reports as reports

    now = _aware(now) or _utcnow()
    data: dict[str, Any] = {
        "now": now,
        "db": str(db),
        "session": None,
        "today": [],
        "budgets": [],
        "recent": [],
    }
    if not reports.tables_exist(con):
        return data
    end = _naive(now)
    if session_id is None:
        found = con.execute(_LATEST_SESSION_SQL).fetchone()
        session_id = found[0] if found else None
    if session_id is not None:
        row = con.execute(
            f"""
            SELECT (SELECT started_at FROM sessions WHERE session_id = $sid),
                   (SELECT ended_at FROM sessions WHERE session_id = $sid),
                   min(ts), max(ts), {reports.count_calls()}, {reports.count_calls(_REFUSED_SQL)},
                   coalesce(sum(cost_usd), 0),
                   coalesce(sum(cost_usd) FILTER (WHERE ts >= $recent), 0),
                   count(*) FILTER (WHERE {_UNPRICED_SQL})
            FROM calls WHERE session_id = $sid AND ts < $end
            """,
            {"sid": session_id, "recent": end - timedelta(minutes=15), "end": end},
        ).fetchone()
        assert row is not None
        started, ended, first, last, calls, refused, cost, recent_cost, unpriced = row
        started = started or first
        data["session"] = {
            "session_id": session_id,
            "started_at": _aware(started),
            "ended_at": _aware(ended),
            "last_call_at": _aware(last),
            "calls": calls,
            "refused_calls": refused,
            "cost": cost,
            "cost_last_15m": recent_cost,
            "unpriced_calls": unpriced,  # not in ``cost``
        }
    day_start = end.replace(hour=0, minute=0, second=0, microsecond=0)
    rows = con.execute(
        f"""
        SELECT environment, {reports.count_calls()}, {reports.count_calls(_REFUSED_SQL)},
               coalesce(sum(cost_usd), 0), count(*) FILTER (WHERE {_UNPRICED_SQL})
        FROM calls WHERE ts >= ? AND ts < ? GROUP BY environment
        """,
        [day_start, end],
    ).fetchall()
    data["today"] = sorted(
        (
            {
                "environment": env,
                "calls": calls,
                "refused_calls": refused,
                "cost": cost,
                "unpriced_calls": unpriced,
            }
            for env, calls, refused, cost, unpriced in rows
        ),
        key=lambda item: reports.env_sort_key(item["environment"]),
    )
    data["budgets"] = reports.budgets_report(con, db, policies, end)["budgets"]
    cursor = con.execute(
        f"SELECT {', '.join(_RECENT_COLUMNS)} FROM calls WHERE ts < ? ORDER BY ts DESC, id DESC LIMIT ?",
        [end, limit],
    )
    data["recent"] = [dict(zip(_RECENT_COLUMNS, values, strict=True)) for values in cursor.fetchall()]
    return data


# -- watch: rendering ------------------------------------------------------------------------------


def _usd(value: Decimal | str | None) -> str:
    from decimal import Decimal

    from addon.call_log import format_usd

    if value is None:
        return "$?"
    return format_usd(Decimal(str(value)))


def _cap(value: str | None) -> str:
    """A budget cap as policies.yaml gives it: ``$150`` when whole, ``$12.50``, ``$0.015``,
    ``$0.0012`` (rounded to cents, they read ``$0.02`` and ``$0.00`` beside their percentage)."""
    from decimal import Decimal, InvalidOperation

    from addon.budgets import format_cap

    try:
        number = Decimal(str(value or 0))
    except (InvalidOperation, ValueError):
        return "$?"
    if not number.is_finite():
        return "$?"
    if number == number.to_integral_value():
        return f"${number:,.0f}"
    return format_cap(number)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def bar(used: float | None, width: int = BAR_WIDTH) -> str:
    """``█████░░░░░`` filled to ``used`` (0..1, capped at 1)."""
    fraction = min(max(used or 0.0, 0.0), 1.0)
    filled = round(fraction * width)
    return "\u2588" * filled + "\u2591" * (width - filled)


_STATUS_STYLE = {"ok": "green", "alert": "yellow", "projected_over": "yellow", "over": "bold red"}


def render(
    data: Mapping[str, Any], *, tz: tzinfo | None = None, problem: str | None = None
) -> RenderableType:
    """One frame of the watch view."""
    from rich.console import Group
    from rich.text import Text

    now: datetime = data["now"]
    title = Text.assemble(("tokometer watch", "bold"), f"  {now.astimezone(tz):%Y-%m-%d %H:%M:%S}")
    where = Text(f"db {data['db']}", style="dim", no_wrap=True, overflow="ellipsis")
    parts: list[Any] = [title, where, Text()]
    parts.append(_session_text(data.get("session"), now))
    parts.append(Text())
    parts.append(_spend_table(data))
    parts.append(Text())
    parts.append(_recent_table(data.get("recent") or [], tz))
    parts.append(Text())
    if problem:
        parts.append(Text(problem, style="yellow"))
    parts.append(Text("Ctrl-C quits", style="dim"))
    return Group(*parts)


RECENT_WINDOW_S = 15 * 60  # the recent burn rate's window (cost_last_15m)


def _session_text(session: Mapping[str, Any] | None, now: datetime) -> Any:
    from rich.text import Text

    if session is None:
        return Text("Session  no calls yet", style="dim")
    started: datetime | None = session["started_at"]
    ended: datetime | None = session["ended_at"]
    until = ended or now
    elapsed = (until - started).total_seconds() if started else 0.0
    hours = max(elapsed, 60.0) / 3600  # at least a minute: no absurd rate after one call
    cost = session["cost"]
    rate = float(cost) / hours if cost else 0.0
    # The last 15 minutes, or as much of them as the session has run (at least a minute, as above):
    # two minutes into a session, its spend is spread over two minutes, not fifteen.
    recent_hours = min(RECENT_WINDOW_S, max(elapsed, 60.0)) / 3600
    recent_rate = float(session["cost_last_15m"] or 0) / recent_hours if ended is None else None
    calls = session["calls"]
    text = Text.assemble(
        ("Session ", "bold"),
        (session["session_id"], "cyan"),
        f"  {'ended' if ended else 'running'} {_duration(elapsed)}  ",
        (_usd(cost) + (UNPRICED_MARK if session.get("unpriced_calls") else ""), "bold green"),
        f"  {calls} call{'s' if calls != 1 else ''}",
        f" ({session['refused_calls']} refused)" if session["refused_calls"] else "",
        "  burn ",
        (f"{_usd(rate)}/h", "bold"),
    )
    if recent_rate is not None:
        text.append(f" (last 15 min {_money(recent_rate)}/h)")
    return text


def _spend_table(data: Mapping[str, Any]) -> Any:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title="Today (UTC) and budgets",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("Scope", no_wrap=True, overflow="ellipsis", max_width=24)
    table.add_column("Today", justify="right", no_wrap=True)
    table.add_column("Calls", justify="right", no_wrap=True)
    table.add_column("Budget", justify="right", no_wrap=True)
    table.add_column("Spent", justify="right", no_wrap=True)
    table.add_column("Used", no_wrap=True)
    today = {item["environment"]: item for item in data.get("today") or []}
    budgets = {(b["scope"], b["name"]): b for b in data.get("budgets") or []}
    envs = list(today)
    envs += [name for kind, name in budgets if kind == "environment" and name not in today]
    from addon.spend_reports import env_sort_key

    rows: list[tuple[str, Mapping[str, Any] | None, Mapping[str, Any] | None]] = [
        (env, today.get(env), budgets.get(("environment", env))) for env in sorted(envs, key=env_sort_key)
    ]
    rows += [(f"{kind} {name}", None, b) for (kind, name), b in budgets.items() if kind != "environment"]
    if not rows:
        table.add_row(Text("no calls today", style="dim"), "", "", "", "", "")
    for label, spent, budget in rows:
        cost = (
            _money(spent["cost"]) + (UNPRICED_MARK if spent.get("unpriced_calls") else "")
            if spent
            else ("$0" if budget and budget["scope"] == "environment" else "-")
        )
        calls = str(spent["calls"]) if spent else ("0" if cost == "$0" else "-")
        if budget is None:
            table.add_row(label, cost, calls, Text("none", style="dim"), "", "")
            continue
        used = budget["used"]
        style = _STATUS_STYLE.get(budget["status"], "")
        pct = "?" if used is None else f"{used * 100:.0f}%"
        status = "" if budget["status"] == "ok" else f" {budget['status'].replace('_', ' ')}"
        table.add_row(
            label,
            cost,
            calls,
            f"{_cap(budget['usd'])}/{budget['period']}",
            _money(budget["spent_usd"]) + (UNPRICED_MARK if budget.get("unpriced_calls") else ""),
            # The share first: a narrow terminal cuts the bar, never the number.
            Text.assemble(f"{pct:>4} ", (bar(used), style), (status, style)),
        )
    return _Fitted(table, keep=(1, 2, 3, 4), shrink={0: 8, 5: 4})


def _cell_width(cell: Any) -> int:
    from rich.cells import cell_len
    from rich.text import Text

    return cell.cell_len if isinstance(cell, Text) else cell_len(str(cell))


class _Fitted:
    """A table that fits the terminal by cutting its text columns, never its numbers.

    ``keep`` columns (amounts, counts) are never narrower than their widest cell; when the
    table is too wide, the ``shrink`` columns (index: least width) give up width, the widest
    first (a model name before an environment), and are cut with an ellipsis.
    """

    def __init__(self, table: Any, *, keep: tuple[int, ...], shrink: dict[int, int]) -> None:
        self.table = table
        self.keep = keep
        self.shrink = shrink

    def __rich_console__(self, console: Any, options: Any) -> Any:
        columns = self.table.columns
        widths = []
        for column in columns:
            width = max([_cell_width(c) for c in column.cells] + [_cell_width(column.header)])
            widths.append(min(width, column.max_width) if column.max_width else width)
        for index in self.keep:
            columns[index].min_width = widths[index]
        # Each column but the last is followed by two spaces; the table has an edge on each side.
        excess = sum(widths) + 2 * (len(columns) - 1) + 2 - options.max_width
        while excess > 0:
            room = [i for i, least in self.shrink.items() if widths[i] > least]
            if not room:
                break
            widest = max(room, key=lambda i: widths[i] - self.shrink[i])
            widths[widest] -= 1
            excess -= 1
        for index in self.shrink:
            columns[index].max_width = widths[index]
        yield self.table


def _recent_table(recent: Sequence[Mapping[str, Any]], tz: tzinfo | None) -> Any:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from addon.call_log import REFUSAL_LABELS, clean

    table = Table(
        title="Last calls (newest first)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("Time", no_wrap=True, min_width=8)
    table.add_column("Env", no_wrap=True, overflow="ellipsis", max_width=12)
    table.add_column("Model", no_wrap=True, overflow="ellipsis", max_width=32)
    table.add_column("Tokens in/cached/out", justify="right", no_wrap=True)
    table.add_column("Cost", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True, overflow="ellipsis")
    if not recent:
        table.add_row(Text("none yet", style="dim"), "", "", "", "", "")
    for call in recent:
        ts = _aware(call["ts"])
        assert ts is not None
        requested = call["model_requested"] or call["model_sent"] or "?"
        model = Text(clean(requested, 28))
        if call["action"] == "downgraded" and call["model_sent"] and call["model_sent"] != requested:
            model.append(f" -> {clean(call['model_sent'], 28)}", style="yellow")
        refusal = REFUSAL_LABELS.get(call["action"] or "")
        if call["input_tokens"] is None and call["output_tokens"] is None:
            tokens = "-"
        else:
            mark = "~" if call["usage_source"] == "estimated" else ""
            counts = (call["input_tokens"], call["cache_read_tokens"], call["output_tokens"])
            tokens = mark + "/".join(f"{n or 0:,}" for n in counts)
        note = Text("")
        if refusal:
            cost = Text("-", style="dim")
            note = Text(refusal, style="magenta")
        elif call["cost_usd"] is None:
            cost = Text("$?", style="yellow")
            note = Text(call["price_status"] or "not priced", style="yellow")
        else:
            cost = Text(_usd(call["cost_usd"]), style="green")
        if refusal:
            pass
        elif call["status_code"] is not None and call["status_code"] >= 400:
            note = Text(f"ERROR {call['status_code']}", style="red")
        elif call["aborted"]:
            note = Text("ABORTED", style="yellow")
        table.add_row(
            f"{ts.astimezone(tz):%H:%M:%S}", clean(call["environment"] or "-", 16), model, tokens, cost, note
        )
    return _Fitted(table, keep=(0, 3, 4), shrink={1: 4, 2: 10, 5: 7})


# -- watch: the loop -------------------------------------------------------------------------------


class Watcher:
    """Reads the live file, the policies and the database once per ``frame()``."""

    def __init__(self, db: Path, policies_path: Path, *, limit: int = RECENT_CALLS, tz: tzinfo | None = None):
        from addon.policies import PolicyError, PolicyFile

        self.db = db
        self.limit = limit
        self.tz = tz
        self.policy_file = PolicyFile(policies_path)
        self.policy_problem: str | None = None
        try:
            self.policy_file.load()
        except PolicyError as exc:
            self.policy_problem = f"{policies_path} is invalid: budgets not shown ({exc.problems[0]})"
        self.last: dict[str, Any] | None = None
        self._flush_asked_at = float("-inf")  # time.monotonic() of the last flush request

    def frame(self, now: datetime | None = None) -> RenderableType:
        """Query (a short read-only open) and render; a busy or missing database shows the last data."""
        import duckdb

        from addon.store import reading

        now = now or _utcnow()
        new, problem = self.policy_file.check()
        if problem:
            self.policy_problem = f"policies: {problem.splitlines()[0]}"
        elif new is not None:
            self.policy_problem = None
        state = read_combined(self.db)  # several proxies: the newest one's session
        session_id = state.get("session_id") if state and proxy_alive(state) else None
        problem_text = self.policy_problem
        # Ask the proxy to store what it holds at most once a second, whatever --interval is:
        # each request costs it a flush (~10 ms of CPU).
        fresh = time.monotonic() - self._flush_asked_at >= WATCH_FLUSH_EVERY
        if fresh:
            self._flush_asked_at = time.monotonic()
        try:
            with reading(self.db, timeout=0.5, fresh=fresh) as con:
                self.last = collect(
                    con, self.db, self.policy_file.policies, now, session_id=session_id, limit=self.limit
                )
        except FileNotFoundError:
            problem_text = f"no database yet at {self.db}: it is created by the first metered call"
            self.last = None
        except duckdb.Error as exc:
            problem_text = (
                f"database busy or unreadable ({str(exc).splitlines()[0][:80]}); showing the last data"
            )
        data = self.last or {
            "now": now,
            "db": str(self.db),
            "session": None,
            "today": [],
            "budgets": [],
            "recent": [],
        }
        return render({**data, "now": now}, tz=self.tz, problem=problem_text)


WATCH_DEFAULTS: dict[str, Any] = {
    "db": "",
    "policies": "",
    "interval": 1.0,
    "once": False,
    "limit": RECENT_CALLS,
    "now": None,
}


def add_watch_arguments(parser: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """The watch options (shared with ``addon.spend``: ``defaults=False``, see ``with_defaults``)."""
    default = _defaults(WATCH_DEFAULTS, defaults)

    parser.add_argument(
        "--db", default=default("db"), help="database file (default: $TOKOMETER_DB, else the usual)"
    )
    parser.add_argument(
        "--policies",
        default=default("policies"),
        metavar="PATH",
        help="policy file (default: $TOKOMETER_POLICIES, else the checkout's)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=default("interval"),
        metavar="S",
        help="seconds between refreshes (default 1)",
    )
    parser.add_argument(
        "--once", action="store_true", default=default("once"), help="print one frame and exit"
    )
    parser.add_argument(
        "--limit", type=int, default=default("limit"), metavar="N", help="last calls shown (default 10)"
    )
    parser.add_argument(
        "--now", default=default("now"), metavar="TIME", help="as of this UTC time (with --once)"
    )


def run_watch(args: argparse.Namespace, console: Console | None = None) -> int:
    """The watch loop (or one frame with ``--once``)."""
    import time

    from rich.console import Console
    from rich.live import Live

    if not 0.1 <= args.interval <= 3600:  # nan and inf too
        print("spend watch: --interval must be from 0.1 to 3600 seconds", file=sys.stderr)
        return 2
    if args.limit < 1:
        print("spend watch: --limit must be at least 1", file=sys.stderr)
        return 2
    now = None
    if args.now:
        now = _parse_time(args.now)
        if now is None:
            print(f"spend watch: --now {args.now!r} is not an ISO time", file=sys.stderr)
            return 2
    console = console or Console()
    watcher = Watcher(
        resolve_db_path(args.db).absolute(), resolve_policies_path(args.policies), limit=args.limit
    )
    if args.once:
        console.print(watcher.frame(now))
        return 0
    try:
        if not console.is_terminal:  # a pipe or a log: a full-screen view would print nothing
            while True:
                console.print(watcher.frame())
                time.sleep(args.interval)
        with Live(watcher.frame(), console=console, screen=True, auto_refresh=False) as live:
            while True:
                time.sleep(args.interval)
                live.update(watcher.frame(), refresh=True)
    except KeyboardInterrupt:
        pass
    return 0


def build_parser() -> argparse.ArgumentParser:
    """``spend statusline|watch`` on their own (``python -m addon.spend_watch``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="spend", description="Spend as it happens.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_statusline_arguments(sub.add_parser("statusline", help="one short line for a prompt or status bar"))
    add_watch_arguments(sub.add_parser("watch", help="a live full-screen view"))
    return parser


_STATUSLINE_VALUES = {"--env": "env", "--format": "format", "--db": "db", "--live": "live"}


def fast_statusline_args(argv: Sequence[str]) -> argparse.Namespace | None:
    """Parse statusline options without argparse (milliseconds on every prompt); None: let argparse."""
    from types import SimpleNamespace

    values: dict[str, Any] = dict(STATUSLINE_DEFAULTS)
    items = list(argv)
    while items:
        item = items.pop(0)
        name, eq, value = item.partition("=")
        if name in _STATUSLINE_VALUES:
            if not eq:
                if not items:
                    return None
                value = items.pop(0)
            values[_STATUSLINE_VALUES[name]] = value
        elif item in ("--color", "--no-color"):
            values["color"] = item == "--color"
        else:
            return None  # --help, a typo, ...: argparse explains
    if values["format"] not in ("text", "json"):
        return None
    return SimpleNamespace(**values)  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m addon.spend_watch statusline|watch [OPTIONS]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["statusline"]:
        fast = fast_statusline_args(argv[1:])
        if fast is not None:
            return run_statusline(fast)
    args = build_parser().parse_args(argv)
    if args.command == "statusline":
        return run_statusline(args)
    return run_watch(args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # e.g. piped into head
        sys.exit(0)
