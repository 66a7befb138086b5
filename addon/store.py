"""Stores finished calls in DuckDB without ever holding the file open, and never loses one.

DuckDB lets one process hold a file read-write and then refuses every other open, so the
proxy queues finished calls in memory and a writer thread flushes them every few seconds
(open, one multi-row INSERT, close), retrying while someone else holds the file. Each call
is also appended to a per-session journal (``<db>.journal/<session_id>.jsonl``, flock-ed by
its owner) before it is queued; a later session replays the journals of dead sessions with
``INSERT OR IGNORE`` (the ``id`` primary key makes replay exactly-once).

A flush costs about 10 ms of CPU whatever its size (attach, insert, commit, the checkpoint at
detach), so the writer batches: every ``FLUSH_INTERVAL`` seconds, or sooner when
``FLUSH_AT_QUEUED`` calls are queued. A reader that wants every finished call asks for a flush
first (``request_flush``, which ``reading(fresh=True)`` does): it appends one byte to
``<db>.journal/flush-requested``, and its ticket is (the file's generation, its size after the
append): the generation is the number in ``<db>.journal/flush-generation`` (0 without one), read
under a shared flock of the request file taken for the append. It then rings each live writer's
doorbell (``<session_id>.wake``, a FIFO the writer sleeps on). The writer looks at (generation,
size) whenever it wakes, and when it grew, stores everything queued and writes what it saw to
``<session_id>.served`` (``"<generation> <size>"``) and the size alone to ``<session_id>.flushed``
(what readers of versions before generations read), for each dead session's journal it is
replaying too. The reader waits until every live journal's answer reaches its ticket. Tickets
only grow (a generation's sizes, then the next generation), so no clock is involved.
The file stays small: once it is FLUSH_REQUEST_MAX_BYTES long and every live journal's answer
covers all of it, and still does FLUSH_REQUEST_EMPTY_AFTER seconds later, a writer, holding its
exclusive flock, writes the next generation and empties it. A reader still waiting then holds a
ticket of the older generation, which every answer is past. A live writer of a version before
generations (a ``.flushed`` answer and no ``.served``) keeps the file from being emptied while it
runs: readers wait for it on its plain size, as before. A reader of such a version (no flock,
sizes only) is answered as before unless its byte lands in the microseconds between the last
check and the cut, or it had not looked at its answers for those 0.25 s: then it reads what is
stored after its timeout (one second for scripts/spend).

Several proxies may write one database. Budgets (and the live files' figure of today) are
shared through it: after each flush that stored calls, and once as it starts, a writer that sees
other live writers (their doorbells) appends one byte to ``<db>.journal/stored`` (cut back to
one byte past STORED_SIGNAL_MAX_BYTES: readers look for any change, not growth) and rings their
doorbells once the file is detached. A writer's ``refresher`` (``set_refresher``) runs on the
database, attached read-write, after each of its own flushes while other writers run, and
whenever it wakes to find that file changed: the other proxies' spend is re-read there. A writer
alone reads nothing back (its own calls are counted as they finish): a proxy of a version
without doorbells is not seen running, its calls read only when another writer signals.
A writer whose FIFO cannot be made (a filesystem without FIFOs, EACCES) says it runs with a
regular file, ``<session_id>.no-doorbell``, counted by the others while its journal is locked:
they signal for it, and it, which cannot be rung, looks at the signal file every PRICE_INTERVAL.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import random
import re
import selectors
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from addon.budgets import Event, insert_events
from addon.migrations import migrate
from addon.pricing import price_record
from addon.record import COLUMNS, CallRecord

log = logging.getLogger("tokometer")

Listener = Callable[[list[CallRecord]], None]
Refresher = Callable[[duckdb.DuckDBPyConnection, list[CallRecord]], None]

# Seconds a finished call may wait in memory (and the journal) before it is written to DuckDB,
# unless a reader asks for it sooner (request_flush) or FLUSH_AT_QUEUED calls are queued.
FLUSH_INTERVAL = 5.0
FLUSH_REQUEST = "flush-requested"  # in the journal folder; one byte appended per request
FLUSHED_SUFFIX = ".flushed"  # <session>.flushed: the request file's size when the writer last flushed
SERVED_SUFFIX = ".served"  # <session>.served: "<generation> <size>" of the request file, likewise
FLUSH_GENERATION = "flush-generation"  # in the journal folder: how many times the request file was emptied
# A writer empties the request file past this size, once every live writer served all of it and
# still has FLUSH_REQUEST_EMPTY_AFTER seconds later (a reader waiting looks every 10 ms).
FLUSH_REQUEST_MAX_BYTES = 4096
FLUSH_REQUEST_EMPTY_AFTER = 0.25
DOORBELL_SUFFIX = ".wake"  # <session>.wake: a FIFO; a byte written to it wakes that writer
# <session>.no-doorbell: a writer whose FIFO could not be made runs (while its journal is locked).
NO_DOORBELL_SUFFIX = ".no-doorbell"
STORED_SIGNAL = "stored"  # in the journal folder; one byte appended per flush seen by other writers
# Past this size the writer appending to the signal file cuts it back to one byte: readers look for
# any change of it (``_signal_key``), not for growth, so a signal is never lost to the cut.
STORED_SIGNAL_MAX_BYTES = 16
UNREADABLE_SUFFIX = ".unreadable"  # <session>.unreadable: replayed lines this version could not read
REQUESTED_FLUSH_TIMEOUT = 2.0  # seconds a writer keeps trying to store everything for a reader
MAX_ROWS_PER_INSERT = 500  # rows per INSERT statement
# Flush before FLUSH_INTERVAL when this many calls are queued: under load a flush's fixed ~10 ms
# is shared by this many calls (~5 us each), and the queue stays bounded.
FLUSH_AT_QUEUED = 2_000
MAX_ROWS_PER_FLUSH = 5_000  # rows per transaction (a burst is written in several)
# How often, while calls keep coming, the writer prices new calls and hands them to the listeners
# (budgets, live file, log). submit() does not wake it then: a wake-up per call (futex + GIL
# handoff) cost the event loop ~0.5 ms, and waking every 0.1 s instead of 0.5 s cost it ~40-80 us
# a call at 400 calls/s (scripts/bench-overhead). Budgets stay exact meanwhile: a call in flight
# holds a reservation until its price is counted, and a call that holds one is priced as it
# finishes, on the loop, its cost held until the writer records it (Meter._price_now): only those.
# Readers asking for a flush ring the doorbell.
PRICE_INTERVAL = 0.5
# With nothing to price or store the writer sleeps until rung (the first call after a quiet spell,
# a reader, close) instead of every PRICE_INTERVAL: an idle proxy's store wakes no CPU (a laptop's
# battery; here each wake of an idle thread cost ~1 ms of CPU). This long only as a safety net.
IDLE_WAIT = 30.0
# Past this size the journal is rewritten with only the calls still queued after a flush.
JOURNAL_COMPACT_BYTES = 1 << 20
BUSY_LOG_AFTER = 10.0  # seconds the file may stay locked by others before we say so
# The writer's DuckDB instance lives as long as the store; the file is attached to it under this
# name for the length of one flush. Creating an instance (duckdb.connect) costs ~14 ms of CPU and
# closing one ~6 ms; ATTACH + DETACH ~0.5 ms (scripts/bench-store).
_ALIAS = "tokometer_db"
_TS_INDEX = COLUMNS.index("ts")


def is_busy_error(exc: BaseException) -> bool:
    """True for "someone else has the file open" errors, which clear up by themselves."""
    msg = str(exc)
    if isinstance(exc, duckdb.IOException) and "Could not set lock" in msg:
        return True
    # This process already has the file open: with another read_only setting, or attached
    # by another DuckDB instance (the store's writer, for the moment of a flush).
    if isinstance(exc, duckdb.Error) and "Unique file handle conflict" in msg:
        return True
    return isinstance(exc, duckdb.ConnectionException) and "different configuration" in msg


def _cannot_write(exc: BaseException) -> bool:
    """True for errors of the file, not of the rows (no space, I/O error, an invalidated database)."""
    if isinstance(exc, duckdb.IOException | duckdb.FatalException):
        return True
    return isinstance(exc, duckdb.TransactionException) and "Could not write" in str(exc)


def _backoff(attempt: int, cap: float = 0.5) -> float:
    """A random pause that starts at 5-20 ms and doubles up to ``cap`` seconds."""
    high = min(cap, 0.02 * 2 ** min(attempt, 10))
    return random.uniform(min(0.005, high), high)


def _utc_naive(ts: datetime) -> datetime:
    """Naive UTC (naive input is taken as UTC already)."""
    return ts if ts.tzinfo is None else ts.astimezone(UTC).replace(tzinfo=None)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _row(record: CallRecord) -> list[Any]:
    values = [getattr(record, name) for name in COLUMNS]
    values[_TS_INDEX] = _utc_naive(record.ts)
    return values


# Filled by the writer after ``submit`` (pricing): bound from the record, not read from its line.
_PRICE_COLUMNS = ("cost_usd", "price_status", "price_source", "price_model")
_COLUMN_TYPES: dict[str, str] | None = None
_INSERT_COLUMNS: str | None = None
_INSERT_LINES: str | None = None


def _take_shown(
    queue: list[CallRecord], unshown: Sequence[CallRecord], limit: int
) -> tuple[list[CallRecord], list[CallRecord]]:
    """(the batch a flush stores, the queue left): the first ``limit`` queued calls that are not
    ``unshown`` (submitted and not priced nor shown to the listeners yet, say while the listeners
    of this very flush ran). Those stay queued for the next round, so what a flush stores and what
    it passes on as queued-but-shown (``queued``, counted by the listeners already) never overlap:
    a call stored now yet counted by the listeners only later would be counted twice (once in the
    database's figure, once as it is shown)."""
    if not unshown:
        return queue[:limit], queue[limit:]
    waiting = {id(r) for r in unshown}
    batch: list[CallRecord] = []
    left: list[CallRecord] = []
    for record in queue:
        if id(record) in waiting or len(batch) >= limit:
            left.append(record)
        else:
            batch.append(record)
    return batch, left


def _column_types(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    global _COLUMN_TYPES
    if _COLUMN_TYPES is None:
        _COLUMN_TYPES = dict(
            con.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'calls' AND table_catalog = current_database()"
            ).fetchall()
        )
    return _COLUMN_TYPES


def _insert_sql(con: duckdb.DuckDBPyConnection, *, ignore_existing: bool) -> str:
    """An INSERT taking one list parameter per column (``unnest``).

    Binding ~40 lists costs about a tenth of binding 40 x N scalars: ~40 µs of CPU per row
    instead of ~470 µs, measured with scripts/bench-store. ``OR IGNORE`` (for calls that may
    be stored already: a replayed journal) adds ~3 ms to each insert, so it is asked for only then.
    """
    global _INSERT_COLUMNS
    if _INSERT_COLUMNS is None:
        types = _column_types(con)
        values = ", ".join(f"unnest(${i + 1}::{types[c]}[])" for i, c in enumerate(COLUMNS))
        _INSERT_COLUMNS = f"INTO calls ({', '.join(COLUMNS)}) SELECT {values}"
    return ("INSERT OR IGNORE " if ignore_existing else "INSERT ") + _INSERT_COLUMNS


def _insert_lines_sql(con: duckdb.DuckDBPyConnection, *, ignore_existing: bool) -> str:
    """An INSERT taking the calls' journal lines (``$1``) and their price columns (``$2``...).

    DuckDB splits each line (a JSON array in ``COLUMNS`` order) and casts its values: ~26 µs of
    CPU per row at 200 rows, against ~41 µs for converting every value from Python (bench-store).
    """
    global _INSERT_LINES
    if _INSERT_LINES is None:
        types = _column_types(con)
        inner = ["unnest($1::VARCHAR[]) AS line"]
        inner += [f"unnest(${k + 2}::{types[c]}[]) AS {c}" for k, c in enumerate(_PRICE_COLUMNS)]
        values = ", ".join(
            c if c in _PRICE_COLUMNS else f"v[{i + 1}]::{types[c]}" for i, c in enumerate(COLUMNS)
        )
        _INSERT_LINES = (
            f"INTO calls ({', '.join(COLUMNS)}) SELECT {values} FROM ("
            f"SELECT from_json(line, '[\"VARCHAR\"]') AS v, {', '.join(_PRICE_COLUMNS)} "
            f"FROM (SELECT {', '.join(inner)}))"
        )
    return ("INSERT OR IGNORE " if ignore_existing else "INSERT ") + _INSERT_LINES


def open_readonly(db_path: Path, *, timeout: float = 5.0) -> duckdb.DuckDBPyConnection:
    """A read-only connection, retrying with back-off while a writer holds the file."""
    db_path = Path(db_path)
    if not db_path.exists():
        raise FileNotFoundError(errno.ENOENT, "no tokometer database", str(db_path))
    return _retry_while_busy(lambda: duckdb.connect(str(db_path), read_only=True), timeout)


def _retry_while_busy[T](attempt_once: Callable[[], T], timeout: float) -> T:
    """``attempt_once()``, again after a back-off while the file is busy, for up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        try:
            return attempt_once()
        except duckdb.Error as exc:
            remaining = deadline - time.monotonic()
            if not is_busy_error(exc) or remaining <= 0:
                raise
            time.sleep(min(_backoff(attempt), remaining))
            attempt += 1


def journal_dir_of(db_path: Path) -> Path:
    """The folder of the journals of the proxies writing ``db_path``."""
    return db_path.with_name(db_path.name + ".journal")


def _owner_alive(journal: Path) -> bool:
    """A journal's owner is alive while it holds the file's flock."""
    try:
        fd = os.open(journal, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


# The signal file as seen by one stat: (st_dev, st_ino, st_size, st_mtime_ns); None: no file.
_SignalKey = tuple[int, int, int, int] | None


def _signal_key_of(st: os.stat_result) -> _SignalKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _has_reader(doorbell: Path) -> bool:
    """Does a process read the FIFO ``doorbell``? (A writing open without one fails: ENXIO.)"""
    try:
        fd = os.open(doorbell, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return stat.S_ISFIFO(os.fstat(fd).st_mode)
    except OSError:
        return False
    finally:
        os.close(fd)


def _ring(doorbell: Path) -> None:
    """Wake the writer sleeping on ``doorbell`` (a FIFO); nothing if there is none or nobody reads."""
    try:
        fd = os.open(doorbell, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NOCTTY)
    except OSError:  # missing (an older proxy), or no reader (ENXIO): it sees the request later
        return
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.write(fd, b".")
    except OSError:  # full: it is being woken anyway
        pass
    finally:
        os.close(fd)


class _Doorbell:
    """What the writer thread sleeps on: a pipe rung from this process, a FIFO rung by readers.

    The thread wakes only when rung or when its timeout ends, and holds no GIL meanwhile.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # ring() against close(): never write to a closed (reused) fd
        self._closed = False
        self._read_end, self._write_end = os.pipe()  # not inherited; pipe2 is Linux only
        os.set_blocking(self._read_end, False)
        os.set_blocking(self._write_end, False)
        self._selector = selectors.DefaultSelector()  # epoll here, kqueue on macOS
        self._selector.register(self._read_end, selectors.EVENT_READ)
        self._fifo: int | None = None
        self.path: Path | None = None

    def open_fifo(self, path: Path) -> None:
        """Let other processes ring too (``_ring(path)``); without it they wait for the timeout."""
        try:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # left by a killed process with this session id
            os.mkfifo(path, 0o600)
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)  # read-write: never at EOF
        except OSError as exc:
            log.debug(
                "tokometer: no doorbell %s (%s): flush requests wait for the writer's next wake", path, exc
            )
            return
        try:
            self._selector.register(fd, selectors.EVENT_READ)
        except (OSError, ValueError) as exc:
            os.close(fd)
            log.debug("tokometer: no doorbell %s (%s)", path, exc)
            return
        self._fifo, self.path = fd, path

    def ring(self) -> None:
        """Wake the writer (any thread of this process); nothing once closed."""
        with self._lock, contextlib.suppress(OSError):
            if not self._closed:
                os.write(self._write_end, b".")

    def wait(self, timeout: float) -> None:
        """Sleep until rung or ``timeout`` seconds passed; swallow the rings."""
        for key, _ in self._selector.select(max(0.0, timeout)):
            with contextlib.suppress(OSError):
                while os.read(key.fd, 4096):
                    pass

    def close(self) -> None:
        """Close the pipe and the FIFO and remove the FIFO (once; the writer no longer waits on it)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._selector.close()
        for fd in (self._read_end, self._write_end, self._fifo):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fifo = None
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()


# A flush request's place in the request file: (generation, size after its byte was appended).
Ticket = tuple[int, int]


def _read_number(path: Path) -> int | None:
    """The whole number a small file holds; None when it is missing or holds something else."""
    try:
        return int(path.read_text() or 0)
    except (OSError, ValueError):
        return None


def _request_position(journal_dir: Path) -> Ticket | None:
    """(generation, size) of the request file, seen together: under its shared flock, which a
    writer emptying it holds exclusively. None: there is no request file."""
    try:
        fd = os.open(journal_dir / FLUSH_REQUEST, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with contextlib.suppress(OSError):  # a filesystem without flock: seen as it is
            fcntl.flock(fd, fcntl.LOCK_SH)
        return (_read_number(journal_dir / FLUSH_GENERATION) or 0, os.fstat(fd).st_size)
    except OSError:
        return None
    finally:
        os.close(fd)


def _answer_of(journal: Path) -> Ticket | None:
    """The writer's answer in ``<session>.served``: the (generation, size) it last flushed for."""
    try:
        generation, size = journal.with_suffix(SERVED_SUFFIX).read_text().split()
        return (int(generation), int(size))
    except (OSError, ValueError):
        return None


def _served(journal: Path, ticket: Ticket, now: Ticket) -> bool:
    """Has the journal's writer served the request holding ``ticket``, the request file being at
    ``now``?

    An answer past ``now`` is about an older request file (the folder was deleted and the file made
    again): not ours. A writer of a version before generations answers with a size only: within
    the ticket's generation (it keeps the file from being emptied while it runs).
    """
    answer = _answer_of(journal)
    if answer is not None:
        return ticket <= answer <= now
    served = _read_number(journal.with_suffix(FLUSHED_SUFFIX))
    return served is not None and ticket[0] == now[0] and ticket[1] <= served <= now[1]


def _write_replacing(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` at once (a temporary file renamed over it): readers see all or nothing."""
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(temporary, path)


def request_flush(db_path: Path, timeout: float = 1.0) -> bool:
    """Ask the running proxies writing ``db_path`` to store the calls they hold; wait for them.

    True when every live writer answered within ``timeout`` (or none runs); False otherwise,
    and the caller reads what is stored so far. Never raises.
    """
    journal_dir = journal_dir_of(Path(db_path))
    try:
        live = [path for path in journal_dir.glob("*.jsonl") if _owner_alive(path)]
        if not live:
            return True
        fd = os.open(
            journal_dir / FLUSH_REQUEST, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            with contextlib.suppress(OSError):  # not emptied between our append and our look
                fcntl.flock(fd, fcntl.LOCK_SH)
            os.write(fd, b".")
            # our append's end: no later request of this generation has a smaller one
            ticket = (_read_number(journal_dir / FLUSH_GENERATION) or 0, os.lseek(fd, 0, os.SEEK_CUR))
        finally:
            os.close(fd)
    except OSError:
        return False
    for path in live:
        _ring(path.with_suffix(DOORBELL_SUFFIX))
    deadline = time.monotonic() + timeout
    while True:
        now = _request_position(journal_dir) or ticket
        live = [path for path in live if not _served(path, ticket, now) and path.exists()]
        if not live:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


@contextmanager
def reading(
    db_path: Path, timeout: float = 5.0, *, fresh: bool = False
) -> Iterator[duckdb.DuckDBPyConnection]:
    """``with reading(path) as con:`` a read-only connection, closed as soon as the block ends.

    ``fresh``: first ask running proxies to store the calls they hold (``request_flush``).
    """
    if fresh and Path(db_path).exists():
        request_flush(Path(db_path), timeout=min(1.0, timeout))
    con = open_readonly(db_path, timeout=timeout)
    try:
        yield con
    finally:
        con.close()


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Counters: submitted here, stored (own and replayed), pending, replayed from dead journals."""

    submitted: int
    stored: int
    pending: int
    replayed: int


@dataclass(slots=True)
class _Adopted:
    """A dead session's journal we hold locked until its records are stored."""

    path: Path
    fd: int
    records: list[CallRecord] = field(default_factory=list)


def parse_journal(
    data: bytes, path: Path | str = "journal", unreadable: list[bytes] | None = None
) -> list[CallRecord]:
    """Records of a journal's bytes; unreadable (corrupt or truncated) lines are logged and skipped.

    A call journaled twice (first as it finished, then with its offline estimate) is the last line.
    The complete lines (newline-terminated) that cannot be read are added to ``unreadable``: a
    newer version's line, kept for that version. A last line without its newline is a write cut
    short by a crash, never a finished call's.
    """
    records: dict[str, CallRecord] = {}
    lines = data.split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = CallRecord.from_json(line)
        except Exception as exc:
            log.warning("tokometer: skipped unreadable line %d of journal %s: %s", number, path, exc)
            if unreadable is not None and number < len(lines):
                unreadable.append(line)
            continue
        record.make_storable()  # a line written before make_storable existed
        records.pop(record.id, None)
        records[record.id] = record
    return list(records.values())


def _keep_unreadable(journal: Path, lines: list[bytes]) -> None:
    """Keep a replayed journal's complete lines this version cannot read (a newer version's, after
    a downgrade) in ``<journal>.unreadable`` (owner only): the journal itself goes once replayed."""
    target = journal.with_suffix(UNREADABLE_SUFFIX)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"".join(line + b"\n" for line in lines))
        finally:
            os.close(fd)
        log.warning(
            "tokometer: %d line(s) of %s cannot be read by this version; kept in %s",
            len(lines),
            journal,
            target,
        )
    except OSError as exc:
        log.warning("tokometer: could not keep the unreadable lines of %s: %s", journal, exc)


def _readable_line(line: bytes) -> bool:
    """Can this version read ``line`` as a call (quietly: no log)?"""
    if not line.strip():
        return False
    try:
        CallRecord.from_json(line)
    except Exception:
        return False
    return True


def _read_fd(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks: list[bytes] = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


class Store:
    """Queue, journal and batch-write finished calls (see the module docstring).

    ``submit`` runs on mitmproxy's event loop; pricing and DuckDB run in a writer thread.
    After ``submit`` the store owns the record: the writer fills its price fields.
    """

    def __init__(
        self,
        db_path: Path,
        session_id: str,
        *,
        flush_interval: float = FLUSH_INTERVAL,
        version: str = "",
        pricer: Callable[[CallRecord], None] = price_record,
    ) -> None:
        self.db_path = Path(db_path)
        self.session_id = session_id
        self.pricer = pricer  # fills a record's price fields (policies.yaml prices, genai-prices)
        self.flush_interval = flush_interval
        self.version = version
        self.journal_dir = journal_dir_of(self.db_path)
        self.journal_path = self.journal_dir / (re.sub(r"[^A-Za-z0-9._-]", "_", session_id) + ".jsonl")
        self.start_timeout = 5.0

        self._lock = threading.Lock()  # queue, journal fd, counters: shared with submit
        self._flush_lock = threading.Lock()  # one flush at a time
        self._queue: list[CallRecord] = []
        # The journal line (no newline) of each queued call, by id: the flush inserts from it.
        self._lines: dict[str, str] = {}
        # Journaled by ``journal`` and not submitted yet (an offline estimate is being made, a
        # stream is past its final event): the line written, by id.
        self._journaled_only: dict[str, str] = {}
        self._unpriced: list[CallRecord] = []  # submitted, not yet priced nor shown to listeners
        self._events: list[Event] = []
        self._inflight = 0
        self._fd: int | None = None
        self._journal_bytes = 0
        self._journal_failed = False
        self._journal_incomplete = False  # a line could not be written: journal again from memory
        self._compact_failed = False  # the last journal rewrite failed (logged once)
        self._db_identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file migrated
        self._adopted: list[_Adopted] = []
        self._listeners: list[Listener] = []
        self._after_write: list[Callable[[duckdb.DuckDBPyConnection, list[CallRecord]], None]] = []
        self.started_stored = True  # False: the start could not write (another process held the file)
        self._doorbell: _Doorbell | None = None  # from start() to close()
        self._no_doorbell: Path | None = None  # the file saying we run without one, if we made it
        self._closing = False  # close() has begun
        self._stopping = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._started_at = _now()
        self._migrated = False
        self._session_recorded = False
        self._problems: set[str] = set()
        self._started = False
        self._sleeping = False  # the writer waits for a ring: the next submit rings (under _lock)
        self._busy_since: float | None = None
        self._busy_logged = False
        self._instance: duckdb.DuckDBPyConnection | None = None  # see _ALIAS; under _flush_lock
        self._submitted = 0
        self._stored = 0
        self._replayed = 0
        self._flush_request = self.journal_dir / FLUSH_REQUEST
        self._served_request: Ticket = (0, 0)  # the request file's place at the last flush for readers
        # The request file's place every live answer covered, and when that was first seen
        # (time.monotonic()): it is emptied if nothing changed FLUSH_REQUEST_EMPTY_AFTER later.
        self._all_served: tuple[Ticket, float] | None = None
        self._empty_due: float | None = None  # when to look again (time.monotonic())
        self._stored_signal = self.journal_dir / STORED_SIGNAL
        self._stored_seen: _SignalKey = None  # the signal file as it was when the refresher last ran
        self._refresher: Refresher | None = None
        self._refresh_failed = False  # logged once
        # A refresh that failed (the file held by a reader, an OSError) is tried again after a
        # back-off (``_refresh_backoff``), sooner only when the signal file changes again.
        self._refresh_attempt = 0
        self._refresh_due = 0.0  # time.monotonic() before which it is not tried again
        self._refresh_failed_at: _SignalKey = None  # the signal file as it was when it failed
        self._refresh_requested = False  # request_refresh: refresh at the writer's next wake
        self._ring_others = False  # set by a flush that signalled: ring them once detached

    # -- public API ---------------------------------------------------------------------------

    def start(self) -> None:
        """Create the folders, own and replay journals, create/migrate the db, start the writer."""
        self._started = True
        self._started_at = _now()
        self._stored_seen = self._signal_key()
        self.db_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._open_journal()
        self._adopt_dead_journals()
        self.started_stored = self._flush_until(time.monotonic() + self.start_timeout, ending=False)
        if not self.started_stored:
            log.warning(
                "tokometer: could not open %s yet (%s); calls are kept and the writer keeps trying",
                self.db_path,
                "; ".join(sorted(self._problems)) or "locked by another process",
            )
        self._doorbell = _Doorbell()
        if self._fd is not None:  # a journal of ours: readers see us as live and may ring
            self._doorbell.open_fifo(self.journal_path.with_suffix(DOORBELL_SUFFIX))
            if self._doorbell.path is None:  # no FIFO: the other writers are told we run otherwise
                self._say_running_without_doorbell()
        others = self._other_doorbells()
        running = bool(others) or self._doorbell_less_writers_run()
        if running and self._signal_stored():  # a writer more: the others read the database again
            for doorbell in others:
                _ring(doorbell)
        self._thread = threading.Thread(target=self._run, name="tokometer-store", daemon=True)
        self._thread.start()

    def submit(self, record: CallRecord) -> None:
        """Journal and queue one finished call. Costs microseconds, never raises."""
        try:
            try:
                text: str | None = record.to_json()  # ASCII only (JSON escapes)
                if "\\ud" in text:  # a surrogate escape: maybe a lone one, which DuckDB cannot store
                    record.make_storable()
                    text = record.to_json()
            except Exception as exc:
                text = None
                log.warning("tokometer: call %s cannot be journaled: %s", record.id, exc)
            line = None if text is None else (text + "\n").encode()
            with self._lock:
                self._submitted += 1
                self._journaled_only.pop(record.id, None)
                if self._closed:
                    self._late_submit(record, line)
                    return
                if line is not None and self._fd is not None:
                    self._journal_write(line)
                self._queue.append(record)
                if text is not None:
                    self._lines[record.id] = text
                self._unpriced.append(record)
                # The writer prices new calls every PRICE_INTERVAL while they keep coming, and
                # stores them in batches; only the first call after a quiet spell wakes it.
                wake, self._sleeping = self._sleeping, False
            if wake:
                self._wake()
        except Exception:
            log.exception("tokometer: could not queue call %s", getattr(record, "id", "?"))

    def journal(self, record: CallRecord) -> bool:
        """Journal a finished call now; ``submit`` it later (after work off the loop). Never raises.

        A call without reported usage is submitted only once its tokens are counted in a thread;
        journaled first, a crash in between still leaves it (without the estimate) for replay.
        False when it was not journaled (closed, no journal): the later ``submit`` keeps it.
        """
        try:
            text = record.to_json()  # ASCII only (JSON escapes)
            if "\\ud" in text:  # a surrogate escape: maybe a lone one (as in submit)
                record.make_storable()
                text = record.to_json()
            with self._lock:
                if self._closed or self._fd is None:
                    return False  # submit() will keep it (after close: in a journal for the next start)
                self._journal_write((text + "\n").encode())
                self._journaled_only[record.id] = text  # compaction copies it as written
            return True
        except Exception:
            log.exception("tokometer: could not journal call %s", getattr(record, "id", "?"))
            return False

    def submit_event(self, event: Event) -> None:
        """Queue an event row (budget alert, policy reload) for the next flush; any thread."""
        with self._lock:
            self._events.append(event)
        self._wake()

    def add_listener(self, fn: Listener) -> None:
        """Call ``fn(batch)`` with this session's calls as soon as they are priced (writer thread).

        That is right after ``submit``, before they reach DuckDB (which happens in batches).
        """
        self._listeners.append(fn)

    def set_refresher(self, fn: Refresher) -> None:
        """Run ``fn(con, queued)`` in the writer thread, the database attached read-write: after
        each flush while other writers run, and when another writer stored calls or started (see
        the module docstring). ``queued``: this session's calls priced (shown to the listeners)
        and not in the database yet.

        ``con`` may be written to (``addon.budgets.claim_event``); nothing else of this process
        writes or prices meanwhile. Exceptions are logged (once) and ignored.
        """
        self._refresher = fn

    def request_refresh(self) -> None:
        """Run the refresher soon, in the writer thread, whether or not another writer signalled
        (a policy reload added budgets: the other proxies' spend was not read meanwhile). Any thread."""
        self._refresh_requested = True
        self._refresh_due = 0.0
        self._wake()

    @property
    def stats(self) -> StoreStats:
        """Counters for tests and logs."""
        with self._lock:
            return StoreStats(
                submitted=self._submitted,
                stored=self._stored,
                pending=len(self._queue) + self._inflight,
                replayed=self._replayed,
            )

    def flush(self, timeout: float = 5.0) -> bool:
        """Store everything queued now, retrying on lock until ``timeout``; True if it all went in."""
        return self._flush_until(time.monotonic() + timeout, ending=False) and self.stats.pending == 0

    def close(self, timeout: float = 10.0) -> None:
        """Stop the writer, final flush and ``sessions.ended_at``; drop the journal if all is stored."""
        if self._closed:
            return
        if not self._started:
            with self._lock:
                self._closed = True
                if self._queue:
                    log.warning("tokometer: store closed before start: %d call(s) dropped", len(self._queue))
            return
        deadline = time.monotonic() + timeout
        self._closing = True  # the writer thread closes the doorbell as it ends, if it outlives join
        self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        if not (self._thread is not None and self._thread.is_alive()):
            self._close_doorbell()
        self._flush_until(deadline, ending=True)
        with self._lock:
            self._closed = True
            left = len(self._queue) + self._inflight + len(self._journaled_only)
            fd, self._fd = self._fd, None
        if self._no_doorbell is not None:
            with contextlib.suppress(OSError):
                self._no_doorbell.unlink()
            self._no_doorbell = None
        if fd is not None:
            for answer in (FLUSHED_SUFFIX, SERVED_SUFFIX):  # in this order: see _answer_flush_request
                with contextlib.suppress(OSError):
                    self.journal_path.with_suffix(answer).unlink()
            if left == 0:
                with contextlib.suppress(OSError):
                    self.journal_path.unlink()
            else:
                log.warning(
                    "tokometer: %d call(s) not stored in %s; kept in %s for the next start",
                    left,
                    self.db_path,
                    self.journal_path,
                )
            os.close(fd)
        for adopted in self._adopted:
            os.close(adopted.fd)
        self._adopted = []
        with self._flush_lock:
            self._drop_instance()

    # -- journal --------------------------------------------------------------------------------

    def _open_journal(self) -> None:
        try:
            self.journal_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            log.warning("tokometer: no journal (%s): unstored calls would be lost in a crash", exc)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.fchmod(fd, 0o600)
            reader = os.open(self.journal_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                leftover = _read_fd(reader)
            finally:
                os.close(reader)
        except OSError as exc:
            os.close(fd)
            log.warning("tokometer: journal %s unusable (%s): running without one", self.journal_path, exc)
            return
        self._fd = fd
        self._journal_bytes = len(leftover)
        if leftover:  # an earlier process with this session id died: its lines are ours now
            records = parse_journal(leftover, self.journal_path)
            with self._lock:
                self._queue[:0] = records
                self._replayed += len(records)

    def _journal_write(self, line: bytes) -> None:
        """Append one line with one write (caller holds ``_lock``); a failure is logged once."""
        assert self._fd is not None
        try:
            view = memoryview(line)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            self._journal_bytes += len(line)
            self._journal_failed = False
        except OSError as exc:
            # A short write (disk full) leaves part of a line: cut it off, or the next line,
            # appended to it, would read as one unreadable line. The call is journaled again
            # from memory (``_check_journal``) once there is room.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._journal_bytes)
            self._journal_incomplete = True
            if not self._journal_failed:
                log.warning("tokometer: journal write failed (%s): calls are kept in memory", exc)
                self._journal_failed = True

    def _check_journal(self) -> None:
        """Journal again what the journal lacks (caller holds ``_lock``): calls a failed write left
        in memory only, or all of them when the journal file was removed (its folder deleted)."""
        if self._fd is None:
            return
        try:
            removed = os.fstat(self._fd).st_nlink == 0
        except OSError:
            removed = False
        if not (removed or self._journal_incomplete):
            return
        with contextlib.suppress(OSError):
            self.journal_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._compact_journal():
            self._journal_incomplete = False

    def _compact_journal(self) -> bool:
        """Rewrite the journal with only the calls not stored yet (caller holds ``_lock``).

        Those are the queued calls and the ones journaled ahead of their ``submit``.

        Under steady traffic the queue is never empty right after a flush, so the
        journal would only grow. The new file is written and locked first, then
        renamed over the old one: a crash at any point leaves a complete journal.
        """
        assert self._fd is not None
        tmp = self.journal_path.with_name(self.journal_path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self._compact_problem(exc)
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            kept = [self._lines.get(r.id) or r.to_json() for r in self._queue]
            data = "".join(text + "\n" for text in (*kept, *self._journaled_only.values())).encode()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.replace(tmp, self.journal_path)
        except (OSError, ValueError) as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            self._compact_problem(exc)
            return False
        os.close(self._fd)
        self._fd, self._journal_bytes = fd, len(data)
        if self._compact_failed:
            log.info("tokometer: journal written again")
            self._compact_failed = False
        return True

    def _compact_problem(self, exc: BaseException) -> None:
        """Log a failed rewrite once (a full disk fails it at every flush until there is room)."""
        if not self._compact_failed:
            log.warning("tokometer: could not compact journal: %s", exc)
            self._compact_failed = True

    def _late_submit(self, record: CallRecord, line: bytes | None) -> None:
        """A call finished after ``close``: leave it in a journal for the next start to replay."""
        if line is None:
            log.warning("tokometer: call %s finished after shutdown and could not be kept", record.id)
            return
        if self._fd is None:
            try:
                self.journal_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                fd = os.open(self.journal_path, flags, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                log.warning("tokometer: call %s finished after shutdown, not kept: %s", record.id, exc)
                return
            self._fd = fd  # stays open (and locked) until the process exits
        self._journal_write(line)

    def _adopt_dead_journals(self) -> None:
        """Lock and read every other journal whose owner is gone (its flock can be taken)."""
        try:
            paths = sorted(self.journal_dir.glob("*.jsonl"))
        except OSError:
            return
        for path in paths:
            if path == self.journal_path:
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.fstat(fd).st_nlink == 0:  # replayed and removed meanwhile by another session
                    os.close(fd)
                    continue
                data = _read_fd(fd)
            except OSError:  # owner alive (lock held) or unreadable
                os.close(fd)
                continue
            for left in (DOORBELL_SUFFIX, NO_DOORBELL_SUFFIX):  # its owner is gone: nobody answers
                with contextlib.suppress(OSError):
                    path.with_suffix(left).unlink()
            unreadable: list[bytes] = []
            records = parse_journal(data, path, unreadable)
            if unreadable:
                _keep_unreadable(path, unreadable)
            log.info("tokometer: replaying %d call(s) from %s", len(records), path)
            self._adopted.append(_Adopted(path, fd, records))
            with self._lock:
                self._replayed += len(records)
        self._adopt_set_aside()

    def _adopt_set_aside(self) -> None:
        """Take the lines another version set aside (``<session>.unreadable``: a proxy of another
        version replayed a journal of this one, during an upgrade or a downgrade) that this version
        reads: stored as a dead journal's are. The lines it cannot read either stay set aside."""
        try:
            paths = sorted(self.journal_dir.glob(f"*{UNREADABLE_SUFFIX}"))
        except OSError:
            return
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another proxy taking them: theirs
                if os.fstat(fd).st_nlink == 0 or not os.path.samestat(os.fstat(fd), os.stat(path)):
                    # Taken and stored (removed), or taken under another name, by another proxy
                    # meanwhile: what is at the old name now is a new file, for the next start.
                    raise FileNotFoundError(path)
                data = _read_fd(fd)
                if not any(_readable_line(line) for line in data.split(b"\n")):
                    raise FileNotFoundError(path)  # none for this version: left for the one that wrote them
                # Taken under a name of ours, locked, then read (an older proxy appending from now
                # on makes a new file at the old name); if this proxy dies before storing them,
                # the next start takes them.
                taken = path.with_name(f"{path.stem}.taken-{self.session_id}{UNREADABLE_SUFFIX}")
                os.rename(path, taken)
                unreadable: list[bytes] = []
                records = parse_journal(_read_fd(fd), taken, unreadable)
            except OSError:
                os.close(fd)
                continue
            if unreadable:
                _keep_unreadable(path, unreadable)  # still set aside, at the old name
            log.info("tokometer: storing %d call(s) set aside in %s", len(records), path)
            self._adopted.append(_Adopted(taken, fd, records))
            with self._lock:
                self._replayed += len(records)

    # -- writer -----------------------------------------------------------------------------------

    def _run(self) -> None:
        doorbell = self._doorbell
        assert doorbell is not None
        try:
            self._write_until_stopped(doorbell)
        finally:
            if self._closing:  # close() gave up waiting for this thread: the doorbell is ours to close
                self._close_doorbell()

    def _write_until_stopped(self, doorbell: _Doorbell) -> None:
        attempt = 0
        next_flush = time.monotonic() + self.flush_interval
        priced = True  # calls came in the last round: look again after PRICE_INTERVAL
        while not self._stopping:
            doorbell.wait(self._sleep_for(next_flush - time.monotonic(), priced, doorbell))
            with self._lock:
                self._sleeping = False
            if self._stopping:
                break
            try:
                priced = self._price_pending()
            except Exception:
                priced = True
                log.exception("tokometer: store pricing error")
            with self._lock:
                full = len(self._queue) >= FLUSH_AT_QUEUED
            self._refresh_if_others_stored()  # never raises
            if self._empty_due is not None and time.monotonic() >= self._empty_due:
                self._empty_request_file()
            requested = self._new_flush_request()  # before the flush takes the queue
            if not (full or requested) and time.monotonic() < next_flush:
                continue
            try:
                if requested:  # everything, in as many transactions as it takes
                    ok = self._flush_until(time.monotonic() + REQUESTED_FLUSH_TIMEOUT, ending=False)
                else:
                    ok = self._flush_once(ending=False)
            except Exception:
                log.exception("tokometer: store writer error")
                ok = False
            if ok:
                attempt = 0
                next_flush = time.monotonic() + self.flush_interval
                if requested:
                    self._answer_flush_request(requested)
            else:
                attempt += 1
                next_flush = time.monotonic() + _backoff(attempt, cap=self.flush_interval)

    def _sleep_for(self, until_flush: float, priced: bool, doorbell: _Doorbell) -> float:
        """How long the writer may sleep: PRICE_INTERVAL while calls keep coming; else until the
        next flush is due, or (nothing held) IDLE_WAIT, a submit ringing it awake meanwhile."""
        if self._empty_due is not None:  # the request file may be emptied then (_empty_request_file)
            until_flush = min(until_flush, self._empty_due - time.monotonic())
        until_flush = max(0.0, until_flush)
        if priced:
            return min(PRICE_INTERVAL, until_flush)
        with self._lock:
            if self._unpriced:
                return 0.0
            holding = bool(
                self._queue
                or self._events
                or self._inflight
                or self._after_write
                or self._adopted
                or not (self._migrated and self._session_recorded)
            )
            self._sleeping = True
        wait = until_flush if holding else IDLE_WAIT
        if self._refresher is not None and (self._refresh_requested or self._signal_news(self._signal_key())):
            # A refresh put off (the file held, an error): when its back-off ends.
            wait = min(wait, max(0.01, self._refresh_due - time.monotonic()))
        if self._empty_due is not None:
            wait = min(wait, max(0.0, self._empty_due - time.monotonic()))
        # Without a FIFO readers cannot ring: their flush requests are looked for as before.
        return wait if doorbell.path is not None else min(wait, PRICE_INTERVAL)

    def _close_doorbell(self) -> None:
        """Close the doorbell once, from close() or from the writer thread as it ends."""
        with self._lock:
            doorbell, self._doorbell = self._doorbell, None
        if doorbell is not None:
            doorbell.close()

    def _wake(self) -> None:
        """Wake the writer thread now (any thread)."""
        doorbell = self._doorbell
        if doorbell is not None:
            doorbell.ring()

    def _new_flush_request(self) -> Ticket | None:
        """Where the request file is when readers asked for a flush since the last one, else None."""
        position = _request_position(self.journal_dir)
        if position is None:
            return None
        if position < self._served_request:  # made again (its folder deleted): its tickets start over
            self._served_request = (position[0], 0)
        return position if position > self._served_request and position[1] > 0 else None

    def _answer_flush_request(self, position: Ticket) -> None:
        """Tell the readers waiting in ``request_flush`` that what was queued at ``position`` is stored.

        Also for each dead session's journal this store holds locked (replaying it): readers
        see those as live, and a call DuckDB refuses keeps one locked for the proxy's life.
        ``<session>.served`` first: a ``.flushed`` alone is the answer of an older version.
        """
        self._served_request = position
        for journal in (self.journal_path, *(a.path for a in list(self._adopted))):
            try:
                _write_replacing(journal.with_suffix(SERVED_SUFFIX), f"{position[0]} {position[1]}")
                _write_replacing(journal.with_suffix(FLUSHED_SUFFIX), str(position[1]))
            except OSError as exc:
                log.debug("tokometer: cannot answer a flush request: %s", exc)
        if position[1] >= FLUSH_REQUEST_MAX_BYTES:
            self._empty_request_file()

    def _empty_request_file(self) -> None:
        """Empty the request file and start its next generation once every live journal's answer
        covers all of it and still does FLUSH_REQUEST_EMPTY_AFTER seconds later: the tickets of
        the generation ending are all served, and their readers (an older version's too, which
        compares sizes) have looked at their answers meanwhile. Else look again then.

        Under its exclusive flock: a reader appends and reads the generation under a shared one.
        Not while a writer of a version before generations runs (it answers sizes only)."""
        self._empty_due = None
        try:
            fd = os.open(self._flush_request, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a reader appending: at a later answer
            if not os.path.samestat(os.fstat(fd), os.stat(self._flush_request)):
                return  # replaced meanwhile (its folder deleted)
            position = (_read_number(self.journal_dir / FLUSH_GENERATION) or 0, os.fstat(fd).st_size)
            if position[1] < FLUSH_REQUEST_MAX_BYTES or not self._every_answer_covers(position):
                self._all_served = None
                return
            now = time.monotonic()
            if self._all_served is None or self._all_served[0] != position:
                self._all_served = (position, now)
                self._empty_due = now + FLUSH_REQUEST_EMPTY_AFTER
                return
            if now - self._all_served[1] < FLUSH_REQUEST_EMPTY_AFTER:
                self._empty_due = self._all_served[1] + FLUSH_REQUEST_EMPTY_AFTER
                return
            self._all_served = None
            _write_replacing(self.journal_dir / FLUSH_GENERATION, str(position[0] + 1))
            os.ftruncate(fd, 0)
        except OSError as exc:
            log.debug("tokometer: cannot empty %s: %s", self._flush_request, exc)
        finally:
            os.close(fd)

    def _every_answer_covers(self, position: Ticket) -> bool:
        """Has every live journal's writer answered ``position`` or later (in ``.served``)?"""
        for journal in self.journal_dir.glob("*.jsonl"):
            if _owner_alive(journal):
                answer = _answer_of(journal)
                if answer is None or answer < position:
                    return False
        return True

    # -- other proxies on the same database -----------------------------------------------------

    def _signal_key(self) -> _SignalKey:
        """The signal file as it is now (None: there is none); one stat."""
        try:
            return _signal_key_of(os.stat(self._stored_signal))
        except OSError:
            return None

    def _signal_news(self, key: _SignalKey) -> bool:
        """Did the signal file change since the refresher last ran (another writer stored calls)?

        Any change is news: it grows by a byte a signal, is cut back past STORED_SIGNAL_MAX_BYTES,
        or is made again (its folder deleted). Its modification time tells a file cut back and
        grown to the same size apart."""
        return key is not None and key != self._stored_seen

    def _other_doorbells(self) -> list[Path]:
        """The doorbells of the other live writers of this database: those a writer reads. A
        killed proxy's FIFO (no reader, its journal's flock free) is removed."""
        own = self.journal_path.with_suffix(DOORBELL_SUFFIX)
        try:
            paths = [path for path in self.journal_dir.glob("*" + DOORBELL_SUFFIX) if path != own]
        except OSError:
            return []
        live = []
        for path in paths:
            if _has_reader(path):
                live.append(path)
            elif not _owner_alive(path.with_suffix(".jsonl")):  # not one starting: its FIFO not open yet
                with contextlib.suppress(OSError):
                    path.unlink()
        return live

    def _say_running_without_doorbell(self) -> None:
        """Our FIFO could not be made: a regular file beside our journal tells the other writers
        we run (``_doorbell_less_writers_run``), so that they signal what they store; we cannot be
        rung and look at the signal file every PRICE_INTERVAL instead (``_sleep_for``)."""
        path = self.journal_path.with_suffix(NO_DOORBELL_SUFFIX)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600))
        except OSError as exc:
            log.warning(
                "tokometer: no doorbell and no %s (%s): other proxies on %s do not see this one running,"
                " and it learns their spend only when one signals for another",
                path,
                exc,
                self.db_path,
            )
            return
        self._no_doorbell = path
        log.info(
            "tokometer: no doorbell could be made in %s: this proxy looks for the other proxies' stored"
            " calls every %.1f s",
            self.journal_dir,
            PRICE_INTERVAL,
        )

    def _doorbell_less_writers_run(self) -> bool:
        """Does another writer without a doorbell run (its ``.no-doorbell`` file beside its journal,
        locked)? A dead one's file (its journal's flock free) is removed."""
        own = self.journal_path.with_suffix(NO_DOORBELL_SUFFIX)
        try:
            paths = [path for path in self.journal_dir.glob("*" + NO_DOORBELL_SUFFIX) if path != own]
        except OSError:
            return False
        for path in paths:
            if _owner_alive(path.with_suffix(".jsonl")):
                return True
            with contextlib.suppress(OSError):
                path.unlink()
        return False

    def _signal_stored(self) -> bool:
        """Append a byte to the signal file (cut back to one past STORED_SIGNAL_MAX_BYTES); True
        when done. Changes before ours were made by flushes (or starts) whose data the refresh that
        follows ours reads: only later ones are news. (Flushes signal with the database attached
        read-write, so no other flush signals between our append and our look at the file.)"""
        try:
            fd = os.open(self._stored_signal, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, b".")
                if os.lseek(fd, 0, os.SEEK_CUR) > STORED_SIGNAL_MAX_BYTES:
                    os.ftruncate(fd, 0)
                    os.write(fd, b".")  # a shrink, not an empty file: an earlier version sees news
                key = _signal_key_of(os.fstat(fd))
            finally:
                os.close(fd)
        except OSError as exc:
            log.debug("tokometer: cannot signal stored calls: %s", exc)
            return False
        self._stored_seen = key
        return True

    def _queued_priced(self, failed: Sequence[CallRecord] = ()) -> list[CallRecord]:
        """This session's calls shown to the listeners and not stored: queued and priced, and
        ``failed`` (rejected by this flush, queued again after it)."""
        with self._lock:
            unpriced = {id(r) for r in self._unpriced}
            queued = [r for r in self._queue if id(r) not in unpriced]
        return [*queued, *(r for r in failed if r.session_id == self.session_id)]

    def _after_stored(
        self, con: duckdb.DuckDBPyConnection, stored: bool, failed: list[CallRecord], replayed: bool = False
    ) -> None:
        """After a flush, the file still attached (caller holds ``_flush_lock``): tell the other
        writers when calls were stored, then run the refresher when other writers run, one
        signalled since the last refresh, or this flush stored dead sessions' calls (``replayed``).
        A proxy alone reads nothing back else: its own calls are counted as they finish (a version
        without doorbells is not seen running; a writer whose FIFO could not be made is, by its
        ``.no-doorbell`` file)."""
        others = bool(self._other_doorbells()) or self._doorbell_less_writers_run()
        if stored and others and self._signal_stored():
            self._ring_others = True
        if self._refresher is None:
            return
        key = self._signal_key()
        if others or replayed or self._refresh_requested or self._signal_news(key):
            self._stored_seen, self._refresh_requested = key, False
            self._refresh_attempt, self._refresh_failed_at, self._refresh_due = 0, None, 0.0
            self._refresh(con, self._queued_priced(failed))

    def _ring_other_writers(self) -> None:
        for doorbell in self._other_doorbells():
            _ring(doorbell)

    def _refresh(self, con: duckdb.DuckDBPyConnection, queued: list[CallRecord]) -> None:
        """Run the refresher on ``con`` if one is set (caller holds ``_flush_lock``)."""
        refresher = self._refresher
        if refresher is None:
            return
        try:
            refresher(con, queued)
            self._refresh_failed = False
        except Exception:
            if not self._refresh_failed:
                self._refresh_failed = True
                log.exception("tokometer: reading the other proxies' spend from %s failed", self.db_path)

    def _refresh_if_others_stored(self) -> None:
        """Writer thread: another proxy stored calls since the last refresh: refresh now (one stat
        when none did). Never raises: a failure (the file held, an OSError) is logged once and
        tried again after a back-off, or as soon as the signal file changes again."""
        if self._refresher is None:
            return
        key = self._signal_key()
        if not (self._refresh_requested or self._signal_news(key)):
            return
        if key == self._refresh_failed_at and time.monotonic() < self._refresh_due:
            return
        try:
            with self._flush_lock, self._attached() as con:
                if not self._migrated:  # a new file: the next flush migrates and refreshes
                    self._refresh_put_off(key)
                    return
                self._stored_seen, self._refresh_requested = key, False
                self._refresh(con, self._queued_priced())
        except Exception as exc:  # held by another process, an OSError: after a back-off
            self._refresh_put_off(key)
            self._note_problem(exc, "cannot read the other proxies' spend from")
            return
        self._refresh_attempt, self._refresh_failed_at, self._refresh_due = 0, None, 0.0

    def _refresh_put_off(self, key: _SignalKey) -> None:
        """A refresh could not run: try again after a back-off that doubles up to flush_interval
        (an idle proxy does not poll a file a reader holds for hours)."""
        self._refresh_attempt += 1
        self._refresh_failed_at = key
        self._refresh_due = time.monotonic() + self._refresh_backoff(self._refresh_attempt)

    def _refresh_backoff(self, attempt: int) -> float:
        """``_backoff`` capped at flush_interval, and at least half its current ceiling."""
        ceiling = min(self.flush_interval, 0.02 * 2 ** min(attempt, 10))
        return max(_backoff(attempt, cap=self.flush_interval), ceiling / 2)

    def _price_pending(self) -> bool:
        """Price the calls submitted since last time and hand them to the listeners (once each);
        False when there were none."""
        with self._lock:
            batch, self._unpriced = self._unpriced, []
        if not batch:
            return False
        for record in batch:
            try:
                self.pricer(record)
            except Exception as exc:  # a price problem never loses the call
                self._note_problem(exc, "pricing failed for", f"call {record.id}")
        for fn in list(self._listeners):
            try:
                fn(batch)
            except Exception:
                log.exception("tokometer: store listener %r failed", fn)
        return True

    def _flush_until(self, deadline: float, *, ending: bool) -> bool:
        attempt = 0
        left_before: int | None = None
        while True:
            try:
                if self._flush_once(ending=ending):
                    with self._lock:
                        left = len(self._queue)
                    # Done; or only calls DuckDB rejects are left (they stay queued and journaled).
                    if left == 0 or (left_before is not None and left >= left_before):
                        return True
                    left_before, attempt = left, 0
                    continue
            except Exception:
                log.exception("tokometer: store flush error")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(_backoff(attempt), remaining))
            attempt += 1

    def _flush_once(self, *, ending: bool) -> bool:
        """One attempt to store everything queued; False if the database could not be written."""
        self._price_pending()
        with self._flush_lock:
            with self._lock:
                self._check_journal()
                # A bounded batch: one transaction holds DuckDB's lock, and readers wait for it.
                batch, self._queue = _take_shown(self._queue, self._unpriced, MAX_ROWS_PER_FLUSH)
                lines = {r.id: line for r in batch if (line := self._lines.pop(r.id, None)) is not None}
                events, self._events = self._events, []
                self._inflight = len(batch)
            adopted = list(self._adopted)
            replay = [r for a in adopted for r in a.records]
            if not (batch or events or replay or ending or not self._migrated or not self._session_recorded):
                with self._lock:
                    self._inflight = 0
                if self._after_write:  # nothing to write: the database is read all the same
                    self._run_after_write()
                return True
            for record in replay:
                if record.id not in lines:
                    with contextlib.suppress(Exception):  # without a line it is bound value by value
                        lines[record.id] = record.to_json()
            # Replayed calls are not priced yet, nor a call whose pricing failed (tried again), nor
            # one this session's crashed process left in its journal.
            for record in (*replay, *(r for r in batch if r.price_status is None)):
                try:
                    self.pricer(record)
                except Exception as exc:  # never lose the batch over a price
                    self._note_problem(exc, "pricing failed for", f"call {record.id}")
            try:
                try:
                    failed = self._write([*replay, *batch], ending, events, lines, replayed=bool(replay))
                finally:
                    if self._ring_others:  # the file is detached now: they can read it at once
                        self._ring_others = False
                        self._ring_other_writers()
            except Exception as exc:
                with self._lock:
                    self._queue[:0] = batch
                    self._lines.update((r.id, lines[r.id]) for r in batch if r.id in lines)
                    self._events[:0] = events
                    self._inflight = 0
                self._note_problem(exc)
                return False
            stored = [r for r in batch if r.id not in failed]
            replayed = [r for r in replay if r.id not in failed]
            for a in adopted:
                a.records = [r for r in a.records if r.id in failed]
                if not a.records:
                    with contextlib.suppress(OSError):
                        a.path.unlink()
                    for answer in (FLUSHED_SUFFIX, SERVED_SUFFIX):
                        with contextlib.suppress(OSError):
                            a.path.with_suffix(answer).unlink()
                    os.close(a.fd)
                    self._adopted.remove(a)
            with self._lock:
                self._queue[:0] = [r for r in batch if r.id in failed]  # bound value by value next time
                self._inflight = 0
                self._stored += len(stored) + len(replayed)
                if not (self._queue or self._journaled_only) and self._fd is not None and self._journal_bytes:
                    try:
                        os.ftruncate(self._fd, 0)
                        self._journal_bytes = 0
                    except OSError as exc:
                        log.warning("tokometer: could not truncate journal: %s", exc)
                elif self._journal_bytes > JOURNAL_COMPACT_BYTES:
                    self._compact_journal()
            if not failed:
                self._recovered()
            if self._after_write:
                self._run_after_write()
        return True

    def after_next_write(self, fn: Callable[[duckdb.DuckDBPyConnection, list[CallRecord]], None]) -> None:
        """Call ``fn(con, queued)`` once, in the writer thread, after its next flush:
        ``con`` reads the database, ``queued`` are the calls priced (and shown to the listeners)
        but not in it yet. Nothing else writes or prices meanwhile. Used to load what a start
        could not read (the file was held by another process)."""
        with self._lock:
            self._after_write.append(fn)
        self._wake()

    def _run_after_write(self) -> None:
        """The ``after_next_write`` callbacks (the caller holds ``_flush_lock``)."""
        with self._lock:
            callbacks, self._after_write = self._after_write, []
            unpriced = {id(r) for r in self._unpriced}
            queued = [r for r in self._queue if id(r) not in unpriced]
        try:
            with self._attached(read_only=True) as con:
                for fn in callbacks:
                    try:
                        fn(con, queued)
                    except Exception:
                        log.exception("tokometer: a callback after a write failed")
        except duckdb.Error:  # held by someone else again: after the next write, then
            with self._lock:
                self._after_write[:0] = callbacks

    def unstored_replay(self, con: duckdb.DuckDBPyConnection) -> list[CallRecord]:
        """Calls of dead sessions' journals that are not in the database (``con``) yet, once each.

        A journal holds calls stored already too (it is emptied only when nothing is queued),
        and a call twice when a stream was journaled at its final event: the later line wins.
        Only from inside a ``read`` query, where no flush can run, so the database and this
        list hold each call exactly once. Nothing reports these calls to the listeners.
        """
        latest = {record.id: record for adopted in self._adopted for record in adopted.records}
        if not latest:
            return []
        stored = con.execute(
            "SELECT id FROM calls WHERE id IN (SELECT unnest($1::VARCHAR[]))", [list(latest)]
        ).fetchall()
        for (call_id,) in stored:
            latest.pop(call_id, None)
        return list(latest.values())

    def read[T](self, query: Callable[[duckdb.DuckDBPyConnection], T], timeout: float = 5.0) -> T:
        """Run ``query`` on the database from this process, between two flushes (any thread).

        A second DuckDB open of the file in this process would conflict with the writer's.
        """

        def attempt_once() -> T:
            with self._flush_lock, self._attached(read_only=True) as con:
                return query(con)

        return _retry_while_busy(attempt_once, timeout)

    @contextmanager
    def _attached(self, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """The database file, attached to the store's long-lived DuckDB instance for one flush.

        The file's lock is held from ATTACH to DETACH only, so other processes can read it in
        between. The caller holds ``_flush_lock``.
        """
        if self._instance is None:
            self._instance = duckdb.connect(":memory:", config={"threads": 1})
        con = self._instance
        existed = self.db_path.exists()
        if not (existed or read_only):  # its folder may have been deleted under us
            with contextlib.suppress(OSError):
                self.db_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = str(self.db_path).replace("'", "''")
        try:
            con.execute(f"ATTACH '{path}' AS {_ALIAS}" + (" (READ_ONLY)" if read_only else ""))
        except duckdb.Error as exc:
            if not (isinstance(exc, duckdb.IOException) and "Could not set lock" in str(exc)):
                self._drop_instance()  # not another process's lock: start from a clean instance
            raise
        try:
            if not existed:
                with contextlib.suppress(OSError):
                    os.chmod(self.db_path, 0o600)
            with contextlib.suppress(OSError):
                st = os.stat(self.db_path)
                # Created now (deleted under us) or replaced by another file: migrate it.
                if not existed or (st.st_dev, st.st_ino) != self._db_identity:
                    self._db_identity = (st.st_dev, st.st_ino)
                    self._migrated = self._session_recorded = False
            con.execute(f"USE {_ALIAS}")
            yield con
        finally:
            try:
                # A transaction left open (an exception between BEGIN and COMMIT) would keep the
                # file open and locked past DETACH: end it first.
                with contextlib.suppress(duckdb.Error):
                    con.rollback()
                con.execute("USE memory")
                con.execute(f"DETACH {_ALIAS}")
            except duckdb.Error as exc:  # a fresh instance next time; never keep the file locked
                log.warning("tokometer: could not detach %s: %s", self.db_path, exc)
                self._drop_instance()

    def _drop_instance(self) -> None:
        """Close the writer's DuckDB instance (the caller holds ``_flush_lock``)."""
        instance, self._instance = self._instance, None
        if instance is not None:
            with contextlib.suppress(duckdb.Error):
                instance.close()

    def _write(
        self,
        records: list[CallRecord],
        ending: bool,
        events: Sequence[Event] = (),
        lines: Mapping[str, str] | None = None,
        *,
        replayed: bool = False,
    ) -> set[str]:
        """Write in one transaction; if it fails, row by row. Returns the ids that would not go in.
        ``replayed``: ``records`` hold dead sessions' calls (the other sessions' spend).

        ``lines`` are the calls' journal lines by id (see ``_insert``); row by row binds each
        value from the record instead, so a line DuckDB cannot read never loses its call.
        Events go in with the first transaction; they are idempotent (INSERT OR IGNORE by id).
        """
        with self._attached() as con:
            if not self._migrated:
                migrate(con)
                self._migrated = True
            try:
                try:
                    self._transaction(con, records, ending, events, lines, ignore_existing=False)
                except duckdb.ConstraintException:  # a call stored already: a journal replayed
                    self._transaction(con, records, ending, events, lines, ignore_existing=True)
            except Exception as exc:
                # Only a call DuckDB rejects is worth isolating, not a file it cannot write
                # (a full disk): row by row, that costs ~7 ms a call, whatever the timeout.
                if is_busy_error(exc) or not records or _cannot_write(exc):
                    raise
                failed = self._write_one_by_one(con, records, ending, events)
                self._after_stored(
                    con, len(failed) < len(records), [r for r in records if r.id in failed], replayed
                )
                return failed
            self._session_recorded = True
            self._after_stored(con, bool(records), [], replayed)
            return set()

    def _transaction(
        self,
        con: duckdb.DuckDBPyConnection,
        records: list[CallRecord],
        ending: bool,
        events: Sequence[Event],
        lines: Mapping[str, str] | None,
        *,
        ignore_existing: bool,
    ) -> None:
        """Session row, calls, events (and the session's end) in one transaction; rolled back on error."""
        try:
            con.begin()
            self._write_session(con)
            self._insert(con, records, ignore_existing=ignore_existing, lines=lines)
            if events:
                insert_events(con, events)
            if ending:
                self._end_session(con)
            con.commit()
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.rollback()
            raise

    def _write_one_by_one(
        self,
        con: duckdb.DuckDBPyConnection,
        records: list[CallRecord],
        ending: bool,
        events: Sequence[Event] = (),
    ) -> set[str]:
        """Isolate the calls DuckDB rejects so the others are stored (the rejected stay queued)."""
        self._write_session(con)
        self._session_recorded = True
        if events:
            try:
                insert_events(con, events)
            except Exception as exc:  # an event is worth less than a call: log and go on
                self._note_problem(exc, "events rejected by")
        failed: set[str] = set()
        for record in records:
            try:
                self._insert(con, [record], ignore_existing=True)
            except Exception as exc:
                failed.add(record.id)
                self._note_problem(exc, "rejected by", f"call {record.id}")
        if ending:
            self._end_session(con)
        return failed

    def _write_session(self, con: duckdb.DuckDBPyConnection) -> None:
        if self._session_recorded:
            return
        con.execute(
            "INSERT OR IGNORE INTO sessions (session_id, started_at, ended_at, pid, hostname, version) "
            "VALUES (?, ?, NULL, ?, ?, ?)",
            [self.session_id, self._started_at, os.getpid(), socket.gethostname(), self.version],
        )

    def _end_session(self, con: duckdb.DuckDBPyConnection) -> None:
        con.execute("UPDATE sessions SET ended_at = ? WHERE session_id = ?", [_now(), self.session_id])

    @staticmethod
    def _insert(
        con: duckdb.DuckDBPyConnection,
        records: list[CallRecord],
        *,
        ignore_existing: bool,
        lines: Mapping[str, str] | None = None,
    ) -> None:
        """Insert ``records``: from their journal lines when all have one, else value by value."""
        for i in range(0, len(records), MAX_ROWS_PER_INSERT):
            chunk = records[i : i + MAX_ROWS_PER_INSERT]
            texts = [lines.get(r.id) for r in chunk] if lines else None
            if texts is not None and None not in texts:
                prices = [[getattr(r, c) for r in chunk] for c in _PRICE_COLUMNS]
                con.execute(_insert_lines_sql(con, ignore_existing=ignore_existing), [texts, *prices])
                continue
            columns = [list(column) for column in zip(*(_row(r) for r in chunk), strict=True)]
            con.execute(_insert_sql(con, ignore_existing=ignore_existing), columns)

    # -- problems are logged once, not per retry ---------------------------------------------------

    def _note_problem(self, exc: BaseException, what: str = "cannot write", subject: str = "") -> None:
        """Log a problem the first time it is seen (``subject``, e.g. a call id, is not part of it)."""
        if is_busy_error(exc):
            now = time.monotonic()
            if self._busy_since is None:
                self._busy_since = now
            elif not self._busy_logged and now - self._busy_since >= BUSY_LOG_AFTER:
                self._busy_logged = True
                log.warning(
                    "tokometer: %s locked by another process for %.0f s; calls are kept and retried",
                    self.db_path,
                    now - self._busy_since,
                )
            return
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        summary = f"{type(exc).__name__}: {first_line}"
        if f"{what} {summary}" not in self._problems:
            self._problems.add(f"{what} {summary}")
            who = f"{subject} " if subject else ""
            log.warning(
                "tokometer: %s%s %s (%s); calls are kept and retried", who, what, self.db_path, summary
            )

    def _recovered(self) -> None:
        if self._problems or self._busy_logged:
            log.info("tokometer: writing to %s works again", self.db_path)
        self._problems.clear()
        self._busy_since = None
        self._busy_logged = False
