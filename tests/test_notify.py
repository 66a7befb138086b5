"""Notifications: a webhook on 127.0.0.1, failures logged once, desktop commands, policies section."""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from addon.budgets import BudgetTracker, scopes_for
from addon.notify import Notifier, alert_notification, desktop_command, webhook_payload, webhook_target
from addon.policies import NotificationSettings, PolicyError, parse_policies

NOW = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)


class Hook:
    """A webhook receiver on 127.0.0.1 (a real http.server in a thread)."""

    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        self.status = status
        self.delay = delay
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.arrived = threading.Condition()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(hook.delay)
                with hook.arrived:
                    hook.received.append(json.loads(body))
                    hook.headers.append(dict(self.headers))
                    hook.paths.append(self.path)
                    hook.arrived.notify_all()
                self.send_response(hook.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T0/B0/secretpath"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def wait(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.received) >= count, timeout)
        return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook()
    yield server
    server.close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook/secretpath"


def no_desktop(**kwargs: Any) -> dict[str, Any]:
    """Notifier arguments for a machine without a desktop session."""
    return {"platform": "linux", "environ": {}, "which": lambda name: None} | kwargs


def test_webhook_receives_the_exact_json(hook: Hook) -> None:
    notifier = Notifier(NotificationSettings(desktop=True, webhook=hook.url, timeout_s=2), **no_desktop())
    notifier.notify(
        "tokometer: development budget at 80%",
        "development budget: 80% of $150.00 per month reached",
        kind="budget_alert",
        data={"scope_name": "development", "fraction": 0.8, "text": "data cannot replace text"},
    )
    assert notifier.close(5) is True
    assert hook.received == [
        {
            "text": "development budget: 80% of $150.00 per month reached",
            "kind": "budget_alert",
            "title": "tokometer: development budget at 80%",
            "scope_name": "development",
            "fraction": 0.8,
        }
    ]
    assert hook.paths == ["/services/T0/B0/secretpath"]
    assert hook.headers[0]["Content-Type"] == "application/json"
    assert notifier.sent == {"desktop": 0, "webhook": 1}


def test_notify_never_blocks_the_caller() -> None:
    slow = Hook(delay=0.3)
    try:
        notifier = Notifier(NotificationSettings(webhook=slow.url, timeout_s=5), **no_desktop())
        start = time.perf_counter()
        for i in range(3):
            notifier.notify("t", f"m{i}", kind="budget_alert")
        assert time.perf_counter() - start < 0.1
        assert [m["text"] for m in slow.wait(3, timeout=10)] == ["m0", "m1", "m2"]
        notifier.close(5)
    finally:
        slow.close()


def test_identical_messages_are_all_sent(hook: Hook) -> None:
    """Deduplication is BudgetTracker's job: the Notifier sends every message it is given."""
    notifier = Notifier(NotificationSettings(webhook=hook.url), **no_desktop())
    for _ in range(3):
        notifier.notify("same", "same message", kind="budget_alert", data={"fraction": 0.5})
    notifier.close(5)
    assert [m["text"] for m in hook.received] == ["same message"] * 3


def test_a_failing_webhook_is_logged_once_until_it_works_again(
    hook: Hook, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tokometer")
    dead = closed_port_url()
    notifier = Notifier(NotificationSettings(webhook=dead, timeout_s=1), **no_desktop())
    for i in range(4):
        notifier.notify("t", f"lost {i}", kind="budget_alert")
    notifier.notify("t", "flush marker", kind="budget_alert")
    assert notifier.wait_idle(10) is True
    messages = [r.getMessage() for r in caplog.records]
    failures = [m for m in messages if "notification failed" in m]
    port = dead.split(":")[2].split("/")[0]
    assert failures == [
        f"tokometer: webhook http://127.0.0.1:{port} notification failed (Connection refused); "
        "not logged again until one succeeds"
    ]
    assert not any("secretpath" in m for m in messages)  # the URL's path may be its secret
    # it works again: said once; a later failure is logged again
    notifier.set_settings(NotificationSettings(webhook=hook.url))
    notifier.notify("t", "delivered", kind="budget_alert")
    assert notifier.wait_idle(5) is True
    assert "tokometer: webhook notifications work again" in [r.getMessage() for r in caplog.records]
    notifier.set_settings(NotificationSettings(webhook=dead, timeout_s=1))
    notifier.notify("t", "lost again", kind="budget_alert")
    assert notifier.close(10) is True
    assert len([r for r in caplog.records if "notification failed" in r.getMessage()]) == 2
    assert [m["text"] for m in hook.received] == ["delivered"]


def test_http_error_status_counts_as_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    failing = Hook(status=500)
    try:
        notifier = Notifier(NotificationSettings(webhook=failing.url), **no_desktop())
        notifier.notify("t", "m", kind="budget_alert")
        notifier.notify("t", "m", kind="budget_alert")
        notifier.close(5)
        assert len(failing.received) == 2
        failures = [r.getMessage() for r in caplog.records if "notification failed" in r.getMessage()]
        assert len(failures) == 1 and "(HTTP 500)" in failures[0]
        assert notifier.sent["webhook"] == 0
    finally:
        failing.close()


def test_one_notification_per_threshold_crossing_not_per_call(hook: Hook) -> None:
    """BudgetTracker fires each alert_at fraction once; each one reaches the webhook once."""
    policies = parse_policies(
        "environments:\n  development:\n    budget: {usd: 1, period: day, alert_at: [0.5, 0.8]}\n"
    )
    tracker = BudgetTracker(policies)
    notifier = Notifier(NotificationSettings(webhook=hook.url), **no_desktop())
    for i in range(10):  # $0.20 a call: 50% after the 3rd (0.60), 80% after the 4th, 100% after the 5th
        for alert in tracker.record(scopes_for("development"), Decimal("0.2"), NOW + timedelta(minutes=i)):
            notifier.notify_alert(alert)
    notifier.close(5)
    assert [(m["kind"], m["fraction"], m["spent"]) for m in hook.received] == [
        ("budget_alert", 0.5, "0.6"),
        ("budget_alert", 0.8, "0.8"),
        ("budget_exhausted", 1.0, "1.0"),
    ]
    assert hook.received[0] == {
        "text": "development budget: 50% of $1.00 per day reached: $0.60 used since 2026-11-28 (UTC)",
        "kind": "budget_alert",
        "title": "tokometer: development budget at 50%",
        "scope_kind": "environment",
        "scope_name": "development",
        "period": "day",
        "period_start": "2026-11-28T00:00:00+00:00",
        "fraction": 0.5,
        "usd": "1",
        "spent": "0.6",
    }
    assert hook.received[2]["title"] == "tokometer: development budget spent"
    assert hook.received[2]["text"] == (
        "development budget of $1.00 per day is spent: $1.00 used since 2026-11-28 (UTC); "
        "calls are refused until 2026-11-29 00:00 UTC"
    )


def test_desktop_command_on_linux() -> None:
    def which(name: str) -> str | None:
        return {"notify-send": "/usr/bin/notify-send"}.get(name)

    command = desktop_command(
        "tokometer: dev budget spent",
        "line one\nline two",
        kind="budget_exhausted",
        platform="linux",
        environ={"DISPLAY": ":0"},
        which=which,
    )
    assert command == [
        "/usr/bin/notify-send",
        "--app-name=tokometer",
        "--urgency=critical",
        "--",
        "tokometer: dev budget spent",
        "line one line two",
    ]
    normal = desktop_command(
        "t", "m", kind="budget_alert", platform="linux", environ={"WAYLAND_DISPLAY": "w"}, which=which
    )
    assert normal is not None and normal[2] == "--urgency=normal"
    assert desktop_command("t", "m", platform="linux", environ={}, which=which) is None  # no session
    assert (
        desktop_command("t", "m", platform="linux", environ={"DISPLAY": ":0"}, which=lambda n: None) is None
    )
    assert desktop_command("t", "m", platform="win32", environ={"DISPLAY": ":0"}, which=which) is None


def test_desktop_command_on_macos_quotes_for_applescript() -> None:
    command = desktop_command(
        'budget "dev"', 'spent \\ "all"', platform="darwin", environ={}, which=lambda n: "/usr/bin/" + n
    )
    assert command == [
        "/usr/bin/osascript",
        "-e",
        'display notification "spent \\\\ \\"all\\"" with title "budget \\"dev\\""',
    ]


def test_desktop_notifications_use_the_injected_runner(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[tuple[list[str], float]] = []
    status = [0]

    def runner(argv: Sequence[str], timeout: float) -> int:
        calls.append((list(argv), timeout))
        return status[0]

    notifier = Notifier(
        NotificationSettings(desktop=True),
        runner=runner,
        platform="linux",
        environ={"DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/1000/bus"},
        which=lambda name: f"/bin/{name}",
    )
    notifier.notify("title", "message", kind="budget_alert")
    status[0] = 1
    notifier.notify("title", "again", kind="budget_alert")
    notifier.notify("title", "and again", kind="budget_alert")
    notifier.close(5)
    assert calls[0] == (
        ["/bin/notify-send", "--app-name=tokometer", "--urgency=normal", "--", "title", "message"],
        5.0,
    )
    assert len(calls) == 3
    failures = [r.getMessage() for r in caplog.records if "notification failed" in r.getMessage()]
    assert failures == [
        "tokometer: desktop notification failed (notify-send exited with status 1); "
        "not logged again until one succeeds"
    ]
    assert notifier.sent["desktop"] == 1


def test_desktop_off_runs_nothing() -> None:
    calls: list[Sequence[str]] = []
    notifier = Notifier(
        NotificationSettings(desktop=False),
        runner=lambda argv, timeout: calls.append(argv) or 0,
        platform="linux",
        environ={"DISPLAY": ":0"},
        which=lambda name: f"/bin/{name}",
    )
    notifier.notify("t", "m", kind="budget_alert")
    notifier.close(5)
    assert calls == []


def test_close_without_messages_and_notify_after_close() -> None:
    notifier = Notifier(NotificationSettings(), **no_desktop())
    assert notifier.close(1) is True
    notifier.notify("t", "m", kind="budget_alert")  # ignored, no thread started
    assert notifier.wait_idle(0) is True and notifier.sent == {"desktop": 0, "webhook": 0}


def test_payload_and_alert_helpers() -> None:
    assert webhook_payload("T", "M", "k", {"kind": "x", "a": 1}) == {
        "text": "M",
        "kind": "k",
        "title": "T",
        "a": 1,
    }
    policies = parse_policies(
        "environments:\n  staging:\n    budget: {usd: 10, period: week, alert_at: [0.8]}\n"
    )
    (alert,) = BudgetTracker(policies).record(scopes_for("staging"), Decimal("8"), NOW)
    title, message, kind, data = alert_notification(alert)
    assert (title, kind) == ("tokometer: staging budget at 80%", "budget_alert")
    assert message == "staging budget: 80% of $10.00 per week reached: $8.00 used since 2026-11-23 (UTC)"
    assert data["period_start"] == "2026-11-23T00:00:00+00:00"


# -- policies.yaml: notifications ------------------------------------------------------------------


def test_policies_notifications_section() -> None:
    policies = parse_policies(
        "notifications:\n  desktop: false\n"
        "  webhook: https://hooks.example.com/services/x\n  timeout_s: 2.5\n"
    )
    assert policies.notifications == NotificationSettings(
        desktop=False, webhook="https://hooks.example.com/services/x", timeout_s=2.5
    )
    assert policies.notifications.webhook_label() == "https://hooks.example.com"
    assert parse_policies("").notifications == NotificationSettings(desktop=True, webhook=None, timeout_s=5.0)
    assert parse_policies("notifications: {webhook: null}\n").notifications.webhook is None


def test_policies_notifications_errors_do_not_echo_the_url() -> None:
    text = (
        "notifications:\n"
        "  desktop: yes please\n"
        "  webhook: ftp://hooks.example.com/services/T0/B0/secretpath\n"
        "  timeout_s: 0\n"
        "  sound: true\n"
    )
    with pytest.raises(PolicyError) as info:
        parse_policies(text)
    assert info.value.problems == [
        "policies.yaml:2: notifications.desktop: must be true or false, not a string",
        "policies.yaml:3: notifications.webhook: must start with http:// or https:// (scheme: ftp)",
        "policies.yaml:4: notifications.timeout_s: must be more than 0 and at most 60 seconds (got 0)",
        "policies.yaml:5: notifications.sound: unknown key (expected one of: desktop, webhook, timeout_s)",
    ]
    assert "secretpath" not in str(info.value)
    with pytest.raises(PolicyError) as info:
        parse_policies("notifications:\n  webhook: https:///nohost\n  timeout_s: fast\n")
    assert info.value.problems == [
        "policies.yaml:2: notifications.webhook: must be a URL with a host and no spaces",
        "policies.yaml:3: notifications.timeout_s: must be a number of seconds, not a string",
    ]
    with pytest.raises(PolicyError, match=r"notifications: must be a mapping"):
        parse_policies("notifications: [desktop]\n")


def test_the_checkout_policies_yaml_documents_notifications() -> None:
    from addon.paths import default_policies_path

    text = default_policies_path().read_text()
    assert "# notifications:\n#   desktop: true\n" in text
    block = text[text.index("# notifications:\n") :].splitlines()[:4]
    example = "\n".join(line[2:] for line in block)
    assert parse_policies(example).notifications == NotificationSettings(
        desktop=True, webhook="https://hooks.slack.com/services/T000/B000/XXXXXXXX", timeout_s=5.0
    )


# -- a webhook URL with credentials (user:password@host) -----------------------------------------


def test_a_webhook_url_with_credentials_is_sent_with_basic_auth(hook: Hook) -> None:
    """Before, urllib read `user:pass@127.0.0.1:port` as the host: nothing was ever delivered and the
    log said `Name or service not known`. Now the credentials go as basic auth, not in the URL."""
    url = hook.url.replace("http://", "http://alerts:s3%40cret%3A@")
    notifier = Notifier(NotificationSettings(webhook=url, timeout_s=2), **no_desktop())
    notifier.notify("t", "over budget", kind="budget_exhausted")
    assert notifier.close(5) is True
    assert [m["text"] for m in hook.received] == ["over budget"]
    assert hook.paths == ["/services/T0/B0/secretpath"]
    assert hook.headers[0]["Authorization"] == "Basic " + base64.b64encode(b"alerts:s3@cret:").decode()
    assert webhook_target("https://u@h.example/x?q=1") == ("https://h.example/x?q=1", "Basic dTo=")
    assert webhook_target(hook.url) == (hook.url, None)


def test_a_failing_webhook_with_credentials_never_logs_them(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tokometer")
    dead = closed_port_url().replace("http://", "http://alerts:s3cret@")
    notifier = Notifier(NotificationSettings(webhook=dead, timeout_s=1), **no_desktop())
    notifier.notify("t", "lost", kind="budget_alert")
    assert notifier.close(10) is True
    [failure] = [r.getMessage() for r in caplog.records if "notification failed" in r.getMessage()]
    assert "Connection refused" in failure
    assert "s3cret" not in caplog.text and "alerts" not in caplog.text


def test_webhook_credentials_are_not_sent_on_where_a_redirect_points() -> None:
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the redirected request (a 302 turns the POST into a GET)
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.headers.get("Authorization"))
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{self.server.server_address[1]}/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        url = f"http://alerts:s3cret@127.0.0.1:{server.server_address[1]}/hook"
        notifier = Notifier(NotificationSettings(webhook=url, timeout_s=2), **no_desktop())
        notifier.notify("t", "m", kind="budget_alert")
        assert notifier.close(5) is True
    finally:
        server.shutdown()
        server.server_close()
    assert seen == ["Basic " + base64.b64encode(b"alerts:s3cret").decode(), None]
