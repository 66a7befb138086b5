"""End to end: Vertex AI with the real google-genai (``vertexai=True``) and AnthropicVertex SDKs.

Real clients -> mitmdump + tokometer -> a fake Vertex AI over HTTPS on 127.0.0.1; rows asserted in DuckDB.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import CLIENTS, ProxyProcess, remapped_proxies
from fake_vertex import CLAUDE_USAGE, WORDS, FakeVertex
from fakeprovider import FakeProvider
from genai_prices import Usage as GPUsage
from genai_prices import calc_price

from addon.api_keys import key_fingerprint

PROJECT = "tokometer-test-project"
TOKEN = "fake-oauth-token"
# gemini-2.5-flash: 100 input of which 20 cached, 50 candidates + 10 thoughts (output 60).
GEMINI_COST = calc_price(
    GPUsage(input_tokens=100, cache_read_tokens=20, output_tokens=60),
    "gemini-2.5-flash",
    provider_id="google",
).total_price
# claude-sonnet-4-5: 100 input + 10 written + 30 read = 140, 20 output; at the global endpoint.
CLAUDE_COUNTS = GPUsage(input_tokens=140, cache_read_tokens=30, cache_write_tokens=10, output_tokens=20)
SONNET_GLOBAL = calc_price(CLAUDE_COUNTS, "claude-sonnet-4-5", provider_id="anthropic").total_price


@pytest.fixture(scope="module")
def vertex(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeVertex]:
    fake = FakeVertex(tmp_path_factory.mktemp("vertex"))
    yield fake
    fake.close()


@pytest.fixture
def vproxy(tmp_path: Path, fake_provider: FakeProvider, vertex: FakeVertex):
    remap: dict[str, int | str] = {
        r"//us-central1-aiplatform\.googleapis\.com/": vertex.port,
        r"//us-east5-aiplatform\.googleapis\.com/": vertex.port,
        r"//aiplatform\.googleapis\.com/": vertex.port,
    }
    yield from remapped_proxies(tmp_path, fake_provider.port, remap)


def vertex_client(proxy: ProxyProcess, *args: str, code: int = 0) -> list[dict]:
    res = subprocess.run(
        [sys.executable, str(CLIENTS / "vertex_client.py"), *args],
        env=proxy.client_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == code, res.stdout + res.stderr
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


def _tokens(row: dict) -> tuple[int, int, int, int]:
    return row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"], row["output_tokens"]


def test_google_genai_on_vertex_plain_and_streamed(vproxy, vertex: FakeVertex) -> None:
    """generateContent and streamGenerateContent (SSE) are metered at Google's list price; token
    counting passes unmetered; the project is the key and a tag, the OAuth token is never kept."""
    proxy = vproxy()
    sent = len(vertex.requests)
    plain = vertex_client(proxy, "gemini", "--count")
    assert plain[0] == {"event": "count", "n": 42} and plain[-1]["text"] == "Hello!"
    streamed = vertex_client(proxy, "gemini", "--stream")
    assert [e["text"] for e in streamed if e["event"] == "chunk"] == WORDS
    paths = [path for path, _, _ in vertex.requests[sent:]]
    prefix = f"/v1beta1/projects/{PROJECT}/locations/us-central1/publishers/google/models/gemini-2.5-flash"
    assert paths == [
        f"{prefix}:countTokens",
        f"{prefix}:generateContent",
        f"{prefix}:streamGenerateContent?alt=sse",
    ]
    assert all(h["authorization"] == f"Bearer {TOKEN}" for _, h, _ in vertex.requests[sent:])
    proxy.terminate()
    rows = proxy.rows()
    assert [(r["provider"], r["api_flavor"], r["streamed"]) for r in rows] == [
        ("vertex", "generate", False),
        ("vertex", "stream", True),
    ]
    for row in rows:
        assert row["host"] == "us-central1-aiplatform.googleapis.com" and row["path"].startswith(prefix)
        assert row["model_requested"] == row["model_reported"] == "gemini-2.5-flash"
        assert _tokens(row) == (100, 20, 0, 60) and row["reasoning_tokens"] == 10
        assert (row["cost_usd"], row["price_status"]) == (GEMINI_COST, "priced")
        assert row["price_source"] == "genai-prices 0.2.3 (vertex: google list price)"
        assert row["key_fingerprint"] == key_fingerprint(f"vertex:{PROJECT}")
        assert json.loads(row["tags"]) == {"gcp_project": PROJECT}
        assert row["inference_geo"] == "us-central1"
    stored = b"".join(p.read_bytes() for p in proxy.tmp.rglob("*") if p.is_file())
    assert TOKEN.encode() not in stored


def test_anthropic_vertex_plain_and_streamed_regional_and_global(vproxy, vertex: FakeVertex) -> None:
    """rawPredict and streamRawPredict are metered with Anthropic's counts; Sonnet 4.5 costs 1.1x
    Anthropic's price on a regional endpoint and exactly it on the global one; count-tokens passes."""
    proxy = vproxy()
    sent = len(vertex.requests)
    for region in ("us-east5", "global"):
        plain = vertex_client(proxy, "claude", "--region", region, "--count")
        assert plain[0] == {"event": "count", "n": 42} and plain[-1]["text"] == "Hello!"
        streamed = vertex_client(proxy, "claude", "--region", region, "--stream")
        assert [e["text"] for e in streamed if e["event"] == "chunk"] == WORDS
    requests = vertex.requests[sent:]
    assert [p.rsplit("/", 1)[1] for p, _, _ in requests] == [
        "count-tokens:rawPredict",
        "claude-sonnet-4-5@20250929:rawPredict",
        "claude-sonnet-4-5@20250929:streamRawPredict",
    ] * 2
    predicts = [b for p, _, b in requests if "count-tokens" not in p]
    # The body is Anthropic's without `model`; anthropic_version as this SDK sends it (Vertex's docs
    # name vertex-2023-10-16, the SDK in use sends its own API version): passed on as it came.
    assert [("anthropic_version" in b, "model" in b) for b in predicts] == [(True, False)] * 4
    proxy.terminate()
    rows = proxy.rows()
    assert [(r["host"], r["api_flavor"], r["streamed"]) for r in rows] == [
        ("us-east5-aiplatform.googleapis.com", "messages", False),
        ("us-east5-aiplatform.googleapis.com", "messages", True),
        ("aiplatform.googleapis.com", "messages", False),
        ("aiplatform.googleapis.com", "messages", True),
    ]
    assert (
        sum(
            CLAUDE_USAGE[k]
            for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        )
        == 140
    )
    for row in rows:
        assert row["provider"] == "vertex" and row["model_requested"] == "claude-sonnet-4-5@20250929"
        assert _tokens(row) == (140, 30, 10, 20) and row["usage_source"] == "reported"
        assert row["key_fingerprint"] == key_fingerprint(f"vertex:{PROJECT}")
    assert [r["inference_geo"] for r in rows] == ["us-east5", "us-east5", "global", "global"]
    assert [r["cost_usd"] for r in rows] == [SONNET_GLOBAL * Decimal("1.1")] * 2 + [SONNET_GLOBAL] * 2
    assert [r["price_source"] for r in rows] == [
        "genai-prices 0.2.3 (vertex: anthropic list price) x1.1 (regional endpoint us-east5)"
    ] * 2 + ["genai-prices 0.2.3 (vertex: anthropic list price)"] * 2


POLICIES = """default_environment: development
environments:
  development:
    models:
      allow: [gemini-2.5-flash, claude-haiku-4-5, gemini-2.5-flash-lite]
      downgrade:
        gemini-2.5-pro: gemini-2.5-flash
        claude-sonnet-4-5*: claude-haiku-4-5-20251001
        claude-opus-*: gemini-2.5-flash-lite
"""


def test_vertex_allowlist_downgrades_by_rewriting_the_path_or_refuses(vproxy, vertex: FakeVertex) -> None:
    """A disallowed model is downgraded by rewriting the model in the path (an Anthropic dated id
    written the Vertex way); a target of the other publisher cannot be sent there: refused, 403."""
    proxy = vproxy(POLICIES)
    sent = len(vertex.requests)
    assert vertex_client(proxy, "gemini", "--model", "gemini-2.5-pro")[-1]["text"] == "Hello!"
    assert vertex_client(proxy, "claude", "--region", "us-east5")[-1]["text"] == "Hello!"
    refused = vertex_client(proxy, "claude", "--model", "claude-opus-4-1@20250805", code=3)
    assert refused[-1]["status"] == 403 and "tokometer:" in refused[-1]["message"]
    assert [p.rsplit("/", 1)[1] for p, _, _ in vertex.requests[sent:]] == [
        "gemini-2.5-flash:generateContent",
        "claude-haiku-4-5@20251001:rawPredict",
    ]
    proxy.terminate()
    rows = proxy.rows()
    assert [(r["action"], r["model_requested"], r["model_sent"], r["status_code"]) for r in rows] == [
        ("downgraded", "gemini-2.5-pro", "gemini-2.5-flash", 200),
        ("downgraded", "claude-sonnet-4-5@20250929", "claude-haiku-4-5-20251001", 200),
        ("blocked", "claude-opus-4-1@20250805", None, 403),
    ]
    assert rows[0]["cost_usd"] == GEMINI_COST
    # The fake reports the model it was asked for: Haiku 4.5, regional (1.1x).
    haiku = calc_price(CLAUDE_COUNTS, "claude-haiku-4-5", provider_id="anthropic").total_price
    assert rows[1]["model_reported"] == "claude-haiku-4-5@20251001"
    assert rows[1]["cost_usd"] == haiku * Decimal("1.1")
    assert rows[2]["cost_usd"] == 0 and "another path" in rows[2]["error"]
