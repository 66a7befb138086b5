"""addon.providers.gemini_live: Live API paths, the setup message, and the usage of each turn."""

from __future__ import annotations

import json

import pytest
from fake_gemini_live import (
    DEV_PATH,
    TURN_USAGES,
    VERTEX_PATH,
    audio_chunk,
    dumps,
    setup_complete,
    setup_message,
    transcription,
    turn_complete,
    vertex_usage,
)

from addon.providers import Registry, gemini_live
from addon.usage import Usage

REGISTRY = Registry()
FIRST = Usage(input_tokens=541, output_tokens=156, input_audio_tokens=131, output_audio_tokens=156)
# 780 in (+ nothing for tools), 120 cached; 210 + 20 thoughts out; 200 audio in, 80 image in, 200 audio out.
SECOND = Usage(
    input_tokens=780,
    cache_read_tokens=120,
    output_tokens=230,
    reasoning_tokens=20,
    input_audio_tokens=200,
    output_audio_tokens=200,
    input_image_tokens=80,
)


# ---------------------------------------------------------------- paths


@pytest.mark.parametrize(
    "path",
    [
        DEV_PATH,
        "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent",
        "//ws/google.ai.generativelanguage.v1.GenerativeService.BidiGenerateContent",
        "/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContent",
        "//ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContentConstrained",
        "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent/",
    ],
)
def test_developer_api_paths(path: str) -> None:
    assert gemini_live.DEVELOPER.matches(path)
    assert not gemini_live.VERTEX.matches(path)
    assert gemini_live.row_path(path) == "/" + path.strip("/")


@pytest.mark.parametrize(
    "path",
    [
        VERTEX_PATH,
        "/ws/google.cloud.aiplatform.v1.LlmBidiService/BidiGenerateContent",
    ],
)
def test_vertex_paths(path: str) -> None:
    assert gemini_live.VERTEX.matches(path)
    assert not gemini_live.DEVELOPER.matches(path)
    assert gemini_live.row_path(path).startswith("/ws/google.cloud.aiplatform.")


@pytest.mark.parametrize(
    "path",
    [
        "/v1beta/models/gemini-2.5-flash:generateContent",
        "/ws/google.ai.generativelanguage.v1beta.GenerativeService.StreamGenerateContent",
        "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContentX",
        "/ws/google.ai.generativelanguage..GenerativeService.BidiGenerateContent",
        "/x/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent",
        "",
    ],
)
def test_other_paths_are_not_live(path: str) -> None:
    assert not gemini_live.DEVELOPER.matches(path) and not gemini_live.VERTEX.matches(path)


def test_the_registry_knows_where_live_is_served() -> None:
    google = REGISTRY.for_host("generativelanguage.googleapis.com")
    vertex = REGISTRY.for_host("us-central1-aiplatform.googleapis.com")
    assert google is not None and google.live is gemini_live.DEVELOPER
    assert vertex is not None and vertex.live is gemini_live.VERTEX
    assert REGISTRY.for_host("aiplatform.googleapis.com").live is gemini_live.VERTEX  # type: ignore[union-attr]
    assert REGISTRY.for_host("api.openai.com").live is None  # type: ignore[union-attr]


def test_credentials_of_a_handshake() -> None:
    token = "auth_tokens/abc123"
    assert gemini_live.authorization_credential(f"Token {token}") == token
    assert gemini_live.authorization_credential(f"Bearer {token}") == token
    assert gemini_live.authorization_credential("  ") is None
    assert gemini_live.DEVELOPER.key_query == ("key", "access_token")
    assert gemini_live.VERTEX.key_query == ("key",)  # ?access_token= on Vertex is an OAuth token
    assert gemini_live.DEVELOPER.reads_authorization and not gemini_live.VERTEX.reads_authorization


# ---------------------------------------------------------------- the setup message


def test_setup_of_the_developer_api() -> None:
    native = "gemini-2.5-flash-native-audio-preview-09-2025"
    found = gemini_live.read_setup(dumps(setup_message(f"models/{native}")))
    assert found == gemini_live.Setup(native)


def test_setup_of_vertex_names_project_and_location() -> None:
    model = "projects/my-proj/locations/us-central1/publishers/google/models/gemini-live-2.5-flash"
    found = gemini_live.read_setup(dumps(setup_message(model, vertex=True)))
    assert found == gemini_live.Setup("gemini-live-2.5-flash", project="my-proj", location="us-central1")
    express = gemini_live.read_setup(dumps(setup_message("publishers/google/models/gemini-live-2.5-flash")))
    assert express == gemini_live.Setup("gemini-live-2.5-flash")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"setup": {}}', gemini_live.Setup(None)),
        (b'{"setup": {"model": 7}}', gemini_live.Setup(None)),
        (b'{"setup": {"model": "  "}}', gemini_live.Setup(None)),
        (b'{"setup": {"model": "models/"}}', gemini_live.Setup(None)),
        (b'{"setup": {"model": "gemini-live-2.5-flash"}}', gemini_live.Setup("gemini-live-2.5-flash")),
        (b'{"setup": "x"}', None),
        (b'{"clientContent": {"turnComplete": true}}', None),
        (b"[1, 2]", None),
        (b"\xff\xfe not json", None),
        (b"", None),
    ],
)
def test_odd_setups(data: bytes, expected: gemini_live.Setup | None) -> None:
    assert gemini_live.read_setup(data) == expected


def test_is_setup_is_a_substring_test() -> None:
    assert gemini_live.is_setup(dumps(setup_message("models/x")))
    assert not gemini_live.is_setup(b'{"realtimeInput": {"audio": {"data": "QUJD"}}}')


def test_downgrade_rewrites_the_model_and_keeps_every_other_byte() -> None:
    data = (
        b'{ "setup" :{"model" :  "models/gemini-3.1-flash-live-preview",'
        b' "systemInstruction": {"parts": [{"text": "caf\\u00e9 \\"model\\": \\"x\\""}]}, "z": 1.50} }'
    )
    out = gemini_live.with_model(data, "gemini-live-2.5-flash-preview")
    assert out == data.replace(b"gemini-3.1-flash-live-preview", b"gemini-live-2.5-flash-preview")
    assert gemini_live.read_setup(out) == gemini_live.Setup("gemini-live-2.5-flash-preview")
    # A target given with its prefix is not prefixed twice.
    again = gemini_live.with_model(data, "models/gemini-live-2.5-flash-preview")
    assert again == out


def test_downgrade_on_vertex_keeps_the_path_prefix() -> None:
    model = "projects/p/locations/europe-west4/publishers/google/models/gemini-3.1-flash-live-preview"
    data = dumps(setup_message(model, vertex=True))
    out = gemini_live.with_model(data, "gemini-live-2.5-flash")
    expected = model.replace("gemini-3.1-flash-live-preview", "gemini-live-2.5-flash")
    assert json.loads(out)["setup"]["model"] == expected
    assert len(out) == len(data) - len("gemini-3.1-flash-live-preview") + len("gemini-live-2.5-flash")


def test_downgrade_re_encodes_when_the_model_cannot_be_found_once() -> None:
    """The same ``"model": "..."`` twice (a tool's parameter, say): the JSON is written again,
    with only setup.model changed."""
    obj = {"setup": {"tools": [{"model": "models/big"}], "model": "models/big"}}
    out = gemini_live.with_model(json.dumps(obj, separators=(",", ":")).encode(), "small")
    assert json.loads(out) == {"setup": {"tools": [{"model": "models/big"}], "model": "models/small"}}
    escaped = b'{"setup": {"model": "models\\/big"}}'  # a JSON writer that escapes slashes
    assert json.loads(gemini_live.with_model(escaped, "small")) == {"setup": {"model": "models/small"}}


@pytest.mark.parametrize(
    "data", [b'{"setup": {}}', b'{"setup": {"model": 3}}', b"{}", b"nope", b'{"setup": 1}']
)
def test_downgrade_needs_a_model_to_rewrite(data: bytes) -> None:
    with pytest.raises(ValueError):
        gemini_live.with_model(data, "gemini-live-2.5-flash")


def test_downgrade_refuses_an_empty_target() -> None:
    with pytest.raises(ValueError):
        gemini_live.with_model(dumps(setup_message("models/x")), "models/")


# ---------------------------------------------------------------- usage, per turn


def test_usage_of_the_developer_api() -> None:
    data = dumps(turn_complete(TURN_USAGES[0]))
    assert gemini_live.might_bill(data)
    found = gemini_live.read_usage(data)
    assert found is not None and found.usage == FIRST and found.service_tier is None


def test_usage_of_vertex_candidates_names() -> None:
    found = gemini_live.read_usage(dumps(turn_complete(vertex_usage(TURN_USAGES[1]))))
    assert found is not None and found.usage == SECOND
    assert gemini_live.read_usage(dumps(turn_complete(TURN_USAGES[1]))).usage == SECOND  # type: ignore[union-attr]


def test_thoughts_and_tool_use_prompts_and_video() -> None:
    """gemini-3.8-live's example: total leaves thoughts out, and the details do not add up to the
    prompt; tool-use prompt tokens are input; video frames are priced as images."""
    meta = {
        "promptTokenCount": 522,
        "responseTokenCount": 42,
        "totalTokenCount": 564,
        "toolUsePromptTokenCount": 30,
        "promptTokensDetails": [
            {"modality": "TEXT", "tokenCount": 332},
            {"modality": "AUDIO", "tokenCount": 165},
        ],
        "toolUsePromptTokensDetails": [{"modality": "VIDEO", "tokenCount": 30}],
        "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": 42}],
        "thoughtsTokenCount": 136,
        "trafficType": "ON_DEMAND_FLEX",
    }
    found = gemini_live.read_usage(dumps({"usageMetadata": meta}))
    assert found is not None
    assert found.usage == Usage(
        input_tokens=552,
        output_tokens=178,
        reasoning_tokens=136,
        input_audio_tokens=165,
        output_audio_tokens=42,
        input_image_tokens=30,
    )
    assert found.service_tier == "flex"


def test_usage_riding_on_audio_content_and_in_text_frames() -> None:
    chunk = audio_chunk(1, 0, size=2000)
    chunk["usageMetadata"] = TURN_USAGES[0]
    found = gemini_live.read_usage(dumps(chunk))
    assert found is not None and found.usage == FIRST
    as_text = json.dumps(chunk, indent=2).encode()  # a text frame's bytes are UTF-8 JSON all the same
    assert gemini_live.read_usage(as_text).usage == FIRST  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "data",
    [
        dumps(audio_chunk(1, 0, size=500)),
        dumps(setup_complete()),
        dumps(transcription()),
        dumps(turn_complete(None)),
        b'{"usageMetadata": null}',
        b'{"usageMetadata": {}}',
        b'{"usageMetadata": [1]}',
        b'{"usageMetadata": {"promptTokenCount": 3',
        b"\x00\x01garbage",
        b"",
    ],
)
def test_messages_without_usage(data: bytes) -> None:
    assert gemini_live.read_usage(data) is None


def test_counts_that_are_not_numbers_count_zero() -> None:
    data = b'{"usageMetadata": {"promptTokenCount": "12", "responseTokenCount": 1e400}}'
    found = gemini_live.read_usage(data)
    assert found is not None and found.usage == Usage()


def test_a_turn_starts_with_server_content_or_a_tool_call() -> None:
    assert gemini_live.starts_turn(dumps(audio_chunk(1, 0)))
    assert gemini_live.starts_turn(dumps(transcription()))
    assert gemini_live.starts_turn(b'{"toolCall": {"functionCalls": []}}')
    assert not gemini_live.starts_turn(dumps(setup_complete()))
    assert not gemini_live.starts_turn(b'{"sessionResumptionUpdate": {"newHandle": "h", "resumable": true}}')
    assert not gemini_live.starts_turn(b'{"goAway": {"timeLeft": "50s"}}')
    # What ends a turn starts none (usage that came with the content: the turn's row is written).
    assert not gemini_live.starts_turn(dumps(turn_complete(None)))
    assert not gemini_live.starts_turn(b'{"serverContent": {"generationComplete": true}}')
    assert not gemini_live.starts_turn(b'{"serverContent": {"interrupted": true}}')
    # The key is looked for in the first bytes only (it comes first): text deep inside is not it.
    assert not gemini_live.starts_turn(b'{"goAway": {"x": "' + b"a" * 100 + b'"}, "serverContent": {}}')


@pytest.mark.parametrize(
    "data",
    [
        b'"usageMetadata"',
        b'{"a": "b", "usageMetadata": {}}',
        b'x"usageMetadata"',
        b'""usageMetadata"',
        b'"usageMetadata',
        b'{"x": "usageMetadata"}',
        b"usageMetadata",
        b'"' * 200 + b'usageMetadata"',
        b'"a"' * 100 + b'"usageMetadata"',
        b'"a"' * 100 + b'"usageMetadat"',
        b"",
    ],
)
def test_might_bill_is_the_substring_test(data: bytes) -> None:
    assert gemini_live.might_bill(data) == (b'"usageMetadata"' in data)
