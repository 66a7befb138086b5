"""The addon's Realtime hooks with mitmproxy.test.taddons and tflow (no network, no process)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fake_realtime import (
    DURATION_USAGE,
    RESPONSE_USAGE,
    TRANSCRIPTION_USAGE,
    audio_delta,
    dumps,
    response_created,
    response_done,
    session_event,
    transcription_completed,
)
from mitmproxy import http
from mitmproxy.websocket import WebSocketMessage
from websocket_hooks import (
    CollectingStore,
    client_says,
    handshake_flow,
    injected_events,
    metered,
    open_session,
    reads_of,
    records,
    server_says,
)
from wsproto.frame_protocol import Opcode

import addon.meter as meter_module
from addon.api_keys import key_fingerprint
from addon.meter import NOTICE_HEADER, Meter
from addon.policies import parse_policies
from addon.providers import openai_realtime

KEY = "sk-proj-realtimeTESTkey000011112222333344445555"
RESTRICTED = """\
environments:
  development:
    models:
      allow: [gpt-realtime-mini]
      on_disallowed: downgrade
      downgrade: {gpt-realtime: gpt-realtime-mini}
"""
BUDGETED = "environments:\n  development:\n    budget: {usd: 0.01, period: day}\n"
RESPONSE_COST = Decimal("0.03536")  # RESPONSE_USAGE at gpt-realtime's rates


@pytest.fixture
def meter(tmp_path: Path) -> Iterator[Meter]:
    yield from metered(tmp_path)


def handshake(query: str = "model=gpt-realtime", headers: dict[str, str] | None = None) -> http.HTTPFlow:
    """A WebSocket flow as it is at requestheaders: the GET, no answer yet."""
    tags = json.dumps({"env": "development", "team": "voice"})
    auth = {"authorization": f"Bearer {KEY}", "x-metering-tags": tags}
    return handshake_flow("api.openai.com", f"/v1/realtime?{query}", auth, headers, 1_764_321_600.0)


async def test_upgrade_has_no_row_and_each_response_is_stored_inside_its_hook(meter: Meter) -> None:
    flow = handshake()
    await open_session(meter, flow)
    assert records(meter) == [] and meter.call_state(flow) is None  # the key went with the state
    await server_says(meter, flow, session_event("session.created", "gpt-realtime-2025-08-28", None))
    await server_says(meter, flow, response_created("resp_1"))
    for n in range(3):
        await server_says(meter, flow, audio_delta("resp_1", n))
    assert records(meter) == []
    done = await server_says(meter, flow, response_done("resp_1", RESPONSE_USAGE))
    # Stored within the hook: before mitmproxy forwards response.done to the client.
    [row] = records(meter)
    assert not done.dropped and done.content == dumps(response_done("resp_1", RESPONSE_USAGE))
    assert (row.provider, row.path, row.api_flavor, row.status_code) == (
        "openai",
        "/v1/realtime",
        "realtime",
        101,
    )
    assert (row.environment, row.environment_source, row.team) == ("development", "header", "voice")
    assert row.key_fingerprint == key_fingerprint(KEY) and KEY not in row.to_json()
    assert (row.model_requested, row.model_sent, row.model_reported) == (
        "gpt-realtime",
        "gpt-realtime",
        "gpt-realtime-2025-08-28",
    )
    assert (row.input_tokens, row.cache_read_tokens, row.output_tokens) == (1000, 400, 500)
    assert (row.input_audio_tokens, row.cache_audio_read_tokens, row.output_audio_tokens) == (300, 100, 400)
    assert (row.streamed, row.aborted, row.action, row.usage_source) == (True, False, "allowed", "reported")
    assert row.ts.timestamp() >= flow.request.timestamp_start and row.duration_ms is not None
    meter.websocket_end(flow)
    assert len(records(meter)) == 1  # nothing in flight: no more rows


async def test_audio_deltas_and_odd_messages_pass_unread_and_unchanged(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow = handshake()
    await open_session(meter, flow)
    read = reads_of(monkeypatch, openai_realtime, "read_server_event")
    sent = [
        dumps(audio_delta("resp_1", 0)),
        dumps({"type": "response.output_text.delta", "delta": "x"}),
        b"\x00\x01 not json",
        b'{"type":"response.done","response":{"usage":{"input_tok',  # truncated
        b"",
    ]
    for data in sent:
        message = await server_says(meter, flow, data)
        assert message.content == data and not message.dropped
    binary = WebSocketMessage(Opcode.BINARY, False, b'{"type":"response.done","usage":1}')
    flow.websocket.messages.append(binary)  # type: ignore[union-attr]
    await meter.websocket_message(flow)
    assert not binary.dropped
    assert read == [sent[3]]  # deltas, binary frames and messages without usage are never decoded
    assert records(meter) == []
    audio_in = await client_says(meter, flow, {"type": "input_audio_buffer.append", "audio": "QUJD" * 10_000})
    assert not audio_in.dropped and read == [sent[3]]


async def test_transcriptions_in_tokens_and_in_seconds(meter: Meter) -> None:
    flow = handshake()
    await open_session(meter, flow)
    await server_says(meter, flow, session_event("session.created", "gpt-realtime", "gpt-4o-transcribe"))
    await server_says(meter, flow, transcription_completed("item_1", TRANSCRIPTION_USAGE))
    await server_says(meter, flow, session_event("session.updated", "gpt-realtime", "whisper-1", beta=True))
    await server_says(meter, flow, transcription_completed("item_2", DURATION_USAGE))
    tokens, seconds = records(meter)
    assert (tokens.model_sent, tokens.input_tokens, tokens.input_audio_tokens, tokens.output_tokens) == (
        "gpt-4o-transcribe",
        150,
        120,
        20,
    )
    assert tokens.price_status is None  # priced by the store's writer, as any call
    assert (seconds.model_sent, seconds.audio_seconds, seconds.input_tokens, seconds.output_tokens) == (
        "whisper-1",
        90,
        0,
        0,
    )
    assert seconds.price_status is None  # priced by the writer too, by genai-prices' price per hour
    meter.pricer(seconds)
    assert (seconds.cost_usd, seconds.price_status) == (Decimal("0.009"), "priced")


async def test_a_response_cut_by_the_close_is_aborted_without_usage(meter: Meter) -> None:
    flow = handshake()
    await open_session(meter, flow)
    await server_says(meter, flow, response_created("resp_1"))
    await server_says(meter, flow, audio_delta("resp_1", 0))
    flow.websocket.close_code = 1006  # type: ignore[union-attr]
    meter.websocket_end(flow)
    [row] = records(meter)
    assert (row.aborted, row.usage, row.usage_source, row.cost_usd) == (True, None, "none", None)
    assert row.error == "the WebSocket closed (1006) before response.done: usage unknown"
    meter.websocket_end(flow)
    assert len(records(meter)) == 1


async def test_downgrade_rewrites_the_model_parameter_and_says_so_on_the_101(meter: Meter) -> None:
    meter._apply(parse_policies(RESTRICTED))
    flow = handshake("x=%2F%20a+b&model=gpt-realtime&y=%E2%82%AC")
    await open_session(meter, flow)
    assert flow.request.path == "/v1/realtime?x=%2F%20a+b&model=gpt-realtime-mini&y=%E2%82%AC"
    assert flow.response.headers[NOTICE_HEADER].startswith("downgraded gpt-realtime -> gpt-realtime-mini")
    await server_says(meter, flow, response_done("resp_1", RESPONSE_USAGE))
    [row] = records(meter)
    assert (row.action, row.model_requested, row.model_sent) == (
        "downgraded",
        "gpt-realtime",
        "gpt-realtime-mini",
    )


async def test_refused_handshakes_get_their_row(meter: Meter) -> None:
    meter._apply(parse_policies(RESTRICTED))
    blocked = handshake("model=gpt-4o-realtime-preview")
    await open_session(meter, blocked)
    assert blocked.response.status_code == 403
    assert json.loads(blocked.response.content)["error"]["code"] == "model_not_allowed"
    nameless = handshake("voice=alloy")  # no model: it cannot be checked
    await open_session(meter, nameless)
    assert nameless.response.status_code == 403
    row, unread = records(meter)
    assert (row.action, row.status_code, row.model_requested, row.model_sent) == (
        "blocked",
        403,
        "gpt-4o-realtime-preview",
        None,
    )
    assert (row.cost_usd, row.price_status, row.api_flavor) == (Decimal(0), "not_billed", "realtime")
    assert unread.action == "blocked" and "could not be read" in (unread.error or "")


async def test_upstream_not_upgrading_is_a_row_not_billed(meter: Meter) -> None:
    flow = handshake()
    await open_session(meter, flow, status=404)
    [row] = records(meter)
    assert (row.status_code, row.cost_usd, row.price_status, row.error) == (
        404,
        Decimal(0),
        "not_billed",
        "upstream answered 404",
    )


async def test_spent_budget_caps_the_session(meter: Meter, monkeypatch: pytest.MonkeyPatch) -> None:
    meter._apply(parse_policies(BUDGETED))
    injected: list[tuple[Any, ...]] = []
    closed: list[http.HTTPFlow] = []
    monkeypatch.setattr(meter_module.ctx.master.commands, "call", lambda *a: injected.append(a))
    monkeypatch.setattr(meter, "_close_websocket", lambda flow: closed.append(flow) or True)
    flow = handshake()
    await open_session(meter, flow)
    first = await client_says(meter, flow, {"type": "response.create"})
    assert not first.dropped and injected == []
    await server_says(meter, flow, response_done("resp_1", RESPONSE_USAGE))
    [row] = records(meter)
    # Priced at once, and its cost counts against the budget before the store gets to it.
    assert (row.cost_usd, row.price_status) == (RESPONSE_COST, "priced")
    assert meter.enforcer.spent_budget(meter._sessions[flow].scopes) is not None
    # Asking for nothing billable still passes; cancelling too.
    for kind in ("session.update", "response.cancel"):
        assert not (await client_says(meter, flow, {"type": kind})).dropped
    second = await client_says(meter, flow, {"type": "response.create"})
    assert second.dropped and closed == [flow]
    [(command, target, to_client, payload, is_text)] = injected
    assert (command, target, to_client, is_text) == ("inject.websocket", flow, True, True)
    event = json.loads(payload)
    assert (event["type"], event["error"]["code"], event["error"]["type"]) == (
        "error",
        "budget_exceeded",
        "invalid_request_error",
    )
    assert event["error"]["message"].startswith(
        "tokometer: development budget of $0.01 per day is spent: $0.0354 used since"
    )
    # Anything else the client sends while the socket closes goes nowhere.
    assert (await client_says(meter, flow, {"type": "session.update"})).dropped
    assert len(injected) == 1


async def test_no_budget_no_pricing_on_the_loop(meter: Meter) -> None:
    flow = handshake()
    await open_session(meter, flow)
    await server_says(meter, flow, response_done("resp_1", RESPONSE_USAGE))
    [row] = records(meter)
    assert row.price_status is None  # the store's writer prices it


async def test_a_browser_key_in_the_subprotocol_is_fingerprinted(meter: Meter) -> None:
    flow = handshake(headers={"sec-websocket-protocol": f"realtime, openai-insecure-api-key.{KEY}"})
    del flow.request.headers["authorization"]
    await open_session(meter, flow, status=401)
    [row] = records(meter)
    assert row.key_fingerprint == key_fingerprint(KEY) and KEY not in row.to_json()


async def test_a_sideband_connection_has_no_model_to_check(meter: Meter) -> None:
    """A server's sideband socket to a WebRTC call (``?call_id=``): the model was chosen when the
    call was set up, so it is not refused for having none; its rows take the session's model."""
    meter._apply(parse_policies(RESTRICTED))
    flow = handshake("call_id=rtc_abc123")
    await open_session(meter, flow)
    assert flow.websocket is not None and records(meter) == []
    await server_says(meter, flow, session_event("session.updated", "gpt-realtime-mini", None))
    await server_says(meter, flow, response_done("resp_1", RESPONSE_USAGE))
    [row] = records(meter)
    assert (row.model_requested, row.model_sent, row.model_reported) == (None, None, "gpt-realtime-mini")
    assert row.path == "/v1/realtime" and "rtc_abc123" not in row.to_json()


async def test_azure_realtime_names_a_deployment_and_a_downgrade_picks_another(meter: Meter) -> None:
    deployments = "azure_deployments:\n  rt-big: gpt-realtime\n  rt-small: gpt-realtime-mini\n"
    meter._apply(parse_policies(RESTRICTED + deployments))
    flow = handshake()
    flow.request.host = flow.request.headers["host"] = "myres.openai.azure.com"
    flow.request.path = "/openai/realtime?api-version=2025-04-01-preview&deployment=rt-big"
    del flow.request.headers["authorization"]
    flow.request.headers["api-key"] = KEY
    await open_session(meter, flow)
    assert flow.request.path == "/openai/realtime?api-version=2025-04-01-preview&deployment=rt-small"
    await server_says(meter, flow, response_done("resp_1", RESPONSE_USAGE))
    [row] = records(meter)
    assert (row.provider, row.host, row.path, row.action) == (
        "azure",
        "myres.openai.azure.com",
        "/openai/realtime",
        "downgraded",
    )
    assert (row.model_requested, row.model_sent) == ("gpt-realtime", "gpt-realtime-mini")
    assert row.key_fingerprint == key_fingerprint(KEY)


async def test_a_session_open_when_the_script_reloads_is_finished_by_the_new_addon(meter: Meter) -> None:
    flow = handshake()
    await open_session(meter, flow)
    await server_says(meter, flow, session_event("session.created", "gpt-realtime-2025-08-28", None))
    await server_says(meter, flow, response_created("resp_1"))
    meter.done()  # mitmproxy reloads the script: it is not shutting down
    assert records(meter) == []
    new = Meter()
    new.store = CollectingStore()  # type: ignore[assignment]
    await server_says(new, flow, response_done("resp_1", RESPONSE_USAGE))
    [row] = records(new)
    assert (row.model_reported, row.input_tokens, row.aborted) == ("gpt-realtime-2025-08-28", 1000, False)
    assert row.key_fingerprint == key_fingerprint(KEY)


async def test_a_response_in_flight_at_shutdown_is_an_aborted_row(meter: Meter) -> None:
    flow = handshake()
    await open_session(meter, flow)
    await server_says(meter, flow, response_created("resp_1"))
    meter_module.ctx.master.should_exit.set()  # SIGTERM: done runs before the flows end
    meter.done()
    [row] = records(meter)
    assert (row.aborted, row.usage, row.error) == (True, None, "proxy shut down mid-session")
    meter.websocket_end(flow)  # mitmproxy may still end the flow: no second row
    assert len(records(meter)) == 1


async def test_azure_handshake_naming_a_deployment_and_another_model_is_not_read_as_the_first(
    meter: Meter,
) -> None:
    """Azure's preview API reads ``deployment``, its v1 API ``model``: a query with both, naming
    different models, was checked by its ``deployment`` alone, so ``/openai/v1/realtime`` went to a
    model the environment does not allow (blocked here: nothing to downgrade to)."""
    deployments = "azure_deployments:\n  rt-big: gpt-realtime\n  rt-small: gpt-realtime-mini\n"
    blocking = "environments:\n  development:\n    models:\n      allow: [gpt-realtime-mini]\n"
    meter._apply(parse_policies(blocking + "      on_disallowed: block\n" + deployments))
    for path in (
        "/openai/v1/realtime?deployment=rt-small&model=rt-big",
        "/openai/realtime?model=rt-big&api-version=x&deployment=rt-small",
    ):
        flow = handshake()
        flow.request.host = flow.request.headers["host"] = "myres.openai.azure.com"
        flow.request.path = path
        await open_session(meter, flow)
        assert flow.response is not None and flow.response.status_code == 403, path
        assert flow.websocket is None
    # Both naming the same model stay readable, and a downgrade rewrites both.
    meter._apply(parse_policies(RESTRICTED + deployments))
    flow = handshake()
    flow.request.host = flow.request.headers["host"] = "myres.openai.azure.com"
    flow.request.path = "/openai/v1/realtime?deployment=rt-big&model=gpt-realtime"
    await open_session(meter, flow)
    assert flow.request.path == "/openai/v1/realtime?deployment=rt-small&model=rt-small"


@pytest.mark.parametrize(
    ("path", "upgrade"),
    [
        ("/v1/realtime", "WebSocket, foo"),  # several protocols offered
        ("//v1/realtime", "websocket"),  # doubled slashes: servers usually merge them
        ("/v1//realtime/", "websocket"),
    ],
)
async def test_a_handshake_spelled_otherwise_is_still_followed(meter: Meter, path: str, upgrade: str) -> None:
    """mitmproxy relays a WebSocket whenever upstream answers 101, whatever the request's spelling:
    an Upgrade header offering other protocols too, or a path with doubled slashes, passed
    unmetered and unchecked."""
    flow = handshake()
    flow.request.path = f"{path}?model=gpt-realtime"
    flow.request.headers["upgrade"] = upgrade
    meter.requestheaders(flow)
    state = meter.call_state(flow)
    assert state is not None and state.opens_socket
    assert state.record.path == "/v1/realtime"


async def test_a_websocket_the_proxy_does_not_meter_is_named_in_the_log(
    meter: Meter, caplog: pytest.LogCaptureFixture
) -> None:
    """A WebSocket API on a provider's host that the proxy does not know (a new one) passes
    untouched, but not silently: the log says which, once per host and path."""
    for _ in range(3):
        flow = handshake()
        flow.request.path = "/v1/some-new-socket?model=gpt-realtime"
        await open_session(meter, flow)
        assert meter.call_state(flow) is None
        with caplog.at_level("WARNING", logger="tokometer"):
            meter.websocket_start(flow)
    warnings = [r.getMessage() for r in caplog.records if "unmetered" in r.getMessage()]
    assert warnings == [
        "tokometer: a WebSocket to api.openai.com/v1/some-new-socket passes unmetered "
        "(not an API the proxy meters)"
    ]
    flow = handshake()  # a session the proxy follows: nothing said
    await open_session(meter, flow)
    with caplog.at_level("WARNING", logger="tokometer"):
        meter.websocket_start(flow)
    assert len([r for r in caplog.records if "unmetered" in r.getMessage()]) == 1


# ---------------------------------------------------------------- the transcription model

TRANSCRIBING = """\
environments:
  development:
    models:
      allow: [gpt-realtime, gpt-4o-mini-transcribe]
      on_disallowed: downgrade
      downgrade: {gpt-4o-transcribe: gpt-4o-mini-transcribe}
"""


@pytest.fixture
def injected(meter: Meter, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    return injected_events(meter, monkeypatch)


def ga_update(model: str, instructions: str = "Sé breve.") -> dict[str, Any]:
    """A GA ``session.update`` turning on input transcription with ``model``."""
    return {
        "type": "session.update",
        "event_id": "evt_client_1",
        "session": {
            "type": "realtime",
            "instructions": instructions,
            "audio": {"input": {"transcription": {"model": model, "language": "es"}}},
        },
    }


async def test_a_disallowed_transcription_model_is_downgraded_in_the_session_update(
    meter: Meter, injected: list[dict[str, Any]]
) -> None:
    meter._apply(parse_policies(TRANSCRIBING))
    flow = handshake()
    await open_session(meter, flow)
    sent = json.dumps(ga_update("gpt-4o-transcribe"), separators=(",", ":"), ensure_ascii=False).encode()
    update = await client_says(meter, flow, sent)
    # Only the model's value changed: every other byte as the client sent it.
    assert not update.dropped and update.content == sent.replace(
        b"gpt-4o-transcribe", b"gpt-4o-mini-transcribe"
    )
    await server_says(meter, flow, session_event("session.updated", "gpt-realtime", "gpt-4o-mini-transcribe"))
    await server_says(meter, flow, transcription_completed("item_1", TRANSCRIPTION_USAGE))
    [row] = records(meter)
    assert (row.action, row.model_requested, row.model_sent) == (
        "downgraded",
        "gpt-4o-transcribe",
        "gpt-4o-mini-transcribe",
    )
    assert injected == []
    # One past mitmproxy's 4,000-byte fragments with non-ASCII text: written out again as ASCII.
    long = ga_update("gpt-4o-transcribe", "Sé breve. " * 500)
    update = await client_says(meter, flow, long)
    assert update.content.isascii() and len(update.content) > 4000
    long["session"]["audio"]["input"]["transcription"]["model"] = "gpt-4o-mini-transcribe"
    assert json.loads(update.content) == long


@pytest.mark.parametrize(
    "event",
    [
        {  # beta realtime session
            "type": "session.update",
            "session": {"modalities": ["text"], "input_audio_transcription": {"model": "gpt-4o-transcribe"}},
        },
        {  # beta transcription session
            "type": "transcription_session.update",
            "session": {"input_audio_transcription": {"model": "gpt-4o-transcribe", "prompt": ""}},
        },
        {  # GA transcription session
            "type": "session.update",
            "session": {
                "type": "transcription",
                "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}},
            },
        },
    ],
)
async def test_beta_and_transcription_session_updates_are_checked_too(
    meter: Meter, injected: list[dict[str, Any]], event: dict[str, Any]
) -> None:
    meter._apply(parse_policies(TRANSCRIBING))
    flow = handshake()
    await open_session(meter, flow)
    update = await client_says(meter, flow, event)
    assert not update.dropped
    assert update.content == dumps(event).replace(b"gpt-4o-transcribe", b"gpt-4o-mini-transcribe")


async def test_a_blocked_transcription_model_is_refused_with_an_error_event_and_a_row(
    meter: Meter, injected: list[dict[str, Any]]
) -> None:
    meter._apply(parse_policies(TRANSCRIBING))
    flow = handshake()
    await open_session(meter, flow)
    update = await client_says(meter, flow, ga_update("whisper-1"))
    assert update.dropped  # never goes upstream
    [event] = injected
    assert event["type"] == "error" and event["event_id"].startswith("event_tokometer_")
    assert event["error"] == {
        "type": "invalid_request_error",
        "code": "model_not_allowed",
        "message": "tokometer: model whisper-1 is not allowed in environment development "
        "(allowed there: gpt-realtime, gpt-4o-mini-transcribe; see policies.yaml)",
        "param": "session.audio.input.transcription.model",
        "event_id": "evt_client_1",
    }
    [row] = records(meter)
    assert (row.action, row.model_requested, row.model_sent, row.status_code) == (
        "blocked",
        "whisper-1",
        None,
        403,
    )
    assert (row.path, row.api_flavor, row.cost_usd, row.price_status) == (
        "/v1/realtime",
        "realtime",
        Decimal(0),
        "not_billed",
    )
    assert (row.environment, row.team) == ("development", "voice")
    assert row.key_fingerprint == key_fingerprint(KEY)
    assert row.error == event["error"]["message"].removeprefix("tokometer: ")
    # The session keeps working.
    assert not (await client_says(meter, flow, {"type": "response.create"})).dropped
    allowed = await client_says(meter, flow, ga_update("gpt-4o-mini-transcribe"))
    assert not allowed.dropped and allowed.content == dumps(ga_update("gpt-4o-mini-transcribe"))
    assert len(injected) == 1 and len(records(meter)) == 1


async def test_nothing_is_checked_without_policies(meter: Meter, injected: list[dict[str, Any]]) -> None:
    flow = handshake()
    await open_session(meter, flow)
    update = await client_says(meter, flow, ga_update("whisper-1"))
    assert not update.dropped and update.content == dumps(ga_update("whisper-1"))
    assert injected == [] and records(meter) == []


@pytest.mark.parametrize(
    "sent",
    [
        # Any JSON parser reads these as a session.update naming whisper-1: escapes spell the same
        # type or key (the Python SDK's json.dumps escapes non-ASCII text as \uXXXX too).
        b'{"type":"session.upd\\u0061te","event_id":"evt_client_1","session":{"type":"realtime",'
        b'"audio":{"input":{"transcription":{"model":"whisper-1"}}}}}',
        b'{"type":"session.update","event_id":"evt_client_1","session":{"type":"realtime",'
        b'"audio":{"input":{"transcription":{"mod\\u0065l":"whisper-1"}}}}}',
    ],
)
async def test_a_session_update_spelled_with_escapes_is_checked_too(
    meter: Meter, injected: list[dict[str, Any]], sent: bytes
) -> None:
    meter._apply(parse_policies(TRANSCRIBING))
    flow = handshake()
    await open_session(meter, flow)
    assert json.loads(sent)["type"] == "session.update"
    update = await client_says(meter, flow, sent)
    assert update.dropped  # whisper-1 is not allowed: it never goes upstream
    [event] = injected
    assert event["error"]["code"] == "model_not_allowed"
    [row] = records(meter)
    assert (row.action, row.model_requested) == ("blocked", "whisper-1")


async def test_a_spent_budget_caps_a_response_create_that_mentions_session_update(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client message holding ``session.update"`` and ``"model"`` that is not a session update
    (here a response.create whose metadata has such keys) is still capped once the budget is spent."""
    meter._apply(parse_policies(BUDGETED))
    closed: list[http.HTTPFlow] = []
    monkeypatch.setattr(meter_module.ctx.master.commands, "call", lambda *a: None)
    monkeypatch.setattr(meter, "_close_websocket", lambda flow: closed.append(flow) or True)
    flow = handshake()
    await open_session(meter, flow)
    await server_says(meter, flow, response_done("resp_1", RESPONSE_USAGE))
    assert meter.enforcer.spent_budget(meter._sessions[flow].scopes) is not None
    create = {"type": "response.create", "response": {"metadata": {"session.update": "1", "model": "x"}}}
    second = await client_says(meter, flow, create)
    assert second.dropped and closed == [flow]


APPEND = {"type": "input_audio_buffer.append", "audio": "AAAA" * 1200}


def transcription_update(model: str) -> dict[str, Any]:
    """The GA ``session.update`` a transcription session starts with (as OpenAI's guide has it)."""
    return {
        "type": "session.update",
        "session": {"type": "transcription", "audio": {"input": {"transcription": {"model": model}}}},
    }


async def test_a_transcription_session_is_let_in_and_held_back_until_it_names_an_allowed_model(
    meter: Meter, injected: list[dict[str, Any]]
) -> None:
    meter._apply(parse_policies(TRANSCRIBING))
    flow = handshake("intent=transcription")  # OpenAI's guide: no model in the URL
    await open_session(meter, flow)
    assert flow.response.status_code == 101 and records(meter) == []
    # Audio before any transcription model: the server's default would transcribe it, unchecked.
    held = [await client_says(meter, flow, APPEND) for _ in range(3)]
    assert all(m.dropped for m in held)
    [event] = injected  # one error event for the first, not one per audio chunk
    assert (event["type"], event["error"]["code"]) == ("error", "model_not_named")
    assert event["error"]["param"] == "session.audio.input.transcription.model"
    assert (
        "send session.update with session.audio.input.transcription.model first" in event["error"]["message"]
    )
    [row] = records(meter)
    assert (row.action, row.model_requested, row.status_code, row.cost_usd) == (
        "blocked",
        "(unnamed)",
        403,
        0,
    )
    # A disallowed model is downgraded; from then on the session runs as any other.
    update = await client_says(meter, flow, transcription_update("gpt-4o-transcribe"))
    assert not update.dropped and b"gpt-4o-mini-transcribe" in update.content
    assert not (await client_says(meter, flow, APPEND)).dropped
    await server_says(meter, flow, session_event("session.updated", None, "gpt-4o-mini-transcribe"))
    await server_says(meter, flow, transcription_completed("item_1", TRANSCRIPTION_USAGE))
    _, transcribed = records(meter)
    assert (transcribed.action, transcribed.model_requested, transcribed.model_sent) == (
        "downgraded",
        "gpt-4o-transcribe",
        "gpt-4o-mini-transcribe",
    )
    assert len(injected) == 1


async def test_a_transcription_session_naming_a_blocked_model_stays_held_back(
    meter: Meter, injected: list[dict[str, Any]]
) -> None:
    meter._apply(parse_policies(TRANSCRIBING))
    flow = handshake("intent=transcription")
    await open_session(meter, flow)
    assert (await client_says(meter, flow, transcription_update("whisper-1"))).dropped
    assert (await client_says(meter, flow, APPEND)).dropped
    assert [e["error"]["code"] for e in injected] == ["model_not_allowed", "model_not_named"]
    for _ in range(99):
        assert (await client_says(meter, flow, APPEND)).dropped
    assert len(injected) == 2
    assert (await client_says(meter, flow, APPEND)).dropped
    assert len(injected) == 3  # the 101st held message is told again
    assert not (await client_says(meter, flow, transcription_update("gpt-4o-mini-transcribe"))).dropped
    assert not (await client_says(meter, flow, APPEND)).dropped


async def test_a_transcription_session_is_not_held_back_where_every_model_is_allowed(
    meter: Meter, injected: list[dict[str, Any]]
) -> None:
    flow = handshake("intent=transcription")
    await open_session(meter, flow)
    assert not (await client_says(meter, flow, APPEND)).dropped
    meter._apply(parse_policies(TRANSCRIBING))
    held = handshake("intent=transcription")
    await open_session(meter, held)
    assert (await client_says(meter, held, APPEND)).dropped
    meter._apply(parse_policies("environments:\n  development:\n    models: {allow: ['*']}\n"))
    assert not (await client_says(meter, held, APPEND)).dropped  # the policies changed: let go
    assert [e["error"]["code"] for e in injected] == ["model_not_named"]


async def test_an_azure_transcription_model_is_a_deployment_read_and_downgraded_as_one(
    meter: Meter, injected: list[dict[str, Any]]
) -> None:
    """Azure's session.update names a deployment, not a model (its Realtime reference says so)."""
    deployments = "azure_deployments:\n  rt: gpt-realtime\n  tr-big: gpt-4o-transcribe\n"
    deployments += "  tr-small: gpt-4o-mini-transcribe\n"
    meter._apply(parse_policies(TRANSCRIBING + deployments))
    flow = handshake()
    flow.request.host = flow.request.headers["host"] = "myres.openai.azure.com"
    flow.request.path = "/openai/v1/realtime?model=rt"
    await open_session(meter, flow)
    allowed = await client_says(meter, flow, transcription_update("tr-small"))
    assert not allowed.dropped and allowed.content == dumps(transcription_update("tr-small"))
    downgraded = await client_says(meter, flow, transcription_update("tr-big"))
    assert downgraded.content == dumps(transcription_update("tr-small"))  # the deployment serving it
    await server_says(meter, flow, session_event("session.updated", "rt", "tr-small"))
    await server_says(meter, flow, transcription_completed("item_1", TRANSCRIPTION_USAGE))
    [row] = records(meter)
    assert (row.provider, row.action, row.model_requested, row.model_sent) == (
        "azure",
        "downgraded",
        "gpt-4o-transcribe",
        "gpt-4o-mini-transcribe",
    )
    assert injected == []
    unserved = deployments.replace("  tr-small: gpt-4o-mini-transcribe\n", "")
    meter._apply(parse_policies(TRANSCRIBING + unserved))
    flow = handshake()
    flow.request.host = flow.request.headers["host"] = "myres.openai.azure.com"
    flow.request.path = "/openai/v1/realtime?model=rt"
    await open_session(meter, flow)
    assert (await client_says(meter, flow, transcription_update("tr-big"))).dropped  # nothing serves mini
    [event] = injected
    assert "no Azure deployment serves gpt-4o-mini-transcribe" in event["error"]["message"]


@pytest.mark.parametrize(
    "held",
    [
        b'{"type":"input_audio_buffer.\\u0061ppend","audio":"AAAA"}',  # any JSON parser reads an append
        b'{"type":"input_audio_buffer.commit","note":"caf\\u00e9"}',  # json.dumps(ensure_ascii=True)
    ],
)
async def test_a_held_back_transcription_session_holds_messages_spelled_with_escapes_too(
    meter: Meter, injected: list[dict[str, Any]], held: bytes
) -> None:
    meter._apply(parse_policies(TRANSCRIBING))
    flow = handshake("intent=transcription")
    await open_session(meter, flow)
    assert (await client_says(meter, flow, held)).dropped
    assert [e["error"]["code"] for e in injected] == ["model_not_named"]


async def test_a_transcription_session_is_held_back_again_when_the_server_refuses_its_update(
    meter: Meter, injected: list[dict[str, Any]]
) -> None:
    meter._apply(parse_policies(TRANSCRIBING))
    flow = handshake("intent=transcription")
    await open_session(meter, flow)
    await server_says(meter, flow, session_event("session.created", None, None))
    # Let go at once (audio right behind an update is not lost) ...
    assert not (await client_says(meter, flow, transcription_update("gpt-4o-mini-transcribe"))).dropped
    assert not (await client_says(meter, flow, APPEND)).dropped
    # ... but the server refused it: its default would transcribe, so held back again.
    error = {"type": "error", "event_id": "e1", "error": {"type": "invalid_request_error", "message": "no"}}
    await server_says(meter, flow, error)
    assert (await client_says(meter, flow, APPEND)).dropped
    # Confirmed by the server this time: let go for good, even after an unrelated error.
    assert not (await client_says(meter, flow, transcription_update("gpt-4o-mini-transcribe"))).dropped
    await server_says(meter, flow, session_event("session.updated", None, "gpt-4o-mini-transcribe"))
    await server_says(meter, flow, error)
    assert not (await client_says(meter, flow, APPEND)).dropped


async def test_a_server_default_transcription_model_decides_the_hold(
    meter: Meter, injected: list[dict[str, Any]]
) -> None:
    meter._apply(parse_policies(TRANSCRIBING))
    allowed = handshake("intent=transcription")
    await open_session(meter, allowed)
    await server_says(meter, allowed, session_event("session.created", None, "gpt-4o-mini-transcribe"))
    assert not (await client_says(meter, allowed, APPEND)).dropped  # the default is allowed: no hold
    other = handshake("intent=transcription")
    await open_session(meter, other)
    await server_says(meter, other, session_event("session.created", None, "whisper-1"))
    assert (await client_says(meter, other, APPEND)).dropped
    assert not (await client_says(meter, other, transcription_update("gpt-4o-mini-transcribe"))).dropped
    await server_says(meter, other, session_event("session.updated", None, "whisper-1"))  # not applied
    assert (await client_says(meter, other, APPEND)).dropped


async def test_a_session_update_in_a_binary_frame_is_checked_as_a_text_one(
    meter: Meter, injected: list[dict[str, Any]]
) -> None:
    from websocket_hooks import say

    meter._apply(parse_policies(TRANSCRIBING))
    flow = handshake()
    await open_session(meter, flow)
    blocked = await say(meter, flow, dumps(ga_update("whisper-1")), client=True, text=False)
    assert blocked.dropped and [e["error"]["code"] for e in injected] == ["model_not_allowed"]
    downgraded = await say(meter, flow, dumps(ga_update("gpt-4o-transcribe")), client=True, text=False)
    assert not downgraded.dropped and b"gpt-4o-mini-transcribe" in downgraded.content
