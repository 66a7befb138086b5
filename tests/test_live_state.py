"""The live-state file: counts, the UTC day, budgets, atomic 0600 writes, the writer thread."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from addon.live_state import (
    LiveState,
    combine,
    live_path,
    process_start,
    proxy_alive,
    read,
    read_combined,
    session_live_path,
    today_baseline,
)
from addon.migrations import migrate
from addon.record import COLUMNS, CallRecord
from addon.spend_watch import statusline_json
from addon.usage import Usage

NOW = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)


def rec(n: int, env: str = "development", cost: str | None = "0.25", **kwargs: object) -> CallRecord:
    fields: dict[str, object] = {
        "id": f"c{n}",
        "ts": NOW + timedelta(minutes=n),
        "session_id": "s1",
        "environment": env,
        "provider": "openai",
        "host": "api.openai.com",
        "path": "/v1/chat/completions",
        "api_flavor": "chat",
        "model_sent": "gpt-4o",
        "status_code": 200,
        "cost_usd": None if cost is None else Decimal(cost),
        "price_status": "priced" if cost is not None else "unknown_model",
    }
    record = CallRecord(**(fields | kwargs))  # type: ignore[arg-type]
    if record.action == "allowed" and "usage" not in kwargs:
        record.set_usage(Usage(1000, 100, 0, 200))
    return record


def state(tmp_path: Path, **kwargs: object) -> LiveState:
    return LiveState(live_path(tmp_path / "spend.duckdb"), "s1", clock=lambda: NOW, **kwargs)  # type: ignore[arg-type]


def test_live_path_is_next_to_the_database(tmp_path: Path) -> None:
    assert live_path(tmp_path / "spend.duckdb") == tmp_path / "spend.duckdb.live.json"


def test_record_counts_session_and_today_per_environment(tmp_path: Path) -> None:
    live = state(tmp_path)
    live.record([rec(1), rec(2, env="staging", cost="1.5"), rec(3, cost=None)])
    live.record([rec(4, action="blocked", cost="0", status_code=403), rec(5, cost="0.1")])
    snap = live.snapshot()
    assert snap["session"] == {
        "calls": 5,
        "refused_calls": 1,
        "unpriced_calls": 1,
        "cost_usd": "1.85",
        "input_tokens": 4000,
        "cache_read_tokens": 400,
        "output_tokens": 800,
    }
    assert snap["today"] == {
        "date": "2026-11-28",
        "environments": {
            "development": {"calls": 4, "refused_calls": 1, "unpriced_calls": 1, "cost_usd": "0.35"},
            "staging": {"calls": 1, "refused_calls": 0, "unpriced_calls": 0, "cost_usd": "1.5"},
        },
    }
    assert snap["last_call_at"] == "2026-11-28T15:05:00+00:00"
    assert snap["version"] == 1 and snap["running"] is True and snap["session_id"] == "s1"
    assert snap["pid"] == os.getpid()
    assert snap["updated_at"] == "2026-11-28T15:00:00+00:00"


def test_baseline_then_calls_and_a_new_utc_day(tmp_path: Path) -> None:
    live = state(tmp_path)
    live.load_baseline(
        {"development": (Decimal("3.5"), 10, 2, 1), "staging": (Decimal("1"), 1)}, date(2026, 11, 28)
    )
    live.record([rec(1)])
    assert live.snapshot()["today"]["environments"] == {
        "development": {"calls": 11, "refused_calls": 2, "unpriced_calls": 1, "cost_usd": "3.75"},
        "staging": {"calls": 1, "refused_calls": 0, "unpriced_calls": 0, "cost_usd": "1"},
    }
    # a call of the next UTC day starts a new day; a late call of the old day no longer counts as today's
    live.record([rec(60 * 9 + 1, env="staging", cost="0.5")])  # 2026-11-29 00:01
    live.record([rec(2, cost="9")])
    snap = live.snapshot()
    assert snap["today"] == {
        "date": "2026-11-29",
        "environments": {"staging": {"calls": 1, "refused_calls": 0, "unpriced_calls": 0, "cost_usd": "0.5"}},
    }
    assert snap["session"]["calls"] == 3
    assert snap["session"]["cost_usd"] == "9.75"
    assert snap["last_call_at"] == "2026-11-29T00:01:00+00:00"


def test_set_budgets_keeps_the_tracker_status_as_json(tmp_path: Path) -> None:
    from addon.budgets import Scope

    live = state(tmp_path)
    live.set_budgets(
        [
            {
                "scope": Scope("environment", "development"),
                "scope_kind": "environment",
                "scope_name": "development",
                "cap": Decimal("150"),
                "period": "month",
                "start": datetime(2026, 11, 1, tzinfo=UTC),
                "end": datetime(2026, 12, 1, tzinfo=UTC),
                "spent": Decimal("93.10"),
                "fraction": float(Decimal("93.10") / 150),
                "alert_at": (0.5, 0.8),
                "exhausted": False,
            }
        ]
    )
    snap = live.snapshot()
    assert snap["budgets"] == [
        {
            "scope_kind": "environment",
            "scope_name": "development",
            "cap_usd": "150",
            "period": "month",
            "period_start": "2026-11-01T00:00:00+00:00",
            "period_end": "2026-12-01T00:00:00+00:00",
            "spent_usd": "93.10",
            "fraction": 0.6207,
            "alert_at": [0.5, 0.8],
            "exhausted": False,
        }
    ]
    assert snap["budgets_updated_at"] == "2026-11-28T15:00:00+00:00"


def test_set_budgets_from_a_real_tracker(tmp_path: Path) -> None:
    from addon.budgets import BudgetTracker, scopes_for
    from addon.policies import parse_policies

    policies = parse_policies(
        "environments:\n  development:\n    budget: {usd: 2, period: day, alert_at: [0.5]}\n"
    )
    tracker = BudgetTracker(policies)
    tracker.record(scopes_for("development"), Decimal("1.5"), NOW)
    live = state(tmp_path)
    live.set_budgets(tracker.status(NOW))
    (budget,) = live.snapshot()["budgets"]
    assert budget["spent_usd"] == "1.5" and budget["fraction"] == 0.75 and budget["cap_usd"] == "2"
    assert budget["period_start"] == "2026-11-28T00:00:00+00:00"


def test_flush_writes_atomically_with_mode_0600_and_at_most_every_interval(tmp_path: Path) -> None:
    live = state(tmp_path, min_interval=0.2)
    assert live.flush() is True
    path = live.path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read(path) == live.snapshot()
    assert live.flush() is False  # nothing changed
    live.record([rec(1)])
    assert live.flush() is False  # changed, but written less than 0.2 s ago
    time.sleep(0.25)
    assert live.flush() is True
    assert read(path)["session"]["calls"] == 1  # type: ignore[index]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spend.duckdb.live.json"]  # no temp file left


def test_read_missing_or_corrupt_is_none(tmp_path: Path) -> None:
    assert read(tmp_path / "none.json") is None
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert read(bad) is None
    bad.write_text("[1, 2]")
    assert read(bad) is None
    bad.write_text('{"version": 1}')
    assert read(bad) == {"version": 1}
    assert LiveState.read(bad) == {"version": 1}


def test_writer_thread_keeps_the_file_current_and_close_marks_it_stopped(tmp_path: Path) -> None:
    live = LiveState(live_path(tmp_path / "spend.duckdb"), "s1", min_interval=0.05)
    live.start()
    try:
        assert read(live.path)["session"]["calls"] == 0  # type: ignore[index]
        live.record([rec(1)])
        deadline = time.monotonic() + 3
        while (read(live.path) or {}).get("session", {}).get("calls") != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert read(live.path)["session"]["calls"] == 1  # type: ignore[index]
    finally:
        live.close()
    final = read(live.path)
    assert final is not None and final["running"] is False
    assert proxy_alive(final) is False


def test_records_from_many_threads_add_up_exactly(tmp_path: Path) -> None:
    live = state(tmp_path)

    def feed(t: int) -> None:
        for i in range(200):
            live.record([rec(t * 1000 + i % 60, cost="0.01")])

    threads = [threading.Thread(target=feed, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snap = live.snapshot()
    assert snap["session"]["calls"] == 800
    assert snap["session"]["cost_usd"] == "8.00"


def test_proxy_alive_checks_the_pid_and_its_start_time() -> None:
    me = {"running": True, "pid": os.getpid(), "pid_start": process_start(os.getpid())}
    assert proxy_alive(me) is True
    assert proxy_alive(me | {"running": False}) is False
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert proxy_alive({"running": True, "pid": child.pid, "pid_start": None}) is False
    if me["pid_start"] is not None:  # Linux: a reused pid is another process
        assert proxy_alive(me | {"pid_start": me["pid_start"] + 1}) is False
    assert proxy_alive({"running": True, "pid": "x"}) is False


def test_today_baseline_from_the_database(tmp_path: Path) -> None:
    db = tmp_path / "spend.duckdb"
    con = duckdb.connect(str(db))
    try:
        assert today_baseline(con, NOW) == {}  # no tables yet
        migrate(con)
        rows = [
            rec(1, cost="0.5"),
            rec(2, cost="0.25", action="over_budget"),
            rec(3, env="staging", cost=None),
            rec(-16 * 60, cost="7"),  # yesterday 23:00: not today
        ]
        for record in rows:
            values = [getattr(record, c) for c in COLUMNS]
            values[COLUMNS.index("ts")] = record.ts.replace(tzinfo=None)
            con.execute(
                f"INSERT INTO calls ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", values
            )
        assert today_baseline(con, NOW) == {
            "development": (Decimal("0.75"), 2, 1, 0),
            "staging": (Decimal("0"), 1, 0, 1),  # a call with usage and no known price
        }
    finally:
        con.close()


def test_a_write_failure_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    live = LiveState(blocker / "spend.duckdb.live.json", "s1")  # its folder is a file: cannot write
    assert live.flush(0) is False
    live.record([rec(1)])
    assert live.flush(0) is False
    warnings = [r for r in caplog.records if "cannot write the live state" in r.getMessage()]
    assert len(warnings) == 1


def test_the_file_is_valid_json_with_the_documented_keys(tmp_path: Path) -> None:
    live = state(tmp_path)
    live.flush(0)
    data = json.loads(live.path.read_text())
    assert list(data) == [
        "version",
        "running",
        "pid",
        "pid_start",
        "session_id",
        "started_at",
        "updated_at",
        "last_call_at",
        "session",
        "today",
        "budgets",
        "budgets_updated_at",
        "claimable_environments",
        "today_unstored",
    ]


def _alive(live: LiveState) -> dict:
    return live.snapshot() | {"pid_start": process_start(os.getpid())}


def test_each_proxy_has_its_own_file_and_readers_combine_the_running_ones_exactly(tmp_path: Path) -> None:
    """Two proxies on one database: $1 stored when A starts; A's $0.5 call is stored (A's flush
    reads the database again), then B starts (its baseline: $1.5), B spends $0.25 and A $0.1,
    neither stored yet. Today is $1.85: the latest database figure plus each one's unstored calls
    (summing the files would say $3.35; the last file written, $1.6 or $1.75)."""
    db = tmp_path / "spend.duckdb"
    a = LiveState(session_live_path(db, "sess-a"), "sess-a", clock=lambda: NOW)
    a.load_baseline({"development": (Decimal("1"), 4)}, NOW.date())
    a.record([rec(1, cost="0.5")])
    a.rebase({"development": (Decimal("1.5"), 5)}, NOW.date())  # after A's flush
    b = LiveState(session_live_path(db, "sess-b"), "sess-b", clock=lambda: NOW + timedelta(seconds=1))
    b.load_baseline({"development": (Decimal("1.5"), 5)}, NOW.date())
    b.record([rec(2, cost="0.25")])
    a.record([rec(3, cost="0.1")])
    assert a.snapshot()["today_unstored"] == {
        "development": {"calls": 1, "refused_calls": 0, "unpriced_calls": 0, "cost_usd": "0.1"}
    }
    a.flush(0)
    b.flush(0)
    assert sorted(p.name for p in (tmp_path / "spend.duckdb.live").iterdir()) == [
        "sess-a.json",
        "sess-b.json",
    ]
    both = read_combined(db)
    assert both is not None and both["proxies"] == 2 and both["session_ids"] == ["sess-a", "sess-b"]
    assert both["today"]["environments"]["development"] == {
        "calls": 7,
        "refused_calls": 0,
        "unpriced_calls": 0,
        "cost_usd": "1.85",
    }
    assert both["session_id"] == "sess-b" and proxy_alive(both)  # the newest proxy's
    # a rebase with the unstored calls still queued keeps them apart (the store passes those)
    a.rebase({"development": (Decimal("1.75"), 6)}, NOW.date(), [rec(3, cost="0.1")])
    a.flush(0)
    assert read_combined(db)["today"]["environments"]["development"]["cost_usd"] == "2.10"  # type: ignore[index]
    # A stops: B alone is the state; both stopped: off
    a.close()
    alone = read_combined(db)
    assert alone is not None and alone["session_id"] == "sess-b" and proxy_alive(alone)
    b.close()
    off = read_combined(db)
    assert off is not None and not proxy_alive(off)


def test_combine_takes_each_budget_once_at_its_largest_spend(tmp_path: Path) -> None:
    budget = {
        "scope_kind": "environment",
        "scope_name": "staging",
        "period": "day",
        "period_start": "2026-11-28T00:00:00+00:00",
    }
    first = _alive(state(tmp_path)) | {"budgets": [budget | {"spent_usd": "0.00108"}]}
    second = _alive(state(tmp_path)) | {"budgets": [budget | {"spent_usd": "0.00144"}], "session_id": "s2"}
    both = combine([first, second])
    assert both is not None and [b["spent_usd"] for b in both["budgets"]] == ["0.00144"]
    assert combine([]) is None


def test_the_status_line_shows_the_current_periods_budget_of_the_running_proxies(tmp_path: Path) -> None:
    """B (older, idle) last wrote its budgets yesterday ($9 of $10); A wrote today's ($5 of $10).
    _combined_budgets keys entries by period_start, so both are kept, B's first (files are read in
    session order); _env_budget takes the first and, its period over, shows 0%. The line should
    say 50%."""
    db = tmp_path / "spend.duckdb"
    now = datetime(2026, 11, 28, 0, 0, 2, tzinfo=UTC)
    yesterday, today = now - timedelta(days=1), now

    def entry(start: datetime, spent: str) -> dict:
        return {
            "scope_kind": "environment",
            "scope_name": "development",
            "cap_usd": "10",
            "period": "day",
            "period_start": start.replace(hour=0, minute=0, second=0).isoformat(),
            "period_end": (start.replace(hour=0, minute=0, second=0) + timedelta(days=1)).isoformat(),
            "spent_usd": spent,
            "fraction": float(Decimal(spent) / 10),
            "alert_at": [0.5, 0.8],
            "exhausted": False,
        }

    def alive(session: str, started: datetime, budget: dict) -> dict:
        live = LiveState(session_live_path(db, session), session, clock=lambda: started)
        return live.snapshot() | {"pid_start": process_start(os.getpid()), "budgets": [budget]}

    older = alive("20261127T100000Z-bbbb", yesterday, entry(yesterday, "9"))
    newer = alive("20261127T110000Z-aaaa", today, entry(today, "5"))
    line = statusline_json(combine([older, newer]), env="development", now=now)
    assert line["status"] == "on"
    assert line["budget"] is not None
    assert line["budget"]["spent_usd"] == "5", line["budget"]  # before the fix: "0" (B's, zeroed)


def test_the_live_file_says_which_environments_a_caller_may_name(tmp_path: Path) -> None:
    """The status line books an undeclared APP_ENV to the default, as the proxy does: it needs to
    know what policies.yaml declares."""
    live = LiveState(tmp_path / "x.live.json", "s1")
    assert live.snapshot()["claimable_environments"] is None
    live.set_claimable(["production", "development"], "development")
    assert live.snapshot()["claimable_environments"] == {
        "declared": ["development", "production"],
        "default_environment": "development",
        "variables": ["APP_ENV"],
        "fallback_environment": "development",
    }
    # what the proxy reads, and where it books a call they name nothing claimable for
    live.set_claimable(None, "development", variables=["NODE_ENV", "APP_ENV"], fallback="staging")
    assert live.snapshot()["claimable_environments"] == {
        "declared": None,
        "default_environment": "development",
        "variables": ["NODE_ENV", "APP_ENV"],
        "fallback_environment": "staging",
    }
