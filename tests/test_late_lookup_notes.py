"""A row whose calling process was identified after its call was attributed: its ``error`` says
so, not "calling process not identified in time" beside the process (and user) it names.

The lookup's wait at attribution (``wait_for_process``) gave up with ``NOT_IN_TIME``, put on the
call's errors; a lookup answering before the call's end fills the row's process fields and, where
no user limit decided the call, its user (``_fill_record``, ``_describe_client``). The note stayed:
a row naming alice and pid 4242 said the process was not identified.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fake_responses_ws import create_event
from meter_helpers import make_flow, run_request
from mitmproxy import http
from test_responses_ws_hooks import handshake
from websocket_hooks import client_says, metered, open_session

from addon.client_process import NOT_IN_TIME, ClientProcess
from addon.meter import Meter
from addon.policies import parse_policies
from addon.record import CallRecord
from tests.test_review_round14 import ALICE, slow

CHAT = "https://api.openai.com/v1/chat/completions"
IDENTIFIED_LATE = "calling process identified after the call was attributed"
IDENTIFIED_LATE_USER_KEPT = f"{IDENTIFIED_LATE}: the row keeps the user it was decided as"
ENV_BUDGET = "environments:\n  development:\n    budget: {usd: 1, period: day}\n"
ANSWER = {
    "id": "c",
    "model": "gpt-4o-mini",
    "choices": [],
    "usage": {"prompt_tokens": 20, "completion_tokens": 10},
}


async def one_call(
    meter: Meter,
    monkeypatch: pytest.MonkeyPatch,
    found: ClientProcess,
    answered_after: float,
    status: int = 200,
) -> CallRecord:
    """A chat call whose lookup answers ``found`` at 0.2 s, past the 0.05 s wait (0.1 s where it
    decides); the call is answered ``answered_after`` seconds after it was let through."""
    monkeypatch.setattr("addon.meter.PROCESS_LOOKUP_TIMEOUT", 0.05)
    monkeypatch.setattr("addon.client_process.DECIDING_LOOKUP_TIMEOUT", 0.1)
    monkeypatch.setattr("addon.meter.lookup_client_process", slow(found, 0.2))
    flow = make_flow(CHAT, {"model": "gpt-4o-mini", "messages": []})
    flow.request.timestamp_start = datetime.now(UTC).timestamp()
    await run_request(meter, flow)
    assert flow.response is None
    await asyncio.sleep(answered_after)
    body = ANSWER if status < 400 else {"error": {"message": "overloaded"}}
    flow.response = http.Response.make(status, json.dumps(body), {"content-type": "application/json"})
    meter.responseheaders(flow)
    await meter.response(flow)
    return meter.store.records[-1]  # type: ignore[union-attr]


async def test_a_row_named_by_a_late_lookup_says_it_was_identified_late(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No user limit: the late answer names the row's user and process. Before, its error was
    "calling process not identified in time"."""
    meter._apply(parse_policies(ENV_BUDGET))
    row = await one_call(meter, monkeypatch, ALICE, answered_after=0.4)
    assert (row.user_name, row.client_pid, row.client_process) == ("alice", 4242, "python")
    assert row.error == IDENTIFIED_LATE


async def test_a_decided_user_kept_says_whose_process_it_was_late(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Users have limits: the row keeps guests, the user it was decided and charged as, and names
    alice's process; the note says the row keeps that user. Before: "not identified in time"."""
    policies = (
        "users:\n  alice: {budget: {usd: 100, period: day}}\nattribution:\n  unidentified_user: guests\n"
    )
    meter._apply(parse_policies(policies))
    row = await one_call(meter, monkeypatch, ALICE, answered_after=0.4)
    assert (row.user_name, row.client_pid, row.client_process) == ("guests", 4242, "python")
    assert row.error == IDENTIFIED_LATE_USER_KEPT
    assert NOT_IN_TIME not in row.error


async def test_the_other_notes_stay(meter: Meter, monkeypatch: pytest.MonkeyPatch) -> None:
    meter._apply(parse_policies(ENV_BUDGET))
    row = await one_call(meter, monkeypatch, ALICE, answered_after=0.4, status=529)
    assert row.user_name == "alice"
    assert row.error == f"{IDENTIFIED_LATE}; upstream answered 529"


async def test_a_lookup_answering_after_the_call_keeps_the_note(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answered before the lookup: the row names no process, and it was not identified in time."""
    meter._apply(parse_policies(ENV_BUDGET))
    row = await one_call(meter, monkeypatch, ALICE, answered_after=0.0)
    assert (row.user_name, row.client_pid) == (None, None)
    assert row.error == NOT_IN_TIME


async def test_a_late_lookup_that_found_no_process_keeps_the_note(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    meter._apply(parse_policies(ENV_BUDGET))
    nobody = ClientProcess(problem="no process owns the client's socket")
    row = await one_call(meter, monkeypatch, nobody, answered_after=0.4)
    assert (row.user_name, row.client_pid) == (None, None)
    assert row.error == NOT_IN_TIME


async def test_a_sockets_rows_named_by_a_late_lookup_say_it_was_identified_late(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Responses WebSocket opened before its lookup answered: its later create's row names alice
    and pid 4242 (socket_metering._identify_late). Before, that row's error still said "calling
    process not identified in time" (the handshake's note, which its rows copy)."""
    for meter in metered(tmp_path):
        monkeypatch.setattr("addon.meter.PROCESS_LOOKUP_TIMEOUT", 0.05)
        monkeypatch.setattr("addon.meter.lookup_client_process", slow(ALICE, 0.2))
        flow = handshake()
        await open_session(meter, flow)
        session = meter.sockets.sessions[flow]
        assert session.handshake.error == NOT_IN_TIME  # opened before the lookup answered: true then
        await asyncio.sleep(0.4)
        await client_says(meter, flow, create_event("gpt-5-mini", "a"))
        row = session.latest["a"]  # type: ignore[attr-defined]
        assert (row.user_name, row.client_pid) == ("alice", 4242)
        assert row.error == IDENTIFIED_LATE
