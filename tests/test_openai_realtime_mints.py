"""addon.providers.openai_realtime_mints: the models a Realtime mint or session update names."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_openai_media import form

from addon.providers import Registry, custom_provider
from addon.providers.openai_realtime_mints import (
    ACCEPT,
    AZURE,
    CALL,
    CLIENT_SECRET,
    LIVE,
    LIVE_ACCEPT,
    LIVE_FORK,
    OPENAI,
    SESSION,
    TRANSCRIPTION_SESSION,
    TRANSLATION_SECRET,
    NamedModel,
    read_call_form,
    read_mint,
    read_session_update,
)

# JSON made of the keys the readers look for: nested objects of every shape, valid or not.
KEYS = ["session", "model", "type", "audio", "input", "transcription", "input_audio_transcription"]
KEYS += ["delegation", "responses", "decisions"]
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=8)
    | st.sampled_from(["transcription", "responses", "decisions"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4),
    max_leaves=12,
)


@pytest.mark.parametrize(
    ("mints", "path", "kind"),
    [
        (OPENAI, "/v1/realtime/client_secrets", CLIENT_SECRET),
        (OPENAI, "//v1/realtime//client_secrets/?x=1", CLIENT_SECRET),
        (OPENAI, "/v1/realtime/calls", CALL),
        (OPENAI, "/v1/realtime/calls/rtc_123/accept", ACCEPT),
        (OPENAI, "/v1/realtime/calls/rtc_123/hangup", None),
        (OPENAI, "/v1/realtime/calls//accept", None),
        (OPENAI, "/v1/realtime/sessions", SESSION),
        (OPENAI, "/v1/realtime/transcription_sessions", TRANSCRIPTION_SESSION),
        (OPENAI, "/v1/realtime/translations/client_secrets", TRANSLATION_SECRET),
        (OPENAI, "/v1/realtime/translations/client_secrets/", TRANSLATION_SECRET),
        (OPENAI, "/v1/realtime/translations", None),  # the WebSocket's path (a GET)
        (AZURE, "/openai/v1/realtime/translations/client_secrets", TRANSLATION_SECRET),
        (OPENAI, "/v1/realtime", None),
        (AZURE, "/openai/v1/realtime/client_secrets", CLIENT_SECRET),
        (AZURE, "/openai/v1/realtime/calls/rtc_1/accept", ACCEPT),
        (AZURE, "/openai/realtimeapi/sessions?api-version=2025-04-01-preview", SESSION),
        (AZURE, "/v1/realtime/client_secrets", None),
        (OPENAI, "/v1/live/sessions", LIVE),
        (OPENAI, "//v1/live/sessions/?x=1", LIVE),
        (OPENAI, "/v1/live/sessions/live_sip_1/accept", LIVE_ACCEPT),
        (OPENAI, "/v1/live/sessions//accept", None),
        (OPENAI, "/v1/live/sessions/live_1/fork", LIVE_FORK),
        (OPENAI, "//v1/live/sessions/live_1/fork/?x=1", LIVE_FORK),
        (OPENAI, "/v1/live/sessions//fork", None),
        (OPENAI, "/v1/live/sessions/live_1/fork/more", None),
        (OPENAI, "/v1/realtime/calls/rtc_1/fork", None),
        (AZURE, "/openai/v1/live/sessions/live_1/fork", None),
        (OPENAI, "/v1/live/sessions/live_1/attach", None),
        (OPENAI, "/v1/live/sessions/live_1/hangup", None),
        (OPENAI, "/v1/live/sessions/live_1/accept/more", None),
        (OPENAI, "/v1/live", None),
        (AZURE, "/openai/v1/live/sessions", None),
    ],
)
def test_kind_of_path(mints: Any, path: str, kind: str | None) -> None:
    assert mints.kind(path) == kind


def test_a_ga_session_names_its_model_and_its_transcription_model() -> None:
    body = {
        "session": {
            "type": "realtime",
            "model": "rt-big",
            "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}},
        }
    }
    found = read_mint(CLIENT_SECRET, body, {"rt-big": "gpt-realtime"})
    assert found.error is None
    assert found.models == (
        NamedModel(("session", "model"), "rt-big", "gpt-realtime"),
        NamedModel(
            ("session", "audio", "input", "transcription", "model"), "gpt-4o-transcribe", "gpt-4o-transcribe"
        ),
    )
    assert found.models[1].param == "session.audio.input.transcription.model"
    # Transcription off (null) is no model; a realtime session without a model names none.
    off = read_mint(ACCEPT, {"type": "realtime", "audio": {"input": {"transcription": None}}})
    assert (off.models, off.error) == ((), "the request names no model")
    bad = read_mint(SESSION, {"model": "gpt-realtime", "input_audio_transcription": {"model": ["x"]}})
    assert [m.model for m in bad.models] == ["gpt-realtime"]
    assert bad.error == "the request's input_audio_transcription.model is not a model name"


def test_a_webrtc_offer_is_read_from_its_session_field_only() -> None:
    session = json.dumps({"type": "realtime", "model": "gpt-realtime"}).encode()
    body, ctype = form([("sdp", b'v=0\r\n"model":"x"\r\n', None), ("session", session, None)])
    assert [m.model for m in read_call_form(body, ctype).models] == ["gpt-realtime"]
    body, ctype = form([("sdp", b"v=0\r\n", None)])
    assert read_call_form(body, ctype).error == "the offer has no session field, so it names no model"
    body, ctype = form([("session", session, None), ("session", session, None)])
    assert (
        read_call_form(body, ctype).error == "the offer has several session fields: its model cannot be read"
    )


def test_a_session_update_names_only_its_transcription_models() -> None:
    update = read_session_update(
        b'{"type":"session.update","event_id":"e1","session":{"model":"gpt-realtime",'
        b'"audio":{"input":{"transcription":{"model":"whisper-1"}}}}}'
    )
    assert update is not None and update.event_id == "e1"
    assert [(m.param, m.model) for m in update.models.models] == [
        ("session.audio.input.transcription.model", "whisper-1")
    ]
    assert read_session_update(b'{"type":"response.create","model":"x"}') is None


def test_a_translation_client_secret_names_its_model_and_its_transcription_model() -> None:
    body = {
        "expires_after": {"anchor": "created_at", "seconds": 600},
        "session": {
            "model": "gpt-realtime-translate",
            "audio": {
                "input": {"transcription": {"model": "gpt-realtime-whisper"}},
                "output": {"language": "es"},
            },
        },
    }
    found = read_mint(TRANSLATION_SECRET, body)
    assert found.error is None
    assert [(m.param, m.model) for m in found.models] == [
        ("session.model", "gpt-realtime-translate"),
        ("session.audio.input.transcription.model", "gpt-realtime-whisper"),
    ]
    unnamed = read_mint(TRANSLATION_SECRET, {"session": {"audio": {"output": {"language": "es"}}}})
    assert (unnamed.models, unnamed.error) == ((), "the request names no session.model")


def test_a_fork_names_only_the_models_it_overrides() -> None:
    """A fork inherits its stored session's model: naming none is no error; the delegation's model
    it overrides is read, and a session.model it should not send is read too (and checked)."""
    transport = {"type": "webrtc", "sdp": "v=0\r\n"}
    assert read_mint(LIVE_FORK, {"transport": transport}) == read_mint(LIVE_FORK, {"session": {}})
    assert read_mint(LIVE_FORK, {"transport": transport}).models == ()
    assert read_mint(LIVE_FORK, {"transport": transport}).error is None
    delegation = {"type": "responses", "responses": {"model": "gpt-5"}}
    found = read_mint(LIVE_FORK, {"transport": transport, "session": {"delegation": delegation}})
    assert (found.error, [(m.param, m.model) for m in found.models]) == (
        None,
        [("session.delegation.responses.model", "gpt-5")],
    )
    kept = read_mint(
        LIVE_FORK, {"session": {"delegation": {"type": "responses", "acknowledgement_delay_ms": 9}}}
    )
    assert (kept.models, kept.error) == ((), None)
    named = read_mint(LIVE_FORK, {"session": {"model": "gpt-live-1.1", "delegation": delegation}})
    assert [m.param for m in named.models] == ["session.model", "session.delegation.responses.model"]
    bad = read_mint(LIVE_FORK, {"session": {"delegation": {"type": "responses", "responses": {"model": 3}}}})
    assert bad.error == "the request's session.delegation.responses.model is not a model name"


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(
        [
            CLIENT_SECRET,
            CALL,
            ACCEPT,
            SESSION,
            TRANSCRIPTION_SESSION,
            LIVE,
            LIVE_ACCEPT,
            LIVE_FORK,
            TRANSLATION_SECRET,
            "other",
        ]
    ),
    body=JSON,
)
def test_read_mint_never_raises(kind: str, body: Any) -> None:
    found = read_mint(kind, body, {"a": "b"})
    assert found.models or found.error or kind == LIVE_FORK  # a fork may name nothing: it inherits


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), body=JSON)
def test_readers_of_bytes_never_raise(data: bytes, body: Any) -> None:
    read_call_form(data, "multipart/form-data; boundary=b0undary-xyz")
    read_session_update(data)
    update = read_session_update(json.dumps({"type": "session.update", "session": body}).encode())
    assert update is not None


def test_registry_serves_mints_on_openai_and_azure_only() -> None:
    registry = Registry(
        custom=(custom_provider("gateway", "llm.internal.example", 443, "openai"),),
        azure_deployments={"rt-big": "gpt-realtime"},
    )
    openai = registry.for_host("api.openai.com")
    azure = registry.for_host("myres.openai.azure.com")
    assert openai is not None and openai.realtime_mints is OPENAI
    assert azure is not None and azure.realtime_mints is not None
    assert azure.realtime_mints.deployments == {"rt-big": "gpt-realtime"}
    assert azure.realtime_mints.written_as("gpt-realtime") == "rt-big"
    assert azure.realtime_mints.written_as("gpt-realtime-mini") == "gpt-realtime-mini"
    for host in ("llm.internal.example", "api.groq.com", "api.anthropic.com"):
        found = registry.for_host(host, 443)
        assert found is not None and found.realtime_mints is None, host


def test_a_webrtc_offer_walked_only_in_part_names_no_model() -> None:
    """A session field read before the walk stopped short (a part's headers past what it reads, a
    form with no closing delimiter) may not be the only one: a server reading on may take a later
    session field (a form's last value, as Starlette's does), with another model."""
    allowed = json.dumps({"type": "realtime", "model": "gpt-realtime-mini"}).encode()
    blocked = json.dumps({"type": "realtime", "model": "gpt-realtime"}).encode()
    boundary = "b0undary-xyz"
    long_headers = b"X-Pad: " + b"a" * 9000 + b"\r\n"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="session"\r\n\r\n'.encode()
        + allowed
        + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n'.encode()
        + long_headers
        + b"\r\nx"
        + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="session"\r\n\r\n'.encode()
        + blocked
        + f"\r\n--{boundary}--\r\n".encode()
    )
    found = read_call_form(body, f"multipart/form-data; boundary={boundary}")
    assert found.error is not None and "cut short or malformed" in found.error
    whole, ctype = form([("sdp", b"v=0\r\n", None), ("session", allowed, None)])
    # No closing delimiter: a lenient parser reads the last part to the end of the body.
    cut = whole[: whole.rindex(b"--b0undary-xyz--")] + (
        b'--b0undary-xyz\r\nContent-Disposition: form-data; name="session"\r\n\r\n' + blocked
    )
    found = read_call_form(cut, ctype)
    assert found.error is not None and "cut short or malformed" in found.error
