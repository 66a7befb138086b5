"""Small JSON files next to the database that say what the running proxies have metered.

``scripts/spend statusline`` reads them instead of DuckDB, so a shell prompt never waits for
the database (nor locks it). Each proxy keeps a ``LiveState``: fed every priced call
(``record``, a store listener) and the budgets' status (``set_budgets``), it rewrites its own
file, ``<db>.live/<session_id>.json`` (``session_live_path``), atomically (temp file +
``os.replace``, mode 0600) at most every ``min_interval`` seconds, from a daemon thread, and
once more at ``close``. Several proxies may write one database: ``read_combined`` reads every
file (and ``<db>.live.json``, the single file proxies before this layout wrote) and
``combine`` makes one document of the running proxies' (see there).

The JSON (``"version": 1``; fields are only ever added)::

    {
      "version": 1,
      "running": true,                  # false once the proxy closed it
      "pid": 4242,                      # the proxy's pid
      "pid_start": 1234567,             # its start time (Linux /proc/PID/stat field 22) or null
      "session_id": "20261128T152500Z-3f9a",
      "started_at": "2026-11-28T15:25:00+00:00",
      "updated_at": "2026-11-28T15:40:12.345678+00:00",  # when this file was written
      "last_call_at": "2026-11-28T15:40:11+00:00" | null,
      "session": {"calls": 42, "refused_calls": 3, "unpriced_calls": 0, "cost_usd": "1.2345",
                  "input_tokens": 123456, "cache_read_tokens": 2000, "output_tokens": 7890},
      "today": {"date": "2026-11-28",   # UTC day
                "environments": {"development": {"calls": 18, "refused_calls": 1,
                                                 "unpriced_calls": 0, "cost_usd": "0.42"}}},
      "budgets": [{"scope_kind": "environment", "scope_name": "development",
                   "cap_usd": "150", "period": "month",
                   "period_start": "2026-11-01T00:00:00+00:00",
                   "period_end": "2026-12-01T00:00:00+00:00",
                   "spent_usd": "93.1", "fraction": 0.6207, "alert_at": [0.5, 0.8],
                   "exhausted": false}],
      "budgets_updated_at": "..." | null,
      "today_unstored": {"development": {"calls": 2, "refused_calls": 0,   # of "today": this
                         "unpriced_calls": 0, "cost_usd": "0.02"}}        # proxy's calls not in
    }                                                                     # the database yet

Money is an exact decimal string. ``today`` counts the calls of the UTC day: the database's
(at start, via ``load_baseline``, and again after each of the proxy's flushes and when another
proxy stored calls, via ``rebase``) plus this proxy's calls not stored yet, which
``today_unstored`` repeats; a reader should treat a ``today.date`` other than its own UTC date
as nothing spent yet today. Readers: ``read``, ``read_combined``, ``combine``, ``proxy_alive``.
This module's readers import only the standard library.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

# Not ``typing.TYPE_CHECKING``: the status line imports this module on every shell prompt,
# and typing (like logging) costs milliseconds to import. Type checkers treat this the same.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    import duckdb

    from addon.record import CallRecord

VERSION = 1
SUFFIX = ".live.json"  # the single file of proxies before one file per proxy (still read)
DIR_SUFFIX = ".live"  # <db>.live/<session_id>.json: one file per proxy
_COUNTS = ("cost_usd", "calls", "refused_calls", "unpriced_calls")
REFUSED_ACTIONS = ("blocked", "over_budget", "rate_limited")


def _log() -> Any:
    import logging

    return logging.getLogger("tokometer")


def live_path(db_path: Path | str) -> Path:
    """``<db>.live.json`` next to the database file: the one file proxies before one file per
    proxy wrote (``read_combined`` still reads it; ``--live PATH`` reads any one file)."""
    db_path = Path(db_path)
    return db_path.with_name(db_path.name + SUFFIX)


def live_dir(db_path: Path | str) -> Path:
    """``<db>.live/``: the folder of the running proxies' live files."""
    db_path = Path(db_path)
    return db_path.with_name(db_path.name + DIR_SUFFIX)


def session_live_path(db_path: Path | str, session_id: str) -> Path:
    """``<db>.live/<session_id>.json``, the live file of one proxy (its session id made safe)."""
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in session_id)
    return live_dir(db_path) / f"{safe or '_'}.json"


def process_start(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), else None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    try:  # the command name (field 2) may hold spaces and parentheses: split after the last ")"
        return int(data[data.rindex(b")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


def proxy_alive(state: Mapping[str, Any]) -> bool:
    """Is the proxy that wrote ``state`` still running (same pid, same process)?"""
    if not state.get("running", False):
        return False
    pid = state.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, someone else's
    except OSError:
        return False
    recorded = state.get("pid_start")
    if isinstance(recorded, int):
        current = process_start(pid)
        if current is not None and current != recorded:
            return False  # the pid was reused by another process
    return True


def read(path: Path | str) -> dict[str, Any] | None:
    """The live state at ``path``, or None if missing, unreadable or not version 1-compatible."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("version"), int):
        return None
    return data


def read_all(db_path: Path | str) -> list[dict[str, Any]]:
    """Every live file of ``db_path`` that can be read: one per proxy, and the older single file."""
    paths = [live_path(db_path)]
    with contextlib.suppress(OSError):
        paths += sorted(live_dir(db_path).glob("*.json"))
    return [state for path in paths if (state := read(path)) is not None]


def remove_dead(db_path: Path | str) -> None:
    """Delete the per-proxy live files whose proxy is gone (a proxy starting does this)."""
    with contextlib.suppress(OSError):
        for path in live_dir(db_path).glob("*.json"):
            state = read(path)
            if state is None or not proxy_alive(state):
                with contextlib.suppress(OSError):
                    path.unlink()


def _dec(value: Any) -> Decimal:
    try:
        return Decimal(str(value))
    except ArithmeticError:
        return Decimal(0)


def _env_counts(entries: Any) -> dict[str, dict[str, Decimal]]:
    found: dict[str, dict[str, Decimal]] = {}
    if isinstance(entries, Mapping):
        for env, entry in entries.items():
            if isinstance(entry, Mapping):
                found[str(env)] = {name: _dec(entry.get(name, 0)) for name in _COUNTS}
    return found


def _combined_today(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Today's spend per environment of several running proxies, exact.

    Each file's ``today`` is the database's figure when that proxy last read it plus its own calls
    not stored yet (``today_unstored``). The database's figure only grows during a day, so the
    largest of the files' is the latest: that, plus every proxy's unstored calls. (Summing the
    files would count the stored calls once per proxy.) A file without ``today_unstored`` (an
    older proxy) counts as a database figure.
    """
    day = max(str((s.get("today") or {}).get("date") or "") for s in states)
    stored: dict[str, dict[str, Decimal]] = {}
    unstored: dict[str, dict[str, Decimal]] = {}
    for state in states:
        today = state.get("today") or {}
        if today.get("date") != day:
            continue
        mine = _env_counts(state.get("today_unstored"))
        for env, counts in _env_counts(today.get("environments")).items():
            extra = mine.get(env, {})
            best = stored.setdefault(env, dict.fromkeys(_COUNTS, Decimal(0)))
            own = unstored.setdefault(env, dict.fromkeys(_COUNTS, Decimal(0)))
            for name in _COUNTS:
                best[name] = max(best[name], counts[name] - extra.get(name, Decimal(0)))
                own[name] += extra.get(name, Decimal(0))
    environments = {
        env: {
            name: str(stored[env][name] + unstored[env][name])
            if name == "cost_usd"
            else int(stored[env][name] + unstored[env][name])
            for name in ("calls", "refused_calls", "unpriced_calls", "cost_usd")
        }
        for env in sorted(stored)
    }
    return {"date": day, "environments": environments}


def _period_start(item: Mapping[str, Any]) -> datetime:
    """A budget entry's period start (the earliest possible when it cannot be read)."""
    try:
        return _utc(datetime.fromisoformat(str(item.get("period_start"))))
    except (TypeError, ValueError):
        return datetime.min.replace(tzinfo=UTC)


def _combined_budgets(states: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each budget (scope, period) once: the entry of the latest period start (an idle proxy's
    file may still hold a period that is over), of the proxy that counts the most spent in it
    (each counts its own calls and the others' stored ones)."""
    best: dict[tuple[Any, ...], dict[str, Any]] = {}
    for state in states:
        for item in state.get("budgets") or ():
            if not isinstance(item, Mapping):
                continue
            key = (item.get("scope_kind"), item.get("scope_name"), item.get("period"))
            found = best.get(key)
            if found is None or (_period_start(item), _dec(item.get("spent_usd", 0))) > (
                _period_start(found),
                _dec(found.get("spent_usd", 0)),
            ):
                best[key] = dict(item)
    return list(best.values())


def combine(states: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """One live document for the proxies of ``states`` that still run (``proxy_alive``).

    None without any state. When none runs: the one updated last (readers see it is not running).
    One running: its own. Several: the newest's document (its pid, session), with ``today`` (see
    ``_combined_today``) and ``budgets`` of them all, ``last_call_at`` / ``updated_at`` the
    latest, ``today_unstored`` summed, and ``proxies`` / ``session_ids`` naming them.
    """
    if not states:
        return None
    alive = [state for state in states if proxy_alive(state)]
    if not alive:
        return dict(max(states, key=lambda state: str(state.get("updated_at") or "")))
    newest = max(alive, key=lambda state: str(state.get("started_at") or ""))
    if len(alive) == 1:
        return dict(newest) | {"proxies": 1, "session_ids": [newest.get("session_id")]}
    unstored: dict[str, dict[str, Decimal]] = {}
    for state in alive:
        for env, counts in _env_counts(state.get("today_unstored")).items():
            total = unstored.setdefault(env, dict.fromkeys(_COUNTS, Decimal(0)))
            for name in _COUNTS:
                total[name] += counts[name]

    def latest(field: str) -> Any:
        return max((str(s.get(field)) for s in alive if s.get(field)), default=None)

    return dict(newest) | {
        "today": _combined_today(alive),
        "today_unstored": {
            env: {name: str(v) if name == "cost_usd" else int(v) for name, v in counts.items()}
            for env, counts in sorted(unstored.items())
        },
        "budgets": _combined_budgets(alive),
        "budgets_updated_at": latest("budgets_updated_at"),
        "last_call_at": latest("last_call_at"),
        "updated_at": latest("updated_at"),
        "proxies": len(alive),
        "session_ids": sorted(str(s.get("session_id")) for s in alive),
    }


def read_combined(db_path: Path | str) -> dict[str, Any] | None:
    """The live state of every proxy running on ``db_path`` as one document (``combine``)."""
    return combine(read_all(db_path))


def _iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    return (ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)).isoformat()


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def today_baseline(con: duckdb.DuckDBPyConnection, now: datetime) -> dict[str, tuple[Decimal, int, int, int]]:
    """Today's (UTC) spend per environment in the database:
    ``{env: (cost, calls, refused_calls, unpriced_calls)}`` (unpriced: with usage, no known price).

    For ``LiveState.load_baseline`` at start; an empty or new database gives ``{}``.
    """
    import duckdb

    from addon.record import CALL_ROW_SQL  # not at the top: the status line imports this module

    start = _utc(now).replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    refused = ", ".join(f"'{a}'" for a in REFUSED_ACTIONS)
    try:
        rows = con.execute(
            f"SELECT environment, coalesce(sum(cost_usd), 0), count(*) FILTER (WHERE {CALL_ROW_SQL}), "
            f"count(*) FILTER (WHERE {CALL_ROW_SQL} AND action IN ({refused})), "
            f"count(*) FILTER (WHERE cost_usd IS NULL AND action NOT IN ({refused}) "
            "AND (input_tokens IS NOT NULL OR output_tokens IS NOT NULL)) "
            "FROM calls WHERE ts >= ? GROUP BY environment",
            [start],
        ).fetchall()
    except (duckdb.CatalogException, duckdb.BinderException):
        return {}
    return {
        str(env): (Decimal(str(cost)), int(calls), int(ref), int(unpriced))
        for env, cost, calls, ref, unpriced in rows
    }


class LiveState:
    """The proxy's side: counts calls, writes ``path`` (see the module docstring). Thread-safe."""

    read = staticmethod(read)

    def __init__(
        self,
        path: Path | str,
        session_id: str,
        *,
        min_interval: float = 0.5,
        pid: int | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.path = Path(path)
        self.session_id = session_id
        self.min_interval = min_interval
        self.pid = os.getpid() if pid is None else pid
        self._pid_start = process_start(self.pid)
        self._now = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._started_at = self._now()
        self._calls = 0
        self._refused = 0
        self._unpriced = 0
        self._cost = Decimal(0)
        self._tokens = {"input_tokens": 0, "cache_read_tokens": 0, "output_tokens": 0}
        self._last_call: datetime | None = None
        self._day: date = self._started_at.astimezone(UTC).date()
        # env -> [cost, calls, refused, unpriced] of the UTC day: the database's figure when last
        # read, and this proxy's calls counted since that are not in it (``today`` is their sum)
        self._stored: dict[str, list[Any]] = {}
        self._unstored: dict[str, list[Any]] = {}
        self._budgets: list[dict[str, Any]] = []
        # How a calling shell's variables book its calls (see set_claimable); None: not said.
        self._claimable: dict[str, Any] | None = None
        self._budgets_at: datetime | None = None
        self._running = True
        self._dirty = True
        self._last_write = 0.0  # time.monotonic() of the last write
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._write_failed = False

    # -- feeding -----------------------------------------------------------------------------

    def load_baseline(self, today: Mapping[str, Sequence[Any]], day: date) -> None:
        """Today's spend per environment already in the database (``today_baseline``), for UTC ``day``.

        Replaces what was counted for that day; call it at start, before calls are recorded.
        """
        self.rebase(today, day)

    def rebase(
        self, today: Mapping[str, Sequence[Any]], day: date, unstored: Iterable[CallRecord] = ()
    ) -> None:
        """The database's figure for UTC ``day`` read again (``today_baseline``), and this proxy's
        calls counted already that are not in it yet (``unstored``): they replace what was counted.

        The store's writer calls this after a flush (nothing is priced meanwhile), so a reader
        combining several proxies' files counts each stored call once (``combine``).
        """
        with self._lock:
            self._day = day
            self._stored, self._unstored = {}, {}
            for env, values in today.items():
                cost, calls, *rest = values
                refused, unpriced = (*(int(n) for n in rest), 0, 0)[:2]
                self._stored[env] = [Decimal(cost), int(calls), refused, unpriced]
            for record in unstored:
                if _utc(record.ts).date() == day:
                    self._count_today(record)
            self._dirty = True
            self._wake.notify()

    def _count_today(self, record: CallRecord) -> None:
        """Add a call of ``self._day`` to this proxy's unstored calls (lock held)."""
        refused = record.action in REFUSED_ACTIONS
        cost = record.cost_usd
        unpriced = cost is None and not refused and record.usage is not None
        entry = self._unstored.setdefault(record.environment or "", [Decimal(0), 0, 0, 0])
        from addon.record import is_call_row  # see today_baseline

        call = is_call_row(record)  # a part of a call adds its cost, not a call
        entry[0] += cost or 0
        entry[1] += call
        entry[2] += refused and call
        entry[3] += unpriced

    def record(self, records: Iterable[CallRecord]) -> None:
        """Count priced calls (a store listener: ``store.add_listener(live.record)``)."""
        from addon.record import is_call_row  # see today_baseline

        with self._lock:
            for record in records:
                refused = record.action in REFUSED_ACTIONS
                cost = record.cost_usd
                call = is_call_row(record)  # a part of a call adds its cost, not a call
                self._calls += call
                self._refused += refused and call
                unpriced = cost is None and not refused and record.usage is not None
                if cost is not None:
                    self._cost += cost
                self._unpriced += unpriced
                self._tokens["input_tokens"] += record.input_tokens or 0
                self._tokens["cache_read_tokens"] += record.cache_read_tokens or 0
                self._tokens["output_tokens"] += record.output_tokens or 0
                ts = _utc(record.ts)
                if self._last_call is None or ts > self._last_call:
                    self._last_call = ts
                day = ts.date()
                if day > self._day:  # a new UTC day: yesterday's spend no longer counts as today's
                    self._day, self._stored, self._unstored = day, {}, {}
                if day == self._day:
                    self._count_today(record)
            self._dirty = True
            self._wake.notify()

    def set_claimable(
        self,
        declared: Sequence[str] | None,
        default: str,
        *,
        variables: Sequence[str] = ("APP_ENV",),
        fallback: str | None = None,
    ) -> None:
        """How the proxy books a calling shell by its variables (addon.attribution), for the status
        line to do the same: the ``variables`` it reads (in order; none: the lookup is off), the
        environments they may name (``declared``; None: any, nothing being declared; the
        ``default`` too), and the environment it books a call to when none of them names one of
        those (``fallback``: the proxy's TOKOMETER_ENVIRONMENT or hosts rule, else ``default``)."""
        with self._lock:
            self._claimable = {
                "declared": None if declared is None else sorted(declared),
                "default_environment": default,
                "variables": list(variables),
                "fallback_environment": default if fallback is None else fallback,
            }
            self._dirty = True
            self._wake.notify()

    def set_budgets(self, status: Sequence[Mapping[str, Any]]) -> None:
        """The budgets in force and their spend (``BudgetTracker.status(now)``)."""
        budgets = []
        for item in status:
            fraction = item.get("fraction")
            budgets.append(
                {
                    "scope_kind": item["scope_kind"],
                    "scope_name": item["scope_name"],
                    "cap_usd": str(item["cap"]),
                    "period": item["period"],
                    "period_start": _iso(item["start"]),
                    "period_end": _iso(item["end"]),
                    "spent_usd": str(item["spent"]),
                    "fraction": None if fraction is None else round(float(fraction), 4),
                    "alert_at": [float(a) for a in item.get("alert_at", ())],
                    "exhausted": bool(item.get("exhausted", False)),
                }
            )
        with self._lock:
            self._budgets = budgets
            self._budgets_at = self._now()
            self._dirty = True
            self._wake.notify()

    # -- output ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The document as it would be written now."""
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> dict[str, Any]:
        today: dict[str, list[Any]] = {}
        for counts in (self._stored, self._unstored):
            for env, values in counts.items():
                entry = today.setdefault(env, [Decimal(0), 0, 0, 0])
                for i, value in enumerate(values):
                    entry[i] += value
        return {
            "version": VERSION,
            "running": self._running,
            "pid": self.pid,
            "pid_start": self._pid_start,
            "session_id": self.session_id,
            "started_at": _iso(self._started_at),
            "updated_at": _iso(self._now()),
            "last_call_at": _iso(self._last_call),
            "session": {
                "calls": self._calls,
                "refused_calls": self._refused,
                "unpriced_calls": self._unpriced,
                "cost_usd": str(self._cost),
                **self._tokens,
            },
            "today": {
                "date": self._day.isoformat(),
                "environments": {
                    env: {
                        "calls": calls,
                        "refused_calls": refused,
                        "unpriced_calls": unpriced,
                        "cost_usd": str(cost),
                    }
                    for env, (cost, calls, refused, unpriced) in sorted(today.items())
                },
            },
            "budgets": [dict(b) for b in self._budgets],
            "budgets_updated_at": _iso(self._budgets_at),
            "claimable_environments": self._claimable,
            "today_unstored": {
                env: {
                    "calls": calls,
                    "refused_calls": refused,
                    "unpriced_calls": unpriced,
                    "cost_usd": str(cost),
                }
                for env, (cost, calls, refused, unpriced) in sorted(self._unstored.items())
            },
        }

    def flush(self, min_interval: float | None = None) -> bool:
        """Write the file if something changed and ``min_interval`` passed since the last write.

        Returns True if it wrote. ``min_interval`` defaults to the instance's (0.5 s).
        """
        interval = self.min_interval if min_interval is None else min_interval
        with self._lock:
            if not self._dirty or time.monotonic() - self._last_write < interval:
                return False
            document = self._snapshot()
            self._dirty = False
            self._last_write = time.monotonic()
        ok = self._write(document)
        if not ok:
            with self._lock:
                self._dirty = True
        return ok

    def _write(self, document: dict[str, Any]) -> bool:
        data = json.dumps(document, separators=(",", ":")).encode()
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, 0o600)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if not self._write_failed:
                self._write_failed = True
                _log().warning("tokometer: cannot write the live state %s: %s", self.path, exc)
            return False
        if self._write_failed:
            self._write_failed = False
            _log().info("tokometer: writing the live state %s works again", self.path)
        return True

    # -- background writer -------------------------------------------------------------------

    def start(self) -> None:
        """Write now, then keep the file current from a daemon thread (every ``min_interval`` at most)."""
        self.flush(0)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tokometer-live", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._dirty and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                wait = self._last_write + self.min_interval - time.monotonic()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
            self.flush()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread and write the final state, marked ``"running": false``."""
        with self._lock:
            self._stopping = True
            self._running = False
            self._dirty = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush(0)
