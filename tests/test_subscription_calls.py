"""Claude Pro/Max plans: Claude Code's OAuth token (``sk-ant-oat...``) is billed by the plan."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.test import taddons

from addon.budgets import scopes_for
from addon.meter import Meter
from tests.test_meter import CollectingStore, make_flow, run_request

MESSAGES_URL = "https://api.anthropic.com/v1/messages?beta=true"
OAUTH = {"authorization": "Bearer sk-ant-oat01-" + "A" * 95, "anthropic-beta": "oauth-2025-04-20"}
API_KEY = {"authorization": "", "x-api-key": "sk-ant-api03-" + "B" * 95}
ANSWER = {
    "type": "message",
    "model": "claude-sonnet-4-5-20250929",
    "content": [],
    "usage": {"input_tokens": 10, "cache_read_input_tokens": 50_000, "output_tokens": 2_000},
}


async def _call(meter: Meter, headers: dict[str, str]) -> http.HTTPFlow:
    body = {"model": "claude-sonnet-4-5-20250929", "max_tokens": 1000, "messages": []}
    flow = make_flow(MESSAGES_URL, body, headers=headers)
    flow.request.timestamp_start = datetime.now(UTC).timestamp()  # today's budget
    await run_request(meter, flow)
    if flow.response is None:
        flow.response = http.Response.make(200, json.dumps(ANSWER), {"content-type": "application/json"})
        meter.responseheaders(flow)
    await meter.response(flow)
    return flow


async def test_plan_calls_cost_nothing_keep_their_tokens_and_pass_a_spent_budget(tmp_path: Path) -> None:
    addon = Meter()
    with taddons.context(addon) as tctx:
        policies = tmp_path / "policies.yaml"
        policies.write_text("environments:\n  development:\n    budget: {usd: 1, period: day}\n")
        tctx.configure(addon, tokometer_db=str(tmp_path / "a.duckdb"), tokometer_policies=str(policies))
        addon.store = CollectingStore()  # type: ignore[assignment]
        addon.enforcer.budgets.record(scopes_for("development", None, None), Decimal(1), datetime.now(UTC))

        refused = await _call(addon, API_KEY)  # API credits: the spent budget holds
        assert refused.response is not None and refused.response.status_code == 429
        plan = await _call(addon, OAUTH)
        assert plan.response is not None and plan.response.status_code == 200
        assert addon.enforcer.budgets.reserved() == {}

        over, subscribed = addon.store.records  # type: ignore[union-attr]
        assert (over.action, over.key_fingerprint is not None) == ("over_budget", True)
        assert subscribed.action == "allowed"
        assert (subscribed.cost_usd, subscribed.price_status) == (Decimal(0), "subscription")
        assert (subscribed.input_tokens, subscribed.cache_read_tokens, subscribed.output_tokens) == (
            50_010,
            50_000,
            2_000,
        )
        addon._price(subscribed)  # the writer's pricing pass leaves it as it is
        assert (subscribed.cost_usd, subscribed.price_status) == (Decimal(0), "subscription")
        [budget] = addon.enforcer.budgets.status(datetime.now(UTC))
        assert budget["spent"] == Decimal(1)  # nothing added


async def test_api_key_calls_are_still_priced(tmp_path: Path) -> None:
    addon = Meter()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tokometer_db=str(tmp_path / "a.duckdb"))
        addon.store = CollectingStore()  # type: ignore[assignment]
        await _call(addon, API_KEY)
        [record] = addon.store.records  # type: ignore[union-attr]
        addon._price(record)
        # 10 in at $3, 50,000 cached reads at $0.30, 2,000 out at $15 (per million)
        assert (record.cost_usd, record.price_status) == (Decimal("0.04503"), "priced")


async def test_a_plan_token_sent_to_a_gateway_is_priced_as_the_gateway_bills(tmp_path: Path) -> None:
    """A policies.yaml host with ``api: anthropic`` bills per token whatever key Claude Code sends it."""
    addon = Meter()
    with taddons.context(addon) as tctx:
        policies = tmp_path / "policies.yaml"
        policies.write_text(
            "providers:\n"
            '  gateway: {url: "https://llm.internal.example", api: anthropic, pricing_provider: anthropic}\n'
        )
        tctx.configure(addon, tokometer_db=str(tmp_path / "a.duckdb"), tokometer_policies=str(policies))
        addon.store = CollectingStore()  # type: ignore[assignment]
        body = {"model": "claude-sonnet-4-5-20250929", "max_tokens": 1000, "messages": []}
        flow = make_flow("https://llm.internal.example/v1/messages", body, headers=OAUTH)
        await run_request(addon, flow)
        flow.response = http.Response.make(200, json.dumps(ANSWER), {"content-type": "application/json"})
        addon.responseheaders(flow)
        await addon.response(flow)
        [record] = addon.store.records  # type: ignore[union-attr]
        addon._price(record)
        assert (record.provider, record.price_status, record.cost_usd) == (
            "gateway",
            "priced",
            Decimal("0.04503"),
        )


@pytest.mark.parametrize("headers", [API_KEY, OAUTH], ids=["api_key", "plan"])
async def test_a_call_without_reported_usage_gets_its_tokens_counted(tmp_path: Path, headers: dict) -> None:
    """No usage in the answer: counted offline, for a plan's call too ("stored with their tokens")."""
    addon = Meter()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tokometer_db=str(tmp_path / "a.duckdb"))
        addon.store = CollectingStore()  # type: ignore[assignment]
        prompt = [{"role": "user", "content": "Count the tokens of this prompt, please. " * 20}]
        body = {"model": "claude-sonnet-4-5-20250929", "max_tokens": 1000, "messages": prompt}
        flow = make_flow(MESSAGES_URL, body, headers=headers)
        await run_request(addon, flow)
        answer = {
            "type": "message",
            "model": body["model"],
            "content": [{"type": "text", "text": "An answer."}],
        }
        flow.response = http.Response.make(200, json.dumps(answer), {"content-type": "application/json"})
        addon.responseheaders(flow)
        await addon.response(flow)
        await asyncio.gather(*addon._estimates)
        [record] = addon.store.records  # type: ignore[union-attr]
        assert record.usage_source == "estimated"
        assert record.input_tokens is not None and record.input_tokens > 100
        addon._price(record)
        plan = headers is OAUTH
        assert (record.price_status == "subscription", record.cost_usd == 0) == (plan, plan)
