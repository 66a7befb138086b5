"""Review 22: state that leaks or is lost as a call ends some other way than with its response.

Each test fails on the code reviewed (1444f6e) for the defect its docstring names, with its figures.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from meter_helpers import make_flow, on_kept_alive_connection, run_request
from mitmproxy import http
from mitmproxy.test import tflow

import addon.meter
from addon.budgets import Scope
from addon.meter import Meter
from addon.policies import parse_policies

CHAT_URL = "https://api.openai.com/v1/chat/completions"
QA = Scope("environment", "qa")
QA_TAGS = {"x-metering-tags": '{"env":"qa"}'}
QA_BUDGET = "environments:\n  qa:\n    budget: {usd: 1, period: day}\n"
QA_ONE_PER_MINUTE = "environments:\n  qa:\n    rate_limit: {requests_per_minute: 1}\n"
# 200 x "Count the stars tonight. ": 1,008 input tokens of gpt-4o estimated = $0.00252
LONG_BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Count the stars tonight. " * 200}]}
MINI_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
MINI_ANSWER = {
    "id": "chatcmpl-1",
    "model": "gpt-4o-mini",
    "choices": [],
    "usage": {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30},
}


def qa_flow(body: dict) -> http.HTTPFlow:
    """A call tagged for environment qa, on a client connection whose server connection is up
    (a keep-alive connection's second request; the proxy connects lazily for the first)."""
    flow = make_flow(CHAT_URL, body, headers=QA_TAGS)
    flow.request.timestamp_start = datetime.now(UTC).timestamp()
    return on_kept_alive_connection(flow)


async def rows_settled(meter: Meter) -> list:
    """The rows submitted, once an offline estimate (in a thread) has run."""
    for _ in range(200):
        await asyncio.gather(*meter._estimates)
        if meter.store.records:  # type: ignore[union-attr]
            break
        await asyncio.sleep(0.01)
    return meter.store.records  # type: ignore[union-attr]


async def test_a_call_killed_before_it_was_sent_is_not_billed_against_its_budget(meter: Meter) -> None:
    """mitmproxy's own blocklist (``--set block_list=':~d api.openai.com:444'``) kills a flow in its
    ``request`` hook, which runs before the script's: the request never leaves the proxy. The meter
    still reserves it, and at the ``error`` hook takes the keep-alive connection's earlier TCP setup
    for "reached upstream": it estimates the call's input (1,008 tokens of gpt-4o) and bills
    $0.00252 against the qa budget (held, then recorded as spent), where it should count $0 (a row
    not billed, or none)."""
    meter._apply(parse_policies(QA_BUDGET))
    flow = qa_flow(LONG_BODY)
    flow.kill()  # the blocklist's 444: before the script's request hook
    await run_request(meter, flow)
    meter.error(flow)  # mitmproxy's check_killed emits the error hook
    rows = await rows_settled(meter)  # a row not billed, or none at all
    assert meter.enforcer.budgets.reserved() == {}  # control: passes now
    assert [(r.cost_usd, r.usage_source) for r in rows if r.cost_usd] == []  # [($0.00252, estimated)]
    assert meter.enforcer.budgets._held.get(QA, Decimal(0)) == 0  # held now: $0.00252


async def test_a_call_killed_before_it_was_sent_takes_no_rate_limit_hit(meter: Meter) -> None:
    """The same killed call (blocklist 444) is counted as one of qa's requests per minute: with a
    limit of 1, the next call (a real one) is refused 429 rate_limited for up to 60 s, though no
    request reached the provider ("Refused requests do not count", README)."""
    meter._apply(parse_policies(QA_ONE_PER_MINUTE))
    killed = qa_flow(MINI_BODY)
    killed.kill()
    await run_request(meter, killed)
    meter.error(killed)
    following = qa_flow(MINI_BODY)
    await run_request(meter, following)
    assert following.response is None  # refused now: 429
    assert meter.call_state(following).record.action == "allowed"  # type: ignore[union-attr]  # rate_limited


async def test_a_call_that_never_connected_upstream_takes_no_rate_limit_hit(meter: Meter) -> None:
    """A call whose upstream connection failed (refused, DNS, TLS) is stored not_billed: the
    provider never saw it. Its rate-limit hit stays counted, so with 1 request per minute the
    client's retry (the SDKs retry a connection error at once, 0.5-8 s) is refused 429 by the proxy
    for the rest of the minute."""
    meter._apply(parse_policies(QA_ONE_PER_MINUTE))
    failed = qa_flow(MINI_BODY)
    await run_request(meter, failed)
    failed.server_conn.timestamp_tcp_setup = None  # never connected
    failed.error = tflow.terr("Connection refused")
    meter.error(failed)
    [row] = meter.store.records  # type: ignore[union-attr]
    assert row.price_status == "not_billed"  # control: passes now
    retry = qa_flow(MINI_BODY)
    await run_request(meter, retry)
    assert retry.response is None  # refused now: 429
    assert meter.call_state(retry).record.action == "allowed"  # type: ignore[union-attr]  # rate_limited


def _answer(flow: http.HTTPFlow) -> None:
    flow.response = http.Response.make(
        200, json.dumps(MINI_ANSWER).encode(), {"content-type": "application/json"}
    )


async def test_a_parser_failure_in_the_response_hook_leaves_no_reservation_behind(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``response`` hook raising before ``_finish`` (here its body parser; _never_raises logs
    it and the client gets its answer): no row, and no ``error`` hook follows a response, so the
    call's reservation ($0.0006027 in qa) stays reserved for the proxy's life, refusing later calls
    with money left. Expected: the reservation released (its row stored, or at least settled)."""
    meter._apply(parse_policies(QA_BUDGET))
    flow = qa_flow(MINI_BODY)
    await run_request(meter, flow)
    assert meter.enforcer.budgets.reserved() == {QA: Decimal("0.0006027")}  # control

    def parser_fails(*args: object) -> None:
        raise RuntimeError("a parser bug")

    monkeypatch.setattr(addon.meter, "_parse_body", parser_fails)
    _answer(flow)
    meter.responseheaders(flow)
    await meter.response(flow)
    assert meter.enforcer.budgets.reserved() == {}  # {qa: 0.0006027} for ever


async def test_a_failure_inside_finish_keeps_the_row_and_leaves_no_reservation_behind(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``_finish`` sets ``state.finished`` first, then fills, prices and submits the row. Anything
    raising in between (here remembering the answer's context for later estimates) loses the row
    (0 stored, 0 journaled, though the call had usage: 20 + 10 tokens) and keeps the reservation
    ($0.0006027) for ever: the ``error`` hook that might follow sees the call finished."""
    meter._apply(parse_policies(QA_BUDGET))
    flow = qa_flow(MINI_BODY)
    await run_request(meter, flow)

    def remember_fails(*args: object) -> None:
        raise RuntimeError("a bug in a helper")

    monkeypatch.setattr(meter.contexts, "remember", remember_fails)
    _answer(flow)
    meter.responseheaders(flow)
    await meter.response(flow)
    assert meter.enforcer.budgets.reserved() == {}  # {qa: 0.0006027} for ever
    rows = meter.store.records  # type: ignore[union-attr]
    assert [(r.input_tokens, r.output_tokens) for r in rows] == [(20, 10)]  # []: the call is lost


async def test_a_response_replayed_by_mitmproxy_server_playback_is_not_billed(meter: Meter) -> None:
    """``--server-replay FILE`` answers a call from a recording in its ``request`` hook (ServerPlayback
    runs after the script and marks the flow ``is_replay == "response"``): the provider never sees
    it. The meter reserves it, then bills the recorded usage (20 + 10 tokens of gpt-4o-mini,
    $0.000009) as spend against the qa budget, held now and recorded by the writer. Expected: $0,
    nothing held (a row not billed, or none)."""
    meter._apply(parse_policies(QA_BUDGET))
    flow = qa_flow(MINI_BODY)
    await run_request(meter, flow)
    _answer(flow)  # what ServerPlayback.request does with a recorded flow
    flow.is_replay = "response"
    meter.responseheaders(flow)
    await meter.response(flow)
    rows = meter.store.records  # type: ignore[union-attr]
    assert meter.enforcer.budgets.reserved() == {}  # control: passes now
    assert [(r.cost_usd, r.price_status) for r in rows if r.cost_usd] == []  # [($0.000009, priced)]
    assert meter.enforcer.budgets._held.get(QA, Decimal(0)) == 0  # held now: $0.000009
