"""End to end: Gemini Live over WebSocket, the real google-genai SDK through mitmdump + tokometer.

Client (``client.aio.live.connect``, HTTPS_PROXY, SSL_CERT_FILE = the proxy's CA) -> mitmdump with
the addon -> a fake Live server over WSS on 127.0.0.1 (tests/fake_gemini_live.py), the Developer
API's and Vertex AI's hosts mapped to it; rows asserted in DuckDB. One proxy serves the file: each
test has its own environment or tag.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from conftest import ProxyProcess, one_proxy, received, rows_for, run_json_client, tagged_headers
from fake_gemini_live import CHUNK_BYTES, DEV_PATH, TRANSCRIPT, VERTEX_PATH, FakeGeminiLive, FakeLiveSession
from genai_prices import Usage as GPUsage
from genai_prices import calc_price

from addon.api_keys import key_fingerprint

KEY = "AIzaSyLiveE2EkeyTEST0000111122223333444"  # tests/clients/gemini_live_client.py's
PROJECT = "tokometer-test-project"
NATIVE = "gemini-2.5-flash-native-audio-preview-09-2025"
# The user's prompt and the session's instruction: never written by the proxy.
SECRET_PROMPT = "tokometer-secret-live-prompt-91c2: what is the weather in Zanzibar"
SECRET_INSTRUCTION = "tokometer-secret-live-instruction-4be7: answer as a pirate"

POLICIES = """\
default_environment: development
environments:
  development: {}
  restricted:
    models:
      allow: [gemini-live-2.5-flash*]
      on_disallowed: downgrade
      downgrade: {gemini-3.1-flash-live-preview: gemini-live-2.5-flash-preview}
  capped:
    budget: {usd: 0.0001, period: day}
"""
# tests/fake_gemini_live.py's TURN_USAGES, as genai-prices counts them.
FIRST = GPUsage(input_tokens=541, output_tokens=156, input_audio_tokens=131, output_audio_tokens=156)
SECOND = GPUsage(
    input_tokens=780,
    cache_read_tokens=120,
    output_tokens=230,
    input_audio_tokens=200,
    output_audio_tokens=200,
    input_image_tokens=80,
)


def price_of(model: str, counts: GPUsage) -> Decimal:
    return calc_price(counts, model, provider_id="google").total_price


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGeminiLive]:
    with FakeGeminiLive(tmp_path_factory.mktemp("fake-gemini-live")) as fake:
        yield fake


@pytest.fixture(scope="module")
def lproxy(tmp_path_factory: pytest.TempPathFactory, live: FakeGeminiLive) -> Iterator[ProxyProcess]:
    """mitmdump with the addon; the Gemini API's and Vertex's us-central1 hosts go to the fake."""
    remap = []
    for host in (r"generativelanguage\.googleapis\.com", r"us-central1-aiplatform\.googleapis\.com"):
        remap += ["--map-remote", f"|//{host}/|//127.0.0.1:{live.port}/"]
    yield from one_proxy(tmp_path_factory.mktemp("lproxy"), live.port, POLICIES, tuple(remap))


def tag() -> str:
    return uuid.uuid4().hex[:12]


def connect(
    proxy: ProxyProcess,
    *steps: str,
    env: str,
    t: str,
    model: str = NATIVE,
    fake: dict[str, str] | None = None,
    vertex: bool = False,
) -> tuple[int, list[dict[str, Any]]]:
    """Run the SDK client through the proxy; its exit code and JSON lines."""
    return run_json_client(
        proxy,
        "gemini_live_client.py",
        "--model",
        model,
        "--headers",
        json.dumps(tagged_headers(env, t, fake)),
        "--instruction",
        SECRET_INSTRUCTION,
        *(["--vertex"] if vertex else []),
        *steps,
        codes=(0, 3),
    )


def session_of(live: FakeGeminiLive, t: str) -> FakeLiveSession:
    [session] = live.sessions_for(t)
    assert session.ended.wait(5)
    return session


def test_session_rows_tokens_costs_and_bytes(lproxy: ProxyProcess, live: FakeGeminiLive) -> None:
    """A text turn and an audio turn: two rows, each priced as genai-prices prices it, summed (each
    turn billed its whole context again); every message reaches the client byte for byte; neither
    the key, the prompt nor the instruction is written anywhere."""
    t = tag()
    code, lines = connect(lproxy, f"text:{SECRET_PROMPT}", "audio", env="development", t=t)
    assert code == 0 and lines[-1] == {"event": "done"}
    session = session_of(live, t)
    assert session.path.lstrip("/") == DEV_PATH.lstrip("/")  # map_remote writes "////ws/..."
    assert session.headers["x-goog-api-key"] == KEY and "x-metering-tags" not in session.headers
    assert session.kinds() == ["setup", "client_content", *["realtime_input"] * 4]
    setup = session.received[0]["setup"]
    assert setup["model"] == f"models/{NATIVE}"
    assert setup["systemInstruction"]["parts"][0]["text"] == SECRET_INSTRUCTION
    # Every message the server sent (binary frames, deflated on the wire) reached the client as sent.
    got = received(lines)
    assert [line["sha256"] for line in got] == [hashlib.sha256(d).hexdigest() for d in session.sent]
    assert sum(line["size"] > CHUNK_BYTES for line in got) == 6  # the audio chunks

    first, second = rows_for(lproxy, t, 2)
    for row in (first, second):
        assert (row["provider"], row["host"]) == ("google", "generativelanguage.googleapis.com")
        assert row["path"] == DEV_PATH[1:]
        assert (row["api_flavor"], row["streamed"], row["status_code"]) == ("live", True, 101)
        assert (row["environment"], row["environment_source"]) == ("development", "header")
        assert json.loads(row["tags"]) == {"test": t}
        assert row["key_fingerprint"] == key_fingerprint(KEY)
        assert row["action"] == "allowed" and row["aborted"] is False
        assert (row["model_requested"], row["model_sent"], row["model_reported"]) == (NATIVE, NATIVE, None)
        assert row["usage_source"] == "reported" and row["price_status"] == "priced"
        assert row["price_model"] == "gemini-live-2.5-flash"
        assert row["duration_ms"] is not None and 0 <= row["duration_ms"] < 10_000
        assert row["client_pid"] is not None and row["error"] is None
    assert (first["input_tokens"], first["output_tokens"]) == (541, 156)
    assert (first["input_audio_tokens"], first["output_audio_tokens"]) == (131, 156)
    assert first["cost_usd"] == price_of(NATIVE, FIRST) == Decimal("0.002470")
    assert (second["input_tokens"], second["cache_read_tokens"], second["output_tokens"]) == (780, 120, 230)
    assert (second["input_audio_tokens"], second["input_image_tokens"], second["output_audio_tokens"]) == (
        200,
        80,
        200,
    )
    assert second["reasoning_tokens"] == 20
    assert second["cost_usd"] == price_of(NATIVE, SECOND)
    total = lproxy.rows(
        "SELECT sum(input_tokens) AS n, sum(cost_usd) AS c FROM calls WHERE tags LIKE ?", [f"%{t}%"]
    )
    assert (total[0]["n"], total[0]["c"]) == (1321, price_of(NATIVE, FIRST) + price_of(NATIVE, SECOND))
    # Privacy: the key, the prompt, the instruction and the transcript are in no file the proxy wrote.
    assert any(TRANSCRIPT.encode() in data for data in session.sent)
    lproxy.rows("SELECT 1")  # flushed
    secrets = (KEY, SECRET_PROMPT, SECRET_INSTRUCTION, TRANSCRIPT)
    for f in lproxy.tmp.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            for secret in secrets:
                assert secret.encode() not in data, (f, secret)


def test_disallowed_model_is_downgraded_in_the_setup(lproxy: ProxyProcess, live: FakeGeminiLive) -> None:
    t = tag()
    code, lines = connect(lproxy, "text:hi", env="restricted", t=t, model="gemini-3.1-flash-live-preview")
    assert code == 0 and lines[-1] == {"event": "done"}
    session = session_of(live, t)
    assert session.received[0]["setup"]["model"] == "models/gemini-live-2.5-flash-preview"
    assert session.received[0]["setup"]["systemInstruction"]["parts"][0]["text"] == SECRET_INSTRUCTION
    [row] = rows_for(lproxy, t, 1)
    assert (row["environment"], row["action"]) == ("restricted", "downgraded")
    assert (row["model_requested"], row["model_sent"]) == (
        "gemini-3.1-flash-live-preview",
        "gemini-live-2.5-flash-preview",
    )
    assert row["cost_usd"] == price_of("gemini-live-2.5-flash-preview", FIRST)


def test_blocked_model_is_refused_at_the_setup(lproxy: ProxyProcess, live: FakeGeminiLive) -> None:
    """The SDK raises on connect with the proxy's close (1008 and its reason, as Google refuses a
    model); upstream never gets the setup, only the close."""
    t = tag()
    code, lines = connect(lproxy, "text:hi", env="restricted", t=t, model="gemini-2.0-flash-live-001")
    assert code == 3
    [refused] = lines
    assert refused["code"] == 1008
    assert refused["message"].startswith(
        "tokometer: model gemini-2.0-flash-live-001 is not allowed in environment"
    )
    session = session_of(live, t)
    assert session.received == []  # the handshake went up (the model was not known), the setup never
    assert session.close is not None and session.close[0] == 1008
    [row] = rows_for(lproxy, t, 1)
    assert (row["action"], row["status_code"], row["api_flavor"]) == ("blocked", 101, "live")
    assert (row["model_requested"], row["model_sent"]) == ("gemini-2.0-flash-live-001", None)
    assert (row["cost_usd"], row["price_status"]) == (Decimal(0), "not_billed")
    assert row["key_fingerprint"] == key_fingerprint(KEY)


def test_upstream_refusing_the_model_passes_through(lproxy: ProxyProcess, live: FakeGeminiLive) -> None:
    """Google's own refusal (a model it does not serve live) reaches the client as Google sent it;
    no turn ran, so there is no row."""
    t = tag()
    code, lines = connect(lproxy, "text:hi", env="development", t=t, model="gemini-9-live-missing")
    assert code == 3 and lines[0]["code"] == 1008
    assert lines[0]["message"].startswith("models/gemini-9-live-missing is not found for API version v1beta")
    assert session_of(live, t).kinds() == ["setup"]
    lproxy.rows("SELECT 1")
    assert lproxy.rows("SELECT * FROM calls WHERE tags LIKE ?", [f"%{t}%"]) == []


def test_a_turn_cut_by_the_client_is_an_aborted_row(lproxy: ProxyProcess, live: FakeGeminiLive) -> None:
    t = tag()
    code, _ = connect(lproxy, "leave", env="development", t=t, fake={"X-Fake-Hold": "1"})
    assert code == 0
    [row] = rows_for(lproxy, t, 1)
    assert (row["aborted"], row["streamed"], row["model_sent"]) == (True, True, NATIVE)
    assert row["input_tokens"] is None and row["output_tokens"] is None and row["usage_source"] == "none"
    assert (row["cost_usd"], row["price_status"]) == (None, "no_usage")
    assert "before the turn's usage: usage unknown" in row["error"]


def test_usage_riding_on_content(lproxy: ProxyProcess, live: FakeGeminiLive) -> None:
    t = tag()
    code, _ = connect(lproxy, "text:hi", env="development", t=t, fake={"X-Fake-Usage-With-Content": "1"})
    assert code == 0
    [row] = rows_for(lproxy, t, 1)
    assert (row["input_tokens"], row["output_tokens"], row["cost_usd"]) == (541, 156, price_of(NATIVE, FIRST))


def test_spent_budget_caps_the_session(lproxy: ProxyProcess, live: FakeGeminiLive) -> None:
    """The first turn is metered and spends the budget; the next turn's message never goes upstream:
    the client gets a close 1011 saying so (as Google closes a session over its quota). A new
    session is refused at the handshake."""
    t = tag()
    code, lines = connect(lproxy, "text:one", "text:two", env="capped", t=t)
    assert code == 0
    session = session_of(live, t)
    assert session.kinds() == ["setup", "client_content"]  # the second turn never went upstream
    closed = lines[-1]
    assert (closed["event"], closed["code"]) == ("closed", 1011)
    assert closed["message"].startswith("tokometer: capped budget of $0.0001 per day is spent")
    # What the server sent before the cap reached the client unchanged.
    assert [line["sha256"] for line in received(lines)] == [
        hashlib.sha256(d).hexdigest() for d in session.sent
    ]
    [row] = rows_for(lproxy, t, 1)
    assert row["cost_usd"] == price_of(NATIVE, FIRST)
    t2 = tag()
    code, lines = connect(lproxy, "text:hi", env="capped", t=t2)
    assert code == 3 and lines[0]["status"] == 429
    assert json.loads(lines[0]["message"])["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert live.sessions_for(t2) == []
    [refused] = rows_for(lproxy, t2, 1)
    assert (refused["action"], refused["status_code"], refused["cost_usd"]) == (
        "over_budget",
        429,
        Decimal(0),
    )


def test_a_vertex_session(lproxy: ProxyProcess, live: FakeGeminiLive) -> None:
    """google-genai with vertexai=True: the project in the setup's model path is the credential (the
    OAuth token is never read) and a tag; Vertex's names for the counts; text frames."""
    t = tag()
    code, lines = connect(
        lproxy, "text:hi", env="development", t=t, model="gemini-live-2.5-flash", vertex=True
    )
    assert code == 0 and lines[-1] == {"event": "done"}
    session = session_of(live, t)
    assert session.path.lstrip("/") == VERTEX_PATH.lstrip("/")
    assert session.headers["authorization"] == "Bearer fake-oauth-token"
    model = f"projects/{PROJECT}/locations/us-central1/publishers/google/models/gemini-live-2.5-flash"
    assert session.received[0]["setup"]["model"] == model
    [row] = rows_for(lproxy, t, 1)
    assert (row["provider"], row["host"], row["path"]) == (
        "vertex",
        "us-central1-aiplatform.googleapis.com",
        VERTEX_PATH[1:],
    )
    assert row["key_fingerprint"] == key_fingerprint(f"vertex:{PROJECT}")
    assert json.loads(row["tags"]) == {"gcp_project": PROJECT, "test": t}
    assert (row["inference_geo"], row["model_sent"], row["input_tokens"], row["output_audio_tokens"]) == (
        "us-central1",
        "gemini-live-2.5-flash",
        541,
        156,
    )
    assert row["cost_usd"] == price_of("gemini-live-2.5-flash", FIRST)
    assert row["price_source"] == "genai-prices 0.2.3 (vertex: google list price)"
    stored = b"".join(p.read_bytes() for p in lproxy.tmp.rglob("*") if p.is_file())
    assert b"fake-oauth-token" not in stored


def test_the_proxy_logged_no_traceback(lproxy: ProxyProcess) -> None:
    """Nothing above left the proxy in a bad state: it still runs and logged no traceback."""
    assert lproxy.alive()
    assert "Traceback" not in lproxy.log_text()
