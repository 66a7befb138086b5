"""A fake Bedrock runtime (bedrock-runtime.us-east-1.amazonaws.com) over HTTPS on 127.0.0.1, for e2e tests.

Its four operations, in the service's own shapes: ``converse`` (JSON with ``usage``),
``converse-stream`` (an AWS event stream ending in a ``metadata`` event with ``usage``),
``invoke`` (the model's native body, here an Anthropic message, and the token counts in
``X-Amzn-Bedrock-*`` headers) and ``invoke-with-response-stream`` (``chunk`` events of base64
Anthropic events, the last with ``amazon-bedrock-invocationMetrics``). Requests are not
checked for a valid signature; the recorded ``authorization`` header shows there was one.

The event-stream encoder is written from AWS's description of the format (prelude with total
and header lengths and their CRC32, string headers, payload, CRC32 of the whole message),
independently of the addon's decoder.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from fakeprovider import RecordingHandler, TLSServer, make_cert

HOST = "bedrock-runtime.us-east-1.amazonaws.com"
# Converse counts: inputTokens excludes the cache reads and writes.
USAGE = {"inputTokens": 100, "outputTokens": 20, "cacheReadInputTokens": 30, "cacheWriteInputTokens": 10}
_PATH = re.compile(
    r"^/model/(?P<model>[^/]+)/(?P<op>converse|converse-stream|invoke|invoke-with-response-stream)$"
)
WORDS = ["Hel", "lo", "!"]
_REQUEST_ID = {"x-amzn-requestid": "00000000-fake-0000-0000-000000000000"}


def event_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message with string headers."""
    encoded = b""
    for name, value in headers.items():
        raw_name, raw_value = name.encode(), value.encode()
        encoded += bytes([len(raw_name)]) + raw_name + b"\x07" + struct.pack(">H", len(raw_value)) + raw_value
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    head = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return head + struct.pack(">I", zlib.crc32(head))


def _event(kind: str, body: dict[str, Any]) -> bytes:
    headers = {":event-type": kind, ":content-type": "application/json", ":message-type": "event"}
    return event_message(headers, json.dumps(body).encode())


def _total(usage: dict[str, int]) -> int:
    return sum(usage.values())


def _anthropic_events(model: str, usage: dict[str, int]) -> list[dict[str, Any]]:
    start_usage = {
        "input_tokens": usage["inputTokens"],
        "cache_read_input_tokens": usage["cacheReadInputTokens"],
        "cache_creation_input_tokens": usage["cacheWriteInputTokens"],
        "output_tokens": 1,
    }
    message = {"id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": []}
    return [
        {"type": "message_start", "message": {**message, "usage": start_usage}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}
            for w in WORDS
        ),
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": usage["outputTokens"]},
        },
        {"type": "message_stop"},
    ]


class FakeBedrock:
    """The server; ``requests`` records (path, headers, body) of each call."""

    def __init__(self, directory: Path) -> None:
        self.cert_path, key_path = make_cert(directory, "bedrock", [HOST])
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []

        class Handler(RecordingHandler):
            def do_POST(self) -> None:
                self.read_json()
                m = _PATH.match(self.path.split("?")[0])
                if m is None:
                    self._send(404, "application/json", b'{"message":"not found"}')
                    return
                model, op = unquote(m["model"]), m["op"]
                if op == "converse":
                    answer = {
                        "output": {"message": {"role": "assistant", "content": [{"text": "".join(WORDS)}]}},
                        "stopReason": "end_turn",
                        "usage": {**USAGE, "totalTokens": _total(USAGE)},
                        "metrics": {"latencyMs": 120},
                    }
                    self._send(200, "application/json", json.dumps(answer).encode())
                elif op == "invoke":
                    events = _anthropic_events(model, USAGE)
                    answer = {
                        **events[0]["message"],
                        "content": [{"type": "text", "text": "".join(WORDS)}],
                        "stop_reason": "end_turn",
                        "usage": {**events[0]["message"]["usage"], "output_tokens": USAGE["outputTokens"]},
                    }
                    counts = {
                        "X-Amzn-Bedrock-Input-Token-Count": USAGE["inputTokens"],
                        "X-Amzn-Bedrock-Output-Token-Count": USAGE["outputTokens"],
                        "X-Amzn-Bedrock-Cache-Read-Input-Token-Count": USAGE["cacheReadInputTokens"],
                        "X-Amzn-Bedrock-Cache-Write-Input-Token-Count": USAGE["cacheWriteInputTokens"],
                    }
                    self._send(200, "application/json", json.dumps(answer).encode(), counts)
                elif op == "converse-stream":
                    messages = [
                        _event("messageStart", {"role": "assistant"}),
                        *(
                            _event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": w}})
                            for w in WORDS
                        ),
                        _event("contentBlockStop", {"contentBlockIndex": 0}),
                        _event("messageStop", {"stopReason": "end_turn"}),
                        _event(
                            "metadata",
                            {"usage": {**USAGE, "totalTokens": _total(USAGE)}, "metrics": {"latencyMs": 120}},
                        ),
                    ]
                    self._stream(messages)
                else:
                    events = _anthropic_events(model, USAGE)
                    metrics = {
                        "inputTokenCount": USAGE["inputTokens"],
                        "outputTokenCount": USAGE["outputTokens"],
                        "cacheReadInputTokenCount": USAGE["cacheReadInputTokens"],
                        "cacheWriteInputTokenCount": USAGE["cacheWriteInputTokens"],
                        "invocationLatency": 120,
                        "firstByteLatency": 40,
                    }
                    events[-1] = {**events[-1], "amazon-bedrock-invocationMetrics": metrics}
                    self._stream(
                        [
                            _event("chunk", {"bytes": base64.b64encode(json.dumps(e).encode()).decode()})
                            for e in events
                        ]
                    )

            def _send(
                self, status: int, ctype: str, data: bytes, extra: dict[str, Any] | None = None
            ) -> None:
                self.send_whole(status, ctype, data, {**_REQUEST_ID, **(extra or {})})

            def _stream(self, messages: list[bytes]) -> None:
                self.send_chunked("application/vnd.amazon.eventstream", messages, _REQUEST_ID)

        self._server = TLSServer(Handler, self, self.cert_path, key_path)
        self.port = self._server.port

    def close(self) -> None:
        self._server.close()
