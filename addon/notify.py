"""Budget notifications: a desktop notification and an optional webhook, never in a call's way.

``Notifier.notify`` only puts the message on a queue; one daemon thread sends it: a desktop
notification where one is available (``notify-send`` on Linux with a graphical session,
``osascript`` on macOS; silently skipped elsewhere) and, if policies.yaml names one, a JSON
POST to the webhook: ``{"text": MESSAGE, "kind": KIND, "title": TITLE, ...data}`` (``text``
makes it a Slack incoming-webhook message; credentials in the URL, ``https://user:pass@host/``,
are sent as basic auth). A failing destination is logged once, then not
again until a send to it succeeds. The Notifier does not deduplicate: the once-per-threshold
logic lives in ``BudgetTracker``, so every ``notify`` is one message.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from addon.policies import NotificationSettings

if TYPE_CHECKING:
    from addon.budgets import BudgetAlert, UnpricedCall

log = logging.getLogger("tokometer")

APP_NAME = "tokometer"
QUEUE_LIMIT = 100
DESKTOP_TIMEOUT_S = 5.0

Runner = Callable[[Sequence[str], float], int]
"""Runs a command with a timeout and returns its exit status (injected in tests)."""


def run_command(argv: Sequence[str], timeout: float) -> int:
    """Run ``argv`` without a shell, its output discarded; the exit status."""
    done = subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )
    return done.returncode


def _applescript_string(text: str) -> str:
    """``text`` as an AppleScript string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def desktop_command(
    title: str,
    message: str,
    *,
    kind: str = "",
    platform: str | None = None,
    environ: Mapping[str, str] | None = None,
    which: Callable[[str], str | None] = shutil.which,
) -> list[str] | None:
    """The command that shows a desktop notification here, or None when there is no desktop.

    Linux (and other Unixes): ``notify-send`` when it is on PATH and a graphical or D-Bus
    session exists (DISPLAY, WAYLAND_DISPLAY or DBUS_SESSION_BUS_ADDRESS). macOS:
    ``osascript -e 'display notification ...'``.
    """
    platform = sys.platform if platform is None else platform
    environ = os.environ if environ is None else environ
    title = " ".join(title.split())
    message = " ".join(message.split())
    if platform == "darwin":
        osascript = which("osascript")
        if osascript is None:
            return None
        script = (
            f"display notification {_applescript_string(message)} with title {_applescript_string(title)}"
        )
        return [osascript, "-e", script]
    if platform.startswith(("win", "cygwin")):
        return None
    if not any(environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "DBUS_SESSION_BUS_ADDRESS")):
        return None
    notify_send = which("notify-send")
    if notify_send is None:
        return None
    urgency = "critical" if kind == "budget_exhausted" else "normal"
    return [notify_send, f"--app-name={APP_NAME}", f"--urgency={urgency}", "--", title, message]


def webhook_payload(title: str, message: str, kind: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON object POSTed: ``text``, ``kind`` and ``title`` first, then ``data``'s keys."""
    payload: dict[str, Any] = {"text": message, "kind": kind, "title": title}
    for key, value in data.items():
        payload.setdefault(key, value)
    return payload


def alert_notification(alert: BudgetAlert) -> tuple[str, str, str, dict[str, Any]]:
    """``(title, message, kind, data)`` for a ``BudgetAlert`` (crossed alert_at, or cap reached)."""
    if alert.kind == "budget_exhausted":
        title = f"tokometer: {alert.scope.label} budget spent"
    else:
        title = f"tokometer: {alert.scope.label} budget at {alert.fraction * 100:g}%"
    data = {
        "scope_kind": alert.scope.kind,
        "scope_name": alert.scope.name,
        "period": alert.budget.period,
        "period_start": alert.period_start.isoformat(),
        "fraction": alert.fraction,
        "usd": str(alert.budget.usd),
        "spent": str(alert.spent),
    }
    return title, alert.message(), alert.kind, data


def unpriced_notification(unpriced: UnpricedCall) -> tuple[str, str, str, dict[str, Any]]:
    """``(title, message, kind, data)`` for a model with no price escaping a budget."""
    title = f"tokometer: {unpriced.model} is not counted against the {unpriced.scope.label} budget"
    data = {
        "scope_kind": unpriced.scope.kind,
        "scope_name": unpriced.scope.name,
        "provider": unpriced.provider,
        "model": unpriced.model,
        "period": unpriced.budget.period,
        "usd": str(unpriced.budget.usd),
    }
    return title, unpriced.message(), unpriced.kind, data


@dataclass(frozen=True, slots=True)
class _Message:
    title: str
    message: str
    kind: str
    data: Mapping[str, Any]


_STOP = object()


class Notifier:
    """Sends notifications from one daemon thread (see the module docstring)."""

    def __init__(
        self,
        settings: NotificationSettings | None = None,
        *,
        runner: Runner = run_command,
        platform: str | None = None,
        environ: Mapping[str, str] | None = None,
        which: Callable[[str], str | None] = shutil.which,
        opener: urllib.request.OpenerDirector | None = None,
    ) -> None:
        self.settings = settings or NotificationSettings()
        self._runner = runner
        self._platform = platform
        self._environ = environ
        self._which = which
        self._opener = opener or urllib.request.build_opener()
        self._queue: queue.Queue[_Message | object] = queue.Queue(maxsize=QUEUE_LIMIT)
        self._failing: set[str] = set()  # destinations whose last send failed (logged once)
        self._dropped = False
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0  # queued or being sent
        self._thread: threading.Thread | None = None
        self._closed = False
        self.sent: dict[str, int] = {"desktop": 0, "webhook": 0}  # successful sends, for tests and logs

    def set_settings(self, settings: NotificationSettings) -> None:
        """Use new settings (a policies.yaml reload) for the next messages."""
        self.settings = settings

    def notify(self, title: str, message: str, *, kind: str, data: Mapping[str, Any] | None = None) -> None:
        """Queue one notification and return at once; never raises, never blocks."""
        if self._closed:
            return
        try:
            with self._lock:
                self._queue.put_nowait(_Message(title, message, kind, dict(data or {})))
                self._pending += 1
        except queue.Full:
            if not self._dropped:
                self._dropped = True
                log.warning("tokometer: notifications are backing up; dropping new ones until they drain")
            return
        self._ensure_thread()

    def notify_alert(self, alert: BudgetAlert) -> None:
        """Queue the notification of a ``BudgetAlert``."""
        title, message, kind, data = alert_notification(alert)
        self.notify(title, message, kind=kind, data=data)

    def notify_unpriced(self, unpriced: UnpricedCall) -> None:
        """Queue the notification of a model with no price escaping a budget."""
        title, message, kind, data = unpriced_notification(unpriced)
        self.notify(title, message, kind=kind, data=data)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until every queued message was sent (or failed); True if it got there in time."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = 5.0) -> bool:
        """Send what is queued (up to ``timeout`` seconds) and stop; True if it all went."""
        self._closed = True
        with self._lock:
            thread = self._thread
        if thread is None:
            return self._queue.empty()
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return False
        thread.join(max(0.0, deadline - time.monotonic()))
        return not thread.is_alive()

    # -- the sending thread --------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tokometer-notify", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            assert isinstance(item, _Message)
            self._dropped = False
            try:
                self._send(item)
            except Exception:  # a bug here must not kill the thread
                log.exception("tokometer: notification failed")
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _send(self, item: _Message) -> None:
        settings = self.settings
        if settings.desktop:
            command = desktop_command(
                item.title,
                item.message,
                kind=item.kind,
                platform=self._platform,
                environ=self._environ,
                which=self._which,
            )
            if command is not None:
                self._attempt("desktop", lambda: self._desktop(command))
        if settings.webhook:
            self._attempt(
                "webhook", lambda: self._post(settings.webhook or "", settings.timeout_s, item), settings
            )

    def _desktop(self, command: Sequence[str]) -> None:
        status = self._runner(command, DESKTOP_TIMEOUT_S)
        if status != 0:
            raise OSError(f"{os.path.basename(command[0])} exited with status {status}")

    def _post(self, url: str, timeout: float, item: _Message) -> None:
        body = json.dumps(webhook_payload(item.title, item.message, item.kind, item.data), default=str)
        url, authorization = webhook_target(url)
        request = urllib.request.Request(
            url,
            data=body.encode(),
            headers={"Content-Type": "application/json", "User-Agent": APP_NAME},
            method="POST",
        )
        if authorization is not None:  # unredirected: never sent on to where a redirect points
            request.add_unredirected_header("Authorization", authorization)
        with self._opener.open(request, timeout=timeout) as response:
            response.read()

    def _attempt(
        self, destination: str, send: Callable[[], None], settings: NotificationSettings | None = None
    ) -> None:
        """Run ``send``; log its first failure, and its recovery, once."""
        try:
            send()
        except Exception as exc:
            if destination not in self._failing:
                self._failing.add(destination)
                where = destination
                if destination == "webhook" and settings is not None:
                    where = f"webhook {settings.webhook_label()}"
                log.warning(
                    "tokometer: %s notification failed (%s); not logged again until one succeeds",
                    where,
                    _describe(exc),
                )
            return
        self.sent[destination] += 1
        if destination in self._failing:
            self._failing.discard(destination)
            log.info("tokometer: %s notifications work again", destination)


def webhook_target(url: str) -> tuple[str, str | None]:
    """The URL to POST to and the ``Authorization`` header its credentials ask for: a URL with
    ``user:password@`` before its host (a self-hosted receiver, ntfy) is sent without them, with
    basic auth instead (urllib would read ``user:password@host`` as the host name)."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    pair = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
    authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    return urllib.parse.urlunsplit(parts._replace(netloc=hostport)), authorization


def _describe(exc: BaseException) -> str:
    """A short reason that never includes the webhook's URL (its path may be a secret)."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, OSError):
            return reason.strerror or str(reason)
        return str(reason)
    if isinstance(exc, subprocess.TimeoutExpired):
        return f"timed out after {exc.timeout:g} s"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
