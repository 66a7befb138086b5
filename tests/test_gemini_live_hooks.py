"""The addon's Gemini Live hooks with mitmproxy.test.taddons and tflow (no network, no process)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import websocket_hooks
from fake_gemini_live import (
    DEV_PATH,
    TURN_USAGES,
    VERTEX_PATH,
    audio_chunk,
    dumps,
    setup_complete,
    setup_message,
    transcription,
    turn_complete,
    vertex_usage,
)
from mitmproxy import http
from mitmproxy.websocket import WebSocketMessage
from websocket_hooks import CollectingStore, handshake_flow, metered, open_session, reads_of, records

import addon.meter as meter_module
from addon.api_keys import key_fingerprint
from addon.budgets import scopes_for
from addon.meter import Meter
from addon.policies import parse_policies
from addon.providers import gemini_live

KEY = "AIzaSyLiveTESTkey00001111222233334444555"
HOST = "generativelanguage.googleapis.com"
NATIVE = "gemini-2.5-flash-native-audio-preview-09-2025"
ROW_PATH = DEV_PATH[1:]  # one leading slash
RESTRICTED = """\
environments:
  development:
    models:
      allow: [gemini-live-2.5-flash*]
      on_disallowed: downgrade
      downgrade: {gemini-3.1-flash-live-preview: gemini-live-2.5-flash-preview}
"""
BUDGETED = "environments:\n  development:\n    budget: {usd: 0.0001, period: day}\n"


@pytest.fixture
def meter(tmp_path: Path) -> Iterator[Meter]:
    yield from metered(tmp_path)


@pytest.fixture
def closes(meter: Meter, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    return websocket_hooks.closes_asked(meter, monkeypatch)


def handshake(
    path: str = DEV_PATH, host: str = HOST, headers: dict[str, str] | None = None, key: str | None = KEY
) -> http.HTTPFlow:
    """A WebSocket flow as it is at requestheaders: the GET, no answer yet."""
    ours = {"upgrade": "websocket", **({"x-goog-api-key": key} if key is not None else {})}
    ours["x-metering-tags"] = json.dumps({"env": "development", "team": "voice"})
    return handshake_flow(host, path, ours, headers, time.time())


async def say(
    meter: Meter, flow: http.HTTPFlow, message: dict[str, Any] | bytes, *, client: bool, text: bool = False
) -> WebSocketMessage:
    data = message if isinstance(message, bytes) else dumps(message)
    return await websocket_hooks.say(meter, flow, data, client=client, text=text)


async def client_says(meter: Meter, flow: http.HTTPFlow, message: dict[str, Any] | bytes) -> WebSocketMessage:
    return await say(meter, flow, message, client=True, text=True)  # google-genai sends text frames


async def server_says(
    meter: Meter, flow: http.HTTPFlow, message: dict[str, Any] | bytes, *, text: bool = False
) -> WebSocketMessage:
    return await say(meter, flow, message, client=False, text=text)  # binary, as Google sends them


async def turn(
    meter: Meter, flow: http.HTTPFlow, usage: dict[str, Any] | None, *, text: bool = False
) -> None:
    """One turn as the server plays it: a transcription, audio, then turnComplete with usage."""
    await client_says(meter, flow, {"clientContent": {"turns": [], "turnComplete": True}})
    await server_says(meter, flow, transcription(), text=text)
    for n in range(2):
        await server_says(meter, flow, audio_chunk(1, n, size=4000), text=text)
    await server_says(meter, flow, turn_complete(usage), text=text)


async def test_each_turn_is_a_row_stored_inside_its_hook(meter: Meter) -> None:
    flow = handshake()
    await open_session(meter, flow)
    assert records(meter) == [] and meter.call_state(flow) is None  # the key went with the state
    setup = await client_says(meter, flow, setup_message(f"models/{NATIVE}"))
    assert not setup.dropped and setup.content == dumps(setup_message(f"models/{NATIVE}"))
    await server_says(meter, flow, setup_complete())
    await client_says(meter, flow, {"clientContent": {"turns": [], "turnComplete": True}})
    before = time.time()
    await server_says(meter, flow, transcription())
    await server_says(meter, flow, audio_chunk(1, 0, size=4000))
    assert records(meter) == []
    done = await server_says(meter, flow, turn_complete(TURN_USAGES[0]))
    # Stored within the hook: before mitmproxy forwards the usage to the client.
    [first] = records(meter)
    assert not done.dropped and done.content == dumps(turn_complete(TURN_USAGES[0]))
    assert (first.provider, first.host, first.path, first.api_flavor, first.status_code) == (
        "google",
        HOST,
        ROW_PATH,
        "live",
        101,
    )
    assert (first.environment, first.environment_source, first.team) == ("development", "header", "voice")
    assert first.key_fingerprint == key_fingerprint(KEY) and KEY not in first.to_json()
    assert (first.model_requested, first.model_sent, first.model_reported) == (NATIVE, NATIVE, None)
    assert (first.input_tokens, first.output_tokens) == (541, 156)
    assert (first.input_audio_tokens, first.output_audio_tokens, first.cache_read_tokens) == (131, 156, 0)
    assert (first.streamed, first.aborted, first.action, first.usage_source) == (
        True,
        False,
        "allowed",
        "reported",
    )
    assert before <= first.ts.timestamp() and first.duration_ms is not None and first.duration_ms >= 0
    await turn(meter, flow, TURN_USAGES[1])
    first, second = records(meter)
    assert first.id != second.id
    assert (second.input_tokens, second.cache_read_tokens, second.output_tokens, second.reasoning_tokens) == (
        780,
        120,
        230,
        20,
    )
    assert (second.input_audio_tokens, second.input_image_tokens, second.output_audio_tokens) == (
        200,
        80,
        200,
    )
    # Summed, not the last one: each turn billed its whole context again.
    assert first.input_tokens + second.input_tokens == 1321
    flow.websocket.close_code = 1000  # type: ignore[union-attr]
    meter.websocket_end(flow)
    assert len(records(meter)) == 2  # nothing in flight: no more rows


async def test_audio_frames_pass_unread_and_unchanged(meter: Meter, monkeypatch: pytest.MonkeyPatch) -> None:
    flow = handshake()
    await open_session(meter, flow)
    read = reads_of(monkeypatch, gemini_live, "read_usage", "read_setup")
    setup = dumps(setup_message(f"models/{NATIVE}"))
    await client_says(meter, flow, setup)
    assert read == [setup]
    audio_in = {"realtimeInput": {"audio": {"data": "QUJD" * 10_000, "mimeType": "audio/pcm;rate=16000"}}}
    for _ in range(3):
        message = await client_says(meter, flow, audio_in)
        assert not message.dropped and message.content == dumps(audio_in)
    sent = [
        dumps(setup_complete()),
        dumps(audio_chunk(1, 0)),
        b"\x00\x01 not json",
        b'{"serverContent": {"turnComplete": true}, "usageMetadata": {"promptTok',  # truncated
        b"",
    ]
    for data in sent:
        message = await server_says(meter, flow, data)
        assert message.content == data and not message.dropped
    assert read == [setup, sent[3]]  # audio both ways and messages without usage are never decoded
    assert records(meter) == []


async def test_usage_riding_on_content_and_in_text_frames(meter: Meter) -> None:
    flow = handshake()
    await open_session(meter, flow)
    await client_says(meter, flow, setup_message(f"models/{NATIVE}"))
    chunk = audio_chunk(1, 0, size=4000)
    chunk["usageMetadata"] = TURN_USAGES[0]
    await server_says(meter, flow, chunk)  # not gated on turnComplete
    await server_says(meter, flow, turn_complete(None))
    await turn(meter, flow, TURN_USAGES[1], text=True)
    first, second = records(meter)
    assert (first.input_tokens, second.input_tokens) == (541, 780)
    assert first.duration_ms == 0  # the usage came with the turn's first content


async def test_a_turn_cut_by_the_close_is_aborted_without_usage(meter: Meter) -> None:
    flow = handshake()
    await open_session(meter, flow)
    await client_says(meter, flow, setup_message(f"models/{NATIVE}"))
    await server_says(meter, flow, setup_complete())
    await server_says(meter, flow, audio_chunk(1, 0, size=4000))
    flow.websocket.close_code = 1006  # type: ignore[union-attr]
    meter.websocket_end(flow)
    [row] = records(meter)
    assert (row.aborted, row.usage, row.usage_source, row.cost_usd) == (True, None, "none", None)
    assert (row.model_sent, row.api_flavor) == (NATIVE, "live")
    assert row.error == "the WebSocket closed (1006) before the turn's usage: usage unknown"
    meter.websocket_end(flow)
    assert len(records(meter)) == 1


async def test_downgrade_rewrites_the_setup_model(meter: Meter, closes: list[tuple[Any, ...]]) -> None:
    meter._apply(parse_policies(RESTRICTED))
    flow = handshake()
    await open_session(meter, flow)
    assert flow.websocket is not None  # the handshake names no model: nothing to check yet
    original = dumps(setup_message("models/gemini-3.1-flash-live-preview"))
    setup = await client_says(meter, flow, original)
    assert not setup.dropped and closes == []
    rewritten = original.replace(b"gemini-3.1-flash-live-preview", b"gemini-live-2.5-flash-preview")
    assert setup.content == rewritten
    await turn(meter, flow, TURN_USAGES[0])
    [row] = records(meter)
    assert (row.action, row.model_requested, row.model_sent) == (
        "downgraded",
        "gemini-3.1-flash-live-preview",
        "gemini-live-2.5-flash-preview",
    )


async def test_a_setup_spelled_with_escapes_is_read(meter: Meter, closes: list[tuple[Any, ...]]) -> None:
    """Any JSON parser reads ``{"s\\u0065tup": ...}`` as the setup: its model must be read (a
    disallowed one downgraded, not the session refused for naming none; an unrestricted session's
    rows priced by it, not left without a model)."""
    meter._apply(parse_policies(RESTRICTED))
    flow = handshake()
    await open_session(meter, flow)
    original = dumps(setup_message("models/gemini-3.1-flash-live-preview")).replace(
        b'"setup"', b'"s\\u0065tup"'
    )
    setup = await client_says(meter, flow, original)
    assert not setup.dropped and closes == []
    assert json.loads(setup.content)["setup"]["model"] == "models/gemini-live-2.5-flash-preview"
    await turn(meter, flow, TURN_USAGES[0])
    [row] = records(meter)
    assert (row.action, row.model_requested, row.model_sent) == (
        "downgraded",
        "gemini-3.1-flash-live-preview",
        "gemini-live-2.5-flash-preview",
    )


async def test_a_blocked_model_is_refused_at_the_setup(meter: Meter, closes: list[tuple[Any, ...]]) -> None:
    meter._apply(parse_policies(RESTRICTED))
    flow = handshake()
    await open_session(meter, flow)
    setup = await client_says(meter, flow, setup_message("models/gemini-2.0-flash-live-001"))
    assert setup.dropped
    [(closed, code, reason)] = closes
    assert (closed, code) == (flow, 1008)
    assert reason.startswith(
        "tokometer: model gemini-2.0-flash-live-001 is not allowed in environment development"
    )
    [row] = records(meter)
    assert (row.action, row.status_code, row.model_requested, row.model_sent) == (
        "blocked",
        101,
        "gemini-2.0-flash-live-001",
        None,
    )
    assert (row.cost_usd, row.price_status, row.api_flavor) == (Decimal(0), "not_billed", "live")
    assert "is not allowed" in (row.error or "") and "closed 1008" in (row.error or "")
    # What the client sends while the socket closes goes nowhere; the close ends no turn.
    assert (await client_says(meter, flow, {"realtimeInput": {"audio": {"data": "QUJD"}}})).dropped
    flow.websocket.close_code = 1008  # type: ignore[union-attr]
    meter.websocket_end(flow)
    assert len(records(meter)) == 1


async def test_a_setup_without_a_model_is_refused_where_models_are_restricted(
    meter: Meter, closes: list[tuple[Any, ...]]
) -> None:
    open_flow = handshake()
    await open_session(meter, open_flow)
    assert not (await client_says(meter, open_flow, b'{"setup": {}}')).dropped  # nothing restricted
    meter._apply(parse_policies(RESTRICTED))
    for first in (b'{"setup": {}}', b'{"clientContent": {"turnComplete": true}}', b"\x00garbage"):
        flow = handshake()
        await open_session(meter, flow)
        assert (await client_says(meter, flow, first)).dropped
    assert [code for _, code, _ in closes] == [1008] * 3
    assert all("could not be read" in (row.error or "") for row in records(meter))


async def test_a_spent_budget_refuses_the_handshake(meter: Meter) -> None:
    meter._apply(parse_policies(BUDGETED))
    meter.enforcer.budgets.hold("earlier", scopes_for("development"), Decimal(1))
    flow = handshake()
    await open_session(meter, flow)
    assert flow.response.status_code == 429 and flow.websocket is None  # type: ignore[union-attr]
    error = json.loads(flow.response.content)["error"]  # type: ignore[union-attr]
    assert (error["code"], error["status"]) == (429, "RESOURCE_EXHAUSTED")
    [row] = records(meter)
    assert (row.action, row.status_code, row.api_flavor, row.cost_usd) == (
        "over_budget",
        429,
        "live",
        Decimal(0),
    )


async def test_a_spent_budget_caps_the_session(meter: Meter, closes: list[tuple[Any, ...]]) -> None:
    meter._apply(parse_policies(BUDGETED))
    flow = handshake()
    await open_session(meter, flow)
    await client_says(meter, flow, setup_message(f"models/{NATIVE}"))
    await turn(meter, flow, TURN_USAGES[0])
    [row] = records(meter)
    # Priced at once, and its cost counts against the budget before the store gets to it.
    assert row.price_status == "priced" and row.cost_usd is not None and row.cost_usd > Decimal("0.0001")
    assert closes == []
    audio = await client_says(meter, flow, {"realtimeInput": {"audio": {"data": "QUJD"}}})
    assert audio.dropped
    [(_, code, reason)] = closes
    assert code == 1011  # as Google closes a session over its quota
    assert reason.startswith("tokometer: development budget of $0.0001 per day is spent")
    assert (await client_says(meter, flow, {"clientContent": {"turnComplete": True}})).dropped
    assert len(closes) == 1


async def test_vertex_project_attributes_the_session_at_its_setup(
    meter: Meter, closes: list[tuple[Any, ...]]
) -> None:
    policies = (
        "environments:\n  development: {}\n  voice:\n    models: {allow: [gemini-live-2.5-flash]}\n"
        "keys:\n  voice-project:\n    environment: voice\n"
        f"    fingerprint: {key_fingerprint('vertex:my-proj')}\n"
    )
    meter._apply(parse_policies(policies))
    host = "us-central1-aiplatform.googleapis.com"
    flow = handshake(VERTEX_PATH, host, {"authorization": "Bearer ya29.oauth-token"}, key=None)
    del flow.request.headers["x-metering-tags"]
    await open_session(meter, flow)
    model = "projects/my-proj/locations/us-central1/publishers/google/models/gemini-live-2.5-flash"
    assert not (await client_says(meter, flow, setup_message(model, vertex=True))).dropped
    await turn(meter, flow, vertex_usage(TURN_USAGES[0]), text=True)
    [row] = records(meter)
    assert (row.provider, row.host, row.path) == ("vertex", host, VERTEX_PATH[1:])
    assert row.key_fingerprint == key_fingerprint("vertex:my-proj") and "ya29" not in row.to_json()
    assert (row.environment, row.environment_source, row.key_name) == ("voice", "key", "voice-project")
    assert json.loads(row.tags or "{}") == {"gcp_project": "my-proj"}
    assert (row.inference_geo, row.model_sent, row.input_tokens, row.output_audio_tokens) == (
        "us-central1",
        "gemini-live-2.5-flash",
        541,
        156,
    )
    # The project's environment decides the setup: another model is refused there.
    flow = handshake(VERTEX_PATH, host, {"authorization": "Bearer ya29.oauth-token"}, key=None)
    await open_session(meter, flow)
    other = model.replace("gemini-live-2.5-flash", "gemini-3.1-flash-live-preview")
    assert (await client_says(meter, flow, setup_message(other, vertex=True))).dropped
    refused = records(meter)[-1]
    assert (refused.environment, refused.action, closes[0][1]) == ("voice", "blocked", 1008)


async def test_ephemeral_tokens_and_keys_in_the_query_are_credentials(meter: Meter) -> None:
    token = "auth_tokens/ephemeral0123456789"
    constrained = DEV_PATH.replace("v1beta", "v1alpha") + "Constrained"
    flow = handshake(constrained, headers={"authorization": f"Token {token}"}, key=token)
    await open_session(meter, flow, status=401)
    browser = handshake(f"{constrained}?access_token={token}", key=None)
    await open_session(meter, browser, status=401)
    keyed = handshake(f"{DEV_PATH[1:]}?key={KEY}", key=None)
    await open_session(meter, keyed, status=401)
    token_row, browser_row, key_row = records(meter)
    for row in (token_row, browser_row):
        assert row.key_fingerprint == key_fingerprint(token) and row.error == "upstream answered 401"
        assert row.path == constrained[1:] and token not in row.to_json()
    assert key_row.key_fingerprint == key_fingerprint(KEY) and key_row.path == ROW_PATH
    assert KEY not in key_row.to_json()
    assert all(
        (r.api_flavor, r.cost_usd, r.price_status) == ("live", 0, "not_billed") for r in records(meter)
    )


async def test_other_paths_on_the_host_are_not_sessions(meter: Meter) -> None:
    flow = handshake("/v1beta/models")
    await open_session(meter, flow)
    assert meter.call_state(flow) is None and records(meter) == []
    plain = handshake()
    del plain.request.headers["upgrade"]
    await open_session(meter, plain)
    assert records(meter) == []


async def test_a_session_open_when_the_script_reloads_is_finished_by_the_new_addon(meter: Meter) -> None:
    flow = handshake()
    await open_session(meter, flow)
    await client_says(meter, flow, setup_message(f"models/{NATIVE}"))
    await server_says(meter, flow, audio_chunk(1, 0, size=400))
    meter.done()  # mitmproxy reloads the script: it is not shutting down
    new = Meter()
    new.store = CollectingStore()  # type: ignore[assignment]
    await server_says(new, flow, turn_complete(TURN_USAGES[0]))
    [row] = records(new)
    assert (row.model_sent, row.input_tokens, row.aborted) == (NATIVE, 541, False)


async def test_a_turn_in_flight_at_shutdown_is_an_aborted_row(meter: Meter) -> None:
    flow = handshake()
    await open_session(meter, flow)
    await client_says(meter, flow, setup_message(f"models/{NATIVE}"))
    await server_says(meter, flow, audio_chunk(1, 0, size=400))
    meter_module.ctx.master.should_exit.set()  # SIGTERM: done runs before the flows end
    meter.done()
    [row] = records(meter)
    assert (row.aborted, row.usage, row.error) == (True, None, "proxy shut down mid-session")
    meter.websocket_end(flow)
    assert len(records(meter)) == 1


async def test_a_rate_limit_refuses_the_handshake(meter: Meter) -> None:
    meter._apply(parse_policies("environments:\n  development:\n    rate_limit: {requests_per_minute: 1}\n"))
    first, second = handshake(), handshake()
    await open_session(meter, first)
    await open_session(meter, second)
    assert first.websocket is not None and second.websocket is None
    assert second.response.status_code == 429  # type: ignore[union-attr]
    assert json.loads(second.response.content)["error"]["status"] == "RESOURCE_EXHAUSTED"  # type: ignore[union-attr]
    [row] = records(meter)
    assert (row.action, row.status_code, row.api_flavor) == ("rate_limited", 429, "live")


async def test_a_project_whose_budget_is_spent_is_refused_at_the_setup(
    meter: Meter, closes: list[tuple[Any, ...]]
) -> None:
    """The handshake had no credential to check; the setup's project has a spent budget: refused
    there, with Google's close for a spent quota."""
    fingerprint = key_fingerprint("vertex:my-proj")
    policies = (
        f"keys:\n  voice-project:\n    fingerprint: {fingerprint}\n    budget: {{usd: 0.01, period: day}}\n"
    )
    meter._apply(parse_policies(policies))
    meter.enforcer.budgets.hold("earlier", scopes_for("development", "voice-project"), Decimal(1))
    flow = handshake(VERTEX_PATH, "europe-west4-aiplatform.googleapis.com", key=None)
    await open_session(meter, flow)
    assert flow.websocket is not None
    model = "projects/my-proj/locations/europe-west4/publishers/google/models/gemini-live-2.5-flash"
    assert (await client_says(meter, flow, setup_message(model, vertex=True))).dropped
    [(_, code, reason)] = closes
    assert code == 1011 and reason.startswith("tokometer: key voice-project budget of $0.01 per day is spent")
    [row] = records(meter)
    assert (row.action, row.key_name, row.model_requested, row.model_sent, row.inference_geo) == (
        "over_budget",
        "voice-project",
        "gemini-live-2.5-flash",
        None,
        "europe-west4",
    )
    assert (row.cost_usd, row.price_status) == (Decimal(0), "not_billed")


async def test_a_downgraded_setup_in_non_ascii_text_reaches_upstream_intact(
    meter: Meter, closes: list[tuple[Any, ...]]
) -> None:
    """A JavaScript client's setup is raw UTF-8 (JSON.stringify escapes nothing): once rewritten to
    another length, mitmproxy sends a text message in 4,000-byte pieces, each decoded on its own
    (Fragmentizer), so a character cut by a piece's end reached Google as U+FFFD."""
    from mitmproxy.proxy.layers.websocket import Fragmentizer

    shorter = RESTRICTED.replace("gemini-live-2.5-flash-preview}", "gemini-live-2.5-flash}")
    meter._apply(parse_policies(shorter))  # a target of another length: the message is cut anew
    flow = handshake()
    await open_session(meter, flow)
    instruction = "日本語で短く答えてください。" * 400  # ~16 KB of three-byte characters
    original = json.dumps(
        setup_message("models/gemini-3.1-flash-live-preview", instruction=instruction), ensure_ascii=False
    ).encode()
    setup = await client_says(meter, flow, original)
    assert not setup.dropped and closes == []
    sent = "".join(piece.data for piece in Fragmentizer([original], True)(setup.content))  # type: ignore[attr-defined]
    assert "\ufffd" not in sent
    got = json.loads(sent)
    assert got["setup"]["model"] == "models/gemini-live-2.5-flash"
    assert got["setup"]["systemInstruction"]["parts"][0]["text"] == instruction


async def test_a_forged_last4_key_in_the_query_refuses_the_handshake(meter: Meter) -> None:
    """The session's own key is unmapped; a second ?key= ends in production's last4: the keys
    disagree about the environment, so the handshake is refused, not let into production."""
    meter._apply(
        parse_policies(
            "environments: {development: {}, production: {}}\n"
            'keys: {prod: {last4: "WXYZ", environment: production}}\n'
        )
    )
    flow = handshake(f"{DEV_PATH}?key=AIzaForged000000000000000000000WXYZ")
    await open_session(meter, flow)
    assert flow.response.status_code == 403 and flow.websocket is None  # type: ignore[union-attr]
    [row] = records(meter)
    assert (row.action, row.environment, row.key_name) == ("blocked", "development", None)
    assert "bound to different environments (development, production)" in (row.error or "")
