"""Review of e3ba2b4 (a stream gives way to its cost at its final event): failing tests.

Each test fails with e3ba2b4 and passes once the defect it names is fixed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from mitmproxy.test import taddons

import addon.enforcement as enforcement_module
import addon.meter as meter_module
from addon.budgets import period_bounds
from addon.meter import Meter
from addon.policies import parse_policies
from tests.test_meter import CHAT_URL, stream_response
from tests.test_stream_give_way import (
    MINI_BODY,
    QA,
    WritingStore,
    _budget,
    _estimates_done,
    _held,
    _settled_once,
    _sse,
    _started,
)

BIG_USAGE = {"prompt_tokens": 20, "completion_tokens": 1000, "total_tokens": 1020}
BIG_COST = Decimal("0.000603")  # 20 in at $0.15 / 1M, 1,000 out at $0.60 / 1M
BIG_FINAL = _sse({"id": "c", "model": "gpt-4o-mini", "choices": [], "usage": BIG_USAGE}) + b"data: [DONE]\n\n"


def _counted(meter: Meter) -> Decimal:
    """What the meter's budgets count for calls not recorded yet: reserved plus held."""
    tracker = meter.enforcer.budgets
    return tracker.reserved().get(QA, Decimal(0)) + _held(meter)


async def test_a_script_reload_after_the_final_event_keeps_the_streams_cost_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy running without a journal (its journal folder cannot be written: "no journal",
    so the stream's final event journals nothing and the call is not kept by the store before the
    reload) reloads its script after a stream's [DONE] reached the client, upstream still holding
    the body. The earlier instance's budgets held the call's cost ($0.000603) since [DONE]; the
    new instance takes the call over (done -> _take_over) but carries only the call's
    *reservation*, which the early give-way already turned into a hold: the new budgets count
    nothing for the call until upstream ends the body, and calls started meanwhile are decided as
    if it cost nothing (before e3ba2b4 its whole reservation was reserved again)."""
    old = Meter()
    with taddons.context(old) as tctx:
        tctx.configure(old, tokometer_db=str(tmp_path / "spend.duckdb"))
        old.store = WritingStore(old)  # type: ignore[assignment]  # journal() keeps nothing
        old._apply(parse_policies(_budget("5")))
        flow = await _started(old, CHAT_URL, MINI_BODY)
        assert flow.response is None
        stream_response(flow, old)
        flow.response.stream(BIG_FINAL)  # type: ignore[operator,union-attr]  # [DONE]; the body stays open
        assert _held(old) == BIG_COST
        monkeypatch.setattr(meter_module, "_shutting_down", lambda: False)
        old.done()  # mitmproxy reloads the script: the call is handed over
        new = Meter()
        new.store = WritingStore(new)  # type: ignore[assignment]
        new._apply(parse_policies(_budget("5")))
        assert new.call_state(flow) is not None  # taken over
        assert _counted(new) >= BIG_COST, f"the new instance counts {_counted(new)} for the call in flight"
        flow.response.stream(b"")  # type: ignore[operator,union-attr]
        await new.response(flow)
        await _estimates_done(new)
        _settled_once(new, new.store.records)  # type: ignore[union-attr]


async def test_a_streams_cost_held_since_before_midnight_does_not_spend_the_new_days_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream's [DONE] reaches the client at the end of a day; upstream ends the body a few
    seconds into the next. Since [DONE] its cost ($0.000603) is held as spend, with no period:
    a call at 00:00:01 is refused as if the NEW day's $0.0005 budget were spent ("is spent ...
    resets in 23h59m", x-should-retry: false, Retry-After ~86,400), though nothing was spent that
    day and the held cost is the day before's (its row is recorded there). The SDK gives up for a
    day. Before e3ba2b4 the call in flight counted as a reservation: "has no room left ... retry
    in 5 s", retried."""
    addon = Meter()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tokometer_db=str(tmp_path / "spend.duckdb"))
        addon.store = WritingStore(addon)  # type: ignore[assignment]
        addon._apply(parse_policies(_budget("0.0005")))
        first = await _started(addon, CHAT_URL, MINI_BODY)
        assert first.response is None
        stream_response(first, addon)
        first.response.stream(BIG_FINAL)  # type: ignore[operator,union-attr]  # [DONE], the body still open
        assert _held(addon) == BIG_COST
        # 00:00:01 the next day (UTC, the budgets' day)
        tomorrow = period_bounds("day", datetime.now(UTC))[1] + timedelta(seconds=1)
        monkeypatch.setattr(enforcement_module.time, "time", lambda: tomorrow.timestamp())
        second = await _started(addon, CHAT_URL, MINI_BODY)
        if second.response is not None:
            assert second.response.headers.get("x-should-retry") != "false", second.response.content
            assert int(second.response.headers.get("retry-after", "0")) <= 5, (
                second.response.headers.get("retry-after"),
                json.loads(second.response.content or b"{}"),
            )
