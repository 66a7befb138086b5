"""StreamTap's plain lane: chunks of whole events that carry only text go by without framing,
with the same bytes for the client and the same usage, model and text as event by event."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pytest

from addon.providers import DEFAULT_REGISTRY
from addon.sse import SSEDecoder
from addon.stream_tap import StreamTap


def openai_events(n: int, usage: bool) -> list[bytes]:
    def chunk(delta: dict, choices: bool = True, **more: object) -> bytes:
        body = {"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o-mini-2024-07-18"}
        body |= {"choices": [{"index": 0, "delta": delta, "finish_reason": None}] if choices else []}
        return b"data: " + json.dumps(body | {"usage": None} | more).encode() + b"\n\n"

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": f" w{i}"}) for i in range(n)]
    if usage:
        events.append(chunk({}, choices=False, usage={"prompt_tokens": 12, "completion_tokens": n}))
    return [*events, b"data: [DONE]\n\n"]


def anthropic_events(n: int) -> list[bytes]:
    def ev(name: str, body: dict) -> bytes:
        return f"event: {name}\ndata: {json.dumps(body | {'type': name})}\n\n".encode()

    start = {"message": {"model": "claude-haiku-4-5", "usage": {"input_tokens": 30, "output_tokens": 1}}}
    return [
        ev("message_start", start),
        ev("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ev("ping", {}),
        *(
            ev("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": f" w{i}"}})
            for i in range(n)
        ),
        ev("content_block_stop", {"index": 0}),
        ev("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": n}}),
        ev("message_stop", {}),
    ]


class CountingFramer:
    """The tap's SSE framer, counting the chunks it is fed."""

    def __init__(self, inner: SSEDecoder) -> None:
        self.inner = inner
        self.fed = 0

    @property
    def idle(self) -> bool:
        return self.inner.idle

    def feed(self, data: bytes) -> list:
        self.fed += 1
        return self.inner.feed(data)

    def close(self) -> list:
        return self.inner.close()


def run(provider: str, flavor: str, chunks: Iterable[bytes], drop: bool) -> tuple[bytes, Any, int]:
    """The client's bytes, the result, and how many chunks went through the framer."""
    tap = StreamTap(DEFAULT_REGISTRY.by_name(provider), flavor, None, drop_usage_chunk=drop)  # type: ignore[arg-type]
    framer = CountingFramer(tap._framer)  # type: ignore[arg-type]
    tap._framer = framer
    out = b""
    for piece in [*chunks, b""]:
        got = tap(piece)
        out += got if isinstance(got, bytes) else b"".join(got)
    return out, tap.result(), framer.fed


@pytest.mark.parametrize("drop", [False, True], ids=["as_asked", "usage_injected"])
def test_openai_whole_event_chunks_take_the_plain_lane_with_the_same_result(drop: bool) -> None:
    events = openai_events(50, usage=True)
    stream = b"".join(events)
    lane, lane_result, framed = run("openai", "chat", events, drop)
    bytewise, byte_result, _ = run("openai", "chat", (stream[i : i + 1] for i in range(len(stream))), drop)
    assert lane == bytewise == (stream if not drop else b"".join(events[:-2] + events[-1:]))
    assert lane_result == byte_result and lane_result.usage.output_tokens == 50
    assert lane_result.model == "gpt-4o-mini-2024-07-18"
    assert framed <= 4  # the first chunk (the model), the usage chunk, [DONE]: not the 50 others


def test_openai_text_kept_raw_in_the_plain_lane_is_the_estimate_s_text() -> None:
    """No usage chunk: the text for the offline estimate is the same either way."""
    events = openai_events(20, usage=False)
    _, lane, _ = run("openai", "chat", events, drop=False)
    stream = b"".join(events)
    _, bytewise, _ = run("openai", "chat", [stream[:7], stream[7:]], drop=False)
    assert lane.usage is None and lane.output_text == bytewise.output_text == "".join(
        f" w{i}" for i in range(20)
    )


def test_anthropic_whole_event_chunks_take_the_plain_lane_with_the_same_result() -> None:
    events = anthropic_events(40)
    stream = b"".join(events)
    lane, lane_result, framed = run("anthropic", "messages", events, drop=False)
    split, split_result, _ = run("anthropic", "messages", [stream[:100], stream[100:]], drop=False)
    assert lane == split == stream
    assert lane_result == split_result and lane_result.usage.output_tokens == 40
    assert framed <= 4
    cut = events[1:-2]  # no message event at all (a gateway that lost them): text for the estimate
    _, lane_cut, _ = run("anthropic", "messages", cut, drop=False)
    _, split_cut, _ = run("anthropic", "messages", [b"".join(cut)[:50], b"".join(cut)[50:]], drop=False)
    assert lane_cut.usage is None
    assert lane_cut.output_text == split_cut.output_text == "".join(f" w{i}" for i in range(40))


def test_a_chunk_that_is_not_whole_events_is_framed() -> None:
    """A chunk ending inside an event, or the framer holding part of one: the ordinary lane."""
    decoder = SSEDecoder()
    assert not decoder.idle  # before the first line: a BOM may still come
    decoder.feed(b"data: 1\n\n")
    assert decoder.idle
    decoder.feed(b"data: 2")
    assert not decoder.idle


def test_a_failure_in_the_plain_lane_never_breaks_the_stream() -> None:
    tap = StreamTap(DEFAULT_REGISTRY.by_name("openai"), "chat", None)  # type: ignore[arg-type]
    events = openai_events(3, usage=True)
    assert tap(events[0]) == events[0]  # the model: the ordinary lane

    def broken(block: bytes) -> bool:
        raise RuntimeError("a bug")

    tap._plain = broken
    assert tap(events[1]) == events[1]  # passed on as it came
    assert tap(events[2]) == events[2]
    assert "stream not metered: RuntimeError at test_stream_tap.py:" in (tap.result().error or "")


def test_a_parser_failure_puts_no_stream_text_on_the_row() -> None:
    """An unexpected parser exception may quote what it read (``int('...')`` does): the row names
    its type and where it was raised, never its text. A decoding failure keeps its own message."""
    tap = StreamTap(DEFAULT_REGISTRY.by_name("openai"), "chat", None)  # type: ignore[arg-type]
    events = openai_events(3, usage=True)
    assert tap(events[0]) == events[0]

    class Broken:
        done = False

        def feed(self, event: Any) -> None:
            int("the user's secret prompt text")

        def result(self) -> Any:
            return tap_result

    tap_result = tap._parser.result()
    tap._parser = Broken()  # type: ignore[assignment]
    tap._plain = None  # every event to the parser
    assert tap(events[1]) == events[1]  # passed on as it came
    error = tap.result().error or ""
    assert "secret prompt" not in error
    assert "stream not metered: ValueError at test_stream_tap.py:" in error


def test_a_failing_result_puts_no_stream_text_on_the_row() -> None:
    tap = StreamTap(DEFAULT_REGISTRY.by_name("openai"), "chat", None)  # type: ignore[arg-type]

    class Broken:
        done = False

        def result(self) -> Any:
            raise KeyError("the model's secret completion")

    tap._parser = Broken()  # type: ignore[assignment]
    error = tap.result().error or ""
    assert "secret completion" not in error
    assert "stream parser failed: KeyError at test_stream_tap.py:" in error
