"""addon.providers.openai_realtime_translation: the translation handshake, the audio a client
appends (its size, read without decoding), and the server events the meter reads."""

from __future__ import annotations

import base64
import json

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

from addon.providers import Registry
from addon.providers import openai_realtime_translation as translation


def test_the_registry_serves_translation_on_openai_only() -> None:
    registry = Registry()
    openai = registry.for_host("api.openai.com")
    assert openai is not None and openai.realtime_translation is translation.OPENAI
    for host in ("api.anthropic.com", "x.openai.azure.com", "generativelanguage.googleapis.com"):
        provider = registry.for_host(host)
        assert provider is not None and provider.realtime_translation is None, host


@pytest.mark.parametrize(("path", "matches"), [(PATH, True), (f"{PATH}/", True), ("/v1/realtime", False)])
def test_the_handshake_path(path: str, matches: bool) -> None:
    assert translation.OPENAI.matches(path) is matches


def test_the_handshake_names_its_model_and_has_no_sidebands() -> None:
    """A translation session has no sideband: a handshake naming no model names none."""
    assert translation.OPENAI.model("model=gpt-realtime-translate") == MODEL
    assert translation.OPENAI.model("call_id=rtc_1") is None
    assert not translation.OPENAI.has_sidebands
    assert translation.OPENAI.with_model("model=gpt-realtime-translate-2&x=1", MODEL) == (
        "model=gpt-realtime-translate&x=1"
    )


# ---------------------------------------------------------------- the audio a client appends


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 9600, SECOND, 100_003])
def test_an_appends_audio_is_measured_as_its_decoded_size(size: int) -> None:
    assert translation.appended_audio_bytes(dumps(audio_append(size=size))) == size


def test_an_append_is_read_as_a_json_parser_reads_it() -> None:
    """Escapes, another key order, spaces, an event_id: the size is the audio's, as decoded."""
    raw = bytes(range(256)) * 10
    audio = base64.b64encode(raw).decode()
    cases = [
        json.dumps({"audio": audio, "type": "session.input_audio_buffer.append", "event_id": "e1"}),
        json.dumps({"type": "session.input_audio_buffer.append", "audio": audio}, indent=2),
        json.dumps({"type": "session.input_audio_buffer.append", "audio": audio}).replace("/", "\\/"),
        '{"type":"session.input_audio_buffer.\\u0061ppend","audio":"' + audio + '"}',
    ]
    for case in cases:
        assert translation.appended_audio_bytes(case.encode()) == len(raw), case[:80]


@pytest.mark.parametrize(
    "data",
    [
        dumps(translation_update("fr")),
        dumps({"type": "session.close"}),
        dumps({"type": "input_audio_buffer.append", "audio": "QUJD"}),  # a Realtime session's
        dumps({"type": "session.input_audio_buffer.append"}),
        dumps({"type": "session.input_audio_buffer.append", "audio": 7}),
        dumps({"type": "session.update", "session": {"x": {"type": "session.input_audio_buffer.append"}}}),
        # The type named twice: a JSON parser reads the last one (an update), not the append.
        b'{"type":"session.input_audio_buffer.append","audio":"QUJD","type":"session.update"}',
    ],
)
def test_other_messages_append_nothing(data: bytes) -> None:
    assert translation.appended_audio_bytes(data) == 0


@pytest.mark.parametrize("data", [b"", b"\xff\xfe", b"[]", b'"session.input_audio_buffer.append"', b"{"])
def test_junk_appends_nothing(data: bytes) -> None:
    assert translation.appended_audio_bytes(data) == 0


def test_asks_for_work_is_an_append() -> None:
    assert translation.asks_for_work(dumps(audio_append()))
    assert not translation.asks_for_work(dumps(translation_update()))
    assert not translation.asks_for_work(dumps({"type": "session.close"}))
    assert not translation.asks_for_work(b"\xff")


# ---------------------------------------------------------------- server events


def test_session_events_name_the_model_and_the_close_is_read() -> None:
    created = dumps(session_created("gpt-realtime-translate-x"))
    assert translation.might_matter(created)
    assert translation.read_server_event(created) == translation.Configured(
        "gpt-realtime-translate-x", "sess_fake_tr1"
    )
    updated = dumps(session_updated(transcription="gpt-realtime-whisper"))
    assert translation.read_server_event(updated) == translation.Configured(MODEL, "sess_fake_tr1")
    closed = dumps(session_closed())
    assert translation.might_matter(closed)
    assert translation.read_server_event(closed) == translation.Closed()


def test_deltas_are_passed_by_the_cheap_test() -> None:
    """The translated audio and transcript: not decoded (their type is in their first bytes), even
    when the text holds the name of an event the meter reads."""
    assert not translation.might_matter(dumps(output_audio(1)))
    assert not translation.might_matter(dumps(output_transcript('I said "session.closed"')))
    assert translation.read_server_event(dumps(output_audio(1))) is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff",
        b"[1]",
        dumps({"type": "session.created", "session": "x"}),
        dumps({"type": "error", "error": {"message": "session.closed"}}),
    ],
)
def test_odd_server_messages(data: bytes) -> None:
    event = translation.read_server_event(data)
    assert event is None or event == translation.Configured(None, None)
