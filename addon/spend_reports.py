"""The reports of ``scripts/spend`` as data: SQL in DuckDB, one JSON-ready dict per report.

Every report is one or two GROUP BY queries; Python only loops over the groups they return
(a few hundred at most), never over calls. The shapes are documented in ``addon.spend``.

Conventions shared by all reports:

- The model of a call is ``MODEL_SQL``: the genai-prices id it was priced under
  (``price_model``), else the model the provider reported, else the one sent, else the one
  requested. Dated snapshots priced as their base model fold into it (``gpt-4o-2024-08-06``
  and ``gpt-4o`` are one row, ``gpt-4o``); an unpriced call keeps the name it was called by.
- A call is counted once, by its own row (``addon.record.CALL_ROW_SQL``): the rows billed apart
  from it (an advisor's, a declined hop's, an image_generation tool's or its SVG author's tokens:
  ``parent_id`` names the call, or their ``error`` does where no ``parent_id`` was written) are
  parts of it, counted in no ``calls`` (a model used only in such parts shows 0 calls and its
  cost). A background response's or batch's call (its $0 creation row, ``price_status =
  'background'``, and the retrieval rows that bill it, ``parent_id`` naming it) is counted on one
  row, its representative (``is_call``, see ``_shadow_calls``): the retrieval row (of several, one
  with usage, the least id), else, never retrieved, the creation row; the creation row takes the
  representative's model. Sums of tokens and money take every row; ``unpriced_calls`` counts rows
  (a part without a price is one).
- Refused calls (``action`` blocked, over_budget or rate_limited) count in ``calls`` and in
  ``refused_calls``; they have no usage and cost 0.
- Money is ``Decimal`` here, an exact string in JSON. A sum of costs ignores calls whose price
  is unknown (``unpriced_calls`` says how many); it is None when no call of the group has one.
- Production is the environment ``production`` (or ``prod``); every other one, including
  calls with no environment, is non-production.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from addon.record import BILLED_APART_SQL, CALL_ROW_SQL

if TYPE_CHECKING:
    from addon.policies import Budget, Policies
    from addon.pricing import Pricer

SCHEMA = 1
REFUSED_ACTIONS = ("blocked", "over_budget", "rate_limited")
PRODUCTION_NAMES = ("production", "prod")
RATIO_FLAG_ABOVE = Decimal("0.5")  # non-production cost above half of production: worse than 1:2
TREND_STEADY_BELOW = 0.02  # |slope| of the monthly ratio under this is "steady"
MIN_BURN_HOURS = 1  # budgets: the projection uses at least one hour of elapsed period
ENV_ORDER = ("development", "dev", "test", "ci", "staging", "stage", "preview", "production")

MODEL_SQL = "coalesce(price_model, model_reported, model_sent, model_requested, '(unknown)')"
_REFUSED_SQL = "coalesce(action, 'allowed') IN ('blocked', 'over_budget', 'rate_limited')"
_HAS_USAGE_SQL = "(input_tokens IS NOT NULL OR output_tokens IS NOT NULL)"
_PRODUCTION_SQL = "lower(coalesce(environment, '')) IN ('production', 'prod')"
# The name the proxy decided on (its allowlist matched it): the model sent, else the one requested.
# Rules are matched against it, not the report model (price_model spells a Bedrock call
# "regional.anthropic.claude-...", which no rule names).
DECIDED_SQL = "coalesce(model_sent, model_requested)"


def count_calls(condition: str = "TRUE") -> str:
    """SQL counting the calls of a group that meet ``condition``, each on its representative row
    (``is_call``, a column of the ``calls`` reports read: ``_shadow_calls``), never on a part.

    Not count(DISTINCT coalesce(parent_id, id)): that costs 200-900 ms a report on 1M rows (against
    10-90), and a part's row is in every group its call's row is in but a model's."""
    return f"count(*) FILTER (WHERE is_call AND ({condition}))"


# A video job (no tokens: priced by its seconds) at a model or size no table prices is unpriced too.
_VIDEO_UNPRICED_SQL = "coalesce(api_flavor = 'video' AND price_status = 'unknown_model', false)"
# a row with usage (or a video job) but no known price
_UNPRICED_SQL = f"(cost_usd IS NULL AND ({_HAS_USAGE_SQL} OR {_VIDEO_UNPRICED_SQL}))"
# Rows, parts included: a part without a price leaves its amount out of the cost as a call would.
_UNPRICED_CALLS_SQL = f"count(*) FILTER (WHERE {_UNPRICED_SQL})"
# A row with a cost and no tokens (a video job, priced by its seconds) is in the cost, an unpriced
# video job in unpriced_calls: neither is counted.
_NO_USAGE_CALLS_SQL = count_calls(
    f"NOT {_HAS_USAGE_SQL} AND NOT {_REFUSED_SQL} AND cost_usd IS NULL AND NOT {_VIDEO_UNPRICED_SQL} "
    "AND coalesce(price_status, '') NOT IN ('not_billed', 'subscription', 'background')"
)


def count_calls_with_usage(condition: str = "TRUE") -> str:
    """SQL counting the calls with usage of a group that meet ``condition``: once per call, on its
    representative row (a background call's is a retrieval row with usage if it has one), not
    once per row carrying usage (a Message Batch of two models bills two)."""
    return count_calls(f"{_HAS_USAGE_SQL} AND ({condition})")


# Calls with usage and a known price, a subscription plan's $0 calls aside.
_API_PRICED_CALLS_SQL = count_calls_with_usage(
    "cost_usd IS NOT NULL AND coalesce(price_status, '') <> 'subscription'"
)


TOTAL_KEYS = (
    "calls",
    "refused_calls",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "unpriced_calls",
    "no_usage_calls",
    "cost_usd",
)

# The TOTALS columns, in TOTAL_KEYS order, over whatever rows the query groups.
METRICS_SQL = f"""
    {count_calls()} AS calls,
    {count_calls(_REFUSED_SQL)} AS refused_calls,
    coalesce(sum(input_tokens), 0) AS input_tokens,
    coalesce(sum(cache_read_tokens), 0) AS cache_read_tokens,
    coalesce(sum(cache_write_tokens), 0) AS cache_write_tokens,
    coalesce(sum(output_tokens), 0) AS output_tokens,
    coalesce(sum(reasoning_tokens), 0) AS reasoning_tokens,
    {_UNPRICED_CALLS_SQL} AS unpriced_calls,
    {_NO_USAGE_CALLS_SQL} AS no_usage_calls,
    sum(cost_usd) AS cost_usd
"""

# Each key fingerprint's current name: the name its newest named row has (a key named in keys:
# after its first calls has rows with only its fingerprint before).
_KEY_NAMES_SQL = """
SELECT key_fingerprint AS fingerprint, arg_max(key_name, ts) AS name FROM calls
WHERE key_fingerprint IS NOT NULL AND key_name IS NOT NULL GROUP BY key_fingerprint
"""

# `spend by DIMENSION`: the SQL of each grouping key (time keys are ISO date strings; `key` is
# read by fingerprint, under its current name: `_KEY_NAMES_SQL`).
DIMENSIONS: Mapping[str, str] = {
    "env": "environment",
    "model": MODEL_SQL,
    "provider": "provider",
    "team": "team",
    "feature": "feature",
    "user": "user_name",
    "key": "coalesce(key_name, key_fingerprint)",
    "repo": "repo",
    "day": "strftime(date_trunc('day', ts), '%Y-%m-%d')",
    "week": "strftime(date_trunc('week', ts), '%Y-%m-%d')",
    "month": "strftime(date_trunc('month', ts), '%Y-%m')",
}
TIME_DIMENSIONS = ("day", "week", "month")


# -- selection: time range and filters -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selection:
    """Which calls a report covers: ``[start, end)`` in naive UTC, and filters (OR within one)."""

    start: datetime | None = None
    end: datetime | None = None
    environments: tuple[str, ...] = ()
    models: tuple[str, ...] = ()  # glob patterns, on the report model and every model column
    providers: tuple[str, ...] = ()
    teams: tuple[str, ...] = ()
    features: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()  # key_name or key_fingerprint
    repos: tuple[str, ...] = ()

    def where(self) -> tuple[str, list[Any]]:
        """A SQL condition (never empty) and its parameters."""
        parts: list[str] = ["TRUE"]
        params: list[Any] = []
        if self.start is not None:
            parts.append("ts >= ?")
            params.append(self.start)
        if self.end is not None:
            parts.append("ts < ?")
            params.append(self.end)
        for column, values in (
            ("environment", self.environments),
            ("provider", self.providers),
            ("team", self.teams),
            ("feature", self.features),
            ("user_name", self.users),
            ("repo", self.repos),
        ):
            if values:
                parts.append(f"{column} IN ({', '.join('?' * len(values))})")
                params.extend(values)
        if self.keys:
            # A key's rows from before it was named in keys: carry its fingerprint only.
            marks = ", ".join("?" * len(self.keys))
            parts.append(
                f"(key_name IN ({marks}) OR key_fingerprint IN ({marks}) OR key_fingerprint IN "
                f"(SELECT key_fingerprint FROM calls WHERE key_name IN ({marks}) "
                "AND key_fingerprint IS NOT NULL))"
            )
            params.extend([*self.keys, *self.keys, *self.keys])
        if self.models:
            ors = []
            for pattern in self.models:
                ors.append(
                    f"({MODEL_SQL} GLOB ? OR model_reported GLOB ? OR model_sent GLOB ? "
                    "OR model_requested GLOB ?)"
                )
                params.extend([pattern] * 4)
            parts.append("(" + " OR ".join(ors) + ")")
        return " AND ".join(parts), params

    def range_json(self) -> dict[str, str | None]:
        """``{"from", "to"}`` as ISO 8601 UTC (null when open)."""
        return {"from": iso(self.start), "to": iso(self.end)}

    def filters_json(self) -> dict[str, list[str]]:
        """Every filter, ``[]`` when not set."""
        return {
            "environment": list(self.environments),
            "model": list(self.models),
            "provider": list(self.providers),
            "team": list(self.teams),
            "feature": list(self.features),
            "user": list(self.users),
            "key": list(self.keys),
            "repo": list(self.repos),
        }


# -- helpers ------------------------------------------------------------------------------------


def iso(ts: datetime | None) -> str | None:
    """ISO 8601 with ``+00:00`` for a naive-UTC timestamp."""
    return None if ts is None else ts.replace(tzinfo=UTC).isoformat()


def decimal_str(value: Decimal | None) -> str | None:
    """Exact, without trailing zeros or exponent: Decimal('0.0100350000') -> '0.010035'."""
    if value is None:
        return None
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def _ratio(part: Decimal | int | None, whole: Decimal | int | None, places: int = 4) -> float | None:
    if part is None or not whole:
        return None
    return round(float(Decimal(part) / Decimal(whole)), places)


def significant(value: float, places: int = 4, digits: int = 2) -> float:
    """``value`` rounded to ``places`` places, or, below 0.1, to ``digits`` significant digits:
    0.0000205 reads 2.1e-05, not 0.0 (a little is not none); 3.14159 reads 3.1416."""
    if value == 0 or abs(value) >= 0.1:
        return round(value, places)
    return float(f"{value:.{digits}g}")


def _call_columns(con: duckdb.DuckDBPyConnection) -> set[str]:
    """The columns of ``calls`` in the database read."""
    rows = con.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_name = 'calls' AND table_catalog = current_database()"
    ).fetchall()
    return {name for (name,) in rows}


def tables_exist(con: duckdb.DuckDBPyConnection) -> bool:
    """True once the proxy has created the tables (a new file may have none yet).

    A file an older proxy wrote lacks the columns later migrations added (a report opens it
    read-only: it is not migrated): ``calls`` is then read through a temporary view that adds
    them, NULL (``_shadow_calls``), so every report runs on it.
    """
    found = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name IN ('calls', 'sessions')"
    ).fetchone()
    exists = bool(found and found[0] == 2)
    if exists:
        _shadow_calls(con)
    return exists


def _column_types() -> dict[str, str]:
    """The SQL type of each column of ``calls`` (``addon.record.CallRecord``'s fields)."""
    import dataclasses

    from addon.record import CallRecord

    types = {"str": "VARCHAR", "int": "BIGINT", "float": "DOUBLE", "bool": "BOOLEAN"}
    types |= {"Decimal": "DECIMAL(18, 10)", "datetime": "TIMESTAMP"}
    return {f.name: types[str(f.type).split(" |")[0]] for f in dataclasses.fields(CallRecord)}


# A background response's or batch's creation row: the call, until a retrieval row bills it.
_BACKGROUND_CALL_SQL = f"price_status = 'background' AND {CALL_ROW_SQL}"


def _shadow_calls(con: duckdb.DuckDBPyConnection) -> None:
    """Shadow ``calls`` with a temporary view of it, for this connection only (the file is left as
    it is), that adds ``is_call`` (the row counts its call) and any of ``CallRecord``'s columns
    the file lacks (NULL: a file an older proxy wrote, opened read-only, is not migrated).

    ``is_call`` is ``CALL_ROW_SQL`` (a call's own row, not a part), save for a background call
    (``_BACKGROUND_CALL_SQL``) whose retrieval rows (``parent_id`` names its creation row, not
    billed apart) are stored: its
    representative is one of them, one with usage if any, the least id, and its creation row is
    not the call but takes the representative's report model (``MODEL_SQL``), so the call, its
    usage and its cost are one model's. The representatives are found once per connection into a
    small temporary table; a file without any keeps the view free of joins.
    """
    present = _call_columns(con)
    catalog = con.execute("SELECT current_database()").fetchone()
    assert catalog is not None
    table = '"' + str(catalog[0]).replace('"', '""') + '".main.calls'
    types = _column_types()
    added = "".join(f", NULL::{kind} AS {name}" for name, kind in types.items() if name not in present)
    source = f"(SELECT *{added} FROM {table})"
    represented = 0
    if "parent_id" in present:
        has_usage = _HAS_USAGE_SQL
        # Per row of a background call: (its id, counts the call, the model it is filed under).
        con.execute(
            f"""CREATE OR REPLACE TEMPORARY TABLE call_representatives AS
            WITH rep AS MATERIALIZED (
                SELECT parent_id AS call_id,
                       arg_min(id, (NOT {has_usage}, id)) AS row_id,
                       arg_min({MODEL_SQL}, (NOT {has_usage}, id)) AS model
                FROM {source}
                WHERE parent_id IN (SELECT id FROM {source} WHERE {_BACKGROUND_CALL_SQL})
                  AND NOT {BILLED_APART_SQL}
                GROUP BY parent_id
            )
            SELECT call_id AS id, false AS is_call, model FROM rep
            UNION ALL SELECT row_id AS id, true AS is_call, NULL AS model FROM rep"""
        )
        found = con.execute("SELECT count(*) FROM call_representatives").fetchone()
        represented = found[0] if found else 0
    if not represented:
        view = f"SELECT *, {CALL_ROW_SQL} AS is_call FROM {source}"
    else:  # one join, on a table of 2 rows per background call
        view = f"""SELECT c.* REPLACE (coalesce(r.model, c.price_model) AS price_model),
            coalesce(r.is_call, {CALL_ROW_SQL}) AS is_call
            FROM {source} AS c LEFT JOIN call_representatives AS r ON r.id = c.id"""
    con.execute(f"CREATE OR REPLACE TEMPORARY VIEW calls AS {view}")


def _rows(cur: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description or ()]
    return [dict(zip(names, values, strict=True)) for values in cur.fetchall()]


def _totals(row: Mapping[str, Any]) -> dict[str, Any]:
    totals = {key: row[key] for key in TOTAL_KEYS}
    totals["cost_usd"] = decimal_str(totals["cost_usd"])
    return totals


def empty_totals() -> dict[str, Any]:
    """TOTALS of no call."""
    return {key: (None if key == "cost_usd" else 0) for key in TOTAL_KEYS}


def env_sort_key(name: str | None) -> tuple[int, int, str]:
    """development, ..., staging, then unknown names alphabetically, production last."""
    text = (name or "").lower()
    production = text in PRODUCTION_NAMES
    known = ENV_ORDER.index(text) if text in ENV_ORDER else len(ENV_ORDER)
    return (1 if production else 0, known, text)


def _envelope(report: str, db: Path, selection: Selection | None = None) -> dict[str, Any]:
    head: dict[str, Any] = {"schema": SCHEMA, "report": report, "db": str(db)}
    if selection is not None:
        head["range"] = selection.range_json()
        head["filters"] = selection.filters_json()
    return head


def _base(selection: Selection) -> tuple[str, list[Any]]:
    """``c``: the selected calls with their report ``model``."""
    where, params = selection.where()
    return f"WITH c AS (SELECT *, {MODEL_SQL} AS model FROM calls WHERE {where})", params


# -- session, sessions ----------------------------------------------------------------------------

_LATEST_SESSION_SQL = """
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

_SESSION_SQL = """
SELECT ?::VARCHAR AS session_id,
       coalesce(s.started_at, (SELECT min(ts) FROM calls WHERE session_id = ?)) AS started_at,
       s.ended_at, s.hostname, s.pid, s.version
FROM (SELECT 1) AS one
LEFT JOIN sessions AS s ON s.session_id = ?
"""

_SESSION_TOTALS_SQL = f"""
WITH c AS (SELECT *, {MODEL_SQL} AS model FROM calls WHERE session_id = ?)
SELECT grouping(model) = 0 AS by_model, grouping(environment) = 0 AS by_env, model, environment,
{METRICS_SQL}
FROM c
GROUP BY GROUPING SETS ((model), (environment), ())
ORDER BY cost_usd DESC NULLS LAST, calls DESC, model, environment
"""


def session_report(con: duckdb.DuckDBPyConnection, db: Path, session_id: str | None) -> dict[str, Any]:
    """One session (the latest when ``session_id`` is None): totals, by model, by environment."""
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "report": "session",
        "db": str(db),
        "session": None,
        "total": empty_totals(),
        "by_model": [],
        "by_environment": [],
    }
    if not tables_exist(con):
        if session_id is not None:
            raise LookupError(f"no session {session_id!r} in {db}")
        return report
    if session_id is None:
        row = con.execute(_LATEST_SESSION_SQL).fetchone()
        if row is None:
            return report
        session_id = row[0]
    srow = con.execute(_SESSION_SQL, [session_id, session_id, session_id]).fetchone()
    assert srow is not None
    if srow[1] is None and srow[2] is None:  # no sessions row, no call
        raise LookupError(f"no session {session_id!r} in {db}")
    report["session"] = {
        "session_id": srow[0],
        "started_at": iso(srow[1]),
        "ended_at": iso(srow[2]),
        "hostname": srow[3],
        "pid": srow[4],
        "version": srow[5],
    }
    for row in _rows(con.execute(_SESSION_TOTALS_SQL, [session_id])):
        if row["by_model"]:
            report["by_model"].append({"model": row["model"], **_totals(row)})
        elif row["by_env"]:
            report["by_environment"].append({"environment": row["environment"], **_totals(row)})
        else:
            report["total"] = _totals(row)
    report["by_environment"].sort(key=lambda r: env_sort_key(r["environment"]))
    return report


_SESSIONS_SQL = f"""
WITH per AS (
    SELECT session_id, {count_calls()} AS calls, sum(cost_usd) AS cost_usd, min(ts) AS first_ts,
           max(ts) AS last_ts,
           {_UNPRICED_CALLS_SQL} AS unpriced_calls
    FROM calls GROUP BY session_id
)
SELECT coalesce(s.session_id, per.session_id) AS session_id,
       coalesce(s.started_at, per.first_ts) AS started_at, s.ended_at, s.hostname, s.pid, s.version,
       coalesce(per.calls, 0) AS calls,
       CASE WHEN per.calls IS NULL THEN 0 ELSE per.cost_usd END AS cost_usd, per.last_ts,
       coalesce(per.unpriced_calls, 0) AS unpriced_calls
FROM sessions AS s FULL OUTER JOIN per ON per.session_id = s.session_id
ORDER BY started_at DESC NULLS LAST, session_id DESC
LIMIT ?
"""


def sessions_report(con: duckdb.DuckDBPyConnection, db: Path, limit: int) -> dict[str, Any]:
    """The newest ``limit`` sessions with their calls and cost."""
    report = _envelope("sessions", db) | {"sessions": []}
    if not tables_exist(con):
        return report
    for row in _rows(con.execute(_SESSIONS_SQL, [limit])):
        report["sessions"].append(
            {
                "session_id": row["session_id"],
                "started_at": iso(row["started_at"]),
                "ended_at": iso(row["ended_at"]),
                "last_call_at": iso(row["last_ts"]),
                "hostname": row["hostname"],
                "pid": row["pid"],
                "version": row["version"],
                "calls": row["calls"],
                "cost_usd": decimal_str(row["cost_usd"]),
                "unpriced_calls": row["unpriced_calls"],
            }
        )
    return report


# -- by -------------------------------------------------------------------------------------------


def by_report(
    con: duckdb.DuckDBPyConnection, db: Path, dimension: str, selection: Selection
) -> dict[str, Any]:
    """Totals per value of ``dimension`` (a DIMENSIONS key) and overall, with cost shares."""
    key_sql = DIMENSIONS[dimension]
    report = _envelope("by", db, selection) | {"dimension": dimension, "rows": [], "total": empty_totals()}
    if not tables_exist(con):
        return report
    base, params = _base(selection)
    order = "key" if dimension in TIME_DIMENSIONS else "cost_usd DESC NULLS LAST, calls DESC, key"
    source = f"(SELECT *, {key_sql} AS key FROM c)"
    if dimension == "key":  # by fingerprint, under its current name
        source = (
            "(SELECT c.*, coalesce(n.name, c.key_name, c.key_fingerprint) AS key FROM c "
            f"LEFT JOIN ({_KEY_NAMES_SQL}) AS n ON n.fingerprint = c.key_fingerprint)"
        )
    sql = f"""{base}
        SELECT grouping(key) = 1 AS is_total, key, {METRICS_SQL}
        FROM {source}
        GROUP BY GROUPING SETS ((key), ())
        ORDER BY is_total, {order} NULLS LAST
    """
    rows = _rows(con.execute(sql, params))
    if not rows:  # GROUPING SETS over no row still yields the () row; be safe anyway
        return report
    total_row = rows[-1]
    total_cost = total_row["cost_usd"]
    report["total"] = _totals(total_row)
    for row in rows[:-1]:
        report["rows"].append(
            {"key": row["key"], **_totals(row), "share": _ratio(row["cost_usd"], total_cost)}
        )
    return report


def spend_by_period_and_environment(
    con: duckdb.DuckDBPyConnection, unit: str, selection: Selection
) -> list[tuple[str, str | None, Decimal]]:
    """``(period, environment, cost)`` per day/week/month and environment (for the stacked chart)."""
    if not tables_exist(con):
        return []
    where, params = selection.where()
    key_sql = DIMENSIONS[unit]
    sql = f"""
        SELECT {key_sql} AS period, environment, coalesce(sum(cost_usd), 0) AS cost
        FROM calls WHERE {where}
        GROUP BY ALL ORDER BY period, environment
    """
    return [(row[0], row[1], row[2]) for row in con.execute(sql, params).fetchall()]


# -- summary --------------------------------------------------------------------------------------

_SUMMARY_EXTRA_SQL = f"""
    {count_calls_with_usage()} AS usage_calls,
    {_API_PRICED_CALLS_SQL} AS api_priced_calls,
    sum(input_tokens) AS usage_input,
    sum(output_tokens) AS usage_output
"""


def summary_report(con: duckdb.DuckDBPyConnection, db: Path, selection: Selection) -> dict[str, Any]:
    """Environments side by side: model mix, average tokens, cache hit rate, cost per call, totals.

    Cost per call divides the cost by the calls with usage and a known price, leaving out the
    calls a subscription plan paid (stored at $0, they would dilute it), as savings and
    budgets leave them out.
    """
    report = _envelope("summary", db, selection) | {"environments": [], "total": _summary_entry(None, None)}
    if not tables_exist(con):
        return report
    base, params = _base(selection)
    env_rows = _rows(
        con.execute(
            f"""{base}
            SELECT grouping(environment) = 1 AS is_total, environment, {METRICS_SQL}, {_SUMMARY_EXTRA_SQL}
            FROM c GROUP BY GROUPING SETS ((environment), ())
            """,
            params,
        )
    )
    mix_rows = _rows(
        con.execute(
            f"""{base}
            SELECT grouping(environment) = 1 AS is_total, environment, model, {count_calls()} AS calls,
                   sum(cost_usd) AS cost_usd
            FROM c GROUP BY GROUPING SETS ((environment, model), (model))
            ORDER BY calls DESC, cost_usd DESC NULLS LAST, model
            """,
            params,
        )
    )
    mixes: dict[tuple[bool, str | None], list[dict[str, Any]]] = {}
    for row in mix_rows:
        mixes.setdefault((row["is_total"], row["environment"]), []).append(row)
    for row in env_rows:
        entry = _summary_entry(row, mixes.get((row["is_total"], row["environment"]), []))
        if row["is_total"]:
            report["total"] = entry
        else:
            report["environments"].append({"environment": row["environment"], **entry})
    report["environments"].sort(key=lambda e: env_sort_key(e["environment"]))
    return report


def _summary_entry(row: Mapping[str, Any] | None, mix: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    if row is None:
        return {
            **empty_totals(),
            "usage_calls": 0,
            "avg_input_tokens": None,
            "avg_output_tokens": None,
            "cache_hit_rate": None,
            "cost_per_call_usd": None,
            "models": [],
        }
    usage_calls = row["usage_calls"]
    cost = row["cost_usd"]
    per_call = None
    if cost is not None and row["api_priced_calls"]:
        per_call = (cost / row["api_priced_calls"]).quantize(Decimal("1e-10"))
    return {
        **_totals(row),
        "usage_calls": usage_calls,
        "avg_input_tokens": round(row["usage_input"] / usage_calls, 1) if usage_calls else None,
        "avg_output_tokens": round(row["usage_output"] / usage_calls, 1) if usage_calls else None,
        "cache_hit_rate": _ratio(row["cache_read_tokens"], row["input_tokens"]),
        "cost_per_call_usd": decimal_str(per_call),
        "models": [
            {
                "model": m["model"],
                "calls": m["calls"],
                "share": _ratio(m["calls"], row["calls"]),
                "cost_usd": decimal_str(m["cost_usd"]),
            }
            for m in mix or ()
        ],
    }


# -- ratio ----------------------------------------------------------------------------------------


def ratio_report(con: duckdb.DuckDBPyConnection, db: Path, selection: Selection) -> dict[str, Any]:
    """Non-production to production cost per month, months worse than 1:2 flagged, and the trend."""
    report = _envelope("ratio", db, selection) | {
        "production": list(PRODUCTION_NAMES),
        "flag_above": float(RATIO_FLAG_ABOVE),
        "months": [],
        "trend": {"direction": None, "slope_per_month": None},
    }
    if not tables_exist(con):
        return report
    where, params = selection.where()
    sql = f"""
        SELECT strftime(date_trunc('month', ts), '%Y-%m') AS month,
               coalesce(sum(cost_usd) FILTER (WHERE NOT {_PRODUCTION_SQL}), 0) AS nonprod,
               coalesce(sum(cost_usd) FILTER (WHERE {_PRODUCTION_SQL}), 0) AS prod,
               {count_calls(f"NOT {_PRODUCTION_SQL}")} AS nonprod_calls,
               {count_calls(_PRODUCTION_SQL)} AS prod_calls,
               count(*) FILTER (WHERE NOT {_PRODUCTION_SQL} AND {_UNPRICED_SQL}) AS nonprod_unpriced_calls,
               count(*) FILTER (WHERE {_PRODUCTION_SQL} AND {_UNPRICED_SQL}) AS prod_unpriced_calls,
               {_UNPRICED_CALLS_SQL} AS unpriced_calls
        FROM calls WHERE {where}
        GROUP BY month ORDER BY month
    """
    ratio_by_month: dict[int, float] = {}  # calendar month number (year * 12 + month) -> ratio
    for row in _rows(con.execute(sql, params)):
        nonprod, prod = row["nonprod"], row["prod"]
        ratio = _ratio(nonprod, prod)
        flagged = nonprod > 0 and (prod == 0 or nonprod / prod > RATIO_FLAG_ABOVE)
        # no ratio: no one_to
        one_to = None if ratio is None or nonprod == 0 else significant(float(prod / nonprod))
        month_x = month_number(row["month"])
        previous = ratio_by_month.get(month_x - 1)  # None: no calls or no production cost then
        change = None if ratio is None or previous is None else round(ratio - previous, 4)
        report["months"].append(
            {
                "month": row["month"],
                "nonprod_cost_usd": decimal_str(nonprod),
                "prod_cost_usd": decimal_str(prod),
                "nonprod_calls": row["nonprod_calls"],
                "prod_calls": row["prod_calls"],
                # calls with no known price: not in the costs (either side's, or the month's)
                "nonprod_unpriced_calls": row["nonprod_unpriced_calls"],
                "prod_unpriced_calls": row["prod_unpriced_calls"],
                "unpriced_calls": row["unpriced_calls"],
                "ratio": ratio,
                "one_to": one_to,
                "flagged": flagged,
                "change": change,
            }
        )
        if ratio is not None:
            ratio_by_month[month_x] = ratio
    report["trend"] = _trend(sorted(ratio_by_month.items()))
    return report


def month_number(month: str) -> int:
    """``YYYY-MM`` as a count of calendar months (``year * 12 + month``): consecutive months differ by 1."""
    year, number = month.split("-")
    return int(year) * 12 + int(number)


def _trend(points: Sequence[tuple[int, float]]) -> dict[str, Any]:
    """Least-squares slope of the monthly ratio over ``(calendar month number, ratio)`` points:
    improving (falling), worsening (rising), steady."""
    if len(points) < 2:
        return {"direction": None, "slope_per_month": None}
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
    direction = "steady" if abs(slope) < TREND_STEADY_BELOW else "worsening" if slope > 0 else "improving"
    return {"direction": direction, "slope_per_month": round(slope, 4)}


# -- models (premium use outside production) -----------------------------------------------------


def output_usd_per_mtok(pricer: Pricer, provider: str, model: str, when: datetime) -> Decimal | None:
    """The price of one million output tokens of ``model``, as the proxy prices it (None: unknown)."""
    from addon.usage import Usage

    return pricer.price_usage(provider, (model,), Usage(output_tokens=1_000_000), when).cost_usd


def models_report(
    con: duckdb.DuckDBPyConnection,
    db: Path,
    selection: Selection,
    policies: Policies,
    premium_usd_per_mtok: Decimal | None,
    now: datetime,
    *,
    flagged_only: bool = False,
) -> dict[str, Any]:
    """Model use per week, environment and user; premium use outside production flagged.

    Premium: not in the environment's allowlist, or an output price above
    ``premium_usd_per_mtok`` (per million tokens, when set). ``flagged_only`` keeps only the
    flagged rows (the ``flagged`` totals are the same either way).
    """
    report = _envelope("models", db, selection) | {
        "premium_usd_per_mtok": decimal_str(premium_usd_per_mtok),
        "rows": [],
        "flagged": {"calls": 0, "cost_usd": None, "by_user": []},
    }
    if not tables_exist(con):
        return report
    base, params = _base(selection)
    sql = f"""{base}
        SELECT strftime(date_trunc('week', ts), '%Y-%m-%d') AS week, environment, user_name,
               provider, model, {count_calls()} AS calls, {count_calls(_REFUSED_SQL)} AS refused_calls,
               coalesce(sum(input_tokens), 0) AS input_tokens,
               coalesce(sum(output_tokens), 0) AS output_tokens, sum(cost_usd) AS cost_usd,
               {_UNPRICED_CALLS_SQL} AS unpriced_calls
        FROM c GROUP BY ALL
        ORDER BY week DESC, environment, user_name NULLS LAST, cost_usd DESC NULLS LAST, calls DESC, model
    """
    from addon.pricing import Pricer

    pricer = Pricer.for_policies(policies)
    # The names the proxy decided on, per environment and model (one small DISTINCT: ~10 ms on 1M
    # rows, a list(DISTINCT) in the query above costs twice that).
    decided: dict[tuple[str | None, str], list[str]] = {}
    for env_name, model_name, name in con.execute(
        f"{base} SELECT DISTINCT environment, model, {DECIDED_SQL} FROM c WHERE {DECIDED_SQL} IS NOT NULL",
        params,
    ).fetchall():
        decided.setdefault((env_name, model_name), []).append(name)
    prices: dict[tuple[str, str], Decimal | None] = {}
    flagged_users: dict[str | None, list[Any]] = {}
    flagged_calls = 0
    flagged_cost: Decimal | None = None
    for row in _rows(con.execute(sql, params)):
        model, provider, env = row["model"], row["provider"] or "", row["environment"]
        reasons: list[str] = []
        out_price: Decimal | None = None
        if model != "(unknown)":
            rules = policies.environment(env or policies.default_environment).models
            if not all(rules.is_allowed(name) for name in decided.get((env, model)) or [model]):
                reasons.append("not_allowed")
            if (provider, model) not in prices:
                prices[provider, model] = output_usd_per_mtok(pricer, provider, model, now)
            out_price = prices[provider, model]
            if (
                premium_usd_per_mtok is not None
                and out_price is not None
                and out_price > premium_usd_per_mtok
            ):
                reasons.append("price")
        flagged = bool(reasons) and (env or "").lower() not in PRODUCTION_NAMES
        if flagged or not flagged_only:
            report["rows"].append(
                {
                    "week": row["week"],
                    "environment": env,
                    "user": row["user_name"],
                    "provider": row["provider"],
                    "model": model,
                    "calls": row["calls"],
                    "refused_calls": row["refused_calls"],
                    "input_tokens": row["input_tokens"],
                    "output_tokens": row["output_tokens"],
                    "cost_usd": decimal_str(row["cost_usd"]),
                    "unpriced_calls": row["unpriced_calls"],
                    "output_usd_per_mtok": decimal_str(out_price),
                    "premium": bool(reasons),
                    "premium_reasons": reasons,
                    "flagged": flagged,
                }
            )
        if flagged:
            flagged_calls += row["calls"]
            user = flagged_users.setdefault(row["user_name"], [0, None])
            user[0] += row["calls"]
            if row["cost_usd"] is not None:
                user[1] = (user[1] or Decimal(0)) + row["cost_usd"]
                flagged_cost = (flagged_cost or Decimal(0)) + row["cost_usd"]
    report["rows"].sort(key=lambda r: env_sort_key(r["environment"]))  # stable: SQL order within
    report["rows"].sort(key=lambda r: r["week"], reverse=True)
    by_user = sorted(flagged_users.items(), key=lambda kv: (-(kv[1][1] or 0), -kv[1][0], kv[0] or ""))
    report["flagged"] = {
        "calls": flagged_calls,
        "cost_usd": decimal_str(flagged_cost),
        "by_user": [{"user": u, "calls": c, "cost_usd": decimal_str(cost)} for u, (c, cost) in by_user],
    }
    return report


# -- savings (what-if with the downgrade targets) ------------------------------------------------


# Per-call amounts summed for a re-price, besides the token buckets: they are billed whatever the
# model (a search costs its fee on the target too), so a downgrade keeps paying them; then the
# audio and image parts of the counts, re-priced at the target's audio and image rates.
_REPRICE_EXTRAS = (
    "cache_write_1h_tokens",
    "web_searches",
    "file_searches",
    "input_audio_tokens",
    "output_audio_tokens",
    "input_image_tokens",
    "output_image_tokens",
    "cache_audio_read_tokens",
)
# The buckets ``_reprice`` prices (uncached input, cache reads, 5-minute writes, output, 1-hour
# writes, web searches, file searches, input audio, output audio, input images, output images,
# cached audio), and what one more of each adds to the others: an audio or image token is one of
# the input or output tokens, a cached audio token one of the cache reads and input audio tokens.
_WITHIN = {7: (0,), 8: (3,), 9: (0,), 10: (3,), 11: (7, 1)}


def _reprice(
    pricer: Pricer,
    provider: str,
    model: str,
    calls: int,
    sums: Sequence[int],
    when: datetime,
    service_tier: str | None = None,
    inference_geo: str | None = None,
) -> Decimal | None:
    """The price of ``calls`` calls that total ``sums`` (input, cache read, cache write, output,
    then ``_REPRICE_EXTRAS``: zeros if not given), as the proxy would price them (policies.yaml
    ``prices:`` first, the provider's price id, the call's service tier and inference geo).

    Priced as ``calls`` calls of the average size, so a per-call tier (>200k input) applies as
    it would to the average call, plus what is left over by the integer average at that
    call's marginal price of each bucket: exact for flat prices.
    """
    from addon.usage import Usage

    totals = [*sums, *[0] * 12][:12]
    read, write, one_hour = totals[1], totals[2], min(totals[4], totals[2])
    # Uncached input, read, 5-minute writes, output, 1-hour writes, searches; then the audio and
    # image parts (each within its input or output bucket, see _WITHIN).
    buckets = (totals[0] - read - write, read, write - one_hour, totals[3], one_hour, *totals[5:])
    base = [total // calls for total in buckets]
    left = [total - b * calls for b, total in zip(base, buckets, strict=True)]
    # What is left over as steps of one more token of each bucket (a step of audio also takes one
    # of input): the steps of a part come off the leftover of the bucket it is within.
    steps = list(left)
    for part in sorted(_WITHIN, reverse=True):  # cached audio (11) before input audio (7)
        for whole in _WITHIN[part]:
            steps[whole] -= steps[part]

    def cost(b: Sequence[int]) -> Decimal | None:
        usage = Usage(
            input_tokens=b[0] + b[1] + b[2] + b[4],
            cache_read_tokens=b[1],
            cache_write_tokens=b[2] + b[4],
            output_tokens=b[3],
            cache_write_1h_tokens=b[4],
            web_searches=b[5],
            file_searches=b[6],
            input_audio_tokens=b[7],
            output_audio_tokens=b[8],
            input_image_tokens=b[9],
            output_image_tokens=b[10],
            cache_audio_read_tokens=b[11],
        )
        return pricer.price_usage(
            provider, (model,), usage, when, service_tier=service_tier, inference_geo=inference_geo
        ).cost_usd

    def step(i: int) -> list[int]:
        """``base`` plus one token of bucket ``i`` (and of the buckets it is within)."""
        more = list(base)
        for j in (i, *_WITHIN.get(i, ())):
            more[j] += 1
        return more

    typical = cost(base)
    if typical is None:
        return None
    total = typical * calls
    for i, amount in enumerate(steps):
        if amount:
            one_more = cost(step(i))
            if one_more is None:
                return None
            total += (one_more - typical) * amount
    return total


@dataclass(slots=True)
class _Saving:
    calls: int = 0
    cost: Decimal = Decimal(0)
    whatif: Decimal = Decimal(0)
    downgraded_calls: int = 0
    blocked_calls: int = 0
    blocked_cost: Decimal = Decimal(0)
    unpriced_calls: int = 0
    models: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "cost_usd": decimal_str(self.cost),
            "whatif_cost_usd": decimal_str(self.whatif),
            "savings_usd": decimal_str(self.cost - self.whatif),
            "savings_share": _ratio(self.cost - self.whatif, self.cost),
            "downgraded_calls": self.downgraded_calls,
            "blocked_calls": self.blocked_calls,
            "blocked_cost_usd": decimal_str(self.blocked_cost),
            "unpriced_calls": self.unpriced_calls,
        }


def savings_report(
    con: duckdb.DuckDBPyConnection, db: Path, selection: Selection, policies: Policies
) -> dict[str, Any]:
    """What the calls would have cost with each environment's downgrade targets.

    Tokens are summed in SQL per (environment, provider, model, month, call size over or under
    200k input, service tier, inference geo, price known or not), and each priced group that the
    environment's rules would downgrade is re-priced with genai-prices as that many calls of the
    group's average size, its searches and one-hour cache writes included (billed on any model).
    Approximate: per-call tiered prices (>200k input) apply to the average call of a group, not
    to each call, and time-of-day prices to the group's first call. Models the rules would block (disallowed,
    no target) are not re-priced; their cost is in ``blocked_cost_usd``. Calls without usage
    and calls whose own price is unknown are left out of the sums (``unpriced_calls``). Token-priced
    calls only: video jobs (priced by their seconds, never re-priced by a downgrade) are counted
    apart, in ``left_out``.
    """
    left_out = {"video_jobs": 0, "video_cost_usd": "0"}
    report = _envelope("savings", db, selection) | {
        "environments": [],
        "total": _Saving().as_json(),
        "left_out": left_out,
    }
    if not tables_exist(con):
        return report
    base, params = _base(selection)
    # Columns later migrations added may be missing from a database an older proxy still writes.
    present = _call_columns(con)
    if "api_flavor" in present:
        video = f"api_flavor = 'video' AND NOT {_HAS_USAGE_SQL}"
        jobs, video_cost = con.execute(
            f"""{base} SELECT {count_calls(f"(cost_usd > 0 OR {_VIDEO_UNPRICED_SQL})")},
                   coalesce(sum(cost_usd), 0) FROM c WHERE {video}""",
            params,
        ).fetchone() or (0, 0)
        left_out.update(video_jobs=jobs, video_cost_usd=decimal_str(Decimal(video_cost)))
    extras = ", ".join(
        f"coalesce(sum({name}), 0) AS {name}" if name in present else f"0 AS {name}"
        for name in _REPRICE_EXTRAS
    )
    keys = ", ".join(
        name if name in present else f"NULL AS {name}" for name in ("service_tier", "inference_geo")
    )
    sql = f"""{base}
        SELECT environment, provider, model, min({DECIDED_SQL}) AS decided, date_trunc('month', ts) AS month,
               input_tokens > 200000 AS large, {keys}, count(*) AS row_count, {count_calls()} AS calls,
               coalesce(sum(input_tokens), 0) AS input_tokens,
               coalesce(sum(cache_read_tokens), 0) AS cache_read_tokens,
               coalesce(sum(cache_write_tokens), 0) AS cache_write_tokens,
               coalesce(sum(output_tokens), 0) AS output_tokens, {extras},
               cost_usd IS NULL AS unpriced_group, sum(cost_usd) AS cost_usd, min(ts) AS first_ts
        FROM c WHERE {_HAS_USAGE_SQL} AND coalesce(price_status, '') <> 'subscription'
        GROUP BY ALL ORDER BY environment, provider, model, month, large, unpriced_group
    """
    from addon.pricing import Pricer

    pricer = Pricer.for_policies(policies)
    envs: dict[str | None, _Saving] = {}
    total = _Saving()
    for row in _rows(con.execute(sql, params)):
        env_name = row["environment"]
        rules = policies.environment(env_name or policies.default_environment).models
        model, provider = row["model"], row["provider"] or ""
        if model == "(unknown)":
            outcome, target = "keep", None
        else:  # the rules on the name the proxy decided on; the target as it sends it to that host
            outcome, target = rules.resolve(row["decided"] or model, policies.id_host(provider))
        outcome = {"allowed": "keep", "downgraded": "downgrade", "blocked": "block"}.get(outcome, outcome)
        # A group is all priced or all unpriced (cost_usd IS NULL is a grouping key): only
        # priced rows are re-priced, as that many rows of the average size (a part billed apart
        # is a row of its own); the unpriced rows are counted and left out of the sums. Calls
        # are counted by their own rows (count_calls): a part is in no ``calls``.
        unpriced = row["row_count"] if row["unpriced_group"] else 0
        priced_rows = row["row_count"] - unpriced
        priced_calls = 0 if row["unpriced_group"] else row["calls"]
        target_unpriced = False
        cost = row["cost_usd"] or Decimal(0)
        whatif = cost
        if outcome == "downgrade" and target is not None and priced_rows:
            names = (
                "input_tokens",
                "cache_read_tokens",
                "cache_write_tokens",
                "output_tokens",
                *_REPRICE_EXTRAS,
            )
            repriced = _reprice(
                pricer,
                provider,
                target,
                priced_rows,
                [row[k] for k in names],
                row["first_ts"],
                service_tier=row["service_tier"],
                inference_geo=row["inference_geo"],
            )
            if repriced is None:  # the target has no price: the calls stay priced, no saving claimed
                target_unpriced = True
            else:
                whatif = repriced
        saving = envs.setdefault(env_name, _Saving())
        for acc in (saving, total):
            acc.calls += priced_calls
            acc.cost += cost
            acc.whatif += whatif
            acc.unpriced_calls += unpriced
            if outcome == "downgrade" and priced_calls:
                acc.downgraded_calls += priced_calls
            if outcome == "block":
                acc.blocked_calls += priced_calls
                acc.blocked_cost += cost
        detail = saving.models.setdefault(
            (provider, model),
            {
                "model": model,
                "provider": row["provider"],
                "outcome": outcome,
                "target": target,
                "calls": 0,
                "cost": Decimal(0),
                "whatif": Decimal(0),
                "unpriced_calls": 0,
                "target_unpriced": False,
            },
        )
        detail["target_unpriced"] |= target_unpriced
        detail["calls"] += priced_calls
        detail["cost"] += cost
        detail["whatif"] += whatif
        detail["unpriced_calls"] += unpriced
    for env_name in sorted(envs, key=env_sort_key):
        saving = envs[env_name]
        models = sorted(
            saving.models.values(), key=lambda d: (d["whatif"] - d["cost"], -d["cost"], d["model"])
        )
        report["environments"].append(
            {
                "environment": env_name,
                **saving.as_json(),
                "models": [
                    {
                        "model": d["model"],
                        "provider": d["provider"],
                        "outcome": d["outcome"],
                        "target": d["target"],
                        "calls": d["calls"],
                        "cost_usd": decimal_str(d["cost"]),
                        "whatif_cost_usd": decimal_str(d["whatif"]),
                        "savings_usd": decimal_str(d["cost"] - d["whatif"]),
                        "unpriced_calls": d["unpriced_calls"],
                        "target_unpriced": d["target_unpriced"],  # no price for the target: no saving
                    }
                    for d in models
                ],
            }
        )
    report["total"] = total.as_json()
    return report


# -- budgets ----------------------------------------------------------------------------------------


def _budgets_of(policies: Policies) -> Iterable[tuple[str, str, Budget]]:
    for name, env in sorted(policies.environments.items(), key=lambda kv: env_sort_key(kv[0])):
        if env.budget is not None:
            yield "environment", name, env.budget
    for key in policies.keys:
        if key.budget is not None:
            yield "key", key.name, key.budget
    for name, user in sorted(policies.users.items()):
        if user.budget is not None:
            yield "user", name, user.budget


_SCOPE_COLUMNS = {"environment": "environment", "key": "key_name", "user": "user_name"}


def budgets_report(
    con: duckdb.DuckDBPyConnection, db: Path, policies: Policies, now: datetime
) -> dict[str, Any]:
    """Each budget of policies.yaml: cap, spend this period, share used, end-of-period projection.

    The projection extends the period's burn rate so far (spend over the elapsed time, at least
    one hour of it) to the whole period.
    """
    from addon.budgets import period_bounds

    report = _envelope("budgets", db) | {
        "policies": None if policies.source is None else str(policies.source),
        "now": iso(now),
        "budgets": [],
    }
    budgets = list(_budgets_of(policies))
    if not budgets:
        return report
    bounds = []
    for _, _, budget in budgets:
        start, end = period_bounds(budget.period, now.replace(tzinfo=UTC))
        bounds.append((_naive(start), _naive(end)))
    spent: list[tuple[Decimal, int, int]] = [(Decimal(0), 0, 0)] * len(budgets)
    if tables_exist(con):
        parts, params = [], []
        for i, ((kind, name, _), (start, end)) in enumerate(zip(budgets, bounds, strict=True)):
            parts.append(
                f"SELECT {i} AS i, coalesce(sum(cost_usd), 0) AS spent, {count_calls()} AS calls, "
                f"{_UNPRICED_CALLS_SQL} AS unpriced_calls FROM calls "
                f"WHERE {_SCOPE_COLUMNS[kind]} = ? AND ts >= ? AND ts < ?"
            )
            params.extend([name, start, min(end, now)])  # as of now
        for i, total, calls, unpriced in con.execute(" UNION ALL ".join(parts), params).fetchall():
            spent[i] = (total, calls, unpriced)
    for (kind, name, budget), (start, end), (total, calls, unpriced) in zip(
        budgets, bounds, spent, strict=True
    ):
        entry = _budget_entry(kind, name, budget, start, end, total, calls, now)
        entry["unpriced_calls"] = unpriced  # calls with no known price: they count nothing here
        report["budgets"].append(entry)
    return report


def _naive(ts: datetime) -> datetime:
    return ts if ts.tzinfo is None else ts.astimezone(UTC).replace(tzinfo=None)


def _budget_entry(
    kind: str,
    name: str,
    budget: Budget,
    start: datetime,
    end: datetime,
    spent: Decimal,
    calls: int,
    now: datetime,
) -> dict[str, Any]:
    length = (end - start).total_seconds()
    elapsed = min(max((now - start).total_seconds(), MIN_BURN_HOURS * 3600), length)
    projected = (spent * Decimal(length) / Decimal(elapsed)).quantize(Decimal("1e-10"))
    cap = budget.usd
    if spent >= cap:
        status = "over"
    elif projected >= cap:
        status = "projected_over"
    elif any(spent >= cap * Decimal(str(a)) for a in budget.alert_at):
        status = "alert"
    else:
        status = "ok"
    return {
        "scope": kind,
        "name": name,
        "usd": decimal_str(cap),
        "period": budget.period,
        "period_start": iso(start),
        "period_end": iso(end),
        "calls": calls,
        "spent_usd": decimal_str(spent),
        "used": _ratio(spent, cap),
        "projected_usd": decimal_str(projected),
        "projected_used": _ratio(projected, cap),
        "alert_at": list(budget.alert_at),
        "status": status,
    }


def since_delta(text: str) -> timedelta:
    """``7d``, ``24h``, ``2w``, ``30m`` (minutes) -> a timedelta; ValueError otherwise."""
    text = text.strip().lower()
    units = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise ValueError(f"{text!r} is not a duration like 7d, 24h, 2w or 30m")
    return timedelta(**{units[text[-1]]: int(text[:-1])})


# -- unpriced -------------------------------------------------------------------------------------


def unpriced_report(con: duckdb.DuckDBPyConnection, db: Path, selection: Selection) -> dict[str, Any]:
    """Calls with usage (or video jobs) but no known price, per provider and model: they are not in
    any cost."""
    report = _envelope("unpriced", db, selection) | {"rows": []}
    if not tables_exist(con):
        return report
    where, params = selection.where()
    sql = f"""
        SELECT provider, coalesce(model_reported, model_sent, model_requested, '(unknown)') AS model,
               price_status, count(*) AS calls,
               sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
               min(ts) AS first_ts, max(ts) AS last_ts
        FROM calls
        WHERE ({where}) AND {_UNPRICED_SQL}
        GROUP BY ALL
        ORDER BY calls DESC, provider, model
    """
    for row in _rows(con.execute(sql, params)):
        report["rows"].append(
            {
                "provider": row["provider"],
                "model": row["model"],
                "price_status": row["price_status"],
                "calls": row["calls"],
                "input_tokens": int(row["input_tokens"] or 0),
                "output_tokens": int(row["output_tokens"] or 0),
                "first_at": iso(row["first_ts"]),
                "last_at": iso(row["last_ts"]),
            }
        )
    return report
