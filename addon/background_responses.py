"""Calls started through the proxy and billed later: background responses and batch jobs.

A Responses call with ``"background": true`` is answered ``queued``, without usage; the usage
comes with a later ``GET /v1/responses/{id}``, which is billed as the call that started it. A
batch job (``POST /v1/batches``) likewise, by the ``GET /v1/batches/{id}`` that sees it ended.
The same kind of list, never claimed, remembers what the batches' input files said
(``BATCH_INPUTS_FOLDER``: their models and sizes, never their content).
Each pending response is one small file, ``<folder>/<id>.json`` (owner only), holding the
attribution of the call that started it, so a script reload, a restart or another proxy on the
same database still bills the retrieval. Adding one is a write and a rename; taking one (the
retrieval that bills it) is an unlink, which exactly one caller wins: constant work, no lock,
and no space needed. When a file cannot be written (a full disk), the entry is kept in memory.
A background response's entry also remembers the budget reservation its call keeps while it runs
(``HOLD_S`` at most), so that the next proxy to start on the database holds it again; a proxy
holding one lets it go when it sees the entry gone (``has``: billed or ended through another proxy).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("tokometer")

FOLDER_NAME = "background-responses"
BATCH_INPUTS_FOLDER = "batch-input-files"
# How long a background response's reservation holds its budgets at most, unless a retrieval
# bills it or sees it end first. OpenAI documents no bound on how long one may run (deep research
# and pro models take minutes to about an hour): past this, one never retrieved is let go.
HOLD_S = 3 * 3600
MAX_AGE_S = 30 * 24 * 3600  # a response not retrieved within 30 days is forgotten (at start)
MAX_IN_MEMORY = 10_000  # entries kept in memory when their file could not be written
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")  # a file name: anything else is kept in memory


class PendingResponses:
    """``{response id: attribution of the call that started it}``, one file each in ``folder``."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self._memory: dict[str, dict[str, Any]] = {}  # no folder, or its file could not be written
        self._taken_here: set[str] = set()  # claimed, yet their file could not be removed

    def __bool__(self) -> bool:
        """Might a GET be a retrieval? The folder is shared with other proxies on the database."""
        return self.folder is not None or bool(self._memory)

    def add(self, response_id: str, started: dict[str, Any]) -> None:
        """A background response started: remember who started it."""
        path = self._path(response_id)
        if path is not None:
            tmp = path.with_name(f".{path.name}.tmp")
            try:
                self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # type: ignore[union-attr]
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                try:
                    os.write(fd, json.dumps(started, separators=(",", ":")).encode())
                finally:
                    os.close(fd)
                os.replace(tmp, path)
                return
            except OSError as exc:
                log.warning("tokometer: cannot write %s (%s): kept in memory", path, exc)
                with contextlib.suppress(OSError):
                    tmp.unlink()
        self._memory[response_id] = started
        while len(self._memory) > MAX_IN_MEMORY:
            del self._memory[next(iter(self._memory))]

    def get(self, response_id: str) -> dict[str, Any] | None:
        """The attribution of a pending response, or None."""
        if response_id in self._memory:
            return self._memory[response_id]
        path = self._path(response_id)
        if path is None:
            return None
        try:
            started = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("tokometer: cannot read %s: %s", path, exc)
            return None
        return started if isinstance(started, dict) else None

    def has(self, response_id: str) -> bool:
        """Is ``response_id`` still pending (not taken by any proxy on the folder)? One stat."""
        if response_id in self._memory:
            return True
        path = self._path(response_id)
        if path is None:
            return False
        try:
            path.stat()
        except FileNotFoundError:
            return False
        except OSError:
            return True  # cannot tell (the folder unreadable): still pending, as far as is known
        return True

    def claim(self, response_id: str) -> bool:
        """Take a pending response: True for the one caller that took it (it bills)."""
        if self._memory.pop(response_id, None) is not None:
            return True
        path = self._path(response_id)
        if path is None:
            return False
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:  # cannot be taken off (a read-only folder): billed here, once
            if response_id in self._taken_here:
                return False
            log.warning("tokometer: cannot remove %s (%s): billed by this proxy only", path, exc)
            if len(self._taken_here) >= MAX_IN_MEMORY:
                self._taken_here.clear()
            self._taken_here.add(response_id)
            return True
        return True

    def forget_old(self, now: float | None = None) -> None:
        """Remove the files of responses started more than ``MAX_AGE_S`` ago (at start)."""
        if self.folder is None:
            return
        oldest = (time.time() if now is None else now) - MAX_AGE_S
        try:
            entries = list(os.scandir(self.folder))
        except OSError:
            return
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < oldest:
                    os.unlink(entry.path)

    def recent(self, max_age_s: float, now: float | None = None) -> list[tuple[str, dict[str, Any]]]:
        """The entries (id, entry) of the folder written less than ``max_age_s`` ago (at start)."""
        if self.folder is None:
            return []
        newest = (time.time() if now is None else now) - max_age_s
        found: list[tuple[str, dict[str, Any]]] = []
        try:
            entries = list(os.scandir(self.folder))
        except OSError:
            return []
        for entry in entries:
            response_id = entry.name.removesuffix(".json")
            if entry.name.startswith(".") or response_id == entry.name:
                continue
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < newest:
                    continue
            started = self.get(response_id)
            if started is not None:
                found.append((response_id, started))
        return found

    def _path(self, response_id: str) -> Path | None:
        if self.folder is None or not _SAFE_ID.fullmatch(response_id):
            return None
        return self.folder / f"{response_id}.json"
