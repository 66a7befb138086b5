"""The addon's OpenAI Realtime translation hooks with mitmproxy.test.taddons and tflow (no network,
no process): the handshake checked as a Realtime one, the audio a client sends metered by the minute
(the server reports no usage), a session.update's transcription model checked, a spent budget capping
the session."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fake_realtime_translation import (
    MODEL,
    PATH,
    SECOND,
    audio_append,
    output_audio,
    output_transcript,
    session_closed,
    session_created,
    session_updated,
    translation_update,
)
from fake_websocket import dumps
from mitmproxy import http
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

import addon.meter as meter_module
from addon.api_keys import key_fingerprint
from addon.meter import NOTICE_HEADER, Meter
from addon.policies import parse_policies
from addon.pricing import price
from addon.providers import openai_realtime_translation
from addon.usage import Usage

KEY = "sk-proj-translateTESTkey00001111222233334444"
HOST = "api.openai.com"
RESTRICTED = """\
environments:
  development:
    models:
      allow: [gpt-realtime-translate, gpt-realtime-whisper]
      on_disallowed: downgrade
      downgrade:
        gpt-realtime-translate-large: gpt-realtime-translate
        gpt-4o-transcribe: gpt-realtime-whisper
"""
BLOCKING = RESTRICTED.replace("on_disallowed: downgrade", "on_disallowed: block")
BUDGETED = "environments:\n  development:\n    budget: {usd: 0.01, period: day}\n"  # a minute is $0.034
MINUTE_COST = Decimal("0.034")  # gpt-realtime-translate: $0.034 a minute ($2.04 an hour)


@pytest.fixture
def meter(tmp_path: Path) -> Iterator[Meter]:
    yield from metered(tmp_path)


@pytest.fixture
def injected(meter: Meter, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    return injected_events(meter, monkeypatch)


def handshake(query: str = f"model={MODEL}", key: str = KEY) -> http.HTTPFlow:
    """A translation WebSocket flow as it is at requestheaders: the GET, no answer yet."""
    tags = json.dumps({"env": "development", "team": "interpreters"})
    headers = {"authorization": f"Bearer {key}", "x-metering-tags": tags, "upgrade": "websocket"}
    return handshake_flow(HOST, f"{PATH}?{query}", headers, None, time.time())


async def send_audio(meter: Meter, flow: http.HTTPFlow, seconds: float, chunk: float = 1.0) -> None:
    """``seconds`` of audio appended in chunks of ``chunk`` seconds (each passes unchanged)."""
    sent, n = 0.0, 0
    while sent < seconds - 1e-9:
        size = round(min(chunk, seconds - sent) * SECOND)
        event = audio_append(n, size)
        message = await client_says(meter, flow, event)
        assert not message.dropped and message.content == dumps(event)
        sent, n = sent + size / SECOND, n + 1


def test_a_minute_of_gpt_realtime_translate_costs_what_openai_lists() -> None:
    """$0.034 a minute, as genai-prices lists it ($2.04 an hour): the rows' audio_seconds price so."""
    found = price("openai", MODEL, Usage(audio_seconds=60), datetime.now(UTC))
    assert (found.cost_usd, found.status, found.model) == (MINUTE_COST, "priced", MODEL)


async def test_each_minute_of_audio_is_a_row_stored_inside_its_hook(meter: Meter) -> None:
    """No usage comes from the server: the audio the client appends is counted, a row per minute of
    it (stored while the append that completes it is in its hook), the rest when session.closed
    comes; the upgrade itself has no row."""
    flow = handshake()
    await open_session(meter, flow)
    assert flow.websocket is not None and records(meter) == [] and meter.call_state(flow) is None
    await server_says(meter, flow, session_created())
    await send_audio(meter, flow, 59)
    assert records(meter) == []
    await send_audio(meter, flow, 1)  # the minute is complete: its row, inside this hook
    [minute] = records(meter)
    assert (minute.provider, minute.host, minute.path, minute.api_flavor) == (
        "openai",
        HOST,
        PATH,
        "realtime",
    )
    assert (minute.status_code, minute.streamed, minute.aborted, minute.action) == (
        101,
        True,
        False,
        "allowed",
    )
    assert (minute.environment, minute.environment_source, minute.team) == (
        "development",
        "header",
        "interpreters",
    )
    assert minute.key_fingerprint == key_fingerprint(KEY) and KEY not in minute.to_json()
    assert (minute.model_requested, minute.model_sent, minute.model_reported) == (MODEL,) * 3
    assert (minute.audio_seconds, minute.usage_source, minute.input_tokens) == (60, "estimated", 0)
    assert minute.duration_ms is not None and minute.duration_ms >= 0 and minute.error is None
    assert minute.price_status is None  # no budget: the store's writer prices it
    meter._price(minute)
    assert (minute.cost_usd, minute.price_status, minute.price_model) == (MINUTE_COST, "priced", MODEL)
    await send_audio(meter, flow, 2.4, chunk=0.2)
    await server_says(meter, flow, output_audio(1))
    await client_says(meter, flow, {"type": "session.close"})
    closed = await server_says(meter, flow, session_closed())
    assert not closed.dropped and closed.content == dumps(session_closed())
    _, rest = records(meter)
    assert (rest.audio_seconds, rest.aborted, rest.usage_source) == (pytest.approx(2.4), False, "estimated")
    meter.websocket_end(flow)
    assert len(records(meter)) == 2  # nothing unbilled: no more rows


async def test_deltas_pass_unread_and_every_message_unchanged(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow = handshake()
    await open_session(meter, flow)
    read = reads_of(monkeypatch, openai_realtime_translation, "read_server_event")
    sent = [
        dumps(output_audio(0)),
        dumps(output_transcript('She said "session.closed" twice.')),
        b"\x00\x01 not json",
        dumps({"type": "error", "error": {"type": "invalid_request_error", "message": "bad audio"}}),
        dumps(session_updated(transcription="gpt-realtime-whisper")),
    ]
    for data in sent:
        message = await server_says(meter, flow, data)
        assert message.content == data and not message.dropped
    assert read == [sent[4]]  # only the session event is decoded
    for event in (translation_update("fr"), {"type": "session.input_audio_buffer.append", "audio": "!!"}):
        message = await client_says(meter, flow, event)
        assert message.content == dumps(event) and not message.dropped
    assert records(meter) == []


async def test_audio_not_billed_when_the_socket_closes_is_an_aborted_row(meter: Meter) -> None:
    """The client hangs up without session.close: the audio sent since the last row was sent (and
    likely billed); its row says the session ended without session.closed."""
    flow = handshake()
    await open_session(meter, flow)
    await send_audio(meter, flow, 3)
    flow.websocket.close_code = 1006  # type: ignore[union-attr]
    meter.websocket_end(flow)
    [row] = records(meter)
    assert (row.audio_seconds, row.aborted, row.usage_source) == (3, True, "estimated")
    assert row.error == "the WebSocket closed (1006) before session.closed"
    meter.websocket_end(flow)
    assert len(records(meter)) == 1


async def test_a_session_without_audio_has_no_row(meter: Meter) -> None:
    flow = handshake()
    await open_session(meter, flow)
    await client_says(meter, flow, translation_update("de"))
    await server_says(meter, flow, session_closed())
    meter.websocket_end(flow)
    assert records(meter) == []


async def test_a_disallowed_model_is_downgraded_in_the_handshake(meter: Meter) -> None:
    meter._apply(parse_policies(RESTRICTED))
    flow = handshake("model=gpt-realtime-translate-large&x=1")
    await open_session(meter, flow)
    assert flow.request.path == f"{PATH}?model={MODEL}&x=1"  # only the model's value changed
    assert flow.response is not None and flow.response.headers[NOTICE_HEADER].startswith(
        "downgraded gpt-realtime-translate-large -> gpt-realtime-translate"
    )
    await send_audio(meter, flow, 1)
    await server_says(meter, flow, session_closed())
    [row] = records(meter)
    assert (row.action, row.model_requested, row.model_sent) == (
        "downgraded",
        "gpt-realtime-translate-large",
        MODEL,
    )


async def test_a_blocked_or_unnamed_model_refuses_the_handshake_with_a_row(meter: Meter) -> None:
    """A translation session has no sideband: one naming no model (a call_id alone) is refused where
    models are restricted, as a Realtime handshake naming none is."""
    meter._apply(parse_policies(BLOCKING))
    blocked = handshake("model=gpt-realtime-translate-large")
    await open_session(meter, blocked)
    assert blocked.response is not None and blocked.response.status_code == 403
    assert json.loads(blocked.response.content or b"")["error"]["code"] == "model_not_allowed"
    nameless = handshake("call_id=rtc_123")
    await open_session(meter, nameless)
    assert nameless.response is not None and nameless.response.status_code == 403
    transcribing = handshake("intent=transcription")  # not a transcription session here: no model
    await open_session(meter, transcribing)
    assert transcribing.response is not None and transcribing.response.status_code == 403
    assert blocked.websocket is None and nameless.websocket is None
    row, unread, _ = records(meter)
    assert (row.path, row.api_flavor, row.action, row.status_code) == (PATH, "realtime", "blocked", 403)
    assert (row.model_requested, row.model_sent, row.cost_usd, row.price_status) == (
        "gpt-realtime-translate-large",
        None,
        Decimal(0),
        "not_billed",
    )
    assert unread.action == "blocked" and "could not be read" in (unread.error or "")


async def test_a_disallowed_transcription_model_in_a_session_update_is_downgraded(
    meter: Meter, injected: list[dict[str, Any]]
) -> None:
    """The model transcribing the source audio, named in a session.update, is checked as a Realtime
    session's is: rewritten in the message, the rest of it as sent."""
    meter._apply(parse_policies(RESTRICTED))
    flow = handshake()
    await open_session(meter, flow)
    update = await client_says(meter, flow, translation_update("fr", "gpt-4o-transcribe"))
    assert not update.dropped
    assert json.loads(update.content) == translation_update("fr", "gpt-realtime-whisper")
    assert injected == [] and records(meter) == []


async def test_a_blocked_transcription_model_is_refused_with_an_error_event_and_a_row(
    meter: Meter, injected: list[dict[str, Any]]
) -> None:
    meter._apply(parse_policies(BLOCKING))
    flow = handshake()
    await open_session(meter, flow)
    update = await client_says(meter, flow, translation_update("fr", "gpt-4o-transcribe", "event_tr1"))
    assert update.dropped  # never upstream: the session goes on as it was
    [event] = injected
    assert (event["type"], event["error"]["code"], event["error"]["param"], event["error"]["event_id"]) == (
        "error",
        "model_not_allowed",
        "session.audio.input.transcription.model",
        "event_tr1",
    )
    [row] = records(meter)
    assert (row.path, row.action, row.status_code, row.model_requested, row.model_sent) == (
        PATH,
        "blocked",
        403,
        "gpt-4o-transcribe",
        None,
    )
    assert (row.cost_usd, row.price_status) == (Decimal(0), "not_billed")
    await send_audio(meter, flow, 1)  # the session goes on, its audio counted
    await server_says(meter, flow, session_closed())
    assert [r.audio_seconds for r in records(meter)] == [None, 1]


async def test_a_spent_budget_caps_the_session(meter: Meter, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first minute ($0.034) spends the $0.01 budget: priced at once and counted, so the client's
    next append never goes upstream; the client gets an error event and the socket is closed. An
    update or a close still passes until then; a new session is refused at its handshake."""
    meter._apply(parse_policies(BUDGETED))
    sent: list[dict[str, Any]] = []
    closed: list[http.HTTPFlow] = []
    monkeypatch.setattr(
        meter_module.ctx.master.commands,
        "call",
        lambda _c, _f, _t, payload, _x: sent.append(json.loads(payload)),
    )
    monkeypatch.setattr(meter, "_close_websocket", lambda flow, *a: closed.append(flow) or True)
    flow = handshake()
    await open_session(meter, flow)
    await send_audio(meter, flow, 60)
    [minute] = records(meter)
    assert (minute.cost_usd, minute.price_status) == (MINUTE_COST, "priced")
    assert meter.enforcer.spent_budget(meter._sessions[flow].scopes) is not None
    assert not (await client_says(meter, flow, translation_update("fr"))).dropped
    capped = await client_says(meter, flow, audio_append(99))
    assert capped.dropped and closed == [flow]
    [event] = sent
    assert (event["type"], event["error"]["code"]) == ("error", "budget_exceeded")
    assert event["error"]["message"].startswith("tokometer: development budget of $0.01 per day is spent")
    assert (await client_says(meter, flow, {"type": "session.close"})).dropped  # the socket is closing
    meter.websocket_end(flow)
    assert len(records(meter)) == 1  # the dropped audio is not counted
    again = handshake()
    await open_session(meter, again)
    assert again.response is not None and again.response.status_code == 429
    assert records(meter)[-1].action == "over_budget"


async def test_the_audio_of_a_session_open_at_shutdown_is_an_aborted_row(meter: Meter) -> None:
    flow = handshake()
    await open_session(meter, flow)
    await send_audio(meter, flow, 2)
    meter_module.ctx.master.should_exit.set()  # SIGTERM: done runs before the flows end
    meter.done()
    [row] = records(meter)
    assert (row.audio_seconds, row.aborted, row.error) == (2, True, "proxy shut down mid-session")


async def test_a_session_open_when_the_script_reloads_is_finished_by_the_new_addon(meter: Meter) -> None:
    flow = handshake()
    await open_session(meter, flow)
    await send_audio(meter, flow, 30)
    meter.done()  # mitmproxy reloads the script: it is not shutting down
    new = Meter()
    new.store = CollectingStore()  # type: ignore[assignment]
    await send_audio(new, flow, 31)
    [row] = records(new)
    assert (row.audio_seconds, row.aborted, row.key_fingerprint) == (60, False, key_fingerprint(KEY))


async def test_a_translation_socket_is_not_logged_as_unmetered(
    meter: Meter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "tokometer")
    flow = handshake()
    await open_session(meter, flow)
    meter.websocket_start(flow)
    assert "passes unmetered" not in caplog.text


async def test_audio_appended_in_binary_frames_is_counted_as_in_text_ones(meter: Meter) -> None:
    from websocket_hooks import say

    flow = handshake()
    await open_session(meter, flow)
    await server_says(meter, flow, session_created())
    for n in range(60):
        message = await say(meter, flow, dumps(audio_append(n, SECOND)), client=True, text=False)
        assert not message.dropped
    [minute] = records(meter)
    assert minute.audio_seconds == 60
