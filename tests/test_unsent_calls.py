"""Calls that end without reaching the provider, and calls whose metering fails as they end.

Beside tests/test_review22_loss.py: what the rows say, and the cases next to those it covers
(a kill after the meter's hook, a client replay, a call sent and then cut, a failing stream read).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from meter_helpers import CollectingStore, make_flow, on_kept_alive_connection, run_request
from mitmproxy import http
from mitmproxy.addons.maplocal import MapLocal
from mitmproxy.test import taddons, tflow

import addon.meter
from addon.budgets import Scope
from addon.meter import METERING_FAILED_NOTE, SERVER_REPLAY_NOTE, Meter
from addon.policies import parse_policies
from tests.test_background_responses import (
    DAY_CAP,
    DONE,
    RESPONSES_URL,
    held,
    now_flow,
    retrieve,
    start_budgeted,
)

CHAT_URL = "https://api.openai.com/v1/chat/completions"
QA = Scope("environment", "qa")
QA_TAGS = {"x-metering-tags": '{"env":"qa"}'}
QA_LIMITS = (
    "environments:\n  qa:\n    budget: {usd: 1, period: day}\n    rate_limit: {requests_per_minute: 1}\n"
)
MINI_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
MINI_ANSWER = {
    "id": "chatcmpl-1",
    "model": "gpt-4o-mini",
    "choices": [],
    "usage": {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30},
}
MINI_RESERVED = Decimal("0.0006027")  # what a MINI_BODY call reserves in qa


def qa_flow() -> http.HTTPFlow:
    """A gpt-4o-mini call tagged for qa, on a kept-alive connection whose server side is up."""
    flow = make_flow(CHAT_URL, MINI_BODY, headers=QA_TAGS)
    flow.request.timestamp_start = datetime.now(UTC).timestamp()
    return on_kept_alive_connection(flow)


def answer(flow: http.HTTPFlow) -> None:
    flow.response = http.Response.make(
        200, json.dumps(MINI_ANSWER).encode(), {"content-type": "application/json"}
    )


async def next_call_action(meter: Meter) -> str:
    """The action on a following qa call (rate_limited while the limit of 1 is taken)."""
    following = qa_flow()
    await run_request(meter, following)
    return meter.call_state(following).record.action  # type: ignore[union-attr]


async def settled(meter: Meter) -> list:
    for _ in range(200):
        await asyncio.gather(*meter._estimates)
        if meter.store.records:  # type: ignore[union-attr]
            break
        await asyncio.sleep(0.01)
    return meter.store.records  # type: ignore[union-attr]


async def test_a_call_killed_before_the_meters_hook_is_a_row_not_billed_that_took_nothing(
    meter: Meter,
) -> None:
    """mitmproxy's block_list kills before the script: decided, then at once taken back (nothing
    reserved nor counted even before the error hook); its row says so, with its model."""
    meter._apply(parse_policies(QA_LIMITS))
    flow = qa_flow()
    flow.kill()
    await run_request(meter, flow)
    assert meter.enforcer.budgets.reserved() == {}  # before the error hook already
    meter.error(flow)
    [row] = meter.store.records  # type: ignore[union-attr]
    assert (row.price_status, row.cost_usd, row.input_tokens) == ("not_billed", Decimal(0), None)
    assert (row.model_requested, row.error) == ("gpt-4o-mini", "Connection killed.")
    assert await next_call_action(meter) == "allowed"


async def test_a_call_killed_after_the_meters_hook_takes_back_its_reservation_and_slot(meter: Meter) -> None:
    """Server playback kills an unmatched request (server_replay_extra=kill) after the script's
    request hook: never sent, so not billed, its reservation and rate-limit slot taken back."""
    meter._apply(parse_policies(QA_LIMITS))
    flow = qa_flow()
    await run_request(meter, flow)
    assert meter.enforcer.budgets.reserved() == {QA: MINI_RESERVED}
    flow.kill()
    meter.error(flow)
    rows = await settled(meter)
    assert [(r.price_status, r.cost_usd) for r in rows] == [("not_billed", Decimal(0))]
    assert meter.enforcer.budgets.reserved() == {}
    assert await next_call_action(meter) == "allowed"


async def test_a_call_sent_on_a_kept_alive_connection_then_cut_is_still_billed_and_counted(
    meter: Meter,
) -> None:
    """Control: upstream hung up after the request went out (the connection set up, not killed):
    the provider may have billed it, so its input is counted offline and its slot stays taken."""
    meter._apply(parse_policies(QA_LIMITS))
    flow = qa_flow()
    await run_request(meter, flow)
    flow.server_conn.timestamp_end = flow.request.timestamp_end + 0.5  # the cut, after the request
    flow.error = tflow.terr("Server disconnected.")
    meter.error(flow)
    [row] = await settled(meter)
    assert (row.usage_source, row.price_status) == ("estimated", "priced")
    assert row.cost_usd is not None and row.cost_usd > 0
    assert await next_call_action(meter) == "rate_limited"


async def test_a_reconnect_that_fails_after_a_slow_upload_is_not_billed_nor_counted(meter: Meter) -> None:
    """The kept-alive connection closed while the request was still being read (a slow upload of
    a long prompt: it started before the close), then the reconnect failed: the connection left on
    the flow closed before the request was whole, so it never carried it (mitmproxy writes an
    unstreamed request after its ``request`` hook). Not billed, its slot taken back."""
    meter._apply(parse_policies(QA_LIMITS))
    flow = qa_flow()
    start = flow.request.timestamp_start
    flow.request.timestamp_end = start + 30.0
    flow.server_conn.timestamp_end = start + 10.0  # after the request started, before it was read
    await run_request(meter, flow)
    flow.error = tflow.terr("[Errno 111] Connect call failed ('162.159.140.245', 443)")
    meter.error(flow)
    [row] = await settled(meter)
    assert (row.price_status, row.cost_usd, row.input_tokens) == ("not_billed", Decimal(0), None)
    assert meter.enforcer.budgets.reserved() == {}
    assert await next_call_action(meter) == "allowed"


async def test_a_call_on_a_connection_made_for_it_then_cut_is_still_billed(meter: Meter) -> None:
    """Control: a connection set up after the request started (made for it) and cut after the
    request was read carried it: its input counted offline ($0.0000012), its slot kept."""
    meter._apply(parse_policies(QA_LIMITS))
    flow = qa_flow()
    start = flow.request.timestamp_start
    flow.request.timestamp_end = start + 0.001
    server = flow.server_conn
    server.timestamp_start, server.timestamp_tcp_setup = start + 0.002, start + 0.01
    server.timestamp_tls_setup, server.timestamp_end = start + 0.03, start + 5.0
    await run_request(meter, flow)
    flow.error = tflow.terr("Server disconnected.")
    meter.error(flow)
    [row] = await settled(meter)
    assert (row.usage_source, row.price_status, row.cost_usd) == ("estimated", "priced", Decimal("0.0000012"))
    assert await next_call_action(meter) == "rate_limited"


async def test_a_server_playback_answer_is_a_row_not_billed_without_usage(meter: Meter) -> None:
    """--server-replay answered from a recording: a row not billed, no usage (the recording's is
    not this call's), its error saying why; no stream tap; reservation and slot taken back."""
    meter._apply(parse_policies(QA_LIMITS))
    flow = qa_flow()
    await run_request(meter, flow)
    answer(flow)
    flow.is_replay = "response"
    meter.responseheaders(flow)
    assert not flow.response.stream  # type: ignore[union-attr]
    await meter.response(flow)
    [row] = meter.store.records  # type: ignore[union-attr]
    assert (row.price_status, row.cost_usd, row.input_tokens, row.output_tokens) == (
        "not_billed",
        Decimal(0),
        None,
        None,
    )
    assert (row.status_code, row.error) == (200, SERVER_REPLAY_NOTE)
    assert meter.enforcer.budgets.reserved() == {}
    assert await next_call_action(meter) == "allowed"


async def test_a_client_replay_reaches_the_provider_and_is_metered_as_a_call(meter: Meter) -> None:
    """--client-replay sends the recorded request again (is_replay == "request"): billed, counted."""
    meter._apply(parse_policies(QA_LIMITS))
    flow = qa_flow()
    flow.is_replay = "request"
    await run_request(meter, flow)
    answer(flow)
    meter.responseheaders(flow)
    await meter.response(flow)
    [row] = meter.store.records  # type: ignore[union-attr]
    # 20 x $0.15/M + 10 x $0.60/M
    assert (row.input_tokens, row.output_tokens, row.cost_usd) == (20, 10, Decimal("0.000009"))
    assert meter.enforcer.budgets._held.get(QA) == Decimal("0.000009")
    assert await next_call_action(meter) == "rate_limited"


async def test_a_parser_failure_stores_the_row_estimated_and_says_so(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer's parser raises: the row is still stored at once, its input counted offline
    (as for an answer without usage), its error saying metering failed; the reservation gave way."""
    meter._apply(parse_policies(QA_LIMITS))
    flow = qa_flow()
    await run_request(meter, flow)

    def parser_fails(*args: object) -> None:
        raise RuntimeError("a parser bug")

    monkeypatch.setattr(addon.meter, "_parse_body", parser_fails)
    answer(flow)
    meter.responseheaders(flow)
    await meter.response(flow)
    [row] = meter.store.records  # type: ignore[union-attr]
    assert (row.usage_source, row.status_code, row.error) == ("estimated", 200, METERING_FAILED_NOTE)
    assert row.input_tokens is not None and row.input_tokens > 0
    assert meter.enforcer.budgets.reserved() == {}
    assert meter.enforcer.budgets._held.get(QA) == row.cost_usd


async def test_a_failure_inside_finish_stores_the_row_once_priced_with_its_usage(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever raises in the finishing after the row is filled: the row is stored once, with
    its usage and priced ($0.000009 held in place of the reservation), its error saying so."""
    meter._apply(parse_policies(QA_LIMITS))
    flow = qa_flow()
    await run_request(meter, flow)

    def remember_fails(*args: object) -> None:
        raise RuntimeError("a bug in a helper")

    monkeypatch.setattr(meter.contexts, "remember", remember_fails)
    answer(flow)
    meter.responseheaders(flow)
    await meter.response(flow)
    meter.error(flow)  # an error hook after it changes nothing: the call is finished
    [row] = meter.store.records  # type: ignore[union-attr]
    assert (row.input_tokens, row.output_tokens, row.cost_usd) == (20, 10, Decimal("0.000009"))
    assert row.error == METERING_FAILED_NOTE
    assert meter.enforcer.budgets.reserved() == {}
    assert meter.enforcer.budgets._held.get(QA) == Decimal("0.000009")


async def test_a_failing_stream_read_at_the_error_hook_still_finishes_the_call(meter: Meter) -> None:
    """The stream tap raising as an aborted call is finished (then again as its row is filled):
    its row is stored all the same, with the call's error and the note."""
    meter._apply(parse_policies(QA_LIMITS))
    flow = qa_flow()
    await run_request(meter, flow)

    class BrokenTap:
        on_final_event = None

        def result(self) -> None:
            raise RuntimeError("a tap bug")

    meter.call_state(flow).tap = BrokenTap()  # type: ignore[union-attr,assignment]
    flow.error = tflow.terr("Client disconnected.")
    meter.error(flow)
    [row] = await settled(meter)
    assert row.error == f"Client disconnected.; {METERING_FAILED_NOTE}"
    assert meter.enforcer.budgets.reserved() == {}


@pytest.mark.parametrize(
    ("path", "method", "body"),
    [
        ("/resp_bg", "GET", DONE),
        ("/resp_bg", "DELETE", {"id": "resp_bg", "object": "response.deleted", "deleted": True}),
    ],
)
async def test_a_replayed_retrieval_or_deletion_claims_nothing_pending(
    meter: Meter, path: str, method: str, body: dict
) -> None:
    """Server playback answering a GET (completed, with usage) or a DELETE of a background response
    this proxy holds: the provider saw neither, so no row, the response stays pending, its hold
    held, and a real retrieval then bills it."""
    meter._apply(parse_policies(DAY_CAP % "100"))
    await start_budgeted(meter)
    estimate = held(meter)
    rows = len(meter.store.records)  # type: ignore[union-attr]
    flow = now_flow(RESPONSES_URL + path, b"", method=method)
    await run_request(meter, flow)
    flow.response = http.Response.make(200, json.dumps(body), {"content-type": "application/json"})
    flow.is_replay = "response"
    meter.responseheaders(flow)
    await meter.response(flow)
    assert meter.store.records[rows:] == []  # type: ignore[union-attr]
    assert held(meter) == estimate > 0 and meter._background.get("resp_bg") is not None
    [billed] = await retrieve(meter, DONE)
    assert billed.output_tokens == 30_000 and held(meter) == 0


async def test_an_answer_another_addon_makes_is_metered_as_the_providers(tmp_path: Path) -> None:
    """README: what is detected as never sent is named (server playback, a kill, no connection);
    an answer another addon sets after the meter's ``request`` hook is not told from the
    provider's. mitmproxy's ``--map-local`` (MapLocal.request: ``Response.make``, no replay flag)
    answering a qa call with a file holding MINI_ANSWER: billed its usage, 20 + 10 tokens of
    gpt-4o-mini ($0.000009), held against qa, the rate-limit slot kept."""
    answer_file = tmp_path / "answer.json"
    answer_file.write_text(json.dumps(MINI_ANSWER))
    meter, map_local = Meter(), MapLocal()
    with taddons.context(meter, map_local) as tctx:
        tctx.configure(meter, tokometer_db=str(tmp_path / "spend.duckdb"))
        tctx.configure(map_local, map_local=[f"|api.openai.com/v1/chat/completions|{answer_file}"])
        meter.store = CollectingStore()  # type: ignore[assignment]
        meter._apply(parse_policies(QA_LIMITS))
        flow = qa_flow()
        await run_request(meter, flow)
        map_local.request(flow)  # after the script's hook
        assert flow.response is not None and flow.is_replay is None  # control: nothing marks it
        meter.responseheaders(flow)
        await meter.response(flow)
        [row] = meter.store.records  # type: ignore[union-attr]
        assert (row.input_tokens, row.output_tokens, row.cost_usd) == (20, 10, Decimal("0.000009"))
        assert meter.enforcer.budgets._held.get(QA) == Decimal("0.000009")
        assert await next_call_action(meter) == "rate_limited"


async def test_a_connection_that_closed_while_the_meter_held_the_request_did_not_carry_it(
    meter: Meter,
) -> None:
    """The kept-alive connection closed after the request was read but while the meter's own
    ``request`` hook still held it (a slow process lookup waits up to 12 s), then the reconnect
    failed: mitmproxy writes the request only after the hook, so the closed connection never
    carried it. Not billed, its slot taken back (it was billed an estimate, the retry refused)."""
    meter._apply(parse_policies(QA_LIMITS))
    flow = qa_flow()
    now = flow.request.timestamp_start
    flow.request.timestamp_start, flow.request.timestamp_end = now - 20.1, now - 20.0
    on_kept_alive_connection(flow)
    flow.server_conn.timestamp_end = now - 5.0  # while the hook ran, before it let the request go
    await run_request(meter, flow)
    flow.error = tflow.terr("[Errno 111] Connect call failed ('162.159.140.245', 443)")
    meter.error(flow)
    [row] = await settled(meter)
    assert (row.price_status, row.cost_usd, row.input_tokens) == ("not_billed", Decimal(0), None)
    assert meter.enforcer.budgets.reserved() == {}
    assert await next_call_action(meter) == "allowed"


@pytest.mark.parametrize("status", [403, 200])
async def test_a_call_an_earlier_addon_answered_is_attributed_and_not_billed(
    meter: Meter, status: int
) -> None:
    """mitmproxy's block_list with a status answers in its own ``request`` hook, before the
    script's: the request never goes out. Its row names the call as any row does (model, tags,
    environment), is not billed (even a 200 with no usage: no offline estimate) and says mitmproxy
    answered it, not "upstream answered 403"; nothing is reserved or counted (the next call passes)."""
    meter._apply(parse_policies(QA_LIMITS))
    flow = qa_flow()
    meter.requestheaders(flow)
    flow.response = http.Response.make(status, b"", {})  # what block_list sets
    await meter.request(flow)
    meter.responseheaders(flow)
    await meter.response(flow)
    [row] = await settled(meter)
    assert (row.model_requested, row.environment, row.environment_source) == ("gpt-4o-mini", "qa", "header")
    assert (row.price_status, row.cost_usd, row.input_tokens, row.status_code) == (
        "not_billed",
        Decimal(0),
        None,
        status,
    )
    assert "upstream answered" not in (row.error or "")
    assert "answered by mitmproxy before it was sent" in (row.error or "")
    assert meter.enforcer.budgets.reserved() == {}
    assert await next_call_action(meter) == "allowed"
