"""A lookup answering after a Realtime, Realtime translation, OpenAI Live or Gemini Live session
opened (no user limit decided its user at the handshake): its rows from then on, and the budget
scopes its work is held to, are the user's the lookup names, as a Responses WebSocket's creates
are (tests/test_late_user_lookup.py). Each session is opened while the lookup runs (0.05 s wait, a
0.2 s answer), then billed after it answered."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_gemini_live_hooks as gemini_hooks
import test_openai_live_hooks as openai_live_hooks
import test_realtime_hooks as realtime_hooks
import test_realtime_translation_hooks as translation_hooks
from fake_gemini_live import setup_message
from fake_openai_live import session_start, session_started, usage_updated
from fake_realtime import RESPONSE_USAGE, response_created, response_done
from fake_realtime_translation import session_created
from mitmproxy import http
from websocket_hooks import client_says, closes_asked, metered, open_session, records, server_says

from addon.meter import Meter
from addon.policies import parse_policies
from tests.test_review_round14 import ALICE, slow

GUESTS = "attribution:\n  unidentified_user: guests\n"
# alice's day is capped at a cent: one Realtime response (RESPONSE_USAGE, $0.035) spends it.
ALICE_CAP = "users:\n  alice: {budget: {usd: 0.01, period: day}}\n"


@pytest.fixture
def meter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Meter]:
    """The addon whose process lookups answer alice (pid 4242) 0.2 s late, after a 0.05 s wait."""
    monkeypatch.setattr("addon.meter.PROCESS_LOOKUP_TIMEOUT", 0.05)
    monkeypatch.setattr("addon.meter.lookup_client_process", slow(ALICE, 0.2))
    yield from metered(tmp_path)


async def opened_late(meter: Meter, flow: http.HTTPFlow, user: str | None = None) -> None:
    """Open ``flow``'s session before its lookup answers (its handshake's user is ``user``), then
    let the lookup answer."""
    await open_session(meter, flow)
    handshake = meter.sockets.sessions[flow].handshake
    assert (handshake.user_name, handshake.client_pid) == (user, None)
    await asyncio.sleep(0.4)


def who(meter: Meter) -> list[tuple[Any, ...]]:
    return [(row.user_name, row.client_pid) for row in records(meter)]


async def realtime_response(meter: Meter, flow: http.HTTPFlow, response_id: str) -> Any:
    """A response.create (returned: dropped or not) and, if it went upstream, its response.done."""
    create = await client_says(meter, flow, {"type": "response.create"})
    if not create.dropped:
        await server_says(meter, flow, response_done(response_id, RESPONSE_USAGE))
    return create


async def test_a_realtime_response_after_the_late_lookup_is_alices(meter: Meter) -> None:
    """Was (None, None): the session kept the handshake's missing user for life."""
    flow = realtime_hooks.handshake()
    await opened_late(meter, flow)
    await realtime_response(meter, flow, "resp_1")
    assert who(meter) == [("alice", 4242)]


async def test_a_realtime_session_opened_as_the_stand_in_takes_the_late_user(meter: Meter) -> None:
    """Was ("guests", None)."""
    meter._apply(parse_policies(GUESTS))
    flow = realtime_hooks.handshake()
    await opened_late(meter, flow, "guests")
    await realtime_response(meter, flow, "resp_1")
    assert who(meter) == [("alice", 4242)]


async def test_alices_budget_holds_a_realtime_session_opened_before_the_lookup_answered(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alice gets a cent a day after the session opened: her first response spends it, her next
    create is refused and the socket closed (was: counted for no user, the second went upstream)."""
    closes = closes_asked(meter, monkeypatch)
    monkeypatch.setattr(realtime_hooks.meter_module.ctx.master.commands, "call", lambda *a: None)
    flow = realtime_hooks.handshake()
    await opened_late(meter, flow)
    meter._apply(parse_policies(ALICE_CAP))
    first = await realtime_response(meter, flow, "resp_1")
    assert not first.dropped and closes == []
    second = await realtime_response(meter, flow, "resp_2")
    assert second.dropped and [close[0] for close in closes] == [flow]
    assert who(meter) == [("alice", 4242)]
    assert records(meter)[0].cost_usd == realtime_hooks.RESPONSE_COST


async def test_a_realtime_response_cut_by_the_close_is_alices(meter: Meter) -> None:
    """The lookup answers after the session's last message: the row of the response the close cut
    is alice's too (was (None, None))."""
    flow = realtime_hooks.handshake()
    await open_session(meter, flow)
    await client_says(meter, flow, {"type": "response.create"})
    await server_says(meter, flow, response_created("resp_1"))
    await asyncio.sleep(0.4)
    meter.websocket_end(flow)
    assert who(meter) == [("alice", 4242)]
    assert records(meter)[0].aborted


async def test_a_gemini_live_turn_after_the_late_lookup_is_alices(meter: Meter) -> None:
    """Was (None, None)."""
    flow = gemini_hooks.handshake()
    await opened_late(meter, flow)
    await gemini_hooks.client_says(meter, flow, setup_message(f"models/{gemini_hooks.NATIVE}"))
    await gemini_hooks.turn(meter, flow, gemini_hooks.TURN_USAGES[0])
    assert who(meter) == [("alice", 4242)]


async def test_an_openai_live_report_after_the_late_lookup_is_alices(meter: Meter) -> None:
    """Was (None, None)."""
    flow = openai_live_hooks.handshake()
    await opened_late(meter, flow)
    await client_says(meter, flow, session_start())
    await server_says(meter, flow, session_started())
    await server_says(meter, flow, usage_updated(3, 1))
    assert who(meter) == [("alice", 4242)]


async def test_a_translation_minute_after_the_late_lookup_is_alices(meter: Meter) -> None:
    """Was (None, None)."""
    flow = translation_hooks.handshake()
    await opened_late(meter, flow)
    await server_says(meter, flow, session_created())
    await translation_hooks.send_audio(meter, flow, 60)
    assert who(meter) == [("alice", 4242)]


async def test_a_realtime_session_decided_with_user_limits_keeps_its_user(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guard: where users had limits at the handshake, the session stays the user it was decided as
    (guests, after a 0.1 s deciding wait), however late the lookup answers alice (passes before and
    after)."""
    monkeypatch.setattr("addon.client_process.DECIDING_LOOKUP_TIMEOUT", 0.1)
    meter._apply(parse_policies(GUESTS + "users:\n  alice: {budget: {usd: 100, period: day}}\n"))
    flow = realtime_hooks.handshake()
    await opened_late(meter, flow, "guests")
    await realtime_response(meter, flow, "resp_1")
    assert [user for user, _ in who(meter)] == ["guests"]
