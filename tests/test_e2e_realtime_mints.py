"""End to end: Realtime sessions minted over HTTP, the real openai SDK through mitmdump + tokometer.

Client (``OpenAI().realtime.client_secrets.create``, ``.realtime.calls.create``,
``.beta.realtime.sessions.create``; HTTPS_PROXY, SSL_CERT_FILE = the proxy's CA) -> mitmdump with
the addon -> the fake OpenAI over HTTPS on 127.0.0.1 (``X-Fake-Echo``: any path answers 200); rows
asserted in the real DuckDB file. The session such a mint opens would go to OpenAI over WebRTC,
never through the proxy: the mint is where its models are checked.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from conftest import OPENAI_KEY, ProxyProcess, one_proxy, rows_for, run_json_client, tagged_headers
from fakeprovider import FakeProvider
from test_e2e import tag

from addon.api_keys import key_fingerprint
from addon.providers.openai_media import FORM_NOT_REWRITTEN
from addon.record import CALL_ROW_SQL
from addon.spend_reports import METRICS_SQL

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
    budget: {usd: 0, period: day}
  live-restricted:
    models:
      allow: [gpt-live-1, gpt-5-mini]
      on_disallowed: downgrade
      downgrade: {gpt-live-1.1: gpt-live-1, gpt-5: gpt-5-mini}
  live-blocked:
    models: {allow: [gpt-live-1, gpt-5-mini], on_disallowed: block}
"""
# The session a server mints for a browser: a prompt (never stored) and input transcription.
INSTRUCTIONS = "tokometer-secret-prompt-5b1c: you are the front desk of Hotel Ñandú"


def session(model: str, transcription: str | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "type": "realtime",
        "model": model,
        "instructions": INSTRUCTIONS,
        "audio": {"output": {"voice": "marin"}},
    }
    if transcription is not None:
        config["audio"]["input"] = {"transcription": {"model": transcription, "language": "es"}}
    return config


@pytest.fixture(scope="module")
def mproxy(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[ProxyProcess]:
    yield from one_proxy(tmp_path_factory.mktemp("mints"), fake_provider.port, POLICIES)


def mint(proxy: ProxyProcess, mode: str, config: dict[str, Any], *, env: str, t: str) -> dict[str, Any]:
    """Run the SDK client through the proxy (the fake echoes the request); its one JSON line."""
    headers = tagged_headers(env, t, {"X-Fake-Echo": "1"})
    args = [f"--header={name}={value}" for name, value in headers.items()]
    _, lines = run_json_client(
        proxy, "realtime_mint_client.py", mode, json.dumps(config), *args, codes=(0, 3)
    )
    [line] = lines
    return line


def no_rows(proxy: ProxyProcess, t: str) -> bool:
    return proxy.rows("SELECT id FROM calls WHERE tags LIKE ?", [f"%{t}%"]) == []


def test_a_client_secret_is_downgraded_upstream_and_makes_no_row(
    mproxy: ProxyProcess, fake_provider: FakeProvider
) -> None:
    t = tag()
    got = mint(mproxy, "client-secret", session("gpt-realtime", "gpt-4o-transcribe"), env="restricted", t=t)
    assert got == {
        "event": "minted",
        "status": 200,
        "notice": "downgraded gpt-realtime -> gpt-realtime-mini: gpt-realtime is not allowed in restricted "
        "(policies.yaml); downgraded gpt-4o-transcribe -> gpt-4o-mini-transcribe: gpt-4o-transcribe is "
        "not allowed in restricted (policies.yaml)",
    }
    [sent] = fake_provider.requests_for(t)
    assert (sent.method, sent.path) == ("POST", "/v1/realtime/client_secrets")
    assert "x-metering-tags" not in sent.headers
    # What OpenAI received: both models rewritten, every other field as the SDK sent it.
    assert sent.json == {
        "expires_after": {"anchor": "created_at", "seconds": 600},
        "session": {
            "type": "realtime",
            "model": "gpt-realtime-mini",
            "instructions": INSTRUCTIONS,
            "audio": {
                "output": {"voice": "marin"},
                "input": {"transcription": {"model": "gpt-4o-mini-transcribe", "language": "es"}},
            },
        },
    }
    # Minted, not billed, and the session it opens is not metered here: no row.
    assert no_rows(mproxy, t)


def test_a_blocked_mint_is_refused_before_upstream_with_a_row(
    mproxy: ProxyProcess, fake_provider: FakeProvider
) -> None:
    t = tag()
    got = mint(mproxy, "client-secret", session("gpt-realtime-mini", "whisper-1"), env="restricted", t=t)
    assert (got["event"], got["status"]) == ("refused", 403)
    error = json.loads(got["body"])["error"]
    assert (error["type"], error["code"]) == ("permission_error", "model_not_allowed")
    assert error["message"] == (
        "tokometer: model whisper-1 is not allowed in environment restricted "
        "(allowed there: gpt-realtime-mini, gpt-4o-mini-transcribe; see policies.yaml)"
    )
    assert fake_provider.requests_for(t) == []  # never contacted
    [row] = rows_for(mproxy, t, 1)
    assert (row["provider"], row["host"], row["path"], row["api_flavor"]) == (
        "openai",
        "api.openai.com",
        "/v1/realtime/client_secrets",
        "realtime",
    )
    assert (row["environment"], row["action"], row["status_code"]) == ("restricted", "blocked", 403)
    assert (row["model_requested"], row["model_sent"]) == ("whisper-1", None)
    assert (row["cost_usd"], row["price_status"], row["input_tokens"]) == (Decimal(0), "not_billed", None)
    assert row["key_fingerprint"] == key_fingerprint(OPENAI_KEY)
    assert row["error"] == error["message"].removeprefix("tokometer: ")


def test_a_webrtc_offer_is_refused_never_rewritten_and_an_allowed_one_passes_as_sent(
    mproxy: ProxyProcess, fake_provider: FakeProvider
) -> None:
    t = tag()
    got = mint(mproxy, "call", session("gpt-realtime"), env="restricted", t=t)
    assert (got["event"], got["status"]) == ("refused", 403)
    assert FORM_NOT_REWRITTEN in json.loads(got["body"])["error"]["message"]
    assert fake_provider.requests_for(t) == []
    [row] = rows_for(mproxy, t, 1)
    assert (row["path"], row["action"], row["model_requested"], row["status_code"]) == (
        "/v1/realtime/calls",
        "blocked",
        "gpt-realtime",
        403,
    )
    t = tag()
    got = mint(mproxy, "call", session("gpt-realtime-mini", "gpt-4o-mini-transcribe"), env="restricted", t=t)
    assert got == {"event": "minted", "status": 200, "notice": None}
    [sent] = fake_provider.requests_for(t)
    assert sent.path == "/v1/realtime/calls" and sent.headers["content-type"].startswith(
        "multipart/form-data"
    )
    assert json.loads(sent.form["session"]) == session("gpt-realtime-mini", "gpt-4o-mini-transcribe")
    assert sent.form["sdp"].startswith(b"v=0\r\n")
    assert no_rows(mproxy, t)


def test_a_spent_budget_refuses_a_beta_session(mproxy: ProxyProcess, fake_provider: FakeProvider) -> None:
    t = tag()
    got = mint(mproxy, "beta-session", {"model": "gpt-realtime", "voice": "verse"}, env="capped", t=t)
    assert (got["event"], got["status"]) == ("refused", 429)
    assert json.loads(got["body"])["error"]["code"] == "budget_exceeded"
    assert fake_provider.requests_for(t) == []
    [row] = rows_for(mproxy, t, 1)
    assert (row["path"], row["action"], row["status_code"], row["cost_usd"], row["price_status"]) == (
        "/v1/realtime/sessions",
        "over_budget",
        429,
        Decimal(0),
        "not_billed",
    )


def live_session(model: str, delegate: str) -> dict[str, Any]:
    """An OpenAI Live session's startup configuration delegating tasks to a Responses model."""
    return {
        "model": model,
        "instructions": INSTRUCTIONS,
        "audio": {"output": {"voice": "marin"}},
        "delegation": {"type": "responses", "responses": {"model": delegate, "instructions": INSTRUCTIONS}},
    }


def test_a_live_webrtc_session_is_downgraded_upstream_and_makes_no_row(
    mproxy: ProxyProcess, fake_provider: FakeProvider
) -> None:
    """client.live.create: the Live model and the delegation's Responses model both rewritten."""
    t = tag()
    got = mint(mproxy, "live-session", live_session("gpt-live-1.1", "gpt-5"), env="live-restricted", t=t)
    assert got == {
        "event": "minted",
        "status": 200,
        "notice": "downgraded gpt-live-1.1 -> gpt-live-1: gpt-live-1.1 is not allowed in live-restricted "
        "(policies.yaml); downgraded gpt-5 -> gpt-5-mini: gpt-5 is not allowed in live-restricted "
        "(policies.yaml)",
    }
    [sent] = fake_provider.requests_for(t)
    assert (sent.method, sent.path) == ("POST", "/v1/live/sessions")
    assert sent.json["session"] == live_session("gpt-live-1", "gpt-5-mini")
    assert sent.json["transport"]["type"] == "webrtc" and sent.json["transport"]["sdp"].startswith("v=0\r\n")
    assert no_rows(mproxy, t)


def test_a_live_sip_accept_with_a_blocked_delegation_model_is_refused_with_a_row(
    mproxy: ProxyProcess, fake_provider: FakeProvider
) -> None:
    t = tag()
    config = {"type": "live", **live_session("gpt-live-1", "gpt-5")}
    got = mint(mproxy, "live-accept", config, env="live-blocked", t=t)
    assert (got["event"], got["status"]) == ("refused", 403)
    error = json.loads(got["body"])["error"]
    assert (error["type"], error["code"]) == ("permission_error", "model_not_allowed")
    assert error["message"].startswith("tokometer: model gpt-5 is not allowed in environment live-blocked")
    assert fake_provider.requests_for(t) == []  # never contacted
    [row] = rows_for(mproxy, t, 1)
    assert (row["provider"], row["path"], row["api_flavor"], row["status_code"]) == (
        "openai",
        "/v1/live/sessions/live_sip_e2e/accept",
        "live",
        403,
    )
    assert (row["environment"], row["action"], row["model_requested"], row["model_sent"]) == (
        "live-blocked",
        "blocked",
        "gpt-5",
        None,
    )
    assert (row["cost_usd"], row["price_status"]) == (Decimal(0), "not_billed")
    assert row["key_fingerprint"] == key_fingerprint(OPENAI_KEY)
    # Allowed as it is: it passes byte for byte, and has no row.
    t = tag()
    config = {"type": "live", **live_session("gpt-live-1", "gpt-5-mini")}
    got = mint(mproxy, "live-accept", config, env="live-blocked", t=t)
    assert got == {"event": "minted", "status": 200, "notice": None}
    [sent] = fake_provider.requests_for(t)
    assert sent.path == "/v1/live/sessions/live_sip_e2e/accept" and sent.json == {"session": config}
    assert no_rows(mproxy, t)


def test_reports_count_no_mint_as_spend(mproxy: ProxyProcess) -> None:
    """The report totals (scripts/spend) over the mints above: three refused calls at $0; none
    unpriced, none without usage, no allowed mint at all."""
    # Read as the reports read ``calls``: with ``is_call`` (no background call here: a call's own row).
    calls = f"(SELECT *, {CALL_ROW_SQL} AS is_call FROM calls)"
    [totals] = mproxy.rows(f"SELECT {METRICS_SQL} FROM {calls} WHERE path LIKE '/v1/realtime/%'")
    assert (totals["calls"], totals["refused_calls"], totals["cost_usd"]) == (3, 3, Decimal(0))
    assert (totals["unpriced_calls"], totals["no_usage_calls"]) == (0, 0)


def test_the_proxy_logged_no_traceback_and_stored_no_prompt(mproxy: ProxyProcess) -> None:
    assert mproxy.alive()
    assert "Traceback" not in mproxy.log_text()
    mproxy.rows("SELECT 1")  # flushed
    for f in mproxy.tmp.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            for secret in (OPENAI_KEY, "tokometer-secret-prompt-5b1c"):
                assert secret.encode() not in data, (f, secret)
