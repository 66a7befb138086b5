"""scripts/spend statusline (from the live file) and scripts/spend watch (from a known database).

Prices per 1M tokens (NOTES.md): gpt-4o 2.50 in / 10 out; gpt-4o-mini 0.15 in / 0.60 out.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from rich.console import Console

from addon import spend_watch
from addon.live_state import LiveState, live_path, process_start
from addon.migrations import migrate
from addon.policies import ENVIRONMENT_ALIASES, load_policies
from addon.pricing import price_record
from addon.record import COLUMNS, CallRecord
from addon.spend_watch import (
    Watcher,
    _session_text,
    build_parser,
    collect,
    fast_statusline_args,
    render,
    run_watch,
    statusline_json,
    statusline_text,
)
from addon.store import reading
from addon.usage import Usage

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
GREEN, YELLOW, RED, DIM, RESET = "\x1b[32m", "\x1b[33m", "\x1b[31m", "\x1b[2m", "\x1b[0m"


# -- statusline --------------------------------------------------------------------------------------


def live_doc(**changes: Any) -> dict[str, Any]:
    """A live state as the proxy writes it, for 2026-11-28."""
    doc: dict[str, Any] = {
        "version": 1,
        "running": True,
        "pid": os.getpid(),
        "pid_start": process_start(os.getpid()),
        "session_id": "s1",
        "started_at": "2026-11-28T09:00:00+00:00",
        "updated_at": "2026-11-28T11:59:00+00:00",
        "last_call_at": "2026-11-28T11:58:00+00:00",
        "session": {"calls": 25, "refused_calls": 1, "unpriced_calls": 0, "cost_usd": "1.234"},
        "today": {
            "date": "2026-11-28",
            "environments": {
                "development": {"calls": 18, "refused_calls": 1, "cost_usd": "0.42"},
                "staging": {"calls": 7, "refused_calls": 0, "cost_usd": "2.5"},
            },
        },
        "budgets": [
            {
                "scope_kind": "environment",
                "scope_name": "development",
                "cap_usd": "150",
                "period": "month",
                "period_start": "2026-11-01T00:00:00+00:00",
                "period_end": "2026-12-01T00:00:00+00:00",
                "spent_usd": "93",
                "fraction": 0.62,
                "alert_at": [0.5, 0.8],
                "exhausted": False,
            },
            {
                "scope_kind": "environment",
                "scope_name": "staging",
                "cap_usd": "2.5",
                "period": "day",
                "period_start": "2026-11-28T00:00:00+00:00",
                "period_end": "2026-11-29T00:00:00+00:00",
                "spent_usd": "2.5",
                "fraction": 1.0,
                "alert_at": [],
                "exhausted": True,
            },
        ],
        "budgets_updated_at": "2026-11-28T11:59:00+00:00",
    }
    doc.update(changes)
    return doc


@pytest.fixture(autouse=True)
def no_app_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APP_ENV", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)


def test_statusline_from_a_known_state() -> None:
    data = statusline_json(live_doc(), env="dev", now=NOW, alive=True)
    assert data == {
        "schema": 1,
        "status": "on",
        "environment": "development",
        "today": "2026-11-28",
        "today_usd": "0.42",
        "calls": 18,
        "refused_calls": 1,
        "unpriced_calls": 0,
        "budget": {
            "period": "month",
            "cap_usd": "150",
            "spent_usd": "93",
            "fraction": 0.62,
            "exhausted": False,
            "alert_at": [0.5, 0.8],
        },
        "session_id": "s1",
        "session_usd": "1.234",
        "session_calls": 25,
        "updated_at": "2026-11-28T11:59:00+00:00",
        "proxies": 1,
        "text": "dev \u00b7 $0.42 today \u00b7 18 calls \u00b7 62% of budget",
    }
    # 62% is past the first alert_at (0.5): yellow
    assert statusline_text(data, color=True) == f"dev · $0.42 today · 18 calls · {YELLOW}62% of budget{RESET}"


def test_statusline_environment_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    # default: the environment with the most calls today
    assert (
        statusline_json(live_doc(), now=NOW, alive=True)["text"]
        == "dev · $0.42 today · 18 calls · 62% of budget"
    )
    # APP_ENV (aliases resolved) wins over that; --env wins over APP_ENV
    monkeypatch.setenv("APP_ENV", "STG")
    staging = statusline_json(live_doc(), now=NOW, alive=True)
    assert staging["text"] == "staging · $2.50 today · 7 calls · day budget spent"
    doc = live_doc()
    doc["today"]["environments"]["staging"]["unpriced_calls"] = 2  # spend unknown: the sum is a floor
    unknown = statusline_json(doc, env="staging", now=NOW, alive=True)
    assert unknown["unpriced_calls"] == 2
    assert unknown["text"] == "staging · $2.50+? today · 7 calls · day budget spent"
    assert (
        statusline_text(staging, color=True)
        == f"staging · $2.50 today · 7 calls · {RED}day budget spent{RESET}"
    )
    assert (
        statusline_json(live_doc(), env="production", now=NOW, alive=True)["text"]
        == "prod · $0.00 today · 0 calls"
    )
    assert dict(ENVIRONMENT_ALIASES) == spend_watch._ALIASES


def test_statusline_budget_colours_follow_alert_at() -> None:
    doc = live_doc()
    doc["budgets"][0]["fraction"] = 0.5
    assert statusline_text(statusline_json(doc, env="development", now=NOW, alive=True), color=True).endswith(
        f"{YELLOW}50% of budget{RESET}"
    )
    doc["budgets"][0]["alert_at"] = []
    doc["budgets"][0]["fraction"] = 0.79
    assert statusline_text(statusline_json(doc, env="development", now=NOW, alive=True), color=True).endswith(
        f"{GREEN}79% of budget{RESET}"
    )


def test_statusline_after_midnight_and_after_the_period() -> None:
    next_month = datetime(2026, 12, 1, 0, 5, tzinfo=UTC)
    data = statusline_json(live_doc(), env="development", now=next_month, alive=True)
    assert data["text"] == "dev · $0.00 today · 0 calls · 0% of budget"
    assert data["budget"]["spent_usd"] == "0"


def test_statusline_small_amounts_and_one_call() -> None:
    doc = live_doc(budgets=[])
    doc["today"]["environments"]["development"] = {"calls": 1, "refused_calls": 0, "cost_usd": "0.000345"}
    assert statusline_json(doc, now=NOW, alive=True)["text"] == "staging · $2.50 today · 7 calls"
    assert statusline_json(doc, env="dev", now=NOW, alive=True)["text"] == "dev · $0.0003 today · 1 call"


def test_statusline_off() -> None:
    assert statusline_json(None, now=NOW) == {
        "schema": 1,
        "status": "off",
        "reason": "no live state",
        "text": "tokometer: off",
    }
    stopped = statusline_json(live_doc(running=False), now=NOW)
    assert (stopped["status"], stopped["reason"]) == ("off", "proxy not running")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    gone = statusline_json(live_doc(pid=child.pid, pid_start=None), now=NOW)
    assert gone["reason"] == "proxy not running"
    assert statusline_text(gone, color=True) == f"{DIM}tokometer: off{RESET}"


def write_live(db: Path, doc: dict[str, Any]) -> None:
    live_path(db).write_text(json.dumps(doc))


def cli_env(db: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("APP_ENV", "NO_COLOR", "TOKOMETER_DB")}
    return env | {"TOKOMETER_DB": str(db)}


def test_scripts_spend_statusline(tmp_path: Path) -> None:
    db = tmp_path / "spend.duckdb"
    env = cli_env(db)
    wrapper = str(ROOT / "scripts" / "spend")
    off = subprocess.run([wrapper, "statusline"], env=env, capture_output=True, text=True, timeout=60)
    assert (off.returncode, off.stdout, off.stderr) == (0, "tokometer: off\n", "")
    # a live file written today by a running process (this one)
    today = datetime.now(UTC).date().isoformat()
    doc = live_doc(budgets=[])
    doc["today"]["date"] = today
    write_live(db, doc)
    on = subprocess.run([wrapper, "statusline"], env=env, capture_output=True, text=True, timeout=60)
    assert (on.returncode, on.stdout) == (0, "dev · $0.42 today · 18 calls\n")
    as_json = subprocess.run(
        [wrapper, "statusline", "--env", "staging", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    data = json.loads(as_json.stdout)
    assert (data["text"], data["calls"], data["today_usd"]) == ("staging · $2.50 today · 7 calls", 7, "2.5")
    forced = subprocess.run(
        [wrapper, "statusline", "--color", "--live", str(live_path(db))],
        env=env | {"TOKOMETER_DB": "/nonexistent/x.duckdb"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert forced.stdout == "dev · $0.42 today · 18 calls\n"  # no budget: nothing to colour
    # the full CLI knows the subcommand too
    full = subprocess.run(
        [sys.executable, "-m", "addon.spend", "statusline", "--no-color"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (full.returncode, full.stdout) == (0, "dev · $0.42 today · 18 calls\n")


def test_statusline_imports_no_heavy_module(tmp_path: Path) -> None:
    code = (
        "import sys; from addon.spend_watch import main; "
        f"main(['statusline', '--live', {str(tmp_path / 'none.json')!r}]); "
        "heavy = ('duckdb', 'yaml', 'rich', 'mitmproxy', 'genai_prices', 'argparse', 'logging', "
        "'addon.policies', 'addon.record', 'addon.store'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", code],
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout == "tokometer: off\n[]\n"


def test_fast_argument_parsing_matches_argparse() -> None:
    for argv in (
        [],
        ["--env", "dev", "--format", "json"],
        ["--env=staging", "--no-color", "--db", "/x.duckdb"],
        ["--color", "--live", "/l.json"],
    ):
        fast = fast_statusline_args(argv)
        slow = build_parser().parse_args(["statusline", *argv])
        assert fast is not None
        assert vars(fast) == {k: v for k, v in vars(slow).items() if k != "command"}
    for argv in (["--help"], ["--format", "xml"], ["--env"], ["--bogus"]):
        assert fast_statusline_args(argv) is None  # argparse explains


# -- watch -------------------------------------------------------------------------------------------

POLICIES = """\
environments:
  development:
    budget: {usd: 150, period: month, alert_at: [0.5, 0.8]}
  staging:
    budget: {usd: 1, period: day, alert_at: [0.3]}
users:
  alice:
    budget: {usd: 1, period: day}
"""


def call(n: int, minute: int, model: str | None, usage: Usage | None, **kwargs: Any) -> CallRecord:
    fields: dict[str, Any] = {
        "id": f"c{n}",
        "ts": NOW.replace(hour=10) + timedelta(minutes=minute),
        "session_id": "s1",
        "environment": "development",
        "provider": "openai",
        "host": "api.openai.com",
        "path": "/v1/chat/completions",
        "api_flavor": "chat",
        "model_requested": model,
        "model_sent": model,
        "status_code": 200,
    }
    record = CallRecord(**(fields | kwargs))
    record.set_usage(usage)
    return record


def build_db(db: Path) -> None:
    """Session s1 from 10:00: $0.18 (400k of 1M input cached) + $0.21 (downgraded) + $0.35 (staging,
    alice) + a refusal + an unpriced call; yesterday, session s0: $35 in development."""
    rows = [
        call(0, -25 * 60, "gpt-4o", Usage(10_000_000, 0, 0, 1_000_000), session_id="s0"),
        call(1, 30, "gpt-4o-mini", Usage(1_000_000, 400_000, 0, 100_000)),
        call(2, 60, "gpt-4o", Usage(1_000_000, 0, 0, 100_000), action="downgraded", model_sent="gpt-4o-mini"),
        call(3, 90, "gpt-4o", Usage(100_000, 0, 0, 10_000), environment="staging", user_name="alice"),
        call(
            4,
            110,
            "claude-opus-4-1",
            None,
            provider="anthropic",
            model_sent=None,
            action="blocked",
            status_code=403,
            error="model claude-opus-4-1 is not allowed in development",
        ),
        call(5, 115, "my-model", Usage(1000, 0, 0, 100)),
    ]
    con = duckdb.connect(str(db))
    try:
        migrate(con)
        con.execute(
            "INSERT INTO sessions (session_id, started_at, ended_at, pid, hostname, version) VALUES "
            "('s0', ?, ?, 1, 'h', '0.1.0'), ('s1', ?, NULL, 2, 'h', '0.1.0')",
            [datetime(2026, 11, 27, 8), datetime(2026, 11, 27, 18), datetime(2026, 11, 28, 10)],
        )
        for record in rows:
            price_record(record)
            values = [getattr(record, c) for c in COLUMNS]
            values[COLUMNS.index("ts")] = record.ts.replace(tzinfo=None)
            con.execute(
                f"INSERT INTO calls ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", values
            )
    finally:
        con.close()


@pytest.fixture
def known(tmp_path: Path) -> tuple[Path, Path]:
    db = tmp_path / "spend.duckdb"
    build_db(db)
    policies = tmp_path / "policies.yaml"
    policies.write_text(POLICIES)
    return db, policies


def frame_text(renderable: Any, width: int = 100) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_watch_frame_from_a_known_database(known: tuple[Path, Path]) -> None:
    db, policies_path = known
    with reading(db) as con:
        data = collect(con, db, load_policies(policies_path), NOW)
    assert data["session"] == {
        "session_id": "s1",
        "started_at": datetime(2026, 11, 28, 10, tzinfo=UTC),
        "ended_at": None,
        "last_call_at": datetime(2026, 11, 28, 11, 55, tzinfo=UTC),
        "calls": 5,
        "refused_calls": 1,
        "cost": Decimal("0.74"),
        "cost_last_15m": Decimal("0"),
        "unpriced_calls": 1,  # my-model's call: not in the $0.74, which is marked +?
    }
    lines = [line.rstrip() for line in frame_text(render(data, tz=UTC)).splitlines()]
    assert lines[0] == "tokometer watch  2026-11-28 12:00:00"
    where = f"db {db}"
    assert lines[1] == (where if len(where) <= 100 else where[:99] + "\u2026")  # cut, never wrapped
    # $0.74 over 2 hours: $0.37 an hour; nothing in the last 15 minutes (the refusal costs nothing).
    # "+?": the call to my-model has no known price, so $0.74 is a floor (the status line's mark)
    assert lines[3] == (
        "Session s1  running 2h 00m  $0.74+?  5 calls (1 refused)  burn $0.37/h (last 15 min $0.00/h)"
    )
    table = lines[lines.index("Today (UTC) and budgets") :]
    assert table[3] == " " + "\u2500" * 77  # under the widest row ("... 35% alert")
    assert table[1:3] + table[4:7] == [
        "",
        " Scope          Today  Calls      Budget     Spent  Used",
        # month: $35 yesterday + $0.39 today = $35.39 of $150: 23.6%, 4 of 15 cells; "+?": without
        # the call to my-model (no known price)
        " development  $0.39+?      4  $150/month  $35.39+?   24% " + "\u2588" * 4 + "\u2591" * 11,
        # $0.35 of $1 a day: past alert_at 0.3
        " staging        $0.35      1      $1/day     $0.35   35% " + "\u2588" * 5 + "\u2591" * 10 + " alert",
        " user alice         -      -      $1/day     $0.35   35% " + "\u2588" * 5 + "\u2591" * 10,
    ]
    recent = lines[lines.index("Last calls (newest first)") :]
    assert recent[2].split() == ["Time", "Env", "Model", "Tokens", "in/cached/out", "Cost"]
    assert [line.split() for line in recent[4:10]] == [
        ["11:55:00", "development", "my-model", "1,000/0/100", "$?", "unknown_model"],
        ["11:50:00", "development", "claude-opus-4-1", "-", "-", "BLOCKED"],
        ["11:30:00", "staging", "gpt-4o", "100,000/0/10,000", "$0.35"],
        ["11:00:00", "development", "gpt-4o", "->", "gpt-4o-mini", "1,000,000/0/100,000", "$0.21"],
        ["10:30:00", "development", "gpt-4o-mini", "1,000,000/400,000/100,000", "$0.18"],
        ["09:00:00", "development", "gpt-4o", "10,000,000/0/1,000,000", "$35.00"],
    ]
    assert lines[-1] == "Ctrl-C quits"


def test_watch_in_an_80_column_terminal_cuts_names_never_amounts(known: tuple[Path, Path]) -> None:
    """A long model name or scope gives up width first: every amount, count and share stays whole."""
    db, policies_path = known
    with reading(db) as con:
        data = collect(con, db, load_policies(policies_path), NOW)
    data["recent"][2]["model_requested"] = "claude-sonnet-4-5-20250929-with-a-long-suffix"
    data["budgets"][-1]["name"] = "alice-from-the-platform-infrastructure-team"
    console = Console(record=True, width=80, file=io.StringIO())
    console.print(render(data, tz=UTC))
    lines = [line.rstrip() for line in console.export_text().splitlines()]
    assert max(len(line) for line in lines) <= 80
    table = lines[lines.index("Today (UTC) and budgets") :]
    assert [line.split()[:6] for line in table[4:6]] == [
        ["development", "$0.39+?", "4", "$150/month", "$35.39+?", "24%"],
        ["staging", "$0.35", "1", "$1/day", "$0.35", "35%"],
    ]
    assert table[6].split()[-5:-1] == ["-", "$1/day", "$0.35", "35%"]
    assert "\u2026" in table[6].split()[1]  # the scope is cut
    recent = lines[lines.index("Last calls (newest first)") :]
    assert recent[6].split()[-2:] == ["100,000/0/10,000", "$0.35"]
    assert "\u2026" in recent[6]  # the model is cut
    assert [line.split()[-1] for line in recent[7:10]] == ["$0.21", "$0.18", "$35.00"]


def test_watch_in_a_70_column_terminal_never_cuts_a_cost(known: tuple[Path, Path]) -> None:
    """Narrower still: the names give up more width; every cost stays whole (independent review)."""
    db, policies_path = known
    with reading(db) as con:
        data = collect(con, db, load_policies(policies_path), NOW)
    console = Console(record=True, width=70, file=io.StringIO())
    console.print(render(data, tz=UTC))
    lines = [line.rstrip() for line in console.export_text().splitlines()]
    assert max(len(line) for line in lines) <= 70
    recent = lines[lines.index("Last calls (newest first)") :]
    assert [line.split()[-1] for line in recent[6:10]] == ["$0.35", "$0.21", "$0.18", "$35.00"]
    assert recent[4].split()[-2] == "$?" and recent[4].split()[-1].startswith("unkno")  # the note: cut


def test_watch_once_cli_and_the_database_is_not_held(known: tuple[Path, Path]) -> None:
    db, policies_path = known
    console = Console(record=True, width=100, file=io.StringIO())
    args = build_parser().parse_args(
        ["watch", "--once", "--db", str(db), "--policies", str(policies_path), "--now", "2026-11-28T12:00:00"]
    )
    assert run_watch(args, console=console) == 0
    text = console.export_text()
    assert "Session s1  running 2h 00m  $0.74+?  5 calls (1 refused)" in text
    assert "  35% " + "\u2588" * 5 + "\u2591" * 10 + " alert" in text
    con = duckdb.connect(str(db))  # a writer gets in at once: the view closed its connection
    con.close()


def test_watch_prefers_the_running_proxy_session(known: tuple[Path, Path]) -> None:
    db, policies_path = known
    live = LiveState(live_path(db), "s0")
    live.flush(0)
    text = frame_text(Watcher(db, policies_path).frame(NOW))
    assert "Session s0  ended 10h 00m  $35.00  1 call  burn $3.50/h" in text


def test_watch_without_a_database_or_with_a_busy_one(tmp_path: Path, known: tuple[Path, Path]) -> None:
    missing = tmp_path / "none" / "spend.duckdb"
    # Wide enough for any temporary folder's path (macOS's are long): the message, not its wrapping.
    frame = Watcher(missing, tmp_path / "no-policies.yaml").frame(NOW)
    text = frame_text(frame, width=100 + len(str(missing)))
    assert f"no database yet at {missing}" in text
    assert "Session  no calls yet" in text
    db, policies_path = known
    watcher = Watcher(db, policies_path)
    assert "$0.74" in frame_text(watcher.frame(NOW))
    writer = duckdb.connect(str(db))  # read-write in this process: a read-only open fails meanwhile
    try:
        text = frame_text(watcher.frame(NOW))
    finally:
        writer.close()
    assert "database busy or unreadable" in text
    assert "$0.74" in text  # the last data stays on screen


def test_watch_reports_an_invalid_policy_file(known: tuple[Path, Path], tmp_path: Path) -> None:
    db, _ = known
    bad = tmp_path / "bad.yaml"
    bad.write_text("environments:\n  development:\n    budget: {usd: -1, period: day}\n")
    text = frame_text(Watcher(db, bad).frame(NOW))
    assert "is invalid: budgets not shown" in " ".join(text.split())
    assert "none" in text  # development has no budget then


def ctrl_c_at_the_second_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """``time.sleep`` records its argument and raises KeyboardInterrupt the second time."""
    ticks: list[float] = []

    def sleep(seconds: float) -> None:
        ticks.append(seconds)
        if len(ticks) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr("time.sleep", sleep)
    return ticks


def test_watch_loop_exits_cleanly_on_ctrl_c(
    known: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, policies_path = known
    ticks = ctrl_c_at_the_second_sleep(monkeypatch)
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, height=40)
    args = build_parser().parse_args(
        ["watch", "--db", str(db), "--policies", str(policies_path), "--interval", "0.5"]
    )
    assert run_watch(args, console=console) == 0
    assert ticks == [0.5, 0.5]
    screen = out.getvalue()
    assert "\x1b[?1049h" in screen and screen.rstrip().endswith("\x1b[?1049l")  # alternate screen left
    assert "\x1b[?25h" in screen  # cursor shown again
    assert "tokometer watch" in screen


def test_watch_argument_checks(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_watch(build_parser().parse_args(["watch", "--interval", "0.01"])) == 2
    assert run_watch(build_parser().parse_args(["watch", "--interval", "nan"])) == 2
    assert run_watch(build_parser().parse_args(["watch", "--interval", "inf"])) == 2
    assert run_watch(build_parser().parse_args(["watch", "--limit", "0"])) == 2
    assert run_watch(build_parser().parse_args(["watch", "--now", "yesterday"])) == 2
    assert capsys.readouterr().err.splitlines() == [
        *["spend watch: --interval must be from 0.1 to 3600 seconds"] * 3,
        "spend watch: --limit must be at least 1",
        "spend watch: --now 'yesterday' is not an ISO time",
    ]


def test_options_before_the_command_reach_statusline_and_watch(
    tmp_path: Path, known: tuple[Path, Path]
) -> None:
    """``spend --db X statusline``: the subcommand's own defaults overwrote --db and --format."""
    db = tmp_path / "spend.duckdb"
    today = datetime.now(UTC).date().isoformat()
    doc = live_doc(budgets=[])
    doc["today"]["date"] = today
    write_live(db, doc)
    env = cli_env(tmp_path / "elsewhere.duckdb")
    for argv, expected in (
        (["--db", str(db), "statusline", "--no-color"], "dev · $0.42 today · 18 calls\n"),
        (["statusline", "--db", str(db), "--no-color"], "dev · $0.42 today · 18 calls\n"),
    ):
        run = subprocess.run(
            [sys.executable, "-m", "addon.spend", *argv], env=env, capture_output=True, text=True, timeout=60
        )
        assert (run.returncode, run.stdout) == (0, expected)
    as_json = subprocess.run(
        [sys.executable, "-m", "addon.spend", "--db", str(db), "--format", "json", "statusline"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(as_json.stdout)["text"] == "dev · $0.42 today · 18 calls"
    known_db, policies_path = known
    once = subprocess.run(
        [
            *(sys.executable, "-m", "addon.spend", "--db", str(known_db), "watch", "--once"),
            *("--policies", str(policies_path), "--now", "2026-11-28T12:00:00"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert once.returncode == 0 and "Session s1" in once.stdout


def test_watch_off_a_terminal_prints_each_frame(
    known: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full-screen view prints nothing into a pipe or a log: frames are printed one after another."""
    db, policies_path = known
    ctrl_c_at_the_second_sleep(monkeypatch)
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=100)
    args = build_parser().parse_args(["watch", "--db", str(db), "--policies", str(policies_path)])
    assert run_watch(args, console=console) == 0
    assert out.getvalue().count("tokometer watch") == 2 and "\x1b[?1049h" not in out.getvalue()


def test_amounts_under_a_hundredth_of_a_cent_are_not_shown_as_nothing() -> None:
    from addon.spend_watch import _money

    assert [_money(v) for v in ("0.000027", "0.0031", "0.003", "-0.00001", "-2.5", "0")] == [
        "<$0.0001",
        "$0.0031",
        "$0.003",
        "-<$0.0001",
        "-$2.50",
        "$0.00",
    ]


def test_a_cap_under_a_cent_is_shown_as_it_is() -> None:
    """A $0.0012 cap read "$0.00/month" beside its 180% (a user walkthrough)."""
    from addon.spend_watch import _cap

    assert [_cap(v) for v in ("0.0012", "150", "12.5", "1500.25", None)] == [
        "$0.0012",
        "$150",
        "$12.50",
        "$1,500.25",
        "$0",
    ]


def test_the_status_line_books_an_undeclared_app_env_where_the_proxy_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`scripts/shell-env --env test` sets APP_ENV=test; the proxy books an environment policies.yaml
    does not declare to the default (addon.attribution), so the line showed "test: 0 calls" while
    the shell's calls piled up in development (a review's finding)."""
    from datetime import UTC, datetime

    from addon.spend_watch import statusline_json

    now = datetime.now(UTC)
    state = {
        "today": {
            "date": now.date().isoformat(),
            "environments": {"development": {"calls": 3, "cost_usd": "0.42"}},
        },
        "session": {},
        "claimable_environments": {
            "declared": ["development", "production"],
            "default_environment": "development",
        },
    }
    monkeypatch.setenv("APP_ENV", "test")
    shown = statusline_json(state, now=now, alive=True)
    assert (shown["environment"], shown["calls"]) == ("development", 3)
    monkeypatch.setenv("APP_ENV", "prod")  # declared (an alias): shown as named
    assert statusline_json(state, now=now, alive=True)["environment"] == "production"
    assert statusline_json(state, env="test", now=now, alive=True)["environment"] == "test"  # asked for
    monkeypatch.setenv("APP_ENV", "test")
    unrestricted = {
        **state,
        "claimable_environments": {"declared": None, "default_environment": "development"},
    }
    assert statusline_json(unrestricted, now=now, alive=True)["environment"] == "test"
    assert (
        statusline_json({**state, "claimable_environments": None}, now=now, alive=True)["environment"]
        == "test"
    )


def test_the_status_line_reads_the_variables_the_proxy_reads_and_books_the_rest_to_its_fallback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The live file names the variables the proxy reads (attribution.process_env.environment, in
    order) and where it books a call they name nothing claimable for (its TOKOMETER_ENVIRONMENT or
    hosts rule, else the default): the status line books the shell the same way."""
    from datetime import UTC, datetime

    from addon.spend_watch import statusline_json

    now = datetime.now(UTC)
    state = {
        "today": {
            "date": now.date().isoformat(),
            "environments": {
                "development": {"calls": 5, "cost_usd": "0.50"},
                "staging": {"calls": 3, "cost_usd": "0.42"},
                "production": {"calls": 1, "cost_usd": "0.10"},
            },
        },
        "session": {},
        "claimable_environments": {
            "declared": ["development", "production", "staging"],
            "default_environment": "development",
            "variables": ["NODE_ENV", "APP_ENV"],
            "fallback_environment": "staging",
        },
    }

    def shown() -> str | None:
        return statusline_json(state, now=now, alive=True)["environment"]

    monkeypatch.delenv("NODE_ENV", raising=False)
    assert shown() == "development"  # nothing set: the most calls today
    monkeypatch.setenv("APP_ENV", "prod")
    assert shown() == "production"
    monkeypatch.setenv("NODE_ENV", "test")  # read first, names nothing declared: passed over
    assert shown() == "production"
    monkeypatch.setenv("APP_ENV", "qa")  # nothing claimable named: the proxy's fallback
    assert shown() == "staging"
    state["claimable_environments"]["variables"] = []  # the lookup off: nothing is read
    monkeypatch.setenv("APP_ENV", "production")
    assert shown() == "staging"  # every shell's calls go to the proxy's fallback
    monkeypatch.delenv("APP_ENV")
    assert shown() == "staging"
    assert statusline_json(state, env="prod", now=now, alive=True)["environment"] == "production"


def test_the_proxy_tells_the_live_file_its_variables_and_its_hosts_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy on a machine an attribution.hosts rule sends to staging, reading NODE_ENV then
    APP_ENV: its live file says so, and a reload saying otherwise is told at once."""
    from addon.live_state import LiveState
    from addon.meter import Meter
    from addon.policies import parse_policies

    monkeypatch.delenv("TOKOMETER_ENVIRONMENT", raising=False)
    meter = Meter()
    meter.hostname = "ci-runner-7"
    meter.live = LiveState(tmp_path / "spend.duckdb.live" / "s1.json", "s1")
    declared = "environments:\n  development: {}\n  staging: {}\n"
    meter._apply(
        parse_policies(
            declared + "attribution:\n  process_env:\n    environment: [NODE_ENV, APP_ENV]\n"
            '  hosts:\n    "ci-*": staging\n'
        )
    )
    assert meter.live.snapshot()["claimable_environments"] == {
        "declared": ["development", "staging"],
        "default_environment": "development",
        "variables": ["NODE_ENV", "APP_ENV"],
        "fallback_environment": "staging",
    }
    meter._apply(parse_policies(declared))
    lookup = meter.live.snapshot()["claimable_environments"]
    assert (lookup["variables"], lookup["fallback_environment"]) == (["APP_ENV"], "development")


@pytest.mark.parametrize(
    ("minutes", "recent", "shown"),
    [
        (0.5, "1.00", "burn $60.00/h (last 15 min $60.00/h)"),  # under a minute: counted as one
        (2, "1.00", "burn $30.00/h (last 15 min $30.00/h)"),  # before: last 15 min $4.00/h
        (10, "0.50", "burn $6.00/h (last 15 min $3.00/h)"),
        (15, "1.00", "burn $4.00/h (last 15 min $4.00/h)"),
        (60, "1.00", "burn $1.00/h (last 15 min $4.00/h)"),
    ],
)
def test_the_recent_burn_rate_spreads_over_the_time_the_session_ran(
    minutes: float, recent: str, shown: str
) -> None:
    session = {
        "session_id": "s",
        "started_at": NOW - timedelta(minutes=minutes),
        "ended_at": None,
        "calls": 3,
        "refused_calls": 0,
        "cost": Decimal("1.00"),
        "cost_last_15m": Decimal(recent),
    }
    assert _session_text(session, NOW).plain.endswith(shown)


def test_watch_shows_a_cap_as_the_file_gives_it() -> None:
    """Before, a cap of a cent or more was rounded to cents ($0.015 read $0.02)."""
    from addon.spend_watch import _cap

    assert [_cap(v) for v in ("150", "12.5", "0.015", "0.0101", "0.0012", "x")] == [
        "$150",
        "$12.50",
        "$0.015",
        "$0.0101",
        "$0.0012",
        "$?",
    ]
