"""addon.providers.openai_live: the OpenAI Live handshake path, session.start, and the server events
that bill (cumulative usage reports, the session's close, delegated Responses calls)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from fake_openai_live import (
    DELEGATED_USAGE,
    PATH,
    audio_append,
    delegated,
    error_event,
    output_audio,
    session_closed,
    session_start,
    session_started,
    session_updated,
    transcript_delta,
    usage_updated,
)
from fake_websocket import dumps
from hypothesis import given, settings
from hypothesis import strategies as st

from addon.providers import Registry, openai_live
from addon.providers.openai_realtime_mints import NamedModels
from addon.usage import Usage

# ---------------------------------------------------------------- the handshake


@pytest.mark.parametrize("path", [PATH, "/v1/live/sessions/"])
def test_the_primary_websocket_path(path: str) -> None:
    assert openai_live.OPENAI.matches(path)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/live/sessions/live_123/attach",  # a sideband (see sideband_session)
        "/v1/live/sessions/live_123/fork",
        "/v1/realtime",
        "/v1/live",
        "/live/sessions",
        "",
    ],
)
def test_other_paths_are_not_primary_sessions(path: str) -> None:
    assert not openai_live.OPENAI.matches(path)


@pytest.mark.parametrize(
    ("path", "session_id"),
    [
        ("/v1/live/sessions/live_123/attach", "live_123"),
        ("/v1/live/sessions/live_123/attach/", "live_123"),
        ("/v1/live/sessions/live%5F123/attach", "live_123"),  # as the server reads it
        ("/v1/live/sessions/live_123/fork", None),  # a fork (see fork_session)
        ("/v1/live/sessions/attach", None),
        ("/v1/live/sessions//attach", None),
        ("/v1/live/sessions/a%2Fb/attach", None),
        (f"/v1/live/sessions/{'x' * 300}/attach", None),
        ("/v1/live/sessions/live_123/attach/more", None),
        (PATH, None),
    ],
)
def test_a_sidebands_path_names_its_session(path: str, session_id: str | None) -> None:
    assert openai_live.sideband_session(path) == session_id


@pytest.mark.parametrize(
    ("path", "session_id"),
    [
        ("/v1/live/sessions/live_123/fork", "live_123"),
        ("/v1/live/sessions/live_123/fork/", "live_123"),
        ("/v1/live/sessions/live%5F123/fork", "live_123"),  # as the server reads it
        ("/v1/live/sessions/live_123/attach", None),
        ("/v1/live/sessions/fork", None),
        ("/v1/live/sessions/a%2Fb/fork", None),
        (f"/v1/live/sessions/{'x' * 300}/fork", None),
        ("/v1/live/sessions/live_123/fork/more", None),
        (PATH, None),
    ],
)
def test_a_forks_path_names_the_stored_session(path: str, session_id: str | None) -> None:
    assert openai_live.fork_session(path) == session_id


def test_a_forks_start_names_only_what_it_overrides() -> None:
    """A fork's session.start inherits the model (none named is none read, and no error); the
    delegation's model it overrides is read, and one it leaves is no error, as in an update."""
    empty = openai_live.read_session_start(dumps({"type": "session.start", "session": {}}), fork=True)
    assert empty is not None and (empty.model, empty.delegation) == (None, NamedModels())
    kept = {"type": "session.start", "session": {"delegation": {"type": "responses", "store": True}}}
    found = openai_live.read_session_start(dumps(kept), fork=True)
    assert found is not None and found.delegation == NamedModels()
    # A primary's start must name its delegation's model.
    primary = openai_live.read_session_start(dumps(kept))
    assert primary is not None and primary.delegation.error is not None
    override = {"type": "responses", "responses": {"model": "gpt-5"}}
    event = {"type": "session.start", "event_id": "e1", "session": {"delegation": override}}
    found = openai_live.read_session_start(dumps(event), fork=True)
    assert found is not None and (found.model, found.event_id) == (None, "e1")
    assert [(m.param, m.model) for m in found.delegation.models] == [
        ("session.delegation.responses.model", "gpt-5")
    ]
    assert found.delegation_param == "session.delegation.responses.model"


def test_the_registry_serves_live_on_openai_only() -> None:
    registry = Registry()
    openai = registry.for_host("api.openai.com")
    assert openai is not None and openai.openai_live is openai_live.OPENAI
    assert openai.live is None  # that field is Gemini Live's
    for host in ("generativelanguage.googleapis.com", "api.deepseek.com", "x.openai.azure.com"):
        provider = registry.for_host(host)
        assert provider is not None and provider.openai_live is None


# ---------------------------------------------------------------- session.start


def test_reads_the_model_a_session_start_names() -> None:
    data = dumps(session_start("gpt-live-1", delegate_to="gpt-5.5"))
    assert openai_live.may_start(data)
    start = openai_live.read_session_start(data)
    assert start is not None and (start.model, start.event_id) == ("gpt-live-1", "event_start")
    [named] = start.delegation.models  # the Responses backend it delegates to: checked too
    assert (named.param, named.model, start.delegation.error) == (
        "session.delegation.responses.model",
        "gpt-5.5",
        None,
    )
    assert start.delegation_param == named.param and start.body == json.loads(data)
    plain = openai_live.read_session_start(dumps(session_start("gpt-live-1")))
    assert plain is not None and plain.delegation == NamedModels() and plain.delegation_param is None


@pytest.mark.parametrize(
    ("delegation", "param", "model", "error"),
    [
        ({"type": "decisions", "decisions": {"model": "d-1", "questions": []}}, "decisions", "d-1", None),
        ({"type": "client"}, None, None, None),
        ({"type": "responses", "responses": {"tools": []}}, "responses", None, "names no"),
        ({"type": "responses", "responses": {"model": ["x"]}}, "responses", None, "is not a model name"),
        ({"type": "responses", "responses": "gpt-5"}, "responses", None, "is not a model name"),
    ],
)
def test_reads_a_delegations_model(
    delegation: Any, param: str | None, model: str | None, error: str | None
) -> None:
    event = session_start()
    event["session"]["delegation"] = delegation
    start = openai_live.read_session_start(dumps(event))
    assert start is not None and start.model == "gpt-live-1"
    assert start.delegation_param == (f"session.delegation.{param}.model" if param else None)
    assert [n.model for n in start.delegation.models] == ([model] if model else [])
    assert (error is None) == (start.delegation.error is None)
    assert error is None or error in (start.delegation.error or "")


def test_reads_a_session_update_naming_a_delegation_model() -> None:
    update = {
        "type": "session.update",
        "event_id": "e1",
        "session": {"delegation": {"type": "responses", "responses": {"model": "gpt-5"}}},
    }
    data = dumps(update)
    assert openai_live.may_update(data)
    found = openai_live.read_session_update(data)
    assert found is not None and found.event_id == "e1" and found.body == update
    assert [(n.param, n.model) for n in found.models.models] == [
        ("session.delegation.responses.model", "gpt-5")
    ]
    # An update that names no model (instructions, tools, triggers) is none of the proxy's business.
    for other in (
        {"type": "session.update", "session": {"delegation": {"type": "responses", "responses": {}}}},
        {"type": "session.update", "session": {"triggers": [], "model": "x"}},
        {"type": "session.start", "session": {"delegation": update["session"]["delegation"]}},
    ):
        assert openai_live.read_session_update(dumps(other)) is None
    for junk in (b"", b"{", b"[1]", b'{"type": "session.update", "session": 5}', b"\xff\xfe"):
        assert openai_live.read_session_update(junk) is None
    assert not openai_live.may_update(dumps(audio_append()))


def test_with_models_rewrites_only_the_values() -> None:
    data = dumps(session_start("gpt-live-1", delegate_to="gpt-5"))
    where = ("session", "delegation", "responses", "model")
    assert openai_live.with_models(data, {where: "gpt-5-mini"}) == data.replace(b'"gpt-5"', b'"gpt-5-mini"')
    with pytest.raises(ValueError):
        openai_live.with_models(dumps(session_start()), {where: "gpt-5-mini"})
    with pytest.raises(ValueError):
        openai_live.with_models(b"[]", {where: "gpt-5-mini"})


@pytest.mark.parametrize(
    "data",
    [
        b'{"type": "session.start", "session": {}}',
        b'{"type": "session.start", "session": {"model": ""}}',
        b'{"type": "session.start", "session": {"model": 7}}',
        b'{"type": "session.start"}',
        b'{"type": "session.start", "session": "gpt-live-1"}',
    ],
)
def test_a_start_without_a_readable_model(data: bytes) -> None:
    start = openai_live.read_session_start(data)
    assert start is not None and start.model is None


@pytest.mark.parametrize(
    "data",
    [
        dumps(audio_append()),
        b'{"type": "session.close"}',
        b"\x00 not json",
        b"[]",
        b'{"session": {"model": "x"}}',
    ],
)
def test_other_messages_are_no_start(data: bytes) -> None:
    assert openai_live.read_session_start(data) is None


def test_with_model_changes_only_the_model() -> None:
    original = json.dumps(session_start("gpt-live-1.1", instructions="Sé breve, por favor.")).encode()
    rewritten = openai_live.with_model(original, "gpt-live-1")
    assert rewritten == original.replace(b'"gpt-live-1.1"', b'"gpt-live-1"')
    assert json.loads(rewritten)["session"]["model"] == "gpt-live-1"


def test_with_model_writes_ascii_json_when_the_value_is_not_found_once() -> None:
    """The delegation naming the same model: the pair occurs twice, so the event is written anew."""
    event = session_start("gpt-live-1.1", instructions="日本語で" * 2000, delegate_to="gpt-live-1.1")
    original = json.dumps(event, ensure_ascii=False).encode()
    rewritten = openai_live.with_model(original, "gpt-live-1")
    assert rewritten.isascii()
    got = json.loads(rewritten)
    assert got["session"]["model"] == "gpt-live-1"
    assert got["session"]["delegation"]["responses"]["model"] == "gpt-live-1.1"  # not the Live model
    assert got["session"]["instructions"] == event["session"]["instructions"]


@pytest.mark.parametrize(
    "data", [b'{"type": "session.start", "session": {}}', b"garbage", dumps(audio_append())]
)
def test_with_model_refuses_a_message_without_a_model(data: bytes) -> None:
    with pytest.raises(ValueError):
        openai_live.with_model(data, "gpt-live-1")


def test_is_session_close() -> None:
    assert openai_live.is_session_close(b'{"type": "session.close", "event_id": "e1"}')
    assert not openai_live.is_session_close(dumps(audio_append()))
    assert not openai_live.is_session_close(b'{"type": "commentary.append", "text": "\\"session.close\\""}')


def test_error_event_is_the_live_shape() -> None:
    event = json.loads(
        openai_live.error_event(
            "model_not_allowed", "no", "event_x", param="session.model", client_event_id="s1"
        )
    )
    assert event == {
        "type": "error",
        "event_id": "event_x",
        "client_event_id": "s1",
        "error": {
            "type": "invalid_request_error",
            "code": "model_not_allowed",
            "message": "no",
            "param": "session.model",
            "client_event_id": "s1",
        },
    }
    bare = json.loads(openai_live.error_event("budget_exceeded", "spent", "event_y"))
    assert "client_event_id" not in bare and "param" not in bare["error"]


def test_the_upstream_close_event() -> None:
    assert json.loads(openai_live.CLOSE_EVENT) == {"type": "session.close"}


# ---------------------------------------------------------------- server events


def test_session_started_names_the_resolved_model() -> None:
    data = dumps(session_started("gpt-live-1"))
    assert openai_live.might_matter(data)
    assert openai_live.read_server_event(data) == openai_live.Started("gpt-live-1", "live_fake123")


def test_a_usage_report_is_the_cumulative_total() -> None:
    data = dumps(usage_updated(12.0, 3))
    assert openai_live.might_matter(data)
    assert openai_live.read_server_event(data) == openai_live.UsageReport(12.0)


def test_session_closed_carries_the_final_total_and_the_reason() -> None:
    data = dumps(session_closed(61, reason="expired"))
    assert openai_live.might_matter(data)
    assert openai_live.read_server_event(data) == openai_live.UsageReport(
        61.0, final=True, reason="expired", model="gpt-live-1"
    )


def test_session_updated_names_the_model() -> None:
    """A sideband may see no session.started: session.updated's resolved session names the model."""
    data = dumps(session_updated("gpt-live-1", "live_rtc"))
    assert openai_live.might_matter(data)
    assert openai_live.read_server_event(data) == openai_live.Started("gpt-live-1", "live_rtc", updated=True)


@pytest.mark.parametrize(
    "usage",
    [
        None,
        {},
        {"seconds": None},
        {"seconds": "12"},
        {"seconds": True},
        {"seconds": -1},
        {"seconds": float("nan")},
    ],
)
def test_a_report_without_readable_seconds(usage: Any) -> None:
    closed = {"type": "session.closed", "reason": "connection_lost", "usage": usage}
    assert openai_live.read_server_event(dumps(closed)) == openai_live.UsageReport(
        None, final=True, reason="connection_lost"
    )
    assert openai_live.read_server_event(dumps({"type": "session.usage.updated", "usage": usage})) is None


def test_a_delegated_responses_call_is_read_as_the_responses_api_reports_it() -> None:
    assert openai_live.read_server_event(dumps(delegated("response.created", "in_progress", None))) is None
    data = dumps(delegated("response.completed", "completed", DELEGATED_USAGE))
    assert openai_live.might_matter(data)
    event = openai_live.read_server_event(data)
    assert isinstance(event, openai_live.Delegated)
    assert event.response_id == "resp_delegated1"
    assert (event.metered.model, event.metered.service_tier, event.metered.error) == (
        "gpt-5.5",
        "default",
        None,
    )
    assert event.metered.usage == Usage(
        input_tokens=900, cache_read_tokens=100, output_tokens=250, reasoning_tokens=50
    )
    failed = openai_live.read_server_event(dumps(delegated("response.failed", "failed", DELEGATED_USAGE)))
    assert isinstance(failed, openai_live.Delegated) and failed.metered.error


@pytest.mark.parametrize(
    "event",
    [
        output_audio(1, size=40_000),
        transcript_delta(),
        error_event("unknown_parameter", "bad", param="session.voice"),
        {"type": "info", "event_id": "e", "code": "x", "message": "session.usage.updated soon"},
        {"type": "session.delegation.created", "event_id": "e", "offset_ms": 5, "delegation": {"id": "d"}},
    ],
)
def test_other_server_events_bill_nothing(event: dict[str, Any]) -> None:
    assert openai_live.read_server_event(dumps(event)) is None


def test_audio_deltas_are_passed_over_from_their_first_bytes() -> None:
    assert not openai_live.might_matter(dumps(output_audio(1, size=40_000)))
    assert not openai_live.might_matter(dumps(transcript_delta("session.usage.updated")))
    nested_delta = {"type": "response.event", "event": {"type": "response.output_text.delta", "delta": "hi"}}
    assert not openai_live.might_matter(dumps(nested_delta))


def test_seconds_price_per_hour_through_genai_prices() -> None:
    """The rows' usage is ``audio_seconds``: gpt-live-1 at $3 an hour, as genai-prices lists it."""
    from datetime import UTC, datetime

    from addon.pricing import price

    found = price("openai", "gpt-live-1", Usage(audio_seconds=60), datetime.now(UTC))
    assert (found.cost_usd, found.status, found.model) == (Decimal("0.05"), "priced", "gpt-live-1")


# ---------------------------------------------------------------- fuzz: random bytes never raise


_SAMPLES = [
    dumps(e)
    for e in (
        session_start(),
        session_start("gpt-live-1.1", delegate_to="gpt-5.5"),
        {
            "type": "session.update",
            "session": {"delegation": {"type": "responses", "responses": {"model": "g"}}},
        },
        session_started(),
        usage_updated(7.0),
        session_closed(9, reason="content"),
        delegated("response.completed", "completed", DELEGATED_USAGE),
        delegated("response.incomplete", "incomplete", DELEGATED_USAGE),
        output_audio(0, size=200),
        audio_append(0, size=200),
    )
]


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    """A real event cut, spliced or flipped somewhere; or plain random bytes."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=400))
    data = bytearray(draw(st.sampled_from(_SAMPLES)))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        action = draw(st.sampled_from(["cut", "flip", "insert"]))
        if action == "cut":
            del data[at:]
        elif action == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@settings(max_examples=400, deadline=None)
@given(_mutated(), st.text(max_size=20))
def test_live_messages_never_raise(data: bytes, model: str) -> None:
    openai_live.may_start(data)
    openai_live.read_session_start(data)
    openai_live.may_update(data)
    openai_live.read_session_update(data)
    openai_live.is_session_close(data)
    if not openai_live.might_matter(data):
        assert openai_live.read_server_event(data) is None  # the fast path never loses an event
    openai_live.read_server_event(data)
    try:
        rewritten = openai_live.with_model(data, model)
    except ValueError:
        return
    start = openai_live.read_session_start(rewritten)
    assert start is not None and start.model == (model.strip() or None)


# --- the answer to a Live set-up over HTTP (WebRTC, SIP) ------------------------------------------

WEBRTC_ANSWER = {"session": {"id": "live_rtc_42"}, "transport": {"type": "webrtc", "sdp": "v=0\r\n"}}


@pytest.mark.parametrize(
    ("path", "answer", "wanted"),
    [
        (PATH, dumps(WEBRTC_ANSWER), openai_live.SetUp("live_rtc_42")),  # the SDK's LiveCreateResponse
        ("/v1/live/sessions?x=1", dumps(WEBRTC_ANSWER), openai_live.SetUp("live_rtc_42")),
        (  # an answer naming the resolved model too (the SDK's has none): read
            PATH,
            dumps({"session": {"id": "live_rtc_42", "model": "gpt-live-1"}, "transport": {}}),
            openai_live.SetUp("live_rtc_42", "gpt-live-1"),
        ),
        ("/v1/live/sessions/live_sip_7/accept", b"", openai_live.SetUp("live_sip_7")),  # answered empty
        ("/v1/live/sessions/live%5Fsip_7/accept/", b"", openai_live.SetUp("live_sip_7")),
        ("/v1/live/sessions/a%2Fb/accept", b"", None),
        (f"/v1/live/sessions/{'x' * 300}/accept", b"", None),
        (PATH, dumps({"session": {"id": "x" * 300}}), None),
        (PATH, dumps({"session": {"id": 7}}), None),
        (PATH, dumps({"session": {"id": ""}}), None),
        (PATH, dumps({"session": "live_rtc_42"}), None),
        (PATH, dumps({"id": "live_rtc_42"}), None),
        (PATH, b"", None),
        (PATH, b"\xff not json", None),
        (  # a model too long to be one: not read
            PATH,
            dumps({"session": {"id": "live_rtc_42", "model": "m" * 300}}),
            openai_live.SetUp("live_rtc_42"),
        ),
        # A fork over WebRTC: a new session, its id in the answer.
        ("/v1/live/sessions/live_1/fork", dumps(WEBRTC_ANSWER), openai_live.SetUp("live_rtc_42")),
        ("/v1/live/sessions/live_1/fork", b"", None),
    ],
)
def test_a_live_setups_answer_names_its_session(
    path: str, answer: bytes, wanted: openai_live.SetUp | None
) -> None:
    assert openai_live.read_setup_answer(path, answer) == wanted


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([PATH, "/v1/live/sessions/live_sip_7/accept"]),
    st.one_of(
        st.binary(max_size=64),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
            ),
            max_leaves=8,
        ).map(lambda value: json.dumps({"session": value}).encode()),
    ),
)
def test_reading_a_setups_answer_never_raises(path: str, answer: bytes) -> None:
    found = openai_live.read_setup_answer(path, answer)
    assert found is None or (0 < len(found.session_id) <= openai_live.MAX_SESSION_ID)
