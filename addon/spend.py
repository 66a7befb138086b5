"""``scripts/spend``: where the money goes. Reports are SQL in DuckDB over a read-only open.

Usage::

    spend [session [ID]]            the latest (or a given) session: by model and by environment
    spend sessions [--limit N]      the newest sessions
    spend summary [RANGE]           environments side by side (default range: --since 7d)
    spend by DIMENSION [RANGE]      DIMENSION: env model provider team feature user key repo
                                    day week month  (--chart FILE with day, week, month)
    spend ratio [RANGE]             non-production : production cost per month (--chart FILE)
    spend models [--week|--weeks N] weekly model use by environment and user, premium flagged
                                    (--flagged: only premium use outside production)
    spend savings [RANGE]           what-if: the calls re-priced with the downgrade targets
    spend budgets                   each budget: cap, spent, used, end-of-period projection
    spend unpriced [RANGE]          calls no price list knows, by provider and model
    spend watch [--once]            live full-screen view: session, burn rate, budgets, last calls
    spend statusline [--env NAME]   one short line for a prompt, from the proxy's live file
                                    (no DuckDB; see addon.spend_watch)

RANGE: ``--since 7d`` (m, h, d, w) or ``--from DATE --to DATE`` (UTC; a date-only ``--to``
includes that day). Filters (repeatable; several values of one filter are OR-ed):
``--env --model (glob) --provider --team --feature --user --key --repo``. Every report:
``--db PATH``, ``--format table|json|csv`` (``--json`` = ``--format json``), ``--now ISO``
(report as of that UTC time). ``models``, ``savings`` and ``budgets`` read the policy file:
``--policies PATH``, else ``$TOKOMETER_POLICIES``, else the checkout's ``policies.yaml``.

JSON (stable: fields are only ever added). Every report is one object with ``"schema": 1``,
``"report": NAME`` and ``"db": PATH``; the range-based ones (summary, by, ratio, models,
savings) also ``"range": {"from": TIME|null, "to": TIME|null}`` ([from, to)) and
``"filters": {"environment", "model", "provider", "team", "feature", "user", "key",
"repo": [str]}``. Times are ISO 8601 UTC (``+00:00``); money is an exact decimal string
(null when unknown); shares and ratios are numbers rounded to 4 places (null when undefined).

TOTALS is ``{"calls", "refused_calls", "input_tokens", "cache_read_tokens",
"cache_write_tokens", "output_tokens", "reasoning_tokens", "unpriced_calls",
"no_usage_calls": int, "cost_usd": str|null}``: ``input_tokens`` is all input (cache reads
and writes included), ``output_tokens`` all output (reasoning included); ``cost_usd`` sums the
calls whose price is known (null when none is); ``unpriced_calls`` have usage but no known
price; ``no_usage_calls`` have no usage (aborted, unreadable) and no cost (a video job has one), errors
and refusals aside;
``refused_calls`` were blocked, over budget or rate limited (cost 0). A call is counted once,
by its own row: the rows billed apart from it (``parent_id``, or their ``error`` where no
``parent_id`` was written) are parts of it, in no ``calls``; a background call (its $0
creation row, ``price_status = 'background'``, and the retrieval rows that bill it) is counted
on one row, a retrieval row once one is stored (``addon.spend_reports._shadow_calls``);
tokens and cost sum all rows; ``unpriced_calls`` counts rows (a part without a price too).

The model of a call is the genai-prices id it was priced under (``price_model``: dated
snapshots such as ``gpt-4o-2024-08-06`` fold into ``gpt-4o``), else the reported model, else
the one sent, else the one requested, else ``"(unknown)"``. Production is the environment
``production`` (or ``prod``); all others are non-production.

- session: ``{"session": null | {"session_id", "started_at", "ended_at", "hostname", "pid",
  "version"}, "total": TOTALS, "by_model": [{"model", ...TOTALS}], "by_environment":
  [{"environment", ...TOTALS}]}``; by_model by cost then calls, descending.
- sessions: ``{"sessions": [{"session_id", "started_at", "ended_at", "last_call_at",
  "hostname", "pid", "version", "calls", "cost_usd", "unpriced_calls"}]}``, newest first.
- by: ``{"dimension": str, "rows": [{"key": str|null, ...TOTALS, "share": float|null}],
  "total": TOTALS}``; ``share`` is the row's part of the total cost; rows by cost (time
  dimensions: chronological, keys ``YYYY-MM-DD`` or ``YYYY-MM`` for months; weeks start Monday).
- summary: ``{"environments": [{"environment", ...SUMMARY}], "total": SUMMARY}`` where
  SUMMARY is TOTALS plus ``"usage_calls"`` (calls with usage), ``"avg_input_tokens"``,
  ``"avg_output_tokens"`` (per call with usage), ``"cache_hit_rate"`` (cache reads / input
  tokens), ``"cost_per_call_usd"`` (cost / calls with usage and a known price, calls a
  subscription plan paid aside), ``"models": [{"model", "calls", "share" (of the calls),
  "cost_usd"}]``; environments in the order development, ..., staging, others, production.
- ratio: ``{"production": [names], "flag_above": 0.5, "months": [{"month": "YYYY-MM",
  "nonprod_cost_usd", "prod_cost_usd", "nonprod_calls", "prod_calls", "nonprod_unpriced_calls",
  "prod_unpriced_calls", "unpriced_calls" (calls with no known price, not in the costs), "ratio" (non-prod /
  prod cost, null without production cost), "one_to" (x of 1:x, null without non-prod cost),
  "flagged" (worse than 1:2), "change" (ratio minus the previous calendar month's, null when
  that month has no ratio)}], "trend": {"direction": "improving"|"worsening"|"steady"|null,
  "slope_per_month": float|null}}``: the slope is per calendar month, over the months with a
  ratio (a month without calls or without production cost is a gap, not a step).
- models: ``{"premium_usd_per_mtok": str|null, "rows": [{"week", "environment", "user",
  "provider", "model", "calls", "refused_calls", "input_tokens", "output_tokens",
  "cost_usd", "unpriced_calls", "output_usd_per_mtok", "premium": bool, "premium_reasons": ["not_allowed",
  "price"], "flagged": bool (premium outside production)}], "flagged": {"calls",
  "cost_usd", "by_user": [{"user", "calls", "cost_usd"}]}}``.
- savings: ``{"environments": [{"environment", ...SAVING, "models": [{"model", "provider",
  "outcome": "keep"|"downgrade"|"block", "target", "calls", "cost_usd", "whatif_cost_usd",
  "savings_usd", "unpriced_calls", "target_unpriced": bool (no price for the target: no saving
  counted)}]}], "total": SAVING, "left_out"}`` where SAVING is ``{"calls",
  "cost_usd", "whatif_cost_usd", "savings_usd", "savings_share", "downgraded_calls",
  "blocked_calls", "blocked_cost_usd", "unpriced_calls"}`` (calls with usage and a price), and
  ``"left_out": {"video_jobs", "video_cost_usd"}`` (video jobs: token-priced calls only are summed).
- budgets: ``{"policies": PATH|null, "now": TIME, "budgets": [{"scope":
  "environment"|"key"|"user", "name", "usd", "period", "period_start", "period_end",
  "calls", "spent_usd", "used", "projected_usd", "projected_used", "alert_at": [float],
  "status": "ok"|"alert"|"projected_over"|"over", "unpriced_calls" (calls with no known price:
  they count nothing in ``spent_usd``)}]}``.
- unpriced: ``{"rows": [{"provider", "model", "price_status", "calls", "input_tokens",
  "output_tokens", "first_at", "last_at"}]}``: rows with usage and no known price, by provider,
  model (reported, else sent, else requested) and status, the most first.

CSV: the report's rows with a header line and no total line (session: one line per model
and per environment with a ``group`` column).

Exit status: 0 report printed (an empty database prints an empty report), 1 no database, no
such session, an unreadable file or policy file, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from addon import spend_render as render
from addon import spend_reports as reports
from addon.paths import resolve_db_path, resolve_policies_path
from addon.spend_render import render_session
from addon.spend_reports import SCHEMA, TOTAL_KEYS, Selection, session_report
from addon.store import reading

if TYPE_CHECKING:
    from addon.policies import Policies

__all__ = ["SCHEMA", "TOTAL_KEYS", "main", "render_session", "session_report"]

CHART_DIMENSIONS = ("day", "week", "month")


class UsageError(Exception):
    """Bad arguments found after parsing (exit 2)."""


@dataclass(slots=True)
class Job:
    """One report: how to build it (database open), render it and, maybe, chart it."""

    build: Callable[[duckdb.DuckDBPyConnection], dict[str, Any]]
    text: Callable[[dict[str, Any]], str]
    csv: Callable[[dict[str, Any]], str]
    chart_data: Callable[[duckdb.DuckDBPyConnection], Any] | None = None
    chart: Callable[[dict[str, Any], Any, Path], None] | None = None


_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0 but tab and newline, DEL, C1


# -- arguments ------------------------------------------------------------------------------------


def _utc_naive(text: str, *, end: bool) -> datetime:
    """A date or ISO time (UTC unless it says otherwise); a date-only end includes that day."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{text!r} is not a date (YYYY-MM-DD) or ISO time") from None
    if end and _is_date(text) and value.date() == date.max:
        raise UsageError(f"{text!r} is past the last day a report can end on")
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    if end and _is_date(text):
        value += timedelta(days=1)  # a date (2026-11-20 or 20261120) includes that day
    return value


def _is_date(text: str) -> bool:
    """A calendar date without a time of day: ``2026-11-20`` or ``20261120``."""
    return re.fullmatch(r"\d{4}-\d{2}-\d{2}|\d{8}", text.strip()) is not None


def _now(args: argparse.Namespace) -> datetime:
    raw = getattr(args, "now", None)
    return _utc_naive(raw, end=False) if raw else datetime.now(UTC).replace(tzinfo=None)


def _selection(args: argparse.Namespace, now: datetime, default_since: str | None = None) -> Selection:
    since, start_text, end_text = args.since, args.from_, args.to
    if since and (start_text or end_text):
        raise UsageError("use --since or --from/--to, not both")
    start = end = None
    if start_text:
        start = _utc_naive(start_text, end=False)
    if end_text:
        end = _utc_naive(end_text, end=True)
    if not (since or start_text or end_text) and default_since:
        since = default_since
    if since:
        try:
            start = now - reports.since_delta(since)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        except OverflowError:
            raise UsageError(f"--since {since!r} reaches past the year 1") from None
    if end is None and getattr(args, "now", None):
        end = now  # --now: the report as of then
    if start is not None and end is not None and end <= start:
        raise UsageError("--to must be after --from")

    def values(attr: str) -> tuple[str, ...]:
        return tuple(v.strip() for v in getattr(args, attr, None) or () if v.strip())

    environments = values("env")
    if environments:
        from addon.policies import normalize_environment

        environments = tuple(normalize_environment(e) for e in environments)
    return Selection(
        start=start,
        end=end,
        environments=environments,
        models=values("model"),
        providers=tuple(p.lower() for p in values("provider")),
        teams=values("team"),
        features=values("feature"),
        users=values("user"),
        keys=values("key"),
        repos=values("repo"),
    )


def _policies(args: argparse.Namespace) -> Policies:
    """The policies a report applies. A file named by ``--policies`` or ``$TOKOMETER_POLICIES``
    must exist (a typo must not read as "no budgets"); the checkout's default may be absent."""
    from addon.policies import PolicyError, load_policies

    given = (getattr(args, "policies", "") or os.environ.get("TOKOMETER_POLICIES", "")).strip()
    path = resolve_policies_path(getattr(args, "policies", "") or "")
    if given and not path.exists():
        raise PolicyError(f"{path}: no such file")
    return load_policies(path)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db",
        default=argparse.SUPPRESS,
        help="database file (default: $TOKOMETER_DB, else $XDG_DATA_HOME/tokometer/spend.duckdb)",
    )
    common.add_argument(
        "--format", choices=("table", "json", "csv"), default=argparse.SUPPRESS, help="output format"
    )
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="= --format json")
    common.add_argument("--now", metavar="TIME", default=argparse.SUPPRESS, help="report as of this UTC time")

    session_opt = argparse.ArgumentParser(add_help=False)
    session_opt.add_argument(
        "--session", metavar="ID", default=argparse.SUPPRESS, help="this session instead of the latest"
    )

    span = argparse.ArgumentParser(add_help=False)
    span.add_argument("--since", metavar="AGE", help="the last AGE: 30m, 24h, 7d, 2w")
    span.add_argument("--from", dest="from_", metavar="DATE", help="from this date or time (UTC)")
    span.add_argument("--to", metavar="DATE", help="to this date (included) or time (UTC)")

    def filters(with_env: bool = True) -> argparse.ArgumentParser:
        parent = argparse.ArgumentParser(add_help=False)
        if with_env:
            parent.add_argument("--env", action="append", metavar="NAME", help="only this environment")
        parent.add_argument("--model", action="append", metavar="GLOB", help="only models matching")
        parent.add_argument("--provider", action="append", metavar="NAME")
        parent.add_argument("--team", action="append", metavar="NAME")
        parent.add_argument("--feature", action="append", metavar="NAME")
        parent.add_argument("--user", action="append", metavar="NAME", help="OS user of the caller")
        parent.add_argument("--key", action="append", metavar="NAME", help="key name or fingerprint")
        parent.add_argument("--repo", action="append", metavar="NAME")
        return parent

    policy = argparse.ArgumentParser(add_help=False)
    policy.add_argument(
        "--policies",
        metavar="PATH",
        default="",
        help="policy file (default: $TOKOMETER_POLICIES, else the checkout's policies.yaml)",
    )
    chart = argparse.ArgumentParser(add_help=False)
    chart.add_argument("--chart", metavar="FILE.png", type=Path, help="also write a PNG chart")

    parser = argparse.ArgumentParser(
        prog="spend", description="What your metered LLM calls cost.", parents=[common, session_opt]
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser(
        "session", parents=[common, session_opt], help="one session's calls, tokens and cost (default)"
    )
    s.add_argument("id", nargs="?", metavar="ID", help="session id (default: the latest)")
    s = sub.add_parser("sessions", parents=[common], help="the newest sessions")
    s.add_argument("--limit", type=int, default=20, metavar="N", help="how many (default 20)")
    sub.add_parser(
        "summary", parents=[common, span, filters()], help="environments side by side (default: last 7 days)"
    )
    s = sub.add_parser("by", parents=[common, span, filters(), chart], help="totals per env, model, ..., day")
    s.add_argument(
        "dimension",
        choices=tuple(reports.DIMENSIONS),
        metavar="DIMENSION",
        help=", ".join(reports.DIMENSIONS),
    )
    sub.add_parser(
        "ratio", parents=[common, span, filters(with_env=False), chart], help="non-prod : prod cost per month"
    )
    s = sub.add_parser(
        "models", parents=[common, span, filters(), policy], help="weekly model use, premium flagged"
    )
    s.add_argument("--week", action="store_true", help="this week (the default)")
    s.add_argument("--weeks", type=int, metavar="N", help="the last N weeks, this one included")
    s.add_argument(
        "--premium-above",
        metavar="USD",
        help="premium: output above USD per million tokens (overrides policies)",
    )
    s.add_argument("--flagged", action="store_true", help="only premium use outside production")
    sub.add_parser(
        "savings", parents=[common, span, filters(), policy], help="what the downgrade targets would save"
    )
    sub.add_parser("budgets", parents=[common, policy], help="budgets: cap, spent, projection")
    sub.add_parser(
        "unpriced", parents=[common, span, filters()], help="calls no price list knows, and how to price them"
    )
    from addon.spend_watch import add_statusline_arguments, add_watch_arguments

    add_watch_arguments(
        sub.add_parser("watch", help="live view: session, burn rate, budgets, last calls"), defaults=False
    )
    add_statusline_arguments(
        sub.add_parser("statusline", help="one short line for a shell prompt"), defaults=False
    )
    return parser


# -- jobs ---------------------------------------------------------------------------------------------


def _job(command: str, args: argparse.Namespace) -> Job:
    """Everything that needs no database: arguments checked, the policy file read."""
    db = args.db_path
    now = _now(args)
    if (
        getattr(args, "chart", None) is not None
        and command == "by"
        and args.dimension not in CHART_DIMENSIONS
    ):
        raise UsageError("--chart draws spend per day, week or month: use it with by day|week|month")
    if command in ("session", "sessions") and getattr(args, "now", None):
        raise UsageError(f"--now does not apply to {command}: it shows sessions as stored")
    if command == "session":
        given = getattr(args, "id", None)
        option = getattr(args, "session", None)
        if given and option and given != option:
            raise UsageError("give the session id once")
        session_id = given or option
        return Job(lambda con: session_report(con, db, session_id), render.render_session, render.csv_session)
    if command == "unpriced":
        sel = _selection(args, now)
        return Job(
            lambda con: reports.unpriced_report(con, db, sel), render.render_unpriced, render.csv_unpriced
        )
    if command == "sessions":
        if args.limit < 1:
            raise UsageError("--limit must be at least 1")
        return Job(
            lambda con: reports.sessions_report(con, db, args.limit),
            render.render_sessions,
            render.csv_sessions,
        )
    if command == "summary":
        sel = _selection(args, now, default_since="7d")
        return Job(
            lambda con: reports.summary_report(con, db, sel), render.render_summary, render.csv_summary
        )
    if command == "by":
        sel = _selection(args, now)
        unit = args.dimension
        return Job(
            lambda con: reports.by_report(con, db, unit, sel),
            render.render_by,
            render.csv_by,
            chart_data=lambda con: reports.spend_by_period_and_environment(con, unit, sel),
            chart=lambda report, data, path: render.chart_stacked(data, unit, path),
        )
    if command == "ratio":
        sel = _selection(args, now)
        return Job(
            lambda con: reports.ratio_report(con, db, sel),
            render.render_ratio,
            render.csv_ratio,
            chart=lambda report, data, path: render.chart_ratio(report, path),
        )
    if command == "models":
        if args.weeks is not None and args.weeks < 1:
            raise UsageError("--weeks must be at least 1")
        if not (args.since or args.from_ or args.to):
            monday = datetime(now.year, now.month, now.day) - timedelta(days=now.weekday())
            args.from_ = (monday - timedelta(weeks=(args.weeks or 1) - 1)).isoformat()
        elif args.week or args.weeks:
            raise UsageError("use --week/--weeks or --since/--from/--to, not both")
        sel = _selection(args, now)
        policies = _policies(args)
        threshold = policies.premium_usd_per_mtok
        if args.premium_above is not None:
            try:
                threshold = Decimal(args.premium_above)
            except InvalidOperation:
                raise UsageError(f"--premium-above {args.premium_above!r} is not a number") from None
            if not threshold.is_finite() or threshold < 0:
                raise UsageError(f"--premium-above {args.premium_above!r} is not a price (USD per 1M tokens)")
        return Job(
            lambda con: reports.models_report(
                con, db, sel, policies, threshold, now, flagged_only=args.flagged
            ),
            render.render_models,
            render.csv_models,
        )
    if command == "savings":
        sel = _selection(args, now)
        policies = _policies(args)
        return Job(
            lambda con: reports.savings_report(con, db, sel, policies),
            render.render_savings,
            render.csv_savings,
        )
    if command == "budgets":
        policies = _policies(args)
        return Job(
            lambda con: reports.budgets_report(con, db, policies, now),
            render.render_budgets,
            render.csv_budgets,
        )
    raise UsageError(f"unknown command {command!r}")  # pragma: no cover (argparse checks)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``spend``; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    command = args.command or "session"
    if command in ("watch", "statusline"):  # their own options; scripts/spend runs statusline directly
        from addon import spend_watch

        if command == "watch":
            return spend_watch.run_watch(spend_watch.with_defaults(args, spend_watch.WATCH_DEFAULTS))
        return spend_watch.run_statusline(spend_watch.with_defaults(args, spend_watch.STATUSLINE_DEFAULTS))
    args.db_path = resolve_db_path(getattr(args, "db", "") or "").absolute()
    fmt = "json" if getattr(args, "json", False) else getattr(args, "format", "table")
    chart_path: Path | None = getattr(args, "chart", None)
    try:
        job = _job(command, args)
    except UsageError as exc:
        parser.error(str(exc))
    except ValueError as exc:  # PolicyError
        print(f"spend: policies: {exc}", file=sys.stderr)
        return 1
    chart_data = None
    try:
        with reading(args.db_path, fresh=True) as con:  # closed at once: the proxy's writer waits meanwhile
            report = job.build(con)
            if chart_path is not None and job.chart_data is not None:
                chart_data = job.chart_data(con)
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
    except RuntimeError as exc:  # DuckDB on a path that is not UTF-8 ("std::bad_cast")
        shown = os.fsencode(args.db_path).decode("utf-8", "backslashreplace")
        print(f"spend: cannot read {shown}: {exc} (DuckDB needs a UTF-8 path)", file=sys.stderr)
        return 1
    except LookupError as exc:
        print(f"spend: {exc.args[0]}", file=sys.stderr)
        return 1
    if fmt == "json":
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    elif fmt == "csv":
        sys.stdout.write(job.csv(report))
    else:  # model names and errors come from clients: no escape sequence reaches the terminal
        sys.stdout.write(_CONTROL.sub("?", job.text(report)))
    if chart_path is not None and job.chart is not None:
        try:
            job.chart(report, chart_data, chart_path)
        except OSError as exc:
            print(f"spend: cannot write the chart {chart_path}: {exc}", file=sys.stderr)
            return 1
        print(f"spend: chart written to {chart_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
