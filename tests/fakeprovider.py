"""A fake OpenAI + Anthropic API over HTTPS on 127.0.0.1, for end-to-end tests.

Tests steer each call with request headers (they pass through the proxy):

- ``X-Fake-Usage``: the usage object to report, in the provider's own wire format (JSON).
- ``X-Fake-Status``: answer with this error status and the provider's error JSON.
- ``X-Fake-Gzip: 1``: gzip the body or stream when the request accepts gzip.
- ``X-Fake-Gate: NAME``: a stream sends its first events, then waits until the test
  releases ``FakeProvider.gate(NAME)``.
- ``X-Fake-Gate-After``: content deltas sent before the gate (default 2); ``end`` (chat only):
  after ``[DONE]``, before the body ends.
- ``X-Fake-Chunks``: number of content deltas in a stream (default 5).
- ``X-Fake-Model``: the model name to report (default: the dated snapshot of the request's).
- ``X-Fake-Deltas``: Anthropic streams send this many ``message_delta`` events (cumulative).
- ``X-Test-Tag``: a label to find the recorded request again.

Images and audio (``/v1/images/generations``, ``/v1/images/edits``, ``/v1/audio/transcriptions``,
``/v1/audio/translations``; JSON or multipart/form-data, whose fields land in
``RecordedRequest.form``): ``X-Fake-Usage`` as above (``null``: none, as DALL·E answers);
``X-Fake-Image-Bytes``: base64 characters of each image (default 2000); a stream sends
``partial_images`` partial images, then (past ``X-Fake-Gate``, if given) the completed event. A
transcription answers in its ``response_format`` (``text``, ``srt``, ``vtt`` as plain text) or
streams ``transcript.text.delta`` events, then ``transcript.text.done``.

A Responses call with the ``image_generation`` tool (unless ``tool_choice`` is ``none``) has it
write one image first: an ``image_generation_call`` item of the tool's quality and size (``auto`` or
none: high, 1024x1024) with ``X-Fake-Image-Bytes`` of base64, its ``tools`` echoed as sent, and
``X-Fake-Tool-Usage`` (JSON) as its ``tool_usage`` if given; a stream sends the tool's image call
events before the text, one ``partial_image`` per the tool's ``partial_images``.

Batch jobs (OpenAI's Batch API): ``POST /v1/files`` (multipart, any purpose) keeps the file and
answers its id; ``POST /v1/batches`` answers ``validating`` (404 for a file it does not have), its
usage from ``X-Fake-Usage`` (Responses shape) and its model the first line's ``body.model``;
``GET /v1/batches/{id}`` answers ``in_progress`` once, then ``completed`` with that usage;
``POST /v1/batches/{id}/cancel`` answers ``cancelling``, and the next GET ``cancelled`` with it;
``GET /v1/batches`` lists every batch as it stands. Anthropic's Message Batches:
``POST /v1/messages/batches`` answers ``in_progress``; ``GET /v1/messages/batches/{id}``
``in_progress`` once, then ``ended`` with its ``results_url``; the results (JSONL, chunked in
pieces of ``X-Fake-Results-Chunk`` bytes, gzip with ``X-Fake-Gzip``) have one line per request:
``succeeded`` with ``X-Fake-Usage`` (given at the creation) and the model's snapshot, or ``errored``
for a ``custom_id`` starting with ``fail``.

Bad upstream behaviour (tests/test_e2e_bad_input.py):

- ``X-Fake-Close-After: N``: a stream sends its first N events, then the connection is
  closed without ending the chunked body; ``X-Fake-Close-Partial: K`` first sends the
  first K bytes of the next event.
- ``X-Fake-Raw-Stream: BASE64``: answer 200 with exactly these bytes as a chunked stream
  (``Content-Type: text/event-stream`` unless ``X-Fake-Content-Type`` says otherwise),
  cut into chunks at the offsets in ``X-Fake-Raw-Splits`` ("3,10,57"), labelled with
  ``X-Fake-Content-Encoding`` if given (the bytes are sent as they are, never encoded).
- ``X-Fake-Echo: 1``: any method on any path answers 200 with a JSON description of the
  request (method, path, body length and sha256).
- A GET with ``Upgrade: websocket`` on any path is accepted (101) and every message the
  client sends is echoed back (``RecordedRequest.ws_messages``) until it closes.

Every request is recorded (``FakeProvider.requests``), with the bytes of a streamed answer
(``RecordedRequest.sent``, before any gzip).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import email.parser
import email.policy
import hashlib
import ipaddress
import itertools
import json
import socket
import ssl
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

GATE_TIMEOUT_S = 30.0

# What the real APIs report for an alias: a dated snapshot.
SNAPSHOTS = {
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4o": "gpt-4o-2024-08-06",
    "claude-haiku-4-5": "claude-haiku-4-5-20251001",
}

DEFAULT_USAGE: dict[str, dict[str, Any]] = {
    "chat": {
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "total_tokens": 120,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "responses": {
        "input_tokens": 100,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 20,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 120,
    },
    "embeddings": {"prompt_tokens": 8, "total_tokens": 8},
    "images": {
        "input_tokens": 50,
        "input_tokens_details": {"text_tokens": 40, "image_tokens": 10},
        "output_tokens": 4160,
        "total_tokens": 4210,
    },
    "transcription": {
        "type": "tokens",
        "input_tokens": 120,
        "input_token_details": {"text_tokens": 20, "audio_tokens": 100},
        "output_tokens": 30,
        "total_tokens": 150,
    },
    "messages": {
        "input_tokens": 100,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 20,
        "service_tier": "standard",
    },
}


# ---------------------------------------------------------------- certificates


def make_cert(directory: Path, name: str, hosts: list[str]) -> tuple[Path, Path]:
    """Write a self-signed certificate (CA:true, so it can be trusted directly) and its key.

    Returns ``(cert_path, key_path)``.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{name}-cert.pem"
    key_path = directory / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


# ---------------------------------------------------------------- recording


@dataclass
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    json: Any = None
    gzipped: bool = False  # the fake compressed its answer
    stream_outcome: str | None = None  # "completed" | "client_gone" | "gate_timeout" | "closed_mid_stream"
    http_version: str = ""  # the request line's version, e.g. "HTTP/1.1"
    sent: bytearray = field(default_factory=bytearray)  # a streamed answer's bytes, before gzip
    ws_messages: list[tuple[int, bytes]] = field(default_factory=list)  # (opcode, payload) received
    form: dict[str, bytes] = field(default_factory=dict)  # a multipart/form-data body's fields
    done: threading.Event = field(default_factory=threading.Event)  # answer finished or failed

    @property
    def tag(self) -> str | None:
        """The ``X-Test-Tag`` header."""
        return self.headers.get("x-test-tag")


class _Gate:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.reached = threading.Event()


# ---------------------------------------------------------------- servers


class _TLSServer(ThreadingHTTPServer):
    """A threading HTTP server doing the TLS handshake in the request's own thread."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, handler: type[BaseHTTPRequestHandler], ctx: ssl.SSLContext, owner: Any) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.ctx = ctx
        self.owner = owner

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            with contextlib.suppress(OSError):
                tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet: clients that go away are part of the tests."""


def _server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class _BaseHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # header and body go out in separate writes: no 40 ms stall
    server: _TLSServer

    def log_message(self, format: str, *args: Any) -> None:
        """No access log on stderr."""

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _record(self) -> RecordedRequest:
        body = self._read_body()
        parsed: Any = None
        if body:
            with contextlib.suppress(ValueError, RecursionError):
                parsed = json.loads(body)
        rec = RecordedRequest(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            json=parsed,
            http_version=self.request_version,
            form=_form_fields(self.headers.get("Content-Type", ""), body),
        )
        self.server.owner._add(rec)
        return rec

    def _send_body(
        self,
        rec: RecordedRequest,
        status: int,
        payload: bytes,
        content_type: str = "application/json",
        extra: dict[str, str] | None = None,
    ) -> None:
        gz = _wants_gzip(rec)
        if gz:
            comp = zlib.compressobj(wbits=31)
            payload = comp.compress(payload) + comp.flush()
            rec.gzipped = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        if gz:
            self.send_header("Content-Encoding", "gzip")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()
        rec.done.set()


def _wants_gzip(rec: RecordedRequest) -> bool:
    return rec.headers.get("x-fake-gzip") == "1" and "gzip" in rec.headers.get("accept-encoding", "")


class _ProviderHandler(_BaseHandler):
    """Routes to the fake OpenAI or Anthropic endpoints."""

    def do_GET(self) -> None:
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self._websocket(self._record())
            return
        rec = self._record()
        if rec.headers.get("x-fake-echo") == "1":
            self._echo(rec)
            return
        background = self.server.owner.background_response(self.path.split("?")[0])
        if background is not None:  # GET /v1/responses/{id} of a background response
            self._send_body(rec, 200, _dumps(background))
            return
        batch = self.server.owner.batch_object(self.path.split("?")[0])
        if batch is not None:  # GET /v1/batches/{id}, or the list
            self._send_body(rec, 200, _dumps(batch))
            return
        path = self.path.split("?")[0]
        if path.startswith("/v1/messages/batches/"):
            self._message_batch(rec, path)
            return
        if self.path.split("?")[0] == "/v1/models":
            models = [
                {"id": m, "object": "model", "created": 1700000000, "owned_by": "system"}
                for m in ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
            ]
            self._send_body(rec, 200, _dumps({"object": "list", "data": models}))
            return
        self._send_body(rec, 404, _dumps(_openai_error(404, "Unknown path")))

    def do_DELETE(self) -> None:
        self._other_method()

    def do_PUT(self) -> None:
        self._other_method()

    def do_PATCH(self) -> None:
        self._other_method()

    def _other_method(self) -> None:
        """Only ``X-Fake-Echo`` answers other methods; else 501 as before."""
        if self.headers.get("X-Fake-Echo") != "1":
            self.send_error(501, f"Unsupported method ({self.command!r})")
            return
        self._echo(self._record())

    def _echo(self, rec: RecordedRequest) -> None:
        """``X-Fake-Echo``: describe the request back to the client."""
        body = {
            "echo": True,
            "method": rec.method,
            "path": rec.path,
            "length": len(rec.body),
            "sha256": hashlib.sha256(rec.body).hexdigest(),
        }
        self._send_body(rec, 200, _dumps(body))

    def _websocket(self, rec: RecordedRequest) -> None:
        """Accept a WebSocket upgrade (RFC 6455) and echo every message until the client closes."""
        key = rec.headers.get("sec-websocket-key", "")
        accept = base64.b64encode(
            hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        ).decode()
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        try:
            while True:
                frame = ws_read(self.rfile)
                if frame is None:
                    break
                opcode, payload = frame
                if opcode == 0x8:  # close: answer with the same code, then stop
                    self.wfile.write(ws_frame(0x8, payload[:2]))
                    self.wfile.flush()
                    break
                if opcode == 0x9:  # ping
                    self.wfile.write(ws_frame(0xA, payload))
                    self.wfile.flush()
                    continue
                rec.ws_messages.append((opcode, payload))
                self.wfile.write(ws_frame(opcode, payload))
                self.wfile.flush()
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            rec.done.set()

    def do_POST(self) -> None:
        rec = self._record()
        if rec.headers.get("x-fake-echo") == "1":
            self._echo(rec)
            return
        if "x-fake-raw-stream" in rec.headers:
            try:
                self._raw_stream(rec)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
                rec.stream_outcome = rec.stream_outcome or "client_gone"
                self.close_connection = True
            finally:
                rec.done.set()
            return
        try:
            self._dispatch(rec)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            rec.stream_outcome = rec.stream_outcome or "client_gone"
            self.close_connection = True
        finally:
            rec.done.set()

    def _dispatch(self, rec: RecordedRequest) -> None:
        path = self.path.split("?")[0]
        anthropic = path == "/v1/messages"
        status = int(rec.headers.get("x-fake-status") or 200)
        if status >= 400:
            body = _anthropic_error(status) if anthropic else _openai_error(status)
            self._send_body(rec, status, _dumps(body), extra=_error_headers(anthropic))
            return
        req = rec.json if isinstance(rec.json, dict) else {}
        if path == "/v1/files" or path == "/v1/batches" or path.startswith("/v1/batches/"):
            self._batches(rec, path, req)
            return
        if path == "/v1/messages/batches":
            usage = json.loads(rec.headers.get("x-fake-usage") or "null") or DEFAULT_USAGE["messages"]
            self._send_body(rec, 200, _dumps(self.server.owner.start_message_batch(req, usage)))
            return
        if path in _MEDIA_PATHS:
            self._media(rec, path, req or {k: v.decode("utf-8", "replace") for k, v in rec.form.items()})
            return
        if path == "/v1/videos":
            self._send_body(rec, 200, _dumps(_video_job(rec, req)))
            return
        flavor = {
            "/v1/chat/completions": "chat",
            "/v1/responses": "responses",
            "/v1/embeddings": "embeddings",
            "/v1/messages": "messages",
        }.get(path)
        if flavor is None:
            self._send_body(rec, 404, _dumps(_openai_error(404, f"Unknown path {path}")))
            return
        usage = DEFAULT_USAGE[flavor]
        if "x-fake-usage" in rec.headers:
            usage = json.loads(rec.headers["x-fake-usage"])
        requested = str(req.get("model") or "unknown-model")
        model = rec.headers.get("x-fake-model") or SNAPSHOTS.get(requested, requested)
        n_chunks = int(rec.headers.get("x-fake-chunks") or 5)
        words = [f"w{i} " for i in range(n_chunks)]
        if flavor == "embeddings":
            self._send_body(rec, 200, _dumps(_embeddings_body(req, model, usage)))
            return
        if flavor == "responses" and req.get("background") is True and not req.get("stream"):
            # Background mode: "queued" now; GET /v1/responses/{id} says in_progress once, then done.
            body = self.server.owner.start_background(model, "".join(words), usage)
            self._send_body(rec, 200, _dumps(body))
            return
        if not req.get("stream"):
            text = "".join(words)
            body = {
                "chat": _chat_body,
                "responses": _responses_body,
                "messages": _messages_body,
            }[flavor](model, text, usage)
            if flavor == "responses":
                body = _with_image_tool(body, req, rec)
            self._send_body(rec, 200, _dumps(body), extra=_ok_headers(flavor == "messages"))
            return
        events = {
            "chat": _chat_events,
            "responses": _responses_events,
            "messages": _messages_events,
        }[flavor](req, rec, model, words, usage)
        self._stream(rec, events, anthropic)

    def _media(self, rec: RecordedRequest, path: str, req: dict[str, Any]) -> None:
        """An image or transcription call, answered as OpenAI does (JSON, plain text or SSE)."""
        flavor = "images" if path.startswith("/v1/images/") else "transcription"
        usage: Any = DEFAULT_USAGE[flavor]
        if "x-fake-usage" in rec.headers:
            usage = json.loads(rec.headers["x-fake-usage"])
        streamed = req.get("stream") in (True, "true", "True")
        if flavor == "images":
            image = int(rec.headers.get("x-fake-image-bytes") or 2000)
            kind = "image_edit" if path == "/v1/images/edits" else "image_generation"
            if streamed:
                self._stream(
                    rec, _image_events(kind, int(req.get("partial_images") or 0), image, usage), False
                )
                return
            self._send_body(
                rec, 200, _dumps(_with_usage(_image_body(image), usage)), extra=_ok_headers(False)
            )
            return
        fmt = req.get("response_format") or "json"
        text = "The quick brown fox."
        if streamed:
            self._stream(rec, _transcript_events(text, usage), False)
        elif fmt in ("text", "srt", "vtt"):
            self._send_body(rec, 200, (text + "\n").encode(), content_type="text/plain; charset=utf-8")
        else:
            body = {
                "text": text,
                **({"task": "transcribe", "duration": 9.0} if fmt == "verbose_json" else {}),
            }
            self._send_body(rec, 200, _dumps(_with_usage(body, usage)), extra=_ok_headers(False))

    def _batches(self, rec: RecordedRequest, path: str, req: dict[str, Any]) -> None:
        """A file upload, a batch's creation or its cancel (OpenAI's Batch API)."""
        owner = self.server.owner
        if path == "/v1/files":
            purpose = rec.form.get("purpose", b"").decode()
            self._send_body(rec, 200, _dumps(owner.add_file(rec.form.get("file", b""), purpose)))
            return
        if path == "/v1/batches":
            usage = json.loads(rec.headers.get("x-fake-usage") or "null") or DEFAULT_USAGE["responses"]
            batch = owner.start_batch(str(req.get("input_file_id")), str(req.get("endpoint")), usage)
        else:
            batch = owner.cancel_batch(path.removesuffix("/cancel")) if path.endswith("/cancel") else None
        if batch is None:
            self._send_body(rec, 404, _dumps(_openai_error(404, f"No such object: {path}")))
            return
        self._send_body(rec, 200, _dumps(batch))

    def _message_batch(self, rec: RecordedRequest, path: str) -> None:
        """``GET /v1/messages/batches/{id}`` (in progress once, then ended) or ``.../results``."""
        owner = self.server.owner
        batch_id = path.removesuffix("/results").rsplit("/", 1)[-1]
        if not path.endswith("/results"):
            batch = owner.message_batch(batch_id)
            if batch is None:
                self._send_body(rec, 404, _dumps(_anthropic_error(404)), extra=_error_headers(True))
                return
            self._send_body(rec, 200, _dumps(batch), extra=_ok_headers(True))
            return
        lines = owner.message_batch_results(batch_id)
        if lines is None:
            self._send_body(rec, 404, _dumps(_anthropic_error(404)), extra=_error_headers(True))
            return
        data = b"".join(_dumps(line) + b"\n" for line in lines)
        gz = _wants_gzip(rec)
        if gz:
            comp = zlib.compressobj(wbits=31)
            data = comp.compress(data) + comp.flush()
            rec.gzipped = True
        piece = int(rec.headers.get("x-fake-results-chunk") or 1000)
        self.send_response(200)
        self.send_header("Content-Type", "application/binary")
        self.send_header("Transfer-Encoding", "chunked")
        if gz:
            self.send_header("Content-Encoding", "gzip")
        self.end_headers()
        for i in range(0, len(data), piece):
            chunk = data[i : i + piece]
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        rec.sent += data
        rec.done.set()

    def _raw_stream(self, rec: RecordedRequest) -> None:
        """``X-Fake-Raw-Stream``: exactly the given bytes, chunked at the given offsets."""
        try:
            data = base64.b64decode(rec.headers["x-fake-raw-stream"], validate=True)
        except (binascii.Error, ValueError):
            self._send_body(rec, 400, _dumps(_openai_error(400, "bad X-Fake-Raw-Stream")))
            return
        cuts = sorted({int(c) for c in rec.headers.get("x-fake-raw-splits", "").split(",") if c.strip()})
        bounds = [0, *(c for c in cuts if 0 < c < len(data)), len(data)]
        self.send_response(200)
        self.send_header("Content-Type", rec.headers.get("x-fake-content-type", "text/event-stream"))
        self.send_header("Transfer-Encoding", "chunked")
        if "x-fake-content-encoding" in rec.headers:
            self.send_header("Content-Encoding", rec.headers["x-fake-content-encoding"])
        self.end_headers()
        for a, b in itertools.pairwise(bounds):
            if b > a:
                self.wfile.write(f"{b - a:x}\r\n".encode() + data[a:b] + b"\r\n")
                self.wfile.flush()
                rec.sent += data[a:b]
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        rec.stream_outcome = "completed"

    def _stream(self, rec: RecordedRequest, events: Iterator[bytes | None], anthropic: bool) -> None:
        """Send SSE events with chunked transfer encoding, one flushed chunk per event.

        ``None`` in ``events`` marks the gate position.
        """
        close_after = rec.headers.get("x-fake-close-after")
        close_partial = int(rec.headers.get("x-fake-close-partial") or 0)
        gz = _wants_gzip(rec)
        comp = zlib.compressobj(wbits=31) if gz else None
        rec.gzipped = gz
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        if gz:
            self.send_header("Content-Encoding", "gzip")
        for k, v in _ok_headers(anthropic).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.flush()

        def send(data: bytes) -> None:
            rec.sent += data
            if comp is not None:
                data = comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH)
            if data:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

        gate_name = rec.headers.get("x-fake-gate")
        n_sent = 0
        for event in events:
            if close_after is not None and event is not None and n_sent == int(close_after):
                if close_partial:
                    send(event[:close_partial])
                rec.stream_outcome = "closed_mid_stream"
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            if event is None:
                if gate_name:
                    gate = self.server.owner._gate(gate_name)
                    gate.reached.set()
                    if not gate.release.wait(GATE_TIMEOUT_S):
                        rec.stream_outcome = "gate_timeout"
                        self.close_connection = True
                        return
                continue
            send(event)
            n_sent += 1
        if comp is not None:
            tail = comp.flush()
            if tail:
                self.wfile.write(f"{len(tail):x}\r\n".encode() + tail + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        rec.stream_outcome = "completed"


class _PlainHandler(_BaseHandler):
    """ "Some other site": answers every GET with a small page."""

    def do_GET(self) -> None:
        rec = self._record()
        self._send_body(rec, 200, b"hello from the other site\n", content_type="text/plain")


# ---------------------------------------------------------------- wire formats


def ws_read(rfile: Any) -> tuple[int, bytes] | None:
    """One WebSocket frame from the client (masked); None at end of input. No fragmentation."""
    head = rfile.read(2)
    if len(head) < 2:
        return None
    opcode, length = head[0] & 0x0F, head[1] & 0x7F
    if length == 126:
        (length,) = struct.unpack(">H", rfile.read(2))
    elif length == 127:
        (length,) = struct.unpack(">Q", rfile.read(8))
    mask = rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
    data = rfile.read(length)
    if len(data) < length:
        return None
    return opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def ws_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One final WebSocket frame (masked when ``mask`` is given, as a client must)."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([bit | 127]) + struct.pack(">Q", n)
    if mask:
        return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + payload


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _sse(obj: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(obj, separators=(',', ':'))}\n\n".encode()


def _video_job(rec: RecordedRequest, req: dict[str, Any]) -> dict[str, Any]:
    """POST /v1/videos answered as OpenAI does: the queued job, with the model, seconds and size it
    runs (the request's, defaults sora-2, 4, 720x1280; ``X-Fake-Video-Seconds`` overrides the
    seconds). Its fields from a JSON body or the form openai-python sends (its file never read)."""
    fields = req or {k: v.decode("utf-8", "replace") for k, v in rec.form.items() if k != "input_reference"}
    seconds = rec.headers.get("x-fake-video-seconds") or str(fields.get("seconds") or "4")
    return {
        "id": "video_" + uuid.uuid4().hex[:12],
        "object": "video",
        "model": fields.get("model") or "sora-2",
        "seconds": seconds,
        "size": fields.get("size") or "720x1280",
        "status": "queued",
        "progress": 0,
        "created_at": int(time.time()),
        "completed_at": None,
        "expires_at": None,
        "prompt": fields.get("prompt"),
        "remixed_from_video_id": None,
        "error": None,
    }


def _openai_error(status: int, message: str | None = None) -> dict[str, Any]:
    if status == 429:
        return {
            "error": {
                "message": message or "Rate limit reached for gpt-4o-mini on requests per min (RPM).",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }
    return {
        "error": {
            "message": message or f"fake error {status}",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }


def _anthropic_error(status: int) -> dict[str, Any]:
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        429: "rate_limit_error",
        529: "overloaded_error",
    }.get(status, "api_error")
    return {
        "type": "error",
        "error": {"type": kind, "message": f"fake {kind}"},
        "request_id": "req_fake0001",
    }


def _error_headers(anthropic: bool) -> dict[str, str]:
    return {"request-id": "req_fake0001"} if anthropic else {"x-request-id": "req_fake0001"}


def _ok_headers(anthropic: bool) -> dict[str, str]:
    if anthropic:
        return {"request-id": "req_fake0002"}
    return {"x-request-id": "req_fake0002", "openai-processing-ms": "12"}


def _chat_body(model: str, text: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake0001",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }


def _chat_events(
    req: dict[str, Any], rec: RecordedRequest, model: str, words: list[str], usage: dict[str, Any]
) -> Iterator[bytes | None]:
    include = bool((req.get("stream_options") or {}).get("include_usage"))
    gate_at_end = rec.headers.get("x-fake-gate-after") == "end"
    gate_after = -1 if gate_at_end else int(rec.headers.get("x-fake-gate-after") or 2)
    base = {
        "id": "chatcmpl-fake0002",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        obj = {
            **base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include:
            obj["usage"] = None
        return _sse(obj)

    yield chunk({"role": "assistant", "content": "", "refusal": None})
    for i, word in enumerate(words):
        if i == gate_after:
            yield None
        yield chunk({"content": word})
    if len(words) <= gate_after:
        yield None
    yield chunk({}, "stop")
    if include:
        yield _sse({**base, "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"
    if gate_at_end:
        yield None


_MEDIA_PATHS = frozenset(
    {"/v1/images/generations", "/v1/images/edits", "/v1/audio/transcriptions", "/v1/audio/translations"}
)
_IMAGE_FIELDS = {"background": "opaque", "output_format": "png", "quality": "high", "size": "1024x1024"}


def _form_fields(content_type: str, body: bytes) -> dict[str, bytes]:
    """The fields of a multipart/form-data body (file contents included), else nothing."""
    if not content_type.lower().startswith("multipart/form-data"):
        return {}
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    fields: dict[str, bytes] = {}
    for part in message.iter_parts():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[str(name)] = part.get_payload(decode=True) or b""
    return fields


def _with_usage(body: dict[str, Any], usage: Any) -> dict[str, Any]:
    return body if usage is None else {**body, "usage": usage}


def _fake_b64(size: int) -> str:
    """``size`` characters of base64 (an image's, as far as metering can tell)."""
    return base64.b64encode(hashlib.sha256(str(size).encode()).digest() * (size // 24 + 1)).decode()[:size]


def _image_body(size: int) -> dict[str, Any]:
    return {"created": int(time.time()), "data": [{"b64_json": _fake_b64(size)}], **_IMAGE_FIELDS}


def _image_events(kind: str, partials: int, size: int, usage: Any) -> Iterator[bytes | None]:
    for i in range(partials):
        event = {"type": f"{kind}.partial_image", "b64_json": _fake_b64(size), "partial_image_index": i}
        yield _sse({**event, "created_at": int(time.time()), **_IMAGE_FIELDS}, f"{kind}.partial_image")
    yield None  # the gate (X-Fake-Gate): the completed event waits for it
    done = {"type": f"{kind}.completed", "b64_json": _fake_b64(size), "created_at": int(time.time())}
    yield _sse(_with_usage({**done, **_IMAGE_FIELDS}, usage), f"{kind}.completed")


def _transcript_events(text: str, usage: Any) -> Iterator[bytes | None]:
    for word in text.split(" "):
        yield _sse({"type": "transcript.text.delta", "delta": word + " ", "logprobs": None})
    yield _sse(_with_usage({"type": "transcript.text.done", "text": text, "logprobs": None}, usage))


def _response_obj(model: str, status: str, text: str | None, usage: dict[str, Any] | None) -> dict[str, Any]:
    output = []
    if text is not None:
        output = [
            {
                "type": "message",
                "id": "msg_fake0001",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
            }
        ]
    return {
        "id": "resp_fake0001",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }


def _responses_body(model: str, text: str, usage: dict[str, Any]) -> dict[str, Any]:
    return _response_obj(model, "completed", text, usage)


def _responses_events(
    req: dict[str, Any], rec: RecordedRequest, model: str, words: list[str], usage: dict[str, Any]
) -> Iterator[bytes | None]:
    gate_after = int(rec.headers.get("x-fake-gate-after") or 2)
    seq = 0

    def ev(kind: str, **fields: Any) -> bytes:
        nonlocal seq
        obj = {"type": kind, "sequence_number": seq, **fields}
        seq += 1
        return _sse(obj, kind)

    item = {
        "id": "msg_fake0001",
        "type": "message",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    ids = {"item_id": "msg_fake0001", "output_index": 0, "content_index": 0}
    yield ev("response.created", response=_response_obj(model, "in_progress", None, None))
    yield ev("response.in_progress", response=_response_obj(model, "in_progress", None, None))
    tool = _image_tool(req)
    if tool is not None:  # the image_generation tool is called first, then the message is written
        call = _image_call(tool, rec)
        at = {"output_index": 0, "item_id": call["id"]}
        started = {**call, "status": "in_progress", "result": None}
        yield ev("response.output_item.added", output_index=0, item=started)
        yield ev("response.image_generation_call.in_progress", **at)
        yield ev("response.image_generation_call.generating", **at)
        said = {k: call[k] for k in ("background", "output_format", "quality", "size")}
        for i in range(_count(tool.get("partial_images"))):
            b64 = _fake_b64(_image_bytes(rec))  # base64 of megabytes with X-Fake-Image-Bytes
            yield ev(
                "response.image_generation_call.partial_image",
                **at,
                partial_image_index=i,
                partial_image_b64=b64,
                **said,
            )
        yield ev("response.image_generation_call.completed", **at)
        yield ev("response.output_item.done", output_index=0, item=call)
    yield ev("response.output_item.added", output_index=0, item=item)
    yield ev(
        "response.content_part.added",
        **ids,
        part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
    )
    for i, word in enumerate(words):
        if i == gate_after:
            yield None
        yield ev("response.output_text.delta", **ids, delta=word, logprobs=[])
    if len(words) <= gate_after:
        yield None
    text = "".join(words)
    yield ev("response.output_text.done", **ids, text=text, logprobs=[])
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    yield ev("response.content_part.done", **ids, part=part)
    done_item = {**item, "status": "completed", "content": [part]}
    yield ev("response.output_item.done", output_index=0, item=done_item)
    done = _with_image_tool(_response_obj(model, "completed", text, usage), req, rec)
    yield ev("response.completed", response=done)


_TOOL_QUALITIES = ("low", "medium", "high")
_TOOL_SIZES = ("1024x1024", "1024x1536", "1536x1024")


def _count(value: Any) -> int:
    return value if type(value) is int and value > 0 else 0


def _image_bytes(rec: RecordedRequest) -> int:
    return int(rec.headers.get("x-fake-image-bytes") or 2000)


def _image_tool(req: dict[str, Any]) -> dict[str, Any] | None:
    """The request's image_generation tool, if the response calls it (never with tool_choice none)."""
    tools = req.get("tools")
    if req.get("tool_choice") == "none" or not isinstance(tools, list):
        return None
    return next((t for t in tools if isinstance(t, dict) and t.get("type") == "image_generation"), None)


def _image_call(tool: dict[str, Any], rec: RecordedRequest) -> dict[str, Any]:
    """The tool's completed call: the quality and size it used (``auto`` or none: high, 1024x1024)."""
    quality = tool.get("quality") if tool.get("quality") in _TOOL_QUALITIES else "high"
    size = tool.get("size") if tool.get("size") in _TOOL_SIZES else "1024x1024"
    return {
        "id": "ig_fake0001",
        "type": "image_generation_call",
        "status": "completed",
        "background": "opaque",
        "output_format": "png",
        "quality": quality,
        "size": size,
        "revised_prompt": "a cat, drawn",
        "result": _fake_b64(_image_bytes(rec)),
    }


def _with_image_tool(body: dict[str, Any], req: dict[str, Any], rec: RecordedRequest) -> dict[str, Any]:
    """A finished response with the image its image_generation tool wrote (first in its output), its
    ``tools`` echoed as sent, and ``X-Fake-Tool-Usage`` as its ``tool_usage`` if given."""
    tool = _image_tool(req)
    if tool is None:
        return body
    body = {**body, "output": [_image_call(tool, rec), *body["output"]], "tools": req["tools"]}
    if "x-fake-tool-usage" in rec.headers:
        body["tool_usage"] = json.loads(rec.headers["x-fake-tool-usage"])
    return body


def _embeddings_body(req: dict[str, Any], model: str, usage: dict[str, Any]) -> dict[str, Any]:
    inputs = req.get("input")
    count = len(inputs) if isinstance(inputs, list) and inputs and isinstance(inputs[0], str) else 1
    vector = [0.25, -0.5, 0.125, 1.0]
    data = []
    for i in range(count):
        emb: Any = vector
        if req.get("encoding_format") == "base64":
            emb = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return {"object": "list", "data": data, "model": model, "usage": usage}


def _messages_body(model: str, text: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "msg_fake0001",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }


def _messages_events(
    req: dict[str, Any], rec: RecordedRequest, model: str, words: list[str], usage: dict[str, Any]
) -> Iterator[bytes | None]:
    gate_after = int(rec.headers.get("x-fake-gate-after") or 2)
    n_deltas = int(rec.headers.get("x-fake-deltas") or 1)
    final_out = int(usage.get("output_tokens", 0))
    start_usage = {**usage, "output_tokens": 1}
    message = {
        "id": "msg_fake0002",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    yield _sse({"type": "message_start", "message": message}, "message_start")
    yield _sse(
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        "content_block_start",
    )
    yield _sse({"type": "ping"}, "ping")
    for i, word in enumerate(words):
        if i == gate_after:
            yield None
        yield _sse(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}},
            "content_block_delta",
        )
    if len(words) <= gate_after:
        yield None
    yield _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
    # Several message_delta events carry CUMULATIVE output_tokens: the last one is the total.
    for k in range(n_deltas, 0, -1):
        out = max(final_out - 10 * (k - 1), 1)
        yield _sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn" if k == 1 else None, "stop_sequence": None},
                "usage": {"output_tokens": out},
            },
            "message_delta",
        )
    yield _sse({"type": "message_stop"}, "message_stop")


# ---------------------------------------------------------------- public API


class _Base:
    handler: type[BaseHTTPRequestHandler]

    def __init__(self, directory: Path, name: str, hosts: list[str]) -> None:
        self.cert_path, self.key_path = make_cert(directory, name, hosts)
        self._server = _TLSServer(self.handler, _server_context(self.cert_path, self.key_path), self)
        self.port: int = self._server.server_address[1]
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._gates: dict[str, _Gate] = {}
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"fake-{name}", daemon=True)
        self._thread.start()

    @property
    def cert_der(self) -> bytes:
        """The server certificate, DER."""
        return ssl.PEM_cert_to_DER_cert(self.cert_path.read_text())

    def _add(self, rec: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(rec)

    def _gate(self, name: str) -> _Gate:
        with self._lock:
            return self._gates.setdefault(name, _Gate())

    @property
    def requests(self) -> list[RecordedRequest]:
        """All requests received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def requests_for(self, tag: str) -> list[RecordedRequest]:
        """Requests whose ``X-Test-Tag`` header is ``tag``."""
        return [r for r in self.requests if r.tag == tag]

    def close(self) -> None:
        """Stop serving and release every gate."""
        with self._lock:
            gates = list(self._gates.values())
        for gate in gates:
            gate.release.set()
        self._server.shutdown()
        self._server.server_close()


class FakeProvider(_Base):
    """The fake OpenAI + Anthropic API (one HTTPS port, routed by path)."""

    handler = _ProviderHandler

    def start_background(self, model: str, text: str, usage: dict[str, Any]) -> dict[str, Any]:
        """A Responses call in background mode: its queued answer (the usage comes on GET)."""
        with self._lock:
            response_id = f"resp_bg{len(self._background) + 1:04d}"
            self._background[response_id] = [model, text, usage, 1]
        return _response_obj(model, "queued", None, None) | {"id": response_id, "background": True}

    def background_response(self, path: str) -> dict[str, Any] | None:
        """``GET /v1/responses/{id}`` of a background response: in progress once, then completed."""
        response_id = path.rsplit("/", 1)[-1]
        with self._lock:
            entry = self._background.get(response_id) if path.startswith("/v1/responses/") else None
            if entry is None:
                return None
            model, text, usage, running = entry
            entry[3] = max(0, running - 1)
        if running:
            body = _response_obj(model, "in_progress", None, None)
        else:
            body = _response_obj(model, "completed", text, usage)
        return body | {"id": response_id, "background": True}

    def add_file(self, content: bytes, purpose: str) -> dict[str, Any]:
        """An uploaded file: kept, and answered as OpenAI's File object."""
        with self._lock:
            file_id = f"file-{len(self._files) + 1:04d}"
            self._files[file_id] = content
        created = int(time.time())
        return {"id": file_id, "object": "file", "bytes": len(content), "created_at": created} | {
            "filename": "input.jsonl",
            "purpose": purpose,
            "status": "processed",
        }

    def start_batch(self, file_id: str, endpoint: str, usage: dict[str, Any]) -> dict[str, Any] | None:
        """``POST /v1/batches``: the Batch object, validating (None: no such file)."""
        with self._lock:
            content = self._files.get(file_id)
            if content is None:
                return None
            first = json.loads(content.splitlines()[0]) if content.strip() else {}
            requested = str(first.get("body", {}).get("model"))
            batch = {
                "id": f"batch_{len(self._batches) + 1:04d}",
                "object": "batch",
                "endpoint": endpoint,
                "input_file_id": file_id,
                "completion_window": "24h",
                "created_at": int(time.time()),
                "status": "validating",
                "model": None,
                "usage": None,
            }
            self._batches[batch["id"]] = [batch, SNAPSHOTS.get(requested, requested), usage, 1]
        return dict(batch)

    def batch_object(self, path: str) -> dict[str, Any] | None:
        """``GET /v1/batches/{id}``: in progress once, then ended (completed, or cancelled);
        ``GET /v1/batches``: every batch as it stands, newest first."""
        with self._lock:
            if path == "/v1/batches":
                data = [self._batch_now(entry) for entry in reversed(self._batches.values())]
                return {"object": "list", "data": data, "has_more": False}
            entry = self._batches.get(path.rsplit("/", 1)[-1]) if path.startswith("/v1/batches/") else None
            if entry is None:
                return None
            now = self._batch_now(entry)
            entry[3] = max(0, entry[3] - 1)
            return now

    @staticmethod
    def _batch_now(entry: list[Any]) -> dict[str, Any]:
        batch, model, usage, running = entry
        if batch["status"] == "cancelling":
            return batch | {"status": "cancelled", "model": model, "usage": usage}
        if running:
            return batch | {"status": "in_progress"}
        return batch | {"status": "completed", "model": model, "usage": usage}

    def cancel_batch(self, path: str) -> dict[str, Any] | None:
        """``POST /v1/batches/{id}/cancel``: cancelling (not final)."""
        with self._lock:
            entry = self._batches.get(path.rsplit("/", 1)[-1]) if path.startswith("/v1/batches/") else None
            if entry is None:
                return None
            entry[0]["status"] = "cancelling"
            return dict(entry[0])

    def start_message_batch(self, req: dict[str, Any], usage: dict[str, Any]) -> dict[str, Any]:
        """``POST /v1/messages/batches``: the Message Batch, in progress."""
        requests = [r for r in req.get("requests") or [] if isinstance(r, dict)]
        with self._lock:
            batch_id = f"msgbatch_{len(self._message_batches) + 1:04d}"
            self._message_batches[batch_id] = [requests, usage, 1]
        return self._message_batch_obj(batch_id, "in_progress", len(requests))

    def message_batch(self, batch_id: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._message_batches.get(batch_id)
            if entry is None:
                return None
            running = entry[2]
            entry[2] = max(0, running - 1)
        return self._message_batch_obj(batch_id, "in_progress" if running else "ended", len(entry[0]))

    def message_batch_results(self, batch_id: str) -> list[dict[str, Any]] | None:
        with self._lock:
            entry = self._message_batches.get(batch_id)
        if entry is None:
            return None
        requests, usage, _ = entry
        lines = []
        for request in requests:
            custom_id = str(request.get("custom_id"))
            if custom_id.startswith("fail"):
                error = {
                    "type": "error",
                    "error": {"type": "invalid_request_error", "message": "bad request"},
                }
                lines.append({"custom_id": custom_id, "result": {"type": "errored", "error": error}})
                continue
            requested = str((request.get("params") or {}).get("model"))
            message = _messages_body(SNAPSHOTS.get(requested, requested), "w0 w1 ", usage)
            lines.append({"custom_id": custom_id, "result": {"type": "succeeded", "message": message}})
        return lines

    @staticmethod
    def _message_batch_obj(batch_id: str, status: str, n: int) -> dict[str, Any]:
        now = dt.datetime.now(dt.UTC)
        ended = status == "ended"
        return {
            "id": batch_id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": {
                "processing": 0 if ended else n,
                "succeeded": n if ended else 0,
                "errored": 0,
                "canceled": 0,
                "expired": 0,
            },
            "created_at": now.isoformat(),
            "expires_at": (now + dt.timedelta(days=1)).isoformat(),
            "ended_at": now.isoformat() if ended else None,
            "cancel_initiated_at": None,
            "archived_at": None,
            "results_url": f"https://api.anthropic.com/v1/messages/batches/{batch_id}/results"
            if ended
            else None,
        }

    def __init__(self, directory: Path) -> None:
        self._background: dict[str, list[Any]] = {}  # id -> [model, text, usage, GETs left running]
        self._message_batches: dict[str, list[Any]] = {}  # id -> [requests, usage, GETs left running]
        self._files: dict[str, bytes] = {}  # uploaded files, by id
        self._batches: dict[str, list[Any]] = {}  # id -> [batch object, model, usage, GETs left running]
        super().__init__(
            directory, "fakeprovider", ["127.0.0.1", "localhost", "api.openai.com", "api.anthropic.com"]
        )

    def gate(self, name: str) -> threading.Event:
        """The event a stream sent with ``X-Fake-Gate: name`` waits on (set it to release)."""
        return self._gate(name).release

    def wait_gate_reached(self, name: str, timeout: float = 10.0) -> bool:
        """Wait until a stream with this gate has sent its first events and is holding."""
        return self._gate(name).reached.wait(timeout)


class OtherSite(_Base):
    """A separate HTTPS server with its own, distinct self-signed certificate."""

    handler = _PlainHandler

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, "othersite", ["localhost", "127.0.0.1"])


class RecordingHandler(BaseHTTPRequestHandler):
    """A small fake's request handler: HTTP/1.1, no access log, JSON bodies recorded on its fake."""

    protocol_version = "HTTP/1.1"
    fake: Any  # the fake whose ``requests`` list gets (path, lower-case headers, body); see serve_tls

    def log_message(self, *args: Any) -> None:
        """No access log on stderr."""

    def read_json(self) -> Any:
        """The request's JSON body (``{}`` if empty), recorded on the fake."""
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        self.fake.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        return body

    def send_whole(self, status: int, ctype: str, data: bytes, extra: dict[str, Any] | None = None) -> None:
        """One complete answer with a Content-Length (and ``extra`` headers)."""
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        for name, value in (extra or {}).items():
            self.send_header(name, str(value))
        self.end_headers()
        self.wfile.write(data)

    def send_chunked(self, ctype: str, pieces: list[bytes], extra: dict[str, Any] | None = None) -> None:
        """A 200 answer streamed with chunked encoding, one flushed chunk per piece."""
        self.send_response(200)
        self.send_header("content-type", ctype)
        for name, value in (extra or {}).items():
            self.send_header(name, str(value))
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for piece in pieces:
            self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")


class TLSServer:
    """``handler`` served over HTTPS on 127.0.0.1 (a free port) from a thread, for ``fake``."""

    def __init__(self, handler: type[RecordingHandler], fake: Any, cert: Path, key: Path) -> None:
        handler.fake = fake
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self.port: int = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False
