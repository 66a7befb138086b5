"""Review of "a finished call's reservation gives way to its cost at once, on the event loop"."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from mitmproxy.test import taddons

from addon.budgets import Scope
from addon.enforcement import Enforcer
from addon.meter import Meter
from addon.policies import parse_policies
from tests.test_meter import CHAT_URL, make_flow, run_request, stream_response

QA_BUDGET = "environments:\n  qa:\n    budget: {usd: 0.001, period: day}\n"
QA = Scope("environment", "qa")
MINI_USAGE = {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}
MINI_COST = Decimal("0.000009")


def _qa_decide(enforcer: Enforcer, call_id: str, now: float, estimate: Decimal):
    return enforcer.decide(
        provider="openai",
        environment="qa",
        key_name=None,
        user_name=None,
        model="gpt-4o-mini",
        now=now,
        call_id=call_id,
        estimate=lambda _model: estimate,
    )


def test_a_no_room_left_refusal_does_not_tell_the_client_to_wait_until_the_period_ends() -> None:
    """Reservations of calls in flight fill the cap, the spend is far from it: the message now says
    "has no room left ... (given back as they finish)", room comes back as soon as the call in
    flight finishes (give_way, microseconds later) -- yet the refusal still carries the period's
    Retry-After (12 h here) and x-should-retry: false, so an SDK never retries and a client
    honouring Retry-After waits until tomorrow for a budget that is 99% unused."""
    enforcer = Enforcer(parse_policies(QA_BUDGET))
    noon = datetime(2026, 11, 28, 12, tzinfo=UTC).timestamp()
    assert _qa_decide(enforcer, "big", noon, Decimal("0.001")).refusal is None  # fills the cap
    refused = _qa_decide(enforcer, "next", noon, Decimal("0.0006"))
    assert refused.action == "over_budget" and refused.refusal is not None
    assert "has no room left" in (refused.message or "")
    # room comes back the moment "big" finishes:
    enforcer.budgets.give_way("big", (QA,), MINI_COST)
    assert _qa_decide(enforcer, "retry", noon + 1, Decimal("0.0006")).refusal is None
    headers = refused.refusal.headers
    assert int(headers["retry-after"]) <= 60, headers["retry-after"]  # 43200 (period end)
    assert headers.get("x-should-retry") != "false"  # "false": the SDK gives up at once


async def test_a_call_journaled_in_a_store_switched_away_holds_nothing_for_ever(tmp_path: Path) -> None:
    """A stream whose final event was journaled in database A (state.journaled_in) finishes after
    tokometer_db was switched to B: its row goes to A's journal (Store._late_submit), whose writer
    is gone, so no record_spend ever runs for it. _submit still gives way on the loop: the
    call's cost is held in the tracker, counted as *used* against B's budgets, for the proxy's
    life (before the commit the same call's reservation leaked the same way)."""
    addon = Meter()
    with taddons.context(addon) as tctx:
        policies = tmp_path / "policies.yaml"
        policies.write_text(QA_BUDGET)
        tctx.configure(addon, tokometer_db=str(tmp_path / "a.duckdb"), tokometer_policies=str(policies))
        addon.running()
        try:
            body = {"model": "gpt-4o-mini", "stream": True, "messages": []}
            flow = make_flow(CHAT_URL, body, headers={"x-metering-tags": '{"env":"qa"}'})
            flow.request.timestamp_start = datetime.now(UTC).timestamp()
            await run_request(addon, flow)
            assert flow.response is None and addon.enforcer.budgets.reserves(addon._calls[flow].record.id)
            stream_response(flow, addon)
            last = {"id": "c", "model": "gpt-4o-mini", "choices": [], "usage": MINI_USAGE}
            stream = flow.response.stream
            assert callable(stream)
            stream(f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode())  # final event: journaled in A
            tctx.configure(addon, tokometer_db=str(tmp_path / "b.duckdb"))  # A closed, B opened
            stream(b"")
            await addon.response(flow)
            await asyncio.gather(*addon._estimates)
            assert addon.store is not None and addon.store.flush()
            await asyncio.sleep(1.2)  # several writer rounds of B
            tracker = addon.enforcer.budgets
            assert tracker.reserved() == {}
            assert tracker._held == {}, tracker._held  # {QA: 0.000009}: never drains
        finally:
            addon.done()
