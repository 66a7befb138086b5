"""Store: batched DuckDB writes, lock retries, crash journal replay, permissions, listeners."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from addon.migrations import MIGRATIONS, migrate
from addon.record import COLUMNS, CallRecord
from addon.store import (
    DOORBELL_SUFFIX,
    FLUSH_REQUEST,
    FLUSHED_SUFFIX,
    Store,
    StoreStats,
    journal_dir_of,
    reading,
    request_flush,
)
from addon.usage import Usage

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
GPT4O_COST = Decimal("0.00725")  # 1000 in (200 cached), 500 out: see test_pricing

READER = """
import sys, time, duckdb
while True:
    try:
        con = duckdb.connect(sys.argv[1], read_only=True)
        break
    except duckdb.IOException:
        time.sleep(0.01)
print("ready", flush=True)
sys.stdin.readline()
con.close()
"""


def make_record(i: int, session_id: str = "s1", model: str = "gpt-4o", **kwargs: object) -> CallRecord:
    fields: dict[str, object] = {
        "id": f"{session_id}-{i:04d}",
        "ts": T0 + timedelta(seconds=i),
        "session_id": session_id,
        "environment": "dev",
        "provider": "openai",
        "host": "api.openai.com",
        "path": "/v1/chat/completions",
        "api_flavor": "chat",
        "model_sent": model,
        "status_code": 200,
    }
    record = CallRecord(**(fields | kwargs))  # type: ignore[arg-type]
    record.set_usage(Usage(input_tokens=1000, cache_read_tokens=200, output_tokens=500))
    return record


def rows(db: Path, sql: str, params: list[object] | None = None) -> list[tuple[object, ...]]:
    with reading(db) as con:
        return con.execute(sql, params or []).fetchall()


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@contextmanager
def reader_process(db: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the database open read-only (which blocks every writer)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", READER, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        if proc.poll() is None:
            assert proc.stdin is not None
            proc.stdin.write("\n")
            proc.stdin.flush()
            proc.wait(10)


def release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.wait(10)


def crash(store: Store) -> None:
    """What a killed proxy leaves: the thread gone, the journal's flock released, no close()."""
    store._stopping = True
    store._wake()
    assert store._thread is not None
    store._thread.join(5)
    doorbell, store._doorbell = store._doorbell, None  # its FIFO stays, with no reader
    assert doorbell is not None and doorbell.path is not None and doorbell.path.exists()
    doorbell._selector.close()
    for fd in (doorbell._read_end, doorbell._write_end, doorbell._fifo):
        assert fd is not None
        os.close(fd)
    assert store._fd is not None
    os.close(store._fd)
    store._fd = None
    store._closed = True


@pytest.fixture(autouse=True)
def _close_stores(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Close every started store even when a test fails (no writer thread outlives its test)."""
    started: list[Store] = []
    original = Store.start

    def start(self: Store) -> None:
        started.append(self)
        original(self)

    monkeypatch.setattr(Store, "start", start)
    yield
    for store in started:
        store.close(timeout=1)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "spend.duckdb"


def test_submit_then_close_stores_each_call_once_with_its_price(db: Path) -> None:
    store = Store(db, "s1", flush_interval=0.05, version="9.9")
    store.start()
    for i in range(50):
        store.submit(make_record(i))
    # a call at +02:00 is stored as naive UTC
    local = make_record(50, model="gpt-9-imaginary")
    local.ts = datetime(2026, 11, 1, 14, 30, tzinfo=timezone(timedelta(hours=2)))
    store.submit(local)
    failed = make_record(51, status_code=429)
    failed.input_tokens = failed.output_tokens = None
    store.submit(failed)
    store.close()

    assert store.stats == StoreStats(submitted=52, stored=52, pending=0, replayed=0)
    assert rows(db, "SELECT count(*), count(DISTINCT id) FROM calls") == [(52, 52)]
    assert rows(db, "SELECT sum(cost_usd) FROM calls WHERE price_status = 'priced'") == [(Decimal("0.3625"),)]
    assert rows(db, "SELECT ts, cost_usd, price_status, price_model FROM calls WHERE id = 's1-0050'") == [
        (datetime(2026, 11, 1, 12, 30), None, "unknown_model", None)
    ]
    assert rows(db, "SELECT cost_usd, price_status FROM calls WHERE id = 's1-0051'") == [
        (Decimal(0), "not_billed")
    ]
    with reading(db) as con:
        cur = con.execute("SELECT * FROM calls WHERE id = 's1-0007'")
        row = dict(zip([d[0] for d in cur.description], cur.fetchone() or (), strict=True))
    assert row == {
        "id": "s1-0007",
        "ts": datetime(2026, 11, 1, 12, 0, 7),
        "session_id": "s1",
        "environment": "dev",
        "provider": "openai",
        "host": "api.openai.com",
        "path": "/v1/chat/completions",
        "api_flavor": "chat",
        "duration_ms": None,
        "ttft_ms": None,
        "model_requested": None,
        "model_sent": "gpt-4o",
        "model_reported": None,
        "action": "allowed",
        "status_code": 200,
        "streamed": False,
        "aborted": False,
        "input_tokens": 1000,
        "cache_read_tokens": 200,
        "cache_write_tokens": 0,
        "output_tokens": 500,
        "reasoning_tokens": 0,
        "usage_source": "reported",
        "cost_usd": GPT4O_COST,
        "price_status": "priced",
        "price_source": "genai-prices 0.2.3",
        "price_model": "gpt-4o",
        "key_fingerprint": None,
        "error": None,
        **dict.fromkeys(
            (
                "environment_source",
                "team",
                "feature",
                "tags",
                "user_name",
                "client_pid",
                "client_process",
                "client_cwd",
                "repo",
                "git_branch",
                "key_name",
                "cache_write_1h_tokens",
                "web_searches",
                "service_tier",
                "input_audio_tokens",
                "output_audio_tokens",
                "input_image_tokens",
                "output_image_tokens",
                "cache_audio_read_tokens",
                "file_searches",
                "inference_geo",
                "audio_seconds",
                "answers",
                "parent_id",
            )
        ),
    }
    ((sid, started, ended, pid, version),) = rows(
        db, "SELECT session_id, started_at, ended_at, pid, version FROM sessions"
    )
    assert (sid, pid, version) == ("s1", os.getpid(), "9.9")
    assert started is not None and ended is not None and ended >= started
    assert not store.journal_path.exists()  # everything stored: journal dropped


def test_permissions(db: Path) -> None:
    store = Store(db, "s1", flush_interval=0.05)
    store.start()
    store.submit(make_record(1))
    try:
        assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(db.stat().st_mode) == 0o600
        assert stat.S_IMODE(store.journal_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(store.journal_path.stat().st_mode) == 0o600
    finally:
        store.close()


def test_writer_retries_while_another_process_reads(db: Path) -> None:
    store = Store(db, "s1", flush_interval=0.05)
    store.start()
    with reader_process(db) as proc:
        for i in range(10):
            store.submit(make_record(i))
        time.sleep(0.5)  # ~10 flush attempts, all refused by the lock
        assert store.stats == StoreStats(submitted=10, stored=0, pending=10, replayed=0)
        assert len(store.journal_path.read_bytes().splitlines()) == 10
        release(proc)
        wait_for(lambda: store.stats.pending == 0)
    assert store.stats.stored == 10
    wait_for(lambda: store.journal_path.stat().st_size == 0)  # all stored: journal truncated
    store.submit(make_record(10))  # the journal keeps working after truncation
    assert len(store.journal_path.read_bytes().splitlines()) == 1
    store.close()
    assert rows(db, "SELECT count(*), count(DISTINCT id) FROM calls") == [(11, 11)]


def test_reading_waits_for_the_writer(db: Path) -> None:
    store = Store(db, "s1", flush_interval=3600)
    store.start()
    store.close()
    with reader_process(db) as proc:
        # the read-only reader does not block other readers
        assert rows(db, "SELECT count(*) FROM sessions") == [(1,)]
        release(proc)
    with pytest.raises(FileNotFoundError), reading(db.with_name("missing.duckdb")):
        pass


def test_a_reader_asks_the_writer_to_flush_and_waits_for_it(db: Path) -> None:
    store = Store(db, "s1", flush_interval=3600)  # would not flush on its own for an hour
    store.start()
    try:
        for i in range(3):
            store.submit(make_record(i))
        time.sleep(0.3)
        assert rows(db, "SELECT count(*) FROM calls") == [(0,)]  # a plain read does not ask
        started = time.monotonic()
        assert request_flush(db, timeout=5.0)
        assert time.monotonic() - started < 2.0
        assert rows(db, "SELECT count(*) FROM calls") == [(3,)]
        answer = store.journal_path.with_suffix(FLUSHED_SUFFIX)
        request = store.journal_dir / FLUSH_REQUEST
        assert int(answer.read_text()) == request.stat().st_size == 1  # one request, one byte
        assert stat.S_IMODE(answer.stat().st_mode) == stat.S_IMODE(request.stat().st_mode) == 0o600
        store.submit(make_record(3))
        with reading(db, fresh=True) as con:  # what scripts/spend does
            assert con.execute("SELECT count(*) FROM calls").fetchone() == (4,)
        assert store.stats.pending == 0
    finally:
        store.close()
    assert not store.journal_path.with_suffix(FLUSHED_SUFFIX).exists()


def test_a_flush_request_rings_the_writer_awake(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer sleeps between price rounds; a reader's request wakes it through its doorbell."""
    monkeypatch.setattr("addon.store.PRICE_INTERVAL", 60.0)  # it would not look for a minute
    store = Store(db, "s1", flush_interval=3600)
    store.start()
    doorbell = store.journal_path.with_suffix(DOORBELL_SUFFIX)
    try:
        time.sleep(0.2)  # the writer is asleep now
        assert stat.S_ISFIFO(doorbell.stat().st_mode) and stat.S_IMODE(doorbell.stat().st_mode) == 0o600
        store.submit(make_record(0))
        assert request_flush(db, timeout=5.0)
        assert rows(db, "SELECT count(*) FROM calls") == [(1,)]
    finally:
        store.close()
    assert not doorbell.exists()


def test_a_close_that_times_out_still_closes_the_doorbell_when_the_writer_ends(db: Path) -> None:
    """close() gives up on a busy writer; the writer closes its pipe and FIFO as it ends."""

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    def slow_listener(batch: list[CallRecord]) -> None:
        time.sleep(1.5)

    before = open_fds()
    store = Store(db, "slow", flush_interval=3600)
    store.add_listener(slow_listener)
    store.start()
    doorbell = store.journal_path.with_suffix(DOORBELL_SUFFIX)
    store.submit(make_record(0, "slow"))
    store._wake()  # the writer goes into the slow listener now
    time.sleep(0.2)
    store.close(timeout=0.3)
    assert store._thread is not None
    store._thread.join(10)
    assert not store._thread.is_alive()
    assert not doorbell.exists()
    assert open_fds() == before


def test_a_flush_request_is_answered_only_when_everything_queued_is_stored(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More calls than one transaction takes: the reader is answered after the last of them."""
    monkeypatch.setattr("addon.store.MAX_ROWS_PER_FLUSH", 50)
    store = Store(db, "s1", flush_interval=3600)
    store.start()
    try:
        for i in range(180):
            store.submit(make_record(i))
        assert request_flush(db, timeout=5.0)
        assert rows(db, "SELECT count(*) FROM calls") == [(180,)]
    finally:
        store.close()


def test_a_dead_sessions_journal_being_replayed_does_not_hold_readers(db: Path) -> None:
    """A journal adopted from a dead session stays locked while a call in it is refused by DuckDB."""
    dead = Store(db, "dead", flush_interval=3600)
    dead.start()
    dead.submit(make_record(0, "dead"))
    refused = make_record(1, "dead")
    refused.input_tokens = "lots"  # type: ignore[assignment]  # DuckDB rejects it, for ever
    dead.submit(refused)
    crash(dead)
    store = Store(db, "s1", flush_interval=3600)
    store.start()
    try:
        assert not dead.journal_path.with_suffix(DOORBELL_SUFFIX).exists()  # nobody answers it
        store.submit(make_record(2))
        for _ in range(3):
            started = time.monotonic()
            assert request_flush(db, timeout=3.0)
            assert time.monotonic() - started < 1.0
        assert rows(db, "SELECT id FROM calls ORDER BY id") == [("dead-0000",), ("s1-0002",)]
    finally:
        store.close()


def test_a_flush_request_does_not_wait_for_dead_or_absent_writers(db: Path) -> None:
    assert request_flush(db, timeout=5.0)  # no journal folder at all
    dead = Store(db, "dead", flush_interval=3600)
    dead.start()
    dead.submit(make_record(0, "dead"))
    journal = dead.journal_path.read_bytes()
    dead.close()
    dead.journal_path.write_bytes(journal)  # left by a proxy that died: nobody holds its lock
    started = time.monotonic()
    assert request_flush(db, timeout=5.0)
    assert time.monotonic() - started < 0.5
    assert not (dead.journal_dir / FLUSH_REQUEST).exists()  # nobody to ask


def test_a_flush_request_times_out_when_the_writer_cannot_write(db: Path) -> None:
    store = Store(db, "s1", flush_interval=3600)
    store.start()
    try:
        store.submit(make_record(0))
        with reader_process(db) as proc:  # holds the file: the writer's flush fails
            assert not request_flush(db, timeout=0.5)
            release(proc)
        assert request_flush(db, timeout=5.0)  # answered once the file is free
        assert rows(db, "SELECT count(*) FROM calls") == [(1,)]
    finally:
        store.close()


def test_crash_journal_is_replayed_exactly_once(db: Path) -> None:
    dead = Store(db, "dead", flush_interval=3600)
    dead.start()
    for i in range(3):
        dead.submit(make_record(i, "dead"))
    assert dead.flush()
    assert dead.journal_path.stat().st_size == 0
    dead.submit(make_record(3, "dead"))
    dead.submit(make_record(4, "dead"))
    crash(dead)
    # lines already in the db come back too (e.g. flushed, then killed before the truncation),
    # and the process died in the middle of writing its last line
    with dead.journal_path.open("a") as f:
        f.write(make_record(0, "dead").to_json() + "\n")
        f.write(make_record(5, "dead").to_json()[:40])
    assert rows(db, "SELECT count(*) FROM calls") == [(3,)]

    fresh = Store(db, "fresh", flush_interval=0.05)
    fresh.start()
    assert not dead.journal_path.exists()
    assert fresh.stats == StoreStats(submitted=0, stored=3, pending=0, replayed=3)
    fresh.close()
    assert rows(db, "SELECT id, cost_usd FROM calls ORDER BY id") == [
        (f"dead-{i:04d}", GPT4O_COST) for i in range(5)
    ]


def test_hand_written_journal_with_a_corrupt_line(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    journal_dir = db.with_name(db.name + ".journal")
    journal_dir.mkdir(parents=True)
    lines = [make_record(1, "gone").to_json(), "{not json", make_record(2, "gone").to_json()]
    (journal_dir / "gone.jsonl").write_text("\n".join(lines) + "\n")
    store = Store(db, "s1", flush_interval=0.05)
    with caplog.at_level(logging.WARNING, logger="tokometer"):
        store.start()
    store.close()
    assert rows(db, "SELECT id FROM calls ORDER BY id") == [("gone-0001",), ("gone-0002",)]
    assert [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()] == [
        f"tokometer: skipped unreadable line 2 of journal {journal_dir / 'gone.jsonl'}: "
        "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        f"tokometer: 1 line(s) of {journal_dir / 'gone.jsonl'} cannot be read by this version; "
        f"kept in {journal_dir / 'gone.unreadable'}",
    ]
    assert (journal_dir / "gone.unreadable").read_text() == "{not json\n"


def test_a_live_sessions_journal_is_left_alone(db: Path) -> None:
    live = Store(db, "live", flush_interval=3600)
    live.start()
    live.submit(make_record(1, "live"))
    other = Store(db, "other", flush_interval=0.05)
    other.start()
    other.close()
    assert other.stats.replayed == 0
    assert live.journal_path.exists()
    assert rows(db, "SELECT count(*) FROM calls") == [(0,)]
    live.close()
    assert rows(db, "SELECT id FROM calls") == [("live-0001",)]


def test_close_keeps_the_journal_when_the_db_stays_locked(db: Path) -> None:
    store = Store(db, "s1", flush_interval=0.05)
    store.start()
    with reader_process(db):
        store.submit(make_record(1))
        store.submit(make_record(2))
        store.close(timeout=0.3)
        assert store.stats == StoreStats(submitted=2, stored=0, pending=2, replayed=0)
        assert len(store.journal_path.read_bytes().splitlines()) == 2
    nxt = Store(db, "s2", flush_interval=0.05)
    nxt.start()
    nxt.close()
    assert rows(db, "SELECT id, cost_usd FROM calls ORDER BY id") == [
        ("s1-0001", GPT4O_COST),
        ("s1-0002", GPT4O_COST),
    ]
    assert not store.journal_path.exists()


def test_a_call_finishing_after_close_is_kept_for_the_next_start(db: Path) -> None:
    store = Store(db, "s1", flush_interval=0.05)
    store.start()
    store.close()
    store.submit(make_record(1))  # e.g. a stream aborted after mitmproxy's done
    assert len(store.journal_path.read_bytes().splitlines()) == 1
    os.close(store._fd or -1)  # the process exits
    nxt = Store(db, "s2", flush_interval=0.05)
    nxt.start()
    nxt.close()
    assert rows(db, "SELECT id FROM calls") == [("s1-0001",)]


def test_a_rejected_call_does_not_block_the_others(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(db, "s1", flush_interval=3600)
    store.start()
    bad = make_record(2)
    bad.input_tokens = "lots"  # type: ignore[assignment]  # a parser bug
    bad.price_status = "no_usage"
    for record in (make_record(1), bad, make_record(3)):
        store.submit(record)
    with caplog.at_level(logging.WARNING, logger="tokometer"):
        for _ in range(3):
            assert not store.flush(timeout=1)
    assert store.stats == StoreStats(submitted=3, stored=2, pending=1, replayed=0)
    assert rows(db, "SELECT id FROM calls ORDER BY id") == [("s1-0001",), ("s1-0003",)]
    rejected = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejected) == 1  # once, not per retry
    assert rejected[0].startswith(f"tokometer: call s1-0002 rejected by {db} (ConversionException: ")
    store.close(timeout=0.5)
    assert len(store.journal_path.read_bytes().splitlines()) == 3  # kept for the next start


def test_listeners_get_each_call_once_priced_before_it_is_stored(db: Path) -> None:
    seen: list[str] = []
    stored_when_seen: list[int] = []

    def broken(batch: list[CallRecord]) -> None:
        raise RuntimeError("listener bug")

    def collect(batch: list[CallRecord]) -> None:
        assert all(r.cost_usd == GPT4O_COST for r in batch)  # priced before listeners see them
        seen.extend(r.id for r in batch)
        stored_when_seen.append(store.stats.stored)

    store = Store(db, "s1", flush_interval=3600)
    store.add_listener(broken)
    store.add_listener(collect)
    store.start()
    store.submit(make_record(1))
    store.submit(make_record(2))
    deadline = time.monotonic() + 5
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == ["s1-0001", "s1-0002"]  # at once, long before the hourly flush
    assert set(stored_when_seen) == {0}
    store.submit(make_record(3))
    store.close()
    assert seen == ["s1-0001", "s1-0002", "s1-0003"]
    assert rows(db, "SELECT count(*) FROM calls") == [(3,)]


def test_migrations_create_the_schema_once(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "m.duckdb"))
    try:
        migrate(con)
        migrate(con)
        cols = [
            r[0]
            for r in con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE table_name = 'calls' ORDER BY column_index"
            ).fetchall()
        ]
        assert tuple(cols) == COLUMNS
        types = dict(
            con.execute(
                "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'calls'"
            ).fetchall()
        )
        assert (types["ts"], types["cost_usd"], types["input_tokens"], types["aborted"]) == (
            "TIMESTAMP",
            "DECIMAL(18,10)",
            "BIGINT",
            "BOOLEAN",
        )
        assert [r[0] for r in con.execute("SELECT name FROM _migrations").fetchall()] == [
            fn.__name__ for fn in MIGRATIONS
        ]
        sessions = con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = 'sessions' ORDER BY column_index"
        ).fetchall()
        assert [r[0] for r in sessions] == [
            "session_id",
            "started_at",
            "ended_at",
            "pid",
            "hostname",
            "version",
        ]
    finally:
        con.close()


KILLED = """
import sys, time
from datetime import UTC, datetime
from pathlib import Path
from addon.record import CallRecord
from addon.store import Store
from addon.usage import Usage
store = Store(Path(sys.argv[1]), "killed", flush_interval=3600)
store.start()
for i in range(5):
    record = CallRecord(id=f"k{i}", ts=datetime.now(UTC), session_id="killed", environment="dev",
                        provider="openai", host="api.openai.com", path="/v1/chat/completions",
                        api_flavor="chat", model_sent="gpt-4o", status_code=200)
    record.set_usage(Usage(input_tokens=1000, cache_read_tokens=200, output_tokens=500))
    store.submit(record)
print("submitted", flush=True)
time.sleep(60)
"""


def test_a_killed_proxy_loses_nothing(db: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "submitted"
        journal = db.with_name(db.name + ".journal") / "killed.jsonl"
        assert len(journal.read_bytes().splitlines()) == 5
        nxt = Store(db, "next", flush_interval=0.05)
        nxt.start()  # the owner is alive: its journal is not touched
        assert nxt.stats.replayed == 0
        nxt.close()
    finally:
        proc.kill()  # SIGKILL: no close(), no atexit
        proc.wait(10)
    after = Store(db, "after", flush_interval=0.05)
    after.start()
    after.close()
    assert after.stats.replayed == 5
    assert not journal.exists()
    assert rows(db, "SELECT count(*), sum(cost_usd) FROM calls") == [(5, 5 * GPT4O_COST)]


def test_journal_is_compacted_to_the_calls_still_queued(db: Path) -> None:
    store = Store(db, "s1", flush_interval=3600)
    store.start()
    for i in range(5):
        store.submit(make_record(i))
    assert store.flush()
    assert store.journal_path.read_bytes() == b""  # all stored: truncated
    for i in range(5, 8):
        store.submit(make_record(i))
    before = store.journal_path.stat().st_ino
    with store._lock:
        store._compact_journal()
    lines = store.journal_path.read_bytes().splitlines()
    assert [CallRecord.from_json(line).id for line in lines] == ["s1-0005", "s1-0006", "s1-0007"]
    assert store.journal_path.stat().st_ino != before  # a new file, renamed into place
    assert oct(store.journal_path.stat().st_mode & 0o777) == "0o600"
    store.submit(make_record(8))  # appends to the new journal
    assert len(store.journal_path.read_bytes().splitlines()) == 4
    store.close()
    assert rows(db, "SELECT count(*) FROM calls") == [(9,)]


def test_a_burst_is_written_in_bounded_transactions_and_all_of_it_is_stored(db: Path, monkeypatch) -> None:
    import addon.store as store_module

    monkeypatch.setattr(store_module, "MAX_ROWS_PER_FLUSH", 7)
    store = Store(db, "s1", flush_interval=3600)
    store.start()
    for i in range(30):
        store.submit(make_record(i))
    assert store.flush()
    assert store.stats.pending == 0
    assert rows(db, "SELECT count(*) FROM calls") == [(30,)]
    store.close()


def test_journal_line_round_trip_and_the_object_lines_of_earlier_versions() -> None:
    """A journal line is an array in column order; object lines (earlier versions) still replay."""
    import json as _json

    record = make_record(7, cost_usd=Decimal("0.0012345"), price_status="priced", client_pid=42)
    line = record.to_json()
    values = _json.loads(line)
    assert isinstance(values, list) and len(values) == len(COLUMNS)
    assert values[COLUMNS.index("cost_usd")] == "0.0012345"
    assert CallRecord.from_json(line) == record
    # written by an earlier version: an object, with a key this version no longer knows
    old = {name: getattr(record, name) for name in COLUMNS}
    old |= {"ts": record.ts.isoformat(), "cost_usd": "0.0012345", "retired_column": 1}
    assert CallRecord.from_json(_json.dumps(old)) == record
    # an array from before later columns were added: those take their defaults
    short = CallRecord.from_json(_json.dumps(values[: COLUMNS.index("environment_source")]))
    assert short.id == record.id and short.output_tokens == 500 and short.client_pid is None
    with pytest.raises(ValueError, match="values for"):
        CallRecord.from_json(_json.dumps([*values, "extra"]))


def test_a_transaction_left_open_never_keeps_the_file_locked(db: Path) -> None:
    """DETACH inside an open transaction keeps the file open and locked: the store ends it first."""
    store = Store(db, "s1")
    store.start()
    try:
        store.submit(make_record(1))
        assert store.flush()

        def begin_and_fail(con: duckdb.DuckDBPyConnection) -> None:
            con.begin()
            con.execute("SELECT count(*) FROM calls").fetchall()
            raise ValueError("a query that stops half-way")

        with pytest.raises(ValueError, match="half-way"):
            store.read(begin_and_fail)
        # another process can open the file for writing at once, and the store goes on writing
        opened = subprocess.run(
            [sys.executable, "-c", f"import duckdb; duckdb.connect({str(db)!r}).close()"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert opened.returncode == 0, opened.stderr
        store.submit(make_record(2))
        assert store.flush(timeout=5)
    finally:
        store.close()
    assert rows(db, "SELECT count(*) FROM calls") == [(2,)]


def test_calls_go_in_with_a_plain_insert_and_a_stored_one_falls_back_to_or_ignore(
    db: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """OR IGNORE costs ~3 ms an insert: it is used only when a call in the batch is stored already."""
    modes: list[bool] = []
    real_insert = Store._insert

    def spying(
        con: duckdb.DuckDBPyConnection,
        records: list[CallRecord],
        *,
        ignore_existing: bool,
        lines: Mapping[str, str] | None = None,
    ) -> None:
        if records:
            modes.append(ignore_existing)
        real_insert(con, records, ignore_existing=ignore_existing, lines=lines)

    monkeypatch.setattr(Store, "_insert", staticmethod(spying))
    store = Store(db, "s1")
    store.start()
    try:
        store.submit(make_record(1))
        assert store.flush()
        assert modes == [False]
        # a call stored already (as after a journal replay) queued again, with a new one
        with store._lock:
            store._queue.append(make_record(1))
        store.submit(make_record(2))
        assert store.flush()
        assert modes == [False, False, True]
    finally:
        store.close()
    assert rows(db, "SELECT id FROM calls ORDER BY id") == [("s1-0001",), ("s1-0002",)]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


JOURNALED_THEN_KILLED = """
import sys, time
from datetime import UTC, datetime
from pathlib import Path
from addon.record import CallRecord
from addon.store import Store
store = Store(Path(sys.argv[1]), "estimating", flush_interval=3600)
store.start()
record = CallRecord(id="e1", ts=datetime.now(UTC), session_id="estimating", environment="dev",
                    provider="openai", host="api.openai.com", path="/v1/chat/completions",
                    api_flavor="chat", model_sent="gpt-4o", status_code=200)
store.journal(record)  # the offline estimate would run now, in a thread
print("journaled", flush=True)
time.sleep(60)
"""


def test_a_call_journaled_ahead_of_its_estimate_survives_a_kill(db: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", JOURNALED_THEN_KILLED, str(db)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "journaled"
    finally:
        proc.kill()  # SIGKILL while the estimate "runs": no submit, no close
        proc.wait(10)
    after = Store(db, "after", flush_interval=0.05)
    after.start()
    after.close()
    assert after.stats.replayed == 1
    assert rows(db, "SELECT id, usage_source FROM calls") == [("e1", "none")]


def test_journaled_ahead_then_submitted_is_stored_once_with_its_estimate(db: Path) -> None:
    from addon.store import parse_journal

    store = Store(db, "s1", flush_interval=3600)
    store.start()
    try:
        early = make_record(1)
        early.input_tokens = early.output_tokens = None
        store.journal(early)
        store.submit(make_record(2))
        assert store.flush()
        # not truncated after the flush: the call still being estimated is only in the journal
        assert "s1-0001" in [r.id for r in parse_journal(store.journal_path.read_bytes())]
        # compacted: the stored call goes, the one still being estimated stays
        with store._lock:
            store._compact_journal()
        assert [r.id for r in parse_journal(store.journal_path.read_bytes())] == ["s1-0001"]
        early.set_usage(Usage(input_tokens=10, output_tokens=5), source="estimated")
        store.submit(early)
        # a crash now would replay both lines of s1-0001: the last one wins
        assert [(r.id, r.usage_source) for r in parse_journal(store.journal_path.read_bytes())] == [
            ("s1-0001", "estimated")
        ]
        assert store.flush()
        assert store.journal_path.read_bytes() == b""
    finally:
        store.close()
    assert rows(db, "SELECT id, usage_source, input_tokens FROM calls ORDER BY id") == [
        ("s1-0001", "estimated", 10),
        ("s1-0002", "reported", 1000),
    ]


def _every_field_record(call_id: str) -> CallRecord:
    """A call with every column set, awkward values included (a non-UTC time, escapes, a big count)."""
    values: dict[str, object] = {}
    for f in dataclasses.fields(CallRecord):
        values[f.name] = {
            "id": call_id,
            "ts": datetime(2026, 11, 28, 14, 30, 5, 123456, tzinfo=timezone(timedelta(hours=2))),
            "duration_ms": 1234.567,
            "ttft_ms": 0.001,
            "status_code": 429,
            "streamed": True,
            "aborted": True,
            "input_tokens": 2_000_000_000,
            "cache_read_tokens": 7,
            "cache_write_tokens": 0,
            "output_tokens": 1,
            "reasoning_tokens": 3,
            "cost_usd": Decimal("0.0000012345"),
            "client_pid": 4_000_000,
            "cache_write_1h_tokens": 5,
            "web_searches": 2,
            "file_searches": 29,
            "input_audio_tokens": 11,
            "output_audio_tokens": 13,
            "input_image_tokens": 17,
            "output_image_tokens": 19,
            "cache_audio_read_tokens": 23,
            "audio_seconds": 61.25,
            "answers": 8,
            "tags": '{"a": "b\\"c", "é": "😀"}',
            "error": 'a "quoted", \\ back\nslash \x00 nul \u2028 line',
        }.get(f.name, f'{f.name} ✓ "x"')
    return CallRecord(**values)  # type: ignore[arg-type]


def test_a_call_stored_from_its_journal_line_equals_one_bound_value_by_value(
    db: Path, tmp_path: Path
) -> None:
    """The flush inserts from the journal lines; every column must come out as binding each value would."""
    store = Store(db, "s1", pricer=lambda record: None)  # keep the record's own price fields
    store.start()
    try:
        store.submit(_every_field_record("via-line"))
        assert store._lines  # the line is kept for the flush
        assert store.flush()
        assert not store._lines
    finally:
        store.close()
    other = tmp_path / "other.duckdb"
    with duckdb.connect(str(other)) as con:
        migrate(con)
        Store._insert(con, [_every_field_record("by-value")], ignore_existing=False)
    via_line = rows(db, "SELECT * EXCLUDE (id) FROM calls")
    by_value = rows(other, "SELECT * EXCLUDE (id) FROM calls")
    assert via_line == by_value
    assert via_line[0][0] == datetime(2026, 11, 28, 12, 30, 5, 123456)  # UTC
    prices = rows(db, "SELECT cost_usd, price_status FROM calls")
    assert prices == [(Decimal("0.0000012345"), 'price_status ✓ "x"')]


def test_a_line_duckdb_cannot_read_still_stores_its_call(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A batch whose insert from lines fails is written row by row, each value bound from the record."""
    store = Store(db, "s1")
    store.start()
    try:
        store.submit(make_record(1, duration_ms=12.5))
        store.submit(make_record(2))
        with store._lock:
            store._lines["s1-0001"] = '["s1-0001", "not a time"]'
        assert store.flush()
    finally:
        store.close()
    stored = rows(db, "SELECT id, duration_ms, input_tokens, cost_usd > 0 FROM calls ORDER BY id")
    assert stored == [("s1-0001", 12.5, 1000, True), ("s1-0002", None, 1000, True)]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_text_duckdb_cannot_store_is_escaped_not_left_to_block_the_queue(db: Path) -> None:
    """A lone surrogate (a JSON "\\udc80" in a request, a cwd that is not UTF-8) is no valid UTF-8."""
    store = Store(db, "s1")
    store.start()
    try:
        store.submit(make_record(1, model="gpt-\udc80", client_cwd="/home/\udcff/x", user_name="é"))
        store.submit(make_record(2))
        assert store.flush()
        assert store.stats.pending == 0
    finally:
        store.close()
    stored = rows(db, "SELECT id, model_sent, client_cwd, user_name FROM calls ORDER BY id")
    assert stored == [("s1-0001", "gpt-\\udc80", "/home/\\udcff/x", "é"), ("s1-0002", "gpt-4o", None, None)]


def test_a_journal_line_with_a_lone_surrogate_is_replayed(db: Path) -> None:
    journal = db.with_name(db.name + ".journal")
    journal.mkdir(mode=0o700, parents=True)
    record = make_record(1, session_id="dead", model="x")
    line = record.to_json().replace('"x"', '"\\udc80x"')  # as an earlier version wrote it
    (journal / "dead.jsonl").write_text(line + "\n")
    store = Store(db, "s2")
    store.start()
    store.close()
    assert rows(db, "SELECT id, model_sent FROM calls") == [("dead-0001", "\\udc80x")]


@pytest.mark.usefixtures("proxy_store_gives_up_soon")
async def test_a_crashed_sessions_calls_count_against_budgets_even_when_the_start_cannot_store_them(
    tmp_path: Path,
) -> None:
    """At start the proxy replays a dead session's journal, then loads the budgets' spend from the
    database. With another process reading the file, the replay waits for the writer thread;
    the budgets count those calls at once all the same, and once only when they land."""
    from mitmproxy.test import taddons

    from addon.budgets import Scope
    from addon.meter import Meter

    db = tmp_path / "spend.duckdb"
    first = Store(db, "first")
    first.start()
    first.close()
    crashed = make_record(0, "crashed", ts=datetime.now(UTC), environment="development")
    crashed.set_usage(Usage(input_tokens=1_000_000))  # gpt-4o: $2.50
    journal_dir_of(db).mkdir(exist_ok=True)
    (journal_dir_of(db) / "crashed.jsonl").write_text(crashed.to_json() + "\n")  # killed before a flush
    policies = tmp_path / "policies.yaml"
    policies.write_text("environments:\n  development:\n    budget: {usd: 1, period: day}\n")
    meter = Meter()
    with taddons.context(meter) as tctx:
        with reader_process(db):
            tctx.configure(meter, tokometer_db=str(db), tokometer_policies=str(policies))
            meter.running()
            assert rows(db, "SELECT count(*) FROM calls") == [(0,)]  # not stored: the reader holds the file
            [budget] = meter.enforcer.budgets.status(datetime.now(UTC))
            assert (budget["scope"], budget["spent"]) == (Scope("environment", "development"), Decimal("2.5"))
        try:
            assert meter.store is not None
            assert request_flush(db, timeout=5.0)  # as scripts/spend asks: the writer stores it now
            assert rows(db, "SELECT count(*) FROM calls WHERE session_id = 'crashed'") == [(1,)]
            [budget] = meter.enforcer.budgets.status(datetime.now(UTC))
            assert budget["spent"] == Decimal("2.5")  # stored now, and still counted once
        finally:
            meter.done()


@pytest.mark.usefixtures("proxy_store_gives_up_soon")
async def test_a_crashed_journal_counts_each_call_once_and_raises_its_alerts(tmp_path: Path) -> None:
    """A journal holds calls stored already too, and a stream twice (at its final event and at its
    end): only the calls the database lacks are added, once each, and the alerts they cross fire."""
    from mitmproxy.test import taddons

    from addon.meter import Meter

    db = tmp_path / "spend.duckdb"
    now = datetime.now(UTC)
    stored, streamed = (make_record(i, "crashed", ts=now, environment="development") for i in (0, 1))
    stored.set_usage(Usage(input_tokens=200_000))  # gpt-4o: $0.50
    streamed.set_usage(Usage(input_tokens=400_000))  # $1.00
    first = Store(db, "first")
    first.start()
    first.submit(stored)  # in the database ...
    first.close()
    lines = [stored.to_json(), streamed.to_json(), streamed.to_json()]  # ... and still journaled
    journal_dir_of(db).mkdir(exist_ok=True)
    (journal_dir_of(db) / "crashed.jsonl").write_text("\n".join(lines) + "\n")
    policies = tmp_path / "policies.yaml"
    policies.write_text(
        "environments:\n  development:\n    budget: {usd: 1.2, period: day, alert_at: [0.5]}\n"
    )
    meter = Meter()
    with taddons.context(meter) as tctx:
        with reader_process(db):
            tctx.configure(meter, tokometer_db=str(db), tokometer_policies=str(policies))
            meter.running()
            [budget] = meter.enforcer.budgets.status(now)
            assert budget["spent"] == Decimal("1.5")  # $0.50 from the database + $1.00 replayed
        try:
            assert request_flush(db, timeout=5.0)
            assert rows(db, "SELECT count(*) FROM calls WHERE session_id = 'crashed'") == [(2,)]
            kinds = rows(db, "SELECT kind, data FROM events ORDER BY kind")
            assert [(k, json.loads(d)["fraction"]) for k, d in kinds] == [
                ("budget_alert", 0.5),
                ("budget_exhausted", 1.0),
            ]
        finally:
            meter.done()


def _count_calls(monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> list[float]:
    """Record the time of each call of ``cls.name`` (the real one still runs)."""
    seen: list[float] = []
    original = getattr(cls, name)

    def counted(self: object, *args: object) -> object:
        seen.append(time.monotonic())
        return original(self, *args)

    monkeypatch.setattr(cls, name, counted)
    return seen


def test_an_idle_writer_sleeps_until_a_call_rings_it(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing held: the writer no longer wakes every PRICE_INTERVAL (an idle proxy costs no CPU);
    the first call after a quiet spell wakes it, and is priced at once."""
    import addon.store

    monkeypatch.setattr("addon.store.PRICE_INTERVAL", 0.05)
    monkeypatch.setattr("addon.store.IDLE_WAIT", 60.0)
    waits = _count_calls(monkeypatch, addon.store._Doorbell, "wait")
    priced: list[list[CallRecord]] = []
    store = Store(db, "s1", flush_interval=0.1)
    store.add_listener(priced.append)
    store.start()
    try:
        store.submit(make_record(0))
        wait_for(lambda: store.stats.stored == 1)
        time.sleep(0.3)  # stored: from here on it holds nothing
        quiet_from = len(waits)
        time.sleep(1.0)  # at 0.05 s a round that was 20 wake-ups
        assert len(waits) - quiet_from <= 1
        rung = time.monotonic()
        store.submit(make_record(1))
        wait_for(lambda: len(priced) == 2, timeout=2.0)
        assert time.monotonic() - rung < 1.0
        wait_for(lambda: store.stats.stored == 2)
    finally:
        store.close()
    assert [r.id for batch in priced for r in batch] == ["s1-0000", "s1-0001"]


def test_calls_coming_in_a_stream_ring_the_writer_once(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the call that ends a quiet spell rings: the writer then prices every PRICE_INTERVAL
    (a wake-up per call cost the event loop ~0.5 ms)."""
    import addon.store

    monkeypatch.setattr("addon.store.PRICE_INTERVAL", 0.2)
    rings = _count_calls(monkeypatch, addon.store._Doorbell, "ring")
    store = Store(db, "s1", flush_interval=3600)
    store.start()
    try:
        store.submit(make_record(1000))  # prices loaded (the first price reads them: a pause)
        assert request_flush(db, timeout=5.0)
        time.sleep(0.5)  # asleep, holding nothing
        before = len(rings)
        for i in range(200):
            store.submit(make_record(i))
        assert len(rings) - before == 1
        assert request_flush(db, timeout=5.0)
        assert rows(db, "SELECT count(*) FROM calls") == [(201,)]
    finally:
        store.close()


def test_a_writer_holding_calls_still_flushes_when_due(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Asleep with calls queued (priced, not stored), it wakes when the flush is due, unrung."""
    monkeypatch.setattr("addon.store.PRICE_INTERVAL", 0.05)
    store = Store(db, "s1", flush_interval=0.6)
    store.start()
    try:
        time.sleep(0.2)
        store.submit(make_record(0))
        wait_for(lambda: store.stats.stored == 1, timeout=3.0)
    finally:
        store.close()


def test_a_writer_refreshes_when_another_proxy_stores_calls(db: Path) -> None:
    """Two proxies on one database: when one stores calls (or starts), the other's refresher (its
    budgets' and live file's view of the other proxies' spend) runs soon after, without waiting
    for its own flush; a writer alone never reads back (its own calls are counted as they finish)."""
    seen: list[int] = []

    def refresher(con: duckdb.DuckDBPyConnection, queued: list[CallRecord]) -> None:
        [(count,)] = con.execute("SELECT count(*) FROM calls WHERE session_id = 'b'").fetchall()
        seen.append(count)

    a = Store(db, "a", flush_interval=3600)  # never flushes on its own during the test
    a.start()
    a.set_refresher(refresher)
    b = Store(db, "b", flush_interval=3600)
    b.start()
    try:
        wait_for(lambda: 0 in seen)  # B started: A read the database again
        b.submit(make_record(1, "b"))
        assert b.flush()
        wait_for(lambda: 1 in seen)
        before = len(seen)
        a.submit(make_record(1, "a"))
        assert a.flush()  # its own flush refreshes too (another writer runs)
        assert len(seen) > before
    finally:
        b.close()
        a.close()
    alone: list[list[CallRecord]] = []
    c = Store(db, "c", flush_interval=3600)
    c.set_refresher(lambda con, queued: alone.append(queued))
    c.start()
    try:
        for i in range(2):
            c.submit(make_record(i, "c"))
            assert c.flush()
        assert alone == []  # alone: nothing to read back (budget or not)
    finally:
        c.close()


def test_an_oserror_in_a_refresh_does_not_stop_the_writer(tmp_path: Path) -> None:
    """_refresh_if_others_stored runs in the writer's loop outside its try (only duckdb.Error is
    caught there), unlike the flush it sits next to: an OSError while attaching (Path.exists on
    EACCES/EIO, say) ends the writer thread, and every later call is only journaled, never
    stored, for the rest of the proxy's run."""
    db = tmp_path / "spend.duckdb"
    a = Store(db, "a", flush_interval=0.2)
    a.start()
    a.set_refresher(lambda con, queued: None)
    original = a._attached
    failures = [PermissionError(13, "Permission denied")]

    def failing_once(**kwargs):  # type: ignore[no-untyped-def]
        if failures:
            raise failures.pop()
        return original(**kwargs)

    a._attached = failing_once  # type: ignore[method-assign]
    try:
        with open(a._stored_signal, "ab") as f:  # another proxy stored calls and rang A
            f.write(b".")
        a._wake()
        wait_for(lambda: not failures)
        a.submit(make_record(1, "a"))
        wait_for(lambda: a.stats.stored == 1, timeout=3.0)  # before the fix: the writer is dead
    finally:
        a._attached = original  # type: ignore[method-assign]
        a.close()


def test_a_dead_proxys_doorbell_is_not_taken_for_a_running_writer(tmp_path: Path) -> None:
    """B is killed (its FIFO stays: only a proxy STARTING adopts its journal and removes it). A,
    alone and with no budget, takes the dead FIFO for a running writer (_other_doorbells globs
    *.wake): every flush of A for the rest of its run appends to the signal file, rings the dead
    FIFO and runs the refresher (today_baseline + a live-file rewrite, the file attached
    read-write), which a lone proxy without a budget otherwise never does."""
    db = tmp_path / "spend.duckdb"
    a = Store(db, "a", flush_interval=3600)
    a.start()
    refreshed: list[int] = []
    a.set_refresher(lambda con, queued: refreshed.append(1))
    b = Store(db, "b", flush_interval=3600)
    b.start()
    crash(b)  # killed: its journal's lock is released, its FIFO left behind
    time.sleep(0.5)  # A read the database once when B started: that is right
    refreshed.clear()
    try:
        for i in range(3):
            a.submit(make_record(i, "a"))
            assert a.flush()
        assert refreshed == [], "a lone proxy re-read the database after each of its flushes"
        assert not b.journal_path.with_suffix(DOORBELL_SUFFIX).exists()  # removed: nobody answers it
    finally:
        a.close()


def test_an_idle_writer_backs_off_while_a_reader_holds_the_file(tmp_path: Path) -> None:
    """Another proxy stored calls (the signal file grew) while a notebook / duckdb shell holds the
    file read-only. The idle proxy's writer, which otherwise sleeps until rung, now wakes every
    PRICE_INTERVAL (0.5 s) and tries ATTACH read-write, with no backoff, for as long as the reader
    holds the file (hours). Its own flushes back off to flush_interval; this should too."""
    db = tmp_path / "spend.duckdb"
    a = Store(db, "a", flush_interval=5.0)
    a.start()
    a.set_refresher(lambda con, queued: None)
    attempts: list[float] = []
    original = a._attached

    def counting(**kwargs):  # type: ignore[no-untyped-def]
        attempts.append(time.monotonic())
        return original(**kwargs)

    a._attached = counting  # type: ignore[method-assign]
    try:
        with reader_process(db):
            with open(a._stored_signal, "ab") as f:  # another proxy stored calls and rang A
                f.write(b".")
            a._wake()
            start = time.monotonic()
            time.sleep(8.0)
        late = [t for t in attempts if t >= start + 3.0]  # seconds 3 to 8 of the reader's hold
        assert len(late) <= 2, f"{len(late)} ATTACH attempts in 5 s by an idle proxy"
    finally:
        a.close()


def test_the_stored_signal_file_does_not_grow_without_bound(tmp_path: Path) -> None:
    """Every flush that stores calls while another writer runs appends a byte to
    <db>.journal/stored, and nothing ever truncates it (readers only compare sizes): two busy
    proxies flushing every 5 s add ~35 KB a day each, for ever. Here 60 flushes: 60+ bytes."""
    db = tmp_path / "spend.duckdb"
    a = Store(db, "a", flush_interval=3600)
    a.start()
    b = Store(db, "b", flush_interval=3600)
    b.start()
    seen: list[int] = []

    def refresher(con: duckdb.DuckDBPyConnection, queued: list[CallRecord]) -> None:
        [(count,)] = con.execute("SELECT count(*) FROM calls WHERE session_id = 'a'").fetchall()
        seen.append(count)

    b.set_refresher(refresher)
    try:
        for i in range(60):
            a.submit(make_record(i, "a"))
            assert a.flush()
            wait_for(lambda i=i: seen[-1:] == [i + 1])  # B read it: no signal lost to a cut
        size = os.stat(a._stored_signal).st_size
        assert size < 60, f"{size} bytes after 60 flushes; never truncated"
    finally:
        b.close()
        a.close()


# -- a proxy whose doorbell FIFO cannot be made (a filesystem without FIFOs, EACCES) -----------------


def _without_fifos(path: object, mode: int = 0o666) -> None:
    raise PermissionError(13, "Permission denied", str(path))


def _doorbell_less(db: Path, session: str, monkeypatch: pytest.MonkeyPatch) -> Store:
    """A store started where mkfifo fails: it runs without a doorbell, so it cannot be rung."""
    with monkeypatch.context() as patched:
        patched.setattr(os, "mkfifo", _without_fifos)
        store = Store(db, session, flush_interval=3600)
        store.start()
    assert store._doorbell is not None and store._doorbell.path is None
    return store


def test_a_proxy_without_a_doorbell_still_learns_what_the_others_store(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B's FIFO could not be made. The others took only doorbells with a reader for running writers,
    so A, storing calls, neither signalled (B alone) nor re-read after its own flushes: B never saw
    A's spend (a budget shared by both was only A's to B) until another proxy started or signalled.
    Now B says it runs (a file beside its journal) and polls the signal file, as it cannot be rung."""
    a = Store(db, "a", flush_interval=3600)
    a.start()
    a_refreshed: list[int] = []
    a.set_refresher(lambda con, queued: a_refreshed.append(1))
    b = _doorbell_less(db, "b", monkeypatch)
    seen: list[int] = []

    def refresher(con: duckdb.DuckDBPyConnection, queued: list[CallRecord]) -> None:
        [(count,)] = con.execute("SELECT count(*) FROM calls WHERE session_id = 'a'").fetchall()
        seen.append(count)

    b.set_refresher(refresher)
    try:
        time.sleep(0.3)  # B's start rang A (B sees A's doorbell): A read the database once
        a_refreshed.clear()
        a.submit(make_record(1, "a"))
        assert a.flush()
        assert a_refreshed, "A did not count B as a running writer"
        wait_for(lambda: 1 in seen, timeout=3.0)  # B polls the signal A appended to
        a.submit(make_record(2, "a"))
        assert a.flush()
        wait_for(lambda: 2 in seen, timeout=3.0)
    finally:
        b.close()
        a.close()
    assert list(journal_dir_of(db).glob("b.*")) == []  # its marker went with it


def test_a_killed_doorbell_less_proxy_is_not_taken_for_a_running_writer(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its journal's flock went with it: its marker is no running writer (and is removed)."""
    a = Store(db, "a", flush_interval=3600)
    a.start()
    refreshed: list[int] = []
    a.set_refresher(lambda con, queued: refreshed.append(1))
    b = _doorbell_less(db, "b", monkeypatch)
    b._stopping = True  # killed: the thread gone, the journal's flock released, no close()
    b._wake()
    assert b._thread is not None
    b._thread.join(5)
    assert b._fd is not None
    os.close(b._fd)
    b._fd, b._closed = None, True
    time.sleep(0.3)  # A read the database once when B started: that is right
    refreshed.clear()
    try:
        for i in range(2):
            a.submit(make_record(i, "a"))
            assert a.flush()
        assert refreshed == [], "a lone proxy re-read the database after each of its flushes"
        assert [p.name for p in journal_dir_of(db).glob("b.*") if not p.name.endswith(".jsonl")] == []
    finally:
        a.close()


def test_a_journal_of_a_version_before_the_answers_column_replays(db: Path) -> None:
    """Lines journaled before ``answers`` existed (one value short) replay with it NULL (one
    answer); a line of this version stores the answers its call asked for."""
    import json as _json

    journal_dir = db.with_name(db.name + ".journal")
    journal_dir.mkdir(parents=True)
    old = _json.loads(make_record(1, "gone").to_json())
    answers = COLUMNS.index("answers")  # the last column then (parent_id came after it)
    eight = make_record(2, "gone", answers=8)
    lines = [_json.dumps(old[:answers]), eight.to_json()]
    (journal_dir / "gone.jsonl").write_text("\n".join(lines) + "\n")
    store = Store(db, "s1", flush_interval=0.05)
    store.start()
    store.submit(make_record(3, answers=2))
    store.close()
    assert rows(db, "SELECT id, answers FROM calls ORDER BY id") == [
        ("gone-0001", None),
        ("gone-0002", 8),
        ("s1-0003", 2),
    ]


def test_a_journal_of_a_version_before_the_parent_id_column_replays(db: Path) -> None:
    """Lines journaled before ``parent_id`` existed (one value short) replay with it NULL; a
    billed-apart row of this version stores the id of the call it is a part of."""
    import json as _json

    from addon.record import billed_apart

    journal_dir = db.with_name(db.name + ".journal")
    journal_dir.mkdir(parents=True)
    old = _json.loads(make_record(1, "gone").to_json())
    assert COLUMNS[-1] == "parent_id"
    parent = make_record(3)
    child = billed_apart(
        parent,
        "s1-0004",
        "messages",
        requested="claude-opus-4-1",
        sent="claude-opus-4-1",
        reported="claude-opus-4-1",
        action="allowed",
        note="the advisor tool's tokens of call s1-0003",
        inference_geo=None,
    )
    assert child.parent_id == "s1-0003"
    (journal_dir / "gone.jsonl").write_text(_json.dumps(old[:-1]) + "\n")
    store = Store(db, "s1", flush_interval=0.05)
    store.start()
    store.submit(parent)
    store.submit(child)
    store.close()
    assert rows(db, "SELECT id, parent_id FROM calls ORDER BY id") == [
        ("gone-0001", None),
        ("s1-0003", None),
        ("s1-0004", "s1-0003"),
    ]


def test_a_flush_stores_only_the_calls_its_listeners_were_shown(db: Path) -> None:
    """A call submitted while the listeners of a flush run is neither stored by that flush nor
    passed on as queued: it stays queued, is shown to the listeners in the next round, then stored;
    so no one counts it both from the database and as it is shown."""
    store = Store(db, "s1", flush_interval=3600)
    store._stopping = True  # no writer thread: the rounds below are the writer's
    store.start()
    shown: list[str] = []
    passed_on: list[list[str]] = []

    def listener(records: list[CallRecord]) -> None:
        shown.extend(r.id for r in records)
        if any(r.id == "s1-0001" for r in records):
            store.submit(make_record(2))  # the event loop, meanwhile

    store.add_listener(listener)
    store.after_next_write(lambda con, queued: passed_on.append([r.id for r in queued]))
    try:
        store.submit(make_record(1))
        assert store._flush_once(ending=False)
        assert rows(db, "SELECT id FROM calls") == [("s1-0001",)]
        assert passed_on == [[]] and [r.id for r in store._queue] == ["s1-0002"]
        assert store._flush_once(ending=False)
        assert rows(db, "SELECT id FROM calls ORDER BY id") == [("s1-0001",), ("s1-0002",)]
        assert shown == ["s1-0001", "s1-0002"] and store.stats.pending == 0
    finally:
        store._stopping = False
        store.close()


def test_the_batch_skips_unshown_calls_and_keeps_the_queue_in_order() -> None:
    from addon.store import _take_shown

    queue = [make_record(i) for i in range(6)]
    unshown = [queue[1], queue[4]]
    batch, left = _take_shown(queue, unshown, 3)
    assert [r.id for r in batch] == ["s1-0000", "s1-0002", "s1-0003"]
    assert [r.id for r in left] == ["s1-0001", "s1-0004", "s1-0005"]
    batch, left = _take_shown(queue, [], 4)
    assert (batch, left) == (queue[:4], queue[4:])


def test_set_aside_lines_another_proxy_took_meanwhile_are_not_taken_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two proxies starting together open the same ``<session>.unreadable``; the first takes its
    lock, stores its lines and removes it, and an older proxy then writes a new file at that name.
    The second, locking the removed file only then, must not take it: it used to read the removed
    file's lines (stored already) and rename the NEW file under its own name, then delete it once
    it had stored the old lines, so the new file's calls were never stored. Dead journals were
    guarded so (``st_nlink == 0`` after the lock); set-aside files were not."""
    import fcntl as real_fcntl

    import addon.store as store_module

    db = tmp_path / "data" / "spend.duckdb"
    journal_dir = db.with_name(db.name + ".journal")
    journal_dir.mkdir(parents=True)
    aside = journal_dir / "older.unreadable"
    aside.write_text(make_record(1, "taken").to_json() + "\n")
    late = make_record(2, "late").to_json() + "\n"

    class RacedFcntl:
        LOCK_EX, LOCK_NB, LOCK_UN, LOCK_SH = (
            real_fcntl.LOCK_EX,
            real_fcntl.LOCK_NB,
            real_fcntl.LOCK_UN,
            real_fcntl.LOCK_SH,
        )
        raced = False

        def __getattr__(self, name: str) -> object:
            return getattr(real_fcntl, name)

        def flock(self, fd: int, op: int) -> None:
            if not self.raced and os.fstat(fd).st_ino == aside.stat().st_ino:
                self.raced = True  # the other proxy took, stored and removed it; a new one came
                aside.unlink()
                aside.write_text(late)
            real_fcntl.flock(fd, op)

    monkeypatch.setattr(store_module, "fcntl", RacedFcntl())
    store = Store(db, "s4", flush_interval=0.05)
    store.start()
    store.close()
    monkeypatch.undo()
    assert aside.read_text() == late  # left where it was, for the next start
    assert rows(db, "SELECT id FROM calls") == []  # the removed file's lines: the other proxy's
    store = Store(db, "s5", flush_interval=0.05)
    store.start()
    store.close()
    assert rows(db, "SELECT id FROM calls") == [("late-0002",)]
