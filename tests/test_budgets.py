"""Budgets: UTC periods, exact spend, refusals, alerts once per period, loading from DuckDB."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from addon.budgets import (
    EVENT_COLUMNS,
    BudgetAlert,
    BudgetRefusal,
    BudgetTracker,
    Scope,
    alert_event,
    claim_event,
    format_duration,
    format_usd,
    insert_events,
    period_bounds,
    policy_event,
    scopes_for,
)
from addon.migrations import migrate
from addon.policies import Budget, parse_policies

POLICIES = parse_policies(
    """\
environments:
  development:
    budget: {usd: 150, period: month, alert_at: [0.5, 0.8]}
  staging:
    budget: {usd: 10, period: day}
keys:
  ci: {fingerprint: 3f9a0c11b2de, budget: {usd: 20, period: day}}
users:
  bob: {budget: {usd: 5, period: week}}
"""
)
DEV = Scope("environment", "development")
STAGING = Scope("environment", "staging")
PROD = Scope("environment", "production")
CI = Scope("key", "ci")
BOB = Scope("user", "bob")
DEV_BUDGET = Budget(usd=Decimal("150"), period="month", alert_at=(0.5, 0.8))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- periods ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        ("day", utc(2026, 11, 28, 0, 0, 0), utc(2026, 11, 28), utc(2026, 11, 29)),
        ("day", utc(2026, 11, 28, 23, 59, 59, 999999), utc(2026, 11, 28), utc(2026, 11, 29)),
        ("day", utc(2026, 12, 31, 12), utc(2026, 12, 31), utc(2027, 1, 1)),
        ("week", utc(2026, 11, 23, 0, 0, 0), utc(2026, 11, 23), utc(2026, 11, 30)),  # Monday 00:00
        ("week", utc(2026, 11, 22, 23, 59, 59), utc(2026, 11, 16), utc(2026, 11, 23)),  # Sunday night
        ("week", utc(2026, 12, 31, 8), utc(2026, 12, 28), utc(2027, 1, 4)),  # across the new year
        ("week", utc(2028, 2, 29, 10), utc(2028, 2, 28), utc(2028, 3, 6)),  # leap day
        ("month", utc(2026, 1, 31, 23, 59, 59), utc(2026, 1, 1), utc(2026, 2, 1)),  # month end
        ("month", utc(2026, 2, 1, 0, 0, 0), utc(2026, 2, 1), utc(2026, 3, 1)),
        ("month", utc(2026, 12, 15), utc(2026, 12, 1), utc(2027, 1, 1)),  # Dec -> Jan
        ("month", utc(2028, 2, 29, 23), utc(2028, 2, 1), utc(2028, 3, 1)),  # leap day
        ("month", datetime(2026, 11, 30, 22), utc(2026, 11, 1), utc(2026, 12, 1)),  # naive = UTC
        # 01:00 on Dec 1 in UTC+2 is still November in UTC
        (
            "month",
            datetime(2026, 12, 1, 1, tzinfo=timezone(timedelta(hours=2))),
            utc(2026, 11, 1),
            utc(2026, 12, 1),
        ),
    ],
)
def test_period_bounds(period: str, now: datetime, start: datetime, end: datetime) -> None:
    assert period_bounds(period, now) == (start, end)
    assert period_bounds(period, now)[0].tzinfo is UTC


def test_unknown_period_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown budget period 'year'"):
        period_bounds("year", utc(2026, 1, 1))


def test_formatting() -> None:
    assert [
        format_usd(Decimal(v)) for v in ("150", "150.015", "1234.5", "0", "0.0004", "0.00123456", "0.01")
    ] == [
        "$150.00",
        "$150.02",
        "$1,234.50",
        "$0.00",
        "$0.0004",
        "$0.001235",
        "$0.01",
    ]
    assert [format_duration(s) for s in (273600, 90061, 3660, 125, 42, 0)] == [
        "3d 4h",
        "1d 1h",
        "1h 1m",
        "2m 5s",
        "42s",
        "0s",
    ]


def test_scopes_for() -> None:
    assert scopes_for("dev", "ci", "bob") == (DEV, CI, BOB)
    assert scopes_for("production") == (PROD,)
    assert scopes_for(None, None, None) == ()


# -- check and record ------------------------------------------------------------------------------


def test_check_refuses_at_the_cap_with_exact_numbers() -> None:
    tracker = BudgetTracker(POLICIES)
    now = utc(2026, 11, 27, 20, 0, 0)
    assert tracker.check([DEV], now) is None
    tracker.record([DEV], Decimal("149.99"), utc(2026, 11, 20, 9))
    assert tracker.check([DEV], now) is None
    tracker.record([DEV], Decimal("0.03"), utc(2026, 11, 27, 19))
    refusal = tracker.check([DEV], now)
    assert refusal == BudgetRefusal(
        scope=DEV,
        budget=DEV_BUDGET,
        spent=Decimal("150.02"),
        period_start=utc(2026, 11, 1),
        period_end=utc(2026, 12, 1),
        retry_after=273600,
    )
    assert refusal.message() == (
        "development budget of $150.00 per month is spent: $150.02 used since 2026-11-01 (UTC); "
        "resets in 3d 4h"
    )
    # a new month starts from zero
    assert tracker.check([DEV], utc(2026, 12, 1, 0, 0, 0)) is None


def test_spend_exactly_at_the_cap_is_refused_and_retry_after_rounds_up() -> None:
    tracker = BudgetTracker(POLICIES)
    tracker.record([STAGING], Decimal("9.99"), utc(2026, 11, 28, 1))
    assert tracker.check([STAGING], utc(2026, 11, 28, 2)) is None
    tracker.record([STAGING], Decimal("0.01"), utc(2026, 11, 28, 2))
    refusal = tracker.check([STAGING], utc(2026, 11, 28, 23, 59, 58, 500000))
    assert refusal is not None
    assert (refusal.spent, refusal.retry_after) == (Decimal("10.00"), 2)
    assert refusal.message() == (
        "staging budget of $10.00 per day is spent: $10.00 used since 2026-11-28 (UTC); resets in 2s"
    )
    assert tracker.check([STAGING], utc(2026, 11, 29)) is None


def test_the_exhausted_scope_the_call_waits_longest_for_is_reported() -> None:
    tracker = BudgetTracker(POLICIES)
    ts = utc(2026, 11, 26, 10)
    scopes = scopes_for("development", "ci", "bob")
    tracker.record(scopes, Decimal("5"), ts)
    refusal = tracker.check(scopes, ts)
    assert refusal is not None and refusal.scope == BOB
    assert refusal.message() == (
        "user bob budget of $5.00 per week is spent: $5.00 used since 2026-11-23 (UTC); resets in 3d 14h"
    )
    tracker.record(scopes, Decimal("15"), ts)  # key ci: 20 of 20
    # Both spent: the call passes only when both have room, so the later reset (bob's week, not
    # ci's day) is the one it is told; alone, ci's is.
    assert tracker.check(scopes, ts).scope == BOB
    assert tracker.check(scopes_for("development", "ci"), ts).scope == CI
    assert tracker.check([PROD], ts) is None  # no budget: never refused
    assert tracker.check([], ts) is None


def test_none_cost_counts_zero_and_late_calls_from_an_old_period_are_dropped() -> None:
    tracker = BudgetTracker(POLICIES)
    tracker.record([STAGING], None, utc(2026, 11, 28, 1))
    tracker.record([STAGING], Decimal("4"), utc(2026, 11, 28, 2))
    tracker.record([STAGING], Decimal("100"), utc(2026, 11, 27, 23, 59))  # yesterday's call, stored late
    status = {s["scope"]: s for s in tracker.status(utc(2026, 11, 28, 3))}
    assert status[STAGING]["spent"] == Decimal("4")


def test_alerts_fire_once_per_fraction_per_period() -> None:
    tracker = BudgetTracker(POLICIES)
    nov = utc(2026, 11, 1)
    assert tracker.record([DEV], Decimal("74.99"), utc(2026, 11, 3)) == []
    assert tracker.record([DEV], Decimal("0.01"), utc(2026, 11, 4)) == [
        BudgetAlert(DEV, DEV_BUDGET, 0.5, Decimal("75.00"), nov)
    ]
    assert tracker.record([DEV], Decimal("1"), utc(2026, 11, 5)) == []
    alerts = tracker.record([DEV], Decimal("44"), utc(2026, 11, 6))
    assert alerts == [BudgetAlert(DEV, DEV_BUDGET, 0.8, Decimal("120.00"), nov)]
    assert alerts[0].kind == "budget_alert"
    assert alerts[0].message() == (
        "development budget: 80% of $150.00 per month reached: $120.00 used since 2026-11-01 (UTC)"
    )
    exhausted = tracker.record([DEV], Decimal("30.5"), utc(2026, 11, 7))
    assert exhausted == [BudgetAlert(DEV, DEV_BUDGET, 1.0, Decimal("150.50"), nov)]
    assert exhausted[0].kind == "budget_exhausted"
    assert exhausted[0].message() == (
        "development budget of $150.00 per month is spent: $150.50 used since 2026-11-01 (UTC); "
        "calls are refused until 2026-12-01 00:00 UTC"
    )
    assert tracker.record([DEV], Decimal("10"), utc(2026, 11, 8)) == []
    # December: everything again, and one big call crosses two fractions at once
    dec = utc(2026, 12, 1)
    assert tracker.record([DEV], Decimal("130"), utc(2026, 12, 2)) == [
        BudgetAlert(DEV, DEV_BUDGET, 0.5, Decimal("130"), dec),
        BudgetAlert(DEV, DEV_BUDGET, 0.8, Decimal("130"), dec),
    ]


def test_set_policies_keeps_spend_and_sees_spend_of_newly_budgeted_scopes() -> None:
    tracker = BudgetTracker(POLICIES)
    ts = utc(2026, 11, 26, 10)
    tracker.record([PROD], Decimal("3"), utc(2026, 11, 2))
    tracker.record([PROD], Decimal("2"), utc(2026, 11, 25))
    tracker.record([PROD], Decimal("1"), utc(2026, 11, 26, 9))
    tracker.record([DEV], Decimal("149"), utc(2026, 11, 2))
    assert tracker.check([PROD], ts) is None
    for period, expected in (("month", "6"), ("week", "3"), ("day", "1")):
        tracker.set_policies(
            parse_policies(
                f"environments:\n  production: {{budget: {{usd: {expected}, period: {period}}}}}\n"
                "  development: {budget: {usd: 150, period: month}}\n"
            )
        )
        refusal = tracker.check([PROD], ts)
        assert refusal is not None and refusal.spent == Decimal(expected), period
    assert tracker.check([DEV], ts) is None
    tracker.record([DEV], Decimal("1"), ts)
    assert tracker.check([DEV], ts).spent == Decimal("150")
    tracker.set_policies(parse_policies("{}"))
    assert tracker.check([DEV, PROD], ts) is None
    assert tracker.status(ts) == []


def test_status_lists_every_budget() -> None:
    tracker = BudgetTracker(POLICIES)
    now = utc(2026, 11, 26, 10)
    tracker.record(scopes_for("development", "ci", "bob"), Decimal("3"), now)
    rows = tracker.status(now)
    assert [(r["scope_kind"], r["scope_name"], r["cap"], r["period"], r["spent"]) for r in rows] == [
        ("environment", "development", Decimal("150"), "month", Decimal("3")),
        ("environment", "staging", Decimal("10"), "day", Decimal("0")),
        ("key", "ci", Decimal("20"), "day", Decimal("3")),
        ("user", "bob", Decimal("5"), "week", Decimal("3")),
    ]
    assert rows[0]["start"] == utc(2026, 11, 1) and rows[0]["end"] == utc(2026, 12, 1)
    assert rows[0]["fraction"] == pytest.approx(0.02)
    assert rows[3]["fraction"] == pytest.approx(0.6)
    assert rows[0]["alert_at"] == (0.5, 0.8)
    assert [r["exhausted"] for r in rows] == [False, False, False, False]


def test_record_and_check_from_threads_add_up_exactly() -> None:
    tracker = BudgetTracker(POLICIES)
    ts = utc(2026, 11, 26, 10)

    def work() -> None:
        for _ in range(500):
            tracker.record([DEV], Decimal("0.01"), ts)
            tracker.check([DEV], ts)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tracker.status(ts)[0]["spent"] == Decimal("40.00")


# -- DuckDB ----------------------------------------------------------------------------------------

CALLS = [
    # id, ts, environment, cost, key_name, user_name
    ("c1", datetime(2026, 10, 31, 23, 59, 59), "development", "100", None, None),  # last month
    ("c2", datetime(2026, 11, 1, 0, 0, 0), "development", "40", None, None),
    ("c3", datetime(2026, 11, 23, 0, 0, 0), "development", "30", None, None),  # Monday
    ("c4", datetime(2026, 11, 26, 0, 0, 0), "development", "10", None, None),  # today
    ("c5", datetime(2026, 11, 26, 11, 0, 0), "development", None, None, None),  # unpriced
    ("c6", datetime(2026, 11, 24, 8, 0, 0), "dev", "2", None, "bob"),
    ("c7", datetime(2026, 11, 25, 8, 0, 0), "prod", "7", None, None),
    ("c8", datetime(2026, 11, 25, 9, 0, 0), "production", "3", None, None),
    ("c9", datetime(2026, 11, 26, 1, 0, 0), "staging", "4.5", "ci", None),
    ("c10", datetime(2026, 11, 22, 23, 0, 0), "staging", "1000", "ci", "bob"),  # last week
]
NOW = utc(2026, 11, 26, 12)


def make_db(path: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(path))
    migrate(con)
    for call_id, ts, env, cost, key_name, user_name in CALLS:
        con.execute(
            "INSERT INTO calls (id, ts, session_id, environment, provider, host, path, api_flavor, "
            "cost_usd, key_name, user_name) VALUES (?, ?, 's1', ?, 'openai', 'api.openai.com', "
            "'/v1/chat/completions', 'chat', ?, ?, ?)",
            [call_id, ts, env, None if cost is None else Decimal(cost), key_name, user_name],
        )
    return con


def test_load_from_duckdb(tmp_path: Path) -> None:
    con = make_db(tmp_path / "t.duckdb")
    insert_events(
        con,
        [
            alert_event(
                BudgetAlert(DEV, DEV_BUDGET, 0.5, Decimal("76"), utc(2026, 11, 1)), "s1", utc(2026, 11, 20)
            ),
            alert_event(
                BudgetAlert(DEV, DEV_BUDGET, 0.8, Decimal("121"), utc(2026, 10, 1)), "s1", utc(2026, 10, 20)
            ),
        ],
    )
    tracker = BudgetTracker(
        parse_policies(
            """\
environments:
  development: {budget: {usd: 150, period: month, alert_at: [0.5, 0.8]}}
  production: {budget: {usd: 10, period: week}}
  staging: {budget: {usd: 10, period: day}}
keys:
  ci: {last4: "abcd", budget: {usd: 20, period: day}}
users:
  bob: {budget: {usd: 5, period: week}}
"""
        )
    )
    tracker.load(con, now=NOW)
    spent = {(r["scope_kind"], r["scope_name"]): r["spent"] for r in tracker.status(NOW)}
    assert spent == {
        ("environment", "development"): Decimal("82"),  # 40 + 30 + 10 + 2 (dev is an alias)
        ("environment", "production"): Decimal("10"),  # prod + production
        ("environment", "staging"): Decimal("4.5"),
        ("key", "ci"): Decimal("4.5"),
        ("user", "bob"): Decimal("2"),
    }
    assert tracker.check([PROD], NOW).spent == Decimal("10")
    # 0.5 already fired this month (events): not again; 0.8 fired LAST month only: fires now
    assert tracker.record([DEV], Decimal("38"), NOW) == [
        BudgetAlert(DEV, DEV_BUDGET, 0.8, Decimal("120"), utc(2026, 11, 1))
    ]
    # the week and day of the development scope were loaded too (a reload may switch periods)
    tracker.set_policies(parse_policies("environments:\n  development: {budget: {usd: 80, period: week}}\n"))
    assert tracker.check([DEV], NOW).spent == Decimal("80")  # 30 + 10 + 2 + 38
    con.close()


def test_load_without_events_table_and_reload_replaces_spend(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "old.duckdb"))
    con.execute("CREATE TABLE calls (ts TIMESTAMP, environment VARCHAR, cost_usd DECIMAL(18, 10))")
    con.execute("INSERT INTO calls VALUES ('2026-11-26 01:00:00', 'staging', 9.5)")
    tracker = BudgetTracker(POLICIES)
    tracker.record([STAGING], Decimal("100"), NOW)  # replaced by the load
    tracker.load(con, now=NOW)  # no key_name / user_name columns, no events table
    assert tracker.check([STAGING], NOW) is None
    # the exhausted alert already fired this period (before the load): not again
    assert tracker.record([STAGING], Decimal("0.5"), NOW) == []
    assert tracker.check([STAGING], NOW).spent == Decimal("10.0")
    fresh = BudgetTracker(POLICIES)
    fresh.load(con, now=NOW)
    assert fresh.record([STAGING], Decimal("0.5"), NOW) == [
        BudgetAlert(STAGING, Budget(usd=Decimal("10"), period="day"), 1.0, Decimal("10.0"), utc(2026, 11, 26))
    ]
    con.close()


def test_events_rows_round_trip(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "e.duckdb"))
    migrate(con)
    alert = BudgetAlert(DEV, DEV_BUDGET, 0.8, Decimal("120.5"), utc(2026, 11, 1))
    event = alert_event(alert, "sess", utc(2026, 11, 26, 12, 30))
    assert event.id == "alert:environment:development:month:2026-11-01T00:00:00:0.8:150"
    insert_events(
        con, [event, policy_event("policy_reloaded", "sess", NOW, "policies.yaml reloaded", {"n": 2})]
    )
    insert_events(con, [event])  # the same alert again (e.g. replayed): stored once
    insert_events(con, [])
    rows = con.execute(f"SELECT {', '.join(EVENT_COLUMNS)} FROM events ORDER BY ts").fetchall()
    assert len(rows) == 2
    assert rows[0][1:] == (
        datetime(2026, 11, 26, 12, 0),
        "sess",
        "policy_reloaded",
        None,
        None,
        None,
        '{"n": 2}',
        "policies.yaml reloaded",
    )
    assert rows[1] == (
        "alert:environment:development:month:2026-11-01T00:00:00:0.8:150",
        datetime(2026, 11, 26, 12, 30),
        "sess",
        "budget_alert",
        "environment",
        "development",
        datetime(2026, 11, 1),
        '{"fraction": 0.8, "period": "month", "spent": "120.5", "usd": "150"}',
        "development budget: 80% of $150.00 per month reached: $120.50 used since 2026-11-01 (UTC)",
    )
    con.close()


def test_calls_in_flight_reserve_their_estimate_so_a_cap_holds_under_concurrency() -> None:
    import threading

    from addon.policies import parse_policies

    tracker = BudgetTracker(
        parse_policies("environments:\n  development:\n    budget: {usd: 1, period: day}\n")
    )
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    scopes = scopes_for("development")
    tracker.record(scopes, Decimal("0.90"), now)  # nearly spent
    admitted: list[str] = []
    barrier = threading.Barrier(20)

    def call(i: int) -> None:
        barrier.wait()
        if tracker.check(scopes, now, reserve=(f"c{i}", lambda: Decimal("0.25"))) is None:
            admitted.append(f"c{i}")

    threads = [threading.Thread(target=call, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 1  # the others saw 0.90 + 0.25 reserved >= 1
    assert tracker.reserved() == {Scope("environment", "development"): Decimal("0.25")}
    tracker.settle(admitted[0])
    tracker.record(scopes, Decimal("0.30"), now)  # its real cost
    assert tracker.reserved() == {}
    refusal = tracker.check(scopes, now)
    assert refusal is not None and refusal.spent == Decimal("1.20")  # over by at most one call
    tracker.settle("never-reserved")  # harmless


def test_a_held_cost_counts_as_spent_until_the_call_is_recorded_once() -> None:
    """A Realtime response is priced as it ends: its cost holds the budget at once (used, in the
    refusal's words), and finish() swaps the hold for the recorded cost: never counted twice."""
    tracker = BudgetTracker(
        parse_policies("environments:\n  development:\n    budget: {usd: 1, period: day}\n")
    )
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    scopes = scopes_for("development", "ci-key")
    tracker.record(scopes, Decimal("0.40"), now)
    tracker.hold("r1", scopes, Decimal("0.35"))
    assert tracker.check(scopes, now) is None
    tracker.hold("r2", scopes, Decimal("0.25"))
    refusal = tracker.check(scopes, now)
    assert refusal is not None and refusal.spent == Decimal("1.00")  # 0.40 recorded + 0.60 held
    assert tracker.reserved() == {}  # a hold is not an estimate
    tracker.finish("r1", scopes, Decimal("0.35"), now)
    tracker.finish("r2", scopes, Decimal("0.25"), now)
    refusal = tracker.check(scopes, now)
    assert refusal is not None and refusal.spent == Decimal("1.00")
    tracker.hold("r3", scopes_for("staging"), Decimal("5"))  # no budget there: nothing held
    tracker.hold("r4", scopes, Decimal(0))
    assert tracker.check(scopes_for("staging"), now) is None


def test_a_finished_calls_reservation_gives_way_to_its_cost_before_the_writer_records_it() -> None:
    """give_way (the event loop, as a call finishes): the reservation becomes the call's cost, held
    and counted as used; finish (the writer, later) swaps the hold for the spend: counted once,
    nothing else released. A call that holds no reservation is left alone. The refusal says "is
    spent" only when the spend reached the cap; reservations filling it leave "no room"."""
    tracker = BudgetTracker(parse_policies("environments:\n  qa:\n    budget: {usd: 0.001, period: day}\n"))
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    scopes = scopes_for("qa", "ci-key")
    qa = Scope("environment", "qa")
    estimate, cost = Decimal("0.0006"), Decimal("0.000009")
    for i in range(5):  # back to back: each finished before the next starts
        assert tracker.check(scopes, now, reserve=(f"c{i}", lambda: estimate)) is None
        assert tracker.reserves(f"c{i}") and tracker.reserved() == {qa: estimate}
        assert tracker.give_way(f"c{i}", scopes, cost)
        assert not tracker.reserves(f"c{i}") and tracker.reserved() == {}
        assert tracker._held == {qa: (i + 1) * cost}
    assert not tracker.give_way("c0", scopes, cost)  # given way once
    assert not tracker.give_way("never-reserved", scopes, cost)
    assert tracker._held == {qa: 5 * cost}
    # another call in flight while the writer records the five
    assert tracker.check(scopes, now, reserve=("next", lambda: estimate)) is None
    for i in range(5):
        tracker.finish(f"c{i}", scopes, cost, now)
        tracker.finish(f"c{i}", scopes, Decimal(0), now)  # a stray second finish: $0, nothing released
    assert tracker.status(now)[0]["spent"] == 5 * cost
    assert tracker._held == {} and tracker.reserved() == {qa: estimate}
    # the cap filled by reservations, not by spend: no "is spent"
    assert tracker.check(scopes, now, reserve=("big", lambda: Decimal("0.0004"))) is None
    refusal = tracker.check(scopes, now, reserve=("late", lambda: estimate))
    assert refusal is not None and (refusal.spent, refusal.reserved) == (5 * cost, Decimal("0.001"))
    assert refusal.retry_after == 5  # room comes back as calls finish: not the period's end
    assert refusal.message() == (
        "qa budget of $0.001 per day has no room left: $0.000045 used since 2026-11-28 (UTC), "
        "$0.001 more reserved by calls in flight (given back as they finish); retry in 5 s"
    )
    tracker.give_way("next", scopes, None)  # unpriced: counts $0
    tracker.give_way("big", scopes, Decimal("0.002"))  # cost more than it reserved: spent
    refusal = tracker.check(scopes, now)
    assert refusal is not None and (refusal.spent, refusal.reserved) == (Decimal("0.002045"), 0)
    assert refusal.message().startswith("qa budget of $0.001 per day is spent: $0.002045 used since")


def test_give_way_and_finish_from_two_threads_count_each_call_once() -> None:
    """The loop gives way while the writer records the calls given way before: totals stay exact."""
    tracker = BudgetTracker(parse_policies("environments:\n  qa:\n    budget: {usd: 1000, period: day}\n"))
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    scopes = scopes_for("qa")
    done: list[str] = []
    lock = threading.Lock()
    ended = threading.Event()

    def loop() -> None:
        try:
            for i in range(2000):
                assert tracker.check(scopes, now, reserve=(f"c{i}", lambda: Decimal("0.5"))) is None
                assert tracker.give_way(f"c{i}", scopes, Decimal("0.01"))
                with lock:
                    done.append(f"c{i}")
        finally:
            ended.set()

    def writer() -> None:
        recorded = 0
        while True:
            last = ended.is_set()
            with lock:
                batch = done[recorded:]
            for call_id in batch:
                tracker.finish(call_id, scopes, Decimal("0.01"), now)
            recorded += len(batch)
            if last and not batch:
                return

    threads = [threading.Thread(target=loop), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(done) == 2000 and tracker.status(now)[0]["spent"] == Decimal("20.00")
    assert tracker._held == {} and tracker.reserved() == {}


def test_a_kept_reservation_outlives_its_call_until_handed_over_settled_or_expired() -> None:
    """A background response keeps its call's reservation under a key of its own: the call's row
    settles nothing; the retrieval that bills it takes it over (settled with its row, in one step);
    an unbilled end settles it; past ``until`` it is released; kept once, whatever the retries."""
    tracker = BudgetTracker(
        parse_policies("environments:\n  development:\n    budget: {usd: 1, period: day}\n")
    )
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    clock = now.timestamp()
    scopes = scopes_for("development")
    assert tracker.check(scopes, now, reserve=("post", lambda: Decimal("0.50"))) is None
    assert tracker.keep("post", "bg:1", clock + 60) == Decimal("0.50")
    assert tracker.keep("post", "bg:1", clock + 60) is None  # nothing left under the call's id
    tracker.finish("post", scopes, Decimal(0), now)  # the POST's $0 row
    assert tracker.reserved(clock) == {DEV: Decimal("0.50")}
    assert tracker.check(scopes, now, reserve=("post2", lambda: Decimal("0.50"))) is None
    tracker.keep("post2", "bg:2", clock + 60)
    refusal = tracker.check(scopes, now, reserve=("post3", lambda: Decimal("0.50")))
    assert refusal is not None and (refusal.spent, refusal.reserved) == (0, Decimal("1.00"))
    assert refusal.message().startswith("development budget of $1.00 per day has no room left: ")
    # held for hours, not seconds: named as such, and the wait is until the first hold ends
    assert refusal.message().endswith(
        "$0.00 used since 2026-11-28 (UTC), $1.00 held by background responses running; retry in 1m 0s"
    )
    assert (refusal.retry_after, refusal.spent_out) == (60, True)
    tracker.hand_over("bg:1", "get")  # the retrieval that bills it
    tracker.hand_over("bg:1", "get-again")  # a second one: nothing left to take
    assert tracker.reserved(clock) == {DEV: Decimal("1.00")}
    tracker.finish("get-again", scopes, Decimal(0), now)
    assert tracker.reserved(clock) == {DEV: Decimal("1.00")}
    tracker.finish("get", scopes, Decimal("0.65"), now)
    assert tracker.reserved(clock) == {DEV: Decimal("0.50")}
    tracker.keep_reserved("bg:2", scopes, Decimal("0.50"), clock + 60)  # held already: not twice
    assert tracker.reserved(clock) == {DEV: Decimal("0.50")}
    assert tracker.check(scopes, now + timedelta(seconds=59)) is not None  # 0.65 spent + 0.50 held
    assert tracker.check(scopes, now + timedelta(seconds=61)) is None  # bg:2's hold ended
    assert tracker.reserved(clock) == {}
    tracker.keep_reserved("bg:3", scopes, Decimal("0.30"), clock + 120)  # held again (a restart)
    tracker.keep_reserved("bg:4", scopes_for("staging"), Decimal("0.30"), clock + 120)  # no budget
    assert tracker.reserved(clock) == {DEV: Decimal("0.30")}
    tracker.settle("bg:3")  # ended unbilled
    assert tracker.reserved(clock) == {}


def _insert_call(
    con: duckdb.DuckDBPyConnection, call_id: str, session_id: str, env: str, cost: str, ts: datetime = NOW
) -> None:
    con.execute(
        "INSERT INTO calls (id, ts, session_id, environment, provider, host, path, api_flavor, cost_usd) "
        "VALUES (?, ?, ?, ?, 'openai', 'api.openai.com', '/v1/chat/completions', 'chat', ?)",
        [call_id, ts.replace(tzinfo=None), session_id, env, Decimal(cost)],
    )


STAGING_ONLY = parse_policies("environments:\n  staging:\n    budget: {usd: 10, period: day}\n")


def test_other_sessions_spend_is_refreshed_in_place_never_added_twice(tmp_path: Path) -> None:
    """Two proxies on one database: each counts its own calls as they are priced and the other
    sessions' stored calls as one figure that each refresh replaces."""
    con = make_db(tmp_path / "t.duckdb")  # s1 (another proxy) spent 4.5 of staging today
    _insert_call(con, "mine-0", "me", "staging", "1")  # stored by this session before a reload
    tracker = BudgetTracker(STAGING_ONLY)
    tracker.load(con, now=NOW, session_id="me")
    assert tracker.check([STAGING], NOW) is None
    assert tracker.status(NOW)[0]["spent"] == Decimal("5.5")
    tracker.record([STAGING], Decimal("2"), NOW)  # this proxy's call, not stored yet
    _insert_call(con, "other-1", "s1", "staging", "1.5")  # the other proxy stores a call
    assert tracker.refresh_others(con, "me", NOW) == []
    assert tracker.refresh_others(con, "me", NOW) == []  # again: replaced, not added
    assert tracker.status(NOW)[0]["spent"] == Decimal("9")  # 4.5 + 1.5 others, 1 + 2 own
    _insert_call(con, "mine-1", "me", "staging", "2")  # own call stored: still counted once
    tracker.refresh_others(con, "me", NOW)
    assert tracker.status(NOW)[0]["spent"] == Decimal("9")
    # a dead session's call replayed by this proxy and not stored yet counts as the others'
    tracker.refresh_others(con, "me", NOW, others=[((STAGING,), Decimal("0.5"), NOW)])
    assert tracker.status(NOW)[0]["spent"] == Decimal("9.5")
    _insert_call(con, "other-2", "s1", "staging", "1")
    [alert] = tracker.refresh_others(con, "me", NOW)  # the others' spend crosses the cap
    assert (alert.scope, alert.fraction, alert.spent) == (STAGING, 1.0, Decimal("10"))
    refusal = tracker.check([STAGING], NOW)
    assert refusal is not None and refusal.spent == Decimal("10")
    con.close()


def test_an_alert_another_proxy_stored_is_not_fired_again(tmp_path: Path) -> None:
    con = make_db(tmp_path / "t.duckdb")
    tracker = BudgetTracker(STAGING_ONLY)
    tracker.load(con, now=NOW, session_id="me")
    _insert_call(con, "other-1", "s1", "staging", "6")  # 10.5 of 10
    staging = Budget(usd=Decimal("10"), period="day")
    stored = alert_event(BudgetAlert(STAGING, staging, 1.0, Decimal("10.5"), utc(2026, 11, 26)), "s1", NOW)
    assert claim_event(con, stored) is True  # the other proxy announced it
    assert claim_event(con, stored) is False  # stored once
    assert tracker.refresh_others(con, "me", NOW) == []
    assert tracker.record([STAGING], Decimal("1"), NOW) == []
    con.close()


def test_a_spent_cap_whose_holds_outlive_its_reset_is_retried_when_they_end() -> None:
    """$1 spent of $1 a day at 23:00 and a background response holding $1.20 until 02:00: the
    spend resets at midnight, the hold does not; the wait is until 02:00 and the message says
    both (it is spent, it resets, the holds keep it full past that)."""
    tracker = BudgetTracker(parse_policies("environments:\n  qa:\n    budget: {usd: 1, period: day}\n"))
    start = utc(2026, 11, 28, 23)
    scopes = scopes_for("qa")
    assert tracker.check(scopes, start, reserve=("post", lambda: Decimal("1.20"))) is None
    tracker.keep("post", "bg:resp_1", start.timestamp() + 3 * 3600)
    tracker.record(scopes, Decimal("1"), start)
    refusal = tracker.check(scopes, start)
    assert refusal is not None and refusal.spent_out
    assert (refusal.retry_after, refusal.resets_after) == (3 * 3600, 3600)
    assert refusal.message() == (
        "qa budget of $1.00 per day is spent: $1.00 used since 2026-11-28 (UTC), $1.20 held by "
        "background responses running; resets in 1h 0m, background responses holding its room "
        "past that; retry in 3h 0m"
    )
    assert tracker.check(scopes, utc(2026, 11, 29, 0, 30)) is not None  # reset, still held
    assert tracker.check(scopes, utc(2026, 11, 29, 2)) is None


def test_a_spent_cap_whose_holds_end_before_its_reset_waits_for_the_reset() -> None:
    """$1 spent of $1 a day at 12:00 and a hold until 13:00: the reset (midnight) is the wait."""
    tracker = BudgetTracker(parse_policies("environments:\n  qa:\n    budget: {usd: 1, period: day}\n"))
    scopes = scopes_for("qa")
    assert tracker.check(scopes, NOW, reserve=("post", lambda: Decimal("0.50"))) is None
    tracker.keep("post", "bg:resp_1", NOW.timestamp() + 3600)
    tracker.record(scopes, Decimal("1"), NOW)
    refusal = tracker.check(scopes, NOW)
    assert refusal is not None and (refusal.retry_after, refusal.resets_after) == (12 * 3600, None)
    assert refusal.message().endswith("; resets in 12h 0m")


def test_a_budget_background_responses_fill_wins_over_one_calls_in_flight_fill() -> None:
    """Key ci's room is held by a background response for an hour, the environment's by a call in
    flight: the call waits for the hold (final, the hour), not 5 seconds; whichever comes first."""
    policies = parse_policies(
        "environments:\n  qa:\n    budget: {usd: 10, period: day}\n"
        "keys:\n  ci: {fingerprint: 3f9a0c11b2de, budget: {usd: 1, period: day}}\n"
    )
    tracker = BudgetTracker(policies)
    clock = NOW.timestamp()
    assert tracker.check(scopes_for("qa", "ci"), NOW, reserve=("bg", lambda: Decimal("1"))) is None
    tracker.keep("bg", "bg:resp_1", clock + 3600)
    assert tracker.check(scopes_for("qa"), NOW, reserve=("flight", lambda: Decimal("9"))) is None
    refusal = tracker.check(scopes_for("qa", "ci"), NOW)
    assert refusal is not None and refusal.scope == CI
    assert (refusal.spent_out, refusal.retry_after) == (True, 3600)
    assert tracker.check(scopes_for("qa"), NOW).retry_after == 5  # the environment alone: a short wait


@pytest.mark.parametrize(
    ("usd", "cap"),
    [("150", "$150.00"), ("12.5", "$12.50"), ("0.015", "$0.015"), ("0.0101", "$0.0101"), ("0.006", "$0.006")],
)
def test_budget_messages_name_the_cap_as_the_file_gives_it(usd: str, cap: str) -> None:
    """Before, a cap of a cent or more was rounded to cents: $0.015 read $0.02, $0.0101 $0.01."""
    budget = Budget(usd=Decimal(usd), period="day", alert_at=(0.5,))
    scope = Scope("environment", "development")
    start = datetime(2026, 11, 29, tzinfo=UTC)
    alert = BudgetAlert(scope=scope, budget=budget, fraction=0.5, spent=Decimal(usd) / 2, period_start=start)
    assert f"50% of {cap} per day reached" in alert.message()
    spent = BudgetAlert(scope=scope, budget=budget, fraction=1.0, spent=Decimal(usd), period_start=start)
    assert f"budget of {cap} per day is spent: {cap} used" in spent.message()


@pytest.mark.parametrize(
    ("amount", "places", "shown"),
    [
        ("8", 2, "$8.00"),
        ("0.42", 2, "$0.42"),
        ("0.0123", 2, "$0.0123"),  # before: $0.01
        ("0.0354", 2, "$0.0354"),  # before: $0.04
        ("0.0081", 3, "$0.0081"),
        ("0.01", 3, "$0.010"),  # as many decimals as the cap beside it
        ("1234.567", 2, "$1,234.57"),
        ("0.0004", 2, "$0.0004"),
        ("0", 2, "$0.00"),
    ],
)
def test_budget_amounts_keep_the_precision_they_need(amount: str, places: int, shown: str) -> None:
    assert format_usd(Decimal(amount), places) == shown
