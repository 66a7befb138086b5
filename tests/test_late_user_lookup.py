"""A lookup answering after the call was decided (review round 15, findings 1 and 5): where no user
limit decided the call, the late answer still names the row's user (HTTP rows, background
retrievals, Responses WebSocket creates); a WebSocket create whose lookup is still running is told to
retry, not refused 403 for a container."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fake_responses_ws import create_event
from mitmproxy import http
from test_responses_ws_hooks import handshake
from websocket_hooks import client_says, injected_events, metered, open_session

from addon.meter import Meter
from addon.policies import parse_policies
from tests.test_background_responses import QUEUED, RESPONSES_URL
from tests.test_meter import make_flow, run_request
from tests.test_review_round14 import ALICE, ALICE_BUDGET, slow

ENV_BUDGET = "environments:\n  development:\n    budget: {usd: 1, period: day}\n"


async def answer(meter: Meter, flow: http.HTTPFlow, body: dict) -> None:
    flow.response = http.Response.make(200, json.dumps(body), {"content-type": "application/json"})
    meter.responseheaders(flow)
    await meter.response(flow)


async def test_a_background_retrieval_row_is_named_by_the_late_lookup(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The starting call's lookup answers alice after the 0.05 s wait but before its answer: its
    entry, and so its retrieval's row, is alice's (was user None)."""
    meter._apply(parse_policies(ENV_BUDGET))
    monkeypatch.setattr("addon.meter.PROCESS_LOOKUP_TIMEOUT", 0.05)
    monkeypatch.setattr("addon.meter.lookup_client_process", slow(ALICE, 0.2))
    post = make_flow(RESPONSES_URL, {"model": "o3-pro", "input": "a report", "background": True})
    post.request.timestamp_start = datetime.now(UTC).timestamp()
    await run_request(meter, post)
    assert post.response is None
    await asyncio.sleep(0.4)
    await answer(meter, post, QUEUED)
    get = make_flow(f"{RESPONSES_URL}/resp_bg", b"", method="GET")
    await run_request(meter, get)
    done = QUEUED | {"status": "completed", "usage": {"input_tokens": 10, "output_tokens": 20}}
    await answer(meter, get, done)
    started, retrieval = meter.store.records[-2:]  # type: ignore[union-attr]
    assert (started.user_name, retrieval.user_name) == ("alice", "alice")
    assert retrieval.output_tokens == 20


async def test_a_user_limit_keeps_the_user_a_call_was_decided_as(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where users have limits the row keeps the user it was decided and charged as
    (attribution.unidentified_user guests), however late the lookup answers alice."""
    policies = ALICE_BUDGET + "attribution:\n  unidentified_user: guests\n"
    meter._apply(parse_policies(policies))
    monkeypatch.setattr("addon.meter.PROCESS_LOOKUP_TIMEOUT", 0.05)
    monkeypatch.setattr("addon.client_process.DECIDING_LOOKUP_TIMEOUT", 0.1)
    monkeypatch.setattr("addon.meter.lookup_client_process", slow(ALICE, 0.2))
    flow = make_flow("https://api.openai.com/v1/chat/completions", {"model": "gpt-4o-mini", "messages": []})
    flow.request.timestamp_start = datetime.now(UTC).timestamp()
    await run_request(meter, flow)
    await asyncio.sleep(0.3)
    await answer(
        meter,
        flow,
        {
            "id": "c",
            "model": "gpt-4o-mini",
            "choices": [],
            "usage": {"prompt_tokens": 20, "completion_tokens": 10},
        },
    )
    row = meter.store.records[-1]  # type: ignore[union-attr]
    assert (row.user_name, row.client_process) == ("guests", "python")


async def test_a_sockets_create_after_the_late_lookup_is_the_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for meter in metered(tmp_path):
        monkeypatch.setattr("addon.meter.PROCESS_LOOKUP_TIMEOUT", 0.05)
        monkeypatch.setattr("addon.meter.lookup_client_process", slow(ALICE, 0.2))
        flow = handshake()
        await open_session(meter, flow)
        session = meter.sockets.sessions[flow]
        assert session.handshake.user_name is None  # opened before the lookup answered
        await asyncio.sleep(0.4)
        sent = await client_says(meter, flow, create_event("gpt-5-mini", "a"))
        assert not sent.dropped
        assert session.latest["a"].user_name == "alice"  # type: ignore[attr-defined]
        assert session.latest["a"].client_pid == 4242  # type: ignore[attr-defined]


async def test_a_sockets_create_while_its_lookup_runs_is_told_to_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Users got a limit after the session opened; its lookup still runs at the create: the create
    is dropped with the retryable "not identified in time" error (was the 403 blaming a container)."""
    for meter in metered(tmp_path):
        injected = injected_events(meter, monkeypatch)
        monkeypatch.setattr("addon.meter.PROCESS_LOOKUP_TIMEOUT", 0.05)
        monkeypatch.setattr("addon.meter.lookup_client_process", slow(ALICE, 1.0))
        flow = handshake()
        await open_session(meter, flow)
        meter._apply(parse_policies(ALICE_BUDGET))
        sent = await client_says(meter, flow, create_event("gpt-5-mini", "a"))
        assert sent.dropped
        message = injected[0]["error"]["message"]
        assert "not identified in time" in message and "container" not in message
        await asyncio.sleep(1.0)  # the lookup answers: no thread left running
