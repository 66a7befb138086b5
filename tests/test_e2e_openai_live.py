"""End to end: OpenAI Live over WebSocket, the real openai SDK through mitmdump + tokometer.

Client (``client.live.connect()``, HTTPS_PROXY, SSL_CERT_FILE = the proxy's CA) -> mitmdump with the
addon -> a fake Live server over WSS on 127.0.0.1 (tests/fake_openai_live.py), api.openai.com
mapped to it; rows asserted in DuckDB, costs as genai-prices prices the same seconds. One proxy
serves the file: each test has its own environment or tag.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest
from conftest import ProxyProcess, one_proxy, received, rows_for, run_json_client, tagged_headers
from fake_openai_live import DELEGATE_MODEL, PATH, TRANSCRIPT, FakeLiveSession, FakeOpenAILive
from genai_prices import Usage as GPUsage
from genai_prices import calc_price

from addon.api_keys import key_fingerprint

KEY = "sk-live-e2e-TESTkey-000111222333"
SECRET_INSTRUCTIONS = "tokometer-secret-live-instructions-5d1e: answer as a pirate"
POLICIES = """\
default_environment: development
environments:
  development: {}
  restricted:
    models:
      allow: [gpt-live-1, gpt-5-mini]
      on_disallowed: downgrade
      downgrade: {gpt-live-1.1: gpt-live-1, gpt-5: gpt-5-mini}
  blocked:
    models: {allow: [gpt-live-1], on_disallowed: block}
  capped:
    budget: {usd: 0.001, period: day}
  capped_mid:
    budget: {usd: 0.001, period: day}
  capped_stall:
    budget: {usd: 0.001, period: day}
"""
STORED = Decimal("1E-10")  # calls.cost_usd is DECIMAL(18,10)


def seconds_cost(seconds: float, model: str = "gpt-live-1") -> Decimal:
    """What genai-prices charges for ``seconds`` of ``model``, as the column keeps it (DECIMAL(18,10))."""
    exact = calc_price(GPUsage(audio_seconds=seconds), model, provider_id="openai").total_price
    return exact.quantize(STORED, ROUND_HALF_UP)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeOpenAILive]:
    with FakeOpenAILive(tmp_path_factory.mktemp("fake-openai-live")) as fake:
        yield fake


@pytest.fixture(scope="module")
def oproxy(tmp_path_factory: pytest.TempPathFactory, live: FakeOpenAILive) -> Iterator[ProxyProcess]:
    """mitmdump with the addon; api.openai.com goes to the fake."""
    yield from one_proxy(tmp_path_factory.mktemp("oproxy"), live.port, POLICIES)


def tag() -> str:
    return uuid.uuid4().hex[:12]


def connect(
    proxy: ProxyProcess,
    *steps: str,
    env: str,
    t: str,
    model: str = "gpt-live-1",
    fake: dict[str, str] | None = None,
    delegate: str | None = None,
    fork: str | None = None,
) -> tuple[int, list[dict[str, Any]]]:
    """Run the SDK client through the proxy (``fork``: forking that stored session); its exit code
    and JSON lines."""
    headers = {"Authorization": f"Bearer {KEY}", **tagged_headers(env, t, fake)}
    return run_json_client(
        proxy,
        "openai_live_client.py",
        "--model",
        model,
        "--headers",
        json.dumps(headers),
        "--instructions",
        SECRET_INSTRUCTIONS,
        *(["--delegate", delegate] if delegate else []),
        *(["--fork", fork] if fork else []),
        *steps,
        codes=(0, 3),
    )


def session_of(live: FakeOpenAILive, t: str) -> FakeLiveSession:
    [session] = live.sessions_for(t)
    assert session.ended.wait(5)
    return session


def test_session_rows_seconds_costs_and_bytes(oproxy: ProxyProcess, live: FakeOpenAILive) -> None:
    """Three usage reports (3, 3 again, 8 s) and the close (11 s): a row per increase (3, 5, 3 s),
    each priced as genai-prices prices those seconds, adding up to the session's total; every
    message reaches the client byte for byte; neither the key, the instructions nor the transcript
    is written anywhere."""
    t = tag()
    code, lines = connect(oproxy, "audio", "audio", "audio", "close", env="development", t=t)
    assert code == 0 and lines[-1] == {"event": "done"}
    session = session_of(live, t)
    assert session.path == PATH
    assert session.headers["authorization"] == f"Bearer {KEY}" and "x-metering-tags" not in session.headers
    assert session.kinds() == ["session.start", *["session.input_audio.append"] * 6, "session.close"]
    start = session.received[0]["session"]
    assert (start["model"], start["instructions"]) == ("gpt-live-1", SECRET_INSTRUCTIONS)
    got = received(lines)
    assert [line["sha256"] for line in got] == [hashlib.sha256(d).hexdigest() for d in session.sent]
    assert got[-1]["type"] == "session.closed"

    rows = rows_for(oproxy, t, 3)
    for row in rows:
        assert (row["provider"], row["host"], row["path"]) == ("openai", "api.openai.com", PATH)
        assert (row["api_flavor"], row["streamed"], row["status_code"]) == ("live", True, 101)
        assert (row["environment"], row["environment_source"]) == ("development", "header")
        assert json.loads(row["tags"]) == {"test": t}
        assert row["key_fingerprint"] == key_fingerprint(KEY)
        assert row["action"] == "allowed" and row["aborted"] is False and row["error"] is None
        assert (row["model_requested"], row["model_sent"], row["model_reported"]) == ("gpt-live-1",) * 3
        assert row["usage_source"] == "reported" and row["price_status"] == "priced"
        assert row["price_model"] == "gpt-live-1" and row["input_tokens"] == 0
        assert row["duration_ms"] is not None and 0 <= row["duration_ms"] < 10_000
        assert row["client_pid"] is not None
    assert [row["audio_seconds"] for row in rows] == [3, 5, 3]
    assert [row["cost_usd"] for row in rows] == [seconds_cost(3), seconds_cost(5), seconds_cost(3)]
    assert rows[0]["cost_usd"] == Decimal("0.0025")
    total = oproxy.rows(
        "SELECT sum(audio_seconds) AS s, sum(cost_usd) AS c FROM calls WHERE tags LIKE ?", [f"%{t}%"]
    )
    assert (total[0]["s"], total[0]["c"]) == (11, seconds_cost(11))
    # Privacy: the key, the instructions and the transcript are in no file the proxy wrote.
    assert any(TRANSCRIPT.encode() in data for data in session.sent)
    oproxy.rows("SELECT 1")  # flushed
    for f in oproxy.tmp.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            for secret in (KEY, SECRET_INSTRUCTIONS, TRANSCRIPT):
                assert secret.encode() not in data, (f, secret)


def test_disallowed_model_is_downgraded_in_the_start(oproxy: ProxyProcess, live: FakeOpenAILive) -> None:
    t = tag()
    code, lines = connect(oproxy, "audio", "close", env="restricted", t=t, model="gpt-live-1.1")
    assert code == 0 and lines[-1] == {"event": "done"}
    start = session_of(live, t).received[0]["session"]
    assert (start["model"], start["instructions"]) == ("gpt-live-1", SECRET_INSTRUCTIONS)
    first, last = rows_for(oproxy, t, 2)
    for row in (first, last):
        assert (row["environment"], row["action"]) == ("restricted", "downgraded")
        assert (row["model_requested"], row["model_sent"]) == ("gpt-live-1.1", "gpt-live-1")
    assert (first["audio_seconds"], last["audio_seconds"]) == (3, 8)
    assert first["cost_usd"] + last["cost_usd"] == seconds_cost(11)


def test_blocked_model_is_refused_at_the_start(oproxy: ProxyProcess, live: FakeOpenAILive) -> None:
    """The SDK gets Live's error event for its session.start, then the proxy's close 1008; upstream
    never gets the start, only the close."""
    t = tag()
    code, lines = connect(oproxy, "audio", env="blocked", t=t, model="gpt-live-1.1")
    assert code == 0
    error, closed = lines[0], lines[1]
    assert error.get("type") == "error", lines
    assert error["data"]["client_event_id"] == "event_start"
    assert (error["data"]["error"]["code"], error["data"]["error"]["param"]) == (
        "model_not_allowed",
        "session.model",
    )
    assert error["data"]["error"]["message"].startswith("tokometer: model gpt-live-1.1 is not allowed")
    assert (closed["event"], closed["code"]) == ("closed", 1008)
    assert closed["reason"].startswith("tokometer: model gpt-live-1.1 is not allowed")
    session = session_of(live, t)
    assert session.received == [] and session.close is not None and session.close[0] == 1008
    [row] = rows_for(oproxy, t, 1)
    assert (row["action"], row["status_code"], row["api_flavor"]) == ("blocked", 101, "live")
    assert (row["model_requested"], row["model_sent"]) == ("gpt-live-1.1", None)
    assert (row["cost_usd"], row["price_status"]) == (Decimal(0), "not_billed")


def test_a_disallowed_delegation_model_is_downgraded_in_the_start(
    oproxy: ProxyProcess, live: FakeOpenAILive
) -> None:
    """The Responses model the session delegates to is checked too: upstream gets it rewritten
    (only that value), the session runs and is metered as downgraded."""
    t = tag()
    code, lines = connect(oproxy, "audio", "close", env="restricted", t=t, delegate="gpt-5")
    assert code == 0 and lines[-1] == {"event": "done"}
    session = session_of(live, t)
    start = session.received[0]["session"]
    assert (start["model"], start["delegation"]) == (
        "gpt-live-1",
        {"type": "responses", "responses": {"model": "gpt-5-mini"}},
    )
    assert start["instructions"] == SECRET_INSTRUCTIONS
    first, last = rows_for(oproxy, t, 2)
    for row in (first, last):
        assert (row["environment"], row["action"], row["model_sent"]) == (
            "restricted",
            "downgraded",
            "gpt-live-1",
        )


def test_a_blocked_delegation_model_refuses_the_session(oproxy: ProxyProcess, live: FakeOpenAILive) -> None:
    """The session's own model is allowed, its delegation's is not: refused as a disallowed model is
    (Live's error event naming the delegation's parameter, a close 1008, a row not billed)."""
    t = tag()
    code, lines = connect(oproxy, "audio", env="blocked", t=t, delegate="gpt-5")
    assert code == 0
    error, closed = lines[0], lines[1]
    assert error.get("type") == "error", lines
    assert (error["data"]["error"]["code"], error["data"]["error"]["param"]) == (
        "model_not_allowed",
        "session.delegation.responses.model",
    )
    assert error["data"]["error"]["message"].startswith("tokometer: model gpt-5 is not allowed")
    assert (closed["event"], closed["code"]) == ("closed", 1008)
    session = session_of(live, t)
    assert session.received == [] and session.close is not None and session.close[0] == 1008
    [row] = rows_for(oproxy, t, 1)
    assert (row["action"], row["status_code"], row["api_flavor"]) == ("blocked", 101, "live")
    assert (row["model_requested"], row["model_sent"]) == ("gpt-5", None)
    assert (row["cost_usd"], row["price_status"]) == (Decimal(0), "not_billed")


def test_a_session_the_client_leaves_is_an_aborted_row(oproxy: ProxyProcess, live: FakeOpenAILive) -> None:
    t = tag()
    code, _ = connect(oproxy, "audio", "leave", env="development", t=t)
    assert code == 0
    first, cut = rows_for(oproxy, t, 2)
    assert (first["audio_seconds"], first["cost_usd"]) == (3, seconds_cost(3))
    assert (cut["aborted"], cut["audio_seconds"], cut["usage_source"]) == (True, None, "none")
    assert (cut["cost_usd"], cut["price_status"]) == (None, "no_usage")
    assert "before session.closed: the seconds after the last usage report are unknown" in cut["error"]


def test_spent_budget_caps_the_session_and_meters_its_end(oproxy: ProxyProcess, live: FakeOpenAILive) -> None:
    """The first report (3 s, $0.0025) spends the $0.001 budget; the client's next audio never goes
    upstream: the client gets an error event, upstream a session.close, whose session.closed (the
    final 11 s) is metered and reaches the client. A new session is refused at the handshake."""
    t = tag()
    code, lines = connect(oproxy, "audio", "audio", env="capped", t=t)
    assert code == 0
    session = session_of(live, t)
    assert session.kinds() == ["session.start", *["session.input_audio.append"] * 2, "session.close"]
    got = received(lines)
    error = next(line for line in got if line["type"] == "error")
    assert error["data"]["error"]["code"] == "budget_exceeded"
    assert error["data"]["error"]["message"].startswith("tokometer: capped budget of $0.001 per day is spent")
    upstream = [line["sha256"] for line in got if line is not error]
    assert upstream == [hashlib.sha256(d).hexdigest() for d in session.sent]  # as sent, closed included
    assert got[-1]["type"] == "session.closed" and lines[-2]["event"] == "closed"
    first, last = rows_for(oproxy, t, 2)
    assert (first["audio_seconds"], last["audio_seconds"]) == (3, 8)
    assert (first["cost_usd"], last["cost_usd"]) == (seconds_cost(3), seconds_cost(8))
    assert last["aborted"] is False
    t2 = tag()
    code, lines = connect(oproxy, "audio", env="capped", t=t2)
    assert code == 3 and lines[0]["status"] == 429
    assert json.loads(lines[0]["body"])["error"]["code"] == "budget_exceeded"
    assert live.sessions_for(t2) == []
    [refused] = rows_for(oproxy, t2, 1)
    assert (refused["action"], refused["status_code"], refused["api_flavor"], refused["cost_usd"]) == (
        "over_budget",
        429,
        "live",
        Decimal(0),
    )


def test_delegated_responses_calls_are_billed_apart(oproxy: ProxyProcess, live: FakeOpenAILive) -> None:
    """The Responses call a session delegates to is a row of its own, priced by its tokens."""
    t = tag()
    fake = {"X-Fake-Delegate": "1"}
    code, _ = connect(oproxy, "audio", "close", env="development", t=t, fake=fake, delegate=DELEGATE_MODEL)
    assert code == 0
    rows = rows_for(oproxy, t, 3)
    [call] = [row for row in rows if row["api_flavor"] == "responses"]
    assert (call["path"], call["status_code"], call["model_reported"]) == (PATH, 101, DELEGATE_MODEL)
    assert (call["input_tokens"], call["cache_read_tokens"], call["output_tokens"]) == (900, 100, 250)
    counts = GPUsage(input_tokens=900, cache_read_tokens=100, output_tokens=250)
    assert call["cost_usd"] == calc_price(counts, DELEGATE_MODEL, provider_id="openai").total_price
    assert sorted(r["audio_seconds"] for r in rows if r["api_flavor"] == "live") == [3, 8]


def attach(proxy: ProxyProcess, session_id: str, *steps: str, env: str, t: str) -> list[dict[str, Any]]:
    """Run the SDK's sideband (``client.live.sideband.connect()``) through the proxy; its JSON lines."""
    headers = {"Authorization": f"Bearer {KEY}", **tagged_headers(env, t)}
    code, lines = run_json_client(
        proxy,
        "openai_live_sideband_client.py",
        "--session-id",
        session_id,
        "--headers",
        json.dumps(headers),
        *steps,
    )
    assert code == 0 and lines[-1] == {"event": "done"}, lines
    return lines


def test_a_sideband_of_a_session_not_seen_here_is_checked_and_metered(
    oproxy: ProxyProcess, live: FakeOpenAILive
) -> None:
    """A server attached to a WebRTC session (its media never pass the proxy): its session.update
    naming a disallowed delegation model goes upstream downgraded, and the session's usage reports,
    seen only on the sideband, are metered as a primary's (3, 5, then 3 s at the close), priced by
    the model session.updated names; every message reaches it byte for byte."""
    t = tag()
    session_id = f"live_rtc_{t}"
    lines = attach(oproxy, session_id, "update:gpt-5", "listen:3", "close", env="restricted", t=t)
    session = session_of(live, t)
    assert session.path == f"{PATH}/{session_id}/attach"
    assert [e["type"] for e in session.received] == ["session.update", "session.close"]
    assert session.received[0]["session"]["delegation"]["responses"]["model"] == "gpt-5-mini"
    got = received(lines)
    assert [line["sha256"] for line in got] == [hashlib.sha256(d).hexdigest() for d in session.sent]
    rows = rows_for(oproxy, t, 3)
    for row in rows:
        assert (row["api_flavor"], row["path"], row["status_code"]) == ("live", session.path, 101)
        assert (row["environment"], row["model_reported"], row["price_status"]) == (
            "restricted",
            "gpt-live-1",
            "priced",
        )
        assert row["key_fingerprint"] == key_fingerprint(KEY) and row["aborted"] is False
    assert [row["audio_seconds"] for row in rows] == [3, 5, 3]
    assert [row["cost_usd"] for row in rows] == [seconds_cost(3), seconds_cost(5), seconds_cost(3)]


def test_a_sidebands_blocked_update_is_refused(oproxy: ProxyProcess, live: FakeOpenAILive) -> None:
    """The update never goes upstream: the sideband gets Live's error event, a row not billed; the
    session goes on, and its final total (session.closed, naming the model) is metered."""
    t = tag()
    lines = attach(oproxy, f"live_rtc_{t}", "update:gpt-5", "close", env="blocked", t=t)
    session = session_of(live, t)
    assert [e["type"] for e in session.received] == ["session.close"]
    error = received(lines)[0]
    assert error["type"] == "error" and error["data"]["client_event_id"] == "event_upd"
    assert (error["data"]["error"]["code"], error["data"]["error"]["param"]) == (
        "model_not_allowed",
        "session.delegation.responses.model",
    )
    rows = rows_for(oproxy, t, 2)  # the seconds' row starts at the attach, before the refusal
    [refused] = [row for row in rows if row["action"] == "blocked"]
    [seconds] = [row for row in rows if row["action"] == "allowed"]
    assert (refused["action"], refused["status_code"], refused["model_requested"]) == (
        "blocked",
        403,
        "gpt-5",
    )
    assert (refused["cost_usd"], refused["price_status"]) == (Decimal(0), "not_billed")
    assert (seconds["audio_seconds"], seconds["model_reported"], seconds["cost_usd"]) == (
        11,
        "gpt-live-1",
        seconds_cost(11),
    )


def test_a_fork_is_checked_and_metered_as_a_session(oproxy: ProxyProcess, live: FakeOpenAILive) -> None:
    """A fork over WebSocket (``client.live.forks.connect()``): its start names no model (inherited)
    and a delegation model the environment downgrades, rewritten upstream; its usage reports are
    metered as a primary's, on the fork's path, priced by the model its session.started names."""
    t = tag()
    stored = f"live_stored_{t}"
    code, lines = connect(oproxy, "audio", "close", env="restricted", t=t, delegate="gpt-5", fork=stored)
    assert code == 0 and lines[-1] == {"event": "done"}, lines
    session = session_of(live, t)
    assert session.path == f"{PATH}/{stored}/fork"
    start = session.received[0]
    assert start["type"] == "session.start" and "model" not in start["session"]
    assert start["session"]["delegation"] == {"type": "responses", "responses": {"model": "gpt-5-mini"}}
    got = received(lines)
    assert [line["sha256"] for line in got] == [hashlib.sha256(d).hexdigest() for d in session.sent]
    first, last = rows_for(oproxy, t, 2)
    for row in (first, last):
        assert (row["path"], row["api_flavor"], row["status_code"]) == (session.path, "live", 101)
        assert (row["environment"], row["action"], row["model_requested"], row["model_reported"]) == (
            "restricted",
            "downgraded",
            None,
            "gpt-live-1",
        )
        assert (row["price_status"], row["price_model"]) == ("priced", "gpt-live-1")
    assert (first["audio_seconds"], last["audio_seconds"]) == (3, 8)
    assert first["cost_usd"] + last["cost_usd"] == seconds_cost(11)


def test_a_fork_inheriting_a_blocked_model_is_refused_as_it_starts(
    oproxy: ProxyProcess, live: FakeOpenAILive
) -> None:
    """The stored session ran gpt-live-1.1, which the environment does not allow: the fork's
    session.started never reaches the client, which gets Live's error event and the proxy's close
    1008 (upstream too)."""
    t = tag()
    fake = {"X-Fake-Stored-Model": "gpt-live-1.1"}
    code, lines = connect(oproxy, "audio", env="blocked", t=t, fake=fake, fork=f"live_stored_{t}")
    assert code == 0
    error, closed = lines[0], lines[1]
    assert error.get("type") == "error", lines
    assert (error["data"]["error"]["code"], error["data"]["error"]["param"]) == (
        "model_not_allowed",
        "session.model",
    )
    assert (closed["event"], closed["code"]) == ("closed", 1008)
    assert closed["reason"].startswith("tokometer: model gpt-live-1.1 is not allowed")
    session = session_of(live, t)
    assert session.close is not None and session.close[0] == 1008
    refused = rows_for(oproxy, t, 2)[0]
    assert (refused["action"], refused["model_requested"], refused["cost_usd"]) == (
        "blocked",
        "gpt-live-1.1",
        Decimal(0),
    )


def test_the_proxy_logged_no_traceback(oproxy: ProxyProcess) -> None:
    """Nothing above left the proxy in a bad state: it still runs and logged no traceback."""
    assert oproxy.alive()
    assert "Traceback" not in oproxy.log_text()


def test_the_caps_error_event_is_not_spliced_into_a_half_received_message(
    oproxy: ProxyProcess, live: FakeOpenAILive
) -> None:
    """The budget runs out while upstream's next 40 KB audio delta has half arrived: the error event
    the proxy injects reaches the client whole and on its own, and so does the delta once its rest
    comes (mitmproxy appended an injected message to the half-received one: the client got both
    cut and glued together)."""
    t = tag()
    code, lines = connect(oproxy, "audio", "audio", env="capped_mid", t=t, fake={"X-Fake-Split": "usage"})
    assert code == 0
    session = session_of(live, t)
    got = received(lines)
    [error] = [line for line in got if line["type"] == "error"]
    assert error["data"]["error"]["code"] == "budget_exceeded"
    upstream = [line["sha256"] for line in got if line is not error]
    assert upstream == [hashlib.sha256(d).hexdigest() for d in session.sent]
    assert got[-1]["type"] == "session.closed"


def test_the_graces_close_is_not_lost_in_a_half_received_message(
    oproxy: ProxyProcess, live: FakeOpenAILive
) -> None:
    """A capped session whose upstream stalls mid-message after the session.close: the proxy's close
    after the grace still reaches the client (the empty message it injects to queue the close was
    appended to the half-received one: the client got a cut message and no close)."""
    t = tag()
    code, lines = connect(oproxy, "audio", "audio", env="capped_stall", t=t, fake={"X-Fake-Split": "close"})
    assert code == 0
    session = session_of(live, t)
    got = received(lines)
    assert [line["type"] for line in got][-1] == "error"
    assert [line["sha256"] for line in got[:-1]] == [hashlib.sha256(d).hexdigest() for d in session.sent[:-1]]
    closed = lines[-2]
    assert (closed["event"], closed["code"]) == ("closed", 1008)
    assert closed["reason"].startswith("tokometer: capped_stall budget of $0.001 per day is spent")
    first, cut = rows_for(oproxy, t, 2)
    assert (first["audio_seconds"], cut["aborted"]) == (3, True)
