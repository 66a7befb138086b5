"""The addon's hooks on Realtime sessions minted over HTTP (client secrets, beta sessions, WebRTC
calls, SIP accepts), with mitmproxy.test.taddons and tflow (no network, no process).

The media of such a session go to the provider over WebRTC or SIP, never through the proxy: the
mint is the one place where its models can be checked.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import taddons
from test_meter import OPENAI_KEY, CollectingStore, make_flow, run_request
from test_openai_media import form

from addon.api_keys import key_fingerprint
from addon.budgets import scopes_for
from addon.meter import NOTICE_HEADER, Meter
from addon.policies import parse_policies
from addon.providers.openai_media import FORM_NOT_REWRITTEN
from addon.record import CallRecord
from addon.refusals import REFUSED_HEADER

OPENAI = "https://api.openai.com"
CLIENT_SECRETS = f"{OPENAI}/v1/realtime/client_secrets"
RESTRICTED = """\
environments:
  development:
    models:
      allow: [gpt-realtime-mini, gpt-4o-mini-transcribe]
      on_disallowed: downgrade
      downgrade: {gpt-realtime: gpt-realtime-mini, gpt-4o-transcribe: gpt-4o-mini-transcribe}
"""
TAGS = {"x-metering-tags": json.dumps({"env": "development", "team": "voice"})}
SDP = b"v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


@pytest.fixture
def meter(tmp_path: Path) -> Iterator[Meter]:
    addon = Meter()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tokometer_db=str(tmp_path / "spend.duckdb"))
        addon.store = CollectingStore()  # type: ignore[assignment]
        addon._apply(parse_policies(RESTRICTED))
        yield addon


def records(meter: Meter) -> list[CallRecord]:
    return meter.store.records  # type: ignore[union-attr]


def mint(url: str, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None) -> http.HTTPFlow:
    return make_flow(url, body, headers={**TAGS, **(headers or {})})


async def answer(meter: Meter, flow: http.HTTPFlow, status: int = 200, body: bytes = b"{}") -> None:
    """Upstream's answer (or the proxy's own, already set), through the response hooks."""
    if flow.response is None:
        flow.response = http.Response.make(status, body, {"content-type": "application/json"})
    meter.responseheaders(flow)
    await meter.response(flow)


def ga_session(model: str | None = "gpt-realtime", transcription: str | None = None) -> dict[str, Any]:
    session: dict[str, Any] = {"type": "realtime", "instructions": "Be brief, señor.", "tools": []}
    if model is not None:
        session["model"] = model
    audio: dict[str, Any] = {"output": {"voice": "marin"}}
    if transcription is not None:
        audio["input"] = {"transcription": {"model": transcription, "language": "en"}, "format": None}
    session["audio"] = audio
    return session


def refusal(flow: http.HTTPFlow) -> dict[str, Any]:
    assert flow.response is not None
    return json.loads(flow.response.content or b"{}")["error"]


async def test_a_client_secret_is_downgraded_by_rewriting_both_models_and_makes_no_row(meter: Meter) -> None:
    body = {
        "expires_after": {"anchor": "created_at", "seconds": 600},
        "session": ga_session("gpt-realtime", "gpt-4o-transcribe"),
    }
    flow = mint(CLIENT_SECRETS, body)
    await run_request(meter, flow)
    assert flow.response is None  # sent upstream
    sent = json.loads(flow.request.content or b"")
    wanted = json.loads(json.dumps(body))
    wanted["session"]["model"] = "gpt-realtime-mini"
    wanted["session"]["audio"]["input"]["transcription"]["model"] = "gpt-4o-mini-transcribe"
    assert sent == wanted  # only the two models changed
    await answer(meter, flow, body=b'{"value": "ek_123", "expires_at": 1, "session": {}}')
    assert flow.response is not None
    assert flow.response.headers[NOTICE_HEADER] == (
        "downgraded gpt-realtime -> gpt-realtime-mini: gpt-realtime is not allowed in development "
        "(policies.yaml); downgraded gpt-4o-transcribe -> gpt-4o-mini-transcribe: gpt-4o-transcribe "
        "is not allowed in development (policies.yaml)"
    )
    # Minted: not billed, and the session it opens is not metered here: no row.
    assert records(meter) == [] and meter.call_state(flow) is None


async def test_a_blocked_session_model_is_refused_with_a_row(meter: Meter) -> None:
    flow = mint(CLIENT_SECRETS, {"session": ga_session("gpt-4o-realtime-preview")})
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403  # upstream never contacted
    assert flow.response.headers[REFUSED_HEADER] == "blocked"
    error = refusal(flow)
    assert (error["type"], error["code"]) == ("permission_error", "model_not_allowed")
    assert error["message"] == (
        "tokometer: model gpt-4o-realtime-preview is not allowed in environment development "
        "(allowed there: gpt-realtime-mini, gpt-4o-mini-transcribe; see policies.yaml)"
    )
    await answer(meter, flow)
    [row] = records(meter)
    assert (row.provider, row.path, row.api_flavor, row.status_code) == (
        "openai",
        "/v1/realtime/client_secrets",
        "realtime",
        403,
    )
    assert (row.action, row.model_requested, row.model_sent) == ("blocked", "gpt-4o-realtime-preview", None)
    assert (row.cost_usd, row.price_status, row.usage) == (Decimal(0), "not_billed", None)
    assert (row.environment, row.team) == ("development", "voice")
    assert row.key_fingerprint == key_fingerprint(OPENAI_KEY) and OPENAI_KEY not in row.to_json()
    assert row.error == error["message"].removeprefix("tokometer: ")


async def test_a_blocked_transcription_model_refuses_the_mint(meter: Meter) -> None:
    flow = mint(CLIENT_SECRETS, {"session": ga_session("gpt-realtime-mini", "whisper-1")})
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert refusal(flow)["message"].startswith("tokometer: model whisper-1 is not allowed")
    await answer(meter, flow)
    [row] = records(meter)
    assert (row.action, row.model_requested, row.model_sent, row.status_code) == (
        "blocked",
        "whisper-1",
        None,
        403,
    )


@pytest.mark.parametrize(
    ("url", "body", "wanted"),
    [
        (  # GA transcription session: its model is the transcription model
            CLIENT_SECRETS,
            {
                "session": {
                    "type": "transcription",
                    "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}},
                }
            },
            {
                "session": {
                    "type": "transcription",
                    "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}},
                }
            },
        ),
        (  # beta session
            f"{OPENAI}/v1/realtime/sessions",
            {
                "model": "gpt-realtime",
                "voice": "verse",
                "input_audio_transcription": {"model": "gpt-4o-transcribe"},
            },
            {
                "model": "gpt-realtime-mini",
                "voice": "verse",
                "input_audio_transcription": {"model": "gpt-4o-mini-transcribe"},
            },
        ),
        (  # beta transcription session
            f"{OPENAI}/v1/realtime/transcription_sessions",
            {"input_audio_transcription": {"model": "gpt-4o-transcribe", "prompt": ""}, "include": []},
            {"input_audio_transcription": {"model": "gpt-4o-mini-transcribe", "prompt": ""}, "include": []},
        ),
        (  # SIP: accepting a call configures its session
            f"{OPENAI}/v1/realtime/calls/rtc_u1_9c65/accept",
            {"type": "realtime", "model": "gpt-realtime", "instructions": "You are Alex."},
            {"type": "realtime", "model": "gpt-realtime-mini", "instructions": "You are Alex."},
        ),
    ],
)
async def test_every_mint_shape_is_downgraded(
    meter: Meter, url: str, body: dict[str, Any], wanted: dict[str, Any]
) -> None:
    flow = mint(url, body)
    await run_request(meter, flow)
    assert flow.response is None
    assert json.loads(flow.request.content or b"") == wanted
    await answer(meter, flow)
    assert flow.response is not None and flow.response.headers[NOTICE_HEADER].startswith("downgraded ")
    assert records(meter) == []


async def test_a_webrtc_offer_with_a_disallowed_model_is_refused_never_rewritten(meter: Meter) -> None:
    session = json.dumps(ga_session("gpt-realtime")).encode()
    body, ctype = form([("sdp", SDP, None), ("session", session, None)])
    flow = mint(f"{OPENAI}/v1/realtime/calls", body, {"content-type": ctype})
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert FORM_NOT_REWRITTEN in refusal(flow)["message"]
    assert flow.request.content == body  # not a byte changed
    await answer(meter, flow)
    [row] = records(meter)
    assert (row.path, row.action, row.model_requested, row.model_sent, row.status_code) == (
        "/v1/realtime/calls",
        "blocked",
        "gpt-realtime",
        None,
        403,
    )


async def test_an_allowed_webrtc_offer_passes_and_a_bare_sdp_offer_is_not_followed(meter: Meter) -> None:
    session = json.dumps(ga_session("gpt-realtime-mini", "gpt-4o-mini-transcribe")).encode()
    body, ctype = form([("sdp", SDP, None), ("session", session, None)])
    flow = mint(f"{OPENAI}/v1/realtime/calls", body, {"content-type": ctype})
    await run_request(meter, flow)
    assert flow.response is None and flow.request.content == body
    await answer(meter, flow, 201, b"v=0\r\n")
    assert records(meter) == []
    # With an ephemeral key the offer is bare SDP: its model was fixed when the key was minted.
    ephemeral = {"content-type": "application/sdp", "authorization": "Bearer ek_68af296e8e408191a1120ab6"}
    flow = mint(f"{OPENAI}/v1/realtime/calls", SDP, ephemeral)
    await run_request(meter, flow)
    assert meter.call_state(flow) is None and flow.response is None


async def test_a_bare_sdp_offer_with_a_standard_key_is_checked(meter: Meter) -> None:
    """The openai SDK sends bare SDP whenever no session is given (``client.realtime.calls.create(
    sdp=offer)``), with whatever key it has: with a standard key the session is the default one,
    whose model no request names. That offer is a mint like any other: refused where models are
    restricted, and held to budgets and rate limits."""
    sdp = {"content-type": "application/sdp"}
    flow = mint(f"{OPENAI}/v1/realtime/calls", SDP, sdp)  # Bearer sk-...
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert "(unreadable) is not allowed" in refusal(flow)["message"]
    assert flow.request.content == SDP
    await answer(meter, flow)
    [row] = records(meter)
    assert (row.path, row.action, row.status_code, row.price_status) == (
        "/v1/realtime/calls",
        "blocked",
        403,
        "not_billed",
    )
    # Azure's standard key, in its api-key header.
    azure = {**sdp, "api-key": "0123456789abcdef0123456789abcdef", "authorization": ""}
    flow = mint("https://myres.openai.azure.com/openai/v1/realtime/calls", SDP, azure)
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    await answer(meter, flow)
    # Unrestricted, a spent budget still refuses it; with room, it passes as sent, with no row.
    meter._apply(parse_policies("environments:\n  development:\n    budget: {usd: 0.01, period: day}\n"))
    flow = mint(f"{OPENAI}/v1/realtime/calls", SDP, sdp)
    await run_request(meter, flow)
    assert flow.response is None and flow.request.content == SDP
    await answer(meter, flow, 201, b"v=0\r\n")
    assert len(records(meter)) == 2
    meter.enforcer.budgets.record(scopes_for("development", None, None), Decimal("0.02"), datetime.now(UTC))
    flow = mint(f"{OPENAI}/v1/realtime/calls", SDP, sdp)
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 429


async def test_a_mint_naming_no_model_fails_closed_where_models_are_restricted(meter: Meter) -> None:
    for url, body in (
        (CLIENT_SECRETS, {"expires_after": {"seconds": 60}}),
        (CLIENT_SECRETS, {"session": ga_session(None)}),
        (CLIENT_SECRETS, {"session": {"type": "realtime", "model": 7}}),
        (f"{OPENAI}/v1/realtime/transcription_sessions", {"include": []}),
    ):
        flow = mint(url, body)
        await run_request(meter, flow)
        assert flow.response is not None and flow.response.status_code == 403, body
        assert "(unreadable) is not allowed" in refusal(flow)["message"]
        await answer(meter, flow)
    assert [r.action for r in records(meter)] == ["blocked"] * 4
    # Unrestricted, it passes: nothing to check it against.
    meter._apply(parse_policies("environments:\n  development: {}\n"))
    flow = mint(CLIENT_SECRETS, {"expires_after": {"seconds": 60}})
    await run_request(meter, flow)
    assert flow.response is None


async def test_a_spent_budget_or_a_rate_limit_refuses_the_mint(meter: Meter) -> None:
    meter._apply(
        parse_policies(
            "environments:\n  development:\n    budget: {usd: 0.01, period: day}\n"
            "  staging:\n    rate_limit: {requests_per_minute: 1}\n"
        )
    )
    meter.enforcer.budgets.record(scopes_for("development", None, None), Decimal("0.02"), datetime.now(UTC))
    flow = mint(CLIENT_SECRETS, {"session": ga_session("gpt-realtime")})
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 429
    assert refusal(flow)["code"] == "budget_exceeded"
    await answer(meter, flow)
    staging = {"x-metering-tags": json.dumps({"env": "staging"})}
    statuses = []
    for _ in range(2):
        flow = mint(CLIENT_SECRETS, {"session": ga_session("gpt-realtime")}, staging)
        await run_request(meter, flow)
        statuses.append(flow.response.status_code if flow.response is not None else None)
        await answer(meter, flow)
    assert statuses == [None, 429]
    assert [(r.environment, r.action, r.status_code, r.price_status) for r in records(meter)] == [
        ("development", "over_budget", 429, "not_billed"),
        ("staging", "rate_limited", 429, "not_billed"),
    ]


async def test_a_mint_upstream_refuses_is_a_row_not_billed(meter: Meter) -> None:
    flow = mint(CLIENT_SECRETS, {"session": ga_session("gpt-realtime-mini")})
    await run_request(meter, flow)
    await answer(meter, flow, 401, b'{"error": {"message": "bad key"}}')
    [row] = records(meter)
    assert (row.action, row.status_code, row.model_sent, row.error) == (
        "allowed",
        401,
        "gpt-realtime-mini",
        "upstream answered 401",
    )
    assert (row.cost_usd, row.price_status) == (Decimal(0), "not_billed")


async def test_azure_mints_name_deployments(meter: Meter) -> None:
    meter._apply(
        parse_policies(
            RESTRICTED + "azure_deployments:\n  rt-big: gpt-realtime\n  rt-small: gpt-realtime-mini\n"
        )
    )
    azure = "https://myres.openai.azure.com"
    flow = mint(f"{azure}/openai/v1/realtime/client_secrets", {"session": ga_session("rt-big")})
    await run_request(meter, flow)
    assert flow.response is None
    assert json.loads(flow.request.content or b"")["session"]["model"] == "rt-small"
    flow = mint(
        f"{azure}/openai/realtimeapi/sessions?api-version=2025-04-01-preview",
        {"model": "rt-big", "voice": "verse"},
    )
    await run_request(meter, flow)
    assert json.loads(flow.request.content or b"") == {"model": "rt-small", "voice": "verse"}
    flow = mint(f"{azure}/openai/v1/realtime/calls/rtc_1/accept", {"type": "realtime", "model": "rt-huge"})
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403
    await answer(meter, flow)
    [row] = records(meter)
    assert (row.provider, row.path, row.model_requested) == (
        "azure",
        "/openai/v1/realtime/calls/rtc_1/accept",
        "rt-huge",
    )


# --- OpenAI Live sessions set up over HTTP (WebRTC, SIP) -----------------------------------------

LIVE_SESSIONS = f"{OPENAI}/v1/live/sessions"
LIVE_RESTRICTED = """\
environments:
  development:
    models:
      allow: [gpt-live-1, gpt-5-mini, decide-mini]
      on_disallowed: downgrade
      downgrade: {gpt-live-1.1: gpt-live-1, gpt-5: gpt-5-mini, decide-big: decide-mini}
"""


def live_session(
    model: str | None = "gpt-live-1", delegate: str | None = None, kind: str = "responses"
) -> dict[str, Any]:
    """A Live session's startup configuration as ``client.live.create``/``sessions.accept`` send it."""
    session: dict[str, Any] = {"instructions": "Be brief, señor.", "audio": {"output": {"voice": "marin"}}}
    if model is not None:
        session["model"] = model
    if delegate is not None:
        session["delegation"] = {"type": kind, kind: {"model": delegate, "instructions": "Look it up."}}
    return session


def webrtc(session: dict[str, Any]) -> dict[str, Any]:
    return {"session": session, "transport": {"type": "webrtc", "sdp": SDP.decode()}}


@pytest.mark.parametrize(
    ("url", "body", "wanted"),
    [
        (  # WebRTC: client.live.create(session=..., transport=...)
            LIVE_SESSIONS,
            webrtc(live_session("gpt-live-1.1", "gpt-5")),
            webrtc(
                {**live_session("gpt-live-1"), "delegation": live_session("x", "gpt-5-mini")["delegation"]}
            ),
        ),
        (  # SIP: client.live.sessions.accept(session_id, session=...)
            f"{LIVE_SESSIONS}/live_sip_8f2/accept",
            {"session": {"type": "live", **live_session("gpt-live-1", "gpt-5")}},
            {"session": {"type": "live", **live_session("gpt-live-1", "gpt-5-mini")}},
        ),
        (  # a Decisions backend names its model too
            LIVE_SESSIONS,
            webrtc(live_session("gpt-live-1", "decide-big", "decisions")),
            webrtc(live_session("gpt-live-1", "decide-mini", "decisions")),
        ),
    ],
)
async def test_a_live_setup_is_downgraded_by_rewriting_its_models_and_makes_no_row(
    meter: Meter, url: str, body: dict[str, Any], wanted: dict[str, Any]
) -> None:
    meter._apply(parse_policies(LIVE_RESTRICTED))
    flow = mint(url, body)
    await run_request(meter, flow)
    assert flow.response is None  # sent upstream
    assert json.loads(flow.request.content or b"") == wanted  # only the models changed
    await answer(meter, flow, 201, b"v=0\r\n")
    assert flow.response is not None and flow.response.headers[NOTICE_HEADER].startswith("downgraded ")
    assert "is not allowed in development" in flow.response.headers[NOTICE_HEADER]
    assert records(meter) == [] and meter.call_state(flow) is None


async def test_a_live_setup_allowed_as_it_is_passes_byte_for_byte(meter: Meter) -> None:
    meter._apply(parse_policies(LIVE_RESTRICTED))
    flow = mint(LIVE_SESSIONS, webrtc(live_session("gpt-live-1", "gpt-5-mini")))
    sent = flow.request.content
    await run_request(meter, flow)
    assert flow.response is None and flow.request.content == sent
    await answer(meter, flow, 201, b"v=0\r\n")
    assert NOTICE_HEADER not in flow.response.headers and records(meter) == []  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("url", "body", "refused"),
    [
        (LIVE_SESSIONS, webrtc(live_session("gpt-live-1.1")), "gpt-live-1.1"),
        (LIVE_SESSIONS, webrtc(live_session("gpt-live-1", "gpt-5")), "gpt-5"),
        (
            f"{LIVE_SESSIONS}/live_sip_8f2/accept",
            {"session": {"type": "live", **live_session("gpt-live-1", "gpt-5")}},
            "gpt-5",
        ),
    ],
)
async def test_a_blocked_live_model_or_delegation_model_refuses_the_setup_with_a_row(
    meter: Meter, url: str, body: dict[str, Any], refused: str
) -> None:
    meter._apply(parse_policies(LIVE_RESTRICTED.replace("on_disallowed: downgrade", "on_disallowed: block")))
    flow = mint(url, body)
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403  # upstream never contacted
    assert flow.response.headers[REFUSED_HEADER] == "blocked"
    error = refusal(flow)
    assert (error["type"], error["code"]) == ("permission_error", "model_not_allowed")
    assert error["message"].startswith(
        f"tokometer: model {refused} is not allowed in environment development"
    )
    await answer(meter, flow)
    [row] = records(meter)
    assert (row.provider, row.path, row.api_flavor, row.status_code) == (
        "openai",
        url.removeprefix(OPENAI),
        "live",
        403,
    )
    assert (row.action, row.model_requested, row.model_sent) == ("blocked", refused, None)
    assert (row.cost_usd, row.price_status, row.usage) == (Decimal(0), "not_billed", None)
    assert (row.environment, row.team) == ("development", "voice")
    assert row.key_fingerprint == key_fingerprint(OPENAI_KEY) and OPENAI_KEY not in row.to_json()


async def test_a_live_setup_naming_no_readable_model_fails_closed(meter: Meter) -> None:
    meter._apply(parse_policies(LIVE_RESTRICTED))
    for body in (
        webrtc(live_session(None)),
        {"transport": {"type": "webrtc", "sdp": "v=0"}},
        webrtc({**live_session(), "delegation": {"type": "responses", "responses": {"tools": []}}}),
        webrtc({**live_session(), "delegation": {"type": "decisions", "decisions": {"model": 5}}}),
    ):
        flow = mint(LIVE_SESSIONS, body)
        await run_request(meter, flow)
        assert flow.response is not None and flow.response.status_code == 403, body
        await answer(meter, flow)
    assert [r.action for r in records(meter)] == ["blocked"] * 4
    # Client delegation, or none, names no backend model: nothing more to check.
    for delegation in ({"type": "client"}, None):
        flow = mint(LIVE_SESSIONS, webrtc({**live_session(), "delegation": delegation}))
        await run_request(meter, flow)
        assert flow.response is None


async def test_a_spent_budget_or_a_rate_limit_refuses_a_live_setup(meter: Meter) -> None:
    meter._apply(
        parse_policies(
            "environments:\n  development:\n    budget: {usd: 0.01, period: day}\n"
            "  staging:\n    rate_limit: {requests_per_minute: 1}\n"
        )
    )
    meter.enforcer.budgets.record(scopes_for("development", None, None), Decimal("0.02"), datetime.now(UTC))
    flow = mint(LIVE_SESSIONS, webrtc(live_session()))
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 429
    assert refusal(flow)["code"] == "budget_exceeded"
    await answer(meter, flow)
    staging = {"x-metering-tags": json.dumps({"env": "staging"})}
    statuses = []
    for _ in range(2):
        flow = mint(f"{LIVE_SESSIONS}/live_sip_1/accept", {"session": live_session()}, staging)
        await run_request(meter, flow)
        statuses.append(flow.response.status_code if flow.response is not None else None)
        await answer(meter, flow, 200, b"")
    assert statuses == [None, 429]
    assert [
        (r.environment, r.api_flavor, r.action, r.status_code, r.price_status) for r in records(meter)
    ] == [
        ("development", "live", "over_budget", 429, "not_billed"),
        ("staging", "live", "rate_limited", 429, "not_billed"),
    ]


async def test_other_live_requests_are_not_setups(meter: Meter) -> None:
    """A hangup, a refer, a reject, a recording, a sideband or a primary WebSocket: none is a set-up
    checked as one (the primary WebSocket is a handshake, its model checked in session.start)."""
    meter._apply(parse_policies(LIVE_RESTRICTED.replace("on_disallowed: downgrade", "on_disallowed: block")))
    for path in ("hangup", "refer", "reject", "attach", "accept/x", "fork/x", "content"):
        flow = mint(f"{LIVE_SESSIONS}/live_1/{path}", webrtc(live_session("gpt-live-1.1", "gpt-5")))
        await run_request(meter, flow)
        assert meter.call_state(flow) is None and flow.response is None, path
    flow = mint(f"{LIVE_SESSIONS}/accept", {"session": live_session("gpt-live-1.1")})
    await run_request(meter, flow)
    assert meter.call_state(flow) is None and flow.response is None
    flow = make_flow(LIVE_SESSIONS, b"", method="GET", headers={**TAGS, "upgrade": "websocket"})
    meter.requestheaders(flow)
    state = meter.call_state(flow)
    assert state is not None and state.openai_live and state.mint is None
    assert records(meter) == []


# ---------------------------------------------------------------- OpenAI Live forks over HTTP (WebRTC)


def fork(session: dict[str, Any] | None = None) -> dict[str, Any]:
    """A fork's body as ``client.live.sessions.fork(session_id, transport=..., session=...)`` sends it."""
    body: dict[str, Any] = {"transport": {"type": "webrtc", "sdp": SDP.decode()}}
    if session is not None:
        body["session"] = session
    return body


FORK = f"{LIVE_SESSIONS}/live_stored_1/fork"
DELEGATION_TO_GPT_5 = {"type": "responses", "responses": {"model": "gpt-5", "instructions": "Look it up."}}


async def test_a_forks_delegation_model_is_downgraded_by_rewriting_it(meter: Meter) -> None:
    """A fork names no model of its own (it inherits the stored session's): its delegation's model
    is checked, and a disallowed one downgraded in the body (every other byte's value kept); it
    makes no row, as a set-up does not."""
    meter._apply(parse_policies(LIVE_RESTRICTED))
    body = fork({"delegation": DELEGATION_TO_GPT_5, "store": True})
    flow = mint(FORK, body)
    await run_request(meter, flow)
    assert flow.response is None  # sent upstream
    wanted = json.loads(json.dumps(body))
    wanted["session"]["delegation"]["responses"]["model"] = "gpt-5-mini"
    assert json.loads(flow.request.content or b"") == wanted
    await answer(meter, flow, 200, json.dumps({"session": {"id": "live_fork_2"}, "transport": {}}).encode())
    assert flow.response is not None
    assert flow.response.headers[NOTICE_HEADER] == (
        "downgraded gpt-5 -> gpt-5-mini: gpt-5 is not allowed in development (policies.yaml)"
    )
    assert records(meter) == [] and meter.call_state(flow) is None


async def test_a_fork_that_names_no_model_is_not_refused_for_it(meter: Meter) -> None:
    """Inheriting its model, a fork that overrides nothing passes unchanged where models are
    restricted (a Live set-up naming none is refused: it would open the default session)."""
    meter._apply(parse_policies(LIVE_RESTRICTED.replace("on_disallowed: downgrade", "on_disallowed: block")))
    for body in (
        fork(),
        fork({}),
        fork({"delegation": {"type": "responses", "acknowledgement_delay_ms": 0}}),
    ):
        flow = mint(FORK, body)
        sent = flow.request.content
        await run_request(meter, flow)
        assert flow.response is None and flow.request.content == sent, body
        await answer(meter, flow, 200, b'{"session": {"id": "live_fork_3"}}')
    assert records(meter) == []


@pytest.mark.parametrize(
    ("session", "refused", "param"),
    [
        ({"delegation": DELEGATION_TO_GPT_5}, "gpt-5", "session.delegation.responses.model"),
        ({"model": "gpt-live-1.1"}, "gpt-live-1.1", "session.model"),  # not to be sent: checked if it is
    ],
)
async def test_a_fork_naming_a_blocked_model_is_refused_with_a_row(
    meter: Meter, session: dict[str, Any], refused: str, param: str
) -> None:
    meter._apply(parse_policies(LIVE_RESTRICTED.replace("on_disallowed: downgrade", "on_disallowed: block")))
    flow = mint(FORK, fork(session))
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403  # upstream never contacted
    assert refusal(flow)["message"].startswith(f"tokometer: model {refused} is not allowed in environment")
    await answer(meter, flow)
    [row] = records(meter)
    assert (row.path, row.api_flavor, row.status_code, row.action) == (
        "/v1/live/sessions/live_stored_1/fork",
        "live",
        403,
        "blocked",
    )
    assert (row.model_requested, row.model_sent, row.cost_usd, row.price_status) == (
        refused,
        None,
        Decimal(0),
        "not_billed",
    )


async def test_a_spent_budget_refuses_a_fork(meter: Meter) -> None:
    meter._apply(parse_policies("environments:\n  development:\n    budget: {usd: 0.01, period: day}\n"))
    meter.enforcer.budgets.record(scopes_for("development", None, None), Decimal("0.02"), datetime.now(UTC))
    flow = mint(FORK, fork())
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 429
    assert refusal(flow)["code"] == "budget_exceeded"
    await answer(meter, flow)
    [row] = records(meter)
    assert (row.action, row.api_flavor, row.path) == (
        "over_budget",
        "live",
        "/v1/live/sessions/live_stored_1/fork",
    )


async def test_a_forks_new_session_is_priced_by_the_stored_sessions_model_if_set_up_here(
    meter: Meter,
) -> None:
    """The session a WebRTC fork opens (its answer's id) is remembered as a set-up's is, with the
    model of the stored session when that one was set up through this proxy (a fork inherits it):
    its sideband's rows are priced from the first."""
    from addon.socket_metering import remembered_live_setup

    meter._apply(parse_policies(LIVE_RESTRICTED))
    flow = mint(LIVE_SESSIONS, webrtc(live_session("gpt-live-1.1")))  # downgraded to gpt-live-1
    await run_request(meter, flow)
    await answer(meter, flow, 200, b'{"session": {"id": "live_parent_9"}, "transport": {}}')
    assert remembered_live_setup("live_parent_9") == "gpt-live-1"
    flow = mint(f"{LIVE_SESSIONS}/live_parent_9/fork", fork())
    await run_request(meter, flow)
    await answer(meter, flow, 200, b'{"session": {"id": "live_child_9"}, "transport": {}}')
    assert remembered_live_setup("live_child_9") == "gpt-live-1"
    # A fork of a session set up elsewhere: its model is unknown here, nothing is remembered.
    flow = mint(f"{LIVE_SESSIONS}/live_elsewhere/fork", fork())
    await run_request(meter, flow)
    await answer(meter, flow, 200, b'{"session": {"id": "live_child_10"}, "transport": {}}')
    assert remembered_live_setup("live_child_10") is None


# ---------------------------------------------------------------- Realtime translation client secrets

TRANSLATION_SECRETS = f"{OPENAI}/v1/realtime/translations/client_secrets"
TRANSLATION_RESTRICTED = """\
environments:
  development:
    models:
      allow: [gpt-realtime-translate, gpt-realtime-whisper]
      on_disallowed: downgrade
      downgrade:
        gpt-realtime-translate-large: gpt-realtime-translate
        gpt-4o-transcribe: gpt-realtime-whisper
"""


def translation_secret(
    model: str | None = "gpt-realtime-translate", transcription: str | None = None
) -> dict[str, Any]:
    """``client.realtime.translations.client_secrets.create(session=..., expires_after=...)``'s body."""
    session: dict[str, Any] = {"audio": {"output": {"language": "es"}}}
    if model is not None:
        session["model"] = model
    if transcription is not None:
        session["audio"]["input"] = {"transcription": {"model": transcription}}
    return {"expires_after": {"anchor": "created_at", "seconds": 600}, "session": session}


async def test_a_translation_client_secret_is_downgraded_by_rewriting_both_models(meter: Meter) -> None:
    meter._apply(parse_policies(TRANSLATION_RESTRICTED))
    flow = mint(TRANSLATION_SECRETS, translation_secret("gpt-realtime-translate-large", "gpt-4o-transcribe"))
    await run_request(meter, flow)
    assert flow.response is None  # sent upstream
    assert json.loads(flow.request.content or b"") == translation_secret(
        "gpt-realtime-translate", "gpt-realtime-whisper"
    )
    await answer(meter, flow, body=b'{"value": "ek_1", "expires_at": 1, "session": {}}')
    assert flow.response is not None and flow.response.headers[NOTICE_HEADER].startswith(
        "downgraded gpt-realtime-translate-large -> gpt-realtime-translate"
    )
    assert records(meter) == [] and meter.call_state(flow) is None


async def test_a_blocked_or_unnamed_translation_model_refuses_the_client_secret(meter: Meter) -> None:
    meter._apply(
        parse_policies(TRANSLATION_RESTRICTED.replace("on_disallowed: downgrade", "on_disallowed: block"))
    )
    for body, refused in (
        (translation_secret("gpt-realtime-translate-large"), "gpt-realtime-translate-large"),
        (translation_secret("gpt-realtime-translate", "gpt-4o-transcribe"), "gpt-4o-transcribe"),
        (translation_secret(None), "the request names no session.model"),
    ):
        flow = mint(TRANSLATION_SECRETS, body)
        await run_request(meter, flow)
        assert flow.response is not None and flow.response.status_code == 403, body
        assert refused in refusal(flow)["message"]
        await answer(meter, flow)
    rows = records(meter)
    assert [(r.path, r.api_flavor, r.status_code, r.action) for r in rows] == [
        ("/v1/realtime/translations/client_secrets", "realtime", 403, "blocked")
    ] * 3
    assert [r.model_requested for r in rows] == ["gpt-realtime-translate-large", "gpt-4o-transcribe", None]
    assert all((r.cost_usd, r.price_status) == (Decimal(0), "not_billed") for r in rows)


@pytest.mark.parametrize("on_disallowed", ["downgrade", "block"])
async def test_a_fork_of_a_session_set_up_here_has_the_model_it_inherits_checked(
    meter: Meter, on_disallowed: str
) -> None:
    """The stored session was set up through this proxy in an environment that allows its model;
    a fork of it from one that does not is refused (the inherited model cannot be rewritten)."""
    meter._apply(parse_policies("environments:\n  staging:\n    models: {allow: ['*']}\n"))
    flow = mint(LIVE_SESSIONS, webrtc(live_session("gpt-live-1.1")))
    await run_request(meter, flow)
    await answer(meter, flow, 200, b'{"session": {"id": "live_staged_1"}, "transport": {}}')
    meter._apply(
        parse_policies(LIVE_RESTRICTED.replace("on_disallowed: downgrade", f"on_disallowed: {on_disallowed}"))
    )
    forked = mint(f"{LIVE_SESSIONS}/live_staged_1/fork", fork())
    await run_request(meter, forked)
    assert forked.response is not None and forked.response.status_code == 403
    assert "inherits its stored session's model, which cannot be rewritten" in refusal(forked)["message"]
    await answer(meter, forked)
    [row] = records(meter)
    assert (row.action, row.model_requested, row.model_sent) == ("blocked", "gpt-live-1.1", None)
