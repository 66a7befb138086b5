"""StreamTap's plain lane (an independent review's tests): the same bytes split differently give
the client the same bytes and the meter the same result."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from addon.providers import DEFAULT_REGISTRY, openai_api
from addon.sse import SSEDecoder
from addon.stream_tap import StreamTap
from tests.test_fuzz_parsers import JSON_VALUES, SSE_NOISE, dumps, fixture, mutated


def run(provider: str, flavor: str, chunks: Iterable[bytes], drop: bool = False) -> tuple[bytes, Any]:
    tap = StreamTap(DEFAULT_REGISTRY.by_name(provider), flavor, None, drop_usage_chunk=drop)  # type: ignore[arg-type]
    out = b""
    for piece in [*chunks, b""]:
        got = tap(piece)
        out += got if isinstance(got, bytes) else b"".join(got)
    return out, tap.result()


def bytewise(stream: bytes) -> list[bytes]:
    return [stream[i : i + 1] for i in range(len(stream))]


def anth(name: str | None, body: dict) -> bytes:
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {json.dumps(body)}\n\n".encode()


START = anth("message_start", {"type": "message_start", "message": {"model": "claude-haiku-4-5"}})
DELTA = anth(
    "content_block_delta",
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
)


@pytest.mark.parametrize(
    "error_event",
    [
        # an error event whose JSON names no "error" (a gateway's {"message": ...}): named by its event line
        b'event: error\ndata: {"message": "upstream overloaded"}\n\n',
        # Envoy's plain-text reset, sent as an SSE error event: counted as an event not JSON
        b"event: error\ndata: upstream connect error or disconnect/reset before headers\n\n",
    ],
    ids=["json_without_error_key", "not_json"],
)
def test_anthropic_error_event_is_not_taken_by_the_plain_lane(error_event: bytes) -> None:
    """``event: error`` is decoded by feed() whatever its data says; take_plain only looks for
    ``"error"`` (quoted) in the block, so a whole-event chunk holding it skips the parser."""
    chunks = [START, DELTA, error_event]
    stream = b"".join(chunks)
    lane_bytes, lane = run("anthropic", "messages", chunks)
    split_bytes, split = run("anthropic", "messages", bytewise(stream))
    assert lane_bytes == split_bytes == stream
    assert split.error is not None and split.error != "no usage in stream"
    assert lane.error == split.error


def test_estimate_text_near_the_raw_cap_does_not_depend_on_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long stream without usage (e.g. aborted before its usage chunk): the raw text cap counts a
    plain block's framing bytes and rejects the whole block, and a later smaller block is still
    kept, so the estimate's text differs from event by event (and has a hole while flagged a prefix)."""
    monkeypatch.setattr(openai_api, "RAW_TEXT_CAP", 2_500)

    def chunk(text: str) -> bytes:
        body = {"id": "c", "object": "chat.completion.chunk", "model": "deepseek-reasoner", "usage": None}
        body["choices"] = [{"index": 0, "delta": {"content": text}, "finish_reason": None}]
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    first = chunk("")
    events = [chunk(f" w{i}") for i in range(30)]
    # How a server flushes: a few events together while the client is slow, then one at a time.
    chunks = [first, b"".join(events[:5]), b"".join(events[5:20]), *events[20:]]
    stream = first + b"".join(events)
    _, lane = run("openai", "chat", chunks)
    _, split = run("openai", "chat", bytewise(stream))
    assert split.usage is None and split.output_text
    assert lane.output_text == split.output_text


# ---------------------------------------------------------------- differential fuzz (lane vs no lane)


DIFF_CASES = [
    ("openai", "chat", "openai_chat_stream.sse"),
    ("openai", "chat", "openai_chat_reasoning_stream.sse"),
    ("groq", "chat", "groq_stream.sse"),
    ("openrouter", "chat", "openrouter_stream.sse"),
    ("deepseek", "chat", "deepseek_reasoner_stream.sse"),
    ("perplexity", "chat", "perplexity_stream.sse"),
    ("mistral", "chat", "mistral_stream.sse"),
    ("together", "chat", "together_stream.sse"),
    ("x-ai", "chat", "xai_stream.sse"),
    ("cerebras", "chat", "cerebras_stream.sse"),
    ("fireworks", "chat", "fireworks_stream.sse"),
    ("azure", "chat", "azure_chat_stream.sse"),
    ("anthropic", "chat", "openai_chat_stream.sse"),  # OpenAI shape on Anthropic's host
    ("google", "chat", "openai_chat_stream.sse"),  # OpenAI shape on Gemini's host
    ("anthropic", "messages", "anthropic_stream.sse"),
    ("openai", "responses", "openai_responses_stream.sse"),
]
_NAMED_EXTRAS = st.sampled_from(
    [
        b": OPENROUTER PROCESSING\n\n",
        b": keep-alive\n\n",
        b'event: ping\ndata: {"type": "ping"}\n\n',
        b'data: {"error": {"message": "boom", "type": "server_error"}}\n\n',
        b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", '
        b'"message": "Overloaded"}}\n\n',
        b"data: not json\n\n",
        b"id: 7\nretry: 10\n\n",
        b"\n",
    ]
)
EXTRA_EVENTS = st.one_of(
    _NAMED_EXTRAS,
    _NAMED_EXTRAS,
    _NAMED_EXTRAS,
    st.builds(lambda v: b"data: " + dumps(v) + b"\n\n", JSON_VALUES),
    SSE_NOISE.map(lambda b: b + b"\n\n"),
)


def _tap(provider: str, flavor: str, drop: bool, lane: bool) -> tuple[StreamTap, list[int]]:
    tap = StreamTap(DEFAULT_REGISTRY.by_name(provider), flavor, None, drop_usage_chunk=drop)  # type: ignore[arg-type]
    if not lane:
        tap._plain = None
    calls: list[int] = []
    tap.on_final_event = lambda: calls.append(1)
    return tap, calls


def _drive(tap: StreamTap, calls: list[int], chunks: list[bytes]) -> tuple[list[bytes], list[int]]:
    sent: list[bytes] = []
    final_at: list[int] = []
    for i, chunk in enumerate([*chunks, b""]):
        got = tap(chunk)
        pieces = [got] if isinstance(got, bytes) else list(got)
        if chunk:
            assert all(p != b"" for p in pieces), "b'' mid-stream"
        sent.extend(pieces)
        if calls and not final_at:
            final_at.append(i)
    return sent, final_at


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_plain_lane_matches_the_event_path(data: st.DataObject) -> None:
    only = __import__("os").environ.get("LANE_CASE")
    cases = [c for c in DIFF_CASES if only is None or c[1] == only]
    provider, flavor, name = data.draw(st.sampled_from(cases), label="case")
    decoder = SSEDecoder()
    events = [e.raw for e in decoder.feed(fixture(name)) + decoder.close()]
    if data.draw(st.booleans(), label="strip event: lines"):
        events = [
            b"".join(x for x in e.splitlines(keepends=True) if not x.startswith(b"event:")) for e in events
        ]
    ops = data.draw(
        st.lists(
            st.tuples(st.integers(0, 1000), st.sampled_from(["drop", "insert", "mutate"]), EXTRA_EVENTS),
            max_size=6,
        ),
        label="ops",
    )
    for pos, op, extra in ops:
        i = pos % (len(events) + 1)
        if op == "insert":
            events.insert(i, extra)
        elif events and i < len(events):
            if op == "drop":
                del events[i]
            else:
                events[i] = data.draw(mutated(events[i]))
    stream = b"".join(events)
    # chunks: runs of whole events, sometimes a cut inside one
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(events)), max_size=len(events)), label="groups")))
    bounds = [0, *cuts, len(events)]
    chunks = [b"".join(events[a:b]) for a, b in itertools.pairwise(bounds) if b > a]
    chunks = [c for c in chunks if c]
    drop = flavor == "chat" and data.draw(st.booleans(), label="drop")
    lane_tap, lane_calls = _tap(provider, flavor, drop, lane=True)
    ref_tap, ref_calls = _tap(provider, flavor, drop, lane=False)
    lane_sent, lane_final = _drive(lane_tap, lane_calls, chunks)
    ref_sent, ref_final = _drive(ref_tap, ref_calls, chunks)
    # bytes: drop mode forwards events; compare the concatenation and no b'' pieces
    assert b"".join(lane_sent) == b"".join(ref_sent)
    if not drop:
        assert b"".join(lane_sent) == stream
    assert lane_final == ref_final and len(lane_calls) == len(ref_calls)
    assert lane_tap.final_event_seen == ref_tap.final_event_seen
    a, b = lane_tap.result(), ref_tap.result()
    assert (a.usage, a.model, a.error, a.provider_cost, a.output_text, a.service_tier, a.output_partial) == (
        b.usage,
        b.model,
        b.error,
        b.provider_cost,
        b.output_text,
        b.service_tier,
        b.output_partial,
    )


# ---------------------------------------------------------------- targeted defects, continued


def test_openai_usage_split_across_data_lines_is_not_taken_by_the_plain_lane() -> None:
    """An event's data lines are joined with "\\n" before has_usage() looks: a usage key whose colon
    is on the next data line is found event by event but not in the raw block. Drop mode then also
    forwards the injected usage-only chunk the event path removes."""
    first = b'data: {"id":"c","model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    usage_only = (
        b'data: {"id":"c","model":"gpt-4o-mini","choices":[],"usage"\n'
        b'data: :{"prompt_tokens":3,"completion_tokens":4}}\n\n'
    )
    done = b"data: [DONE]\n\n"
    chunks = [first, usage_only, done]
    stream = b"".join(chunks)
    for drop in (False, True):
        lane_bytes, lane = run("openai", "chat", chunks, drop=drop)
        split_bytes, split = run("openai", "chat", bytewise(stream), drop=drop)
        assert split.usage is not None and split.usage.output_tokens == 4
        assert lane.usage == split.usage
        assert lane_bytes == split_bytes == (first + done if drop else stream)


def test_anthropic_estimate_text_is_the_same_either_way() -> None:
    """No message events (a gateway lost them, or the stream was cut): the plain lane extracts a delta
    from every event of the block, the event path only from ``content_block_delta`` ones (by name, or
    nameless with the type in the first 64 bytes), so the estimate's text depends on chunking."""
    delta = (
        b'data: {"index": 0, "delta": {"type": "text_delta", "text": "keys in another order"},'
        b' "type": "content_block_delta"}\n\n'  # a gateway that dropped event: and reordered keys
    )
    named = (
        b'event: message\ndata: {"type": "content_block_delta", "index": 0,'
        b' "delta": {"type": "text_delta", "text": " and a default event name"}}\n\n'
    )
    chunks = [b'event: ping\ndata: {"type": "ping"}\n\n', delta, named]
    stream = b"".join(chunks)
    _, lane = run("anthropic", "messages", chunks)
    _, split = run("anthropic", "messages", bytewise(stream))
    assert lane.usage is None and split.usage is None
    assert lane.output_text == split.output_text


def test_openrouter_junk_usage_event_then_a_grouped_finish_is_the_same_either_way() -> None:
    """Hypothesis's example: a ``data: {"usage":false}`` event first, the OpenRouter stream without
    ``[DONE]``, chunks [junk, role], [text, text, finish], [comment, usage]. The plain lane took
    the middle block (no usage in it) and so never saw its ``finish_reason``; the junk counted as a
    first chunk with usage, so the trailing usage chunk looked like a running count whose choice
    had not finished: partial, output_text set. Event by event it was final."""
    decoder = SSEDecoder()
    events = [e.raw for e in decoder.feed(fixture("openrouter_stream.sse")) + decoder.close()]
    events = [e for e in events if not e.startswith((b":", b"data: [DONE]"))]  # role, 2 texts, finish, usage
    junk = b'data: {"usage":false}\n\n'
    comment = b": OPENROUTER PROCESSING\n\n"
    chunks = [junk + events[0], b"".join(events[1:4]), comment + events[4]]
    for lane in (True, False):
        tap, calls = _tap("openrouter", "chat", False, lane=lane)
        _drive(tap, calls, chunks)
        got = tap.result()
        assert got.usage is not None and (got.usage.input_tokens, got.usage.output_tokens) == (31, 9)
        assert (got.output_partial, got.output_text, got.error) == (False, None, None), lane


def test_a_finishing_chunk_in_a_plain_block_still_ends_a_running_count() -> None:
    """Without any junk: a running count (usage on a content chunk), then text and the finishing
    chunk (no usage) in one block, then a trailing usage chunk whose choice has ``finish_reason``
    null. Event by event the finish is seen and the last count is the call's; the plain lane took
    the block whole and called it partial (its output then re-estimated)."""

    def chunk(content: str, finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
        choice = {"index": 0, "delta": {"content": content}, "finish_reason": finish}
        body = {"id": "c", "model": "m-1", "choices": [choice], "usage": usage}
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    chunks = [
        chunk("Hi", usage={"prompt_tokens": 10, "completion_tokens": 1}),
        chunk(" there") + chunk("", "stop"),
        chunk("", usage={"prompt_tokens": 10, "completion_tokens": 3}),
    ]
    for lane in (True, False):
        tap, calls = _tap("openai", "chat", False, lane=lane)
        _drive(tap, calls, chunks)
        got = tap.result()
        assert got.usage is not None and (got.usage.input_tokens, got.usage.output_tokens) == (10, 3)
        assert (got.output_partial, got.output_text) == (False, None), lane
