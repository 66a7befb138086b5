"""The flush-request file readers append to stays small, and every reader still gets its answer.

``<db>.journal/flush-requested`` grew by a byte per ``scripts/spend`` query for ever; now a writer
empties it (and starts its next generation) once every live writer has served all of it. These
tests run several writers, readers racing the emptying, and readers and writers of the version
before generations (a byte appended, the file's size as the ticket, a ``.flushed`` size as answer).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import pytest

from addon.store import (
    FLUSH_GENERATION,
    FLUSH_REQUEST,
    FLUSHED_SUFFIX,
    SERVED_SUFFIX,
    Store,
    _ring,
    journal_dir_of,
    request_flush,
)
from tests.test_store import _close_stores, make_record, rows

__all__ = ["_close_stores"]  # the autouse fixture closing every store a test started


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "spend.duckdb"


def stored(db: Path, call_id: str) -> bool:
    return rows(db, "SELECT count(*) FROM calls WHERE id = ?", [call_id]) == [(1,)]


def request_size(db: Path) -> int:
    return (journal_dir_of(db) / FLUSH_REQUEST).stat().st_size


def generation(db: Path) -> int:
    path = journal_dir_of(db) / FLUSH_GENERATION
    return int(path.read_text()) if path.exists() else 0


def old_request_flush(db: Path, timeout: float = 1.0) -> bool:
    """``request_flush`` as the version before generations wrote it (no flock, sizes only)."""
    journal_dir = journal_dir_of(db)
    live = [path for path in journal_dir.glob("*.jsonl") if _locked(path)]
    if not live:
        return True
    fd = os.open(journal_dir / FLUSH_REQUEST, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, b".")
        stamp = os.lseek(fd, 0, os.SEEK_CUR)
    finally:
        os.close(fd)
    for path in live:
        _ring(path.with_suffix(".wake"))
    deadline = time.monotonic() + timeout
    while True:
        try:
            size_now = os.stat(journal_dir / FLUSH_REQUEST).st_size
        except OSError:
            size_now = stamp
        live = [path for path in live if not _old_served(path, stamp, size_now) and path.exists()]
        if not live:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def _old_served(journal: Path, stamp: int, size_now: int) -> bool:
    try:
        answer = int(journal.with_suffix(FLUSHED_SUFFIX).read_text() or 0)
    except (OSError, ValueError):
        return False
    return stamp <= answer <= size_now


def _locked(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class OldWriter:
    """A running proxy of the version before generations: its journal locked, and a writer that
    answers each request with the request file's size in ``<session>.flushed`` (nothing held)."""

    def __init__(self, db: Path, session_id: str = "old") -> None:
        self.journal = journal_dir_of(db) / f"{session_id}.jsonl"
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.journal, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        self.request = journal_dir_of(db) / FLUSH_REQUEST
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        served = 0
        while not self.stop.wait(0.01):
            try:
                size = os.stat(self.request).st_size
            except OSError:
                continue
            if size < served:
                served = 0
            if size > served:
                self.journal.with_suffix(FLUSHED_SUFFIX).write_text(str(size))
                served = size

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.journal.with_suffix(FLUSHED_SUFFIX).unlink(missing_ok=True)
        self.journal.unlink()
        os.close(self.fd)


def test_the_request_file_stays_small_and_every_request_is_answered(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """24 requests at a status line's pace, two proxies: the file never passes 8 bytes (it ended
    24 bytes long before, a byte a request for ever)."""
    monkeypatch.setattr("addon.store.FLUSH_REQUEST_MAX_BYTES", 8)
    monkeypatch.setattr("addon.store.FLUSH_REQUEST_EMPTY_AFTER", 0.1)
    stores = [Store(db, "s1", flush_interval=3600), Store(db, "s2", flush_interval=3600)]
    for store in stores:
        store.start()
    sizes = []
    for i in range(24):
        record = make_record(i, stores[i % 2].session_id)
        stores[i % 2].submit(record)
        assert request_flush(db, timeout=5.0)
        sizes.append(request_size(db))
        assert stored(db, record.id)  # answered only once its call was stored
        time.sleep(0.2)
    assert sizes == [1, 2, 3, 4, 5, 6, 7, 8] * 3
    assert (generation(db), request_size(db)) == (3, 0)
    served = [(s.journal_path.with_suffix(SERVED_SUFFIX).read_text()) for s in stores]
    assert served == ["2 8", "2 8"]  # the last request of generation 2, 8 bytes long
    assert [s.journal_path.with_suffix(FLUSHED_SUFFIX).read_text() for s in stores] == ["8", "8"]


def test_readers_racing_the_emptying_are_answered_only_after_their_calls_are_stored(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three readers at once, the file emptied as soon as it may be: none waits in vain, none is
    answered before its call is in the database."""
    monkeypatch.setattr("addon.store.FLUSH_REQUEST_MAX_BYTES", 3)
    monkeypatch.setattr("addon.store.FLUSH_REQUEST_EMPTY_AFTER", 0.0)
    stores = [Store(db, "s1", flush_interval=3600), Store(db, "s2", flush_interval=3600)]
    for store in stores:
        store.start()
    problems: list[str] = []

    def reader(n: int) -> None:
        for i in range(12):
            store = stores[(n + i) % 2]
            record = make_record(100 * n + i, store.session_id)
            store.submit(record)
            if not request_flush(db, timeout=5.0):
                problems.append(f"{record.id}: not answered")
            elif not stored(db, record.id):
                problems.append(f"{record.id}: answered before it was stored")

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert problems == []
    assert rows(db, "SELECT count(*) FROM calls") == [(36,)]
    assert generation(db) >= 2  # emptied while readers raced (36 requests, 3 bytes a generation)
    assert request_size(db) <= 3 + 3


def test_a_reader_of_the_version_before_generations_is_answered(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older scripts/spend (a byte appended, sizes compared) beside new readers: each answered,
    and the file is still emptied."""
    monkeypatch.setattr("addon.store.FLUSH_REQUEST_MAX_BYTES", 4)
    store = Store(db, "s1", flush_interval=3600)
    store.start()
    for i in range(12):
        record = make_record(i)
        store.submit(record)
        ask = old_request_flush if i % 2 == 1 else request_flush  # the old one fills the file
        assert ask(db, 1.0), (i, ask.__name__)
        assert stored(db, record.id)
        time.sleep(0.3)  # past FLUSH_REQUEST_EMPTY_AFTER (0.25 s): emptied at 4 bytes
    assert (generation(db), request_size(db)) == (3, 0)


def test_a_writer_of_the_version_before_generations_keeps_the_file_until_it_stops(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running proxy that answers sizes only: new readers wait for it on its size, as before,
    and the file is not emptied under it (it would not see the new generation)."""
    monkeypatch.setattr("addon.store.FLUSH_REQUEST_MAX_BYTES", 4)
    monkeypatch.setattr("addon.store.FLUSH_REQUEST_EMPTY_AFTER", 0.02)
    store = Store(db, "s1", flush_interval=3600)
    store.start()
    old = OldWriter(db)
    try:
        for i in range(6):
            record = make_record(i)
            store.submit(record)
            assert request_flush(db, timeout=5.0)
            assert old_request_flush(db, timeout=5.0)
            assert stored(db, record.id)
            time.sleep(0.05)
        assert (generation(db), request_size(db)) == (0, 12)
    finally:
        old.close()
    for _ in range(2):
        assert request_flush(db, timeout=5.0)
        time.sleep(0.1)
    assert (generation(db), request_size(db)) == (1, 1)  # emptied at 13 bytes, then one more request
