"""Bedrock parser: paths and model ids, Converse / InvokeModel bodies and headers, both binary streams."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import struct
import zlib
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from genai_prices import Usage as GPUsage
from genai_prices import calc_price

from addon import pricing
from addon.aws_eventstream import EventStreamDecoder
from addon.providers import values
from addon.providers.bedrock_api import (
    StreamParser,
    allow_host_pattern,
    converse_usage,
    credential_of,
    flavor_for_path,
    is_bedrock_host,
    parse_response,
    pricing_model,
    region_of,
    request_model,
)
from addon.usage import Metered, Usage

FIXTURES = Path(__file__).parent / "fixtures"
WHEN = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
HAIKU_PROFILE = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
SONNET_GLOBAL = "global.anthropic.claude-sonnet-4-5-20250929-v1:0"


# --- the event-stream encoder (tests only) ------------------------------------------------------


@pytest.fixture(autouse=True)
def _compare_every_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """``==`` on results checks ``output_text`` too, even if ``Metered`` leaves it out of comparisons."""

    def eq(a: Metered, b: object) -> bool:
        return type(b) is Metered and dataclasses.astuple(a) == dataclasses.astuple(b)

    monkeypatch.setattr(Metered, "__eq__", eq)


def _header(name: str, value: str) -> bytes:
    raw_name, raw = name.encode(), value.encode()
    return bytes([len(raw_name)]) + raw_name + b"\x07" + struct.pack(">H", len(raw)) + raw


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    block = b"".join(_header(k, v) for k, v in headers.items())
    prelude = struct.pack(">II", 16 + len(block) + len(payload), len(block))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + block + payload
    return body + struct.pack(">I", zlib.crc32(body))


def event(event_type: str, payload: dict[str, Any]) -> bytes:
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return frame(headers, json.dumps(payload, separators=(",", ":")).encode())


def exception(kind: str, message: str) -> bytes:
    headers = {":exception-type": kind, ":content-type": "application/json", ":message-type": "exception"}
    return frame(headers, json.dumps({"message": message}).encode())


def chunk(native: dict[str, Any]) -> bytes:
    """An InvokeModelWithResponseStream ``chunk``: the native event, base64, with Bedrock's padding."""
    inner = json.dumps(native, separators=(",", ":")).encode()
    return event("chunk", {"bytes": base64.b64encode(inner).decode(), "p": "abcdefghijklmnopqrstu"})


# ConverseStream with prompt caching: input 4 + cache read 2400 + cache write 310.
CONVERSE_STREAM = b"".join(
    [
        event("messageStart", {"p": "abcdefghijklmn", "role": "assistant"}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Sure"}, "p": "abcdef"}),
        event(
            "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": ', the "usage" is'}, "p": "ab"}
        ),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": " below."}, "p": "abcdefghij"}),
        event("contentBlockStop", {"contentBlockIndex": 0, "p": "abcdefghijklmnopqrstuvw"}),
        event("messageStop", {"p": "abcdefghijklmnopqrstuv", "stopReason": "end_turn"}),
        event(
            "metadata",
            {
                "metrics": {"latencyMs": 1204},
                "p": "abcdefghijklmnop",
                "usage": {
                    "cacheReadInputTokens": 2400,
                    "cacheWriteInputTokens": 310,
                    "inputTokens": 4,
                    "outputTokens": 57,
                    "totalTokens": 2771,
                },
            },
        ),
    ]
)
CONVERSE_STREAM_RESULT = Metered(
    Usage(input_tokens=2714, cache_read_tokens=2400, cache_write_tokens=310, output_tokens=57), None, None
)

# InvokeModelWithResponseStream of an Anthropic model; the last chunk carries Bedrock's metrics.
ANTHROPIC_EVENTS: list[dict[str, Any]] = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_bdrk_01Xa",
            "type": "message",
            "role": "assistant",
            "model": "claude-3-5-haiku-20241022",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 21,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 1024,
                "output_tokens": 1,
            },
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " from Bedrock."}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 9},
    },
    {
        "type": "message_stop",
        "amazon-bedrock-invocationMetrics": {
            "inputTokenCount": 21,
            "outputTokenCount": 9,
            "invocationLatency": 412,
            "firstByteLatency": 288,
            "cacheReadInputTokenCount": 1024,
            "cacheWriteInputTokenCount": 0,
        },
    },
]
INVOKE_STREAM = b"".join(chunk(e) for e in ANTHROPIC_EVENTS)
INVOKE_STREAM_RESULT = Metered(Usage(input_tokens=1045, cache_read_tokens=1024, output_tokens=9), None, None)


def run(flavor: str, pieces: Iterable[bytes]) -> Metered:
    decoder = EventStreamDecoder()
    parser = StreamParser(flavor)
    for piece in pieces:
        for message in decoder.feed(piece):
            parser.feed(message)
    for message in decoder.close():
        parser.feed(message)
    return parser.result()


# --- hosts, paths, model ids -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "region"),
    [
        ("bedrock-runtime.us-east-1.amazonaws.com", "us-east-1"),
        ("BEDROCK-RUNTIME.eu-central-1.amazonaws.com.", "eu-central-1"),
        ("bedrock-runtime-fips.us-gov-west-1.amazonaws.com", "us-gov-west-1"),
        ("bedrock-runtime.cn-north-1.amazonaws.com.cn", "cn-north-1"),
        ("bedrock-runtime.ap-southeast-2.amazonaws.com", "ap-southeast-2"),
        ("bedrock.us-east-1.amazonaws.com", None),  # the control plane: not metered
        ("bedrock-agent-runtime.us-east-1.amazonaws.com", None),
        ("bedrock-runtime.us-east-1.amazonaws.com.evil.example", None),
        ("api.openai.com", None),
    ],
)
def test_hosts(host: str, region: str | None) -> None:
    assert is_bedrock_host(host) is (region is not None)
    assert region_of(host) == region
    pattern = re.compile(allow_host_pattern(443))
    assert (pattern.search(f"{host.lower().rstrip('.')}:443") is not None) is (region is not None)
    assert pattern.search(f"{host.lower().rstrip('.')}:8443") is None


@pytest.mark.parametrize(
    ("path", "flavor", "model"),
    [
        (f"/model/{HAIKU_PROFILE.replace(':', '%3A')}/converse", "converse", HAIKU_PROFILE),
        (f"/model/{HAIKU_PROFILE}/converse-stream", "converse_stream", HAIKU_PROFILE),
        (
            "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/invoke",
            "invoke",
            "anthropic.claude-3-5-haiku-20241022-v1:0",
        ),
        (
            "/model/amazon.nova-lite-v1%3A0/invoke-with-response-stream",
            "invoke_stream",
            "amazon.nova-lite-v1:0",
        ),
        (
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2F"
            "us.anthropic.claude-3-5-haiku-20241022-v1%3A0/converse",
            "converse",
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-haiku-20241022-v1:0",
        ),
        (
            "/model/arn:aws:bedrock:eu-west-1::foundation-model/mistral.mistral-large-2402-v1:0/invoke",
            "invoke",
            "arn:aws:bedrock:eu-west-1::foundation-model/mistral.mistral-large-2402-v1:0",
        ),
        (f"/model/{HAIKU_PROFILE}/converse?x=1", "converse", HAIKU_PROFILE),
        (f"/model/{HAIKU_PROFILE}/count-tokens", None, None),
        ("/async-invoke", None, None),
        ("/guardrail/gr1/version/1/apply", None, None),
        (f"/model/{HAIKU_PROFILE}/invoke-with-bidirectional-stream", None, None),
        ("/model//converse", None, None),
        ("/v1/chat/completions", None, None),
    ],
)
def test_flavor_and_model_from_path(path: str, flavor: str | None, model: str | None) -> None:
    assert flavor_for_path(path) == flavor
    assert request_model(path, None) == model


@pytest.mark.parametrize(
    ("model_id", "expected", "priced_as"),
    [
        (HAIKU_PROFILE, HAIKU_PROFILE, "regional.anthropic.claude-3-5-haiku-20241022-v1:0"),
        (SONNET_GLOBAL, SONNET_GLOBAL, "global.anthropic.claude-sonnet-4-5-20250929-v1:0"),
        (
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "regional.anthropic.claude-sonnet-4-5-20250929-v1:0",
        ),
        (
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-haiku-20241022-v1:0",
            HAIKU_PROFILE,
            "regional.anthropic.claude-3-5-haiku-20241022-v1:0",
        ),
        (
            "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-haiku-4-5-20251001-v1:0",
            "anthropic.claude-haiku-4-5-20251001-v1:0",
            "regional.anthropic.claude-haiku-4-5-20251001-v1:0",
        ),
        ("amazon.nova-pro-v1%3A0", "amazon.nova-pro-v1:0", "amazon.nova-pro-v1:0"),
        ("us.amazon.nova-lite-v1:0:300k", "us.amazon.nova-lite-v1:0", "amazon.nova-lite-v1:0"),
        (
            "us.meta.llama3-3-70b-instruct-v1:0",
            "us.meta.llama3-3-70b-instruct-v1:0",
            "meta.llama3-3-70b-instruct-v1:0",
        ),
        ("openai.gpt-oss-120b-1:0", "openai.gpt-oss-120b-1:0", "openai.gpt-oss-120b-1:0"),
        (
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4e5f6",
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4e5f6",
            None,
        ),
        (
            "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/x9y8z7",
            "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/x9y8z7",
            None,
        ),
    ],
)
def test_pricing_model(model_id: str, expected: str, priced_as: str | None) -> None:
    assert pricing_model(model_id) == expected
    price = pricing.price("aws", pricing_model(model_id), Usage(input_tokens=1000, output_tokens=100), WHEN)
    assert price.model == priced_as
    assert price.status == ("priced" if priced_as else "unknown_model")


def test_global_profile_is_cheaper_than_regional() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    regional = pricing.price("aws", "us.anthropic.claude-sonnet-4-5-20250929-v1:0", usage, WHEN).cost_usd
    global_ = pricing.price("aws", SONNET_GLOBAL, usage, WHEN).cost_usd
    assert (global_, regional) == (Decimal(18), Decimal("19.8"))


@pytest.mark.parametrize(
    ("authorization", "credential"),
    [
        (
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20261102/us-east-1/bedrock/aws4_request, "
            "SignedHeaders=content-type;host;x-amz-date, "
            "Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc",
            "AKIAIOSFODNN7EXAMPLE",
        ),
        ("Bearer ABSKQmVkcm9ja0FQSUtleS1leGFtcGxl", "ABSKQmVkcm9ja0FQSUtleS1leGFtcGxl"),
        ("Basic dXNlcjpwYXNz", None),
        ("", None),
    ],
)
def test_credential_of(authorization: str, credential: str | None) -> None:
    assert credential_of(authorization) == credential


# --- complete bodies ---------------------------------------------------------------------------


def test_converse_body_input_excludes_cache() -> None:
    # inputTokens 26 EXCLUDES the 1800 cache reads: all input = 1826 (totalTokens 1918 = 1826 + 92)
    assert parse_response("converse", (FIXTURES / "bedrock_converse.json").read_bytes(), {}) == Metered(
        Usage(input_tokens=1826, cache_read_tokens=1800, output_tokens=92), None, None
    )


INVOKE_HEADERS = {
    "Content-Type": "application/json",
    "X-Amzn-Bedrock-Invocation-Latency": "812",
    "X-Amzn-Bedrock-Input-Token-Count": "12",
    "X-Amzn-Bedrock-Output-Token-Count": "48",
    "X-Amzn-Bedrock-Cache-Read-Input-Token-Count": "0",
    "X-Amzn-Bedrock-Cache-Write-Input-Token-Count": "1500",
}
INVOKE_RESULT = Metered(Usage(input_tokens=1512, cache_write_tokens=1500, output_tokens=48), None, None)


def test_invoke_counts_from_headers() -> None:
    body = (FIXTURES / "bedrock_invoke_anthropic.json").read_bytes()
    assert parse_response("invoke", body, INVOKE_HEADERS) == INVOKE_RESULT
    lower = {k.lower(): v for k, v in INVOKE_HEADERS.items()}
    assert parse_response("invoke", body, lower) == INVOKE_RESULT
    # the headers win over the body (an embedding body has no usage at all)
    assert parse_response("invoke", b'{"embedding":[0.1,0.2]}', INVOKE_HEADERS) == INVOKE_RESULT


def test_invoke_without_headers_reads_the_native_body() -> None:
    body = (FIXTURES / "bedrock_invoke_anthropic.json").read_bytes()
    assert parse_response("invoke", body, {"content-type": "application/json"}) == INVOKE_RESULT


@pytest.mark.parametrize(
    ("native", "usage"),
    [
        (
            {
                "generation": "Hi.",
                "prompt_token_count": 17,
                "generation_token_count": 4,
                "stop_reason": "stop",
            },
            Usage(input_tokens=17, output_tokens=4),
        ),
        (
            {
                "output": {"message": {"content": [{"text": "Hi."}], "role": "assistant"}},
                "stopReason": "end_turn",
                "usage": {
                    "inputTokens": 5,
                    "outputTokens": 3,
                    "totalTokens": 8,
                    "cacheReadInputTokenCount": 2,
                },
            },
            Usage(input_tokens=7, cache_read_tokens=2, output_tokens=3),
        ),
        (
            {
                "inputTextTokenCount": 6,
                "results": [{"tokenCount": 11, "outputText": "Hi.", "completionReason": "FINISH"}],
            },
            Usage(input_tokens=6, output_tokens=11),
        ),
        (
            {
                "choices": [{"message": {"content": "Hi."}}],
                "usage": {"prompt_tokens": 30, "completion_tokens": 9},
            },
            Usage(input_tokens=30, output_tokens=9),
        ),
    ],
)
def test_invoke_native_bodies(native: dict[str, Any], usage: Usage) -> None:
    assert parse_response("invoke", json.dumps(native).encode(), {}) == Metered(usage, None, None)


def test_invoke_native_body_without_usage_gives_its_text() -> None:
    result = parse_response("invoke", b'{"outputs":[{"text":"Bonjour.","stop_reason":"stop"}]}', {})
    assert result == Metered(None, None, "no usage in response", output_text="Bonjour.")


@pytest.mark.parametrize("flavor", ["converse", "invoke", "converse_stream", "invoke_stream"])
def test_error_bodies(flavor: str) -> None:
    headers = {"x-amzn-ErrorType": "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/"}
    body = b'{"message":"The provided model identifier is invalid."}'
    assert parse_response(flavor, body, headers) == Metered(
        None, None, "ValidationException: The provided model identifier is invalid."
    )
    assert (
        parse_response(flavor, b"", {"X-Amzn-ErrorType": "ThrottlingException"}).error
        == "ThrottlingException"
    )


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", "empty response body"),
        (b"<html/>", "response body is not JSON"),
        (b"[1]", "response body is not a JSON object"),
        (b'{"stopReason":"end_turn"}', "no usage in response"),
    ],
)
def test_bodies_without_usage_never_raise(raw: bytes, error: str) -> None:
    assert parse_response("converse", raw, {}) == Metered(None, None, error)


# --- streams -----------------------------------------------------------------------------------


def test_converse_stream_split_at_every_byte() -> None:
    assert run("converse_stream", [CONVERSE_STREAM]) == CONVERSE_STREAM_RESULT
    for i in range(len(CONVERSE_STREAM) + 1):
        assert run("converse_stream", [CONVERSE_STREAM[:i], CONVERSE_STREAM[i:]]) == CONVERSE_STREAM_RESULT, i
    pieces = (CONVERSE_STREAM[i : i + 1] for i in range(len(CONVERSE_STREAM)))
    assert run("converse_stream", pieces) == CONVERSE_STREAM_RESULT


def test_invoke_stream_split_at_every_third_byte() -> None:
    assert run("invoke_stream", [INVOKE_STREAM]) == INVOKE_STREAM_RESULT
    for i in range(0, len(INVOKE_STREAM) + 1, 3):
        assert run("invoke_stream", [INVOKE_STREAM[:i], INVOKE_STREAM[i:]]) == INVOKE_STREAM_RESULT, i
    pieces = (INVOKE_STREAM[i : i + 3] for i in range(0, len(INVOKE_STREAM), 3))
    assert run("invoke_stream", pieces) == INVOKE_STREAM_RESULT


def test_stream_bodies_read_whole() -> None:
    assert parse_response("converse_stream", CONVERSE_STREAM, {}) == CONVERSE_STREAM_RESULT
    assert parse_response("invoke_stream", INVOKE_STREAM, {}) == INVOKE_STREAM_RESULT


def test_corrupt_stream_body() -> None:
    corrupt = CONVERSE_STREAM[:-1] + bytes([CONVERSE_STREAM[-1] ^ 1])
    assert parse_response("converse_stream", corrupt, {}) == Metered(
        None,
        None,
        "event stream: message CRC mismatch in message 7",
        output_text='Sure, the "usage" is below.',
    )


def test_invoke_stream_without_metrics_uses_the_native_anthropic_counts() -> None:
    events = [dict(e) for e in ANTHROPIC_EVENTS]
    del events[-1]["amazon-bedrock-invocationMetrics"]
    result = run("invoke_stream", [b"".join(chunk(e) for e in events)])
    assert result == INVOKE_STREAM_RESULT  # 21 + 1024 cached, output 9 from the last message_delta


def test_invoke_stream_of_nova_reads_its_native_metadata_without_metrics() -> None:
    events: list[dict[str, Any]] = [
        {"messageStart": {"role": "assistant"}},
        {"contentBlockDelta": {"delta": {"text": "Bonjour"}, "contentBlockIndex": 0}},
        {"contentBlockStop": {"contentBlockIndex": 0}},
        {"messageStop": {"stopReason": "end_turn"}},
        {"metadata": {"usage": {"inputTokens": 8, "outputTokens": 3, "cacheReadInputTokenCount": 5}}},
    ]
    data = b"".join(chunk(e) for e in events)
    assert run("invoke_stream", [data]) == Metered(
        Usage(input_tokens=13, cache_read_tokens=5, output_tokens=3), None, None
    )
    metrics = {"inputTokenCount": 8, "outputTokenCount": 4, "cacheReadInputTokenCount": 5}
    events[-1]["amazon-bedrock-invocationMetrics"] = metrics  # Bedrock's own metrics win
    assert run("invoke_stream", [b"".join(chunk(e) for e in events)]).usage == Usage(
        input_tokens=13, cache_read_tokens=5, output_tokens=4
    )
    assert run("invoke_stream", [b"".join(chunk(e) for e in events[:2])]).output_text == "Bonjour"


def test_stream_cut_before_usage_gives_the_text() -> None:
    cut = CONVERSE_STREAM.index(b"contentBlockStop")
    assert run("converse_stream", [CONVERSE_STREAM[:cut]]) == Metered(
        None, None, "no usage in stream", output_text='Sure, the "usage" is below.'
    )
    cut = INVOKE_STREAM.index(chunk(ANTHROPIC_EVENTS[4]))
    events = [dict(e) for e in ANTHROPIC_EVENTS[1:4]]  # no message_start: no counts at all
    assert run("invoke_stream", [b"".join(chunk(e) for e in events)]) == Metered(
        None, None, "no usage in stream", output_text="Hello from Bedrock."
    )
    # with message_start seen, the input is known even if cut; its output 1 is a placeholder, the
    # output left to an estimate from the text seen
    cut_short = run("invoke_stream", [INVOKE_STREAM[:cut]])
    assert cut_short.usage == Usage(input_tokens=1045, cache_read_tokens=1024, output_tokens=1)
    assert (cut_short.output_partial, cut_short.output_text) == (True, "Hello from Bedrock.")


def test_an_anthropic_invoke_stream_is_final_from_its_message_delta_on() -> None:
    """Past the message_delta (its output count is the call's) or with the metrics, not partial."""
    past_delta = INVOKE_STREAM.index(chunk(ANTHROPIC_EVENTS[6]))
    for data in (INVOKE_STREAM[:past_delta], INVOKE_STREAM):
        result = run("invoke_stream", [data])
        assert result.usage is not None and result.usage.output_tokens == 9
        assert (result.output_partial, result.output_text) == (False, None)
    assert run("converse_stream", [CONVERSE_STREAM]).output_partial is False


def test_an_intermediate_message_delta_is_not_the_final_count() -> None:
    """Review: the mid-turn message_delta (``stop_reason`` null, running output 38) was taken as
    final (``_final |= taken``): a stream cut after it stayed 'reported' at 38."""
    from tests.test_anthropic_parser import anthropic_cut_in_second_block, events_of

    events = events_of(anthropic_cut_in_second_block(5))
    result = run("invoke_stream", [b"".join(chunk(json.loads(e.data)) for e in events)])
    assert result.usage is not None and result.usage.output_tokens == 38
    assert result.output_partial is True and result.output_text is not None


def test_a_bare_message_stop_ends_an_anthropic_invoke_stream() -> None:
    """message_stop (without Bedrock's metrics) ends the turn: the last message_delta's count stands."""
    events = [dict(e) for e in ANTHROPIC_EVENTS]
    events[5]["delta"] = {"stop_reason": None, "stop_sequence": None}
    events[6] = {"type": "message_stop"}
    result = run("invoke_stream", [b"".join(chunk(e) for e in events[:6])])
    assert (result.output_partial, result.usage.output_tokens) == (True, 9)  # type: ignore[union-attr]
    result = run("invoke_stream", [b"".join(chunk(e) for e in events)])
    assert (result.output_partial, result.usage.output_tokens) == (False, 9)  # type: ignore[union-attr]


def test_exception_event_mid_stream() -> None:
    data = b"".join(
        [
            event("messageStart", {"role": "assistant"}),
            event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Par"}}),
            exception("throttlingException", "Too many tokens, please wait before trying again."),
        ]
    )
    assert run("converse_stream", [data]) == Metered(
        None,
        None,
        "throttlingException: Too many tokens, please wait before trying again.",
        output_text="Par",
    )
    error_frame = frame(
        {":message-type": "error", ":error-code": "InternalFailure", ":error-message": "Boom"}, b""
    )
    assert run("invoke_stream", [INVOKE_STREAM + error_frame]) == Metered(
        INVOKE_STREAM_RESULT.usage, None, "InternalFailure: Boom"
    )


def test_converse_stream_tool_use_and_reasoning_text() -> None:
    data = b"".join(
        [
            event(
                "contentBlockDelta",
                {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "Plan."}}},
            ),
            event(
                "contentBlockDelta",
                {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"city": "Paris"}'}}},
            ),
        ]
    )
    assert run("converse_stream", [data]).output_text == 'Plan.{"city": "Paris"}'


def test_json_is_decoded_only_for_usage_events(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []

    class CountingJson:
        @staticmethod
        def loads(data: bytes) -> Any:
            calls.append(data)
            return json.loads(data)

    monkeypatch.setattr(values, "json", CountingJson)  # every parser decodes through values.loads
    assert run("converse_stream", [CONVERSE_STREAM]) == CONVERSE_STREAM_RESULT
    assert [json.loads(c).get("usage", {}).get("inputTokens") for c in calls] == [4]  # the metadata event
    calls.clear()
    assert run("invoke_stream", [INVOKE_STREAM]) == INVOKE_STREAM_RESULT
    assert [json.loads(c)["type"] for c in calls] == ["message_start", "message_delta", "message_stop"]


def test_done() -> None:
    parser = StreamParser("converse_stream")
    decoder = EventStreamDecoder()
    messages = decoder.feed(CONVERSE_STREAM)
    for message in messages[:-1]:
        parser.feed(message)
    assert parser.done is False
    parser.feed(messages[-1])
    assert parser.done is True


# --- prices -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "result", "cost"),
    [
        # haiku 3.5 regional: 26 x $0.80 + 1800 x $0.08 + 92 x $4 per M
        (
            f"/model/{HAIKU_PROFILE.replace(':', '%3A')}/converse",
            parse_response("converse", (FIXTURES / "bedrock_converse.json").read_bytes(), {}),
            "0.0005328",
        ),
        # sonnet 4.5 global: 4 x $3 + 2400 x $0.30 + 310 x $3.75 + 57 x $15 per M
        (f"/model/{SONNET_GLOBAL}/converse-stream", CONVERSE_STREAM_RESULT, "0.0027495"),
        # haiku 3.5 via an ARN: 12 x $0.80 + 1500 x $1 + 48 x $4 per M
        (
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2F"
            "us.anthropic.claude-3-5-haiku-20241022-v1%3A0/invoke",
            INVOKE_RESULT,
            "0.0017016",
        ),
    ],
)
def test_fixtures_price_under_aws(path: str, result: Metered, cost: str) -> None:
    model = request_model(path, None)
    assert model is not None
    price = pricing.price("aws", pricing_model(model), result.usage, WHEN)
    assert price.status == "priced"
    assert str(price.cost_usd) == cost


def test_one_hour_cache_writes_are_read_from_cache_details_and_priced_at_the_1h_rate() -> None:
    """API_runtime_TokenUsage: cacheDetails splits the cache writes by TTL (5m | 1h). Sonnet 4.5 global:
    100 x $3 + 90,000 x $6 (1h) + 10,000 x $3.75 (5m) + 50 x $15 per M = $0.57855; all as 5m: $0.37605."""
    usage = {
        "inputTokens": 100, "outputTokens": 50, "totalTokens": 100_150,
        "cacheReadInputTokens": 0, "cacheWriteInputTokens": 100_000,
        "cacheDetails": [{"ttl": "1h", "inputTokens": 90_000}, {"ttl": "5m", "inputTokens": 10_000}],
    }  # fmt: skip
    body = {"output": {"message": {"role": "assistant", "content": [{"text": "."}]}}, "usage": usage}
    stream = event("metadata", {"metrics": {"latencyMs": 900}, "usage": usage})
    expected = Usage(
        input_tokens=100_100, cache_write_tokens=100_000, cache_write_1h_tokens=90_000, output_tokens=50
    )
    for result in (
        parse_response("converse", json.dumps(body).encode(), {}),
        run("converse_stream", [stream[i : i + 9] for i in range(0, len(stream), 9)]),
    ):
        assert result.usage == expected
        cost = pricing.price("aws", pricing_model(SONNET_GLOBAL), result.usage, WHEN).cost_usd
        assert cost == Decimal("0.57855")
    counts = GPUsage(
        input_tokens=100_100, cache_write_tokens=100_000, cache_write_1h_tokens=90_000, output_tokens=50
    )
    own = calc_price(counts, pricing_model(SONNET_GLOBAL), provider_id="aws", genai_request_timestamp=WHEN)
    assert own.total_price == Decimal("0.57855")


@pytest.mark.parametrize(
    ("details", "written", "one_hour"),
    [
        ([{"ttl": "1h", "inputTokens": 500}], 500, 500),  # no cacheWriteInputTokens: the details say
        ([{"ttl": "1h", "inputTokens": -5}, {"ttl": "1h"}, "x", {"ttl": 1, "inputTokens": 7}], 7, 0),
        ("1h", 0, 0),
    ],
)
def test_cache_details_alone_or_malformed(details: Any, written: int, one_hour: int) -> None:
    result = converse_usage({"inputTokens": 1, "outputTokens": 1, "cacheDetails": details})
    assert result == Usage(
        input_tokens=1 + written, cache_write_tokens=written, cache_write_1h_tokens=one_hour, output_tokens=1
    )


def test_service_tier_is_read_from_converse_streams_and_invoke_headers() -> None:
    """Converse's serviceTier.type, ConverseStream's metadata serviceTier, InvokeModel's
    X-Amzn-Bedrock-Service-Tier header (Bedrock API reference, API_runtime_ServiceTier).
    genai-prices has no Bedrock tier prices: the standard price is kept and the source says so."""
    usage = {"inputTokens": 1000, "outputTokens": 100, "totalTokens": 1100}
    body = {"output": {"message": {"role": "assistant", "content": [{"text": "..."}]}}, "usage": usage}
    assert parse_response("converse", json.dumps(body).encode(), {}).service_tier is None
    flex = parse_response("converse", json.dumps({**body, "serviceTier": {"type": "flex"}}).encode(), {})
    assert flex.service_tier == "flex"
    invoke = {"content": [{"type": "text", "text": "hi"}], "usage": {"input_tokens": 10, "output_tokens": 2}}
    headers = {"X-Amzn-Bedrock-Service-Tier": "Priority"}
    assert parse_response("invoke", json.dumps(invoke).encode(), headers).service_tier == "priority"
    metadata = {"usage": usage, "metrics": {"latencyMs": 1}, "serviceTier": {"type": "priority"}}
    assert run("converse_stream", [event("metadata", metadata)]).service_tier == "priority"
    when = datetime(2026, 11, 2, 12, tzinfo=UTC)
    model = "us.anthropic.claude-haiku-4-5-20251001-v1:0"
    standard = pricing.price("aws", model, flex.usage, when)
    flexed = pricing.price("aws", model, flex.usage, when, service_tier="flex")
    assert (
        flexed.cost_usd == standard.cost_usd
        and flexed.source == "genai-prices 0.2.3 (flex tier: standard rate)"
    )
