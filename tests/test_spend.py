"""scripts/spend (python -m addon.spend) as a subprocess, on a database built through Store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from addon.paths import data_dir, resolve_db_path
from addon.record import CallRecord
from addon.spend import render_session
from addon.store import Store
from addon.usage import Usage

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def call(n: int, session: str, model: str | None, usage: Usage | None, **kwargs: object) -> CallRecord:
    fields: dict[str, object] = {
        "id": f"{session}-{n}",
        "ts": T0 + timedelta(seconds=n),
        "session_id": session,
        "environment": "dev",
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


GPT = Usage(input_tokens=1000, cache_read_tokens=200, output_tokens=500)  # $0.00725
SONNET = Usage(  # $0.0357
    input_tokens=10_000,
    cache_read_tokens=4_000,
    cache_write_tokens=2_000,
    output_tokens=1_000,
    reasoning_tokens=300,
)


def fill(db: Path, session: str, records: list[CallRecord]) -> None:
    store = Store(db, session, flush_interval=3600, version="0.1.0")
    store.start()
    for record in records:
        store.submit(record)
    store.close()


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
            ),
            call(4, "new", "gpt-9-imaginary", Usage(input_tokens=100, output_tokens=50)),
            call(5, "new", "gpt-4o", None, status_code=429),  # an error: not billed
            call(6, "new", "gpt-4o", None, aborted=True),  # usage never came
        ],
    )
    return path


def spend(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "addon.spend", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )


def totals(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "calls": 0,
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


def test_json_latest_session(db: Path) -> None:
    result = spend("--db", str(db), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    session = report.pop("session")
    assert report == {
        "schema": 1,
        "db": str(db),
        "total": totals(
            calls=6,
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
            {
                "model": "claude-sonnet-4-5-20250929",
                **totals(
                    calls=1,
                    input_tokens=10_000,
                    cache_read_tokens=4_000,
                    cache_write_tokens=2_000,
                    output_tokens=1_000,
                    reasoning_tokens=300,
                    cost_usd="0.0357",
                ),
            },
            {
                "model": "gpt-4o",
                **totals(
                    calls=4,
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
    }
    assert session["session_id"] == "new"
    assert (session["pid"], session["version"]) == (os.getpid(), "0.1.0")
    assert session["started_at"].endswith("+00:00") and session["ended_at"] >= session["started_at"]


def test_json_chosen_session(db: Path) -> None:
    result = spend("--db", str(db), "session", "--session", "old", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["session"]["session_id"] == "old"
    assert report["total"] == totals(
        calls=1, input_tokens=1000, cache_read_tokens=200, output_tokens=500, cost_usd="0.00725"
    )


def test_unknown_session(db: Path) -> None:
    result = spend("--db", str(db), "--session", "nope")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"spend: no session 'nope' in {db}\n"


def test_table(db: Path) -> None:
    result = spend("--db", str(db))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "session new"
    assert lines[1].startswith("started ") and ", ended " in lines[1]
    assert lines[2] == f"database: {db}"
    assert all(len(line) <= 80 for line in lines[3:])
    assert lines[3:] == [
        "",
        "model                       calls  input cached cache-w output reason    cost $",
        "claude-sonnet-4-5-20250929      1 10,000  4,000   2,000  1,000    300 0.035700",
        "gpt-4o                          4  2,000    400       0  1,000      0 0.014500",
        "gpt-9-imaginary                 1    100      0       0     50      0        ?",
        "-" * 79,
        "total                           6 12,100  4,400   2,000  2,050    300 0.050200*",
        "",
        "1 call(s) with no known price, not in the cost: gpt-9-imaginary (1)",
        "1 call(s) without usage (aborted or unreadable), not in the cost",
    ]


def test_table_with_room_uses_wider_gaps(db: Path) -> None:
    result = spend("--db", str(db), "--session", "old")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[3:] == [
        "",
        "model   calls  input  cached  cache-w  output  reason    cost $",
        "gpt-4o      1  1,000     200        0     500       0  0.007250",
        "-" * 63,
        "total       1  1,000     200        0     500       0  0.007250",
    ]


def test_long_model_names_wrap_instead_of_being_cut() -> None:
    name = "ft:gpt-4o-2024-08-06:my-org:an-unusually-long-fine-tune-name:AbC123"
    row = {"model": name, **totals(calls=2, input_tokens=1_234_567, output_tokens=8, cost_usd="3.5")}
    report = {
        "schema": 1,
        "db": "/x",
        "session": {"session_id": "s", "started_at": None, "ended_at": "2026-11-01T12:00:00+00:00"},
        "total": row | {"model": "total"},
        "by_model": [row],
    }
    assert render_session(report).splitlines()[4:] == [
        "model  calls      input  cached  cache-w  output  reason  cost $",
        name,
        "           2  1,234,567       0        0       8       0  3.5000",
        "-" * 64,
        "total      2  1,234,567       0        0       8       0  3.5000",
    ]


def test_session_without_calls(tmp_path: Path) -> None:
    path = tmp_path / "spend.duckdb"
    fill(path, "empty", [])
    result = spend("--db", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "No calls in this session yet."
    report = json.loads(spend("--db", str(path), "--json").stdout)
    assert report["session"]["session_id"] == "empty"
    assert (report["total"], report["by_model"]) == (totals(), [])


def test_missing_database(tmp_path: Path) -> None:
    missing = tmp_path / "nothing" / "spend.duckdb"
    for args in (["--db", str(missing)], ["--db", str(missing), "--json"]):
        result = spend(*args)
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr == (
            f"spend: no database at {missing}\n"
            "It is created by the first metered call through scripts/proxy.\n"
        )
    assert not missing.parent.exists()  # a report never creates anything


def test_default_database_path_follows_xdg(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TOKOMETER_DB"}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    result = spend(env=env)
    assert result.returncode == 1
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
