"""scripts/spend: every report against DuckDB files built from known rows (numbers by hand).

Prices per 1M tokens (NOTES.md): gpt-4o 2.50 / 1.25 cached / 10 out; gpt-4o-mini 0.15 / 0.075 /
0.60; claude-sonnet-4-5 3 / 0.30 read / 15 out; claude-haiku-4-5 1 / 0.10 / 5.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest

from addon.migrations import migrate
from addon.paths import data_dir, default_policies_path, resolve_db_path, resolve_policies_path
from addon.pricing import Pricer, price, price_record
from addon.record import COLUMNS, CallRecord
from addon.spend import main, render_session
from addon.spend_render import Column, count, money_column, table
from addon.spend_reports import _reprice, since_delta
from addon.store import Store
from addon.usage import Usage

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


# -- building databases ---------------------------------------------------------------------------


def call(n: int, session: str, model: str | None, usage: Usage | None, **kwargs: object) -> CallRecord:
    fields: dict[str, object] = {
        "id": f"{session}-{n}",
        "ts": T0 + timedelta(seconds=n),
        "session_id": session,
        "environment": "development",
        "provider": "openai",
        "host": "api.openai.com",
        "path": "/v1/chat/completions",
        "api_flavor": "chat",
        "model_sent": model,
        "status_code": 200,
    }
    record = CallRecord(**(fields | kwargs))  # type: ignore[arg-type]
    record.set_usage(usage)
    return record


def write(db: Path, records: list[CallRecord]) -> None:
    """Insert rows directly (priced like the store does, unless a price is already set)."""
    con = duckdb.connect(str(db))
    try:
        migrate(con)
        for record in records:
            price_record(record)
            values = [getattr(record, c) for c in COLUMNS]
            values[COLUMNS.index("ts")] = record.ts.astimezone(UTC).replace(tzinfo=None)
            con.execute(
                f"INSERT INTO calls ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", values
            )
    finally:
        con.close()


def fill(db: Path, session: str, records: list[CallRecord]) -> None:
    store = Store(db, session, flush_interval=3600, version="0.1.0")
    store.start()
    for record in records:
        store.submit(record)
    store.close()


def spend(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "addon.spend", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``main(args)`` in-process: (exit status, stdout, stderr)."""
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def report(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code, out, err = run(capsys, *args, "--format", "json")
    assert code == 0, err
    return json.loads(out)


def totals(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "calls": 0,
        "refused_calls": 0,
        "input_tokens": 0,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "output_tokens": 0,
        "reasoning_tokens": 0,
        "unpriced_calls": 0,
        "no_usage_calls": 0,
        "cost_usd": None,
    }
    return base | kw


# -- the session report (a database written through Store) ---------------------------------------

GPT = Usage(input_tokens=1000, cache_read_tokens=200, output_tokens=500)  # $0.00725
SONNET = Usage(  # $0.0357
    input_tokens=10_000,
    cache_read_tokens=4_000,
    cache_write_tokens=2_000,
    output_tokens=1_000,
    reasoning_tokens=300,
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "spend.duckdb"
    fill(db=path, session="old", records=[call(1, "old", "gpt-4o", GPT)])
    time.sleep(0.01)  # "new" starts later
    fill(
        path,
        "new",
        [
            call(1, "new", "gpt-4o", GPT),
            call(2, "new", "gpt-4o", GPT),
            call(
                3,
                "new",
                "claude-sonnet-4-5",
                SONNET,
                provider="anthropic",
                host="api.anthropic.com",
                path="/v1/messages",
                api_flavor="messages",
                model_reported="claude-sonnet-4-5-20250929",
                environment="production",
            ),
            call(4, "new", "gpt-9-imaginary", Usage(input_tokens=100, output_tokens=50)),
            call(5, "new", "gpt-4o", None, status_code=429),  # an error: not billed
            call(6, "new", "gpt-4o", None, aborted=True),  # usage never came
            call(7, "new", None, None, model_requested="gpt-4o", action="blocked", status_code=403),
        ],
    )
    return path


def test_json_latest_session(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = report(capsys, "--db", str(db))
    session = data.pop("session")
    sonnet = totals(
        calls=1,
        input_tokens=10_000,
        cache_read_tokens=4_000,
        cache_write_tokens=2_000,
        output_tokens=1_000,
        reasoning_tokens=300,
        cost_usd="0.0357",
    )
    assert data == {
        "schema": 1,
        "report": "session",
        "db": str(db),
        "total": totals(
            calls=7,
            refused_calls=1,
            input_tokens=12_100,
            cache_read_tokens=4_400,
            cache_write_tokens=2_000,
            output_tokens=2_050,
            reasoning_tokens=300,
            unpriced_calls=1,
            no_usage_calls=1,
            cost_usd="0.0502",
        ),
        "by_model": [
            # the reported dated name is priced as (and reported under) the base model
            {"model": "claude-sonnet-4-5", **sonnet},
            {
                "model": "gpt-4o",
                **totals(
                    calls=5,
                    refused_calls=1,
                    input_tokens=2_000,
                    cache_read_tokens=400,
                    output_tokens=1_000,
                    no_usage_calls=1,
                    cost_usd="0.0145",
                ),
            },
            {
                "model": "gpt-9-imaginary",
                **totals(calls=1, input_tokens=100, output_tokens=50, unpriced_calls=1),
            },
        ],
        "by_environment": [
            {
                "environment": "development",
                **totals(
                    calls=6,
                    refused_calls=1,
                    input_tokens=2_100,
                    cache_read_tokens=400,
                    output_tokens=1_050,
                    unpriced_calls=1,
                    no_usage_calls=1,
                    cost_usd="0.0145",
                ),
            },
            {"environment": "production", **sonnet},
        ],
    }
    assert session["session_id"] == "new"
    assert (session["pid"], session["version"]) == (os.getpid(), "0.1.0")
    assert session["started_at"].endswith("+00:00") and session["ended_at"] >= session["started_at"]


def test_json_chosen_session(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = totals(
        calls=1, input_tokens=1000, cache_read_tokens=200, output_tokens=500, cost_usd="0.00725"
    )
    for args in (
        ["session", "--session", "old"],
        ["session", "old"],
        ["--session", "old"],
        ["--json", "session", "old"],
    ):
        data = report(capsys, "--db", str(db), *args)
        assert data["session"]["session_id"] == "old"
        assert data["total"] == expected
        assert data["by_environment"] == [{"environment": "development", **expected}]


def test_unknown_session(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--db", str(db), "session", "nope") == (1, "", f"spend: no session 'nope' in {db}\n")


def test_session_table(db: Path) -> None:
    result = spend("--db", str(db))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "session new"
    assert lines[1].startswith("started ") and ", ended " in lines[1]
    assert lines[2] == f"database: {db}"
    assert all(len(line) <= 80 for line in lines[3:])
    assert lines[3:] == [
        "",
        "model              calls   input  cached  cache-w  output  reason     cost $",
        "claude-sonnet-4-5      1  10,000   4,000    2,000   1,000     300  0.035700",
        "gpt-4o                 5   2,000     400        0   1,000       0  0.014500",
        "gpt-9-imaginary        1     100       0        0      50       0         ?",
        "-" * 76,
        "total                  7  12,100   4,400    2,000   2,050     300  0.050200*",
        "",
        "environment  calls   input  cached  cache-w  output  reason     cost $",
        "development      6   2,100     400        0   1,050       0  0.014500*",
        "production       1  10,000   4,000    2,000   1,000     300  0.035700",
        "-" * 70,
        "total            7  12,100   4,400    2,000   2,050     300  0.050200*",
        "",
        "1 call(s) with no known price, not in the cost: gpt-9-imaginary (1)",
        "1 call(s) without usage (aborted or unreadable), not in the cost",
        "1 call(s) refused by policy (blocked, over budget, rate limited)",
    ]


def test_session_table_with_room_uses_wider_gaps(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--db", str(db), "--session", "old")
    assert code == 0
    assert out.splitlines()[3:] == [
        "",
        "model   calls  input  cached  cache-w  output  reason    cost $",
        "gpt-4o      1  1,000     200        0     500       0  0.007250",
        "-" * 63,
        "total       1  1,000     200        0     500       0  0.007250",
        "",
        "environment  calls  input  cached  cache-w  output  reason    cost $",
        "development      1  1,000     200        0     500       0  0.007250",
        "-" * 68,
        "total            1  1,000     200        0     500       0  0.007250",
    ]


def test_long_model_names_wrap_instead_of_being_cut() -> None:
    name = "ft:gpt-4o-2024-08-06:my-org:an-unusually-long-fine-tune-name:AbC123"
    row = {"model": name, **totals(calls=2, input_tokens=1_234_567, output_tokens=8, cost_usd="3.5")}
    data = {
        "schema": 1,
        "db": "/x",
        "session": {"session_id": "s", "started_at": None, "ended_at": "2026-11-01T12:00:00+00:00"},
        "total": row | {"model": "total"},
        "by_model": [row],
    }
    assert render_session(data).splitlines()[4:] == [
        "model  calls      input  cached  cache-w  output  reason  cost $",
        name,
        "           2  1,234,567       0        0       8       0  3.5000",
        "-" * 64,
        "total      2  1,234,567       0        0       8       0  3.5000",
    ]


def test_session_csv(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--db", str(db), "--format", "csv")
    assert code == 0
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == [
        "group", "name", "calls", "refused_calls", "input_tokens", "cache_read_tokens", "cache_write_tokens",
        "output_tokens", "reasoning_tokens", "unpriced_calls", "no_usage_calls", "cost_usd",
    ]  # fmt: skip
    assert rows[1:] == [
        ["model", "claude-sonnet-4-5", "1", "0", "10000", "4000", "2000", "1000", "300", "0", "0", "0.0357"],
        ["model", "gpt-4o", "5", "1", "2000", "400", "0", "1000", "0", "0", "1", "0.0145"],
        ["model", "gpt-9-imaginary", "1", "0", "100", "0", "0", "50", "0", "1", "0", ""],
        ["environment", "development", "6", "1", "2100", "400", "0", "1050", "0", "1", "1", "0.0145"],
        ["environment", "production", "1", "0", "10000", "4000", "2000", "1000", "300", "0", "0", "0.0357"],
    ]


def test_session_without_calls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "spend.duckdb"
    fill(path, "empty", [])
    code, out, _ = run(capsys, "--db", str(path))
    assert code == 0
    assert out.splitlines()[-1] == "No calls in this session yet."
    data = report(capsys, "--db", str(path))
    assert data["session"]["session_id"] == "empty"
    assert (data["total"], data["by_model"], data["by_environment"]) == (totals(), [], [])


def test_sessions(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = report(capsys, "--db", str(db), "sessions")
    assert [(s["session_id"], s["calls"], s["cost_usd"]) for s in data["sessions"]] == [
        ("new", 7, "0.0502"),
        ("old", 1, "0.00725"),
    ]
    assert set(data["sessions"][0]) == {
        "session_id", "started_at", "ended_at", "last_call_at", "hostname", "pid", "version", "calls",
        "cost_usd", "unpriced_calls",
    }  # fmt: skip
    assert data["sessions"][0]["last_call_at"] == "2026-11-01T12:00:07+00:00"
    assert [
        s["session_id"] for s in report(capsys, "--db", str(db), "sessions", "--limit", "1")["sessions"]
    ] == ["new"]
    code, out, _ = run(capsys, "--db", str(db), "sessions")
    assert code == 0
    lines = out.splitlines()
    assert lines[2].split() == ["session", "started", "(UTC)", "ended", "(UTC)", "calls", "cost", "$"]
    # "new" holds a call with no known price: its cost is marked, as in every other report
    assert lines[3].startswith("new ") and lines[3].endswith("     7  0.050200*"), lines[3]
    assert lines[4].startswith("old ") and lines[4].rstrip().endswith("     1  0.007250"), lines[4]
    assert data["sessions"][0]["unpriced_calls"] == 1 and data["sessions"][1]["unpriced_calls"] == 0
    assert lines[-1] == "* calls with no known price are not in the cost (scripts/spend unpriced)"


def test_a_session_without_calls_cost_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "spend.duckdb"
    store = Store(db, "idle")
    store.start()
    store.close()
    [session] = report(capsys, "--db", str(db), "sessions")["sessions"]
    assert (session["session_id"], session["calls"], session["cost_usd"]) == ("idle", 0, "0")


# -- the known dataset of the other reports ---------------------------------------------------------

U_MINI = Usage(input_tokens=10_000, output_tokens=1_000)  # gpt-4o-mini: $0.0021
U_4O = Usage(input_tokens=10_000, cache_read_tokens=2_000, output_tokens=1_000)  # gpt-4o: $0.0325
U_CLAUDE = Usage(
    input_tokens=20_000, cache_read_tokens=5_000, output_tokens=2_000
)  # sonnet $0.0765, haiku $0.0255
LONG_TEAM = "the-platform-and-developer-experience-team-of-the-north-east-region"
ANTHROPIC = {
    "provider": "anthropic",
    "host": "api.anthropic.com",
    "path": "/v1/messages",
    "api_flavor": "messages",
}


def at(day: int, hour: int = 10, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


def known_rows() -> list[CallRecord]:
    prod = {
        "environment": "production",
        "user_name": "svc",
        "team": "platform",
        "feature": "chat",
        "repo": "app",
    }
    alice = {"user_name": "alice", "team": "platform", "feature": "chat", "repo": "app"}
    bob = {"user_name": "bob", "team": LONG_TEAM, "feature": "search", "repo": "search"}

    def fixed(n: int, ts: datetime, env: str, cost: str) -> CallRecord:
        """An older call with a given cost (for the monthly ratio)."""
        return call(
            n, "k", "gpt-4o-mini", U_MINI, ts=ts, environment=env, cost_usd=Decimal(cost),
            price_status="priced", price_model="gpt-4o-mini", user_name="alice",
        )  # fmt: skip

    return [
        fixed(1, at(15, month=9), "development", "1"),
        fixed(2, at(16, month=9), "production", "4"),
        fixed(3, at(15, month=10), "development", "1.5"),
        fixed(4, at(16, month=10), "production", "2"),
        call(10, "k", "gpt-4o", U_4O, ts=at(2), **prod),
        call(11, "k", "gpt-4o", U_4O, ts=at(3), model_reported="gpt-4o-2024-08-06", **prod),
        call(12, "k", "claude-sonnet-4-5", U_CLAUDE, ts=at(3), **prod, **ANTHROPIC),
        call(20, "k", "gpt-4o-mini", U_MINI, ts=at(2), **alice),
        call(21, "k", "gpt-4o", U_4O, ts=at(3), model_reported="gpt-4o-2024-08-06", **alice),
        call(22, "k", "claude-sonnet-4-5", U_CLAUDE, ts=at(4), **bob, **ANTHROPIC),
        call(
            23, "k", None, None, ts=at(4), model_requested="gpt-4o", action="blocked", status_code=403, **bob
        ),
        call(24, "k", "gpt-9-imaginary", U_MINI, ts=at(4), **alice),
        call(
            30, "k", "gpt-4o-mini", U_MINI, ts=at(5, 9), environment="staging", user_name="ci-bot",
            key_name="ci-openai",
        ),
    ]  # fmt: skip


POLICIES = """\
default_environment: development
environments:
  development:
    models:
      allow: [gpt-4o-mini, claude-haiku-4-5]
      downgrade:
        gpt-4o: gpt-4o-mini
        claude-sonnet-4-5*: claude-haiku-4-5
    budget: {usd: 0.8, period: month, alert_at: [0.1, 0.5]}
  staging:
    models:
      allow: [gpt-4o-mini]
      on_disallowed: block
  production:
    models: {allow: ["*"]}
keys:
  ci-openai:
    fingerprint: 3f9a0c11b2de
    environment: staging
    budget: {usd: 0.004, period: day}
users:
  bob: {budget: {usd: 0.05, period: week}}
premium_usd_per_mtok: 5
"""


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("known") / "spend.duckdb"
    write(path, known_rows())
    return path


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("policies") / "policies.yaml"
    path.write_text(POLICIES)
    return path


NOV = ("--from", "2026-11-01", "--to", "2026-11-07")


def test_the_prices_this_file_assumes() -> None:
    when = datetime(2026, 11, 3)
    assert price("openai", "gpt-4o-mini", U_MINI, when).cost_usd == Decimal("0.0021")
    assert price("openai", "gpt-4o", U_4O, when).cost_usd == Decimal("0.0325")
    assert price("openai", "gpt-4o-mini", U_4O, when).cost_usd == Decimal("0.00195")
    assert price("anthropic", "claude-sonnet-4-5", U_CLAUDE, when).cost_usd == Decimal("0.0765")
    assert price("anthropic", "claude-haiku-4-5", U_CLAUDE, when).cost_usd == Decimal("0.0255")


# -- by ------------------------------------------------------------------------------------------------


def test_by_env(known: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = report(capsys, "--db", str(known), "by", "env", *NOV)
    assert (data["report"], data["dimension"]) == ("by", "env")
    assert data["range"] == {"from": "2026-11-01T00:00:00+00:00", "to": "2026-11-08T00:00:00+00:00"}
    assert data["filters"] == {
        k: [] for k in ("environment", "model", "provider", "team", "feature", "user", "key", "repo")
    }
    assert data["rows"] == [
        {
            "key": "production",
            **totals(
                calls=3, input_tokens=40_000, cache_read_tokens=9_000, output_tokens=4_000, cost_usd="0.1415"
            ),
            "share": 0.5556,  # 0.1415 / 0.2547
        },
        {
            "key": "development",
            **totals(
                calls=5,
                refused_calls=1,
                input_tokens=50_000,
                cache_read_tokens=7_000,
                output_tokens=5_000,
                unpriced_calls=1,
                cost_usd="0.1111",
            ),
            "share": 0.4362,
        },
        {
            "key": "staging",
            **totals(calls=1, input_tokens=10_000, output_tokens=1_000, cost_usd="0.0021"),
            "share": 0.0082,
        },
    ]
    assert data["total"] == totals(
        calls=9,
        refused_calls=1,
        input_tokens=100_000,
        cache_read_tokens=16_000,
        output_tokens=10_000,
        unpriced_calls=1,
        cost_usd="0.2547",
    )


def test_by_model_user_key_and_filters(known: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def keyed(*args: str) -> list[tuple[Any, int, Any]]:
        data = report(capsys, "--db", str(known), "by", *args)
        return [(r["key"], r["calls"], r["cost_usd"]) for r in data["rows"]]

    assert keyed("model", *NOV) == [
        ("claude-sonnet-4-5", 2, "0.153"),
        ("gpt-4o", 4, "0.0975"),  # dated gpt-4o-2024-08-06 folds into gpt-4o; the blocked call too
        ("gpt-4o-mini", 2, "0.0042"),
        ("gpt-9-imaginary", 1, None),
    ]
    assert keyed("model")[0] == ("gpt-4o-mini", 6, "8.5042")  # all time: the fixed-cost months too
    assert keyed("user", *NOV) == [
        ("svc", 3, "0.1415"),
        ("bob", 2, "0.0765"),
        ("alice", 3, "0.0346"),
        ("ci-bot", 1, "0.0021"),
    ]
    assert keyed("key", *NOV) == [(None, 8, "0.2526"), ("ci-openai", 1, "0.0021")]
    assert keyed("provider", "--env", "dev", *NOV) == [("anthropic", 1, "0.0765"), ("openai", 4, "0.0346")]
    assert keyed("feature", "--model", "gpt-4o*", "--from", "2026-11-01") == [
        ("chat", 4, "0.0996"),
        (None, 1, "0.0021"),
        ("search", 1, "0"),
    ]
    assert keyed(
        "repo", "--user", "alice", "--user", "bob", "--since", "7d", "--now", "2026-11-06T00:00"
    ) == [
        ("search", 2, "0.0765"),
        ("app", 3, "0.0346"),
    ]
    assert keyed("team", "--team", "platform", "--provider", "OpenAI", *NOV) == [("platform", 5, "0.0996")]


def test_by_time(known: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def keyed(unit: str) -> list[tuple[Any, int, Any]]:
        data = report(capsys, "--db", str(known), "by", unit)
        return [(r["key"], r["calls"], r["cost_usd"]) for r in data["rows"]]

    assert keyed("month") == [("2026-09", 2, "5"), ("2026-10", 2, "3.5"), ("2026-11", 9, "0.2547")]
    assert keyed("week") == [
        ("2026-09-14", 2, "5"),  # Monday 14 September
        ("2026-10-12", 2, "3.5"),
        ("2026-11-02", 9, "0.2547"),
    ]
    assert keyed("day")[4:] == [
        ("2026-11-02", 2, "0.0346"),
        ("2026-11-03", 3, "0.1415"),
        ("2026-11-04", 3, "0.0765"),
        ("2026-11-05", 1, "0.0021"),
    ]


def test_by_table_fits_80_columns(known: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--db", str(known), "by", "team", *NOV)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "spend by team, 2026-11-01 .. 2026-11-07 UTC"
    assert max(len(line) for line in lines) == 80
    assert lines[2:] == [
        "team                                calls   input cached output    cost $  share",
        "platform                                6  70,000 11,000  7,000 0.176100*  69.1%",
        "the-platform-and-developer-experie…     2  20,000  5,000  2,000  0.076500  30.0%",
        "(none)                                  1  10,000      0  1,000  0.002100   0.8%",
        "-" * 80,
        "total                                   9 100,000 16,000 10,000 0.254700* 100.0%",
        "* 1 call(s) with no known price are not in the cost",
        "1 call(s) refused by policy (blocked, over budget, rate limited)",
    ]


def test_by_csv(known: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--db", str(known), "by", "env", "--format", "csv", *NOV)
    assert code == 0
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == [
        "env", "calls", "refused_calls", "input_tokens", "cache_read_tokens", "cache_write_tokens",
        "output_tokens", "reasoning_tokens", "unpriced_calls", "no_usage_calls", "cost_usd", "share",
    ]  # fmt: skip
    assert rows[1:] == [
        ["production", "3", "0", "40000", "9000", "0", "4000", "0", "0", "0", "0.1415", "0.5556"],
        ["development", "5", "1", "50000", "7000", "0", "5000", "0", "1", "0", "0.1111", "0.4362"],
        ["staging", "1", "0", "10000", "0", "0", "1000", "0", "0", "0", "0.0021", "0.0082"],
    ]


# -- summary ---------------------------------------------------------------------------------------


def test_summary(known: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = report(capsys, "--db", str(known), "summary", *NOV)
    envs = {e["environment"]: e for e in data["environments"]}
    assert list(envs) == ["development", "staging", "production"]
    dev = envs["development"]
    assert {k: dev[k] for k in ("calls", "refused_calls", "usage_calls", "cost_usd", "unpriced_calls")} == {
        "calls": 5,
        "refused_calls": 1,
        "usage_calls": 4,
        "cost_usd": "0.1111",
        "unpriced_calls": 1,
    }
    assert (dev["avg_input_tokens"], dev["avg_output_tokens"], dev["cache_hit_rate"]) == (
        12_500.0,
        1_250.0,
        0.14,
    )
    assert dev["cost_per_call_usd"] == "0.0370333333"  # 0.1111 over the 3 priced calls
    assert dev["models"] == [
        {"model": "gpt-4o", "calls": 2, "share": 0.4, "cost_usd": "0.0325"},
        {"model": "claude-sonnet-4-5", "calls": 1, "share": 0.2, "cost_usd": "0.0765"},
        {"model": "gpt-4o-mini", "calls": 1, "share": 0.2, "cost_usd": "0.0021"},
        {"model": "gpt-9-imaginary", "calls": 1, "share": 0.2, "cost_usd": None},
    ]
    prod = envs["production"]
    assert (prod["avg_input_tokens"], prod["avg_output_tokens"], prod["cache_hit_rate"]) == (
        13_333.3,
        1_333.3,
        0.225,
    )
    assert (prod["cost_per_call_usd"], envs["staging"]["cost_per_call_usd"]) == ("0.0471666667", "0.0021")
    assert [m["model"] for m in prod["models"]] == ["gpt-4o", "claude-sonnet-4-5"]
    total = data["total"]
    assert (total["calls"], total["cost_usd"], total["cost_per_call_usd"]) == (
        9,
        "0.2547",
        "0.0363857143",
    )  # / 7
    assert total["cache_hit_rate"] == 0.16
    assert total["models"][0] == {"model": "gpt-4o", "calls": 4, "share": 0.4444, "cost_usd": "0.0975"}

    code, out, _ = run(capsys, "--db", str(known), "summary", *NOV)
    assert code == 0
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert lines == [
        "summary, 2026-11-01 .. 2026-11-07 UTC",
        "",
        "                       development   staging  production      total",
        "calls                            5         1           3          9",
        "refused calls                    1         0           0          1",
        "total cost $             0.111100*  0.002100    0.141500  0.254700*",
        "cost per call $           0.037033  0.002100    0.047167   0.036386",
        "avg input tokens            12,500    10,000      13,333     12,500",
        "avg output tokens            1,250     1,000       1,333      1,250",
        "cache hit rate               14.0%      0.0%       22.5%      16.0%",
        "model mix, % of calls",
        "  gpt-4o                       40%         -         67%        44%",
        "  claude-sonnet-4-5            20%         -         33%        22%",
        "  gpt-4o-mini                  20%      100%           -        22%",
        "  gpt-9-imaginary              20%         -           -        11%",
        "* 1 call(s) with no known price are not in the cost",
        "1 call(s) refused by policy (blocked, over budget, rate limited)",
    ]


def test_summary_default_range_is_seven_days(known: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = report(capsys, "--db", str(known), "summary", "--now", "2026-11-04T00:00")
    assert data["range"] == {"from": "2026-10-28T00:00:00+00:00", "to": "2026-11-04T00:00:00+00:00"}
    assert data["total"]["calls"] == 5  # 2 and 3 November


def test_summary_cost_per_call_leaves_out_calls_a_subscription_paid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two API calls at $0.0021 and two Claude Max calls ($0, the plan paid): an API call costs
    $0.0021, not $0.00105 (the plan's calls are not $0 calls to average in)."""
    api = [call(n, "s", "gpt-4o-mini", U_MINI) for n in (1, 2)]
    plan = [call(n, "s", "claude-sonnet-4-5", U_CLAUDE, provider="anthropic") for n in (3, 4)]
    for record in plan:
        record.cost_usd, record.price_status = Decimal(0), "subscription"
    path = tmp_path / "plan.duckdb"
    write(path, api + plan)
    data = report(capsys, "--db", str(path), "summary", *NOV)
    [dev] = data["environments"]
    for entry in (dev, data["total"]):
        assert (entry["calls"], entry["usage_calls"], entry["cost_usd"]) == (4, 4, "0.0042")
        assert entry["cost_per_call_usd"] == "0.0021"


def test_summary_many_environments_wrap_into_blocks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "many.duckdb"
    names = [
        "development",
        "staging",
        "qa-europe-west",
        "a-rather-long-environment-name",
        "preview",
        "production",
    ]
    write(path, [call(i, "m", "gpt-4o-mini", U_MINI, environment=env) for i, env in enumerate(names)])
    code, out, _ = run(capsys, "--db", str(path), "summary", "--from", "2026-11-01")
    assert code == 0
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    headers = [line.split() for line in lines if line.startswith("   ")]
    assert headers == [
        ["development", "staging", "preview", "a-rather-long…"],
        ["qa-europe-west", "production", "total"],
    ]
    assert sum(line.startswith("calls ") for line in lines) == 2


def test_summary_csv(known: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--db", str(known), "summary", "--format", "csv", *NOV)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["environment"] for r in rows] == ["development", "staging", "production"]
    assert rows[0]["model_mix"] == "gpt-4o:0.4;claude-sonnet-4-5:0.2;gpt-4o-mini:0.2;gpt-9-imaginary:0.2"
    assert (rows[2]["cost_per_call_usd"], rows[2]["avg_input_tokens"], rows[2]["cache_hit_rate"]) == (
        "0.0471666667",
        "13333.3",
        "0.225",
    )


# -- ratio ------------------------------------------------------------------------------------------


def test_ratio(known: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = report(capsys, "--db", str(known), "ratio")
    assert data["months"] == [
        {
            "month": "2026-09",
            "nonprod_cost_usd": "1",
            "prod_cost_usd": "4",
            "nonprod_calls": 1,
            "prod_calls": 1,
            "nonprod_unpriced_calls": 0,
            "prod_unpriced_calls": 0,
            "unpriced_calls": 0,
            "ratio": 0.25,
            "one_to": 4.0,
            "flagged": False,
            "change": None,
        },
        {
            "month": "2026-10",
            "nonprod_cost_usd": "1.5",
            "prod_cost_usd": "2",
            "nonprod_calls": 1,
            "prod_calls": 1,
            "nonprod_unpriced_calls": 0,
            "prod_unpriced_calls": 0,
            "unpriced_calls": 0,
            "ratio": 0.75,
            "one_to": 1.3333,
            "flagged": True,
            "change": 0.5,
        },
        {
            "month": "2026-11",
            "nonprod_cost_usd": "0.1132",
            "prod_cost_usd": "0.1415",
            "nonprod_calls": 6,
            "prod_calls": 3,
            "nonprod_unpriced_calls": 1,  # not in its $0.1132
            "prod_unpriced_calls": 0,
            "unpriced_calls": 1,
            "ratio": 0.8,
            "one_to": 1.25,
            "flagged": True,
            "change": 0.05,
        },
    ]
    assert data["trend"] == {"direction": "worsening", "slope_per_month": 0.275}
    assert (data["production"], data["flag_above"]) == (["production", "prod"], 0.5)

    code, out, _ = run(capsys, "--db", str(known), "ratio")
    assert code == 0
    assert out.splitlines() == [
        "non-production : production cost per month, all time",
        "healthy teams run 1:3 to 1:5; ! marks months worse than 1:2",
        "",
        "month    non-prod $  prod $  ratio  change",
        "2026-09     1.0000   4.0000  1:4.0",
        "2026-10     1.5000   2.0000  1:1.3   +0.50  ! worse than 1:2",
        "2026-11     0.1132*  0.1415  1:1.2   +0.05  ! worse than 1:2",
        "",
        "* 1 call(s) with no known price are not in the cost (scripts/spend unpriced)",
        "trend: worsening (+0.275 non-prod $ per prod $ per month)",
    ]
    # a team's own ratio: only September's and October's rows have no team
    data = report(capsys, "--db", str(known), "ratio", "--team", "platform")
    assert [(m["month"], m["ratio"], m["flagged"]) for m in data["months"]] == [("2026-11", 0.2445, False)]
    assert data["trend"] == {"direction": None, "slope_per_month": None}


def test_ratio_without_production_is_flagged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "dev-only.duckdb"
    write(path, [call(1, "d", "gpt-4o-mini", U_MINI)])
    (month,) = report(capsys, "--db", str(path), "ratio")["months"]
    assert (month["ratio"], month["one_to"], month["flagged"]) == (None, None, True)  # no ratio: no 1:x
    code, out, _ = run(capsys, "--db", str(path), "ratio")
    assert code == 0 and "1:0.0" not in out


def test_ratio_trend_and_change_count_calendar_months(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """January 0.20, no calls February to June, July without production cost, August 0.27:
    +0.01 per calendar month ("steady"), and August has no change (July has no ratio)."""
    costs = [(1, "production", "10"), (1, "development", "2"), (7, "development", "1")]
    costs += [(8, "production", "10"), (8, "development", "2.7")]
    records = []
    for n, (month, env, cost) in enumerate(costs):
        record = call(n, "s", "gpt-4o", U_MINI, environment=env, ts=datetime(2026, month, 10, tzinfo=UTC))
        record.cost_usd, record.price_status, record.price_model = Decimal(cost), "priced", "gpt-4o"
        records.append(record)
    path = tmp_path / "gaps.duckdb"
    write(path, records)
    data = report(capsys, "--db", str(path), "ratio")
    assert [(m["month"], m["ratio"], m["change"]) for m in data["months"]] == [
        ("2026-01", 0.2, None),
        ("2026-07", None, None),
        ("2026-08", 0.27, None),
    ]
    assert data["trend"] == {"direction": "steady", "slope_per_month": 0.01}


# -- models --------------------------------------------------------------------------------------------


def test_models_week(known: Path, policies: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--db", str(known), "models", "--week", "--policies", str(policies), "--now", "2026-11-05T12:00")
    data = report(capsys, *args)
    assert data["range"] == {"from": "2026-11-02T00:00:00+00:00", "to": "2026-11-05T12:00:00+00:00"}
    assert data["premium_usd_per_mtok"] == "5"
    got = [
        (
            r["environment"],
            r["user"],
            r["model"],
            r["calls"],
            r["cost_usd"],
            r["premium_reasons"],
            r["flagged"],
        )
        for r in data["rows"]
    ]
    assert got == [
        ("development", "alice", "gpt-4o", 1, "0.0325", ["not_allowed", "price"], True),
        ("development", "alice", "gpt-4o-mini", 1, "0.0021", [], False),
        ("development", "alice", "gpt-9-imaginary", 1, None, ["not_allowed"], True),
        ("development", "bob", "claude-sonnet-4-5", 1, "0.0765", ["not_allowed", "price"], True),
        ("development", "bob", "gpt-4o", 1, "0", ["not_allowed", "price"], True),
        ("staging", "ci-bot", "gpt-4o-mini", 1, "0.0021", [], False),
        ("production", "svc", "claude-sonnet-4-5", 1, "0.0765", ["price"], False),
        ("production", "svc", "gpt-4o", 2, "0.065", ["price"], False),
    ]
    assert {r["week"] for r in data["rows"]} == {"2026-11-02"}
    bob_blocked = data["rows"][4]
    assert (bob_blocked["refused_calls"], bob_blocked["output_usd_per_mtok"]) == (1, "10")
    assert data["flagged"] == {
        "calls": 4,
        "cost_usd": "0.109",
        "by_user": [
            {"user": "bob", "calls": 2, "cost_usd": "0.0765"},
            {"user": "alice", "calls": 2, "cost_usd": "0.0325"},
        ],
    }

    flagged_only = report(capsys, *args, "--flagged")
    assert flagged_only["rows"] == [r for r in data["rows"] if r["flagged"]]
    assert flagged_only["flagged"] == data["flagged"]

    # a higher bar: only the allowlist makes a model premium
    data = report(capsys, *args, "--premium-above", "20")
    assert [(r["model"], r["premium_reasons"]) for r in data["rows"]][5:] == [
        ("gpt-4o-mini", []),
        ("claude-sonnet-4-5", []),
        ("gpt-4o", []),
    ]

    code, out, _ = run(capsys, *args)
    assert code == 0
    assert out.splitlines() == [
        "model use by week, environment and user, 2026-11-02 .. 2026-11-05 12:00 UTC",
        "premium: not in the environment's allowlist, or output over $5 per 1M tokens",
        "",
        "environment  user    model              calls    cost $  premium",
        "week of 2026-11-02",
        "development  alice   gpt-4o                 1  0.032500  ! not allowed, $10/M",
        "development  alice   gpt-4o-mini            1  0.002100",
        "development  alice   gpt-9-imaginary        1         ?  ! not allowed",
        "development  bob     claude-sonnet-4-5      1  0.076500  ! not allowed, $15/M",
        "development  bob     gpt-4o                 1  0.000000  ! not allowed, $10/M",
        "staging      ci-bot  gpt-4o-mini            1  0.002100",
        "production   svc     claude-sonnet-4-5      1  0.076500  $15/M",
        "production   svc     gpt-4o                 2  0.065000  $10/M",
        "",
        "premium calls outside production: 4, $0.109000",
        "  bob: 2 call(s), $0.076500",
        "  alice: 2 call(s), $0.032500",
    ]


def test_models_several_weeks_and_csv(
    known: Path, policies: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("--db", str(known), "models", "--policies", str(policies), "--now", "2026-11-05T12:00")
    data = report(capsys, *args, "--weeks", "8")
    assert data["range"]["from"] == "2026-09-14T00:00:00+00:00"
    assert [r["week"] for r in data["rows"]] == ["2026-11-02"] * 8 + ["2026-10-12"] * 2 + ["2026-09-14"] * 2
    code, out, _ = run(capsys, *args, "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 8
    assert rows[0]["premium_reasons"] == "not_allowed;price"
    assert [r["flagged"] for r in rows] == [
        "true",
        "false",
        "true",
        "true",
        "true",
        "false",
        "false",
        "false",
    ]


@pytest.fixture
def no_policy_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No policies.yaml at its default place (the checkout's), none named by option or variable."""
    monkeypatch.delenv("TOKOMETER_POLICIES", raising=False)
    monkeypatch.setattr("addon.paths.default_policies_path", lambda: tmp_path / "absent.yaml")


@pytest.mark.usefixtures("no_policy_file")
def test_models_without_policies_uses_price_only(known: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = report(capsys, "--db", str(known), "models", "--now", "2026-11-05T12:00")
    assert data["premium_usd_per_mtok"] is None
    assert not any(r["premium"] for r in data["rows"])
    assert data["flagged"] == {"calls": 0, "cost_usd": None, "by_user": []}


# -- savings ------------------------------------------------------------------------------------------


def test_savings(known: Path, policies: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = report(capsys, "--db", str(known), "savings", "--policies", str(policies), *NOV)
    envs = {e["environment"]: e for e in data["environments"]}
    assert list(envs) == ["development", "staging", "production"]
    dev = envs.pop("development")
    models = dev.pop("models")
    assert dev.pop("environment") == "development"
    assert dev == {
        "calls": 3,
        "cost_usd": "0.1111",
        "whatif_cost_usd": "0.02955",  # 0.0021 + 0.00195 (gpt-4o as mini) + 0.0255 (sonnet as haiku)
        "savings_usd": "0.08155",
        "savings_share": 0.734,
        "downgraded_calls": 2,
        "blocked_calls": 0,
        "blocked_cost_usd": "0",
        "unpriced_calls": 1,
    }
    assert models == [
        {
            "model": "claude-sonnet-4-5",
            "provider": "anthropic",
            "outcome": "downgrade",
            "target": "claude-haiku-4-5",
            "calls": 1,
            "cost_usd": "0.0765",
            "whatif_cost_usd": "0.0255",
            "savings_usd": "0.051",
            "unpriced_calls": 0,
            "target_unpriced": False,
        },
        {
            "model": "gpt-4o",
            "provider": "openai",
            "outcome": "downgrade",
            "target": "gpt-4o-mini",
            "calls": 1,
            "cost_usd": "0.0325",
            "whatif_cost_usd": "0.00195",
            "savings_usd": "0.03055",
            "unpriced_calls": 0,
            "target_unpriced": False,
        },
        {
            "model": "gpt-4o-mini",
            "provider": "openai",
            "outcome": "keep",
            "target": "gpt-4o-mini",
            "calls": 1,
            "cost_usd": "0.0021",
            "whatif_cost_usd": "0.0021",
            "savings_usd": "0",
            "unpriced_calls": 0,
            "target_unpriced": False,
        },
        {
            "model": "gpt-9-imaginary",
            "provider": "openai",
            "outcome": "block",
            "target": None,
            "calls": 0,
            "cost_usd": "0",
            "whatif_cost_usd": "0",
            "savings_usd": "0",
            "unpriced_calls": 1,
            "target_unpriced": False,
        },
    ]
    assert envs["production"]["savings_usd"] == "0" and envs["production"]["cost_usd"] == "0.1415"
    assert envs["staging"]["savings_usd"] == "0"
    assert data["total"] == {
        "calls": 7,
        "cost_usd": "0.2547",
        "whatif_cost_usd": "0.17315",
        "savings_usd": "0.08155",
        "savings_share": 0.3202,
        "downgraded_calls": 2,
        "blocked_calls": 0,
        "blocked_cost_usd": "0",
        "unpriced_calls": 1,
    }

    code, out, _ = run(capsys, "--db", str(known), "savings", "--policies", str(policies), *NOV)
    assert code == 0
    assert out.splitlines() == [
        "what-if: the same token-priced calls with each environment's downgrade targets",
        "2026-11-01 .. 2026-11-07 UTC",
        "",
        "environment / model changed             calls   cost $ what-if $  saved $ saved",
        "development                                 3 0.111100  0.029550 0.081550 73.4%",
        "  claude-sonnet-4-5 -> claude-haiku-4-5     1 0.076500  0.025500 0.051000 66.7%",
        "  gpt-4o -> gpt-4o-mini                     1 0.032500  0.001950 0.030550 94.0%",
        "staging                                     1 0.002100  0.002100 0.000000  0.0%",
        "production                                  3 0.141500  0.141500 0.000000  0.0%",
        "-" * 79,
        "total                                       7 0.254700  0.173150 0.081550 32.0%",
        "",
        "1 call(s) without a known price are left out",
        "approximate: re-priced per month and model, tiered prices per average call",
    ]


def test_savings_blocked_models_keep_their_cost(
    known: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "block.yaml"
    policy.write_text(
        "environments:\n  production:\n    models: {allow: [gpt-4o-mini], on_disallowed: block}\n"
    )
    data = report(
        capsys, "--db", str(known), "savings", "--policies", str(policy), "--env", "production", *NOV
    )
    assert data["total"] == {
        "calls": 3,
        "cost_usd": "0.1415",
        "whatif_cost_usd": "0.1415",
        "savings_usd": "0",
        "savings_share": 0.0,
        "downgraded_calls": 0,
        "blocked_calls": 3,
        "blocked_cost_usd": "0.1415",
        "unpriced_calls": 0,
    }


def test_reprice_is_exact_for_flat_prices_and_per_call_for_tiers() -> None:
    when = datetime(2026, 11, 3)
    pricer = Pricer()
    # 3 calls, 10,000,001 input and 2 output tokens in all: the remainder goes on one call
    flat = price("openai", "gpt-4o-mini", Usage(input_tokens=10_000_001, output_tokens=2), when).cost_usd
    assert _reprice(pricer, "openai", "gpt-4o-mini", 3, [10_000_001, 0, 0, 2], when) == flat
    # three 100k-input calls: the >200k tier of claude-sonnet-4-5 must not apply to their sum
    assert _reprice(pricer, "anthropic", "claude-sonnet-4-5", 3, [300_000, 0, 0, 0], when) == Decimal("0.9")
    assert price("anthropic", "claude-sonnet-4-5", Usage(input_tokens=300_000), when).cost_usd == Decimal(
        "1.8"
    )
    assert _reprice(pricer, "openai", "gpt-9-imaginary", 2, [10, 0, 0, 1], when) is None


@pytest.mark.parametrize(
    ("provider", "extra", "whatif"),
    [
        # policies.yaml prices the target as the proxy would: $0.10 / $0.40 per 1M, not the list $0.15 / $0.60
        ("openai", "prices:\n  gpt-4o-mini: {input: 0.10, output: 0.40}\n", "0.5"),
        # a custom host priced under openai (pricing_provider): re-priced there, not dropped as unknown
        (
            "gw",
            "providers:\n  gw: {url: 'https://llm.example', api: openai, pricing_provider: openai}\n",
            "0.75",
        ),
    ],
)
def test_savings_prices_the_downgrade_target_as_the_proxy_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], provider: str, extra: str, whatif: str
) -> None:
    db = tmp_path / "spend.duckdb"
    record = CallRecord(
        id="one", ts=datetime(2026, 11, 3, 12, tzinfo=UTC), session_id="s", environment="development",
        provider=provider, host="h", path="/v1/chat/completions", api_flavor="chat", model_sent="gpt-4o",
        status_code=200,
    )  # fmt: skip
    record.set_usage(Usage(input_tokens=1_000_000, output_tokens=1_000_000))
    record.cost_usd, record.price_status = Decimal("12.5"), "priced"  # gpt-4o: $2.50 + $10
    store = Store(db, "s", pricer=lambda r: None)
    store.start()
    store.submit(record)
    store.close()
    policy = tmp_path / "policies.yaml"
    policy.write_text(
        "environments:\n  development:\n"
        "    models: {allow: [gpt-4o-mini], on_disallowed: downgrade, downgrade: {gpt-4o: gpt-4o-mini}}\n"
        + extra
    )
    data = report(capsys, "--db", str(db), "savings", "--policies", str(policy), *NOV)
    assert (data["total"]["cost_usd"], data["total"]["whatif_cost_usd"]) == ("12.5", whatif)
    assert data["total"]["unpriced_calls"] == 0


# -- budgets ------------------------------------------------------------------------------------------


def test_budgets(known: Path, policies: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--db", str(known), "budgets", "--policies", str(policies), "--now", "2026-11-05T12:00")
    data = report(capsys, *args)
    assert (data["policies"], data["now"]) == (str(policies), "2026-11-05T12:00:00+00:00")
    assert data["budgets"] == [
        {
            "scope": "environment",
            "name": "development",
            "usd": "0.8",
            "period": "month",
            "period_start": "2026-11-01T00:00:00+00:00",
            "period_end": "2026-12-01T00:00:00+00:00",
            "calls": 5,
            "spent_usd": "0.1111",
            "used": 0.1389,
            "projected_usd": "0.7406666667",  # 0.1111 * 30 days / 4.5 days
            "projected_used": 0.9258,
            "alert_at": [0.1, 0.5],
            "status": "alert",
            "unpriced_calls": 1,  # counts nothing in the 0.1111
        },
        {
            "scope": "key",
            "name": "ci-openai",
            "usd": "0.004",
            "period": "day",
            "period_start": "2026-11-05T00:00:00+00:00",
            "period_end": "2026-11-06T00:00:00+00:00",
            "calls": 1,
            "spent_usd": "0.0021",
            "used": 0.525,
            "projected_usd": "0.0042",
            "projected_used": 1.05,
            "alert_at": [],
            "status": "projected_over",
            "unpriced_calls": 0,
        },
        {
            "scope": "user",
            "name": "bob",
            "usd": "0.05",
            "period": "week",
            "period_start": "2026-11-02T00:00:00+00:00",
            "period_end": "2026-11-09T00:00:00+00:00",
            "calls": 2,
            "spent_usd": "0.0765",
            "used": 1.53,
            "projected_usd": "0.153",
            "projected_used": 3.06,
            "alert_at": [],
            "status": "over",
            "unpriced_calls": 0,
        },
    ]
    code, out, _ = run(capsys, *args)
    assert code == 0
    assert out.splitlines() == [
        "budgets at 2026-11-05 12:00 UTC",
        f"policies: {policies}",
        "",
        "      name         cap $        spent $  used  projected $  proj.  status",
        "env   development  0.8/month  0.111100*   14%     0.740667    93%  alert",
        "key   ci-openai    0.004/day  0.002100    53%     0.004200   105%  will exceed",
        "user  bob          0.05/week  0.076500   153%     0.153000   306%  ! spent",
        "",
        "* env development: 1 call(s) with no known price count nothing",
        "  (scripts/spend unpriced lists them; policies.yaml prices: gives a price)",
    ]

    code, out, _ = run(capsys, *args, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["name"], r["spent_usd"], r["status"], r["alert_at"]) for r in rows] == [
        ("development", "0.1111", "alert", "0.1;0.5"),
        ("ci-openai", "0.0021", "projected_over", ""),
        ("bob", "0.0765", "over", ""),
    ]


def test_budgets_early_in_a_period_project_from_one_hour(
    known: Path, policies: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = report(
        capsys, "--db", str(known), "budgets", "--policies", str(policies), "--now", "2026-11-05T00:06"
    )
    key = data["budgets"][1]
    # 6 minutes into the day, the burn rate is taken over 1 hour: 0 spent so far today
    assert (key["spent_usd"], key["projected_usd"], key["status"]) == ("0", "0", "ok")


@pytest.mark.usefixtures("no_policy_file")
def test_budgets_without_a_policy_file(known: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = report(capsys, "--db", str(known), "budgets")
    assert (data["policies"], data["budgets"]) == (None, [])
    code, out, _ = run(capsys, "--db", str(known), "budgets")
    assert (code, out.splitlines()[-2:]) == (0, ["policies: no policy file", "No budgets are set."])


def test_invalid_policy_file(known: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "policies.yaml"
    bad.write_text("environments:\n  development:\n    budget: {usd: -1, period: month}\n")
    code, out, err = run(capsys, "--db", str(known), "budgets", "--policies", str(bad))
    assert (code, out) == (1, "")
    assert err.startswith("spend: policies: policies.yaml:3: ")


def test_policies_path_follows_the_environment(
    known: Path, policies: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOKOMETER_POLICIES", str(policies))
    assert resolve_policies_path() == policies
    assert resolve_policies_path("~/x.yaml") == Path("~/x.yaml").expanduser()
    data = report(capsys, "--db", str(known), "budgets", "--now", "2026-11-05T12:00")
    assert len(data["budgets"]) == 3
    monkeypatch.delenv("TOKOMETER_POLICIES")
    assert resolve_policies_path() == default_policies_path() == ROOT / "policies.yaml"


# -- charts -----------------------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n"


def test_charts(known: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    daily = tmp_path / "daily.png"
    code, out, err = run(capsys, "--db", str(known), "by", "day", "--chart", str(daily), "--json")
    assert code == 0 and json.loads(out)["dimension"] == "day"
    assert err == f"spend: chart written to {daily}\n"
    trend = tmp_path / "ratio.png"
    assert run(capsys, "--db", str(known), "ratio", "--chart", str(trend))[0] == 0
    for path in (daily, trend):
        data = path.read_bytes()
        assert data[:8] == PNG and len(data) > 10_000


def test_chart_needs_a_time_dimension(
    known: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "--db", str(known), "by", "env", "--chart", str(tmp_path / "x.png"))
    assert code == 2 and "by day|week|month" in err
    code, _, err = run(capsys, "--db", str(known), "summary", "--chart", str(tmp_path / "x.png"))
    assert code == 2 and "unrecognized arguments: --chart" in err
    assert not (tmp_path / "x.png").exists()


# -- arguments ------------------------------------------------------------------------------------------


def test_bad_arguments(known: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args, message in (
        (["by", "env", "--since", "7d", "--from", "2026-11-01"], "use --since or --from/--to, not both"),
        (["by", "env", "--since", "7y"], "'7y' is not a duration like 7d, 24h, 2w or 30m"),
        (["by", "env", "--from", "yesterday"], "'yesterday' is not a date (YYYY-MM-DD) or ISO time"),
        (["by", "env", "--from", "2026-11-05", "--to", "2026-11-01"], "--to must be after --from"),
        (["by", "colour"], "invalid choice: 'colour'"),
        (["models", "--week", "--since", "7d"], "use --week/--weeks or --since/--from/--to, not both"),
        (["session", "a", "--session", "b"], "give the session id once"),
        (["ratio", "--env", "production"], "unrecognized arguments: --env"),
    ):
        code, out, err = run(capsys, "--db", str(known), *args)
        assert (code, out) == (2, ""), args
        assert message in err, (args, err)


def test_since_and_time_parsing() -> None:
    assert since_delta("30m") == timedelta(minutes=30)
    assert since_delta(" 24H ") == timedelta(hours=24)
    assert since_delta("2w") == timedelta(weeks=2)
    with pytest.raises(ValueError):
        since_delta("d")


# -- rendering helpers ----------------------------------------------------------------------------------


def test_table_shrinks_the_widest_name_column() -> None:
    columns = [Column("a", right=False, shrink=True), Column("b", right=False, shrink=True), Column("n")]
    rows = [["x" * 50, "y" * 40, "1"]]
    lines = table(columns, rows)
    assert [len(line) for line in lines] == [80, 80]
    assert lines[1] == "x" * 37 + "…" + " " + "y" * 38 + "…" + " 1"
    assert table([Column("name", right=False), Column("n")], [["ab", "1"]], ["total", "10"]) == [
        "name    n",
        "ab      1",
        "---------",
        "total  10",
    ]


def test_cell_formats() -> None:
    assert [count(v) for v in (0, 999_999, 1_234_567, 12_345_678, 999_999_999, 2_000_000_000, None)] == [
        "0", "999,999", "1.23M", "12.3M", "1000M", "2.00B", "-",
    ]  # fmt: skip
    assert money_column(["0.5", "0.000123", None]) == ["0.500000", "0.000123", "?"]
    assert money_column(["12.5", "0.1"]) == ["12.5000", "0.1000"]
    assert money_column(["1234.5", "3"]) == ["1,234.50", "3.00"]


# -- empty, missing, and read while a writer flushes ----------------------------------------------

REPORTS = (
    ["session"],
    ["sessions"],
    ["summary"],
    ["by", "env"],
    ["by", "day"],
    ["ratio"],
    ["models"],
    ["savings"],
    ["budgets"],
)


def empty_parts(data: dict[str, Any]) -> dict[str, Any]:
    """What an empty report must show, by report."""
    name = data["report"]
    if name == "session":
        return {
            "session": data["session"],
            "by_model": data["by_model"],
            "by_environment": data["by_environment"],
        }
    if name in ("by", "summary", "savings"):
        return {"rows": data.get("rows", data.get("environments")), "calls": data["total"]["calls"]}
    if name == "models":
        return {"rows": data["rows"], "calls": data["flagged"]["calls"]}
    if name == "ratio":
        return {"rows": data["months"], "calls": 0}
    if name == "sessions":
        return {"rows": data["sessions"], "calls": 0}
    assert name == "budgets"
    return {"rows": [(b["spent_usd"], b["calls"], b["status"]) for b in data["budgets"]], "calls": 0}


@pytest.mark.parametrize("kind", ["no tables", "no rows"])
def test_empty_database(
    kind: str, tmp_path: Path, policies: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "spend.duckdb"
    con = duckdb.connect(str(path))
    if kind == "no rows":
        migrate(con)
    con.close()
    for args in REPORTS:
        policy = ["--policies", str(policies)] if args[0] in ("models", "savings", "budgets") else []
        now = [] if args[0] in ("session", "sessions") else ["--now", "2026-11-05T12:00"]
        common = ["--db", str(path), *args, *policy, *now]
        for fmt in ("table", "csv"):
            code, out, err = run(capsys, *common, "--format", fmt)
            assert (code, err) == (0, ""), (args, fmt)
            lines = 4 if args[0] == "budgets" else 1  # csv: the header, and the budgets
            assert out.endswith("\n") and (fmt == "table" or len(out.splitlines()) == lines), (args, out)
        expected: dict[str, Any] = {"rows": [], "calls": 0}
        if args[0] == "session":
            expected = {"session": None, "by_model": [], "by_environment": []}
        elif args[0] == "budgets":
            expected = {"rows": [("0", 0, "ok")] * 3, "calls": 0}
        assert empty_parts(report(capsys, *common)) == expected, args
    code, out, _ = run(capsys, "--db", str(path), "by", "env")
    assert out.splitlines()[-1] == "No calls in this range."
    code, out, _ = run(capsys, "--db", str(path), "session", "--format", "csv")
    assert out == (
        "group,name,calls,refused_calls,input_tokens,cache_read_tokens,cache_write_tokens,output_tokens,"
        "reasoning_tokens,unpriced_calls,no_usage_calls,cost_usd\n"
    )


@pytest.mark.usefixtures("no_policy_file")
def test_missing_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nothing" / "spend.duckdb"
    for args in REPORTS:
        code, out, err = run(capsys, "--db", str(missing), *args, "--json")
        assert (code, out) == (1, ""), args
        assert err == (
            f"spend: no database at {missing}\n"
            "It is created by the first metered call through scripts/proxy.\n"
        )
    assert not missing.parent.exists()  # a report never creates anything


def test_missing_database_as_a_process(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TOKOMETER_DB"}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    result = spend("summary", env=env)
    assert (result.returncode, result.stdout) == (1, "")
    assert f"no database at {tmp_path / 'xdg' / 'tokometer' / 'spend.duckdb'}\n" in result.stderr


def test_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.delenv("TOKOMETER_DB", raising=False)
    assert data_dir() == tmp_path / "home" / ".local" / "share" / "tokometer"
    assert resolve_db_path() == tmp_path / "home" / ".local" / "share" / "tokometer" / "spend.duckdb"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert resolve_db_path("") == tmp_path / "xdg" / "tokometer" / "spend.duckdb"
    monkeypatch.setenv("TOKOMETER_DB", "~/env.duckdb")
    assert resolve_db_path() == tmp_path / "home" / "env.duckdb"
    assert resolve_db_path("~/opt.duckdb") == tmp_path / "home" / "opt.duckdb"


WRITER = textwrap.dedent(
    """
    import sys, time
    from datetime import UTC, datetime
    from pathlib import Path
    from addon.record import CallRecord
    from addon.store import Store
    from addon.usage import Usage

    db, n = Path(sys.argv[1]), int(sys.argv[2])
    store = Store(db, "writer", flush_interval=0.05)
    store.start()
    print("started", flush=True)
    for i in range(n):
        record = CallRecord(
            id=f"w-{i}", ts=datetime.now(UTC), session_id="writer", environment="development",
            provider="openai", host="api.openai.com", path="/v1/chat/completions", api_flavor="chat",
            model_sent="gpt-4o-mini", status_code=200,
        )
        record.set_usage(Usage(input_tokens=10_000, output_tokens=1_000))
        store.submit(record)
        time.sleep(0.005)
    store.close()
    print("stored", store.stats.stored, flush=True)
    """
)


def test_reports_while_a_writer_flushes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "spend.duckdb"
    n = 400
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(n)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == "started\n"
        seen: list[int] = []
        while writer.poll() is None:
            data = report(capsys, "--db", str(path), "by", "env")
            seen.append(data["total"]["calls"])
            assert report(capsys, "--db", str(path), "session", "writer")["session"]["session_id"] == "writer"
        assert writer.stdout.read() == f"stored {n}\n"
        assert writer.wait() == 0
    finally:
        writer.kill()
        writer.wait()
    assert len(seen) >= 5, seen  # the reports ran while the writer wrote
    assert seen == sorted(seen) and 0 < seen[len(seen) // 2] < n
    final = report(capsys, "--db", str(path), "by", "env")["total"]
    assert (final["calls"], final["cost_usd"]) == (n, str(Decimal("0.0021") * n).rstrip("0"))


def test_unpriced_lists_calls_no_price_list_knows(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = report(capsys, "unpriced", "--db", str(db))
    assert data["report"] == "unpriced"
    assert [
        (r["provider"], r["model"], r["price_status"], r["calls"], r["input_tokens"]) for r in data["rows"]
    ] == [("openai", "gpt-9-imaginary", "unknown_model", 1, 100)]
    code, out, _ = run(capsys, "unpriced", "--db", str(db))
    assert code == 0
    assert "gpt-9-imaginary" in out and "unknown_model" in out
    assert '  "openai/gpt-9-imaginary": {input: 0.50, cached_input: 0.05, output: 1.50}' in out
    assert max(len(line) for line in out.splitlines()) <= 80
    code, out, _ = run(capsys, "unpriced", "--db", str(db), "--format", "csv")
    assert (
        out.splitlines()[0] == "provider,model,price_status,calls,input_tokens,output_tokens,first_at,last_at"
    )


def one_call_database(tmp_path: Path, model: str, usage: Usage, *, subscription: bool = False) -> Path:
    """A database holding one development call on 3 Nov 2026, priced by genai-prices (or a plan's)."""
    db = tmp_path / "spend.duckdb"
    record = CallRecord(
        id="one", ts=datetime(2026, 11, 3, 12, tzinfo=UTC), session_id="s", environment="development",
        provider="openai", host="h", path="/v1/chat/completions", api_flavor="chat", model_sent=model,
        status_code=200,
    )  # fmt: skip
    record.set_usage(usage)
    if subscription:
        record.cost_usd, record.price_status = Decimal(0), "subscription"
    store = Store(db, "s")
    store.start()
    store.submit(record)
    store.close()
    return db


def test_savings_with_a_target_without_a_price_keeps_the_calls_and_claims_no_saving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = one_call_database(tmp_path, "gpt-4o", Usage(input_tokens=1_000_000, output_tokens=1_000_000))
    policy = tmp_path / "policies.yaml"
    policy.write_text(
        "environments:\n  development:\n"
        "    models: {allow: [my-local-model], on_disallowed: downgrade,\n"
        "             downgrade: {gpt-4o: my-local-model}}\n"
    )
    data = report(capsys, "--db", str(db), "savings", "--policies", str(policy), *NOV)
    assert (data["total"]["calls"], data["total"]["cost_usd"], data["total"]["whatif_cost_usd"]) == (
        1,
        "12.5",
        "12.5",
    )
    assert data["total"]["unpriced_calls"] == 0
    [model] = data["environments"][0]["models"]
    assert (model["target"], model["target_unpriced"], model["savings_usd"]) == ("my-local-model", True, "0")


def test_savings_leave_out_calls_a_subscription_plan_paid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plan's call cost $0: re-pricing it at the downgrade target would claim a negative saving."""
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    db = one_call_database(tmp_path, "gpt-4o", usage, subscription=True)
    policy = tmp_path / "policies.yaml"
    policy.write_text(
        "environments:\n  development:\n"
        "    models: {allow: [gpt-4o-mini], on_disallowed: downgrade, downgrade: {gpt-4o: gpt-4o-mini}}\n"
    )
    data = report(capsys, "--db", str(db), "savings", "--policies", str(policy), *NOV)
    assert (data["total"]["calls"], data["total"]["savings_usd"], data["environments"]) == (0, "0", [])
    summary = report(capsys, "--db", str(db), "summary", *NOV)
    assert (summary["total"]["no_usage_calls"], summary["total"]["unpriced_calls"]) == (0, 0)


def test_savings_keep_the_priced_calls_of_a_group_that_also_has_unpriced_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A self-hosted model first unpriced, then priced through policies.yaml ``prices:`` (as
    ``spend unpriced`` advises), in one month: the priced call is re-priced at the target and
    only the unpriced one is left out (``by env`` counts them the same way)."""
    db = tmp_path / "spend.duckdb"
    usage = Usage(input_tokens=1000, output_tokens=500)  # $0.0015 at $1/M, $0.00015 at $0.10/M
    priced = call(2, "s", "llama-big", usage, ts=datetime(2026, 11, 20, tzinfo=UTC))
    priced.cost_usd, priced.price_status, priced.price_model = Decimal("0.0015"), "priced", "llama-big"
    write(db, [call(1, "s", "llama-big", usage, ts=datetime(2026, 11, 2, tzinfo=UTC)), priced])
    policy = tmp_path / "policies.yaml"
    policy.write_text(
        "prices:\n  llama-big: {input: 1, output: 1}\n  llama-small: {input: 0.1, output: 0.1}\n"
        "environments:\n  development:\n"
        "    models: {allow: [llama-small], downgrade: {llama-big: llama-small}}\n"
    )
    by_env = report(capsys, "--db", str(db), "by", "env")["total"]
    assert (by_env["calls"], by_env["unpriced_calls"], by_env["cost_usd"]) == (2, 1, "0.0015")
    total = report(capsys, "--db", str(db), "savings", "--policies", str(policy))["total"]
    assert (total["calls"], total["unpriced_calls"], total["downgraded_calls"]) == (1, 1, 1)
    money = (total["cost_usd"], total["whatif_cost_usd"], total["savings_usd"])
    assert money == ("0.0015", "0.00015", "0.00135")


def test_a_policy_file_named_but_missing_is_an_error_not_no_budgets(
    known: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A typo in --policies (or $TOKOMETER_POLICIES) must not read as "No budgets are set."."""
    typo = tmp_path / "polices.yaml"
    for command in ("budgets", "models", "savings"):
        code, out, err = run(capsys, "--db", str(known), command, "--policies", str(typo))
        assert (code, out) == (1, ""), command
        assert err == f"spend: policies: {typo}: no such file\n"
    monkeypatch.setenv("TOKOMETER_POLICIES", str(typo))
    code, _, err = run(capsys, "--db", str(known), "budgets")
    assert code == 1 and "no such file" in err
    monkeypatch.delenv("TOKOMETER_POLICIES")
    monkeypatch.setattr("addon.paths.default_policies_path", lambda: tmp_path / "absent.yaml")
    code, out, _ = run(capsys, "--db", str(known), "budgets")  # no policy file at its default place
    assert code == 0 and "No budgets are set." in out


def test_bad_input_is_a_usage_error_not_a_traceback(
    known: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for args, message in (
        (("summary", "--since", "99999999d"), "reaches past the year 1"),
        (("models", "--premium-above", "nan"), "is not a price"),
        (("models", "--premium-above", "-1"), "is not a price"),
        (("sessions", "--now", "2026-11-05T12:00"), "--now does not apply to sessions"),
        (("session", "--now", "2026-11-05T12:00"), "--now does not apply to session"),
    ):
        code, _, err = run(capsys, "--db", str(known), *args)
        assert code == 2 and message in err, (args, err)
    # a database under a path that is not UTF-8: DuckDB cannot open it, and says so once
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/n\xffu"))
    odd.mkdir()
    (odd / "spend.duckdb").write_bytes(known.read_bytes())
    code, _, err = run(capsys, "--db", str(odd / "spend.duckdb"), "summary")
    assert code == 1 and "DuckDB needs a UTF-8 path" in err and "Traceback" not in err


def test_a_compact_date_in_to_is_a_whole_day(known: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dashed = report(capsys, "--db", str(known), "by", "day", "--from", "2026-11-03", "--to", "2026-11-03")
    compact = report(capsys, "--db", str(known), "by", "day", "--from", "20261103", "--to", "20261103")
    assert compact["rows"] == dashed["rows"] and dashed["rows"]


def test_control_characters_from_clients_never_reach_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = one_call_database(tmp_path, "gpt\x1b]0;owned\x07-4o", Usage(input_tokens=10, output_tokens=1))
    for args in (("by", "model", *NOV), ("session", "s")):
        code, out, _ = run(capsys, "--db", str(db), *args)
        assert code == 0 and "\x1b" not in out and "\x07" not in out and "gpt?]0;owned?-4o" in out


def _grounded_pro_call(db: Path, **fields: object) -> CallRecord:
    """One gemini-2.5-pro call, 10k in / 1k out with one grounded prompt: $0.0225 + $0.035."""
    usage = Usage(input_tokens=10_000, output_tokens=1_000, web_searches=1)
    record = call(
        1, "s", "gemini-2.5-pro", usage, provider="google", host="generativelanguage.googleapis.com",
        path="/v1beta/models/gemini-2.5-pro:generateContent", api_flavor="generate",
        ts=datetime(2026, 11, 3, 12, tzinfo=UTC), **fields,
    )  # fmt: skip
    write(db, [record])
    return record


def _pro_to_flash(tmp_path: Path) -> Path:
    policy = tmp_path / "policies.yaml"
    policy.write_text(
        "environments:\n  development:\n"
        "    models: {allow: [gemini-2.5-flash], on_disallowed: downgrade,\n"
        "             downgrade: {gemini-2.5-pro: gemini-2.5-flash}}\n"
    )
    return policy


def test_savings_keep_the_fees_and_tier_a_downgrade_still_pays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A downgraded call still pays its search fees, at its tier: gemini-2.5-pro -> flash with one
    grounded prompt ($0.035 either way) saves $0.017, not the $0.052 of its tokens alone; served
    flex, the tokens are halved on both sides (the fee is not)."""
    db = tmp_path / "spend.duckdb"
    record = _grounded_pro_call(db)
    assert record.cost_usd == Decimal("0.0575")
    policy = _pro_to_flash(tmp_path)
    assert main(["--db", str(db), "savings", "--policies", str(policy), "--format", "json"]) in (0, None)
    total = json.loads(capsys.readouterr().out)["total"]
    assert (total["cost_usd"], total["whatif_cost_usd"], total["savings_usd"]) == (
        "0.0575",
        "0.0405",
        "0.017",
    )

    flex_db = tmp_path / "flex.duckdb"
    flexed = _grounded_pro_call(flex_db, service_tier="flex")
    assert flexed.cost_usd == Decimal("0.01125") + Decimal("0.035")
    assert main(["--db", str(flex_db), "savings", "--policies", str(policy), "--format", "json"]) in (0, None)
    total = json.loads(capsys.readouterr().out)["total"]
    assert (total["whatif_cost_usd"], total["savings_usd"]) == ("0.03775", "0.0085")


def test_savings_read_a_database_an_older_proxy_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Columns a later migration adds may be missing (an older proxy still has the file): savings
    still answers, from what the file has."""
    db = tmp_path / "spend.duckdb"
    _grounded_pro_call(db)
    con = duckdb.connect(str(db))
    for name in ("inference_geo", "file_searches", "web_searches", "cache_write_1h_tokens", "service_tier"):
        con.execute(f"ALTER TABLE calls DROP COLUMN {name}")
    con.close()
    policy = _pro_to_flash(tmp_path)
    assert main(["--db", str(db), "savings", "--policies", str(policy), "--format", "json"]) in (0, None)
    total = json.loads(capsys.readouterr().out)["total"]
    assert (total["cost_usd"], total["whatif_cost_usd"]) == ("0.0575", "0.0055")  # no searches known


def test_reprice_keeps_every_per_call_amount_of_the_calls() -> None:
    """Re-pricing N calls from their sums equals pricing each call, with one-hour cache writes, web
    and file searches, a tier and Anthropic's US-only geo (prices are flat per token and per search)."""
    pricer = Pricer([])
    when = datetime(2026, 11, 3, 12, tzinfo=UTC)
    calls = [
        Usage(input_tokens=9_001, cache_read_tokens=1_000, cache_write_tokens=600, output_tokens=700,
              cache_write_1h_tokens=500, web_searches=2),
        Usage(input_tokens=4_000, cache_read_tokens=0, cache_write_tokens=300, output_tokens=50,
              cache_write_1h_tokens=100, web_searches=1),
        Usage(input_tokens=12_345, cache_read_tokens=2_000, cache_write_tokens=0, output_tokens=999),
    ]  # fmt: skip
    each = sum(
        pricer.price_usage("anthropic", ("claude-opus-4-6",), u, when, inference_geo="us").cost_usd
        for u in calls
    )
    sums = [
        sum(getattr(u, name) for u in calls)
        for name in (
            "input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens",
            "cache_write_1h_tokens", "web_searches", "file_searches",
        )
    ]  # fmt: skip
    assert _reprice(pricer, "anthropic", "claude-opus-4-6", 3, sums, when, inference_geo="us") == each
    searches = [Usage(input_tokens=1_000, output_tokens=100, file_searches=n) for n in (1, 2, 4)]
    each = sum(pricer.price_usage("openai", ("gpt-4.1",), u, when).cost_usd for u in searches)
    assert _reprice(pricer, "openai", "gpt-4.1", 3, [3_000, 0, 0, 300, 0, 0, 7], when) == each


def test_models_marks_a_cost_that_leaves_unpriced_calls_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A row of priced and unpriced calls (one model, one week) showed its partial sum unmarked."""
    path = tmp_path / "mixed.duckdb"
    monday = T0 + timedelta(days=2)
    priced = call(1, "s", "gpt-4o", Usage(input_tokens=1000, output_tokens=500), ts=monday)
    unpriced = call(2, "s", "gpt-4o", Usage(input_tokens=1000, output_tokens=500), ts=monday)
    unpriced.cost_usd, unpriced.price_status = None, "unknown_model"
    write(path, [priced, unpriced])
    args = ("--db", str(path), "models", "--week", "--now", "2026-11-05T12:00")
    data = report(capsys, *args)
    assert [(r["model"], r["calls"], r["unpriced_calls"]) for r in data["rows"]] == [("gpt-4o", 2, 1)]
    code, out, _ = run(capsys, *args)
    assert code == 0
    (row,) = [line for line in out.splitlines() if " gpt-4o " in line]
    assert "0.007500*" in row, row  # gpt-4o: 1,000 in, 500 out
    assert out.splitlines()[-1] == "* calls with no known price are not in the cost (scripts/spend unpriced)"


def test_by_key_reads_a_keys_history_under_its_current_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key named in keys: after its first calls: before, `spend by key` showed its earlier rows
    under the fingerprint and its later ones under the name, and `--key NAME` left the earlier out."""
    path = tmp_path / "spend.duckdb"
    fp, other = "3f9a0c11b2de", "0123456789ab"
    write(
        path,
        [
            call(1, "k", "gpt-4o-mini", U_MINI, key_fingerprint=fp),  # before it was named
            call(2, "k", "gpt-4o-mini", U_MINI, key_fingerprint=fp),
            call(3, "k", "gpt-4o-mini", U_MINI, key_fingerprint=fp, key_name="ci-openai"),
            call(4, "k", "gpt-4o-mini", U_MINI, key_fingerprint=other),  # never named
            call(5, "k", "gpt-4o-mini", U_MINI),  # no key seen
        ],
    )

    def keyed(*args: str) -> list[tuple[Any, int]]:
        data = report(capsys, "--db", str(path), "by", "key", *args)
        return [(r["key"], r["calls"]) for r in data["rows"]]

    assert keyed() == [("ci-openai", 3), (other, 1), (None, 1)]
    assert keyed("--key", "ci-openai") == [("ci-openai", 3)]
    assert keyed("--key", fp) == [("ci-openai", 3)]
    assert keyed("--key", other) == [(other, 1)]
    # a range that holds only the unnamed rows still shows the key's current name
    assert keyed("--to", (T0 + timedelta(seconds=3)).strftime("%Y-%m-%dT%H:%M:%S")) == [("ci-openai", 2)]


def test_reprice_keeps_the_audio_and_image_parts_of_the_calls() -> None:
    """Re-pricing N calls from their sums equals pricing each call when the counts have audio
    and image parts (cached audio among them), leftovers of the integer average included. Before:
    the parts were dropped and every token re-priced as text."""
    pricer = Pricer([])
    when = datetime(2026, 11, 3, 12, tzinfo=UTC)
    calls = [
        Usage(input_tokens=10_001, cache_read_tokens=3_001, output_tokens=5_003, input_audio_tokens=6_007,
              cache_audio_read_tokens=2_003, output_audio_tokens=4_001),
        Usage(input_tokens=7_000, cache_read_tokens=1_000, output_tokens=2_000, input_audio_tokens=5_000,
              cache_audio_read_tokens=1_000, output_audio_tokens=1_999),
        Usage(input_tokens=4_002, output_tokens=100, input_audio_tokens=4_002, output_audio_tokens=100),
    ]  # fmt: skip
    each = sum(pricer.price_usage("openai", ("gpt-audio",), u, when).cost_usd for u in calls)
    names = (
        "input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens",
        "cache_write_1h_tokens", "web_searches", "file_searches", "input_audio_tokens",
        "output_audio_tokens", "input_image_tokens", "output_image_tokens", "cache_audio_read_tokens",
    )  # fmt: skip
    sums = [sum(getattr(u, name) for u in calls) for name in names]
    assert _reprice(pricer, "openai", "gpt-audio", 3, sums, when) == each
    images = [
        Usage(input_tokens=1_001, output_tokens=4_161, input_image_tokens=501, output_image_tokens=4_160),
        Usage(input_tokens=300, output_tokens=1_057, input_image_tokens=0, output_image_tokens=1_056),
    ]
    each = sum(pricer.price_usage("openai", ("gpt-image-1",), u, when).cost_usd for u in images)
    sums = [sum(getattr(u, name) for u in images) for name in names]
    assert _reprice(pricer, "openai", "gpt-image-1", 2, sums, when) == each


def test_money_column_never_shows_a_non_zero_amount_as_zero() -> None:
    """One number of decimals per column, but an amount that rounds to zero there gets the
    decimals it needs (before: "0.0000" beside "1.0500" for a $0.000027 call)."""
    assert money_column(["0.000027", "1.05", "0", None]) == ["0.00003", "1.0500", "0.0000", "?"]
    assert money_column(["0.0000000001", "150"]) == ["0.0000000001", "150.00"]
    assert money_column(["0.000027", "0.5"]) == ["0.000027", "0.500000"]
