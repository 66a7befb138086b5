"""Review round 17 (0e17697 preset field read as the model, 725cbcc lookup queue wait, b617f49 late
user lookups): failing tests for the defects found."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from fake_responses_ws import create_event
from test_responses_ws_hooks import handshake
from websocket_hooks import client_says, metered, open_session

from addon.budgets import Scope
from addon.meter import Meter
from addon.policies import parse_policies
from tests.test_meter import make_flow, run_request
from tests.test_review_round14 import ALICE, refusal, slow

OPENROUTER_CHAT = "https://openrouter.ai/api/v1/chat/completions"
# Every OpenAI model through OpenRouter is allowed; a preset (its model, fallbacks and tools set at
# OpenRouter) only where a rule spells @preset/ (model_rules._matches): here none.
OPENAI_GLOB = (
    "environments:\n  development:\n    models:\n      allow: ['openai/*']\n      on_disallowed: block\n"
)
ONE_DOLLAR = "environments:\n  development:\n    budget: {usd: 1, period: day}\n"


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini@x", "openai/gpt-4o-mini@"])
async def test_a_preset_field_beside_a_model_with_an_at_sign_is_not_let_through_a_glob(
    meter: Meter, model: str
) -> None:
    """policies.yaml allows 'openai/*' and no preset. {"model": "openai/gpt-4o-mini", "preset":
    "evil"} is refused 403 (read as openai/gpt-4o-mini@preset/evil: a preset matches only a rule
    spelling @preset/). Put one "@" in the model ("openai/gpt-4o-mini@x") and model_with_preset
    folds it to "openai/gpt-4o-mini@x@preset/evil", which _OPENROUTER_PRESET ([^@]* before
    @preset/) no longer reads as a preset, so the glob 'openai/*' matches it: the call passes with
    the preset "evil" (its model, fallback models and tools) unchecked. Before 0e17697 any preset
    field made the lists unreadable: 403. Expected 403; actual: passed (no response from the proxy)."""
    meter._apply(parse_policies(OPENAI_GLOB))
    body = {"model": model, "preset": "evil", "messages": [{"role": "user", "content": "hi"}]}
    flow = make_flow(OPENROUTER_CHAT, body)
    await run_request(meter, flow)
    assert flow.response is not None, "passed: the preset 'evil' runs unchecked"
    assert refusal(flow)[0] == 403


@pytest.mark.parametrize(
    "body",
    [
        {"model": "openai/gpt-4o@preset/a", "preset": "b"},  # a preset in both places
        {"model": "openai/gpt-4o", "preset": "team/b"},  # a preset field that is no slug
    ],
    ids=["two-presets", "no-slug"],
)
async def test_an_unreadable_preset_field_still_reserves_the_model_it_names(meter: Meter, body: dict) -> None:
    """A $1 budget with $0.05 left, no allowlist. 20 calls of openai/gpt-4o, 4,000 output tokens
    each ($0.04 reserved apiece): 2 of 20 pass (plain, and both bodies here before 0e17697). With a
    preset field model_with_preset cannot fold in (a second preset, or a value with "/"), the
    request_model is now None: nothing is reserved, 20 of 20 pass, each running gpt-4o (and the
    row's model_requested is None). Expected at most 2 of 20 let through; actual 20 of 20."""
    meter._apply(parse_policies(ONE_DOLLAR))
    meter.enforcer.budgets.record((Scope("environment", "development"),), Decimal("0.95"), datetime.now(UTC))
    request = {**body, "max_tokens": 4000, "messages": [{"role": "user", "content": "hi"}]}
    flows = [make_flow(OPENROUTER_CHAT, request) for _ in range(20)]
    for flow in flows:
        flow.request.timestamp_start = datetime.now(UTC).timestamp()  # today's budget
        await run_request(meter, flow)
    allowed = sum(1 for flow in flows if flow.response is None)
    assert allowed <= 2, f"{allowed} of 20 let through with $0.05 left"


async def test_a_socket_opened_as_the_unidentified_user_takes_the_late_lookups_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No user has a limit; policies.yaml names attribution.unidentified_user: guests. alice opens
    a Responses WebSocket; her lookup answers at 0.2 s, past the 0.05 s wait (standing for 2 s), so
    the handshake is attributed to "guests". README (Attribution): "A Responses WebSocket opened
    before its lookup answered takes its user from the lookup at its next response.create", and an
    HTTP call in the same case is alice's (b617f49). But _identify_late returns at once when the
    handshake has any user, and "guests" is one: every create on the socket, for its whole life,
    is "guests"'s (its rows, and its budget scope once guests or alice get a limit).
    Expected the create's row user "alice" (pid 4242); actual "guests" (pid None)."""
    for meter in metered(tmp_path):
        meter._apply(parse_policies("attribution:\n  unidentified_user: guests\n"))
        monkeypatch.setattr("addon.meter.PROCESS_LOOKUP_TIMEOUT", 0.05)
        monkeypatch.setattr("addon.meter.lookup_client_process", slow(ALICE, 0.2))
        flow = handshake()
        await open_session(meter, flow)
        session = meter.sockets.sessions[flow]
        assert session.handshake.user_name == "guests"  # opened before the lookup answered
        await asyncio.sleep(0.4)  # the lookup has answered alice
        sent = await client_says(meter, flow, create_event("gpt-5-mini", "a"))
        assert not sent.dropped
        row = session.latest["a"]  # type: ignore[attr-defined]
        assert (row.user_name, row.client_pid) == ("alice", 4242)
