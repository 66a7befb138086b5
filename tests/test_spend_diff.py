"""scripts/spend's JSON reports against the same numbers computed over the rows in plain Python.

Random rows (hypothesis, derandomized: the same examples every run, no example database) of
every kind the proxy stores: priced, estimated, provider-reported, unpriced, refused, without
usage, subscription, background creations and their retrievals, errors, rows billed apart from a
call (``parent_id``, or only their ``error`` naming it: a row no ``parent_id`` was written for);
timestamps bunched at day, week, month and year edges.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from addon.migrations import migrate
from addon.record import COLUMNS, CallRecord
from addon.spend import main

REFUSED = ("blocked", "over_budget", "rate_limited")
BOUNDS = [
    datetime(2026, 11, 29, 23, 59, 59, 999999),  # Sunday
    datetime(2026, 11, 30, 0, 0),  # Monday, week start
    datetime(2026, 11, 30, 23, 59, 59, 999999),
    datetime(2026, 12, 1, 0, 0),  # month start
    datetime(2026, 12, 31, 23, 59, 59, 999999),
    datetime(2027, 1, 1, 0, 0),  # year start
    datetime(2026, 10, 31, 23, 59, 59),
    datetime(2026, 11, 1, 0, 0),
]
MODELS = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4-5"),
    ("openai", "mystery-x"),
]
KINDS = [
    "priced",
    "estimated",
    "unpriced",
    "refused",
    "no_usage",
    "subscription",
    "background",
    "error",
    "provider",
    "part",
    "retrieval",
]
PART_NOTE = "the advisor tool's tokens (usage.iterations advisor_message)"  # as billed_apart writes it
DIMENSIONS = ["env", "model", "provider", "team", "user", "key", "day", "week", "month"]
# The same examples every run (derandomize), no deadline (DuckDB's first query in a process is slow).
PROPERTY = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ts_st = st.one_of(
    st.sampled_from(BOUNDS),
    st.builds(lambda b, s: b + timedelta(seconds=s), st.sampled_from(BOUNDS), st.integers(-200_000, 200_000)),
    st.datetimes(min_value=datetime(2026, 9, 1), max_value=datetime(2027, 1, 2)),
)


@st.composite
def row_st(draw: Any, n: int) -> CallRecord:
    """Call ``n``, of any kind in KINDS, as the proxy would store it."""
    provider, model = draw(st.sampled_from(MODELS))
    kind = draw(st.sampled_from(KINDS))
    r = CallRecord(
        id=f"c{n}",
        ts=draw(ts_st),
        session_id=draw(st.sampled_from(["s1", "s2", "s3"])),
        environment=draw(st.sampled_from(["development", "staging", "production", "ci", None])),
        provider=provider,
        host="h",
        path="/p",
        api_flavor="chat",
        model_sent=model,
        status_code=200,
        team=draw(st.sampled_from(["a", "b", None])),
        user_name=draw(st.sampled_from(["alice", "bob", None])),
        key_name=draw(st.sampled_from(["k1", None])),
        key_fingerprint=draw(st.sampled_from(["fp1", "fp2", None])),
    )
    inp = draw(st.integers(0, 300_000))
    read = draw(st.integers(0, inp))
    write = draw(st.integers(0, inp - read))
    out = draw(st.integers(0, 50_000))
    reas = draw(st.integers(0, out))
    cost = Decimal(draw(st.integers(0, 10**9))).scaleb(-10)

    def usage() -> None:
        r.input_tokens, r.cache_read_tokens, r.cache_write_tokens = inp, read, write
        r.output_tokens, r.reasoning_tokens = out, reas
        r.usage_source = "reported"

    if kind in ("priced", "estimated", "provider"):
        usage()
        r.cost_usd, r.price_status, r.price_model = cost, "priced", model
        if kind == "estimated":
            r.usage_source, r.aborted = "estimated", True
        if kind == "provider":
            r.price_status, r.price_model = "provider_reported", None
    elif kind == "unpriced":
        usage()
        r.price_status = "unknown_model"
    elif kind == "refused":
        r.action = draw(st.sampled_from(REFUSED))
        r.status_code = 403
        r.model_sent, r.model_requested = None, model
        r.cost_usd, r.price_status = Decimal(0), "not_billed"
    elif kind == "no_usage":
        r.aborted, r.price_status = True, "no_usage"
    elif kind == "subscription":
        if draw(st.booleans()):
            usage()
        r.cost_usd, r.price_status = Decimal(0), "subscription"
    elif kind == "background":
        r.cost_usd, r.price_status = Decimal(0), "background"
    elif kind == "error":
        r.status_code, r.cost_usd, r.price_status = 500, Decimal(0), "not_billed"
    elif kind == "part" and n:  # a row billed apart from an earlier call (an advisor's tokens)
        usage()
        call = f"c{draw(st.integers(0, n - 1))}"
        r.error = f"{PART_NOTE} of call {call}: 12 advisor tokens"
        if draw(st.booleans()):  # else written without parent_id (an older proxy's insert)
            r.parent_id = call
        r.cost_usd, r.price_status, r.price_model = cost, "priced", model
    elif kind == "retrieval" and n:  # the row billing an earlier background creation row
        usage()
        r.parent_id = f"c{draw(st.integers(0, n - 1))}"
        r.cost_usd, r.price_status, r.price_model = cost, "priced", model
    return r


rows_st = st.integers(1, 30).flatmap(lambda k: st.tuples(*[row_st(i) for i in range(k)]))


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated database without rows, copied for each example (migrating each time is slow)."""
    db = tmp_path_factory.mktemp("spend-diff") / "empty.duckdb"
    con = duckdb.connect(str(db))
    migrate(con)
    con.close()
    return db


@contextmanager
def database(empty_db: Path, rows: Sequence[CallRecord]) -> Iterator[Path]:
    """A temporary copy of ``empty_db`` holding ``rows`` as they are (no pricing)."""
    represent(rows)
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "spend.duckdb"
        shutil.copyfile(empty_db, db)
        con = duckdb.connect(str(db))
        insert = f"INSERT INTO calls ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        for r in rows:
            con.execute(insert, [getattr(r, c) for c in COLUMNS])
        con.close()
        yield db


def run(*args: str) -> str:
    """``scripts/spend ARGS`` in-process: its stdout."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(list(args))
    assert code == 0
    return buf.getvalue()


def report_json(*args: str) -> dict[str, Any]:
    """A report as parsed JSON."""
    return json.loads(run(*args, "--format", "json"))


# -- the independent model ------------------------------------------------------------------------


def has_usage(r: CallRecord) -> bool:
    """The call reported (or estimated) tokens."""
    return r.input_tokens is not None or r.output_tokens is not None


def own_model(r: CallRecord) -> str:
    """The model a row names: its price model, else the one reported, sent, requested."""
    return r.price_model or r.model_reported or r.model_sent or r.model_requested or "(unknown)"


# The background calls of the database being reported on (``represent``): each creation row's id,
# the row that represents its call (of its retrieval rows, one with usage first, the least id).
REPRESENTED: dict[str, CallRecord] = {}


def represent(rows: Sequence[CallRecord]) -> None:
    """Find the representative of each background call in ``rows`` (the whole database)."""
    REPRESENTED.clear()
    created = {
        r.id for r in rows if r.price_status == "background" and r.parent_id is None and not billed_apart(r)
    }
    for r in rows:
        if r.parent_id in created and not billed_apart(r):
            best = REPRESENTED.get(r.parent_id)
            if best is None or (not has_usage(r), r.id) < (not has_usage(best), best.id):
                REPRESENTED[r.parent_id] = r


def model_of(r: CallRecord) -> str:
    """The model a report files the row under: a background creation row its call's."""
    return own_model(REPRESENTED.get(r.id, r))


def decimal_text(value: Decimal | None) -> str | None:
    """Money as the reports write it: exact, no trailing zeros."""
    if value is None:
        return None
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def billed_apart(r: CallRecord) -> bool:
    """Is ``r`` a row billed apart from its call (its ``error`` names the call)?"""
    return (r.error or "").startswith(PART_NOTE)


def is_call(r: CallRecord) -> bool:
    """Does ``r`` count its call? A row billed apart is a part of its call (``parent_id``, or its
    ``error`` where no parent_id was written), not a call; a background call counts on its
    representative (``represent``), else on its $0 creation row; its other rows are parts."""
    if r.id in REPRESENTED:
        return False
    if any(rep is r for rep in REPRESENTED.values()):
        return True
    return r.parent_id is None and not billed_apart(r)


def calls_of(rows: Iterable[CallRecord]) -> int:
    """How many calls ``rows`` are (``is_call``)."""
    return sum(is_call(r) for r in rows)


def usage_calls_of(rows: Iterable[CallRecord]) -> int:
    """The calls with usage among ``rows``: once per call, on the row that counts it."""
    return sum(has_usage(r) and is_call(r) for r in rows)


def totals(rows: Sequence[CallRecord]) -> dict[str, Any]:
    """TOTALS (see addon.spend) of ``rows``."""
    costs = [r.cost_usd for r in rows if r.cost_usd is not None]
    return {
        "calls": calls_of(rows),
        "refused_calls": calls_of(r for r in rows if r.action in REFUSED),
        "input_tokens": sum(r.input_tokens or 0 for r in rows),
        "cache_read_tokens": sum(r.cache_read_tokens or 0 for r in rows),
        "cache_write_tokens": sum(r.cache_write_tokens or 0 for r in rows),
        "output_tokens": sum(r.output_tokens or 0 for r in rows),
        "reasoning_tokens": sum(r.reasoning_tokens or 0 for r in rows),
        "unpriced_calls": sum(r.cost_usd is None and has_usage(r) for r in rows),  # rows, parts too
        "no_usage_calls": calls_of(
            r
            for r in rows
            if not has_usage(r)
            and r.price_status not in ("not_billed", "subscription", "background")
            and r.action not in REFUSED
        ),
        "cost_usd": decimal_text(sum(costs, Decimal(0))) if costs else None,
    }


def ratio(part: Any, whole: Any) -> float | None:
    """``part / whole`` rounded to 4 places, None when undefined."""
    if part is None or whole is None or not Decimal(whole):
        return None
    return round(float(Decimal(part) / Decimal(whole)), 4)


def current_key_name(rows: Sequence[CallRecord], fingerprint: str | None) -> str | None:
    """The name of the newest named row with ``fingerprint``, in the whole database."""
    named = [r for r in rows if fingerprint is not None and r.key_fingerprint == fingerprint and r.key_name]
    return max(named, key=lambda r: r.ts).key_name if named else None


def key_of(dim: str, r: CallRecord, rows: Sequence[CallRecord] = ()) -> Any:
    """The row of ``spend by DIM`` the call belongs to (``rows``: every call in the database, for
    a key's current name)."""
    ts = r.ts
    return {
        "env": lambda: r.environment,
        "model": lambda: model_of(r),
        "provider": lambda: r.provider,
        "team": lambda: r.team,
        "user": lambda: r.user_name,
        "key": lambda: current_key_name(rows, r.key_fingerprint) or r.key_name or r.key_fingerprint,
        "day": lambda: ts.strftime("%Y-%m-%d"),
        "week": lambda: (ts - timedelta(days=ts.weekday())).strftime("%Y-%m-%d"),
        "month": lambda: ts.strftime("%Y-%m"),
    }[dim]()


range_st = st.one_of(
    st.just(()),
    st.tuples(st.just("--from"), st.sampled_from(["2026-11-30", "2026-12-01", "2026-11-30T00:00:00"])),
    st.tuples(st.just("--to"), st.sampled_from(["2026-11-30", "2026-12-31", "2026-12-01T00:00:00"])),
    st.tuples(
        st.just("--from"), st.sampled_from(["2026-11-01", "2026-11-30"]),
        st.just("--to"), st.sampled_from(["2026-12-01", "2026-12-31T23:59:59.999999"]),
    ),
)  # fmt: skip


def in_range(r: CallRecord, args: tuple[str, ...]) -> bool:
    """The call is inside ``--from``/``--to`` (a bare date in ``--to`` includes that day)."""
    a = dict(zip(args[::2], args[1::2], strict=True))
    if "--from" in a and r.ts < datetime.fromisoformat(a["--from"]):
        return False
    if "--to" in a:
        end = datetime.fromisoformat(a["--to"])
        if len(a["--to"]) == 10:
            end += timedelta(days=1)
        if r.ts >= end:
            return False
    return True


@PROPERTY
@given(rows=rows_st, rng=range_st, dim=st.sampled_from(DIMENSIONS))
def test_by_matches_python(
    empty_db: Path, rows: tuple[CallRecord, ...], rng: tuple[str, ...], dim: str
) -> None:
    selected = [r for r in rows if in_range(r, rng)]
    with database(empty_db, rows) as db:
        got = report_json("by", dim, "--db", str(db), *rng)
        text = run("by", dim, "--db", str(db), *rng, "--format", "csv")
    expected_total = totals(selected)
    assert got["total"] == expected_total
    groups: dict[Any, list[CallRecord]] = defaultdict(list)
    for r in selected:
        groups[key_of(dim, r, rows)].append(r)
    got_rows = {row["key"]: row for row in got["rows"]}
    assert set(got_rows) == set(groups)
    for key, group in groups.items():
        got_row = dict(got_rows[key])
        share = got_row.pop("share")
        got_row.pop("key")
        assert got_row == totals(group), key
        assert share == ratio(totals(group)["cost_usd"], expected_total["cost_usd"])
    lines = list(csv.DictReader(io.StringIO(text)))  # CSV agrees with JSON
    assert len(lines) == len(got["rows"])
    for line, row in zip(lines, got["rows"], strict=True):
        assert line["cost_usd"] == (row["cost_usd"] or "")
        assert int(line["calls"]) == row["calls"]


@PROPERTY
@given(rows=rows_st, rng=range_st)
def test_summary_matches_python(empty_db: Path, rows: tuple[CallRecord, ...], rng: tuple[str, ...]) -> None:
    rng = rng or ("--from", "2026-01-01")  # summary's default range is the last seven days
    selected = [r for r in rows if in_range(r, rng)]
    with database(empty_db, rows) as db:
        got = report_json("summary", "--db", str(db), *rng)
    envs: dict[Any, list[CallRecord]] = defaultdict(list)
    for r in selected:
        envs[r.environment].append(r)
    entries = [(e["environment"], e) for e in got["environments"]]
    assert {env for env, _ in entries} == set(envs)
    for env, entry in [*entries, ("TOTAL", got["total"])]:
        group = selected if env == "TOTAL" else envs[env]
        expected = totals(group)
        for key, value in expected.items():
            assert entry[key] == value, (env, key)
        usage = [r for r in group if has_usage(r)]
        assert entry["usage_calls"] == usage_calls_of(usage)
        if usage_calls_of(usage):  # parts alone: no call to average over
            avg_input = round(sum(r.input_tokens or 0 for r in usage) / usage_calls_of(usage), 1)
            avg_output = round(sum(r.output_tokens or 0 for r in usage) / usage_calls_of(usage), 1)
            assert (entry["avg_input_tokens"], entry["avg_output_tokens"]) == (avg_input, avg_output)
        assert entry["cache_hit_rate"] == ratio(expected["cache_read_tokens"], expected["input_tokens"])
        assert sum(m["calls"] for m in entry["models"]) == calls_of(group)
        if calls_of(group):
            assert abs(sum(m["share"] for m in entry["models"]) - 1) < 1e-3
        # cost per call: cost / calls with usage and a known price, a subscription plan's calls aside
        api_priced = [r for r in usage if r.cost_usd is not None and r.price_status != "subscription"]
        per_call = None
        if usage_calls_of(api_priced) and expected["cost_usd"] is not None:
            per_call = decimal_text(
                (Decimal(expected["cost_usd"]) / usage_calls_of(api_priced)).quantize(Decimal("1e-10"))
            )
        assert entry["cost_per_call_usd"] == per_call


def month_number(month: str) -> int:
    """``YYYY-MM`` -> months since year 0, so that consecutive calendar months differ by 1."""
    return int(month[:4]) * 12 + int(month[5:])


@settings(PROPERTY, max_examples=15)  # six reports per example
@given(rows=rows_st)
def test_ratio_sessions_unpriced_match_python(empty_db: Path, rows: tuple[CallRecord, ...]) -> None:
    months: dict[str, list[CallRecord]] = defaultdict(list)
    for r in rows:
        months[r.ts.strftime("%Y-%m")].append(r)
    sessions: dict[str, list[CallRecord]] = defaultdict(list)
    for r in rows:
        sessions[r.session_id].append(r)
    with database(empty_db, rows) as db:
        got = report_json("ratio", "--db", str(db))
        got_sessions = report_json("sessions", "--db", str(db))["sessions"]
        got_session = {
            s["session_id"]: report_json("session", s["session_id"], "--db", str(db)) for s in got_sessions
        }
        got_unpriced = report_json("unpriced", "--db", str(db))
    assert [m["month"] for m in got["months"]] == sorted(months)
    ratios: dict[int, float] = {}
    for m in got["months"]:
        group = months[m["month"]]
        prod = [r for r in group if (r.environment or "").lower() in ("production", "prod")]
        nonprod = [r for r in group if r not in prod]
        prod_cost = sum((r.cost_usd or 0 for r in prod), Decimal(0))
        nonprod_cost = sum((r.cost_usd or 0 for r in nonprod), Decimal(0))
        assert (m["prod_cost_usd"], m["nonprod_cost_usd"]) == (
            decimal_text(prod_cost),
            decimal_text(nonprod_cost),
        )
        assert (m["prod_calls"], m["nonprod_calls"]) == (calls_of(prod), calls_of(nonprod))
        month_ratio = ratio(nonprod_cost, prod_cost)
        assert m["ratio"] == month_ratio
        flagged = nonprod_cost > 0 and (prod_cost == 0 or nonprod_cost / prod_cost > Decimal("0.5"))
        assert m["flagged"] == flagged
        before = ratios.get(month_number(m["month"]) - 1)  # the calendar month just before, if any
        assert m["change"] == (
            None if month_ratio is None or before is None else round(month_ratio - before, 4)
        )
        if month_ratio is not None:
            ratios[month_number(m["month"])] = month_ratio
    trend = got["trend"]
    if len(ratios) < 2:
        assert trend == {"direction": None, "slope_per_month": None}
    else:
        slope = statistics.linear_regression(list(ratios), list(ratios.values())).slope
        assert abs(trend["slope_per_month"] - slope) <= 1e-4
        if abs(abs(slope) - 0.02) > 1e-9:
            direction = "steady" if abs(slope) < 0.02 else "worsening" if slope > 0 else "improving"
            assert trend["direction"] == direction
    for s in got_sessions:
        group = sessions[s["session_id"]]
        assert (s["calls"], s["cost_usd"]) == (calls_of(group), totals(group)["cost_usd"])
        assert got_session[s["session_id"]]["total"] == totals(group)
    assert sum(row["calls"] for row in got_unpriced["rows"]) == totals(rows)["unpriced_calls"]


SAVINGS_POLICY = """\
default_environment: development
environments:
  development:
    models:
      allow: [gpt-4o-mini, claude-haiku-4-5]
      downgrade:
        gpt-4o: gpt-4o-mini
        claude-sonnet-4-5*: claude-haiku-4-5
"""
SAVINGS_TARGETS = {"gpt-4o": "gpt-4o-mini", "claude-sonnet-4-5": "claude-haiku-4-5"}


@st.composite
def savings_row(draw: Any, n: int) -> CallRecord:
    """A development call with usage, priced by genai-prices or (one in four) left unpriced."""
    from addon.pricing import price_record
    from addon.usage import Usage

    provider, model = draw(st.sampled_from(MODELS[:3]))
    inp = draw(st.integers(1, 250_000))
    read = draw(st.integers(0, inp))
    write = draw(st.integers(0, inp - read)) if provider == "anthropic" else 0
    out = draw(st.integers(0, 20_000))
    r = CallRecord(
        id=f"c{n}", ts=draw(ts_st), session_id="s", environment="development", provider=provider,
        host="h", path="/p", api_flavor="chat", model_sent=model, status_code=200,
    )  # fmt: skip
    r.set_usage(Usage(input_tokens=inp, cache_read_tokens=read, cache_write_tokens=write, output_tokens=out))
    if draw(st.integers(0, 3)) == 0:  # as when the model had no price yet
        r.price_status = "unknown_model"
    price_record(r)
    return r


@PROPERTY
@given(rows=st.integers(1, 15).flatmap(lambda k: st.tuples(*[savings_row(i) for i in range(k)])))
def test_savings_match_per_call_repricing(empty_db: Path, rows: tuple[CallRecord, ...]) -> None:
    from addon.pricing import price

    priced = [r for r in rows if r.cost_usd is not None]
    with database(empty_db, rows) as db:
        policy = db.parent / "policies.yaml"
        policy.write_text(SAVINGS_POLICY)
        total = report_json("savings", "--db", str(db), "--policies", str(policy))["total"]
    whatif = Decimal(0)
    for r in priced:
        model = model_of(r)
        target = SAVINGS_TARGETS.get(model)
        whatif += r.cost_usd if target is None else price(r.provider, target, r.usage, r.ts).cost_usd
    assert (total["calls"], total["unpriced_calls"]) == (len(priced), len(rows) - len(priced))
    assert Decimal(total["cost_usd"]) == sum((r.cost_usd for r in priced), Decimal(0))
    assert abs(Decimal(total["whatif_cost_usd"]) - whatif) <= Decimal("1e-9") * len(rows), (total, whatif)
