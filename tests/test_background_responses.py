"""OpenAI Responses in background mode: the POST answers "queued"; the usage comes with a later GET."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from mitmproxy import http
from mitmproxy.test import taddons

from addon.meter import Meter
from tests.test_meter import CollectingStore, make_flow, run_request, stream_response

RESPONSES_URL = "https://api.openai.com/v1/responses"
QUEUED = {
    "id": "resp_bg",
    "object": "response",
    "status": "queued",
    "background": True,
    "model": "o3-pro-2025-06-10",
    "output": [],
    "usage": None,
}
USAGE = {
    "input_tokens": 12,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 30_000,
    "output_tokens_details": {"reasoning_tokens": 25_000},
}
DONE = QUEUED | {"status": "completed", "usage": USAGE, "output": [{"type": "message", "content": []}]}


def meter_with_store(tmp_path: Path, tctx: taddons.context, addon: Meter) -> None:
    tctx.configure(addon, tokometer_db=str(tmp_path / "a.duckdb"))
    addon.store = CollectingStore()  # type: ignore[assignment]


async def answer(meter: Meter, flow: http.HTTPFlow, body: dict) -> None:
    flow.response = http.Response.make(200, json.dumps(body), {"content-type": "application/json"})
    meter.responseheaders(flow)
    await meter.response(flow)


async def start(meter: Meter) -> None:
    headers = {"x-metering-tags": '{"env": "staging", "team": "research"}'}
    body = {"model": "o3-pro", "input": "Write a long report.", "background": True}
    post = make_flow(RESPONSES_URL, body, headers=headers)
    await run_request(meter, post)
    await answer(meter, post, QUEUED)


async def poll(meter: Meter, body: dict, path: str = "/resp_bg") -> http.HTTPFlow:
    get = make_flow(RESPONSES_URL + path, b"", method="GET")
    await run_request(meter, get)
    await answer(meter, get, body)
    return get


async def test_the_usage_of_a_background_response_is_billed_once_when_retrieved(tmp_path: Path) -> None:
    addon = Meter()
    with taddons.context(addon) as tctx:
        meter_with_store(tmp_path, tctx, addon)
        await start(addon)
        await poll(addon, QUEUED | {"status": "in_progress"})  # still running: no row
        await poll(addon, DONE)
        await poll(addon, DONE)  # read again later: already billed
        await poll(addon, DONE, "/resp_other")  # not one this proxy saw start
        started, retrieved = addon.store.records  # type: ignore[union-attr]
        # the start: no estimate of a prompt-only cost, $0 here, billed on the retrieval's row
        assert (started.path, started.usage_source, started.cost_usd) == ("/v1/responses", "none", Decimal(0))
        assert (started.price_status, started.error) == ("background", None)
        assert (retrieved.path, retrieved.api_flavor, retrieved.usage_source) == (
            "/v1/responses/resp_bg",
            "responses",
            "reported",
        )
        assert (retrieved.input_tokens, retrieved.output_tokens, retrieved.reasoning_tokens) == (
            12,
            30_000,
            25_000,
        )
        # attributed as the call that started it
        assert (retrieved.environment, retrieved.team, retrieved.model_requested) == (
            "staging",
            "research",
            "o3-pro",
        )
        assert retrieved.key_fingerprint == started.key_fingerprint is not None
        addon._price(retrieved)
        assert retrieved.price_status == "priced" and retrieved.cost_usd is not None
        assert retrieved.cost_usd > Decimal("1")  # 30,000 o3-pro output tokens: $80 per 1M
        assert addon._background == {}


async def test_a_background_response_retrieved_as_a_stream_is_billed(tmp_path: Path) -> None:
    addon = Meter()
    with taddons.context(addon) as tctx:
        meter_with_store(tmp_path, tctx, addon)
        await start(addon)
        get = make_flow(RESPONSES_URL + "/resp_bg?stream=true&starting_after=3", b"", method="GET")
        await run_request(addon, get)
        stream_response(get, addon)
        event = {"type": "response.completed", "sequence_number": 9, "response": DONE}
        get.response.stream(f"event: response.completed\ndata: {json.dumps(event)}\n\n".encode())  # type: ignore[operator,union-attr]
        get.response.stream(b"")  # type: ignore[operator,union-attr]
        await addon.response(get)
        _, retrieved = addon.store.records  # type: ignore[union-attr]
        assert (retrieved.streamed, retrieved.output_tokens) == (True, 30_000)


async def test_a_background_response_that_failed_is_forgotten_without_a_row(tmp_path: Path) -> None:
    addon = Meter()
    with taddons.context(addon) as tctx:
        meter_with_store(tmp_path, tctx, addon)
        await start(addon)
        await poll(addon, QUEUED | {"status": "failed", "error": {"message": "boom"}})
        assert len(addon.store.records) == 1 and addon._background == {}  # type: ignore[union-attr]


async def test_a_plain_response_is_billed_as_it_comes(tmp_path: Path) -> None:
    """Not background: its usage is in the POST's answer, and a later GET of it is not billed."""
    addon = Meter()
    with taddons.context(addon) as tctx:
        meter_with_store(tmp_path, tctx, addon)
        post = make_flow(RESPONSES_URL, {"model": "o3-pro", "input": "hi"})
        await run_request(addon, post)
        await answer(addon, post, DONE | {"background": False})
        await poll(addon, DONE | {"background": False})
        [record] = addon.store.records  # type: ignore[union-attr]
        assert (record.path, record.output_tokens) == ("/v1/responses", 30_000)
