"""The callable set as ``flow.response.stream``: forwards every chunk, meters on the side."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from addon.aws_eventstream import EventStreamDecoder
from addon.content_decoding import DecodeError, StreamDecoder
from addon.json_stream import JSONArrayDecoder
from addon.providers import Provider, StreamParser
from addon.providers.batches import ResultsReader
from addon.sse import SSEDecoder
from addon.usage import Metered

log = logging.getLogger("tokometer")


def failure_shown(exc: BaseException) -> str:
    """An unexpected failure as a row may show it: its type and where it was raised, never its
    text, which may quote what was read (``int('...')`` does). A decoding failure's own message
    (which names the encoding's fault, never the bytes) is kept."""
    if isinstance(exc, DecodeError):
        return f"{type(exc).__name__}: {exc}"
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return type(exc).__name__
    return f"{type(exc).__name__} at {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}"


class Framer(Protocol):
    """Splits a decoded byte stream into the events a provider's parser reads."""

    def feed(self, chunk: bytes) -> list[Any]: ...

    def close(self) -> list[Any]: ...


FRAMERS: dict[str, type[Framer]] = {
    "sse": SSEDecoder,
    "json_array": JSONArrayDecoder,  # Gemini's streamGenerateContent without alt=sse
    "aws_eventstream": EventStreamDecoder,  # Bedrock's binary application/vnd.amazon.eventstream
}


class StreamTap:
    """Reads usage from a streamed response without holding it back.

    Each chunk is passed on as it arrives. Metering runs on a decoded copy;
    if that fails (corrupt encoding, a bug), metering stops for this flow and
    the stream goes on untouched.

    With ``drop_usage_chunk`` (the proxy added ``stream_options.include_usage``
    to the request), the stream is forwarded event by event, minus the usage-only
    chunk the client did not ask for. Forwarding whole events only holds back
    the incomplete tail of an event, which no SSE client can use anyway. A
    compressed stream is then forwarded decoded (the caller drops
    Content-Encoding from the response headers).
    """

    __slots__ = (
        "_decoder",
        "_drop",
        "_failed",
        "_framer",
        "_is_usage_only",
        "_parser",
        "_plain",
        "finished",
        "first_chunk_at",
        "on_final_event",
    )

    def __init__(
        self,
        provider: Provider,
        flavor: str,
        content_encoding: str | None,
        drop_usage_chunk: bool = False,
        framing: str = "sse",
    ) -> None:
        self._parser: StreamParser = provider.stream_parser(flavor)
        self._decoder = StreamDecoder(content_encoding)
        self._framer: Framer = FRAMERS[framing]()
        # Only SSE events are regrouped (their raw bytes are kept); other framings pass through.
        self._drop = drop_usage_chunk and framing == "sse" and provider.is_usage_only_chunk is not None
        self._is_usage_only = provider.is_usage_only_chunk
        # Chunks of whole events that carry only text go by without framing (most of a long
        # stream): an uncompressed SSE stream whose parser can tell them (take_plain).
        take_plain = getattr(self._parser, "take_plain", None)
        plain_ok = framing == "sse" and self._decoder.passthrough
        self._plain: Callable[[bytes], bool] | None = take_plain if plain_ok else None
        self._failed: str | None = None
        self.first_chunk_at: float | None = None
        self.finished = False
        # Called once, before the chunk holding the stream's final event is passed on.
        self.on_final_event: Callable[[], None] | None = None

    def __call__(self, data: bytes) -> bytes | list[bytes]:
        if data:
            if self.first_chunk_at is None:
                self.first_chunk_at = time.time()
            return self._chunk(data)
        self.finished = True
        return self._end()

    def _chunk(self, data: bytes) -> bytes | list[bytes]:
        if self._failed is not None:
            return data
        plain = self._plain
        try:
            if (
                plain is not None
                and data.endswith(b"\n\n")
                and self._framer.idle  # type: ignore[attr-defined]
                and b"\r" not in data
                and plain(data)
            ):
                return [data] if self._drop else data  # whole events, as the framer would pass them
            events = self._framed(self._decoder.decode(data))
            for event in events:
                self._parser.feed(event)
        except Exception as exc:  # metering must never break the stream
            return self._fail(exc, data)
        if self.on_final_event is not None and self._parser.done:
            self._final_event()
        if not self._drop:
            return data
        return self._forward(events)

    def _end(self) -> bytes | list[bytes]:
        if self._failed is not None:
            return []
        try:
            tail = self._decoder.flush()
            events = self._framed(tail) + self._framer.close()
            for event in events:
                self._parser.feed(event)
        except Exception as exc:
            self._fail(exc, b"")
            return []
        if self.on_final_event is not None and self._parser.done:  # an event without its blank line
            self._final_event()
        self.on_final_event = None
        if not self._drop:
            return []
        return self._forward(events)

    def _final_event(self) -> None:
        callback, self.on_final_event = self.on_final_event, None
        try:
            callback()  # type: ignore[misc]
        except Exception:  # the stream goes on whatever happens here
            log.exception("tokometer: could not journal a stream at its final event")

    def _forward(self, events: list[Any]) -> list[bytes]:
        """The events' bytes, minus the usage-only chunk, as one piece (one write to the client).

        Never ``b""`` mid-stream: mitmproxy would send it as the last chunk; ``[]`` sends nothing.
        """
        kept = b"".join([e.raw for e in events if not self._is_usage_only(e)])  # type: ignore[misc]
        return [kept] if kept else []

    def _framed(self, data: bytes) -> list[Any]:
        """The framer's events; a framing error still hands over the good events before it."""
        try:
            return self._framer.feed(data)
        except Exception as exc:
            for event in getattr(exc, "messages", ()):  # EventStreamError keeps what it decoded
                self._parser.feed(event)
            raise

    def _fail(self, exc: Exception, data: bytes) -> bytes:
        self._failed = f"stream not metered: {failure_shown(exc)}"[:300]
        log.warning("tokometer: %s", self._failed)
        if self.on_final_event is not None and self._parser.done:  # what it read is complete
            self._final_event()
        self.on_final_event = None
        # When events were being regrouped, what the decoder still holds is lost
        # for the client; forwarding the raw chunk from here on is the best left.
        return data

    @property
    def final_event_seen(self) -> bool:
        """The stream's final event went by: the client has the whole answer, body end or not."""
        return self._parser.done

    def result(self) -> Metered:
        """Usage seen so far (the whole stream once ``finished``)."""
        try:
            metered = self._parser.result()
        except Exception as exc:
            metered = Metered(error=f"stream parser failed: {failure_shown(exc)}")
        if self._failed is not None:
            metered.error = self._failed if metered.error is None else f"{metered.error}; {self._failed}"
        return metered


class ResultsTap:
    """The callable set as a batch results download's ``flow.response.stream`` (Anthropic's
    Message Batch results, JSONL of any size): every chunk passes on as it came, and a decoded
    copy is read line by line on the side. If reading fails, the download goes on untouched."""

    __slots__ = ("_decoder", "failed", "finished", "reader")

    def __init__(self, content_encoding: str | None) -> None:
        self.reader = ResultsReader()
        self.failed: str | None = None  # why the results were not read to the end
        self.finished = False  # the download ended (mitmproxy's last call, with b"")
        try:
            self._decoder: StreamDecoder | None = StreamDecoder(content_encoding)
        except Exception as exc:
            self._decoder = None
            self.failed = failure_shown(exc)[:300]

    def __call__(self, data: bytes) -> bytes:
        if self.failed is None and self._decoder is not None:
            try:
                if data:
                    self.reader.feed(self._decoder.decode(data))
                else:
                    self.reader.feed(self._decoder.flush())
                    self.reader.close()
            except Exception as exc:  # corrupt encoding, a bug: stop reading, never the download
                self.failed = failure_shown(exc)[:300]
                log.debug("tokometer: batch results not read: %s", self.failed)
        if not data:
            self.finished = True
        return data
