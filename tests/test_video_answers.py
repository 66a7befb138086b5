"""A video call is billed only when its job was accepted (2xx) or may have been (no answer); and a
video call an earlier addon answered (block_list) is attributed without a false note."""

from __future__ import annotations

from decimal import Decimal

from meter_helpers import make_flow, run_request
from mitmproxy import http
from test_videos import ANY_MODEL, DEVELOPMENT, VIDEOS, answer, form, rows

from addon.meter import ANSWERED_UNSENT_NOTE, Meter
from addon.policies import parse_policies


async def test_a_redirected_video_call_is_not_billed(meter: Meter) -> None:
    """A 307 starts no job (the client follows it, and that call is billed): not billed, its
    reservation withdrawn. It was billed as asked ($0.40, "the answer is no video job")."""
    meter._apply(parse_policies(ANY_MODEL + "    budget: {usd: 100, period: day}\n"))
    flow = make_flow(VIDEOS, {"prompt": "a cat", "model": "sora-2", "seconds": "4"})
    await run_request(meter, flow)
    assert meter.enforcer.budgets.reserved()[DEVELOPMENT] == Decimal("0.40")  # control
    await answer(meter, flow, 307, {})
    [row] = rows(meter)
    assert (row.status_code, row.cost_usd, row.price_status) == (307, Decimal(0), "not_billed")
    assert meter.enforcer.budgets.reserved() == {}


async def test_a_sora_form_an_earlier_addon_answered_has_no_false_note(meter: Meter) -> None:
    """block_list answered a Sora form before the meter: its row is not billed and says so, and no
    "request body is not JSON" note (the body is a form, never read as JSON)."""
    body, headers = form({"model": "sora-2", "seconds": "4", "prompt": "a cat"})
    flow = make_flow(VIDEOS, body, headers=headers)
    meter.requestheaders(flow)
    flow.response = http.Response.make(403, b"", {})
    await meter.request(flow)
    meter.responseheaders(flow)
    await meter.response(flow)
    [row] = rows(meter)
    assert (row.cost_usd, row.price_status) == (Decimal(0), "not_billed")
    assert row.error == ANSWERED_UNSENT_NOTE
