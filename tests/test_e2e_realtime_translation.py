"""End to end: OpenAI Realtime translation over WebSocket, the real openai SDK through mitmdump +
tokometer.

Client (``client.realtime.translations.connect()``, HTTPS_PROXY, SSL_CERT_FILE = the proxy's CA) ->
mitmdump with the addon -> a fake translation server over WSS on 127.0.0.1
(tests/fake_realtime_translation.py), api.openai.com mapped to it; rows asserted in DuckDB. The
server reports no usage: the rows are the audio the client sent, a row a minute, priced as
genai-prices prices those seconds. One proxy serves the file: each test has its own environment or
tag.
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
from fake_realtime_translation import MODEL, PATH, SECOND, TRANSCRIPT, FakeRealtimeTranslation
from genai_prices import Usage as GPUsage
from genai_prices import calc_price

from addon.api_keys import key_fingerprint

KEY = "sk-translate-e2e-TESTkey-000111222333"
POLICIES = """\
default_environment: development
environments:
  development: {}
  restricted:
    models:
      allow: [gpt-realtime-translate, gpt-realtime-whisper]
      on_disallowed: downgrade
      downgrade:
        gpt-realtime-translate-large: gpt-realtime-translate
        gpt-4o-transcribe: gpt-realtime-whisper
  blocked:
    models: {allow: [gpt-realtime-translate], on_disallowed: block}
  capped:
    budget: {usd: 0.01, period: day}
"""
STORED = Decimal("1E-10")  # calls.cost_usd is DECIMAL(18,10)


def seconds_cost(seconds: float) -> Decimal:
    exact = calc_price(GPUsage(audio_seconds=seconds), MODEL, provider_id="openai").total_price
    return exact.quantize(STORED, ROUND_HALF_UP)


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeRealtimeTranslation]:
    with FakeRealtimeTranslation(tmp_path_factory.mktemp("fake-translation")) as server:
        yield server


@pytest.fixture(scope="module")
def tproxy(tmp_path_factory: pytest.TempPathFactory, fake: FakeRealtimeTranslation) -> Iterator[ProxyProcess]:
    yield from one_proxy(tmp_path_factory.mktemp("tproxy"), fake.port, POLICIES)


def tag() -> str:
    return uuid.uuid4().hex[:12]


def translate(
    proxy: ProxyProcess, *steps: str, env: str, t: str, model: str = MODEL
) -> tuple[int, list[dict[str, Any]]]:
    headers = {"Authorization": f"Bearer {KEY}", **tagged_headers(env, t)}
    return run_json_client(
        proxy,
        "realtime_translation_client.py",
        "--model",
        model,
        "--headers",
        json.dumps(headers),
        *steps,
        codes=(0, 3),
    )


def test_a_session_is_metered_by_the_minute_of_audio_sent(
    tproxy: ProxyProcess, fake: FakeRealtimeTranslation
) -> None:
    """61 s of audio: a row for the first minute, one for the last second at the close, each priced
    as genai-prices prices those seconds; every message reaches the client byte for byte; neither
    the key nor the translation is written anywhere."""
    t = tag()
    code, lines = translate(tproxy, "audio:61", "close", env="development", t=t)
    assert code == 0 and lines[-1] == {"event": "done"}, lines
    [session] = fake.sessions_for(t)
    assert session.ended.wait(5)
    assert session.model == MODEL and session.headers["authorization"] == f"Bearer {KEY}"
    assert "x-metering-tags" not in session.headers
    assert session.appended_bytes() == 61 * SECOND
    got = received(lines)
    assert [line["sha256"] for line in got] == [hashlib.sha256(d).hexdigest() for d in session.sent]
    assert got[-1]["type"] == "session.closed"
    minute, rest = rows_for(tproxy, t, 2)
    for row in (minute, rest):
        assert (row["provider"], row["host"], row["path"]) == ("openai", "api.openai.com", PATH)
        assert (row["api_flavor"], row["status_code"], row["streamed"]) == ("realtime", 101, True)
        assert (row["environment"], json.loads(row["tags"])) == ("development", {"test": t})
        assert row["key_fingerprint"] == key_fingerprint(KEY)
        assert (row["model_requested"], row["model_sent"], row["model_reported"]) == (MODEL,) * 3
        assert (row["usage_source"], row["price_status"], row["price_model"]) == (
            "estimated",
            "priced",
            MODEL,
        )
        assert (row["aborted"], row["action"], row["error"]) == (False, "allowed", None)
    assert (minute["audio_seconds"], rest["audio_seconds"]) == (60, 1)
    assert (minute["cost_usd"], rest["cost_usd"]) == (seconds_cost(60), seconds_cost(1))
    assert minute["cost_usd"] == Decimal("0.034")
    assert any(TRANSCRIPT.encode() in data for data in session.sent)
    tproxy.rows("SELECT 1")  # flushed
    for f in tproxy.tmp.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            for secret in (KEY, TRANSCRIPT):
                assert secret.encode() not in data, (f, secret)


def test_a_disallowed_model_is_downgraded_in_the_handshake_and_a_transcription_model_in_an_update(
    tproxy: ProxyProcess, fake: FakeRealtimeTranslation
) -> None:
    t = tag()
    steps = ("update:fr:gpt-4o-transcribe", "audio:2", "close")
    code, lines = translate(tproxy, *steps, env="restricted", t=t, model="gpt-realtime-translate-large")
    assert code == 0 and lines[-1] == {"event": "done"}, lines
    [session] = fake.sessions_for(t)
    assert session.model == MODEL  # the handshake's query, rewritten
    [update] = [e for e in session.received if e["type"] == "session.update"]
    assert update["session"]["audio"] == {
        "output": {"language": "fr"},
        "input": {"transcription": {"model": "gpt-realtime-whisper"}},
    }
    [row] = rows_for(tproxy, t, 1)
    assert (row["action"], row["model_requested"], row["model_sent"]) == (
        "downgraded",
        "gpt-realtime-translate-large",
        MODEL,
    )
    assert (row["audio_seconds"], row["cost_usd"]) == (2, seconds_cost(2))


def test_a_blocked_model_is_refused_at_the_handshake(
    tproxy: ProxyProcess, fake: FakeRealtimeTranslation
) -> None:
    t = tag()
    code, lines = translate(tproxy, "audio:1", env="blocked", t=t, model="gpt-realtime-translate-large")
    assert code == 3 and lines[0]["status"] == 403, lines
    assert json.loads(lines[0]["body"])["error"]["code"] == "model_not_allowed"
    assert fake.sessions_for(t) == []
    [row] = rows_for(tproxy, t, 1)
    assert (row["action"], row["status_code"], row["path"], row["cost_usd"]) == (
        "blocked",
        403,
        PATH,
        Decimal(0),
    )


def test_a_spent_budget_caps_the_session(tproxy: ProxyProcess, fake: FakeRealtimeTranslation) -> None:
    """The first minute ($0.034) spends the $0.01 budget: the next append never goes upstream, the
    client gets an error event and the close; a new session is refused at its handshake (429)."""
    t = tag()
    code, lines = translate(tproxy, "audio:62", "listen", env="capped", t=t)
    assert code == 0, lines
    [session] = fake.sessions_for(t)
    assert session.ended.wait(5)
    assert session.appended_bytes() == 60 * SECOND
    got = received(lines)
    [error] = [line for line in got if line["type"] == "error"]
    assert error["data"]["error"]["code"] == "budget_exceeded"
    assert any(line["event"] == "closed" for line in lines)
    [minute] = rows_for(tproxy, t, 1)
    assert (minute["audio_seconds"], minute["cost_usd"]) == (60, seconds_cost(60))
    t2 = tag()
    code, lines = translate(tproxy, "audio:1", env="capped", t=t2)
    assert code == 3 and lines[0]["status"] == 429
    assert fake.sessions_for(t2) == []


def test_the_proxy_logged_no_traceback(tproxy: ProxyProcess) -> None:
    assert tproxy.alive()
    assert "Traceback" not in tproxy.log_text()
    assert "passes unmetered" not in tproxy.log_text()
