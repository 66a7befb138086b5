"""A fake Vertex AI (``*aiplatform.googleapis.com``) over HTTPS on 127.0.0.1, for end-to-end tests.

Gemini: ``.../publishers/google/models/{m}:generateContent`` answers one JSON body,
``:streamGenerateContent?alt=sse`` three SSE chunks (usage on each, the last final), ``:countTokens``
a count. Claude: ``.../publishers/anthropic/models/{m}:rawPredict`` answers a Messages JSON body,
``:streamRawPredict`` the Messages SSE events; ``count-tokens:rawPredict`` a count. Shapes as Vertex
sends them (``trafficType`` in Gemini's usage). Every request is recorded (path, headers, body).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fakeprovider import RecordingHandler, TLSServer, make_cert

GEMINI_USAGE = {
    "promptTokenCount": 100,
    "candidatesTokenCount": 50,
    "thoughtsTokenCount": 10,
    "cachedContentTokenCount": 20,
    "totalTokenCount": 160,
    "trafficType": "ON_DEMAND",
}
# Anthropic's counts: input excludes the cache reads and writes.
CLAUDE_USAGE = {
    "input_tokens": 100,
    "cache_creation_input_tokens": 10,
    "cache_read_input_tokens": 30,
    "output_tokens": 20,
}
WORDS = ["Hel", "lo", "!"]
_PATH = re.compile(
    r"^/(?:v1|v1beta1)/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
    r"/publishers/(?P<publisher>google|anthropic)/models/(?P<model>[^:/?]+):(?P<method>\w+)"
)


def _gemini_chunk(model: str, text: str, usage: dict[str, Any], final: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if final:
        candidate["finishReason"] = "STOP"
    return {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": model,
        "createTime": "2026-11-02T10:00:00Z",
        "responseId": "vertex-1",
    }


def _claude_message(model: str) -> dict[str, Any]:
    return {
        "id": "msg_vrtx_01",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "".join(WORDS)}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": CLAUDE_USAGE,
    }


def _claude_events(model: str) -> list[tuple[str, dict[str, Any]]]:
    start = {**_claude_message(model), "content": [], "stop_reason": None}
    start["usage"] = {**CLAUDE_USAGE, "output_tokens": 1}
    return [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        ("ping", {"type": "ping"}),
        *(
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}},
            )
            for w in WORDS
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 20}},
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


class FakeVertex:
    """The server; ``requests`` records (path, headers, body) of each call."""

    def __init__(self, directory: Path) -> None:
        self.cert_path, key_path = make_cert(directory, "vertex", ["aiplatform.googleapis.com"])
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []

        class Handler(RecordingHandler):
            def do_POST(self) -> None:
                body = self.read_json()
                m = _PATH.match(self.path)
                if m is None:
                    self.send_whole(
                        404, "application/json", b'{"error": {"code": 404, "status": "NOT_FOUND"}}'
                    )
                    return
                model, method = m["model"].replace("%40", "@"), m["method"]
                if m["publisher"] == "google":
                    self._gemini(model, method)
                elif model == "count-tokens":
                    self.send_whole(200, "application/json", b'{"input_tokens": 42}')
                elif method == "rawPredict" and not body.get("stream"):
                    self.send_whole(200, "application/json", json.dumps(_claude_message(model)).encode())
                elif method == "streamRawPredict":
                    events = _claude_events(model)
                    self.send_chunked(
                        "text/event-stream",
                        [f"event: {name}\ndata: {json.dumps(e)}\n\n".encode() for name, e in events],
                    )
                else:
                    self.send_whole(
                        400, "application/json", b'{"error": {"code": 400, "status": "INVALID_ARGUMENT"}}'
                    )

            def _gemini(self, model: str, method: str) -> None:
                if method == "countTokens":
                    self.send_whole(200, "application/json", b'{"totalTokens": 42}')
                elif method == "generateContent":
                    chunk = _gemini_chunk(model, "".join(WORDS), GEMINI_USAGE, True)
                    self.send_whole(200, "application/json", json.dumps(chunk).encode())
                elif method == "streamGenerateContent":
                    partial = {"promptTokenCount": 100, "cachedContentTokenCount": 20, "totalTokenCount": 100}
                    chunks = [
                        _gemini_chunk(model, WORDS[0], partial, False),
                        _gemini_chunk(model, WORDS[1], {**partial, "candidatesTokenCount": 20}, False),
                        _gemini_chunk(model, WORDS[2], GEMINI_USAGE, True),
                    ]
                    self.send_chunked(
                        "text/event-stream", [f"data: {json.dumps(c)}\r\n\r\n".encode() for c in chunks]
                    )
                else:
                    self.send_whole(
                        404, "application/json", b'{"error": {"code": 404, "status": "NOT_FOUND"}}'
                    )

        self._server = TLSServer(Handler, self, self.cert_path, key_path)
        self.port = self._server.port

    def close(self) -> None:
        self._server.close()
