"""A fake Gemini API (generativelanguage.googleapis.com) over HTTPS on 127.0.0.1, for end-to-end tests.

``generateContent`` answers one JSON body; ``streamGenerateContent`` streams three chunks, as
Server-Sent Events with ``?alt=sse`` and as one JSON array without it, each chunk carrying
``usageMetadata`` (the last one final), in the API's own shapes.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fakeprovider import make_cert

USAGE = {
    "promptTokenCount": 100,
    "candidatesTokenCount": 50,
    "thoughtsTokenCount": 10,
    "cachedContentTokenCount": 20,
    "totalTokenCount": 160,
}
_PATH = re.compile(
    r"^/(v1|v1beta)/models/(?P<model>[^:/?]+):(?P<method>generateContent|streamGenerateContent)"
)


def _chunk(model: str, text: str, usage: dict[str, int], final: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if final:
        candidate["finishReason"] = "STOP"
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": "fake-1"}


class FakeGemini:
    """The server; ``requests`` records (path, headers, body) of each call."""

    def __init__(self, directory: Path) -> None:
        self.cert_path, key_path = make_cert(directory, "gemini", ["generativelanguage.googleapis.com"])
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                fake.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                m = _PATH.match(self.path)
                if m is None:
                    self.send_error(404)
                    return
                model = m["model"]
                if m["method"] == "generateContent":
                    self._send(
                        200, "application/json", json.dumps(_chunk(model, "Hello!", USAGE, True)).encode()
                    )
                    return
                partial = {"promptTokenCount": 100, "cachedContentTokenCount": 20, "totalTokenCount": 100}
                chunks = [
                    _chunk(model, "Hel", partial, False),
                    _chunk(model, "lo", {**partial, "candidatesTokenCount": 20}, False),
                    _chunk(model, "!", USAGE, True),
                ]
                sse = "alt=sse" in self.path
                self.send_response(200)
                self.send_header("content-type", "text/event-stream" if sse else "application/json")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                pieces = (
                    [f"data: {json.dumps(c)}\r\n\r\n".encode() for c in chunks]
                    if sse
                    else [
                        b"[" + json.dumps(chunks[0]).encode(),
                        *(b",\r\n" + json.dumps(c).encode() for c in chunks[1:]),
                        b"]",
                    ]
                )
                for piece in pieces:
                    self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

            def _send(self, status: int, ctype: str, data: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_path, key_path)
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
