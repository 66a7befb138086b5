"""The addon's Responses-over-WebSocket hooks with mitmproxy.test.taddons and tflow (no network)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fake_responses_ws import (
    RESPONSE_USAGE,
    create_event,
    dumps,
    request_error,
    response_created,
    response_object,
    response_terminal,
    text_delta,
    web_search_call,
)
from genai_prices import Usage as GPUsage
from genai_prices import calc_price
from mitmproxy import http
from websocket_hooks import (
    CollectingStore,
    client_says,
    handshake_flow,
    injected_events,
    metered,
    open_session,
    reads_of,
    records,
    server_says,
)

from addon.api_keys import key_fingerprint
from addon.budgets import Scope
from addon.client_process import ClientProcess
from addon.meter import Meter
from addon.policies import parse_policies
from addon.providers import openai_responses_ws

KEY = "sk-proj-responsesWSkey0000111122223333444455556666"
RESTRICTED = """\
environments:
  development:
    models:
      allow: [gpt-5-mini]
      on_disallowed: downgrade
      downgrade: {gpt-5: gpt-5-mini}
"""
BLOCKING = (
    "environments:\n  development:\n    models:\n      allow: [gpt-5-mini]\n      on_disallowed: block\n"
)
COUNTS = GPUsage(input_tokens=1200, cache_read_tokens=200, output_tokens=300)
GPT5_COST = calc_price(COUNTS, "gpt-5", provider_id="openai").total_price
DEV = Scope("environment", "development")


@pytest.fixture
def meter(tmp_path: Path) -> Iterator[Meter]:
    yield from metered(tmp_path)


@pytest.fixture
def injected(meter: Meter, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    return injected_events(meter, monkeypatch)


def handshake(path: str = "/v1/responses") -> http.HTTPFlow:
    tags = json.dumps({"env": "development", "team": "agents"})
    auth = {"authorization": f"Bearer {KEY}", "x-metering-tags": tags}
    return handshake_flow("api.openai.com", path, auth, None, 1_764_321_600.0)


async def test_two_lanes_at_once_one_row_per_response_stored_inside_its_hook(meter: Meter) -> None:
    flow = handshake()
    await open_session(meter, flow)
    assert records(meter) == [] and meter.call_state(flow) is None  # no row for the upgrade; key gone
    a = await client_says(meter, flow, create_event("gpt-5", "a"))
    b = await client_says(meter, flow, create_event("gpt-5-mini", "b"))
    assert not a.dropped and not b.dropped and a.content == dumps(create_event("gpt-5", "a"))
    await server_says(meter, flow, response_created("resp_a", "gpt-5-2025-08-07", "a"))
    await server_says(meter, flow, response_created("resp_b", "gpt-5-mini-2025-08-07", "b"))
    for n in range(3):
        await server_says(meter, flow, text_delta("resp_a", n, "a"))
        await server_says(meter, flow, text_delta("resp_b", n, "b"))
    assert records(meter) == []
    done_b = response_terminal("resp_b", "gpt-5-mini-2025-08-07", RESPONSE_USAGE, "b", service_tier="flex")
    message = await server_says(meter, flow, done_b)
    [row_b] = records(meter)  # stored within the hook: before the client gets the event
    assert not message.dropped and message.content == dumps(done_b)
    output = [web_search_call(1), {"type": "file_search_call", "id": "fs_1"}]
    await server_says(
        meter, flow, response_terminal("resp_a", "gpt-5-2025-08-07", RESPONSE_USAGE, "a", output=output)
    )
    _, row_a = records(meter)
    for row, model, reported in (
        (row_a, "gpt-5", "gpt-5-2025-08-07"),
        (row_b, "gpt-5-mini", "gpt-5-mini-2025-08-07"),
    ):
        assert (row.provider, row.host, row.path, row.api_flavor, row.status_code) == (
            "openai",
            "api.openai.com",
            "/v1/responses",
            "responses",
            101,
        )
        assert (row.model_requested, row.model_sent, row.model_reported) == (model, model, reported)
        assert (row.environment, row.environment_source, row.team) == ("development", "header", "agents")
        assert row.key_fingerprint == key_fingerprint(KEY) and KEY not in row.to_json()
        assert (row.input_tokens, row.cache_read_tokens, row.output_tokens, row.reasoning_tokens) == (
            1200,
            200,
            300,
            100,
        )
        assert (row.streamed, row.aborted, row.action, row.usage_source, row.error) == (
            True,
            False,
            "allowed",
            "reported",
            None,
        )
        assert row.duration_ms is not None and row.duration_ms >= 0
    assert (row_a.web_searches, row_a.file_searches, row_b.service_tier) == (1, 1, "flex")
    assert row_a.id != row_b.id
    meter.websocket_end(flow)
    assert len(records(meter)) == 2  # nothing in flight: no more rows


async def test_deltas_and_client_chatter_are_never_decoded(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow = handshake()
    await open_session(meter, flow)
    read = reads_of(monkeypatch, openai_responses_ws, "read_server_event")
    for data in (dumps(text_delta("r", 0, text='say "usage" and "error"')), b"\x00 junk", b""):
        message = await server_says(meter, flow, data)
        assert message.content == data and not message.dropped
    assert read == [] and records(meter) == []


async def test_downgrade_rewrites_the_model_in_the_create(
    meter: Meter, injected: list[dict[str, Any]]
) -> None:
    meter._apply(parse_policies(RESTRICTED))
    flow = handshake()
    await open_session(meter, flow)
    sent = b'{"type":"response.create","model":"gpt-5","input":"x","stream_id":"a"}'
    message = await client_says(meter, flow, sent)
    assert message.content == sent.replace(b'"gpt-5"', b'"gpt-5-mini"') and not message.dropped
    await server_says(meter, flow, response_created("resp_1", "gpt-5-mini", "a"))
    await server_says(meter, flow, response_terminal("resp_1", "gpt-5-mini-2025-08-07", RESPONSE_USAGE, "a"))
    [row] = records(meter)
    assert (row.action, row.model_requested, row.model_sent, row.model_reported) == (
        "downgraded",
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-mini-2025-08-07",
    )
    assert injected == []


@pytest.mark.parametrize(
    "sent",
    [
        b'{"type":"response.cr\\u0065ate","model":"gpt-5","input":"x","stream_id":"a"}',
        b'{"type":"response\\u002ecreate","model":"gpt-5","input":"x","stream_id":"a"}',
    ],
)
async def test_a_create_spelled_with_escapes_is_checked_too(
    meter: Meter, injected: list[dict[str, Any]], sent: bytes
) -> None:
    """Any JSON parser reads ``"response.cr\\u0065ate"`` as ``response.create``: the server would
    run it, so the proxy must check it (the cheap byte test let it pass unread)."""
    meter._apply(parse_policies(RESTRICTED))
    flow = handshake()
    await open_session(meter, flow)
    message = await client_says(meter, flow, sent)
    assert json.loads(message.content)["model"] == "gpt-5-mini" and not message.dropped
    assert injected == []


async def test_a_non_ascii_create_over_4000_bytes_is_downgraded_intact(meter: Meter) -> None:
    meter._apply(parse_policies(RESTRICTED))
    flow = handshake()
    await open_session(meter, flow)
    text = "Grüße aus 東京 — " * 600
    data = json.dumps(create_event("gpt-5", input=text), ensure_ascii=False).encode()
    assert len(data) > 4000
    message = await client_says(meter, flow, data)
    # mitmproxy sends it in 4,000-byte fragments, each decoded on its own: ASCII survives that.
    assert message.content.isascii()
    pieces = [message.content[i : i + 4000].decode() for i in range(0, len(message.content), 4000)]
    assert json.loads("".join(pieces)) == {**json.loads(data), "model": "gpt-5-mini"}


async def test_a_refused_create_gets_an_error_event_and_the_socket_stays_open(
    meter: Meter, injected: list[dict[str, Any]]
) -> None:
    meter._apply(parse_policies(BLOCKING))
    flow = handshake()
    await open_session(meter, flow)
    refused = await client_says(meter, flow, create_event("gpt-5", "a"))
    assert refused.dropped
    [event] = injected
    assert (event["type"], event["status"], event["stream_id"]) == ("error", 403, "a")
    assert (event["error"]["code"], event["error"]["type"]) == ("model_not_allowed", "permission_error")
    assert event["error"]["message"].startswith(
        "tokometer: model gpt-5 is not allowed in environment development"
    )
    [row] = records(meter)
    assert (row.action, row.status_code, row.model_requested, row.model_sent) == (
        "blocked",
        403,
        "gpt-5",
        None,
    )
    assert (row.cost_usd, row.price_status, row.path, row.api_flavor) == (
        Decimal(0),
        "not_billed",
        "/v1/responses",
        "responses",
    )
    assert event["error"]["message"] == f"tokometer: {row.error}"  # the row says why, as an HTTP refusal's
    # The next, allowed, create goes through, and its response is metered as usual.
    allowed = await client_says(meter, flow, create_event("gpt-5-mini", "a"))
    assert not allowed.dropped and len(injected) == 1
    await server_says(meter, flow, response_created("resp_1", "gpt-5-mini", "a"))
    await server_says(meter, flow, response_terminal("resp_1", "gpt-5-mini", RESPONSE_USAGE, "a"))
    assert [r.action for r in records(meter)] == ["blocked", "allowed"]
    # A create without a readable model is refused where models are restricted (fail closed).
    nameless = await client_says(meter, flow, create_event(None))
    assert nameless.dropped and "stream_id" not in injected[-1]
    assert "could not be read" in injected[-1]["error"]["message"]
    assert records(meter)[-1].action == "blocked"


async def test_a_create_whose_user_is_unknown_is_refused_once_users_have_limits(
    meter: Meter, injected: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket opened with no user identified (a container's client) and no user limits; then
    policies.yaml gives alice a budget: its next create is refused (403 blocked, as an HTTP call
    of that client is), not let past the user limits. Before: it went upstream (the create path
    did not tell the enforcer the user was unknown)."""
    not_found = ClientProcess(problem="connection not found in /proc/net (not a local client?)")
    monkeypatch.setattr("addon.meter.lookup_client_process", lambda *args, **kwargs: not_found)
    flow = handshake()
    await open_session(meter, flow)
    assert flow.websocket is not None
    assert not (await client_says(meter, flow, create_event("gpt-5-mini", "a"))).dropped
    meter._apply(parse_policies("users:\n  alice: {budget: {usd: 100, period: day}}\n"))
    refused = await client_says(meter, flow, create_event("gpt-5-mini", "b"))
    assert refused.dropped
    [event] = injected
    assert (event["type"], event["status"], event["error"]["type"]) == ("error", 403, "permission_error")
    assert "user could not be identified" in event["error"]["message"]
    assert (records(meter)[-1].action, records(meter)[-1].user_name) == ("blocked", None)


async def test_unrestricted_a_nameless_create_passes(meter: Meter, injected: list[dict[str, Any]]) -> None:
    flow = handshake()
    await open_session(meter, flow)
    assert not (await client_says(meter, flow, create_event(None))).dropped
    await server_says(meter, flow, response_created("resp_1", "gpt-5"))
    await server_says(meter, flow, response_terminal("resp_1", "gpt-5", RESPONSE_USAGE))
    [row] = records(meter)
    assert (row.model_requested, row.model_reported, row.input_tokens) == (None, "gpt-5", 1200)


async def test_budget_reserved_at_the_create_settled_at_its_end_and_refused_once_spent(
    meter: Meter, injected: list[dict[str, Any]]
) -> None:
    meter._apply(parse_policies("environments:\n  development:\n    budget: {usd: 0.004, period: day}\n"))
    flow = handshake()
    await open_session(meter, flow)
    budgets = meter.enforcer.budgets
    create = create_event("gpt-5", "a", max_output_tokens=400)
    await client_says(meter, flow, create)
    # Its estimate is reserved: the request's bytes / 4 in, its max_output_tokens out, at gpt-5's rates.
    estimate = meter.pricer.estimate("openai", "gpt-5", len(dumps(create)) // 4, 400, None)
    assert budgets.reserved() == {DEV: estimate} and estimate > 0
    # A second create while the first is in flight: the reservation leaves no room.
    second = await client_says(meter, flow, create_event("gpt-5", "b"))
    assert second.dropped
    assert (injected[-1]["status"], injected[-1]["error"]["code"], injected[-1]["stream_id"]) == (
        429,
        "budget_exceeded",
        "b",
    )
    assert records(meter)[-1].action == "over_budget" and budgets.reserved() == {DEV: estimate}
    await server_says(meter, flow, response_created("resp_1", "gpt-5", "a"))
    await server_says(meter, flow, response_terminal("resp_1", "gpt-5", RESPONSE_USAGE, "a"))
    row = records(meter)[-1]
    # Priced at once; its cost replaces the reservation (the store's writer records it).
    assert (row.cost_usd, row.price_status) == (GPT5_COST, "priced")
    assert Decimal("0.004275") == GPT5_COST  # 1,000 x $1.25 + 200 x $0.125 + 300 x $10 per 1M
    assert budgets.reserved() == {}
    third = await client_says(meter, flow, create_event("gpt-5-mini", "a"))
    assert third.dropped and injected[-1]["error"]["code"] == "budget_exceeded"
    assert injected[-1]["error"]["message"].startswith(
        "tokometer: development budget of $0.004 per day is spent"
    )
    # Steering adds input to a running response: never refused.
    steer = await client_says(
        meter, flow, {"type": "response.steer", "previous_response_id": "resp_1", "input": "x"}
    )
    assert not steer.dropped and len(injected) == 2


async def test_a_create_with_the_image_tool_reserves_its_image_too(meter: Meter) -> None:
    """A response.create with the image_generation tool reserves, with its text, the image the
    tool may write (gpt-image-1, low 1024x1024: 272 tokens, 100 per partial image, at $40/M)."""
    meter._apply(parse_policies("environments:\n  development:\n    budget: {usd: 10, period: day}\n"))
    flow = handshake()
    await open_session(meter, flow)
    tool = {"type": "image_generation", "model": "gpt-image-1", "quality": "low", "size": "1024x1024"}
    tool["partial_images"] = 1
    create = create_event("gpt-5", "a", max_output_tokens=400, tools=[tool])
    await client_says(meter, flow, create)
    text = meter.pricer.estimate("openai", "gpt-5", len(dumps(create)) // 4, 400, None)
    image = calc_price(
        GPUsage(output_tokens=372, output_image_tokens=372), "gpt-image-1", provider_id="openai"
    )
    assert meter.enforcer.budgets.reserved() == {DEV: text + image.total_price}


async def test_a_create_reserves_its_svg_authors_output(meter: Meter) -> None:
    """Before, the SVG author's tokens (billed on a row of their own) were in no reservation."""
    meter._apply(parse_policies("environments:\n  development:\n    budget: {usd: 10, period: day}\n"))
    flow = handshake()
    await open_session(meter, flow)
    tool = {"type": "image_generation", "model": "gpt-image-1", "quality": "low", "size": "1024x1024"}
    tool |= {"output_format": "svg", "svg": {"model": "o3-pro"}}
    create = create_event("gpt-5", "a", max_output_tokens=400, tools=[tool])
    await client_says(meter, flow, create)
    text = meter.pricer.estimate("openai", "gpt-5", len(dumps(create)) // 4, 400, None)
    image = calc_price(
        GPUsage(output_tokens=272, output_image_tokens=272), "gpt-image-1", provider_id="openai"
    )
    author = meter.pricer.estimate("openai", "o3-pro", 0, 1000, None)  # its p90 here: none yet, 1,000
    assert author > 0 and meter.enforcer.budgets.reserved() == {DEV: text + image.total_price + author}


async def test_rate_limits_count_each_create_not_the_handshake(
    meter: Meter, injected: list[dict[str, Any]]
) -> None:
    meter._apply(parse_policies("environments:\n  development:\n    rate_limit: {requests_per_minute: 2}\n"))
    flow = handshake()
    await open_session(meter, flow)
    assert flow.websocket is not None
    for lane in ("a", "b"):
        assert not (await client_says(meter, flow, create_event("gpt-5", lane))).dropped
    third = await client_says(meter, flow, create_event("gpt-5", "c"))
    assert third.dropped and (injected[-1]["status"], injected[-1]["error"]["code"]) == (
        429,
        "rate_limit_exceeded",
    )
    assert records(meter)[-1].action == "rate_limited"
    # A new socket now: refused at its handshake with the usual 429.
    again = handshake()
    await open_session(meter, again)
    assert again.response.status_code == 429 and again.websocket is None
    assert records(meter)[-1].status_code == 429


async def test_a_spent_budget_refuses_the_handshake(meter: Meter) -> None:
    meter._apply(parse_policies("environments:\n  development:\n    budget: {usd: 0.001, period: day}\n"))
    meter.enforcer.budgets.hold("earlier", [DEV], Decimal("0.002"))
    flow = handshake()
    await open_session(meter, flow)
    assert flow.response.status_code == 429 and flow.websocket is None
    assert json.loads(flow.response.content)["error"]["code"] == "budget_exceeded"
    [row] = records(meter)
    assert (row.action, row.status_code, row.api_flavor, row.cost_usd) == ("over_budget", 429, "responses", 0)


async def test_a_request_the_server_rejects_is_a_row_not_billed(meter: Meter) -> None:
    meter._apply(parse_policies("environments:\n  development:\n    budget: {usd: 5, period: day}\n"))
    flow = handshake()
    await open_session(meter, flow)
    await client_says(meter, flow, create_event("gpt-5", "a"))
    await client_says(meter, flow, create_event("gpt-5", "b"))
    assert len(meter.enforcer.budgets._reservations) == 2
    await server_says(meter, flow, request_error("previous response not found", "b", 400))
    [row] = records(meter)
    assert (row.status_code, row.cost_usd, row.price_status, row.model_sent) == (
        400,
        0,
        "not_billed",
        "gpt-5",
    )
    assert row.error == "model_not_found: previous response not found"
    # Lane a's create is still in flight, and bills as usual.
    await server_says(meter, flow, response_created("resp_a", "gpt-5", "a"))
    await server_says(meter, flow, response_terminal("resp_a", "gpt-5", RESPONSE_USAGE, "a"))
    assert records(meter)[-1].input_tokens == 1200


async def test_cut_by_the_close_an_aborted_row_estimated_from_its_create(meter: Meter) -> None:
    flow = handshake()
    await open_session(meter, flow)
    prompt = "Write a long essay about the history of the WebSocket protocol. " * 20
    await client_says(meter, flow, create_event("gpt-5", "a", input=prompt))
    await client_says(meter, flow, create_event("gpt-5", "b"))  # never started
    await server_says(meter, flow, response_created("resp_a", "gpt-5", "a"))
    await server_says(meter, flow, text_delta("resp_a", 0, "a"))
    flow.websocket.close_code = 1006  # type: ignore[union-attr]
    meter.websocket_end(flow)
    await asyncio.gather(*meter._estimates)
    by_lane = sorted(records(meter), key=lambda r: r.aborted, reverse=True)
    cut, unstarted = by_lane
    assert (cut.aborted, cut.usage_source, cut.model_sent) == (True, "estimated", "gpt-5")
    assert cut.input_tokens is not None and 200 < cut.input_tokens < 400  # ~20 x 13 tokens of prompt
    assert cut.error == "the WebSocket closed (1006) before the response ended: usage unknown"
    assert (unstarted.aborted, unstarted.cost_usd, unstarted.price_status, unstarted.usage_source) == (
        False,
        0,
        "not_billed",
        "none",
    )
    assert unstarted.error == "the WebSocket closed (1006) before the response started"
    meter.websocket_end(flow)
    assert len(records(meter)) == 2


async def test_an_automatic_successor_is_a_row_with_its_lanes_model(meter: Meter) -> None:
    """Steering may end a response and start a successor without a create: billed, so metered."""
    meter._apply(parse_policies(RESTRICTED))
    flow = handshake()
    await open_session(meter, flow)
    await client_says(meter, flow, create_event("gpt-5", "a"))
    await server_says(meter, flow, response_created("resp_1", "gpt-5-mini", "a"))
    await client_says(
        meter, flow, {"type": "response.steer", "previous_response_id": "resp_1", "input": "more"}
    )
    await server_says(
        meter, flow, response_terminal("resp_1", "gpt-5-mini", RESPONSE_USAGE, "a", status="incomplete")
    )
    await server_says(meter, flow, response_created("resp_2", "gpt-5-mini", "a"))
    await server_says(meter, flow, response_terminal("resp_2", "gpt-5-mini", RESPONSE_USAGE, "a"))
    first, successor = records(meter)
    assert first.error == "response incomplete: max_output_tokens" and first.input_tokens == 1200
    assert (successor.model_requested, successor.model_sent, successor.action) == (
        "gpt-5",
        "gpt-5-mini",
        "downgraded",
    )
    assert successor.id != first.id and successor.input_tokens == 1200


async def test_a_session_open_when_the_script_reloads_is_finished_by_the_new_addon(meter: Meter) -> None:
    flow = handshake()
    await open_session(meter, flow)
    await client_says(meter, flow, create_event("gpt-5", "a"))
    await server_says(meter, flow, response_created("resp_1", "gpt-5", "a"))
    meter.done()  # a script reload: mitmproxy is not shutting down
    new = Meter()
    new.store = CollectingStore()  # type: ignore[assignment]
    await server_says(new, flow, response_terminal("resp_1", "gpt-5", RESPONSE_USAGE, "a"))
    [row] = records(new)
    assert (row.model_sent, row.input_tokens, row.key_fingerprint) == ("gpt-5", 1200, key_fingerprint(KEY))


TOOL_POLICY = """\
environments:
  development:
    models:
      allow: [gpt-5, gpt-image-1-mini]
      on_disallowed: downgrade
      downgrade: {gpt-image-1: gpt-image-1-mini}
"""


def image_event(kind: str, lane: str | None, **fields: Any) -> dict[str, Any]:
    event = {"type": f"response.image_generation_call.{kind}", "item_id": "ig_1", "output_index": 0, **fields}
    return {**event, "stream_id": lane} if lane is not None else event


IMAGE_CALL = {
    "type": "image_generation_call",
    "id": "ig_1",
    "status": "completed",
    "quality": "low",
    "size": "1024x1024",
    "result": "iVBORw0KGgo" * 100,
}


async def test_a_tool_image_on_a_socket_is_a_row_of_its_own(meter: Meter) -> None:
    """Before, the response's row counted gpt-5's usage alone: the image its tool wrote (billed apart,
    at gpt-image-1's rate) was in no row. Its partial images are counted, never decoded."""
    flow = handshake()
    await open_session(meter, flow)
    tool = {"type": "image_generation", "model": "gpt-image-1", "quality": "low", "partial_images": 2}
    await client_says(meter, flow, create_event("gpt-5", "a", tools=[tool]))
    await server_says(meter, flow, response_created("resp_a", "gpt-5", "a"))
    for _ in range(2):
        partial = image_event("partial_image", "a", partial_image_b64="QUJD" * 50_000, quality="low")
        await server_says(meter, flow, partial)
    await server_says(meter, flow, image_event("completed", "a"))
    output = [IMAGE_CALL, *response_object("resp_a", "completed", "gpt-5", None)["output"]]
    await server_says(meter, flow, response_terminal("resp_a", "gpt-5", RESPONSE_USAGE, "a", output=output))
    images, text = records(meter)  # the images first, stored within the hook too
    for row in (images, text):
        meter._price(row)
    assert (text.api_flavor, text.model_sent, text.input_tokens, text.cost_usd) == (
        "responses",
        "gpt-5",
        1200,
        GPT5_COST,
    )
    assert (images.api_flavor, images.model_sent, images.status_code, images.team) == (
        "images",
        "gpt-image-1",
        101,
        "agents",
    )
    # low 1024x1024: 272 tokens, and 100 for each partial image, at gpt-image-1's $40/M
    assert (images.output_tokens, images.output_image_tokens, images.usage_source) == (472, 472, "estimated")
    assert (
        images.cost_usd
        == calc_price(
            GPUsage(output_tokens=472, output_image_tokens=472), "gpt-image-1", provider_id="openai"
        ).total_price
    )
    assert images.error is not None and images.error.startswith(
        f"the image_generation tool's images of call {text.id}: "
        "1 image(s), 2 partial image(s) (low 1024x1024)"
    )


async def test_a_tool_model_is_downgraded_in_the_create_only_its_value_changed(
    meter: Meter, injected: list[dict[str, Any]]
) -> None:
    meter._apply(parse_policies(TOOL_POLICY))
    flow = handshake()
    await open_session(meter, flow)
    sent = b'{"type":"response.create","model":"gpt-5",'
    sent += b'"tools":[{"type":"image_generation","model":"gpt-image-1"}]}'
    message = await client_says(meter, flow, sent)
    assert message.content == sent.replace(b'"gpt-image-1"', b'"gpt-image-1-mini"') and not message.dropped
    await server_says(meter, flow, response_created("resp_1", "gpt-5"))
    output = [IMAGE_CALL]
    await server_says(meter, flow, response_terminal("resp_1", "gpt-5", RESPONSE_USAGE, output=output))
    images, text = records(meter)
    assert (text.action, text.model_sent) == ("allowed", "gpt-5")
    assert (images.action, images.model_requested, images.model_sent) == (
        "downgraded",
        "gpt-image-1",
        "gpt-image-1-mini",
    )
    # a tool naming no model runs the server's default: checked as it, refused when not allowed
    unnamed = await client_says(meter, flow, create_event("gpt-5", "b", tools=[{"type": "image_generation"}]))
    assert unnamed.dropped
    [event] = injected
    assert "the tool names none, and gpt-image-2.6-sunburst is its default" in event["error"]["message"]


async def test_a_tool_naming_no_model_has_its_checked_default_written_in(
    meter: Meter, injected: list[dict[str, Any]]
) -> None:
    """Before, a tool naming no model was refused wherever models were restricted, even with every
    image model allowed; under tool_choice none (it cannot run) too."""
    meter._apply(parse_policies(TOOL_POLICY.replace("gpt-image-1-mini]", "'gpt-image-*']")))
    flow = handshake()
    await open_session(meter, flow)
    message = await client_says(meter, flow, create_event("gpt-5", "a", tools=[{"type": "image_generation"}]))
    assert not message.dropped and not injected
    assert json.loads(message.content)["tools"][0]["model"] == "gpt-image-2.6-sunburst"
    meter._apply(parse_policies(TOOL_POLICY))  # the default not allowed, but the tool cannot run
    sent = create_event("gpt-5", "b", tools=[{"type": "image_generation"}], tool_choice="none")
    message = await client_says(meter, flow, sent)
    assert not message.dropped and not injected
    assert "model" not in json.loads(message.content)["tools"][0]


async def test_a_refused_tool_model_drops_the_create(meter: Meter, injected: list[dict[str, Any]]) -> None:
    meter._apply(parse_policies(TOOL_POLICY.replace("on_disallowed: downgrade", "on_disallowed: block")))
    flow = handshake()
    await open_session(meter, flow)
    tool = {"type": "image_generation", "model": "gpt-image-1"}
    refused = await client_says(meter, flow, create_event("gpt-5", "a", tools=[tool]))
    assert refused.dropped
    [event] = injected
    assert (event["status"], event["stream_id"]) == (403, "a")
    assert "(the image_generation tool's model)" in event["error"]["message"]
    [row] = records(meter)
    assert (row.action, row.model_requested, row.model_sent, row.cost_usd) == (
        "blocked",
        "gpt-image-1",
        None,
        0,
    )


async def test_a_socket_closed_after_the_image_still_bills_it(meter: Meter) -> None:
    flow = handshake()
    await open_session(meter, flow)
    tool = {"type": "image_generation", "model": "gpt-image-1-mini", "size": "1536x1024", "quality": "high"}
    await client_says(meter, flow, create_event("gpt-5", tools=[tool]))
    await server_says(meter, flow, response_created("resp_1", "gpt-5"))
    await server_says(meter, flow, image_event("completed", None))
    flow.websocket.close_code = 1006  # type: ignore[union-attr]
    meter.websocket_end(flow)
    await asyncio.gather(*meter._estimates)
    images, cut = sorted(records(meter), key=lambda r: r.api_flavor)
    assert cut.aborted and cut.api_flavor == "responses"
    assert (images.aborted, images.model_sent, images.output_image_tokens) == (True, "gpt-image-1-mini", 6208)


async def test_an_svg_author_model_is_downgraded_in_the_create_only_its_value_changed(
    meter: Meter, injected: list[dict[str, Any]]
) -> None:
    """Before, tools[i].svg.model went upstream unchecked on a socket too."""
    meter._apply(parse_policies(TOOL_POLICY.replace("{gpt-image-1:", "{o3-pro: gpt-5, gpt-image-1:")))
    flow = handshake()
    await open_session(meter, flow)
    sent = b'{"type":"response.create","model":"gpt-5","tools":[{"type":"image_generation",'
    sent += b'"model":"gpt-image-1-mini","output_format":"svg","svg":{"model":"o3-pro"}}]}'
    message = await client_says(meter, flow, sent)
    assert message.content == sent.replace(b'"o3-pro"', b'"gpt-5"') and not message.dropped
    # its row says so (before: allowed, the model sent named as requested)
    await server_says(meter, flow, response_created("resp_1", "gpt-5"))
    author = {"model": "gpt-5", "input_tokens": 10, "output_tokens": 50}
    output = [IMAGE_CALL | {"svg_usage": author}]
    await server_says(meter, flow, response_terminal("resp_1", "gpt-5", RESPONSE_USAGE, output=output))
    [svg] = [row for row in records(meter) if row.api_flavor == "responses" and row.output_tokens == 50]
    assert (svg.action, svg.model_requested, svg.model_sent) == ("downgraded", "o3-pro", "gpt-5")
    blocked = TOOL_POLICY.replace("on_disallowed: downgrade", "on_disallowed: block")
    meter._apply(parse_policies(blocked))
    refused = await client_says(meter, flow, sent.replace(b'"gpt-5",', b'"gpt-5","x":1,', 1))
    assert refused.dropped
    [event] = injected
    assert "SVG author model" in event["error"]["message"]


async def test_an_svg_authors_tokens_on_a_socket_are_a_row_of_their_own(meter: Meter) -> None:
    flow = handshake()
    await open_session(meter, flow)
    tool = {
        "type": "image_generation",
        "model": "gpt-image-1",
        "output_format": "svg",
        "svg": {"model": "o3"},
    }
    await client_says(meter, flow, create_event("gpt-5", tools=[tool]))
    await server_says(meter, flow, response_created("resp_1", "gpt-5"))
    author = {
        "model": "o3",
        "input_tokens": 100,
        "output_tokens": 500,
        "reasoning_tokens": 300,
        "total_tokens": 600,
    }
    output = [IMAGE_CALL | {"svg_usage": author}]
    await server_says(meter, flow, response_terminal("resp_1", "gpt-5", RESPONSE_USAGE, output=output))
    rows = records(meter)
    [svg] = [row for row in rows if row.model_sent == "o3"]
    assert (svg.api_flavor, svg.input_tokens, svg.output_tokens, svg.usage_source) == (
        "responses",
        100,
        500,
        "reported",
    )
    assert sorted(row.model_sent for row in rows) == ["gpt-5", "gpt-image-1", "o3"]
