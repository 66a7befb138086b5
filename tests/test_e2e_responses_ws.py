"""End to end: OpenAI Responses over WebSocket, the real openai SDK through mitmdump + tokometer.

Client (``AsyncOpenAI().responses.connect()``, HTTPS_PROXY, SSL_CERT_FILE = the proxy's CA) ->
mitmdump with the addon -> a fake Responses WebSocket server over WSS on 127.0.0.1
(tests/fake_responses_ws.py); rows asserted in DuckDB. One proxy: each test has its own tag.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from conftest import OPENAI_KEY, ProxyProcess, one_proxy, rows_for, run_json_client, tagged_headers
from fake_responses_ws import OUTPUT_TEXT, FakeResponsesWS
from genai_prices import Usage as GPUsage
from genai_prices import calc_price

from addon.api_keys import key_fingerprint

SECRET_PROMPT = "tokometer-secret-prompt-5c1e: what is the capital of Burkina Faso?"
POLICIES = """\
default_environment: development
environments:
  development: {}
  restricted:
    models:
      allow: [gpt-5-mini]
      on_disallowed: downgrade
      downgrade: {gpt-5: gpt-5-mini}
"""
# fake_responses_ws.RESPONSE_USAGE: 1,200 input of which 200 cached; 300 output (100 reasoning).
COUNTS = GPUsage(input_tokens=1200, cache_read_tokens=200, output_tokens=300)


def price_of(model: str) -> Decimal:
    return calc_price(COUNTS, model, provider_id="openai").total_price


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeResponsesWS]:
    with FakeResponsesWS(tmp_path_factory.mktemp("fake-responses-ws")) as server:
        yield server


@pytest.fixture(scope="module")
def wproxy(tmp_path_factory: pytest.TempPathFactory, fake: FakeResponsesWS) -> Iterator[ProxyProcess]:
    """mitmdump with the addon; api.openai.com goes to the fake server."""
    yield from one_proxy(tmp_path_factory.mktemp("wproxy"), fake.port, POLICIES)


def connect(proxy: ProxyProcess, *steps: str, env: str, t: str) -> list[dict[str, Any]]:
    """Run the SDK client through the proxy; its JSON lines."""
    headers = json.dumps(tagged_headers(env, t))
    _, lines = run_json_client(
        proxy, "responses_ws_client.py", "--headers", headers, "--input", SECRET_PROMPT, *steps
    )
    return lines


def test_two_lanes_then_a_third_response_on_one_socket(wproxy: ProxyProcess, fake: FakeResponsesWS) -> None:
    """Two responses at once on two lanes, then one more: three rows, each priced as genai-prices
    prices it; every message reaches the client byte for byte; neither key nor prompt is written."""
    t = uuid.uuid4().hex[:12]
    lines = connect(wproxy, "gpt-5@a+gpt-5-mini@b", "gpt-5@a", env="development", t=t)
    assert lines[-1] == {"event": "done"}
    [session] = fake.sessions_for(t)
    assert session.ended.wait(5)
    assert session.path == "/v1/responses"
    assert (
        session.headers["authorization"] == f"Bearer {OPENAI_KEY}"
        and "x-metering-tags" not in session.headers
    )
    assert [(e["model"], e.get("stream_id")) for e in session.events()] == [
        ("gpt-5", "a"),
        ("gpt-5-mini", "b"),
        ("gpt-5", "a"),
    ]
    got = [line for line in lines if line["event"] == "recv"]
    assert [line["sha256"] for line in got] == [hashlib.sha256(d).hexdigest() for d in session.sent]
    lanes = [line["stream_id"] for line in got]
    assert lanes.index("b") < max(i for i, lane in enumerate(lanes[:10]) if lane == "a")  # interleaved

    rows = rows_for(wproxy, t, 3)
    by_model = sorted(rows, key=lambda r: (r["model_sent"], r["ts"]))
    assert [r["model_sent"] for r in by_model] == ["gpt-5", "gpt-5", "gpt-5-mini"]
    for row in rows:
        assert (row["provider"], row["host"], row["path"], row["api_flavor"]) == (
            "openai",
            "api.openai.com",
            "/v1/responses",
            "responses",
        )
        assert (row["streamed"], row["status_code"], row["aborted"], row["action"]) == (
            True,
            101,
            False,
            "allowed",
        )
        assert (row["environment"], row["environment_source"]) == ("development", "header")
        assert json.loads(row["tags"]) == {"test": t}
        assert row["key_fingerprint"] == key_fingerprint(OPENAI_KEY)
        assert (
            row["input_tokens"],
            row["cache_read_tokens"],
            row["output_tokens"],
            row["reasoning_tokens"],
        ) == (
            1200,
            200,
            300,
            100,
        )
        assert row["usage_source"] == "reported" and row["price_status"] == "priced" and row["error"] is None
        assert (
            row["model_reported"]
            == {"gpt-5": "gpt-5-2025-08-07", "gpt-5-mini": "gpt-5-mini-2025-08-07"}[row["model_sent"]]
        )
        assert row["cost_usd"] == price_of(row["model_sent"])
        assert row["duration_ms"] is not None and 0 <= row["duration_ms"] < 10_000
        assert row["client_pid"] is not None
    assert price_of("gpt-5") == Decimal("0.004275") and price_of("gpt-5-mini") == Decimal("0.000855")
    assert len({row["id"] for row in rows}) == 3
    wproxy.rows("SELECT 1")  # flushed
    for f in wproxy.tmp.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            for secret in (OPENAI_KEY, SECRET_PROMPT, OUTPUT_TEXT):
                assert secret.encode() not in data, (f, secret)


def test_downgrade_and_a_refused_create_while_the_socket_keeps_working(
    wproxy: ProxyProcess, fake: FakeResponsesWS
) -> None:
    """In an environment allowing gpt-5-mini only: gpt-5 is downgraded in the create the fake gets;
    gpt-4.1 (no downgrade target) is refused: it never reaches the fake and the SDK gets an error
    event on its lane; the next create on the same socket is served."""
    t = uuid.uuid4().hex[:12]
    lines = connect(wproxy, "gpt-5@a", "gpt-4.1@b", "gpt-5-mini@b", env="restricted", t=t)
    assert lines[-1] == {"event": "done"}
    [session] = fake.sessions_for(t)
    assert session.ended.wait(5)
    assert [(e["model"], e["stream_id"]) for e in session.events()] == [
        ("gpt-5-mini", "a"),
        ("gpt-5-mini", "b"),
    ]
    assert session.received[0] == session.received[1].replace(b'"b"', b'"a"')  # only the model changed
    [error] = [line for line in lines if line.get("type") == "error"]
    assert error["stream_id"] == "b" and error["sdk"] == "ResponseWsError: model_not_allowed 403"
    assert error["data"]["error"]["message"].startswith(
        "tokometer: model gpt-4.1 is not allowed in environment restricted"
    )
    assert sum(line.get("type") == "response.completed" for line in lines) == 2

    downgraded, refused, allowed = rows_for(wproxy, t, 3)
    assert (downgraded["action"], downgraded["model_requested"], downgraded["model_sent"]) == (
        "downgraded",
        "gpt-5",
        "gpt-5-mini",
    )
    assert downgraded["model_reported"] == "gpt-5-mini-2025-08-07"
    assert downgraded["cost_usd"] == price_of("gpt-5-mini")
    assert (refused["action"], refused["status_code"], refused["model_requested"], refused["model_sent"]) == (
        "blocked",
        403,
        "gpt-4.1",
        None,
    )
    assert (refused["cost_usd"], refused["price_status"]) == (Decimal(0), "not_billed")
    assert (allowed["action"], allowed["model_sent"], allowed["cost_usd"]) == (
        "allowed",
        "gpt-5-mini",
        price_of("gpt-5-mini"),
    )
    for row in (downgraded, refused, allowed):
        assert row["environment"] == "restricted" and row["key_fingerprint"] == key_fingerprint(OPENAI_KEY)


def test_the_proxy_logged_no_traceback(wproxy: ProxyProcess) -> None:
    assert wproxy.alive()
    assert "Traceback" not in wproxy.log_text()
