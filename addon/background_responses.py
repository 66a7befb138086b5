"""OpenAI background responses started through the proxy and not yet retrieved.

A Responses call with ``"background": true`` is answered ``queued``, without usage; the usage
comes with a later ``GET /v1/responses/{id}``, which is billed as the call that started it.
Which ids are pending, and the attribution of the call that started each, is kept in a small
file beside the journals (owner only), so a script reload, a restart or another proxy on the
same database still bills the retrieval. Each change is read-modify-write under a lock: a
background call is rare, and a change costs well under a millisecond.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("tokometer")

FILE_NAME = "background-responses.json"
MAX_PENDING = 10_000  # the oldest are forgotten first
MAX_AGE_S = 30 * 24 * 3600  # a response not retrieved within 30 days is forgotten


class PendingResponses:
    """``{response id: attribution of the call that started it}``, kept in ``path`` (or memory)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._pending: dict[str, dict[str, Any]] = {}
        self._seen: tuple[int, int] | None = None  # (mtime_ns, size) of the file when last read

    def __bool__(self) -> bool:
        """Might a GET be a retrieval? Some are pending here, or the list is shared (another
        proxy on the same database may have added one since)."""
        return self.path is not None or bool(self._pending)

    def get(self, response_id: str) -> dict[str, Any] | None:
        """The attribution of a pending response; the file is read again when it has changed."""
        entry = self._pending.get(response_id)
        if entry is None and self.path is not None and self._stat() != self._seen:
            self.load()
            entry = self._pending.get(response_id)
        return None if entry is None else entry["started"]

    def _stat(self) -> tuple[int, int] | None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def add(self, response_id: str, started: dict[str, Any]) -> None:
        """A background response started: remember who started it."""
        with self._changing() as pending:
            pending.pop(response_id, None)
            pending[response_id] = {"at": time.time(), "started": started}
            while len(pending) > MAX_PENDING:
                del pending[next(iter(pending))]

    def claim(self, response_id: str) -> bool:
        """Take a pending response off the list: True for the one caller that took it (it bills)."""
        with self._changing() as pending:
            return pending.pop(response_id, None) is not None

    def load(self) -> None:
        """Read the file (at start, after a reload, when the database changes)."""
        if self.path is None:
            return
        with self._locked():
            self._seen = self._stat()
            self._pending = self._read()

    @contextlib.contextmanager
    def _changing(self) -> Iterator[dict[str, dict[str, Any]]]:
        """The current list to change in place; written back (atomically) afterwards."""
        if self.path is None:
            yield self._pending
            return
        with self._locked():
            pending = self._read()
            yield pending
            self._pending = pending
            self._write(pending)
            self._seen = self._stat()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        assert self.path is not None
        fd = None
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            log.warning("tokometer: background responses not shared (%s): kept in memory", exc)
        try:
            yield
        finally:
            if fd is not None:
                os.close(fd)  # releases the lock

    def _read(self) -> dict[str, dict[str, Any]]:
        assert self.path is not None
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("tokometer: cannot read %s (%s): starting it over", self.path, exc)
            return {}
        oldest = time.time() - MAX_AGE_S
        if not isinstance(data, dict):
            return {}
        return {
            key: entry
            for key, entry in data.items()
            if isinstance(entry, dict)
            and isinstance(entry.get("started"), dict)
            and isinstance(entry.get("at"), int | float)
            and entry["at"] >= oldest
        }

    def _write(self, pending: dict[str, dict[str, Any]]) -> None:
        assert self.path is not None
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, json.dumps(pending, separators=(",", ":")).encode())
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("tokometer: cannot write %s (%s): kept in memory", self.path, exc)
