"""Waiting for the calling process's lookup where users have limits, and what is said when it fails.

Review round 14's follow-ups (tests/test_review_round14.py holds the reviewer's three): a lookup
that is only late gets a retryable 503, not a 403; it runs in threads of its own; a call is
charged to the user it was decided as; the host that cannot identify any process is warned of at
load; a Responses WebSocket's create is held to the same rule.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from addon import client_process
from addon.client_process import ClientProcess, identification_problem
from addon.enforcement import Enforcer
from addon.meter import Meter
from addon.policies import parse_policies
from addon.refusals import not_identified_in_time_response
from tests.test_review_round14 import ALICE, ALICE_BUDGET, call, refusal, slow, spent

NOT_FOUND = ClientProcess(problem="connection not found in /proc/net (not a local client?)")


async def test_a_lookup_with_no_answer_in_the_longer_wait_is_answered_503_to_retry(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alice has a budget; the lookup answers at 0.6 s, past both waits (0.05 s, 0.2 s in all):
    503 with Retry-After 2 and x-should-retry true (the SDKs retry it), "not identified in time",
    nothing counted. Before: 403 blocked, x-should-retry false, after 0.05 s."""
    meter._apply(parse_policies(ALICE_BUDGET))
    monkeypatch.setattr("addon.meter.PROCESS_LOOKUP_TIMEOUT", 0.05)
    monkeypatch.setattr("addon.client_process.DECIDING_LOOKUP_TIMEOUT", 0.2)
    monkeypatch.setattr("addon.meter.lookup_client_process", slow(ALICE, 0.6))
    started = time.monotonic()
    flow = await call(meter)
    waited = time.monotonic() - started
    status, message = refusal(flow)
    assert status == 503 and "not identified in time" in message, message
    assert 0.2 <= waited < 0.5  # the longer wait, not the first one alone, not the lookup's end
    assert flow.response is not None
    assert (flow.response.headers["retry-after"], flow.response.headers["x-should-retry"]) == ("2", "true")
    assert json.loads(flow.response.content or b"")["error"]["type"] == "server_error"
    [row] = meter.store.records  # type: ignore[union-attr]
    assert (row.action, row.status_code, row.user_name) == ("blocked", 503, None)
    assert spent(meter, "alice") == 0


async def test_without_user_limits_a_late_lookup_is_not_waited_for_longer(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No user limits: the answer decides nothing, so the call goes on after the first wait
    (0.05 s), with no user, as before."""
    meter._apply(parse_policies("environments:\n  development:\n    budget: {usd: 1, period: day}\n"))
    monkeypatch.setattr("addon.meter.PROCESS_LOOKUP_TIMEOUT", 0.05)
    monkeypatch.setattr("addon.client_process.DECIDING_LOOKUP_TIMEOUT", 5.0)
    monkeypatch.setattr("addon.meter.lookup_client_process", slow(ALICE, 0.6))
    started = time.monotonic()
    flow = await call(meter)
    assert time.monotonic() - started < 0.4
    assert refusal(flow)[0] == 200
    row = meter.store.records[-1]  # type: ignore[union-attr]
    assert (row.action, row.user_name) == ("allowed", None)
    assert row.error is not None and "calling process not identified in time" in row.error


async def test_a_call_decided_as_the_unidentified_user_is_charged_to_it_not_to_the_late_one(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """guests stand in; alice ($0.000015 cap) has spent $0.000018. Her lookup answers at 0.3 s,
    past both waits (0.05 s, 0.1 s): the call is guests' (passes, 200) and stays guests' when the
    answer comes before its response: guests $0.000009, alice still $0.000018; the row's process
    fields say whose process it was. Before: charged to alice ($0.000027 on her $0.000015 cap)."""
    meter._apply(
        parse_policies(
            "users:\n  alice: {budget: {usd: 0.000015, period: day}}\n"
            "  guests: {budget: {usd: 100, period: day}}\n"
            "attribution:\n  unidentified_user: guests\n"
        )
    )
    monkeypatch.setattr("addon.meter.lookup_client_process", lambda *args, **kwargs: ALICE)
    assert [refusal(await call(meter))[0] for _ in range(2)] == [200, 200]
    meter._processes.clear()  # a new connection
    monkeypatch.setattr("addon.meter.PROCESS_LOOKUP_TIMEOUT", 0.05)
    monkeypatch.setattr("addon.client_process.DECIDING_LOOKUP_TIMEOUT", 0.1)
    monkeypatch.setattr("addon.meter.lookup_client_process", slow(ALICE, 0.3))
    flow = await call(meter, answered_after=0.5)
    assert refusal(flow)[0] == 200
    row = meter.store.records[-1]  # type: ignore[union-attr]
    assert (row.user_name, row.client_pid, row.client_process) == ("guests", 4242, "python")
    assert (spent(meter, "alice"), spent(meter, "guests")) == (Decimal("0.000018"), Decimal("0.000009"))


async def test_the_lookup_has_threads_of_its_own(meter: Meter, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default executor busy for 1 s (token estimates, upload reads): an instant lookup still
    answers within the 0.3 s wait, and the call is alice's. Before (asyncio.to_thread): queued
    behind them, not identified in time, no user."""
    monkeypatch.setattr("addon.meter.PROCESS_LOOKUP_TIMEOUT", 0.3)
    monkeypatch.setattr("addon.meter.lookup_client_process", lambda *args, **kwargs: ALICE)
    loop = asyncio.get_running_loop()
    busy = [loop.run_in_executor(None, time.sleep, 1.0) for _ in range(min(32, (os.cpu_count() or 1) + 4))]
    flow = await call(meter)
    assert refusal(flow)[0] == 200
    assert meter.store.records[-1].user_name == "alice"  # type: ignore[union-attr]
    await asyncio.gather(*busy)


def test_a_host_without_proc_or_psutil_cannot_identify_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "net").mkdir()
    assert identification_problem(tmp_path) is None
    monkeypatch.setitem(sys.modules, "psutil", None)  # not installed
    assert identification_problem(tmp_path / "absent") == "no /proc and psutil is not installed"


def test_user_limits_on_such_a_host_are_warned_of_when_put_in_force(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One warning per load of policies limiting users, saying why and what to do; none without
    user limits, none where processes can be identified."""
    enforcer = Enforcer(parse_policies(""))
    monkeypatch.setattr(
        client_process, "identification_problem", lambda: "no /proc and psutil is not installed"
    )
    with caplog.at_level(logging.WARNING, logger="tokometer"):
        enforcer.set_policies(
            parse_policies("environments:\n  development:\n    budget: {usd: 1, period: day}\n")
        )
        assert caplog.records == []
        enforcer.set_policies(parse_policies(ALICE_BUDGET))
        [warning] = caplog.records
        text = warning.getMessage()
        assert "psutil is not installed" in text and "every call is refused (403)" in text
        caplog.clear()
        enforcer.set_policies(parse_policies(ALICE_BUDGET + "attribution:\n  unidentified_user: guests\n"))
        assert "every call counts as user guests" in caplog.records[0].getMessage()
        caplog.clear()
        monkeypatch.setattr(client_process, "identification_problem", lambda: None)
        enforcer.set_policies(parse_policies(ALICE_BUDGET))
        assert caplog.records == []


@pytest.mark.parametrize(
    ("provider", "error_type"),
    [
        ("openai", "server_error"),
        ("anthropic", "api_error"),
        ("aws", "ServiceUnavailableException"),
        ("gemini", "UNAVAILABLE"),
    ],
)
def test_the_503_is_in_each_providers_format(provider: str, error_type: str) -> None:
    response = not_identified_in_time_response(provider, "not identified in time", 2)
    body: dict[str, Any] = json.loads(response.content or b"")
    found = {
        "openai": lambda: body["error"]["type"],
        "anthropic": lambda: body["error"]["type"],
        "aws": lambda: body["__type"],
        "gemini": lambda: body["error"]["status"],
    }[provider]()
    assert (response.status_code, found, response.headers["retry-after"]) == (503, error_type, "2")
    assert "tokometer: not identified in time" in json.dumps(body)
