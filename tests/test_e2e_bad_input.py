"""Bad input, end to end: real clients -> mitmdump + tokometer -> the fake provider.

Each test asserts what the client got AND the rows of the DuckDB file: malformed and
non-JSON request bodies, a 10 MB body, upstream closing mid-stream, upstream sending
invalid SSE, HTTP/2 clients, non-billable paths and a WebSocket upgrade (OpenAI Realtime).
Clients are in-process ``httpx2`` (the openai SDK's HTTP client) and raw sockets.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
import time
from decimal import Decimal
from typing import Any

import httpx2
import pytest
from conftest import ANTHROPIC_KEY, OPENAI_KEY, ProxyProcess
from fakeprovider import FakeProvider, RecordedRequest, ws_frame

from addon.token_estimate import count_text, estimate_usage

OPENAI = "https://api.openai.com"
ANTHROPIC = "https://api.anthropic.com"
SNAPSHOT = "gpt-4o-mini-2024-07-18"

# ---------------------------------------------------------------- helpers


def tag() -> str:
    """A unique request label (the fake provider lives for the whole session)."""
    return os.urandom(6).hex()


def chat_usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def anthropic_usage(inp: int, cache_read: int, out: int) -> dict[str, Any]:
    return {
        "input_tokens": inp,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cache_read,
        "output_tokens": out,
    }


def openai_headers(t: str, usage: dict[str, Any] | None = None, **fake: str) -> dict[str, str]:
    headers = {"authorization": f"Bearer {OPENAI_KEY}", "x-test-tag": t}
    if usage is not None:
        headers["x-fake-usage"] = json.dumps(usage, separators=(",", ":"))
    headers.update({f"x-fake-{k.replace('_', '-')}": v for k, v in fake.items()})
    return headers


def anthropic_headers(t: str, usage: dict[str, Any] | None = None, **fake: str) -> dict[str, str]:
    headers = openai_headers(t, usage, **fake)
    del headers["authorization"]
    headers.update({"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"})
    return headers


def client(proxy: ProxyProcess, http2: bool = False) -> httpx2.Client:
    """An HTTP client going through the proxy, trusting its CA only."""
    return httpx2.Client(
        proxy=f"http://127.0.0.1:{proxy.port}",
        verify=ssl.create_default_context(cafile=str(proxy.ca_path)),
        trust_env=False,
        http2=http2,
        timeout=30.0,
    )


def settle(proxy: ProxyProcess, n: int) -> list[dict[str, Any]]:
    """Wait for ``n`` rows, stop the proxy (SIGTERM flushes), return exactly ``n`` rows by ts."""
    proxy.wait_rows(n)
    proxy.terminate()
    rows = proxy.rows()
    assert len(rows) == n, f"expected exactly {n} rows, got {len(rows)}: {rows}"
    return rows


def one_request(fake: FakeProvider, t: str) -> RecordedRequest:
    recs = fake.requests_for(t)
    assert len(recs) == 1, f"fake received {len(recs)} requests tagged {t}"
    return recs[0]


def wait_done(rec: RecordedRequest) -> RecordedRequest:
    assert rec.done.wait(10), "the fake never finished its answer"
    return rec


def money(value: Any) -> Decimal:
    assert value is not None, "cost_usd is NULL"
    return round(Decimal(str(value)), 10)


def mini_cost(prompt: int, completion: int) -> Decimal:
    """gpt-4o-mini: 0.15 in / 0.60 out per 1M tokens."""
    return round((prompt * Decimal("0.15") + completion * Decimal("0.60")) / 10**6, 10)


def tokens(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(
        row[c]
        for c in (
            "input_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "output_tokens",
            "reasoning_tokens",
        )
    )


def read_stream(response: httpx2.Response) -> tuple[bytes, str | None]:
    """Every raw (not content-decoded) byte of a streamed body, and how the stream ended."""
    got = bytearray()
    try:
        for chunk in response.iter_raw():
            got += chunk
    except httpx2.HTTPError as exc:  # the proxy cut the connection: the stream ends early
        return bytes(got), type(exc).__name__
    return bytes(got), None


# ---------------------------------------------------------------- 1. malformed request bodies

DEEP = 20_000  # deeper than Python's json parser goes (10,000 fails), not too deep for others

BAD_BODIES: list[tuple[str, str, str, bytes, dict[str, str], str]] = [
    # (label, path, content-type, body, extra headers, the row's error)
    (
        "truncated JSON",
        "/v1/chat/completions",
        "application/json",
        b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"',
        {},
        "request body is not JSON (JSONDecodeError)",
    ),
    (
        "plain text",
        "/v1/chat/completions",
        "text/plain",
        b"please complete this",
        {},
        "request body is not JSON (JSONDecodeError)",
    ),
    (
        "invalid UTF-8",
        "/v1/chat/completions",
        "application/json",
        b'{"model":"gpt-4o-mini","x":"\x80\xff\xfe"}',
        {},
        "request body is not JSON (UnicodeDecodeError)",
    ),
    (
        "a JSON array",
        "/v1/chat/completions",
        "application/json",
        b'[{"model":"gpt-4o-mini"}]',
        {},
        "request body is not a JSON object",
    ),
    ("empty", "/v1/responses", "application/json", b"", {}, "request body is not JSON (JSONDecodeError)"),
    (
        "form-encoded",
        "/v1/embeddings",
        "application/x-www-form-urlencoded",
        b"model=text-embedding-3-small&input=hello",
        {},
        "request body is not JSON (JSONDecodeError)",
    ),
    (
        "gzip-labelled garbage",
        "/v1/chat/completions",
        "application/json",
        b"this is not gzip",
        {"content-encoding": "gzip"},
        "request body: content-encoding 'gzip' not decodable (ValueError)",
    ),
    (  # mitmproxy raises TypeError for a str-to-str codec: the call still has its row
        "rot13-labelled",
        "/v1/chat/completions",
        "application/json",
        b'{"model":"gpt-4o-mini","messages":[]}',
        {"content-encoding": "rot13"},
        "request body: content-encoding 'rot13' not decodable (TypeError)",
    ),
    (
        "anthropic truncated JSON",
        "/v1/messages",
        "application/json",
        b'{"model":"claude-haiku-4-5","max_tokens":',
        {},
        "request body is not JSON (JSONDecodeError)",
    ),
]


def test_malformed_request_bodies_pass_through_and_the_row_says_why(
    proxy: ProxyProcess, fake_provider: FakeProvider
) -> None:
    sent: list[tuple[str, int]] = []
    with client(proxy) as http:
        for i, (label, path, content_type, body, extra, _) in enumerate(BAD_BODIES):
            t = tag()
            prompt = 1001 + i  # tells the rows apart
            anthropic = path == "/v1/messages"
            if anthropic:
                headers = anthropic_headers(
                    t, anthropic_usage(prompt, 0, 10), model="claude-haiku-4-5-20251001"
                )
            else:
                headers = openai_headers(t, chat_usage(prompt, 10), model=SNAPSHOT)
            headers.update({"content-type": content_type, **extra})
            host = ANTHROPIC if anthropic else OPENAI
            r = http.post(host + path, content=body, headers=headers)
            # The fake answered (it reads no model from such a body): the client gets its answer unchanged.
            assert r.status_code == 200, (label, r.text)
            assert r.json()["model"] == ("claude-haiku-4-5-20251001" if anthropic else SNAPSHOT), label
            rec = one_request(fake_provider, t)
            assert rec.body == body, label  # byte for byte
            assert rec.headers["content-type"] == content_type, label
            assert rec.headers.get("content-encoding") == extra.get("content-encoding"), label
            assert "stream_options" not in rec.body.decode("latin-1"), label
            sent.append((label, prompt))
        # The one a real provider would answer: 400, not billed.
        t400 = tag()
        r = http.post(
            OPENAI + "/v1/chat/completions",
            content=b"{oops",
            headers={**openai_headers(t400, status="400"), "content-type": "application/json"},
        )
        assert r.status_code == 400
        assert r.json()["error"]["message"] == "fake error 400"
        assert one_request(fake_provider, t400).body == b"{oops"

    rows = settle(proxy, len(BAD_BODIES) + 1)
    by_prompt = {r["input_tokens"]: r for r in rows}
    for (label, path, _, _, _, error), (_, prompt) in zip(BAD_BODIES, sent, strict=True):
        row = by_prompt[prompt]
        anthropic = path == "/v1/messages"
        assert row["provider"] == ("anthropic" if anthropic else "openai"), label
        assert row["path"] == path, label
        assert row["error"] == error, label
        assert row["status_code"] == 200, label
        assert row["action"] == "allowed", label
        assert row["model_requested"] is None and row["model_sent"] is None, label
        assert row["streamed"] is False and row["aborted"] is False, label
        assert row["usage_source"] == "reported", label
        assert tokens(row) == (prompt, 0, 0, 10, 0), label
        assert row["price_status"] == "priced", label
        if anthropic:
            assert row["model_reported"] == "claude-haiku-4-5-20251001"
            assert money(row["cost_usd"]) == round((prompt * Decimal(1) + 10 * Decimal(5)) / 10**6, 10)
        else:
            assert row["model_reported"] == SNAPSHOT, label
            assert money(row["cost_usd"]) == mini_cost(prompt, 10), label
    [row400] = [r for r in rows if r["status_code"] == 400]
    assert row400["error"] == "request body is not JSON (JSONDecodeError); upstream answered 400"
    assert row400["price_status"] == "not_billed" and money(row400["cost_usd"]) == 0
    assert row400["usage_source"] == "none" and row400["input_tokens"] is None


@pytest.mark.parametrize("depth", [DEEP, 200_000], ids=["inline", "off-loop"])
def test_deeply_nested_request_body_passes_and_the_row_says_why(
    proxy: ProxyProcess, fake_provider: FakeProvider, depth: int
) -> None:
    """JSON nested deeper than Python's parser goes (other parsers go deeper) is still a call."""
    t = tag()
    body = b'{"model":"gpt-4o-mini","metadata":' + b"[" * depth + b"]" * depth + b"}"
    with client(proxy) as http:
        r = http.post(
            OPENAI + "/v1/chat/completions",
            content=body,
            headers={
                **openai_headers(t, chat_usage(77, 7), model=SNAPSHOT),
                "content-type": "application/json",
            },
        )
    assert r.status_code == 200
    assert one_request(fake_provider, t).body == body
    [row] = settle(proxy, 1)
    assert row["error"] == "request body is not JSON (RecursionError)"
    assert row["status_code"] == 200 and row["action"] == "allowed"
    assert tokens(row) == (77, 0, 0, 7, 0)
    assert money(row["cost_usd"]) == mini_cost(77, 7)


# ---------------------------------------------------------------- 2. a 10 MB request body


def test_10mb_request_body(proxy: ProxyProcess, fake_provider: FakeProvider) -> None:
    words = (b"lorem ipsum dolor sit amet " * 400_000)[: 10 * 1024 * 1024]
    body = (
        b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"' + words + b'"}],"temperature":0.5}'
    )
    assert len(body) > 10 * 1024 * 1024
    t1, t2 = tag(), tag()
    with client(proxy) as http:
        start = time.monotonic()
        r = http.post(
            OPENAI + "/v1/chat/completions",
            content=body,
            headers={**openai_headers(t1, chat_usage(2_500_000, 5)), "content-type": "application/json"},
        )
        elapsed = time.monotonic() - start
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] == "w0 w1 w2 w3 w4 "
        rec = one_request(fake_provider, t1)
        assert len(rec.body) == len(body)
        assert hashlib.sha256(rec.body).digest() == hashlib.sha256(body).digest()  # byte-identical

        # Streamed: the proxy adds stream_options to the 10 MB body, the rest stays as sent.
        stream_body = body[:-1] + b',"stream":true}'
        with http.stream(
            "POST",
            OPENAI + "/v1/chat/completions",
            content=stream_body,
            headers={**openai_headers(t2, chat_usage(2_500_001, 6)), "content-type": "application/json"},
        ) as r2:
            raw, ended = read_stream(r2)
        assert ended is None
        data = [line for line in raw.decode().splitlines() if line.startswith("data: ")]
        assert data[-1] == "data: [DONE]" and len(data) == 8  # role + 5 words + finish + [DONE]
        assert b'"usage":{' not in raw  # the injected usage chunk was dropped
        rec2 = one_request(fake_provider, t2)
        sent = json.loads(stream_body)
        assert rec2.json == {**sent, "stream_options": {"include_usage": True}}
    assert elapsed < 20, f"10 MB took {elapsed:.1f} s through the proxy"

    rows = settle(proxy, 2)
    by_prompt = {r["input_tokens"]: r for r in rows}
    plain, streamed = by_prompt[2_500_000], by_prompt[2_500_001]
    for row in (plain, streamed):
        assert row["error"] is None
        assert row["status_code"] == 200 and row["aborted"] is False
        assert row["model_requested"] == "gpt-4o-mini"
        assert row["usage_source"] == "reported"
        assert row["price_status"] == "priced"
    assert plain["streamed"] is False and streamed["streamed"] is True
    assert tokens(plain) == (2_500_000, 0, 0, 5, 0)
    assert tokens(streamed) == (2_500_001, 0, 0, 6, 0)
    assert money(plain["cost_usd"]) == mini_cost(2_500_000, 5)
    assert money(streamed["cost_usd"]) == mini_cost(2_500_001, 6)


# ---------------------------------------------------------------- 3. upstream closes mid-stream


def test_upstream_closing_mid_stream(proxy: ProxyProcess, fake_provider: FakeProvider) -> None:
    t_ant, t_oai, t_inj = tag(), tag(), tag()
    anthropic_body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    openai_body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hello there"}],
    }
    with client(proxy) as http:
        # Anthropic: message_start, content_block_start, ping, one delta, then half an event.
        with http.stream(
            "POST",
            ANTHROPIC + "/v1/messages",
            json=anthropic_body,
            headers=anthropic_headers(
                t_ant, anthropic_usage(300, 2000, 50), close_after="4", close_partial="20"
            ),
        ) as r:
            assert r.status_code == 200
            got_ant, ended_ant = read_stream(r)
        # OpenAI chat asking for usage itself (so the stream is forwarded as is): cut before the usage chunk.
        with http.stream(
            "POST",
            OPENAI + "/v1/chat/completions",
            json=openai_body,
            headers=openai_headers(t_oai, chat_usage(40, 9), close_after="3", close_partial="7"),
        ) as r:
            assert r.status_code == 200
            got_oai, ended_oai = read_stream(r)
        # OpenAI chat where the proxy asked for usage: forwarded event by event, so the cut event is held.
        injected_body = {
            **openai_body,
            "stream_options": None,
            "messages": [{"role": "user", "content": "yo"}],
        }
        with http.stream(
            "POST",
            OPENAI + "/v1/chat/completions",
            json=injected_body,
            headers=openai_headers(t_inj, chat_usage(41, 9), close_after="3", close_partial="7"),
        ) as r:
            assert r.status_code == 200
            got_inj, ended_inj = read_stream(r)

    rec_ant = wait_done(one_request(fake_provider, t_ant))
    rec_oai = wait_done(one_request(fake_provider, t_oai))
    rec_inj = wait_done(one_request(fake_provider, t_inj))
    assert rec_inj.json["stream_options"] == {"include_usage": True}
    assert rec_ant.stream_outcome == rec_oai.stream_outcome == rec_inj.stream_outcome == "closed_mid_stream"
    # The client saw the stream end, after exactly what upstream had sent.
    assert ended_ant == ended_oai == "RemoteProtocolError"
    assert got_ant == bytes(rec_ant.sent)
    assert got_ant.count(b"\n\n") == 4 and got_ant.endswith(b"event: content_block")
    assert got_oai == bytes(rec_oai.sent)
    assert got_oai.count(b"\n\n") == 3 and got_oai.endswith(b"data: {")
    assert ended_inj == "RemoteProtocolError"
    assert got_inj == bytes(rec_inj.sent)[:-7]  # every whole event; the half one never completes
    assert got_inj.count(b"\n\n") == 3 and got_inj.endswith(b"\n\n")

    ant, oai, inj = settle(proxy, 3)
    for row in (ant, oai, inj):
        assert row["streamed"] is True
        assert row["aborted"] is True
        assert row["status_code"] == 200
        assert row["ttft_ms"] is not None and row["ttft_ms"] <= row["duration_ms"]
        assert row["model_reported"] is not None
    # Anthropic: message_start's input + cache counts; its output (1) a placeholder, the output
    # counted from the one delta that went by instead.
    out = count_text("w0 ", "claude-haiku-4-5")
    assert ant["usage_source"] == "estimated"
    assert tokens(ant) == (2300, 2000, 0, out, 0)
    assert ant["price_status"] == "priced"
    # 300 * 1 + 2000 * 0.10 + out * 5, per 1M
    assert money(ant["cost_usd"]) == (Decimal(500) + out * 5) / 1_000_000
    cut = "HTTP/1 protocol error: peer closed connection without sending complete message body"
    estimated = "output tokens estimated: the stream ended before its final usage"
    assert ant["error"] == f"{cut} (incomplete chunked read); {estimated}"
    assert oai["error"] == f"{cut} (incomplete chunked read); no usage in stream"
    # OpenAI: no usage came; the row says so and counts the tokens itself (the text the client got).
    expected = estimate_usage("chat", openai_body, "w0 w1 ", "gpt-4o-mini")
    assert expected.output_tokens > 0
    assert oai["usage_source"] == "estimated"
    assert tokens(oai) == (expected.input_tokens, 0, 0, expected.output_tokens, 0)
    assert oai["price_status"] == "priced"
    assert money(oai["cost_usd"]) == mini_cost(expected.input_tokens, expected.output_tokens)
    assert oai["model_reported"] == SNAPSHOT
    assert inj["error"] == oai["error"]
    expected = estimate_usage("chat", injected_body, "w0 w1 ", "gpt-4o-mini")
    assert (inj["usage_source"], tokens(inj)) == (
        "estimated",
        (expected.input_tokens, 0, 0, expected.output_tokens, 0),
    )


# ---------------------------------------------------------------- 4. upstream sends invalid SSE

GARBAGE_SSE = (
    b"data: {not json at all\n"
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"usage":\n'
    b"\x00\xff\xfe binary line without a colon\r\n"
    b": a comment\r"
    b"retry: soon\n\n\n\n"
    b"data:\n"
    b'data: {"choices":[],"usage":"lots"}\n\n'
    b"id: 7\n"
    b"data: [DONE]"  # no final line ending
)
GARBAGE_SPLITS = "1,2,3,5,8,13,21,34,55,89,144,200,201,202"


def garbage_headers(base: dict[str, str], body: bytes = GARBAGE_SSE, **more: str) -> dict[str, str]:
    return {
        **base,
        "x-fake-raw-stream": base64.b64encode(body).decode(),
        "x-fake-raw-splits": GARBAGE_SPLITS,
        **{f"x-fake-{k.replace('_', '-')}": v for k, v in more.items()},
    }


def test_upstream_sending_invalid_sse(proxy: ProxyProcess, fake_provider: FakeProvider) -> None:
    chat = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    messages = {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    not_gzip = b"data: plainly not gzip\n\n" * 3
    calls = [
        # (label, url, body, headers, what upstream sends)
        (
            "anthropic",
            ANTHROPIC + "/v1/messages",
            messages,
            garbage_headers(anthropic_headers(tag())),
            GARBAGE_SSE,
        ),
        # The proxy adds stream_options and regroups the stream by events to drop the usage chunk.
        (
            "openai regrouped",
            OPENAI + "/v1/chat/completions",
            chat,
            garbage_headers(openai_headers(tag())),
            GARBAGE_SSE,
        ),
        (
            "openai as is",
            OPENAI + "/v1/chat/completions",
            {**chat, "stream_options": {"include_usage": True}},
            garbage_headers(openai_headers(tag())),
            GARBAGE_SSE,
        ),
        (
            "labelled gzip",
            ANTHROPIC + "/v1/messages",
            messages,
            garbage_headers(anthropic_headers(tag()), not_gzip, content_encoding="gzip"),
            not_gzip,
        ),
    ]
    with client(proxy) as http:
        for label, url, body, headers, upstream in calls:
            with http.stream("POST", url, json=body, headers=headers) as r:
                assert r.status_code == 200, label
                got, ended = read_stream(r)
            assert ended is None, label
            assert got == upstream, label  # exactly the bytes upstream sent, in order
            rec = wait_done(one_request(fake_provider, headers["x-test-tag"]))
            assert bytes(rec.sent) == upstream, label
            if label == "labelled gzip":
                assert r.headers["content-encoding"] == "gzip"

    rows = settle(proxy, len(calls))  # in request order
    for (label, *_), row in zip(calls, rows, strict=True):
        assert row["streamed"] is True, label
        assert row["aborted"] is False, label
        assert row["status_code"] == 200, label
        assert row["model_reported"] is None, label
        # No usage reported: the row says so, and holds the offline estimate (no text came).
        assert row["usage_source"] == "estimated", label
        body = messages if row["provider"] == "anthropic" else chat
        flavor = "messages" if row["provider"] == "anthropic" else "chat"
        estimate = estimate_usage(flavor, body, None, body["model"])
        assert tokens(row) == (estimate.input_tokens, 0, 0, 0, 0), label
    anthropic, regrouped, as_is, gz = rows
    assert anthropic["error"] == "no usage in stream (1 event(s) not JSON)"
    assert regrouped["error"] == "stream ended without usage"
    assert as_is["error"] == "stream ended without usage"
    assert gz["error"] == (
        "no usage in stream; stream not metered: DecodeError: corrupt encoded body: "
        "Error -3 while decompressing data: incorrect header check"
    )


# ---------------------------------------------------------------- 5. HTTP/2 clients


def test_http2_client(proxy: ProxyProcess, fake_provider: FakeProvider) -> None:
    t1, t2, t3 = tag(), tag(), tag()
    with client(proxy, http2=True) as http:
        r = http.post(
            OPENAI + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers=openai_headers(t1, chat_usage(500, 50)),
        )
        assert r.http_version == "HTTP/2"
        assert r.status_code == 200
        assert r.json()["usage"]["prompt_tokens"] == 500
        # A stream with the usage chunk injected and dropped, over HTTP/2.
        with http.stream(
            "POST",
            OPENAI + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
            headers=openai_headers(t2, chat_usage(600, 60)),
        ) as r2:
            assert r2.http_version == "HTTP/2"
            raw, ended = read_stream(r2)
        assert ended is None
        chunks = [json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: {")]
        assert len(chunks) == 7 and all(c["choices"] for c in chunks)
        assert raw.endswith(b"data: [DONE]\n\n")
        with http.stream(
            "POST",
            ANTHROPIC + "/v1/messages",
            json={"model": "claude-haiku-4-5", "max_tokens": 64, "stream": True, "messages": []},
            headers=anthropic_headers(t3, anthropic_usage(70, 0, 30)),
        ) as r3:
            assert r3.http_version == "HTTP/2"
            raw3, ended3 = read_stream(r3)
        assert ended3 is None
        assert raw3 == bytes(wait_done(one_request(fake_provider, t3)).sent)
    for t in (t1, t2, t3):
        assert one_request(fake_provider, t).http_version == "HTTP/1.1"  # the fake speaks HTTP/1.1 only

    rows = settle(proxy, 3)
    nonstream, stream, ant = rows
    assert (nonstream["provider"], nonstream["streamed"], tokens(nonstream)) == (
        "openai",
        False,
        (500, 0, 0, 50, 0),
    )
    assert (stream["provider"], stream["streamed"], tokens(stream)) == ("openai", True, (600, 0, 0, 60, 0))
    assert (ant["provider"], ant["streamed"], tokens(ant)) == ("anthropic", True, (70, 0, 0, 30, 0))
    for row in rows:
        assert row["error"] is None
        assert row["aborted"] is False
        assert row["status_code"] == 200
        assert row["usage_source"] == "reported"
        assert row["price_status"] == "priced"
    assert money(nonstream["cost_usd"]) == mini_cost(500, 50)
    assert money(stream["cost_usd"]) == mini_cost(600, 60)
    assert money(ant["cost_usd"]) == Decimal("0.00022")  # 70 * 1 + 30 * 5, per 1M


# ---------------------------------------------------------------- 6. non-billable paths

NON_BILLABLE: list[tuple[str, str, str, bytes]] = [
    # (host, method, path, body)
    (OPENAI, "GET", "/v1/models/gpt-4o-mini", b""),
    (OPENAI, "GET", "/v1/chat/completions?limit=5", b""),  # list stored completions
    (OPENAI, "GET", "/v1/responses/resp_123", b""),
    (OPENAI, "DELETE", "/v1/responses/resp_123", b""),
    (OPENAI, "POST", "/v1/responses/resp_123/cancel", b""),
    (OPENAI, "POST", "/v1/chat/completions/chatcmpl_1", b'{"metadata":{"a":"b"}}'),  # update stored
    (OPENAI, "POST", "/v1/moderations", b'{"model":"omni-moderation-latest","input":"hi"}'),
    (
        OPENAI,
        "POST",
        "/v1/files",
        b"--x\r\nContent-Disposition: form-data; name=purpose\r\n\r\nbatch\r\n--x--\r\n",
    ),
    # batches the proxy did not see created (their creation is metered: tests/test_e2e_batches.py)
    (OPENAI, "GET", "/v1/batches/batch_123", b""),
    (OPENAI, "POST", "/v1/batches/batch_123/cancel", b""),
    (OPENAI, "GET", "/v1/batches?limit=2", b""),
    (ANTHROPIC, "POST", "/v1/messages/count_tokens", b'{"model":"claude-haiku-4-5","messages":[]}'),
    (ANTHROPIC, "GET", "/v1/messages/batches/msgbatch_123", b""),
    (ANTHROPIC, "GET", "/v1/messages/batches/msgbatch_123/results", b""),
    (ANTHROPIC, "GET", "/v1/models", b""),
]


def test_non_billable_paths_pass_through_unbilled(proxy: ProxyProcess, fake_provider: FakeProvider) -> None:
    with client(proxy) as http:
        r = http.get(OPENAI + "/v1/models", headers={"authorization": f"Bearer {OPENAI_KEY}"})
        assert r.status_code == 200
        assert [m["id"] for m in r.json()["data"]] == ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
        for host, method, path, body in NON_BILLABLE:
            t = tag()
            headers = {**openai_headers(t), "x-fake-echo": "1", "content-type": "application/json"}
            r = http.request(method, host + path, content=body, headers=headers)
            assert r.status_code == 200, path
            assert r.json() == {
                "echo": True,
                "method": method,
                "path": path,
                "length": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
            }, path
            assert one_request(fake_provider, t).headers["authorization"] == f"Bearer {OPENAI_KEY}"
        # One billable call afterwards: the only row.
        t = tag()
        r = http.post(
            OPENAI + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": []},
            headers=openai_headers(t, chat_usage(31, 3)),
        )
        assert r.status_code == 200
    [row] = settle(proxy, 1)
    assert (row["path"], tokens(row)) == ("/v1/chat/completions", (31, 0, 0, 3, 0))


# ---------------------------------------------------------------- 7. WebSocket (OpenAI Realtime)


def _recv_exact(sock: ssl.SSLSocket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, f"connection closed after {len(out)} of {n} bytes"
        out += chunk
    return out


def _recv_frame(sock: ssl.SSLSocket) -> tuple[int, bytes]:
    """One unmasked server frame (opcode, payload); no fragmentation expected."""
    head = _recv_exact(sock, 2)
    assert head[0] & 0x80, "fragmented frame"
    assert not head[1] & 0x80, "a server frame must not be masked"
    n = head[1] & 0x7F
    if n == 126:
        n = int.from_bytes(_recv_exact(sock, 2))
    elif n == 127:
        n = int.from_bytes(_recv_exact(sock, 8))
    return head[0] & 0x0F, _recv_exact(sock, n)


def test_websocket_upgrade_passes_through_untouched(proxy: ProxyProcess, fake_provider: FakeProvider) -> None:
    t = tag()
    key = base64.b64encode(os.urandom(16)).decode()
    path = "/v1/realtime?model=gpt-4o-realtime-preview"
    text = json.dumps({"type": "session.update", "session": {"instructions": "Be brief. ü €"}}).encode()
    binary = bytes(range(256)) * 300  # 76,800 bytes: a 64-bit length frame
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=15) as raw:
        raw.sendall(b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n")
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = raw.recv(4096)
            assert chunk, reply
            reply += chunk
        assert reply.split()[1] == b"200", reply
        ctx = ssl.create_default_context(cafile=str(proxy.ca_path))
        ctx.set_alpn_protocols(["http/1.1"])
        with ctx.wrap_socket(raw, server_hostname="api.openai.com") as ws:
            ws.sendall(
                (
                    f"GET {path} HTTP/1.1\r\nHost: api.openai.com\r\n"
                    f"Authorization: Bearer {OPENAI_KEY}\r\nOpenAI-Beta: realtime=v1\r\n"
                    f"X-Test-Tag: {t}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            head = b""
            while b"\r\n\r\n" not in head:
                head += _recv_exact(ws, 1)
            lines = head.decode().split("\r\n")
            assert lines[0].startswith("HTTP/1.1 101"), head
            answer = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            expected = base64.b64encode(
                hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
            ).decode()
            assert answer["sec-websocket-accept"] == expected
            ws.sendall(ws_frame(0x1, text, mask=os.urandom(4)))
            assert _recv_frame(ws) == (0x1, text)
            ws.sendall(ws_frame(0x2, binary, mask=os.urandom(4)))
            assert _recv_frame(ws) == (0x2, binary)
            ws.sendall(ws_frame(0x8, (1000).to_bytes(2), mask=os.urandom(4)))
            opcode, payload = _recv_frame(ws)
            assert (opcode, payload[:2]) == (0x8, (1000).to_bytes(2))
    rec = wait_done(one_request(fake_provider, t))
    assert rec.method == "GET" and rec.path == path
    assert rec.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert rec.headers["openai-beta"] == "realtime=v1"
    assert rec.ws_messages == [(0x1, text), (0x2, binary)]

    # Not billed: a metered call afterwards is the only row.
    with client(proxy) as http:
        r = http.post(
            OPENAI + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": []},
            headers=openai_headers(tag(), chat_usage(12, 1)),
        )
        assert r.status_code == 200
    [row] = settle(proxy, 1)
    assert (row["path"], tokens(row)) == ("/v1/chat/completions", (12, 0, 0, 1, 0))
