"""End to end: OpenAI Realtime over WebSocket, the real openai SDK through mitmdump + tokometer.

Client (``AsyncOpenAI().realtime.connect``, HTTPS_PROXY, SSL_CERT_FILE = the proxy's CA) -> mitmdump
with the addon -> a fake Realtime server over WSS on 127.0.0.1 (tests/fake_realtime.py); rows
asserted in DuckDB. One proxy serves the file: each test has its own environment or tag.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import OPENAI_KEY, ProxyProcess, one_proxy, received, rows_for, run_json_client, tagged_headers
from fake_realtime import DELTA_BYTES, TRANSCRIPTION_USAGE, FakeRealtime
from genai_prices import Usage as GPUsage
from genai_prices import calc_price

from addon.api_keys import key_fingerprint
from addon.budgets import format_usd

# The session's instructions (a prompt): never written by the proxy.
SECRET_PROMPT = "tokometer-secret-prompt-7f3a: tell me about the weather in Zanzibar"

POLICIES = """\
default_environment: development
environments:
  development: {}
  restricted:
    models:
      allow: [gpt-realtime-mini, gpt-4o-mini-transcribe]
      on_disallowed: downgrade
      downgrade: {gpt-realtime: gpt-realtime-mini, gpt-4o-transcribe: gpt-4o-mini-transcribe}
  capped:
    budget: {usd: 0.0001, period: day}
"""
# RESPONSE_USAGE: 1,000 input (300 audio) of which 400 cached (100 audio); 500 output (400 audio).
RESPONSE_COUNTS = GPUsage(
    input_tokens=1000,
    cache_read_tokens=400,
    output_tokens=500,
    input_audio_tokens=300,
    output_audio_tokens=400,
    cache_audio_read_tokens=100,
)
TRANSCRIPTION_COUNTS = GPUsage(input_tokens=150, output_tokens=20, input_audio_tokens=120)


def price_of(model: str, counts: GPUsage) -> Decimal:
    return calc_price(counts, model, provider_id="openai").total_price


@pytest.fixture(scope="module")
def realtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeRealtime]:
    with FakeRealtime(tmp_path_factory.mktemp("fake-realtime")) as fake:
        yield fake


@pytest.fixture(scope="module")
def rproxy(tmp_path_factory: pytest.TempPathFactory, realtime: FakeRealtime) -> Iterator[ProxyProcess]:
    """mitmdump with the addon; api.openai.com goes to the fake Realtime server."""
    yield from one_proxy(tmp_path_factory.mktemp("rproxy"), realtime.port, POLICIES)


def tag() -> str:
    return uuid.uuid4().hex[:12]


def connect(
    proxy: ProxyProcess,
    *steps: str,
    env: str,
    t: str,
    model: str = "gpt-realtime",
    fake: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
) -> tuple[int, list[dict[str, Any]]]:
    """Run the SDK client through the proxy; its exit code and JSON lines."""
    return run_json_client(
        proxy,
        "realtime_client.py",
        "--model",
        model,
        "--headers",
        json.dumps(tagged_headers(env, t, fake)),
        "--query",
        json.dumps(query or {}),
        "--instructions",
        SECRET_PROMPT,
        *steps,
        codes=(0, 3),
    )


def test_session_rows_tokens_costs_and_bytes(rproxy: ProxyProcess, realtime: FakeRealtime) -> None:
    """A transcription and two responses: three rows, each priced as genai-prices prices it; every
    message reaches the client byte for byte; neither the key nor the prompt is written anywhere."""
    t = tag()
    code, lines = connect(
        rproxy, "transcribe:gpt-4o-transcribe", "speak", "respond", "respond", env="development", t=t
    )
    assert code == 0 and lines[-1] == {"event": "done", "notice": None}
    [session] = realtime.sessions_for(t)
    session.ended.wait(5)
    assert session.path == "/v1/realtime?model=gpt-realtime"
    assert session.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert "x-metering-tags" not in session.headers
    # Every message the server sent reached the client, byte for byte (audio deltas included).
    got = received(lines)
    assert [line["sha256"] for line in got] == [hashlib.sha256(d).hexdigest() for d in session.sent]
    assert sum(line["type"] == "response.output_audio.delta" for line in got) == 6
    assert all(line["size"] > DELTA_BYTES for line in got if line["type"] == "response.output_audio.delta")
    assert session.received_types() == [
        "session.update",
        "input_audio_buffer.append",
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
        "response.create",
        "response.create",
    ]

    transcription, first, second = rows_for(rproxy, t, 3)
    for row in (transcription, first, second):
        assert (row["provider"], row["host"], row["path"]) == ("openai", "api.openai.com", "/v1/realtime")
        assert (row["api_flavor"], row["streamed"], row["status_code"]) == ("realtime", True, 101)
        assert (row["environment"], row["environment_source"]) == ("development", "header")
        assert json.loads(row["tags"]) == {"test": t}
        assert row["key_fingerprint"] == key_fingerprint(OPENAI_KEY)
        assert row["action"] == "allowed" and row["aborted"] is False
        assert row["usage_source"] == "reported" and row["price_status"] == "priced"
        assert row["client_pid"] is not None
    assert len({row["id"] for row in (transcription, first, second)}) == 3
    # The transcription: its own model, priced at its audio rates.
    assert transcription["model_requested"] == transcription["model_sent"] == "gpt-4o-transcribe"
    assert transcription["model_reported"] is None
    assert (transcription["input_tokens"], transcription["output_tokens"]) == (150, 20)
    assert transcription["input_audio_tokens"] == TRANSCRIPTION_USAGE["input_token_details"]["audio_tokens"]
    assert transcription["cost_usd"] == price_of("gpt-4o-transcribe", TRANSCRIPTION_COUNTS)
    assert transcription["cost_usd"] == Decimal("0.000995")  # 30 x $2.50 + 120 x $6 + 20 x $10 per 1M
    # The responses: the session's model, priced at gpt-realtime's audio and cached-audio rates.
    for row in (first, second):
        assert (row["model_requested"], row["model_sent"]) == ("gpt-realtime", "gpt-realtime")
        assert row["model_reported"] == "gpt-realtime-2025-08-28"
        assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (1000, 400, 500)
        assert (row["input_audio_tokens"], row["cache_audio_read_tokens"], row["output_audio_tokens"]) == (
            300,
            100,
            400,
        )
        assert row["input_image_tokens"] is None and row["reasoning_tokens"] == 0
        assert row["cost_usd"] == price_of("gpt-realtime", RESPONSE_COUNTS) == Decimal("0.03536")
        assert row["price_model"] == "gpt-realtime"
        assert row["duration_ms"] is not None and 0 <= row["duration_ms"] < 10_000
        assert row["error"] is None
    assert first["ts"] <= second["ts"]
    # Privacy: the key, the prompt (which session.updated echoes) and the transcripts are in no
    # file the proxy wrote.
    assert any(SECRET_PROMPT.encode() in data for data in session.sent)
    rproxy.rows("SELECT 1")  # flushed
    secrets = (OPENAI_KEY, SECRET_PROMPT, "Hello there, how can I help?", "What is the weather like?")
    for f in rproxy.tmp.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            for secret in secrets:
                assert secret.encode() not in data, (f, secret)


def test_disallowed_model_is_downgraded_in_the_query(rproxy: ProxyProcess, realtime: FakeRealtime) -> None:
    t = tag()
    code, lines = connect(rproxy, "respond", env="restricted", t=t, query={"trace": "a b/c"})
    assert code == 0
    notice = lines[-1]["notice"]
    assert notice.startswith("downgraded gpt-realtime -> gpt-realtime-mini")
    assert len(realtime.sessions_for(t)) == 1
    [(path, _)] = realtime.handshakes_for(t)
    assert parse_qs(urlsplit(path).query) == {"model": ["gpt-realtime-mini"], "trace": ["a b/c"]}
    assert urlsplit(path).path == "/v1/realtime"
    [row] = rows_for(rproxy, t, 1)
    assert (row["environment"], row["action"]) == ("restricted", "downgraded")
    assert (row["model_requested"], row["model_sent"]) == ("gpt-realtime", "gpt-realtime-mini")
    assert row["model_reported"] == "gpt-realtime-mini-2025-10-06"
    assert row["cost_usd"] == price_of("gpt-realtime-mini", RESPONSE_COUNTS)


def test_blocked_model_is_refused_before_upstream(rproxy: ProxyProcess, realtime: FakeRealtime) -> None:
    t = tag()
    code, lines = connect(rproxy, "respond", env="restricted", t=t, model="gpt-4o-realtime-preview")
    assert code == 3
    [refused] = lines
    assert refused["status"] == 403
    error = json.loads(refused["body"])["error"]
    assert error["code"] == "model_not_allowed"
    assert error["message"].startswith(
        "tokometer: model gpt-4o-realtime-preview is not allowed in environment"
    )
    assert realtime.handshakes_for(t) == []  # never contacted
    [row] = rows_for(rproxy, t, 1)
    assert (row["action"], row["status_code"], row["api_flavor"]) == ("blocked", 403, "realtime")
    assert (row["model_requested"], row["model_sent"]) == ("gpt-4o-realtime-preview", None)
    assert (row["cost_usd"], row["price_status"]) == (Decimal(0), "not_billed")
    assert row["key_fingerprint"] == key_fingerprint(OPENAI_KEY)


def test_upstream_refusing_the_handshake_is_a_row_not_billed(
    rproxy: ProxyProcess, realtime: FakeRealtime
) -> None:
    t = tag()
    code, lines = connect(rproxy, "respond", env="development", t=t, fake={"X-Fake-Status": "401"})
    assert code == 3 and lines[0]["status"] == 401
    assert len(realtime.handshakes_for(t)) == 1 and realtime.sessions_for(t) == []
    [row] = rows_for(rproxy, t, 1)
    assert (row["action"], row["status_code"], row["model_sent"]) == ("allowed", 401, "gpt-realtime")
    assert (row["cost_usd"], row["price_status"], row["error"]) == (
        Decimal(0),
        "not_billed",
        "upstream answered 401",
    )


def test_a_response_cut_by_the_client_is_an_aborted_row(rproxy: ProxyProcess, realtime: FakeRealtime) -> None:
    t = tag()
    code, _ = connect(rproxy, "respond-then-leave", env="development", t=t, fake={"X-Fake-Hold": "1"})
    assert code == 0
    [row] = rows_for(rproxy, t, 1)
    assert (row["aborted"], row["streamed"], row["model_reported"]) == (True, True, "gpt-realtime-2025-08-28")
    assert row["input_tokens"] is None and row["output_tokens"] is None and row["usage_source"] == "none"
    assert (row["cost_usd"], row["price_status"]) == (None, "no_usage")
    assert "before response.done: usage unknown" in row["error"]


def test_spent_budget_caps_the_session(rproxy: ProxyProcess, realtime: FakeRealtime) -> None:
    """The first response is metered and spends the budget; the next response.create never goes
    upstream: the client gets an error event and the socket closes. A new session is refused."""
    t = tag()
    code, lines = connect(rproxy, "respond", "respond", env="capped", t=t)
    assert code == 0
    [session] = realtime.sessions_for(t)
    assert session.ended.wait(5)
    assert session.received_types() == ["response.create"]  # the second one never went upstream
    got = received(lines)
    assert got[-2]["type"] == "response.done"
    error = got[-1]["data"]
    assert error["type"] == "error"
    assert (error["error"]["type"], error["error"]["code"]) == ("invalid_request_error", "budget_exceeded")
    [row] = rows_for(rproxy, t, 1)
    cost = price_of("gpt-realtime", RESPONSE_COUNTS)
    assert row["cost_usd"] == cost
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert error["error"]["message"].startswith(
        f"tokometer: capped budget of $0.0001 per day is spent: {format_usd(cost)} used since {today} (UTC); "
        "resets in "
    )
    assert lines[-2] == {"event": "closed", "code": 1000}
    # What the server sent before the cap reached the client unchanged; then only the error.
    assert [line["sha256"] for line in got[:-1]] == [hashlib.sha256(d).hexdigest() for d in session.sent]
    # A new session in that environment is refused at the handshake, like any call.
    t2 = tag()
    code, lines = connect(rproxy, "respond", env="capped", t=t2)
    assert code == 3 and lines[0]["status"] == 429
    assert json.loads(lines[0]["body"])["error"]["code"] == "budget_exceeded"
    assert realtime.handshakes_for(t2) == []
    [refused] = rows_for(rproxy, t2, 1)
    assert (refused["action"], refused["status_code"], refused["cost_usd"]) == (
        "over_budget",
        429,
        Decimal(0),
    )


def test_a_disallowed_transcription_model_is_downgraded_in_the_session_update(
    rproxy: ProxyProcess, realtime: FakeRealtime
) -> None:
    t = tag()
    steps = ("transcribe:gpt-4o-transcribe", "speak")
    code, lines = connect(rproxy, *steps, env="restricted", t=t, model="gpt-realtime-mini")
    assert code == 0 and lines[-1] == {"event": "done", "notice": None}
    [session] = realtime.sessions_for(t)
    session.ended.wait(5)
    update = session.received[0]
    assert update["type"] == "session.update"
    # What OpenAI received: the model rewritten, the rest of the update as the SDK sent it.
    assert update["session"] == {
        "type": "realtime",
        "instructions": SECRET_PROMPT,
        "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}},
    }
    [row] = rows_for(rproxy, t, 1)
    assert (row["action"], row["model_requested"], row["model_sent"]) == (
        "downgraded",
        "gpt-4o-transcribe",
        "gpt-4o-mini-transcribe",
    )
    assert (row["status_code"], row["price_status"]) == (101, "priced")
    assert row["cost_usd"] == price_of("gpt-4o-mini-transcribe", TRANSCRIPTION_COUNTS)


def test_a_blocked_transcription_model_is_refused_and_the_session_goes_on(
    rproxy: ProxyProcess, realtime: FakeRealtime
) -> None:
    t = tag()
    code, lines = connect(
        rproxy, "transcribe:whisper-1", "respond", env="restricted", t=t, model="gpt-realtime-mini"
    )
    assert code == 0 and lines[-1] == {"event": "done", "notice": None}
    [session] = realtime.sessions_for(t)
    session.ended.wait(5)
    assert session.received_types() == ["response.create"]  # the update never went upstream
    got = received(lines)
    error = got[1]["data"]  # after session.created
    assert (error["type"], error["error"]["type"], error["error"]["code"]) == (
        "error",
        "invalid_request_error",
        "model_not_allowed",
    )
    assert error["error"]["param"] == "session.audio.input.transcription.model"
    assert error["error"]["message"] == (
        "tokometer: model whisper-1 is not allowed in environment restricted "
        "(allowed there: gpt-realtime-mini, gpt-4o-mini-transcribe; see policies.yaml)"
    )
    assert got[-1]["type"] == "response.done"  # the session went on
    refused, response = rows_for(rproxy, t, 2)
    assert (refused["action"], refused["status_code"], refused["model_requested"], refused["model_sent"]) == (
        "blocked",
        403,
        "whisper-1",
        None,
    )
    assert (refused["path"], refused["api_flavor"], refused["cost_usd"], refused["price_status"]) == (
        "/v1/realtime",
        "realtime",
        Decimal(0),
        "not_billed",
    )
    assert refused["key_fingerprint"] == key_fingerprint(OPENAI_KEY)
    assert refused["error"] == error["error"]["message"].removeprefix("tokometer: ")
    assert (response["action"], response["model_sent"], response["status_code"]) == (
        "allowed",
        "gpt-realtime-mini",
        101,
    )
    assert response["cost_usd"] == price_of("gpt-realtime-mini", RESPONSE_COUNTS)


def test_a_transcription_session_where_models_are_restricted_is_checked_in_its_update(
    rproxy: ProxyProcess, realtime: FakeRealtime
) -> None:
    """OpenAI's guide: ``?intent=transcription``, no model in the URL, the model in a session.update."""
    t = tag()
    code, lines = connect(
        rproxy, "transcribe-only:gpt-4o-transcribe", "speak", env="restricted", t=t, model="",
        query={"intent": "transcription"},
    )  # fmt: skip
    assert code == 0 and lines[-1] == {"event": "done", "notice": None}
    [session] = realtime.sessions_for(t)
    session.ended.wait(5)
    assert parse_qs(urlsplit(session.path).query) == {"intent": ["transcription"]}
    update = session.received[0]
    assert update["session"]["audio"]["input"]["transcription"] == {"model": "gpt-4o-mini-transcribe"}
    [row] = rows_for(rproxy, t, 1)
    assert (row["action"], row["model_requested"], row["model_sent"]) == (
        "downgraded",
        "gpt-4o-transcribe",
        "gpt-4o-mini-transcribe",
    )
    assert row["cost_usd"] == price_of("gpt-4o-mini-transcribe", TRANSCRIPTION_COUNTS)


def test_the_proxy_logged_no_traceback(rproxy: ProxyProcess) -> None:
    """Nothing above left the proxy in a bad state: it still runs and logged no traceback."""
    assert rproxy.alive()
    assert "Traceback" not in rproxy.log_text()
