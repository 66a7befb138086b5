"""The addon's OpenAI Live hooks with mitmproxy.test.taddons and tflow (no network, no process)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fake_openai_live import (
    DELEGATE_MODEL,
    DELEGATED_USAGE,
    PATH,
    audio_append,
    delegated,
    delegation_update,
    fork_start,
    output_audio,
    session_closed,
    session_start,
    session_started,
    session_updated,
    transcript_delta,
    usage_updated,
)
from fake_websocket import dumps
from mitmproxy import http
from test_meter import run_request
from test_realtime_mint_hooks import answer, live_session, mint, webrtc
from websocket_hooks import (
    CollectingStore,
    client_says,
    closes_asked,
    handshake_flow,
    metered,
    open_session,
    reads_of,
    records,
    server_says,
)

import addon.meter as meter_module
import addon.socket_metering as socket_metering
from addon.api_keys import key_fingerprint
from addon.budgets import scopes_for
from addon.meter import Meter
from addon.policies import parse_policies
from addon.providers import openai_live
from addon.usage import Usage

KEY = "sk-proj-liveTESTkey0000111122223333"
HOST = "api.openai.com"
RESTRICTED = """\
environments:
  development:
    models:
      allow: [gpt-live-1, gpt-5.5, gpt-5-mini]
      on_disallowed: downgrade
      downgrade: {gpt-live-1.1: gpt-live-1, gpt-5: gpt-5-mini}
"""
BLOCKING = RESTRICTED.replace("on_disallowed: downgrade", "on_disallowed: block")
BUDGETED = "environments:\n  development:\n    budget: {usd: 0.001, period: day}\n"  # 1.2 s of gpt-live-1


@pytest.fixture
def meter(tmp_path: Path) -> Iterator[Meter]:
    yield from metered(tmp_path)


@pytest.fixture
def closes(meter: Meter, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    return closes_asked(meter, monkeypatch)


@pytest.fixture
def injected(meter: Meter, monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, dict[str, Any]]]:
    """The events the proxy injects: (to the client?, the event decoded)."""
    sent: list[tuple[bool, dict[str, Any]]] = []

    def call(command: str, flow: http.HTTPFlow, to_client: bool, payload: bytes, is_text: bool) -> None:
        assert (command, is_text) == ("inject.websocket", True)
        if payload:  # an empty message only wakes the layer up after a close (close_websocket)
            sent.append((to_client, json.loads(payload)))

    monkeypatch.setattr(meter_module.ctx.master.commands, "call", call)
    return sent


def handshake(path: str = PATH, key: str | None = KEY) -> http.HTTPFlow:
    """A WebSocket flow as it is at requestheaders: the GET, no answer yet."""
    ours = {"upgrade": "websocket", "x-metering-tags": json.dumps({"env": "development", "team": "voice"})}
    if key is not None:
        ours["authorization"] = f"Bearer {key}"
    return handshake_flow(HOST, path, ours, None, time.time())


async def started(meter: Meter, model: str = "gpt-live-1") -> http.HTTPFlow:
    """A session opened, started and acknowledged."""
    flow = handshake()
    await open_session(meter, flow)
    start = await client_says(meter, flow, session_start(model))
    assert not start.dropped
    await server_says(meter, flow, session_started(model))
    return flow


async def speak(meter: Meter, flow: http.HTTPFlow, total: float, n: int = 1) -> None:
    """Two audio appends, the model's audio and transcript, then a usage report of ``total``."""
    for i in range(2):
        await client_says(meter, flow, audio_append(i))
    await server_says(meter, flow, output_audio(n))
    await server_says(meter, flow, transcript_delta())
    await server_says(meter, flow, usage_updated(total, n))


async def capped(meter: Meter, monkeypatch: pytest.MonkeyPatch) -> http.HTTPFlow:
    """A session that spent its budget (3 s against $0.001) and was capped at its next client
    event (sent upstream as session.close), with a grace of 0.05 s before the proxy's own close."""
    monkeypatch.setattr(socket_metering, "LIVE_CLOSE_GRACE", 0.05)
    meter._apply(parse_policies(BUDGETED))
    flow = await started(meter)
    await speak(meter, flow, 3)
    assert (await client_says(meter, flow, audio_append())).content == openai_live.CLOSE_EVENT
    return flow


async def test_each_increase_of_the_total_is_a_row_stored_inside_its_hook(meter: Meter) -> None:
    flow = handshake()
    await open_session(meter, flow)
    assert records(meter) == [] and meter.call_state(flow) is None  # the key went with the state
    start = await client_says(meter, flow, session_start())
    assert not start.dropped and start.content == dumps(session_start())
    before = time.time()
    await server_says(meter, flow, session_started())
    for i in range(2):
        await client_says(meter, flow, audio_append(i))
    await server_says(meter, flow, output_audio(1))
    assert records(meter) == []
    report = await server_says(meter, flow, usage_updated(3, 1))
    # Stored within the hook: before mitmproxy forwards the report to the client.
    [first] = records(meter)
    assert not report.dropped and report.content == dumps(usage_updated(3, 1))
    assert (first.provider, first.host, first.path, first.api_flavor, first.status_code) == (
        "openai",
        HOST,
        PATH,
        "live",
        101,
    )
    assert (first.environment, first.environment_source, first.team) == ("development", "header", "voice")
    assert first.key_fingerprint == key_fingerprint(KEY) and KEY not in first.to_json()
    assert (first.model_requested, first.model_sent, first.model_reported) == ("gpt-live-1",) * 3
    assert first.usage == Usage(audio_seconds=3) and first.audio_seconds == 3
    assert (first.input_tokens, first.output_tokens) == (0, 0)
    assert (first.streamed, first.aborted, first.action, first.usage_source, first.error) == (
        True,
        False,
        "allowed",
        "reported",
        None,
    )
    assert before <= first.ts.timestamp() and first.duration_ms is not None and first.duration_ms >= 0
    await speak(meter, flow, 3, 2)  # the same total again: nothing more to bill
    assert len(records(meter)) == 1
    await speak(meter, flow, 8.5, 3)
    second = records(meter)[1]
    assert second.audio_seconds == 5.5  # the increase, never the total
    assert second.ts.timestamp() >= first.ts.timestamp() + (first.duration_ms or 0) / 1000 - 0.001
    closed = await server_says(meter, flow, session_closed(11))
    assert not closed.dropped
    third = records(meter)[2]
    assert (third.audio_seconds, third.error, third.aborted) == (2.5, None, False)
    # The rows of a session add up to its final total.
    assert sum(r.audio_seconds or 0 for r in records(meter)) == 11
    flow.websocket.close_code = 1000  # type: ignore[union-attr]
    meter.websocket_end(flow)
    assert len(records(meter)) == 3  # session.closed came: nothing unknown


async def test_a_close_for_another_reason_says_why(meter: Meter) -> None:
    flow = await started(meter)
    await speak(meter, flow, 4)
    await server_says(meter, flow, session_closed(7, reason="expired"))
    _, last = records(meter)
    assert (last.audio_seconds, last.error) == (3, "the session closed: expired")


async def test_audio_passes_unread_and_unchanged(meter: Meter, monkeypatch: pytest.MonkeyPatch) -> None:
    flow = handshake()
    await open_session(meter, flow)
    read = reads_of(monkeypatch, openai_live, "read_server_event", "read_session_start")
    start = dumps(session_start())
    await client_says(meter, flow, start)
    assert read == [start]
    for i in range(3):
        message = await client_says(meter, flow, audio_append(i, size=40_000))
        assert not message.dropped and message.content == dumps(audio_append(i, size=40_000))
    sent = [
        dumps(output_audio(1, size=40_000)),
        dumps(transcript_delta()),
        b"\x00\x01 not json",
        b'{"type": "session.usage.updated", "usage": {"seconds": 1',  # truncated
        b"",
    ]
    for data in sent:
        message = await server_says(meter, flow, data)
        assert message.content == data and not message.dropped
    assert read == [start, sent[3]]  # audio both ways and deltas are never decoded
    assert records(meter) == []


async def test_a_session_cut_before_its_close_is_an_aborted_row(meter: Meter) -> None:
    flow = await started(meter)
    await speak(meter, flow, 2)
    flow.websocket.close_code = 1006  # type: ignore[union-attr]
    meter.websocket_end(flow)
    first, cut = records(meter)
    assert first.audio_seconds == 2
    assert (cut.aborted, cut.usage, cut.usage_source, cut.cost_usd) == (True, None, "none", None)
    assert (cut.model_sent, cut.api_flavor, cut.status_code) == ("gpt-live-1", "live", 101)
    assert cut.error == (
        "the WebSocket closed (1006) before session.closed: "
        "the seconds after the last usage report are unknown"
    )
    meter.websocket_end(flow)
    assert len(records(meter)) == 2


async def test_a_close_without_usage_is_an_aborted_row(meter: Meter) -> None:
    """A session.closed whose usage cannot be read: what the session billed after its last report is
    unknown, said by an aborted row (it went unsaid: the close had come, so the end added none)."""
    flow = await started(meter)
    await speak(meter, flow, 2)
    closed = await server_says(meter, flow, {"type": "session.closed", "reason": "close_requested"})
    assert not closed.dropped
    flow.websocket.close_code = 1000  # type: ignore[union-attr]
    meter.websocket_end(flow)
    first, cut = records(meter)
    assert first.audio_seconds == 2
    assert (cut.aborted, cut.usage, cut.model_sent) == (True, None, "gpt-live-1")
    assert cut.error == "session.closed without usage: the seconds after the last usage report are unknown"


async def test_a_session_that_never_started_has_no_row(meter: Meter) -> None:
    """The server answered the start with an error and hung up: no session, nothing billed."""
    flow = handshake()
    await open_session(meter, flow)
    await client_says(meter, flow, session_start("gpt-live-9"))
    await server_says(meter, flow, {"type": "error", "error": {"code": "model_not_found", "message": "no"}})
    flow.websocket.close_code = 1008  # type: ignore[union-attr]
    meter.websocket_end(flow)
    assert records(meter) == []


async def test_downgrade_rewrites_the_start(meter: Meter, closes: list[tuple[Any, ...]]) -> None:
    meter._apply(parse_policies(RESTRICTED))
    flow = handshake()
    await open_session(meter, flow)
    assert flow.websocket is not None  # the handshake names no model: nothing to check yet
    original = dumps(session_start("gpt-live-1.1", delegate_to=DELEGATE_MODEL))
    start = await client_says(meter, flow, original)
    assert not start.dropped and closes == []
    assert start.content == original.replace(b'"gpt-live-1.1"', b'"gpt-live-1"')
    await server_says(meter, flow, session_started("gpt-live-1"))
    await speak(meter, flow, 5)
    [row] = records(meter)
    assert (row.action, row.model_requested, row.model_sent, row.model_reported) == (
        "downgraded",
        "gpt-live-1.1",
        "gpt-live-1",
        "gpt-live-1",
    )


async def test_a_start_spelled_with_escapes_is_read(meter: Meter, closes: list[tuple[Any, ...]]) -> None:
    """Any JSON parser reads ``"session.st\\u0061rt"`` as a start: its model is read and
    downgraded, not the session refused for naming none."""
    meter._apply(parse_policies(RESTRICTED))
    flow = handshake()
    await open_session(meter, flow)
    original = dumps(session_start("gpt-live-1.1", delegate_to=DELEGATE_MODEL))
    escaped = original.replace(b'"session.start"', b'"session.st\\u0061rt"')
    start = await client_says(meter, flow, escaped)
    assert not start.dropped and closes == []
    assert json.loads(start.content)["session"]["model"] == "gpt-live-1"
    await server_says(meter, flow, session_started("gpt-live-1"))
    await speak(meter, flow, 5)
    [row] = records(meter)
    assert (row.action, row.model_requested, row.model_sent) == ("downgraded", "gpt-live-1.1", "gpt-live-1")


async def test_a_start_after_a_start_the_server_refused_is_checked_too(
    meter: Meter, closes: list[tuple[Any, ...]]
) -> None:
    """The server answered the first start with an error (the socket stays open): a second start
    naming another model is checked as the first was (it went upstream unchanged). Once the session
    started, the client's messages are not looked at for a start."""
    meter._apply(parse_policies(RESTRICTED))
    flow = handshake()
    await open_session(meter, flow)
    assert not (await client_says(meter, flow, session_start("gpt-live-1"))).dropped
    await server_says(meter, flow, {"type": "error", "error": {"code": "invalid_value", "message": "no"}})
    original = dumps(session_start("gpt-live-1.1"))
    again = await client_says(meter, flow, original)
    assert not again.dropped and closes == []
    assert again.content == original.replace(b'"gpt-live-1.1"', b'"gpt-live-1"')
    await server_says(meter, flow, session_started("gpt-live-1"))
    await speak(meter, flow, 2)
    [row] = records(meter)
    assert (row.action, row.model_requested, row.model_sent) == ("downgraded", "gpt-live-1.1", "gpt-live-1")


async def test_a_blocked_model_is_refused_at_the_start(
    meter: Meter, closes: list[tuple[Any, ...]], injected: list[tuple[bool, dict[str, Any]]]
) -> None:
    meter._apply(parse_policies(BLOCKING))
    flow = handshake()
    await open_session(meter, flow)
    start = await client_says(meter, flow, session_start("gpt-live-1.1"))
    assert start.dropped
    [(to_client, event)] = injected
    assert to_client and event["type"] == "error" and event["client_event_id"] == "event_start"
    error = event["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "model_not_allowed",
        "session.model",
    )
    assert error["message"].startswith(
        "tokometer: model gpt-live-1.1 is not allowed in environment development"
    )
    [(closed, code, reason)] = closes
    assert (closed, code) == (flow, 1008)
    assert reason.startswith("tokometer: model gpt-live-1.1 is not allowed in environment development")
    [row] = records(meter)
    assert (row.action, row.status_code, row.model_requested, row.model_sent) == (
        "blocked",
        101,
        "gpt-live-1.1",
        None,
    )
    assert (row.cost_usd, row.price_status, row.api_flavor) == (Decimal(0), "not_billed", "live")
    assert "is not allowed" in (row.error or "") and "closed 1008" in (row.error or "")
    # What the client sends while the socket closes goes nowhere; the close adds no row.
    assert (await client_says(meter, flow, audio_append())).dropped
    flow.websocket.close_code = 1008  # type: ignore[union-attr]
    meter.websocket_end(flow)
    assert len(records(meter)) == 1


async def test_a_disallowed_delegation_model_is_downgraded_in_the_start(
    meter: Meter, closes: list[tuple[Any, ...]]
) -> None:
    """Only the delegation's model changes (the session's is allowed); both at once when both are
    disallowed; a start naming the same model twice is written out again, as ASCII-escaped JSON."""
    meter._apply(parse_policies(RESTRICTED))
    flow = handshake()
    await open_session(meter, flow)
    original = dumps(session_start("gpt-live-1", delegate_to="gpt-5"))
    start = await client_says(meter, flow, original)
    assert not start.dropped and closes == []
    assert start.content == original.replace(b'"gpt-5"', b'"gpt-5-mini"')
    await server_says(meter, flow, session_started("gpt-live-1"))
    await speak(meter, flow, 5)
    [row] = records(meter)
    assert (row.action, row.model_requested, row.model_sent) == ("downgraded", "gpt-live-1", "gpt-live-1")
    both = session_start("gpt-live-1.1", delegate_to="gpt-5", instructions="Sé breve. " * 500)
    flow = handshake()
    await open_session(meter, flow)
    start = await client_says(meter, flow, both)
    wanted = json.loads(dumps(both))
    wanted["session"]["model"] = "gpt-live-1"
    wanted["session"]["delegation"]["responses"]["model"] = "gpt-5-mini"
    assert start.content.isascii() and json.loads(start.content) == wanted
    twice = session_start("gpt-live-1.1", delegate_to="gpt-live-1.1")
    flow = handshake()
    await open_session(meter, flow)
    start = await client_says(meter, flow, twice)
    assert not start.dropped and closes == []
    got = json.loads(start.content)
    assert (got["session"]["model"], got["session"]["delegation"]["responses"]["model"]) == (
        "gpt-live-1",
    ) * 2


async def test_a_blocked_delegation_model_refuses_the_session(
    meter: Meter, closes: list[tuple[Any, ...]], injected: list[tuple[bool, dict[str, Any]]]
) -> None:
    meter._apply(parse_policies(BLOCKING))
    flow = handshake()
    await open_session(meter, flow)
    start = await client_says(meter, flow, session_start("gpt-live-1", delegate_to="gpt-5"))
    assert start.dropped
    [(to_client, event)] = injected
    assert to_client and event["client_event_id"] == "event_start"
    error = event["error"]
    assert (error["code"], error["param"]) == ("model_not_allowed", "session.delegation.responses.model")
    assert error["message"].startswith("tokometer: model gpt-5 is not allowed in environment development")
    [(closed, code, reason)] = closes
    assert (closed, code) == (flow, 1008) and reason == error["message"]
    [row] = records(meter)
    assert (row.action, row.status_code, row.model_requested, row.model_sent) == (
        "blocked",
        101,
        "gpt-5",
        None,
    )
    assert (row.cost_usd, row.price_status, row.api_flavor) == (Decimal(0), "not_billed", "live")
    # A Responses delegation naming no model cannot be checked: refused where models are restricted.
    nameless = session_start()
    nameless["session"]["delegation"] = {"type": "responses", "responses": {"instructions": "Look it up."}}
    flow = handshake()
    await open_session(meter, flow)
    assert (await client_says(meter, flow, nameless)).dropped
    assert injected[-1][1]["error"]["param"] == "session.delegation.responses.model"
    assert "names no session.delegation.responses.model" in (records(meter)[-1].error or "")


async def test_a_session_update_naming_a_delegation_model_is_checked(
    meter: Meter, closes: list[tuple[Any, ...]], injected: list[tuple[bool, dict[str, Any]]]
) -> None:
    """``session.update`` may change the delegation's model for later delegated calls: a disallowed
    one is downgraded in the message, or the update is refused (the session goes on as it was)."""
    meter._apply(parse_policies(RESTRICTED))
    flow = await started(meter)
    update = {
        "type": "session.update",
        "event_id": "event_upd",
        "session": {"delegation": {"type": "responses", "responses": {"model": "gpt-5", "tools": []}}},
    }
    sent = await client_says(meter, flow, update)
    assert not sent.dropped and sent.content == dumps(update).replace(b'"gpt-5"', b'"gpt-5-mini"')
    allowed = await client_says(meter, flow, dumps(update).replace(b'"gpt-5"', b'"gpt-5.5"'))
    assert not allowed.dropped and allowed.content == dumps(update).replace(b'"gpt-5"', b'"gpt-5.5"')
    meter._apply(parse_policies(BLOCKING))
    refused = await client_says(meter, flow, update)
    assert refused.dropped and closes == []
    [(to_client, event)] = injected
    assert to_client and event["client_event_id"] == "event_upd"
    assert (event["error"]["code"], event["error"]["param"]) == (
        "model_not_allowed",
        "session.delegation.responses.model",
    )
    [row] = records(meter)
    assert (row.action, row.status_code, row.model_requested, row.model_sent, row.api_flavor) == (
        "blocked",
        403,
        "gpt-5",
        None,
        "live",
    )
    assert (row.cost_usd, row.price_status) == (Decimal(0), "not_billed")
    assert not (await client_says(meter, flow, audio_append())).dropped  # the session goes on
    await speak(meter, flow, 2)
    assert records(meter)[-1].audio_seconds == 2


async def test_a_start_without_a_model_is_refused_where_models_are_restricted(
    meter: Meter, closes: list[tuple[Any, ...]], injected: list[tuple[bool, dict[str, Any]]]
) -> None:
    open_flow = handshake()
    await open_session(meter, open_flow)
    nameless = b'{"type": "session.start", "session": {}}'
    assert not (await client_says(meter, open_flow, nameless)).dropped  # nothing restricted
    meter._apply(parse_policies(RESTRICTED))
    for first in (nameless, dumps(audio_append()), b"\x00garbage"):
        flow = handshake()
        await open_session(meter, flow)
        assert (await client_says(meter, flow, first)).dropped
    assert [code for _, code, _ in closes] == [1008] * 3
    assert all("could not be read" in (row.error or "") for row in records(meter))
    assert [event["error"]["param"] for _, event in injected] == ["session.model"] * 3


async def test_a_spent_budget_refuses_the_handshake(meter: Meter) -> None:
    meter._apply(parse_policies(BUDGETED))
    meter.enforcer.budgets.hold("earlier", scopes_for("development"), Decimal(1))
    flow = handshake()
    await open_session(meter, flow)
    assert flow.response.status_code == 429 and flow.websocket is None  # type: ignore[union-attr]
    error = json.loads(flow.response.content)["error"]  # type: ignore[union-attr]
    assert error["code"] == "budget_exceeded"
    [row] = records(meter)
    assert (row.action, row.status_code, row.api_flavor, row.path, row.cost_usd) == (
        "over_budget",
        429,
        "live",
        PATH,
        Decimal(0),
    )


async def test_a_budget_spent_after_the_handshake_refuses_the_start(
    meter: Meter, closes: list[tuple[Any, ...]], injected: list[tuple[bool, dict[str, Any]]]
) -> None:
    meter._apply(parse_policies(BUDGETED))
    flow = handshake()
    await open_session(meter, flow)
    meter.enforcer.budgets.hold("elsewhere", scopes_for("development"), Decimal(1))
    assert (await client_says(meter, flow, session_start())).dropped
    [(_, code, reason)] = closes
    assert code == 1008 and reason.startswith("tokometer: development budget of $0.001 per day is spent")
    [(to_client, event)] = injected
    assert to_client and event["error"]["code"] == "budget_exceeded"
    [row] = records(meter)
    assert (row.action, row.model_requested, row.model_sent, row.price_status) == (
        "over_budget",
        "gpt-live-1",
        None,
        "not_billed",
    )


async def test_a_spent_budget_caps_the_session_and_collects_its_final_usage(
    meter: Meter, closes: list[tuple[Any, ...]], injected: list[tuple[bool, dict[str, Any]]]
) -> None:
    """Once a row spends the budget, the next client event goes upstream as a session.close (the
    session's time is what bills) and the client gets an error event; upstream's session.closed,
    with the final total, is metered and reaches the client; upstream then closes the socket."""
    meter._apply(parse_policies(BUDGETED))
    flow = await started(meter)
    await speak(meter, flow, 3)
    [row] = records(meter)
    # Priced at once, and its cost counts against the budget before the store gets to it.
    assert (row.price_status, row.cost_usd) == ("priced", Decimal("0.0025"))
    assert closes == [] and injected == []
    audio = await client_says(meter, flow, audio_append())
    assert not audio.dropped and json.loads(audio.content) == {"type": "session.close"}
    [(to_client, error)] = injected
    assert to_client and error["type"] == "error" and error["error"]["code"] == "budget_exceeded"
    assert error["error"]["message"].startswith("tokometer: development budget of $0.001 per day is spent")
    assert closes == []  # upstream is asked to close first: its final usage is still to come
    assert (await client_says(meter, flow, audio_append(1))).dropped
    assert (await client_says(meter, flow, b'{"type": "session.close"}')).dropped  # sent already
    assert len(injected) == 1
    final = await server_says(meter, flow, session_closed(4.5))
    assert not final.dropped
    _, last = records(meter)
    assert last.audio_seconds == 1.5 and last.error is None
    flow.websocket.close_code = 1000  # type: ignore[union-attr]
    meter.websocket_end(flow)  # upstream closed it: the proxy's close after a grace is called off
    assert len(records(meter)) == 2
    await asyncio.sleep(0)
    assert closes == []


async def test_a_capped_session_whose_close_never_comes_is_closed_after_a_grace(
    meter: Meter,
    closes: list[tuple[Any, ...]],
    injected: list[tuple[bool, dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flow = await capped(meter, monkeypatch)
    assert closes == []
    await asyncio.sleep(0.2)
    [(_, code, _)] = closes
    assert code == 1008
    flow.websocket.close_code = 1008  # type: ignore[union-attr]
    meter.websocket_end(flow)
    _, cut = records(meter)
    assert cut.aborted and cut.usage is None
    assert "the seconds after the last usage report are unknown" in (cut.error or "")


async def test_the_clients_own_close_passes_once_the_budget_is_spent(
    meter: Meter, closes: list[tuple[Any, ...]], injected: list[tuple[bool, dict[str, Any]]]
) -> None:
    meter._apply(parse_policies(BUDGETED))
    flow = await started(meter)
    await speak(meter, flow, 3)
    close = await client_says(meter, flow, b'{"type": "session.close", "event_id": "bye"}')
    assert not close.dropped and injected == [] and closes == []
    await server_says(meter, flow, session_closed(3))
    assert len(records(meter)) == 1 and closes == []


async def test_delegated_responses_calls_are_rows_of_their_own(meter: Meter) -> None:
    flow = handshake()
    await open_session(meter, flow)
    await client_says(meter, flow, session_start(delegate_to=DELEGATE_MODEL))
    await server_says(meter, flow, session_started())
    await server_says(meter, flow, delegated("response.created", "in_progress", None))
    assert records(meter) == []
    done = await server_says(meter, flow, delegated("response.completed", "completed", DELEGATED_USAGE))
    assert not done.dropped
    await speak(meter, flow, 2)
    call, seconds = records(meter)
    assert (call.api_flavor, call.path, call.status_code, call.action) == ("responses", PATH, 101, "allowed")
    assert (call.model_requested, call.model_sent, call.model_reported) == (None, None, DELEGATE_MODEL)
    assert call.usage == Usage(
        input_tokens=900, cache_read_tokens=100, output_tokens=250, reasoning_tokens=50
    )
    assert (call.audio_seconds, call.service_tier, call.environment) == (None, "default", "development")
    assert (seconds.api_flavor, seconds.audio_seconds) == ("live", 2)


async def test_a_rate_limit_refuses_the_handshake(meter: Meter) -> None:
    meter._apply(parse_policies("environments:\n  development:\n    rate_limit: {requests_per_minute: 1}\n"))
    first, second = handshake(), handshake()
    await open_session(meter, first)
    await open_session(meter, second)
    assert first.websocket is not None and second.websocket is None
    assert second.response.status_code == 429  # type: ignore[union-attr]
    [row] = records(meter)
    assert (row.action, row.status_code, row.api_flavor) == ("rate_limited", 429, "live")


def fork_path(stored: str = "live_stored_1") -> str:
    return f"/v1/live/sessions/{stored}/fork"


async def forked(
    meter: Meter, stored: str = "live_stored_1", delegate_to: str | None = None
) -> http.HTTPFlow:
    """A fork opened over WebSocket, started (its start names no model) and acknowledged (the new
    session's id, the inherited model)."""
    flow = handshake(fork_path(stored))
    await open_session(meter, flow)
    assert flow.websocket is not None and meter.sockets.session(flow) is not None
    start = await client_says(meter, flow, fork_start(delegate_to))
    assert not start.dropped
    await server_says(meter, flow, session_started("gpt-live-1", "event_fork", f"live_fork_of_{stored}"))
    return flow


async def test_a_fork_is_metered_as_a_primary_session(meter: Meter, caplog: pytest.LogCaptureFixture) -> None:
    """A fork over WebSocket (a stored session continued as a new one): each increase of its total
    is a row, on the fork's path, priced by the model session.started names (its start names none:
    the model is inherited); the proxy's log no longer calls it unmetered."""
    caplog.set_level(logging.WARNING, "tokometer")
    flow = await forked(meter)
    meter.websocket_start(flow)
    assert "passes unmetered" not in caplog.text
    await speak(meter, flow, 3)
    await speak(meter, flow, 8, 2)
    await server_says(meter, flow, session_closed(11, session_id="live_fork_of_live_stored_1"))
    rows = records(meter)
    assert [r.audio_seconds for r in rows] == [3, 5, 3]
    for row in rows:
        assert (row.path, row.api_flavor, row.status_code, row.action) == (
            fork_path(),
            "live",
            101,
            "allowed",
        )
        assert (row.model_requested, row.model_sent, row.model_reported) == (None, None, "gpt-live-1")
        assert (row.environment, row.team, row.key_fingerprint) == (
            "development",
            "voice",
            key_fingerprint(KEY),
        )
        assert row.aborted is False and row.usage_source == "reported"
    meter._price(rows[0])
    assert (rows[0].cost_usd, rows[0].price_status, rows[0].price_model) == (
        Decimal("0.0025"),
        "priced",
        "gpt-live-1",
    )


async def test_a_sideband_of_a_fork_metered_here_bills_nothing_again(meter: Meter) -> None:
    fork = await forked(meter)
    side = await attached(meter, "live_fork_of_live_stored_1")
    await speak(meter, fork, 3)
    await server_says(meter, side, usage_updated(3))
    assert [r.path for r in records(meter)] == [fork_path()]


async def test_a_forks_start_naming_no_model_is_not_refused_where_models_are_restricted(
    meter: Meter, closes: list[tuple[Any, ...]]
) -> None:
    """The model is inherited: a fork's start naming none passes unchanged, where a primary's
    start naming none is refused (its model cannot be read)."""
    meter._apply(parse_policies(BLOCKING))
    flow = handshake(fork_path())
    await open_session(meter, flow)
    start = await client_says(meter, flow, fork_start())
    assert not start.dropped and start.content == dumps(fork_start()) and closes == []
    await server_says(meter, flow, session_started("gpt-live-1", "event_fork", "live_fork_of_live_stored_1"))
    await speak(meter, flow, 2)
    [row] = records(meter)
    assert (row.action, row.model_requested, row.model_reported, row.audio_seconds) == (
        "allowed",
        None,
        "gpt-live-1",
        2,
    )


async def test_a_forks_delegation_model_is_downgraded_in_its_start(
    meter: Meter, closes: list[tuple[Any, ...]]
) -> None:
    meter._apply(parse_policies(RESTRICTED))
    flow = handshake(fork_path())
    await open_session(meter, flow)
    original = dumps(fork_start("gpt-5"))
    start = await client_says(meter, flow, original)
    assert not start.dropped and closes == []
    assert start.content == original.replace(b'"gpt-5"', b'"gpt-5-mini"')  # only its value changed
    await server_says(meter, flow, session_started("gpt-live-1", "event_fork", "live_fork_of_live_stored_1"))
    await speak(meter, flow, 2)
    [row] = records(meter)
    assert (row.action, row.model_sent, row.model_reported) == ("downgraded", None, "gpt-live-1")


@pytest.mark.parametrize(
    ("event", "refused", "param"),
    [
        (fork_start("gpt-5"), "gpt-5", "session.delegation.responses.model"),
        (  # a model a fork should not name (it is inherited): checked if it does
            {"type": "session.start", "event_id": "event_fork", "session": {"model": "gpt-live-1.1"}},
            "gpt-live-1.1",
            "session.model",
        ),
    ],
)
async def test_a_blocked_model_a_fork_names_refuses_it_at_its_start(
    meter: Meter,
    closes: list[tuple[Any, ...]],
    injected: list[tuple[bool, dict[str, Any]]],
    event: dict[str, Any],
    refused: str,
    param: str,
) -> None:
    meter._apply(parse_policies(BLOCKING))
    flow = handshake(fork_path())
    await open_session(meter, flow)
    start = await client_says(meter, flow, event)
    assert start.dropped
    [(to_client, error)] = injected
    assert to_client and error["client_event_id"] == "event_fork"
    assert (error["error"]["code"], error["error"]["param"]) == ("model_not_allowed", param)
    [(closed, code, reason)] = closes
    assert (closed, code) == (flow, 1008) and reason.startswith(f"tokometer: model {refused} is not allowed")
    [row] = records(meter)
    assert (row.path, row.action, row.model_requested, row.model_sent) == (
        fork_path(),
        "blocked",
        refused,
        None,
    )
    assert (row.cost_usd, row.price_status) == (Decimal(0), "not_billed")


@pytest.mark.parametrize("policies", [BLOCKING, RESTRICTED])
async def test_a_disallowed_model_a_fork_inherits_refuses_it_as_it_starts(
    meter: Meter,
    closes: list[tuple[Any, ...]],
    injected: list[tuple[bool, dict[str, Any]]],
    policies: str,
) -> None:
    """The stored session ran a model this environment does not allow: named by nothing before
    session.started, and not to be rewritten (a fork inherits it), it is refused then, whether the
    rules block it or would downgrade it. The client never gets the start; it gets Live's error
    event and, with upstream, a close 1008; the row is the handshake's, not billed."""
    meter._apply(parse_policies(policies))
    flow = handshake(fork_path())
    await open_session(meter, flow)
    assert not (await client_says(meter, flow, fork_start())).dropped
    started = await server_says(
        meter, flow, session_started("gpt-live-1.1", "event_fork", "live_fork_of_live_stored_1")
    )
    assert started.dropped
    [(to_client, error)] = injected
    assert to_client and (error["error"]["code"], error["error"]["param"]) == (
        "model_not_allowed",
        "session.model",
    )
    assert error["error"]["message"].startswith("tokometer: model gpt-live-1.1 is not allowed")
    [(closed, code, _)] = closes
    assert (closed, code) == (flow, 1008)
    [row] = records(meter)
    assert (row.path, row.action, row.model_requested, row.model_sent) == (
        fork_path(),
        "blocked",
        "gpt-live-1.1",
        None,
    )
    assert (row.cost_usd, row.price_status) == (Decimal(0), "not_billed")
    if policies is RESTRICTED:
        assert "cannot be rewritten" in (row.error or "")
    # The session ran upstream until the close: a report still coming bills, the rest is unknown.
    await server_says(meter, flow, usage_updated(1))
    flow.websocket.close_code = 1008  # type: ignore[union-attr]
    meter.websocket_end(flow)
    _, second, cut = records(meter)
    assert (second.audio_seconds, second.model_reported, second.aborted) == (1, "gpt-live-1.1", False)
    assert (cut.aborted, cut.usage, cut.action) == (True, None, "blocked")


async def test_an_allowed_inherited_model_is_not_refused(meter: Meter, closes: list[tuple[Any, ...]]) -> None:
    meter._apply(parse_policies(BLOCKING))
    flow = await forked(meter)
    assert closes == []
    await speak(meter, flow, 2)
    [row] = records(meter)
    assert (row.action, row.model_reported, row.audio_seconds) == ("allowed", "gpt-live-1", 2)


async def test_a_spent_budget_or_a_rate_limit_refuses_a_forks_handshake(meter: Meter) -> None:
    """A fork is a new session: counted by a rate limit as a primary is, refused when a budget is spent."""
    meter._apply(
        parse_policies(
            "environments:\n  development:\n    rate_limit: {requests_per_minute: 1}\n"
            "  staging:\n    budget: {usd: 0.001, period: day}\n"
        )
    )
    first, second = handshake(fork_path()), handshake(fork_path())
    await open_session(meter, first)
    await open_session(meter, second)
    assert first.websocket is not None and second.websocket is None
    assert second.response is not None and second.response.status_code == 429
    [row] = records(meter)
    assert (row.path, row.action, row.status_code) == (fork_path(), "rate_limited", 429)
    # A spent budget (the development environment's own: staging's above never applied).
    meter._apply(parse_policies(BUDGETED))
    meter.enforcer.budgets.record(scopes_for("development", None, None), Decimal("0.01"), datetime.now(UTC))
    spent = handshake(fork_path())
    await open_session(meter, spent)
    assert spent.websocket is None and spent.response is not None and spent.response.status_code == 429
    assert records(meter)[-1].action == "over_budget"


def sideband_path(session_id: str) -> str:
    return f"/v1/live/sessions/{session_id}/attach"


async def attached(meter: Meter, session_id: str) -> http.HTTPFlow:
    """A sideband opened (upgraded) to the session ``session_id``."""
    flow = handshake(sideband_path(session_id))
    await open_session(meter, flow)
    assert flow.websocket is not None and meter.sockets.session(flow) is not None
    return flow


async def test_a_sideband_update_naming_a_disallowed_delegation_model_is_downgraded_or_refused(
    meter: Meter, closes: list[tuple[Any, ...]], injected: list[tuple[bool, dict[str, Any]]]
) -> None:
    """A server attached to a session may change its delegation's model: checked against the
    allowlist of the sideband's environment, as a primary's session.update is."""
    meter._apply(parse_policies(RESTRICTED))
    flow = await attached(meter, "live_side_upd")
    sent = await client_says(meter, flow, delegation_update("gpt-5"))
    assert not sent.dropped
    assert sent.content == dumps(delegation_update("gpt-5")).replace(b'"gpt-5"', b'"gpt-5-mini"')
    meter._apply(parse_policies(BLOCKING))
    refused = await client_says(meter, flow, delegation_update("gpt-5"))
    assert refused.dropped and closes == []
    [(to_client, event)] = injected
    assert to_client and event["client_event_id"] == "event_upd"
    assert (event["error"]["code"], event["error"]["param"]) == (
        "model_not_allowed",
        "session.delegation.responses.model",
    )
    [row] = records(meter)
    assert (row.action, row.status_code, row.model_requested, row.model_sent) == (
        "blocked",
        403,
        "gpt-5",
        None,
    )
    assert (row.api_flavor, row.path, row.environment) == (
        "live",
        sideband_path("live_side_upd"),
        "development",
    )
    assert (row.cost_usd, row.price_status) == (Decimal(0), "not_billed")
    assert not (await client_says(meter, flow, {"type": "response.create"})).dropped  # it goes on


async def test_a_sideband_of_a_session_not_seen_here_is_metered(meter: Meter) -> None:
    """A WebRTC or SIP session's media never pass the proxy: its sideband's usage reports are the
    only place its seconds are seen, metered as a primary's are (one row per increase)."""
    flow = await attached(meter, "live_webrtc1")
    await server_says(meter, flow, session_updated("gpt-live-1", "live_webrtc1"))
    for n, total in enumerate((3, 3, 8), 1):
        report = await server_says(meter, flow, usage_updated(total, n))
        assert not report.dropped and report.content == dumps(usage_updated(total, n))
    closed = await server_says(meter, flow, session_closed(11, session_id="live_webrtc1"))
    assert not closed.dropped
    rows = records(meter)
    assert [row.audio_seconds for row in rows] == [3, 5, 3]
    for row in rows:
        assert (row.api_flavor, row.path, row.status_code, row.model_reported) == (
            "live",
            sideband_path("live_webrtc1"),
            101,
            "gpt-live-1",
        )
        assert (row.environment, row.team, row.aborted) == ("development", "voice", False)
        assert row.key_fingerprint == key_fingerprint(KEY)
    flow.websocket.close_code = 1000  # type: ignore[union-attr]
    meter.websocket_end(flow)
    assert len(records(meter)) == 3
    # A sideband that leaves before session.closed: the seconds after its last report are unknown.
    flow = await attached(meter, "live_webrtc2")
    await server_says(meter, flow, usage_updated(4))
    flow.websocket.close_code = 1000  # type: ignore[union-attr]
    meter.websocket_end(flow)
    first, cut = records(meter)[3:]
    assert (first.audio_seconds, cut.aborted, cut.usage) == (4, True, None)


async def test_a_sideband_of_a_session_metered_here_is_not_billed_again(meter: Meter) -> None:
    """The primary WebSocket of the session passes this proxy (its session.started named the id):
    the sideband's reports of the same seconds are not billed twice, nor its delegated calls; after
    a script reload too. A second sideband of a session metered by a first one is not billed either."""
    primary = await started(meter)  # session.started: live_fake123
    side = await attached(meter, "live_fake123")
    await server_says(meter, side, usage_updated(3))
    await server_says(meter, side, delegated("response.completed", "completed", DELEGATED_USAGE))
    assert records(meter) == []
    await speak(meter, primary, 3)
    [row] = records(meter)
    assert (row.path, row.audio_seconds) == (PATH, 3)
    meter.done()  # mitmproxy reloads the script
    new = Meter()
    new.store = CollectingStore()  # type: ignore[assignment]
    late = await attached(new, "live_fake123")
    await server_says(new, late, usage_updated(5, 2))
    await server_says(new, side, session_closed(6))
    side.websocket.close_code = late.websocket.close_code = 1000  # type: ignore[union-attr]
    new.websocket_end(side)
    new.websocket_end(late)
    assert records(new) == []
    first = await attached(new, "live_webrtc3")
    second = await attached(new, "live_webrtc3")
    await server_says(new, first, usage_updated(2))
    await server_says(new, second, usage_updated(2))
    assert [row.audio_seconds for row in records(new)] == [2]


async def test_a_spent_budget_refuses_a_sideband_and_caps_one_attached(
    meter: Meter, closes: list[tuple[Any, ...]], injected: list[tuple[bool, dict[str, Any]]]
) -> None:
    """A sideband may ask for billed work (response.create, decision.create): once a budget of its
    environment is spent, its next event goes upstream as a session.close, as a primary's does; a
    new sideband is refused at its handshake (429)."""
    meter._apply(parse_policies(BUDGETED))
    flow = await attached(meter, "live_webrtc4")
    await server_says(meter, flow, session_updated("gpt-live-1", "live_webrtc4"))
    await server_says(meter, flow, usage_updated(3))
    [row] = records(meter)
    assert (row.price_status, row.cost_usd) == ("priced", Decimal("0.0025"))
    create = await client_says(meter, flow, {"type": "response.create", "event_id": "event_rc"})
    assert json.loads(create.content) == {"type": "session.close"}
    [(to_client, error)] = injected
    assert to_client and error["error"]["code"] == "budget_exceeded"
    assert (await client_says(meter, flow, {"type": "response.create"})).dropped
    refused = handshake(sideband_path("live_webrtc4"))
    await open_session(meter, refused)
    assert refused.response.status_code == 429 and refused.websocket is None  # type: ignore[union-attr]
    assert json.loads(refused.response.content)["error"]["code"] == "budget_exceeded"  # type: ignore[union-attr]
    last = records(meter)[-1]
    assert (last.action, last.status_code, last.path) == ("over_budget", 429, sideband_path("live_webrtc4"))


async def test_a_rate_limit_refuses_a_sideband_without_counting_it(meter: Meter) -> None:
    """A sideband's session was counted where it was set up: a sideband is refused once the limit
    is reached, but is not one of its requests."""
    meter._apply(parse_policies("environments:\n  development:\n    rate_limit: {requests_per_minute: 1}\n"))
    first, second = handshake(sideband_path("live_rl")), handshake(sideband_path("live_rl"))
    await open_session(meter, first)
    await open_session(meter, second)
    assert first.websocket is not None and second.websocket is not None and records(meter) == []
    primary, side = handshake(), handshake(sideband_path("live_rl"))
    await open_session(meter, primary)
    await open_session(meter, side)
    assert primary.websocket is not None and side.websocket is None
    assert side.response.status_code == 429  # type: ignore[union-attr]
    [row] = records(meter)
    assert (row.action, row.status_code, row.path) == ("rate_limited", 429, sideband_path("live_rl"))


async def test_a_session_open_when_the_script_reloads_is_finished_by_the_new_addon(meter: Meter) -> None:
    flow = await started(meter)
    await speak(meter, flow, 2)
    meter.done()  # mitmproxy reloads the script: it is not shutting down
    new = Meter()
    new.store = CollectingStore()  # type: ignore[assignment]
    await server_says(new, flow, usage_updated(5, 2))
    [row] = records(new)
    assert (row.model_sent, row.audio_seconds, row.aborted) == ("gpt-live-1", 3, False)


async def test_a_capped_sessions_grace_outlives_a_script_reload(
    meter: Meter,
    closes: list[tuple[Any, ...]],
    injected: list[tuple[bool, dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The script is reloaded while a capped session waits for upstream's close: if it never comes,
    the session is still closed after the grace (the timer looked for the session in the old
    addon's sessions, handed over to the new one, and gave up)."""
    flow = await capped(meter, monkeypatch)
    meter.done()  # mitmproxy reloads the script: it is not shutting down
    new = Meter()
    new.store = CollectingStore()  # type: ignore[assignment]
    assert (await client_says(new, flow, audio_append(1))).dropped  # still capped
    await asyncio.sleep(0.2)
    [(closed, code, reason)] = closes
    assert (closed, code) == (flow, 1008) and reason.startswith("tokometer: development budget")


async def test_a_grace_is_called_off_when_the_session_ends_after_a_reload(
    meter: Meter,
    closes: list[tuple[Any, ...]],
    injected: list[tuple[bool, dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flow = await capped(meter, monkeypatch)
    meter.done()
    new = Meter()
    new.store = CollectingStore()  # type: ignore[assignment]
    await server_says(new, flow, session_closed(4))
    flow.websocket.close_code = 1000  # type: ignore[union-attr]
    new.websocket_end(flow)
    await asyncio.sleep(0.2)
    assert closes == []


async def test_a_session_open_at_shutdown_is_an_aborted_row(meter: Meter) -> None:
    flow = await started(meter)
    await speak(meter, flow, 2)
    meter_module.ctx.master.should_exit.set()  # SIGTERM: done runs before the flows end
    meter.done()
    _, cut = records(meter)
    assert (cut.aborted, cut.usage) == (True, None)
    assert cut.error == "proxy shut down mid-session: the seconds after the last usage report are unknown"
    meter.websocket_end(flow)
    assert len(records(meter)) == 2


async def test_a_sideband_of_a_session_set_up_here_is_priced_from_its_first_report(meter: Meter) -> None:
    """A WebRTC or SIP session set up through the proxy: its answer names the session's id (an
    accept's path does), and the set-up the model this proxy sent (after a downgrade). A sideband
    attached to it prices its reports by that model (``model_sent``) before the server names one,
    after a script reload too; the model the server names is the authority once it comes. A sideband
    of a session not set up here stays unpriced until its model is named."""
    meter._apply(parse_policies(RESTRICTED + "    budget: {usd: 100, period: day}\n"))
    created = mint(f"https://{HOST}{PATH}", webrtc(live_session("gpt-live-1.1")))
    await run_request(meter, created)
    body = {"session": {"id": "live_rtc_set"}, "transport": {"type": "webrtc", "sdp": "v=0\r\n"}}
    await answer(meter, created, body=json.dumps(body).encode())
    accepted = mint(f"https://{HOST}{PATH}/live_sip_set/accept", {"session": live_session("gpt-live-1")})
    await run_request(meter, accepted)
    await answer(meter, accepted, body=b"")
    refused = mint(f"https://{HOST}{PATH}/live_sip_no/accept", {"session": live_session("gpt-live-1")})
    await run_request(meter, refused)
    await answer(meter, refused, 404, b'{"error": {"message": "no such call"}}')
    assert [row.path for row in records(meter)] == [f"{PATH}/live_sip_no/accept"]  # set-ups bill nothing
    meter.store.records.clear()  # type: ignore[union-attr]
    flow = await attached(meter, "live_rtc_set")
    await server_says(meter, flow, usage_updated(3))
    [row] = records(meter)
    assert (row.model_sent, row.model_reported, row.audio_seconds) == ("gpt-live-1", None, 3)
    assert (row.price_status, row.cost_usd) == ("priced", Decimal("0.0025"))
    await server_says(meter, flow, session_updated("gpt-live-1.1", "live_rtc_set"))  # the server's word
    await server_says(meter, flow, usage_updated(6, 2))
    last = records(meter)[-1]
    assert (last.model_sent, last.model_reported) == ("gpt-live-1", "gpt-live-1.1")
    assert last.price_status != "priced"  # priced by the server's model, which has no price here
    meter.done()  # mitmproxy reloads the script
    new = Meter()
    new.store = CollectingStore()  # type: ignore[assignment]
    new._apply(parse_policies(RESTRICTED + "    budget: {usd: 100, period: day}\n"))
    for session_id, wanted in (("live_sip_set", "priced"), ("live_sip_no", "no_model")):
        side = await attached(new, session_id)
        await server_says(new, side, usage_updated(3))
        last = records(new)[-1]
        assert (last.path, last.price_status) == (sideband_path(session_id), wanted)
    await server_says(new, side, session_updated("gpt-live-1", "live_sip_no"))
    await server_says(new, side, usage_updated(6, 2))
    assert (records(new)[-1].price_status, records(new)[-1].cost_usd) == ("priced", Decimal("0.0025"))


@pytest.mark.parametrize("policies", [RESTRICTED, BLOCKING])
async def test_a_disallowed_delegation_model_a_fork_inherits_refuses_it_as_it_starts(
    meter: Meter,
    closes: list[tuple[Any, ...]],
    injected: list[tuple[bool, dict[str, Any]]],
    policies: str,
) -> None:
    """The stored session delegated to a model this environment does not allow: the fork inherits
    it (its start names none), so session.started is where it is checked, and it cannot be rewritten."""
    meter._apply(parse_policies(policies))
    flow = handshake(fork_path())
    await open_session(meter, flow)
    assert not (await client_says(meter, flow, fork_start())).dropped
    started = session_started("gpt-live-1", "event_fork", "live_fork_of_live_stored_1")
    started["session"]["delegation"] = {"type": "responses", "responses": {"model": "gpt-5"}}
    assert (await server_says(meter, flow, started)).dropped
    [(to_client, error)] = injected
    assert to_client and error["error"]["param"] == "session.delegation.model"
    assert error["error"]["message"].startswith("tokometer: model gpt-5 is not allowed")
    [(closed, code, _)] = closes
    assert (closed, code) == (flow, 1008)
    [row] = records(meter)
    assert (row.action, row.model_sent) == ("blocked", None)
    # An allowed inherited delegation passes.
    other = handshake(fork_path())
    await open_session(meter, other)
    await client_says(meter, other, fork_start())
    fine = session_started("gpt-live-1", "event_fork", "live_fork_of_live_stored_2")
    fine["session"]["delegation"] = {"type": "responses", "responses": {"model": "gpt-5-mini"}}
    assert not (await server_says(meter, other, fine)).dropped
