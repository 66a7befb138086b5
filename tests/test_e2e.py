"""End to end: real clients (openai SDK, anthropic SDK, curl) -> mitmdump + tokometer -> fake provider.

Every test starts its own mitmdump (fixture ``proxy``) and asserts exact rows of the DuckDB file.
"""

from __future__ import annotations

import json
import queue
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest
from conftest import ANTHROPIC_KEY, CLIENTS, OPENAI_KEY, ProxyProcess
from fakeprovider import FakeProvider, OtherSite, RecordedRequest

from addon.token_estimate import count_text

CLIENT_TIMEOUT_S = 60

# ---------------------------------------------------------------- helpers


def tag() -> str:
    """A unique request label (the fake provider lives for the whole session)."""
    return uuid.uuid4().hex[:12]


def chat_usage(prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> dict[str, Any]:
    """An OpenAI Chat Completions usage object, wire format."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def anthropic_usage(inp: int, cache_write: int, cache_read: int, out: int) -> dict[str, Any]:
    """An Anthropic usage object, wire format (``input_tokens`` excludes the cache fields)."""
    return {
        "input_tokens": inp,
        "cache_creation_input_tokens": cache_write,
        "cache_read_input_tokens": cache_read,
        "cache_creation": {"ephemeral_5m_input_tokens": cache_write, "ephemeral_1h_input_tokens": 0},
        "output_tokens": out,
        "service_tier": "standard",
    }


def fake_headers(t: str, usage: dict[str, Any] | None = None, **more: str) -> list[str]:
    """``--header`` arguments for the client scripts."""
    out = [f"X-Test-Tag={t}"]
    if usage is not None:
        out.append("X-Fake-Usage=" + json.dumps(usage, separators=(",", ":")))
    out += [f"X-Fake-{k.replace('_', '-').title()}={v}" for k, v in more.items()]
    return out


def run_client(
    proxy: ProxyProcess, script: str, *args: str, headers: Sequence[str] = ()
) -> tuple[int, list[dict]]:
    """Run a client script through the proxy; return its exit code and JSON-line events."""
    argv = [sys.executable, str(CLIENTS / script), *args]
    for h in headers:
        argv += ["--header", h]
    res = subprocess.run(
        argv,
        env=proxy.client_env(),
        cwd=proxy.tmp,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_S,
    )
    events = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    if res.returncode not in (0, 3):
        raise AssertionError(f"{script} {args} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res.returncode, events


def curl(
    proxy: ProxyProcess,
    url: str,
    body: dict[str, Any] | None = None,
    headers: Sequence[str] = (),
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """curl through the proxy (HTTPS_PROXY and CURL_CA_BUNDLE from ``client_env``)."""
    argv = ["curl", "-sS", "--fail-with-body", "--max-time", "30", *extra]
    for h in headers:
        argv += ["-H", h]
    if body is not None:
        argv += ["-H", "content-type: application/json", "--data-binary", json.dumps(body)]
    argv.append(url)
    return subprocess.run(
        argv,
        env=env or proxy.client_env(),
        cwd=proxy.tmp,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_S,
    )


def curl_openai_chat(
    proxy: ProxyProcess,
    t: str,
    usage: dict[str, Any],
    model: str = "gpt-4o-mini",
    key: str = OPENAI_KEY,
    stream: bool = False,
    extra: Sequence[str] = (),
    more_headers: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """POST /v1/chat/completions with curl."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": f"hi {t}"}]}
    if stream:
        body["stream"] = True
    headers = [
        f"Authorization: Bearer {key}",
        f"X-Test-Tag: {t}",
        "X-Fake-Usage: " + json.dumps(usage, separators=(",", ":")),
        *more_headers,
    ]
    return curl(proxy, "https://api.openai.com/v1/chat/completions", body, headers, extra)


def sse_data(text: str) -> list[str]:
    """The ``data:`` payloads of an SSE stream, in order."""
    return [line[len("data:") :].strip() for line in text.splitlines() if line.startswith("data:")]


def money(value: Any) -> Decimal:
    """A cost from the database, rounded to 10 places, for exact comparison."""
    assert value is not None, "cost_usd is NULL"
    return round(Decimal(str(value)), 10)


def settle(proxy: ProxyProcess, n: int) -> list[dict[str, Any]]:
    """Wait for ``n`` rows, stop the proxy (SIGTERM flushes), return exactly ``n`` rows."""
    proxy.wait_rows(n)
    proxy.terminate()
    rows = proxy.rows()
    assert len(rows) == n, f"expected exactly {n} rows, got {len(rows)}: {rows}"
    return rows


def one_request(fake: FakeProvider, t: str) -> RecordedRequest:
    """The single request the fake received with tag ``t``."""
    recs = fake.requests_for(t)
    assert len(recs) == 1, f"fake received {len(recs)} requests tagged {t}"
    return recs[0]


def assert_allowed(row: dict[str, Any], proxy: ProxyProcess, provider: str, path: str, flavor: str) -> None:
    """Columns every successful call shares."""
    host = {"openai": "api.openai.com", "anthropic": "api.anthropic.com"}[provider]
    assert row["id"]
    assert row["ts"] is not None
    assert row["session_id"] and row["session_id"] in proxy.session_line
    assert row["environment"] == "development"
    assert row["provider"] == provider
    assert row["host"] == host
    assert row["path"] == path
    assert row["api_flavor"] == flavor
    assert row["action"] == "allowed"
    assert row["status_code"] == 200
    assert row["usage_source"] == "reported"
    assert row["price_status"] == "priced"
    assert row["duration_ms"] is not None and row["duration_ms"] > 0
    assert row["key_fingerprint"]


def assert_tokens(
    row: dict[str, Any], inp: int, cache_read: int, cache_write: int, out: int, reasoning: int
) -> None:
    """The normalised token columns."""
    got = tuple(
        row[c]
        for c in (
            "input_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "output_tokens",
            "reasoning_tokens",
        )
    )
    assert got == (inp, cache_read, cache_write, out, reasoning)


class LineReader:
    """Reads a subprocess's stdout lines in a thread, so the test can wait with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(proc,), daemon=True)
        self._thread.start()

    def _run(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def next_event(self, timeout: float) -> dict[str, Any] | None:
        """The next JSON event, or ``None`` at end of output; raises ``queue.Empty`` on timeout."""
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                return None
            if line.startswith("{"):
                return json.loads(line)


# ---------------------------------------------------------------- 1. openai chat, non-stream


def test_openai_sdk_chat_nonstream(proxy: ProxyProcess, fake_provider: FakeProvider) -> None:
    t = tag()
    usage = chat_usage(1200, 300)
    rc, events = run_client(proxy, "openai_client.py", "chat", headers=fake_headers(t, usage))
    assert rc == 0
    result = events[-1]["data"]
    assert result["choices"][0]["message"]["content"] == "w0 w1 w2 w3 w4 "
    assert result["usage"]["prompt_tokens"] == 1200

    rec = one_request(fake_provider, t)
    assert rec.path == "/v1/chat/completions"
    assert rec.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert "stream_options" not in rec.json

    [row] = settle(proxy, 1)
    assert_allowed(row, proxy, "openai", "/v1/chat/completions", "chat")
    assert row["model_requested"] == "gpt-4o-mini"
    assert row["model_sent"] == "gpt-4o-mini"
    assert row["model_reported"] == "gpt-4o-mini-2024-07-18"
    assert row["streamed"] is False
    assert row["aborted"] is False
    assert row["ttft_ms"] is None or row["ttft_ms"] >= 0
    assert_tokens(row, 1200, 0, 0, 300, 0)
    # 1200 * 0.15 / 1M + 300 * 0.60 / 1M
    assert money(row["cost_usd"]) == Decimal("0.00036")
    assert row["error"] is None
    fp = row["key_fingerprint"]
    assert OPENAI_KEY not in fp and OPENAI_KEY[-16:] not in fp
    assert len(fp) < len(OPENAI_KEY)
    # The key is written nowhere: database, journal, home, log.
    for f in proxy.tmp.rglob("*"):
        if f.is_file():
            assert OPENAI_KEY.encode() not in f.read_bytes(), f


# ---------------------------------------------------------------- 2. openai chat stream, usage injected


def test_openai_sdk_chat_stream_gets_usage_injected(proxy: ProxyProcess, fake_provider: FakeProvider) -> None:
    t = tag()
    usage = chat_usage(2000, 500, cached=1024, reasoning=200)
    rc, events = run_client(proxy, "openai_client.py", "chat", "--stream", headers=fake_headers(t, usage))
    assert rc == 0
    chunks = [e["data"] for e in events if e["event"] == "chunk"]
    # role chunk + 5 content chunks + finish chunk; the injected usage chunk was removed.
    assert len(chunks) == 7
    assert events[-1] == {"event": "result", "data": {"items": 7}}
    for c in chunks:
        assert c["usage"] is None, c
        assert len(c["choices"]) == 1, c
    content = [c["choices"][0]["delta"].get("content") for c in chunks]
    assert content == ["", "w0 ", "w1 ", "w2 ", "w3 ", "w4 ", None]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"

    rec = one_request(fake_provider, t)
    assert rec.json["stream"] is True
    assert rec.json["stream_options"] == {"include_usage": True}
    assert rec.json["messages"] == [{"role": "user", "content": "Say hello"}]
    assert rec.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert rec.stream_outcome == "completed"

    [row] = settle(proxy, 1)
    assert_allowed(row, proxy, "openai", "/v1/chat/completions", "chat")
    assert row["streamed"] is True
    assert row["aborted"] is False
    assert row["ttft_ms"] is not None and 0 <= row["ttft_ms"] <= row["duration_ms"]
    assert row["model_reported"] == "gpt-4o-mini-2024-07-18"
    assert_tokens(row, 2000, 1024, 0, 500, 200)
    # 976 * 0.15 + 1024 * 0.075 + 500 * 0.60, per 1M
    assert money(row["cost_usd"]) == Decimal("0.0005232")


# ---------------------------------------------------------------- 3. openai chat stream, usage asked for


def test_openai_sdk_chat_stream_with_include_usage(proxy: ProxyProcess, fake_provider: FakeProvider) -> None:
    t = tag()
    usage = chat_usage(300, 50)
    rc, events = run_client(
        proxy,
        "openai_client.py",
        "chat",
        "--stream",
        "--include-usage",
        "--model",
        "gpt-4o",
        headers=fake_headers(t, usage),
    )
    assert rc == 0
    chunks = [e["data"] for e in events if e["event"] == "chunk"]
    assert len(chunks) == 8
    last = chunks[-1]
    assert last["choices"] == []
    assert last["usage"]["prompt_tokens"] == 300
    assert last["usage"]["completion_tokens"] == 50
    assert all(c["usage"] is None for c in chunks[:-1])
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1]) == "w0 w1 w2 w3 w4 "

    rec = one_request(fake_provider, t)
    assert rec.json["stream_options"] == {"include_usage": True}

    [row] = settle(proxy, 1)
    assert_allowed(row, proxy, "openai", "/v1/chat/completions", "chat")
    assert row["streamed"] is True
    assert row["aborted"] is False
    assert row["model_requested"] == "gpt-4o"
    assert row["model_reported"] == "gpt-4o-2024-08-06"
    assert_tokens(row, 300, 0, 0, 50, 0)
    # 300 * 2.50 + 50 * 10, per 1M
    assert money(row["cost_usd"]) == Decimal("0.00125")


# ---------------------------------------------------------------- 4. responses API and embeddings

RESPONSES_USAGE = {
    "input_tokens": 1500,
    "input_tokens_details": {"cached_tokens": 500},
    "output_tokens": 200,
    "output_tokens_details": {"reasoning_tokens": 50},
    "total_tokens": 1700,
}


@pytest.mark.parametrize("stream", [False, True], ids=["nonstream", "stream"])
def test_openai_sdk_responses(proxy: ProxyProcess, fake_provider: FakeProvider, stream: bool) -> None:
    t = tag()
    args = ["responses", "--model", "gpt-4o"] + (["--stream"] if stream else [])
    rc, events = run_client(proxy, "openai_client.py", *args, headers=fake_headers(t, RESPONSES_USAGE))
    assert rc == 0
    if stream:
        items = [e["data"] for e in events if e["event"] == "chunk"]
        kinds = [i["type"] for i in items]
        assert kinds[0] == "response.created"
        assert kinds[-1] == "response.completed"
        assert kinds.count("response.output_text.delta") == 5
        assert (
            "".join(i["delta"] for i in items if i["type"] == "response.output_text.delta")
            == "w0 w1 w2 w3 w4 "
        )
        assert items[-1]["response"]["usage"]["input_tokens"] == 1500
    else:
        result = events[-1]["data"]
        assert result["output"][0]["content"][0]["text"] == "w0 w1 w2 w3 w4 "
        assert result["usage"]["output_tokens"] == 200

    rec = one_request(fake_provider, t)
    assert rec.path == "/v1/responses"
    assert "stream_options" not in rec.json
    assert rec.json.get("stream", False) is stream

    [row] = settle(proxy, 1)
    assert_allowed(row, proxy, "openai", "/v1/responses", "responses")
    assert row["streamed"] is stream
    assert row["aborted"] is False
    if stream:
        assert row["ttft_ms"] is not None and 0 <= row["ttft_ms"] <= row["duration_ms"]
    assert row["model_requested"] == "gpt-4o"
    assert row["model_reported"] == "gpt-4o-2024-08-06"
    assert_tokens(row, 1500, 500, 0, 200, 50)
    # 1000 * 2.50 + 500 * 1.25 + 200 * 10, per 1M
    assert money(row["cost_usd"]) == Decimal("0.005125")


def test_openai_sdk_background_response_is_billed_on_its_retrieval(
    proxy: ProxyProcess, fake_provider: FakeProvider
) -> None:
    """client.responses.create(background=True), then client.responses.retrieve() until done: the
    start is stored at $0, the retrieval that returns it finished carries its usage and cost."""
    t = tag()
    args = ["responses", "--model", "gpt-4o", "--background"]
    rc, events = run_client(proxy, "openai_client.py", *args, headers=fake_headers(t, RESPONSES_USAGE))
    assert rc == 0, events
    assert [e.get("status") for e in events if e["event"] == "polled"] == ["in_progress", "completed"]
    assert events[-1]["data"]["usage"]["output_tokens"] == 200
    started, polled, done = fake_provider.requests_for(t)
    assert (started.method, polled.method, done.method) == ("POST", "GET", "GET")

    start, retrieval = sorted(settle(proxy, 2), key=lambda row: row["path"])
    assert (start["path"], start["action"], start["status_code"]) == ("/v1/responses", "allowed", 200)
    assert (start["price_status"], money(start["cost_usd"]), start["usage_source"]) == (
        "background",
        0,
        "none",
    )
    response_id = events[0]["data"]["id"]
    assert_allowed(retrieval, proxy, "openai", f"/v1/responses/{response_id}", "responses")
    assert retrieval["model_requested"] == "gpt-4o"
    assert retrieval["key_fingerprint"] == start["key_fingerprint"] is not None
    assert_tokens(retrieval, 1500, 500, 0, 200, 50)
    assert money(retrieval["cost_usd"]) == Decimal("0.005125")  # as the same call answered at once


def test_openai_sdk_embeddings(proxy: ProxyProcess, fake_provider: FakeProvider) -> None:
    t = tag()
    usage = {"prompt_tokens": 5000, "total_tokens": 5000}
    rc, events = run_client(
        proxy,
        "openai_client.py",
        "embeddings",
        "--model",
        "text-embedding-3-small",
        headers=fake_headers(t, usage),
    )
    assert rc == 0
    assert events[-1]["data"]["data"][0]["embedding"] == [0.25, -0.5, 0.125, 1.0]
    assert one_request(fake_provider, t).path == "/v1/embeddings"

    [row] = settle(proxy, 1)
    assert_allowed(row, proxy, "openai", "/v1/embeddings", "embeddings")
    assert row["streamed"] is False
    assert row["model_requested"] == "text-embedding-3-small"
    assert row["model_reported"] == "text-embedding-3-small"
    assert_tokens(row, 5000, 0, 0, 0, 0)
    # 5000 * 0.02 per 1M
    assert money(row["cost_usd"]) == Decimal("0.0001")


# ---------------------------------------------------------------- 5. anthropic messages with cache tokens


@pytest.mark.parametrize("stream", [False, True], ids=["nonstream", "stream"])
def test_anthropic_sdk_messages_with_cache(
    proxy: ProxyProcess, fake_provider: FakeProvider, stream: bool
) -> None:
    t = tag()
    usage = anthropic_usage(inp=100, cache_write=2000, cache_read=3000, out=400)
    # Two message_delta events in the stream: output_tokens 390 then 400 (cumulative, not to be added).
    headers = fake_headers(t, usage, deltas="2")
    rc, events = run_client(proxy, "anthropic_client.py", *(["--stream"] if stream else []), headers=headers)
    assert rc == 0
    if stream:
        items = [e["data"] for e in events if e["event"] == "chunk"]
        kinds = [i["type"] for i in items]
        assert kinds[0] == "message_start"
        assert kinds[-1] == "message_stop"
        assert kinds.count("content_block_delta") == 5
        assert [i["usage"]["output_tokens"] for i in items if i["type"] == "message_delta"] == [390, 400]
        assert items[0]["message"]["usage"]["cache_read_input_tokens"] == 3000
    else:
        result = events[-1]["data"]
        assert result["content"][0]["text"] == "w0 w1 w2 w3 w4 "
        assert result["usage"]["cache_creation_input_tokens"] == 2000

    rec = one_request(fake_provider, t)
    assert rec.path == "/v1/messages"
    # anthropic SDK 2.x sends the key as "Authorization: Bearer", older ones as x-api-key.
    assert rec.headers.get("authorization") == f"Bearer {ANTHROPIC_KEY}" or rec.headers.get("x-api-key") == (
        ANTHROPIC_KEY
    )
    assert "anthropic-version" in rec.headers
    assert "stream_options" not in rec.json

    [row] = settle(proxy, 1)
    assert_allowed(row, proxy, "anthropic", "/v1/messages", "messages")
    assert row["streamed"] is stream
    assert row["aborted"] is False
    assert row["model_requested"] == "claude-haiku-4-5"
    assert row["model_reported"] == "claude-haiku-4-5-20251001"
    assert ANTHROPIC_KEY not in row["key_fingerprint"]
    # input_tokens = 100 uncached + 3000 cache read + 2000 cache write
    assert_tokens(row, 5100, 3000, 2000, 400, 0)
    # 100 * 1 + 3000 * 0.10 + 2000 * 1.25 + 400 * 5, per 1M
    assert money(row["cost_usd"]) == Decimal("0.0049")


def test_anthropic_sdk_on_a_claude_plan_costs_nothing_and_keeps_its_tokens(
    proxy: ProxyProcess, fake_provider: FakeProvider
) -> None:
    """The SDK with an OAuth token (Claude Code logged in to Pro/Max): billed by the plan."""
    t = tag()
    token = "sk-ant-oat01-e2ePLANtoken" + "x" * 70
    usage = anthropic_usage(inp=100, cache_write=0, cache_read=3000, out=400)
    rc, events = run_client(
        proxy, "anthropic_client.py", "--auth-token", token, headers=fake_headers(t, usage)
    )
    assert rc == 0, events
    rec = one_request(fake_provider, t)
    assert rec.headers.get("authorization") == f"Bearer {token}" and "x-api-key" not in rec.headers
    [row] = settle(proxy, 1)
    assert (row["price_status"], money(row["cost_usd"]), row["usage_source"]) == (
        "subscription",
        0,
        "reported",
    )
    assert_tokens(row, 3100, 3000, 0, 400, 0)
    assert row["key_fingerprint"] and token not in json.dumps(row, default=str)


# ---------------------------------------------------------------- 6. curl


def test_curl_nonstream_and_key_fingerprints(proxy: ProxyProcess, fake_provider: FakeProvider) -> None:
    other_key = "sk-proj-e2eOTHERkey9999888877776666555544443333"
    t1, t2, t3 = tag(), tag(), tag()
    r1 = curl_openai_chat(proxy, t1, chat_usage(1000, 100))
    assert r1.returncode == 0, r1.stderr + r1.stdout
    body = json.loads(r1.stdout)
    assert body["choices"][0]["message"]["content"] == "w0 w1 w2 w3 w4 "
    assert body["usage"]["prompt_tokens"] == 1000
    r2 = curl_openai_chat(proxy, t2, chat_usage(1001, 100))
    assert r2.returncode == 0, r2.stderr + r2.stdout
    r3 = curl_openai_chat(proxy, t3, chat_usage(1002, 100), key=other_key)
    assert r3.returncode == 0, r3.stderr + r3.stdout
    assert one_request(fake_provider, t3).headers["authorization"] == f"Bearer {other_key}"

    rows = {r["input_tokens"]: r for r in settle(proxy, 3)}
    assert sorted(rows) == [1000, 1001, 1002]
    row = rows[1000]
    assert_allowed(row, proxy, "openai", "/v1/chat/completions", "chat")
    assert row["streamed"] is False
    assert_tokens(row, 1000, 0, 0, 100, 0)
    # 1000 * 0.15 + 100 * 0.60, per 1M
    assert money(row["cost_usd"]) == Decimal("0.00021")
    # Same key, same fingerprint; another key, another one.
    assert rows[1000]["key_fingerprint"] == rows[1001]["key_fingerprint"]
    assert rows[1002]["key_fingerprint"] != rows[1000]["key_fingerprint"]
    assert other_key not in rows[1002]["key_fingerprint"]


def test_curl_gzip_streams(proxy: ProxyProcess, fake_provider: FakeProvider) -> None:
    # OpenAI chat stream, gzip, without stream_options: the proxy injects and strips the usage chunk.
    t1 = tag()
    r1 = curl_openai_chat(
        proxy,
        t1,
        chat_usage(4000, 1000, cached=2048),
        stream=True,
        extra=["--compressed", "-N"],
        more_headers=["X-Fake-Gzip: 1"],
    )
    assert r1.returncode == 0, r1.stderr + r1.stdout
    rec1 = one_request(fake_provider, t1)
    assert rec1.gzipped, "the fake did not gzip: Accept-Encoding did not reach it"
    assert rec1.json["stream_options"] == {"include_usage": True}
    data = sse_data(r1.stdout)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert len(chunks) == 7
    assert all(c["choices"] and c.get("usage") is None for c in chunks), "usage chunk leaked to the client"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "w0 w1 w2 w3 w4 "

    # Anthropic stream, gzip, forwarded as is.
    t2 = tag()
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    headers = [
        f"x-api-key: {ANTHROPIC_KEY}",
        "anthropic-version: 2023-06-01",
        f"X-Test-Tag: {t2}",
        "X-Fake-Gzip: 1",
        "X-Fake-Usage: " + json.dumps(anthropic_usage(50, 0, 0, 30)),
    ]
    r2 = curl(proxy, "https://api.anthropic.com/v1/messages", body, headers, ["--compressed", "-N"])
    assert r2.returncode == 0, r2.stderr + r2.stdout
    assert one_request(fake_provider, t2).gzipped
    events = [json.loads(d) for d in sse_data(r2.stdout)]
    assert events[0]["type"] == "message_start"
    assert events[-1] == {"type": "message_stop"}
    assert (
        "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta") == "w0 w1 w2 w3 w4 "
    )

    rows = {r["provider"]: r for r in settle(proxy, 2)}
    oa, an = rows["openai"], rows["anthropic"]
    assert_allowed(oa, proxy, "openai", "/v1/chat/completions", "chat")
    assert oa["streamed"] is True and oa["aborted"] is False
    assert_tokens(oa, 4000, 2048, 0, 1000, 0)
    # 1952 * 0.15 + 2048 * 0.075 + 1000 * 0.60, per 1M
    assert money(oa["cost_usd"]) == Decimal("0.0010464")
    assert_allowed(an, proxy, "anthropic", "/v1/messages", "messages")
    assert an["streamed"] is True and an["aborted"] is False
    assert_tokens(an, 50, 0, 0, 30, 0)
    # 50 * 1 + 30 * 5, per 1M
    assert money(an["cost_usd"]) == Decimal("0.0002")


# ---------------------------------------------------------------- 7. streams are not buffered


def test_stream_is_not_buffered(proxy: ProxyProcess, fake_provider: FakeProvider) -> None:
    t = tag()
    gate_name = f"gate-{t}"
    gate = fake_provider.gate(gate_name)
    argv = [sys.executable, str(CLIENTS / "openai_client.py"), "chat", "--stream"]
    for h in fake_headers(t, chat_usage(100, 20), gate=gate_name):
        argv += ["--header", h]
    proc = subprocess.Popen(argv, env=proxy.client_env(), cwd=proxy.tmp, stdout=subprocess.PIPE, text=True)
    try:
        reader = LineReader(proc)
        assert fake_provider.wait_gate_reached(gate_name, timeout=20), "the stream never reached the gate"
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while len(seen) < 3:
            left = deadline - time.monotonic()
            try:
                ev = reader.next_event(timeout=max(left, 0.01))
            except queue.Empty:
                raise AssertionError(
                    f"client got only {len(seen)} chunks while the fake held the stream"
                ) from None
            assert ev is not None and ev["event"] == "chunk", ev
            seen.append(ev["data"])
        # The client has the role chunk and the first two words while upstream is still holding.
        assert [c["choices"][0]["delta"].get("content") for c in seen] == ["", "w0 ", "w1 "]
        assert one_request(fake_provider, t).stream_outcome is None
        assert proc.poll() is None
        time.sleep(0.3)
        gate.set()
        rest: list[dict[str, Any]] = []
        while (ev := reader.next_event(timeout=20)) is not None:
            rest.append(ev)
        assert proc.wait(20) == 0
    finally:
        gate.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    chunks = seen + [e["data"] for e in rest if e["event"] == "chunk"]
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == [
        "",
        "w0 ",
        "w1 ",
        "w2 ",
        "w3 ",
        "w4 ",
        None,
    ]
    assert all(c["usage"] is None for c in chunks)
    assert rest[-1] == {"event": "result", "data": {"items": 7}}

    [row] = settle(proxy, 1)
    assert_allowed(row, proxy, "openai", "/v1/chat/completions", "chat")
    assert row["streamed"] is True and row["aborted"] is False
    # First chunk measured when it arrived, not when the held stream ended.
    assert row["ttft_ms"] is not None
    assert row["duration_ms"] - row["ttft_ms"] >= 300
    assert_tokens(row, 100, 0, 0, 20, 0)
    # 100 * 0.15 + 20 * 0.60, per 1M
    assert money(row["cost_usd"]) == Decimal("0.000027")


# ---------------------------------------------------------------- 8. client abort


def test_client_abort_is_recorded(proxy: ProxyProcess, fake_provider: FakeProvider) -> None:
    t = tag()
    gate_name = f"gate-{t}"
    gate = fake_provider.gate(gate_name)
    usage = anthropic_usage(inp=200, cache_write=0, cache_read=1000, out=400)
    try:
        # Before the gate: message_start, content_block_start, (ping: the SDK drops it), 2 deltas.
        rc, events = run_client(
            proxy,
            "anthropic_client.py",
            "--stream",
            "--abort-after",
            "4",
            headers=fake_headers(t, usage, gate=gate_name),
        )
        assert rc == 0
        assert events[-1] == {"event": "aborted", "after": 4}
        texts = [
            e["data"]["delta"]["text"] for e in events[:-1] if e["data"]["type"] == "content_block_delta"
        ]
        assert texts == ["w0 ", "w1 "]
        # The row is written while upstream is still holding the rest of the stream.
        rows = proxy.wait_rows(1)
        assert one_request(fake_provider, t).stream_outcome is None
    finally:
        gate.set()
    assert len(rows) == 1
    [row] = settle(proxy, 1)
    assert row["provider"] == "anthropic"
    assert row["api_flavor"] == "messages"
    assert row["streamed"] is True
    assert row["aborted"] is True
    assert row["status_code"] == 200
    assert row["ttft_ms"] is not None
    # message_start's input and cache counts stand; its output_tokens (1) is a placeholder: the
    # output is counted from the text that went by.
    out = count_text("w0 w1 ", "claude-haiku-4-5")
    assert out > 1
    assert_tokens(row, 1200, 1000, 0, out, 0)
    assert row["usage_source"] == "estimated"
    assert row["price_status"] == "priced"
    assert "output tokens estimated: the stream ended before its final usage" in row["error"]
    # 200 * 1 + 1000 * 0.10 + out * 5, per 1M
    assert money(row["cost_usd"]) == (Decimal(300) + out * 5) / 1_000_000


def test_a_long_answer_cancelled_is_not_metered_at_one_output_token(
    proxy: ProxyProcess, fake_provider: FakeProvider
) -> None:
    """The user's report: 400 of 1000 deltas arrive, the stream hangs, the client gives up. The row
    said 1 output token (message_start's placeholder), about $0; the output is now estimated."""
    t = tag()
    gate_name = f"gate-{t}"
    gate = fake_provider.gate(gate_name)
    usage = anthropic_usage(inp=100, cache_write=0, cache_read=0, out=1000)
    try:
        # message_start, content_block_start, (ping: dropped by the SDK), 400 deltas; then it hangs.
        rc, events = run_client(
            proxy,
            "anthropic_client.py",
            "--stream",
            "--abort-after",
            "402",
            headers=fake_headers(t, usage, gate=gate_name, gate_after="400", chunks="1000"),
        )
        assert rc == 0 and events[-1] == {"event": "aborted", "after": 402}
        rows = proxy.wait_rows(1)
    finally:
        gate.set()
    assert len(rows) == 1
    [row] = settle(proxy, 1)
    assert (row["aborted"], row["usage_source"]) == (True, "estimated")
    out = count_text("".join(f"w{i} " for i in range(400)), "claude-haiku-4-5")
    assert 700 < out < 900
    assert_tokens(row, 100, 0, 0, out, 0)
    assert money(row["cost_usd"]) == (Decimal(100) + out * 5) / 1_000_000


# ---------------------------------------------------------------- 9. upstream error


def test_upstream_429_is_recorded_unbilled(proxy: ProxyProcess, fake_provider: FakeProvider) -> None:
    t1 = tag()
    rc, events = run_client(proxy, "openai_client.py", "chat", headers=fake_headers(t1, status="429"))
    assert rc == 3
    assert events[-1]["event"] == "error"
    assert events[-1]["status"] == 429
    assert events[-1]["body"]["code"] == "rate_limit_exceeded"
    assert len(fake_provider.requests_for(t1)) == 1  # max_retries=0: one attempt

    t2 = tag()
    body = {"model": "claude-haiku-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    headers = [
        f"x-api-key: {ANTHROPIC_KEY}",
        "anthropic-version: 2023-06-01",
        f"X-Test-Tag: {t2}",
        "X-Fake-Status: 429",
    ]
    r = curl(proxy, "https://api.anthropic.com/v1/messages", body, headers)
    assert r.returncode == 22
    assert json.loads(r.stdout)["error"]["type"] == "rate_limit_error"

    rows = {r["provider"]: r for r in settle(proxy, 2)}
    for provider, row in rows.items():
        assert row["status_code"] == 429, provider
        assert money(row["cost_usd"]) == Decimal(0)
        assert row["price_status"] == "not_billed"
        assert row["usage_source"] == "none"
        assert row["input_tokens"] is None and row["output_tokens"] is None
        assert row["streamed"] is False
        assert row["aborted"] is False
        assert row["action"] == "allowed"
    assert rows["openai"]["model_requested"] == "gpt-4o-mini"
    assert rows["openai"]["path"] == "/v1/chat/completions"
    assert rows["anthropic"]["model_requested"] == "claude-haiku-4-5"


# ---------------------------------------------------------------- 10. other hosts are tunneled


def test_non_llm_host_is_tunneled(
    proxy: ProxyProcess, fake_provider: FakeProvider, other_site: OtherSite
) -> None:
    url = f"https://localhost:{other_site.port}/"
    before = len(other_site.requests)
    r = curl(proxy, url, extra=["--cacert", str(other_site.cert_path)])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello from the other site\n"
    # Trusting only mitmproxy's CA fails: the proxy did not terminate TLS for this host.
    r2 = curl(proxy, url)
    assert r2.returncode == 60, (r2.returncode, r2.stderr)

    # Python's ssl through a raw CONNECT sees the site's own certificate.
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw:
        target = f"localhost:{other_site.port}"
        raw.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = raw.recv(4096)
            assert chunk, reply
            reply += chunk
        assert reply.split(b"\r\n")[0].split()[1] == b"200", reply
        ctx = ssl.create_default_context(cafile=str(other_site.cert_path))
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.getpeercert(binary_form=True) == other_site.cert_der
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            page = b""
            while chunk := tls.recv(4096):
                page += chunk
    assert page.startswith(b"HTTP/1.1 200") and page.endswith(b"hello from the other site\n")
    assert len(other_site.requests) == before + 2

    # A metered call afterwards is the only row.
    t = tag()
    assert curl_openai_chat(proxy, t, chat_usage(10, 1)).returncode == 0
    [row] = settle(proxy, 1)
    assert row["host"] == "api.openai.com"
    assert row["input_tokens"] == 10


# ---------------------------------------------------------------- 11. kill -9


def test_rows_survive_kill9(proxy: ProxyProcess, fake_provider: FakeProvider) -> None:
    tags = [tag() for _ in range(5)]
    for i, t in enumerate(tags):
        r = curl_openai_chat(proxy, t, chat_usage(1001 + i, 10))
        assert r.returncode == 0, r.stderr + r.stdout
        assert json.loads(r.stdout)["usage"]["prompt_tokens"] == 1001 + i
    proxy.kill9()  # at once: the periodic flush has likely not run for all of them
    first_session = proxy.session_line
    for t in tags:
        one_request(fake_provider, t)

    proxy.restart()
    rows = proxy.wait_rows(5)
    assert len(rows) == 5
    assert len({r["id"] for r in rows}) == 5
    assert sorted(r["input_tokens"] for r in rows) == [1001, 1002, 1003, 1004, 1005]
    for r in rows:
        assert r["session_id"] in first_session
        # 1001..1005 * 0.15 + 10 * 0.60, per 1M
        assert money(r["cost_usd"]) == round((Decimal(r["input_tokens"]) * Decimal("0.15") + 6) / 10**6, 10)

    # Another restart does not replay them again.
    proxy.restart()
    t = tag()
    assert curl_openai_chat(proxy, t, chat_usage(77, 1)).returncode == 0
    rows = settle(proxy, 6)
    counts = proxy.rows(
        "SELECT input_tokens, count(*) AS n, count(DISTINCT id) AS ids FROM calls GROUP BY 1 ORDER BY 1"
    )
    assert [(c["input_tokens"], c["n"], c["ids"]) for c in counts] == [
        (77, 1, 1),
        (1001, 1, 1),
        (1002, 1, 1),
        (1003, 1, 1),
        (1004, 1, 1),
        (1005, 1, 1),
    ]


def test_a_stream_killed_after_its_final_event_keeps_its_row(
    proxy: ProxyProcess, fake_provider: FakeProvider
) -> None:
    """Upstream holds the body open after [DONE] (the client has all it needs and may stop reading):
    the call is journaled before [DONE] reaches the client, so a kill -9 then still keeps it."""
    t, gate = tag(), f"gate-{tag()}"
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hi {t}"}], "stream": True}
    out = proxy.tmp / f"stream-{t}.txt"
    argv = ["curl", "-sS", "-N", "--max-time", "30", "-o", str(out), "-H", "content-type: application/json"]
    for h in (
        f"Authorization: Bearer {OPENAI_KEY}",
        f"X-Test-Tag: {t}",
        "X-Fake-Usage: " + json.dumps(chat_usage(1234, 56), separators=(",", ":")),
        f"X-Fake-Gate: {gate}",
        "X-Fake-Gate-After: end",
    ):
        argv += ["-H", h]
    argv += ["--data-binary", json.dumps(body), "https://api.openai.com/v1/chat/completions"]
    client = subprocess.Popen(argv, env=proxy.client_env(), cwd=proxy.tmp)
    try:
        assert fake_provider.wait_gate_reached(gate)
        deadline = time.monotonic() + 10
        while b"[DONE]" not in (out.read_bytes() if out.exists() else b""):
            assert time.monotonic() < deadline, "the client never got [DONE]"
            time.sleep(0.02)
        proxy.kill9()  # the body has not ended: the call is not finished, only journaled
    finally:
        fake_provider.gate(gate).set()
        client.wait(10)
    assert b"prompt_tokens" not in out.read_bytes()  # the injected usage chunk never reached the client
    proxy.restart()
    [row] = settle(proxy, 1)
    assert (row["input_tokens"], row["output_tokens"]) == (1234, 56)
    assert (row["streamed"], row["aborted"], row["usage_source"]) == (True, False, "reported")
    # gpt-4o-mini: 1234 * 0.15 + 56 * 0.60, per 1M
    assert money(row["cost_usd"]) == round(Decimal("218.7") / 10**6, 10)


# ---------------------------------------------------------------- 12. GET /v1/models


def test_models_list_is_not_metered(proxy: ProxyProcess, fake_provider: FakeProvider) -> None:
    before = [r for r in fake_provider.requests if r.path == "/v1/models"]
    rc, events = run_client(proxy, "openai_client.py", "models")
    assert rc == 0
    assert events[-1]["data"] == ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
    after = [r for r in fake_provider.requests if r.path == "/v1/models"]
    assert len(after) == len(before) + 1
    assert after[-1].method == "GET"
    assert after[-1].headers["authorization"] == f"Bearer {OPENAI_KEY}"

    t = tag()
    assert curl_openai_chat(proxy, t, chat_usage(20, 2)).returncode == 0
    [row] = settle(proxy, 1)
    assert row["path"] == "/v1/chat/completions"
    assert row["input_tokens"] == 20
