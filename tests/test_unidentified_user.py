"""A user budget or rate limit holds when the calling process's user cannot be identified.

The user of a call is the OS user of the process at the other end of the connection. A client in a
container or on another host, or a proxy that cannot read /proc, leaves it unknown; such a call
had no user and passed every user's budget and rate limit. Now it counts as policies.yaml's
``attribution.unidentified_user`` when that is set, and is refused (403) where users are limited
when it is not. Without user limits nothing changes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from mitmproxy import http

from addon.budgets import Scope
from addon.client_process import ClientProcess
from addon.meter import Meter
from addon.policies import PolicyError, parse_policies
from tests.test_meter import (
    CHAT_URL,
    MINI_COST,
    MINI_USAGE,
    make_flow,
    run_request,
    writer_round,
)

# What lookup_client_process answers for a client it cannot find (a container, another host).
NOT_FOUND = ClientProcess(problem="connection not found in /proc/net (not a local client?)")
ALICE = ClientProcess(pid=4242, name="python", user="alice")

BOT_BUDGET = "users:\n  build-bot: {budget: {usd: 0.000015, period: day}}\n"


def client_is(monkeypatch: pytest.MonkeyPatch, process: ClientProcess) -> None:
    monkeypatch.setattr("addon.meter.lookup_client_process", lambda *args, **kwargs: process)


async def call(meter: Meter) -> http.HTTPFlow:
    """One gpt-4o-mini call (20 in, 10 out: $0.000009): refused, or answered and counted."""
    body = {"model": "gpt-4o-mini", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    flow = make_flow(CHAT_URL, body)
    flow.request.timestamp_start = datetime.now(UTC).timestamp()  # today's budget
    await run_request(meter, flow)
    if flow.response is not None:  # refused: its row is made as the answer goes back
        await meter.response(flow)
        return flow
    answer = {"id": "c", "model": "gpt-4o-mini", "choices": [], "usage": MINI_USAGE}
    flow.response = http.Response.make(200, json.dumps(answer), {"content-type": "application/json"})
    meter.responseheaders(flow)
    await meter.response(flow)
    records = meter.store.records  # type: ignore[union-attr]
    writer_round(meter, [records[-1]])
    return flow


def spent(meter: Meter, user: str) -> Decimal:
    budgets = meter.enforcer.budgets.status(datetime.now(UTC))
    [budget] = [b for b in budgets if b["scope"] == Scope("user", user)]
    return budget["spent"]


def status(flow: http.HTTPFlow) -> int:
    assert flow.response is not None
    return flow.response.status_code


async def test_a_call_whose_user_cannot_be_identified_is_refused_where_users_have_budgets(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, it passed (200) with no user, build-bot's cap not applied; now 403, saying what to set."""
    meter._apply(parse_policies(BOT_BUDGET))
    client_is(monkeypatch, NOT_FOUND)
    flow = await call(meter)
    assert status(flow) == 403
    message = json.loads(flow.response.content)["error"]["message"]  # type: ignore[union-attr]
    assert "user could not be identified" in message and "attribution.unidentified_user" in message
    [row] = meter.store.records  # type: ignore[union-attr]
    assert (row.action, row.user_name, row.input_tokens) == ("blocked", None, None)
    assert spent(meter, "build-bot") == 0


async def test_a_user_rate_limit_alone_refuses_it_too(meter: Meter, monkeypatch: pytest.MonkeyPatch) -> None:
    meter._apply(parse_policies("users:\n  build-bot: {rate_limit: {requests_per_minute: 1}}\n"))
    client_is(monkeypatch, NOT_FOUND)
    assert status(await call(meter)) == 403


async def test_it_counts_as_the_unidentified_user_when_policies_name_one(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """attribution.unidentified_user: build-bot: booked to build-bot, held to its cap ($0.000015:
    calls of $0.000009 pass with $0 and $0.000009 spent, the third is refused 429 with $0.000018
    spent), each row says build-bot."""
    meter._apply(parse_policies(BOT_BUDGET + "attribution:\n  unidentified_user: build-bot\n"))
    client_is(monkeypatch, NOT_FOUND)
    first, second = await call(meter), await call(meter)
    assert (status(first), status(second)) == (200, 200)
    assert spent(meter, "build-bot") == 2 * MINI_COST == Decimal("0.000018")
    third = await call(meter)
    assert status(third) == 429
    assert [r.user_name for r in meter.store.records] == ["build-bot"] * 3  # type: ignore[union-attr]
    assert [r.action for r in meter.store.records] == ["allowed", "allowed", "over_budget"]  # type: ignore[union-attr]


async def test_an_identified_user_is_its_own_and_not_the_unidentified_one(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    meter._apply(
        parse_policies(
            "users:\n  guests: {budget: {usd: 0.00001, period: day}}\n"
            "attribution:\n  unidentified_user: guests\n"
        )
    )
    client_is(monkeypatch, ALICE)
    assert status(await call(meter)) == 200
    assert spent(meter, "guests") == 0
    client_is(monkeypatch, NOT_FOUND)
    meter._processes.clear()  # a new connection: looked up again
    assert status(await call(meter)) == 200
    assert spent(meter, "guests") == MINI_COST
    assert [r.user_name for r in meter.store.records] == ["alice", "guests"]  # type: ignore[union-attr]


async def test_without_user_limits_an_unidentified_call_passes_as_before(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    meter._apply(parse_policies("environments:\n  development:\n    budget: {usd: 1, period: day}\n"))
    client_is(monkeypatch, NOT_FOUND)
    assert status(await call(meter)) == 200
    [row] = meter.store.records  # type: ignore[union-attr]
    assert (row.action, row.user_name) == ("allowed", None)


def test_unidentified_user_must_be_a_name() -> None:
    assert parse_policies("attribution:\n  unidentified_user: ' ci '\n").attribution.unidentified_user == "ci"
    assert parse_policies("").attribution.unidentified_user is None
    with pytest.raises(PolicyError, match=r"attribution\.unidentified_user"):
        parse_policies("attribution:\n  unidentified_user: 3\n")
