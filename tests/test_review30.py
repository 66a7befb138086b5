"""Review 30: e784dd1 (a call an addon before the meter answered, block_list's, is attributed and
not billed via ``_attribute_unsent``) and 86fc9d3 (video calls moved to addon/video_calls.py).

Each test fails on main as committed; its docstring says what comes out instead.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from meter_helpers import make_flow, on_kept_alive_connection
from mitmproxy import http
from test_videos import form

from addon.meter import ANSWERED_UNSENT_NOTE, Meter
from addon.policies import parse_policies
from tests.test_review_round14 import ALICE, ALICE_BUDGET, slow

CHAT_URL = "https://api.openai.com/v1/chat/completions"
MINI_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
MINI_ANSWER = {
    "id": "chatcmpl-1",
    "model": "gpt-4o-mini",
    "choices": [],
    "usage": {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30},
}
ANY_MODEL = "environments:\n  development:\n    models: {allow: ['*']}\n"
QA_LIMITS = (
    "environments:\n  qa:\n    budget: {usd: 1, period: day}\n    rate_limit: {requests_per_minute: 1}\n"
)


def now(flow: http.HTTPFlow) -> http.HTTPFlow:
    flow.request.timestamp_start = datetime.now(UTC).timestamp()
    return on_kept_alive_connection(flow)


async def block_listed(meter: Meter, flow: http.HTTPFlow, status: int = 403) -> float:
    """What mitmproxy does with a call block_list answers in its ``request`` hook (it runs before
    the script): the meter's ``request`` sees the response, then ``responseheaders`` and
    ``response`` follow. Returns how long the meter's ``request`` hook held the answer (s)."""
    meter.requestheaders(flow)
    flow.response = http.Response.make(status, b"", {})  # BlockList.request
    began = time.monotonic()
    await meter.request(flow)
    held = time.monotonic() - began
    meter.responseheaders(flow)
    await meter.response(flow)
    return held


async def settled(meter: Meter) -> list:
    for _ in range(100):
        await asyncio.gather(*meter._estimates)
        await asyncio.sleep(0.01)
    return meter.store.records  # type: ignore[union-attr]


async def test_a_block_listed_call_is_not_held_for_a_process_lookup_nothing_is_decided_on(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Users have limits (alice's budget), the lookup is slow: ``_attribute_unsent`` calls
    ``_attribute`` with ``users_checked`` left True, so block_list's 403 waits out the deciding wait
    (DECIDING_LOOKUP_TIMEOUT, 12 s by default, here 1 s) though nothing is decided, reserved or
    counted for it. Before e784dd1 it was answered at once. Expected: at most the ordinary wait
    (PROCESS_LOOKUP_TIMEOUT, here 0.05 s); held 1.0 s now."""
    meter._apply(parse_policies(ALICE_BUDGET))
    monkeypatch.setattr("addon.meter.PROCESS_LOOKUP_TIMEOUT", 0.05)
    monkeypatch.setattr("addon.client_process.DECIDING_LOOKUP_TIMEOUT", 1.0)
    monkeypatch.setattr("addon.meter.lookup_client_process", slow(ALICE, 1.5))
    held = await block_listed(meter, now(make_flow(CHAT_URL, MINI_BODY)))
    assert held < 0.5, f"block_list's answer held {held:.2f} s by the meter"
    await asyncio.sleep(1.6)  # let the slow lookup's thread finish


async def test_a_block_listed_sora_form_names_its_model_and_no_json_error(meter: Meter) -> None:
    """A Sora video create (multipart, as openai-python sends it) block_list answered: its row
    should name sora-2, as the video path reads the form, with the note alone. ``_attribute_unsent``
    parses every non-media, non-batch body as JSON: model_requested None, and the row's error
    starts "request body is not JSON (UnicodeDecodeError); " (before e784dd1: "upstream answered
    403", no model either)."""
    meter._apply(parse_policies(ANY_MODEL))
    body, headers = form({"model": "sora-2", "seconds": "8", "prompt": "a cat"})
    await block_listed(meter, now(make_flow("https://api.openai.com/v1/videos", body, headers=headers)))
    [row] = await settled(meter)
    assert (row.api_flavor, row.model_requested, row.error) == ("video", "sora-2", ANSWERED_UNSENT_NOTE)
    assert (row.price_status, row.cost_usd) == ("not_billed", Decimal(0))


async def test_a_block_listed_realtime_mint_keeps_its_row(meter: Meter) -> None:
    """A Realtime client-secret mint answered 403 by block_list: ``_end_mint`` gives a mint
    "answered with an error" a row, not billed, and before e784dd1 it had one. Now the response
    hook sends it to ``_end_replayed`` (state.answered_unsent), which ends a mint with no row: the
    blocked mint leaves no trace (rows: [])."""
    meter._apply(parse_policies(ANY_MODEL))
    mint = {"session": {"type": "realtime", "model": "gpt-realtime"}}
    await block_listed(meter, now(make_flow("https://api.openai.com/v1/realtime/client_secrets", mint)))
    rows = await settled(meter)
    assert [(r.api_flavor, r.price_status, r.cost_usd, r.status_code, r.error) for r in rows] == [
        ("realtime", "not_billed", Decimal(0), 403, ANSWERED_UNSENT_NOTE)
    ]


async def test_a_streamed_request_block_list_answered_too_late_is_billed(meter: Meter) -> None:
    """A request mitmproxy streams (``stream_large_bodies``: ``request.stream``) went upstream as it
    was read, before any ``request`` hook (``_never_sent`` knows this): block_list's response set
    in its ``request`` hook is replaced by the provider's answer (mitmproxy's http layer sets
    ``flow.response`` from the server). The provider answered 20 + 10 tokens of gpt-4o-mini
    ($0.000009) to the client, yet the row is marked answered_unsent: not billed, $0, no tokens,
    "answered by mitmproxy before it was sent"."""
    meter._apply(parse_policies(QA_LIMITS))  # priced as it ends: its spend is held against qa's budget
    flow = now(make_flow(CHAT_URL, MINI_BODY, headers={"x-metering-tags": '{"env":"qa"}'}))
    flow.request.stream = True
    meter.requestheaders(flow)
    flow.response = http.Response.make(403, b"", {})  # BlockList.request, after the body went out
    await meter.request(flow)
    flow.response = http.Response.make(  # the provider's answer replaces it
        200, json.dumps(MINI_ANSWER).encode(), {"content-type": "application/json"}
    )
    meter.responseheaders(flow)
    await meter.response(flow)
    [row] = await settled(meter)
    # Before e784dd1: (20, 10, "reported"), priced by the writer (price_status None, no error).
    assert (row.input_tokens, row.output_tokens, row.usage_source) == (20, 10, "reported")
    assert row.price_status != "not_billed" and row.error is None
