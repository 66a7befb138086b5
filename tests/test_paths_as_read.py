"""A path spelled otherwise than an SDK spells it (``/v1/./chat/%63ompletions``) is the same API to
the server, so it is metered and checked like any other: no way around the allowlist or the meter."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.test import taddons
from test_meter import FIXTURES, HAIKU, SONNET, CollectingStore, make_flow, run_request, stream_response

from addon.meter import Meter
from addon.policies import parse_policies
from addon.providers.values import normal_path

BEDROCK_SIGNATURE = "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLEKEY000001/20261128/us-east-1/bedrock/aws4_request"
BEDROCK = "https://bedrock-runtime.us-east-1.amazonaws.com"
RESTRICTED = f"""
environments:
  development:
    models:
      allow: [gpt-4o-mini, {HAIKU}, gemini-2.0-flash]
      downgrade: {{gpt-4o: gpt-4o-mini, gemini-2.5-pro: gemini-2.0-flash}}
"""


@pytest.mark.parametrize(
    ("sent", "read"),
    [
        ("/v1/chat/completions", "/v1/chat/completions"),
        ("/v1/./chat/%63ompletions?x=%41", "/v1/chat/completions?x=%41"),  # the query is left alone
        ("/v1/x/../chat/completions", "/v1/chat/completions"),
        ("/v1/%2e%2E/v1/chat/%2D%5f%7e", "/v1/chat/-_~"),
        ("/../../v1/messages", "/v1/messages"),  # never above the root
        ("/a/b/.", "/a/b/"),
        ("/a/b/..", "/a/"),
        ("/v1/chat%2Fcompletions", "/v1/chat%2Fcompletions"),  # reserved: not the same resource
        (
            "/v1beta/models/gemini-2.0-flash%3AgenerateContent",
            "/v1beta/models/gemini-2.0-flash%3AgenerateContent",
        ),
        ("/.well-known/x/..x", "/.well-known/x/..x"),
        ("/a%zz%4", "/a%zz%4"),
    ],
)
def test_a_path_is_read_as_servers_read_it(sent: str, read: str) -> None:
    assert normal_path(sent) == read
    assert (normal_path(sent) is sent) == (sent == read)  # the same object when nothing changes


@given(st.text(alphabet="/.%2eE5Fa?b", max_size=40))
def test_reading_a_path_never_raises_and_reads_the_same_twice(sent: str) -> None:
    read = normal_path(sent)
    assert normal_path(read) == read
    route = read.partition("?")[0]
    assert "/./" not in route + "/" and "/../" not in route + "/"


@pytest.fixture
def meter(tmp_path: Path):
    addon = Meter()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tokometer_db=str(tmp_path / "spend.duckdb"))
        addon.store = CollectingStore()  # type: ignore[assignment]
        addon._apply(parse_policies(RESTRICTED))
        yield addon


async def finish(meter: Meter, flow: http.HTTPFlow, fixture: str):
    body = (FIXTURES / fixture).read_bytes()
    flow.response = http.Response.make(200, body, {"content-type": "application/json"})
    meter.responseheaders(flow)
    await meter.response(flow)
    [record] = meter.store.records  # type: ignore[union-attr]
    return record


async def test_a_chat_call_spelled_otherwise_is_downgraded_and_metered(
    meter: Meter, caplog: pytest.LogCaptureFixture
) -> None:
    flow = make_flow("https://api.openai.com/v1/./chat/%63ompletions", {"model": "gpt-4o", "messages": []})
    with caplog.at_level(logging.INFO, logger="tokometer"):
        await run_request(meter, flow)
    assert flow.request.path == "/v1/chat/completions"  # what the server gets is what was checked
    assert json.loads(flow.request.content)["model"] == "gpt-4o-mini"
    assert "api.openai.com/v1/./chat/%63ompletions sent as /v1/chat/completions" in caplog.text
    record = await finish(meter, flow, "openai_chat_reasoning.json")
    assert (record.api_flavor, record.path, record.action) == ("chat", "/v1/chat/completions", "downgraded")
    usage = json.loads((FIXTURES / "openai_chat_reasoning.json").read_bytes())["usage"]
    assert (record.input_tokens, record.output_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])


async def test_a_path_with_an_encoded_slash_is_checked_as_the_api_it_may_reach_and_sent_as_it_came(
    meter: Meter,
) -> None:
    blocked = make_flow("https://api.openai.com/v1/chat%2Fcompletions", {"model": "o3", "messages": []})
    await run_request(meter, blocked)
    assert blocked.response is not None and blocked.response.status_code == 403
    allowed = make_flow("https://api.openai.com/v1/chat%2Fcompletions", {"model": "gpt-4o", "messages": []})
    await run_request(meter, allowed)
    assert allowed.response is None and allowed.request.path == "/v1/chat%2Fcompletions"
    assert json.loads(allowed.request.content)["model"] == "gpt-4o-mini"  # downgraded in the body only
    meter.store.records.clear()  # type: ignore[union-attr]
    record = await finish(meter, allowed, "openai_chat_reasoning.json")
    assert (record.api_flavor, record.path, record.model_sent) == (
        "chat",
        "/v1/chat/completions",
        "gpt-4o-mini",
    )


async def test_a_signed_bedrock_path_spelled_otherwise_is_read_so_and_never_rewritten(meter: Meter) -> None:
    sent = f"/model/{HAIKU.replace(':', '%3A')}/./%63onverse"
    flow = make_flow(BEDROCK + sent, {"messages": []}, headers={"authorization": BEDROCK_SIGNATURE})
    await run_request(meter, flow)
    assert flow.response is None and flow.request.path == sent  # SigV4 signed this path: kept
    record = await finish(meter, flow, "bedrock_converse.json")
    assert (record.provider, record.api_flavor, record.model_sent) == ("aws", "converse", HAIKU)
    assert record.input_tokens > 0 and record.path == f"/model/{HAIKU.replace(':', '%3A')}/converse"
    refused = make_flow(
        BEDROCK + f"/model/{SONNET}/x/../converse",
        {"messages": []},
        headers={"authorization": BEDROCK_SIGNATURE},
    )
    await run_request(meter, refused)
    assert refused.response is not None and refused.response.status_code == 403


async def test_a_gemini_path_spelled_otherwise_is_downgraded_in_its_path(meter: Meter) -> None:
    flow = make_flow(
        "https://generativelanguage.googleapis.com/v1beta/./models/gemini-2.5-pro%3AgenerateContent",
        {"contents": []},
        headers={"x-goog-api-key": "AIzaSyTESTKEYabcdefghijklmnopqrstuvwx"},
    )
    await run_request(meter, flow)
    assert flow.response is None
    assert flow.request.path.replace("%3A", ":") == "/v1beta/models/gemini-2.0-flash:generateContent"


async def test_a_realtime_handshake_spelled_otherwise_is_checked(meter: Meter) -> None:
    flow = make_flow(
        "https://api.openai.com/v1/x/../%72ealtime?model=gpt-realtime",
        b"",
        method="GET",
        headers={"upgrade": "websocket", "connection": "Upgrade", "sec-websocket-version": "13"},
    )
    await run_request(meter, flow)
    assert flow.response is not None and flow.response.status_code == 403


WEBSOCKET = {"upgrade": "websocket", "connection": "Upgrade", "sec-websocket-version": "13"}
GEMINI = "https://generativelanguage.googleapis.com"
GEMINI_KEY = "AIzaSyTESTKEYabcdefghijklmnopqrstuvwx"


def refused(flow: http.HTTPFlow) -> bool:
    return flow.response is not None and flow.response.status_code == 403


@pytest.mark.parametrize(
    ("url", "body", "method", "headers"),
    [
        ("https://api.openai.com/v1%2Frealtime?model=gpt-realtime", b"", "GET", WEBSOCKET),
        (
            "https://api.openai.com/v1/realtime%2F./client_secrets",
            {"session": {"model": "gpt-realtime"}},
            "POST",
            {},
        ),
        ("https://api.openai.com/v1/chat%2F.%2Fcompletions", {"model": "o3"}, "POST", {}),
        ("https://api.openai.com/v1/chat//completions", {"model": "o3"}, "POST", {}),
        (BEDROCK + f"//model/{SONNET}/converse", {}, "POST", {"authorization": BEDROCK_SIGNATURE}),
    ],
)
async def test_every_kind_of_call_is_read_past_escaped_slashes_and_doubled_ones(
    meter: Meter, url: str, body: dict | bytes, method: str, headers: dict
) -> None:
    flow = make_flow(url, body, method=method, headers=headers)
    sent = flow.request.path
    await run_request(meter, flow)
    assert refused(flow), url  # each names a model the environment does not allow
    assert flow.request.path == sent  # read so, sent as it came


async def test_a_path_read_as_sent_leaves_the_call_no_route_of_its_own(meter: Meter) -> None:
    flow = make_flow("https://api.openai.com/v1/chat/completions", {"model": "gpt-4o-mini", "messages": []})
    meter.requestheaders(flow)
    assert meter.call_state(flow).route is None  # type: ignore[union-attr]


async def test_a_gemini_downgrade_read_past_an_escaped_slash_keeps_the_query(meter: Meter) -> None:
    flow = make_flow(
        f"{GEMINI}/v1beta/models%2Fgemini-2.5-pro:streamGenerateContent?alt=sse&key={GEMINI_KEY}",
        {"contents": []},
        headers={"authorization": ""},
    )
    await run_request(meter, flow)
    assert flow.response is None
    assert flow.request.path == (
        f"/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse&key={GEMINI_KEY}"
    )
    stream_response(flow, meter)
    assert callable(flow.response.stream)  # alt=sse: read as the stream it is


async def test_a_doubled_slash_in_a_gemini_path_is_checked(meter: Meter) -> None:
    flow = make_flow(
        f"{GEMINI}/v1beta/models//gemini-2.5-pro:generateContent",
        {"contents": []},
        headers={"x-goog-api-key": GEMINI_KEY},
    )
    await run_request(meter, flow)
    assert flow.response is None and "gemini-2.0-flash" in flow.request.path
