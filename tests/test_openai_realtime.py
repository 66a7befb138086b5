"""OpenAI Realtime: the pure parser (addon/providers/openai_realtime.py) and the session's rows
(addon/realtime_sessions.py), without mitmproxy."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from fake_realtime import (
    BETA_RESPONSE_USAGE,
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
from genai_prices import Usage as GPUsage
from genai_prices import calc_price

from addon.pricing import Pricer, price
from addon.providers import Registry
from addon.providers.openai_realtime import (
    Handshake,
    ResponseDone,
    ResponseStarted,
    SessionConfig,
    TranscriptionDone,
    asks_for_work,
    budget_error_event,
    key_in_subprotocols,
    might_bill,
    read_server_event,
    response_usage,
)
from addon.realtime_sessions import RealtimeSession
from addon.record import CallRecord
from addon.usage import Usage

OPENAI = Handshake(frozenset({"/v1/realtime"}))
AZURE = Handshake(
    frozenset({"/openai/realtime", "/openai/v1/realtime"}),
    ("deployment", "model"),
    {"rt-big": "gpt-realtime", "rt-small": "gpt-realtime-mini"},
)
EXPECTED = Usage(
    input_tokens=1000,
    cache_read_tokens=400,
    output_tokens=500,
    input_audio_tokens=300,
    output_audio_tokens=400,
    cache_audio_read_tokens=100,
)
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


# ---------------------------------------------------------------- the handshake


def test_handshake_reads_the_model_from_the_query() -> None:
    assert OPENAI.matches("/v1/realtime") and OPENAI.matches("/v1/realtime/")
    assert not OPENAI.matches("/v1/realtime/calls") and not OPENAI.matches("/v1/responses")
    assert OPENAI.model("model=gpt-realtime") == "gpt-realtime"
    assert OPENAI.model("foo=1&model=gpt%2Drealtime%2Dmini&bar") == "gpt-realtime-mini"
    assert (
        OPENAI.model("") is None and OPENAI.model("model=") is None and OPENAI.model("call_id=rtc_1") is None
    )
    # Two different models: which one upstream takes is unknown, so none is read.
    assert OPENAI.model("model=gpt-realtime-mini&model=gpt-realtime") is None
    assert OPENAI.model("model=gpt-realtime&model=gpt-realtime") == "gpt-realtime"
    assert OPENAI.is_sideband("call_id=rtc_123") and not OPENAI.is_sideband("call_id=rtc_1&model=x")
    assert not OPENAI.is_sideband("model=gpt-realtime")


def test_a_downgrade_rewrites_only_the_model_parameter() -> None:
    query = "a=%20x+y&model=gpt-realtime&z=%E2%82%AC&&trailing="
    assert (
        OPENAI.with_model(query, "gpt-realtime-mini")
        == "a=%20x+y&model=gpt-realtime-mini&z=%E2%82%AC&&trailing="
    )
    # Every occurrence: a second, different model cannot slip past the rewrite.
    assert OPENAI.with_model("model=a&x=1&model=b", "m/n") == "model=m%2Fn&x=1&model=m%2Fn"
    with pytest.raises(ValueError):
        OPENAI.with_model("x=1", "gpt-realtime-mini")


def test_azure_names_a_deployment() -> None:
    assert AZURE.matches("/openai/realtime") and AZURE.matches("/openai/v1/realtime")
    assert AZURE.model("api-version=2025-04-01-preview&deployment=rt-big") == "gpt-realtime"
    assert AZURE.model("model=rt-small") == "gpt-realtime-mini"
    assert AZURE.model("deployment=unknown-name") == "unknown-name"
    query = "api-version=2025-04-01-preview&deployment=rt-big"
    assert (
        AZURE.with_model(query, "gpt-realtime-mini") == "api-version=2025-04-01-preview&deployment=rt-small"
    )
    with pytest.raises(ValueError, match="no Azure deployment serves gpt-4o-realtime"):
        AZURE.with_model(query, "gpt-4o-realtime")
    # The v1 API's model: a deployment that serves it if there is one, else the name itself.
    assert AZURE.with_model("model=rt-big", "gpt-realtime-mini") == "model=rt-small"
    assert AZURE.with_model("model=rt-big", "gpt-4o-realtime") == "model=gpt-4o-realtime"


def test_registry_serves_realtime_on_openai_and_azure_only() -> None:
    registry = Registry(azure_deployments={"rt-big": "gpt-realtime"})
    openai = registry.for_host("api.openai.com")
    azure = registry.for_host("myres.openai.azure.com")
    assert openai is not None and openai.realtime is not None and openai.realtime.matches("/v1/realtime")
    assert azure is not None and azure.realtime is not None
    assert azure.realtime.model("deployment=rt-big&api-version=x") == "gpt-realtime"
    for host in ("api.groq.com", "api.deepseek.com", "api.anthropic.com"):
        found = registry.for_host(host)
        assert found is not None and found.realtime is None, host


def test_a_browser_key_in_the_subprotocols() -> None:
    header = "realtime, openai-insecure-api-key.sk-browser123, openai-beta.realtime-v1"
    assert key_in_subprotocols(header) == "sk-browser123"
    assert key_in_subprotocols("realtime") is None and key_in_subprotocols(None) is None
    assert key_in_subprotocols("openai-insecure-api-key.") is None


# ---------------------------------------------------------------- server events


def test_audio_deltas_are_skipped_without_reading_them() -> None:
    for beta in (False, True):
        assert not might_bill(dumps(audio_delta("resp_1", 0, beta=beta)))
    # Also with event_id first (another key order).
    event = audio_delta("resp_1", 0)
    reordered = {"event_id": event["event_id"], **event}
    assert not might_bill(dumps(reordered))
    # Text in a delta that spells "usage" is escaped: still no match.
    text = {"type": "response.output_text.delta", "delta": 'say "usage" and session.created'}
    assert not might_bill(dumps(text))
    for event in (
        response_done("r", RESPONSE_USAGE),
        response_created("r"),
        session_event("session.created", "gpt-realtime", None),
        session_event("session.updated", "gpt-realtime", "whisper-1", beta=True),
        transcription_completed("item_1", TRANSCRIPTION_USAGE),
    ):
        assert might_bill(dumps(event)), event["type"]


def test_response_done_usage_ga_and_beta_shapes() -> None:
    for usage in (RESPONSE_USAGE, BETA_RESPONSE_USAGE):
        event = read_server_event(dumps(response_done("resp_9", usage)))
        assert event == ResponseDone("resp_9", "completed", EXPECTED, None)
        assert response_usage(usage) == EXPECTED


def test_cancelled_incomplete_and_failed_responses_are_billed() -> None:
    cancelled = read_server_event(dumps(response_done("r1", RESPONSE_USAGE, status="cancelled")))
    assert cancelled == ResponseDone("r1", "cancelled", EXPECTED, "response cancelled: turn_detected")
    failed = read_server_event(dumps(response_done("r2", RESPONSE_USAGE, status="failed")))
    assert failed == ResponseDone("r2", "failed", EXPECTED, "response failed: boom: it broke")
    empty = read_server_event(dumps(response_done("r3", None)))
    assert empty == ResponseDone("r3", "completed", None, "no usage in response.done")


def test_image_input_with_cache_reads_is_counted_as_text() -> None:
    usage = json.loads(json.dumps(RESPONSE_USAGE))
    usage["input_token_details"].update(text_tokens=600, image_tokens=100)
    assert response_usage(usage) == EXPECTED  # no column splits cached images: priced as text
    usage["input_token_details"].update(cached_tokens=0)
    assert response_usage(usage).input_image_tokens == 100  # type: ignore[union-attr]


def test_response_priced_at_gpt_realtime_audio_rates() -> None:
    """Usage as parsed, priced by the addon == genai-prices' own result; by hand: 400 text x $4 +
    300 cached text x $0.40 + 200 audio x $32 + 100 cached audio x $0.40 + 100 out x $16 + 400 out
    audio x $64, per 1M."""
    expected = calc_price(
        GPUsage(
            input_tokens=1000,
            cache_read_tokens=400,
            output_tokens=500,
            input_audio_tokens=300,
            output_audio_tokens=400,
            cache_audio_read_tokens=100,
        ),
        "gpt-realtime",
        provider_id="openai",
    ).total_price
    usage = response_usage(RESPONSE_USAGE)
    for model in ("gpt-realtime", "gpt-realtime-2025-08-28"):
        assert price("openai", model, usage, NOW).cost_usd == expected == Decimal("0.03536")
    mini = price("openai", "gpt-realtime-mini", usage, NOW).cost_usd
    assert mini == Decimal("0.010528")  # 400 x .6 + 300 x .06 + 200 x 10 + 100 x .3 + 100 x 2.4 + 400 x 20


def test_transcription_usage_in_tokens_and_in_seconds() -> None:
    """Read as a transcription's answer over HTTP is (one reader, openai_media's)."""
    tokens = read_server_event(dumps(transcription_completed("item_1", TRANSCRIPTION_USAGE)))
    assert tokens == TranscriptionDone(
        "item_1", Usage(input_tokens=150, output_tokens=20, input_audio_tokens=120), None
    )
    seconds = read_server_event(dumps(transcription_completed("item_2", DURATION_USAGE)))
    assert seconds == TranscriptionDone("item_2", Usage(audio_seconds=90), None)
    for bad in (
        {"type": "duration", "seconds": -1},
        {"type": "duration", "seconds": "9"},
        {"type": "tokens"},
    ):
        event = read_server_event(dumps(transcription_completed("item_3", bad)))
        assert event == TranscriptionDone("item_3", None, "no usage in transcription")
    event = read_server_event(dumps(transcription_completed("item_4", None)))
    assert event == TranscriptionDone("item_4", None, "no usage in transcription")


def test_session_events_give_the_models() -> None:
    ga = read_server_event(
        dumps(session_event("session.created", "gpt-realtime-2025-08-28", "gpt-4o-transcribe"))
    )
    assert ga == SessionConfig("gpt-realtime-2025-08-28", "gpt-4o-transcribe")
    beta = read_server_event(
        dumps(session_event("session.updated", "gpt-4o-realtime-preview", "whisper-1", beta=True))
    )
    assert beta == SessionConfig("gpt-4o-realtime-preview", "whisper-1")
    off = read_server_event(dumps(session_event("session.updated", "gpt-realtime", None)))
    assert off == SessionConfig("gpt-realtime", None)
    transcription_only = {
        "type": "transcription_session.created",
        "session": {"input_audio_transcription": {"model": "gpt-4o-mini-transcribe"}},
    }
    assert read_server_event(dumps(transcription_only)) == SessionConfig(None, "gpt-4o-mini-transcribe")
    assert read_server_event(dumps(response_created("resp_1"))) == ResponseStarted("resp_1")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\xff\xfe binary",
        b'{"type":"response.done","response":{"usage":{"input_tokens":10',  # truncated
        b'{"type":"response.done","response":"usage"}',
        b'{"type":"response.done"}',
        b'["usage"]',
        b'"usage"',
        b'{"type":"session.created","session":null}',
        b'{"type":"session.updated","session":{"audio":"x","input_audio_transcription":7}}',
        b'{"type":"conversation.item.input_audio_transcription.completed"}',
        b'{"type":"response.created"}',
        b'{"type":"error","error":{"message":"usage"}}',
        b'{"type": "response.done", "response": {"usage": {"input_tokens": "1e9", "output_tokens": null}}}',
        b'{"type":"response.done","response":{"usage":{"input_tokens":1e400,"output_tokens":NaN}}}',
    ],
)
def test_garbage_is_no_event_or_an_empty_one(data: bytes) -> None:
    event = read_server_event(data)
    assert event is None or isinstance(
        event, ResponseDone | SessionConfig | TranscriptionDone | ResponseStarted
    )
    if isinstance(event, ResponseDone) and event.usage is not None:
        assert event.usage.input_tokens >= 0 or event.usage.input_tokens == 0


def test_garbage_values_count_zero() -> None:
    event = read_server_event(
        b'{"type":"response.done","response":{"usage":{"input_tokens":"1e9","output_tokens":null}}}'
    )
    assert event == ResponseDone(None, None, Usage(), None)
    assert read_server_event(b'{"type":"response.done","response":"usage"}') is None
    assert read_server_event(b"\xff\xfe") is None


# ---------------------------------------------------------------- client events


def test_which_client_events_ask_for_work() -> None:
    for kind in ("response.create", "input_audio_buffer.append", "input_audio_buffer.commit"):
        assert asks_for_work(json.dumps({"type": kind, "audio": "AAAA"}).encode())
    for kind in ("session.update", "response.cancel", "conversation.item.delete", "input_audio_buffer.clear"):
        assert not asks_for_work(json.dumps({"type": kind}).encode())
    assert not asks_for_work(b"not json") and not asks_for_work(b"[1]")


def test_budget_error_event_shape() -> None:
    event = json.loads(budget_error_event("tokometer: spent", "event_x"))
    assert event == {
        "type": "error",
        "event_id": "event_x",
        "error": {
            "type": "invalid_request_error",
            "code": "budget_exceeded",
            "message": "tokometer: spent",
            "param": None,
            "event_id": None,
        },
    }


# ---------------------------------------------------------------- the session's rows


def handshake_row(**kw: Any) -> CallRecord:
    fields: dict[str, Any] = {
        "id": "handshake",
        "ts": NOW,
        "session_id": "s",
        "environment": "development",
        "provider": "openai",
        "host": "api.openai.com",
        "path": "/v1/realtime",
        "api_flavor": "realtime",
        "model_requested": "gpt-realtime",
        "model_sent": "gpt-realtime-mini",
        "action": "downgraded",
        "key_fingerprint": "abcdef012345",
        "team": "voice",
        "tags": '{"t": "1"}',
        "client_pid": 42,
    }
    return CallRecord(**(fields | kw))


def new_session(**kw: Any) -> RealtimeSession:
    ids = iter(f"id{n}" for n in range(100))
    return RealtimeSession(handshake=handshake_row(**kw), next_id=lambda: next(ids), opened_at=1000.0)


def test_one_row_per_response_with_the_handshakes_attribution() -> None:
    session = new_session()
    assert session.take(SessionConfig("gpt-realtime-mini-2025-10-06", None), 1000.1) == []
    assert session.take(ResponseStarted("r1"), 1001.0) == []
    [row] = session.take(ResponseDone("r1", "completed", EXPECTED), 1003.5)
    record = row.record
    assert record.audio_seconds is None
    assert (record.id, record.ts.timestamp(), record.duration_ms) == ("id0", 1001.0, 2500.0)
    assert (record.model_requested, record.model_sent, record.model_reported) == (
        "gpt-realtime",
        "gpt-realtime-mini",
        "gpt-realtime-mini-2025-10-06",
    )
    assert (record.action, record.team, record.tags, record.client_pid) == (
        "downgraded",
        "voice",
        '{"t": "1"}',
        42,
    )
    assert (record.streamed, record.aborted, record.status_code, record.usage_source) == (
        True,
        False,
        101,
        "reported",
    )
    assert record.usage == EXPECTED and record.cost_usd is None and record.price_status is None
    # created not seen: timed from the end of the previous response
    [row] = session.take(ResponseDone("r2", "cancelled", EXPECTED, "response cancelled"), 1005.0)
    assert (row.record.ts.timestamp(), row.record.duration_ms, row.record.error) == (
        1003.5,
        1500.0,
        "response cancelled",
    )
    assert session.responses == 2 and session.in_flight == {}


def test_transcriptions_take_the_sessions_transcription_model() -> None:
    session = new_session()
    session.take(SessionConfig("gpt-realtime", "gpt-4o-transcribe"), 1000.0)
    [row] = session.take(TranscriptionDone("i1", Usage(input_tokens=150, output_tokens=20)), 1002.0)
    record = row.record
    assert (record.model_requested, record.model_sent, record.model_reported, record.action) == (
        "gpt-4o-transcribe",
        "gpt-4o-transcribe",
        None,
        "allowed",
    )
    assert (record.input_tokens, record.output_tokens, record.duration_ms) == (150, 20, None)
    session.take(SessionConfig("gpt-realtime", "whisper-1"), 1003.0)
    [row] = session.take(TranscriptionDone("i2", Usage(audio_seconds=12.5)), 1004.0)
    assert (row.record.audio_seconds, row.record.model_sent, row.record.input_tokens) == (
        12.5,
        "whisper-1",
        0,
    )
    assert row.record.usage_source == "reported"
    session.take(SessionConfig("gpt-realtime", None), 1005.0)
    [row] = session.take(TranscriptionDone("i3", Usage(input_tokens=1)), 1006.0)
    assert (
        row.record.model_sent is None and row.record.error == "the session's transcription model was not seen"
    )


def test_responses_in_flight_at_the_end_are_aborted_rows_without_usage() -> None:
    session = new_session()
    session.take(ResponseStarted("r1"), 1001.0)
    session.take(ResponseStarted("r2"), 1002.0)
    session.take(ResponseDone("r1", "completed", EXPECTED), 1003.0)
    [row] = session.end(1004.0, "closed before response.done")
    assert (row.record.aborted, row.record.usage, row.record.ts.timestamp(), row.record.duration_ms) == (
        True,
        None,
        1002.0,
        2000.0,
    )
    assert row.record.error == "closed before response.done" and row.record.usage_source == "none"
    assert session.end(1005.0, "again") == []


def test_whisper_seconds_priced_by_the_minute() -> None:
    """A whisper-1 transcription in a session is priced by the pricing every call takes."""
    record = CallRecord(
        id="x", ts=datetime.fromtimestamp(1000, UTC), session_id="s", environment="development",
        provider="openai", host="h",
        path="/v1/realtime", api_flavor="realtime", model_requested="whisper-1", model_sent="whisper-1",
    )  # fmt: skip
    record.set_usage(Usage(audio_seconds=90))
    Pricer()(record)
    assert (record.cost_usd, record.price_status) == (Decimal("0.009"), "priced")
    assert (
        record.cost_usd
        == calc_price(GPUsage(audio_seconds=90), "whisper-1", provider_id="openai").total_price
    )
    record.model_sent = record.model_requested = "gpt-4o-transcribe"
    record.cost_usd = record.price_status = None
    Pricer()(record)
    assert (record.cost_usd, record.price_status) == (None, "unknown_model")


def test_a_delta_is_known_by_its_type_not_by_text() -> None:
    """A response.done whose transcript ends in ".delta" near the start is still read."""
    event = response_done("resp_1", RESPONSE_USAGE)
    response = event["response"]
    output = [{"type": "message", "content": [{"transcript": "the Mississippi.delta"}]}]
    event["response"] = {"output": output, **{k: v for k, v in response.items() if k != "output"}}
    data = dumps(event)
    assert data.find(b'.delta"', 0, 256) >= 0
    assert might_bill(data) and read_server_event(data) == ResponseDone("resp_1", "completed", EXPECTED, None)
    spaced = b'{"event_id": "e1", "type" : "response.output_audio.delta", "delta": "QUJD"}'
    assert not might_bill(spaced)
