"""Budgets under concurrency: streams without usage, sessions, background holds and Bedrock waits.

Found by an independent review of the on-loop settle and shared-budget fixes; each test failed before its fix.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from mitmproxy.test import taddons

from addon.budgets import BudgetTracker, Scope, scopes_for
from addon.enforcement import Enforcer
from addon.meter import Meter
from addon.policies import parse_policies
from tests.test_meter import CollectingStore, make_flow, run_request, stream_response

QA_BUDGET = "environments:\n  qa:\n    budget: {usd: 5, period: day}\n"
QA = Scope("environment", "qa")
GEMINI_STREAM = (
    "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
)


def _chunk(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\r\n\r\n"


async def test_a_gemini_stream_whose_usage_comes_after_its_final_event_is_priced_on_that_usage(
    tmp_path: Path,
) -> None:
    """The Gemini parser takes the usage of a chunk after the one that ended the answer as final
    (43b3e8c: 'the chunk that ended it (or a later one)'). _journal_stream_end prices the row at the
    finishing chunk (price_status set, the reservation gave way to that cost); when the later chunk
    brings the final usage, _finish sets the new token counts but the pricer prices a row once: the
    stored row says 4000 output tokens at the cost of 5, and the budget holds the cost of 5."""
    addon = Meter()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tokometer_db=str(tmp_path / "spend.duckdb"))
        store = CollectingStore()
        addon.store = store  # type: ignore[assignment]
        addon._apply(parse_policies(QA_BUDGET))
        body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
        flow = make_flow(
            GEMINI_STREAM,
            body,
            headers={"x-goog-api-key": "AIza-test-0123456789", "x-metering-tags": '{"env":"qa"}'},
        )
        del flow.request.headers["authorization"]
        await run_request(addon, flow)
        assert flow.response is None
        stream_response(flow, addon)
        finishing = {
            "candidates": [{"content": {"role": "model", "parts": [{"text": "Hi"}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15},
            "modelVersion": "gemini-2.5-flash",
        }
        later = {
            "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 4000, "totalTokenCount": 4010},
            "modelVersion": "gemini-2.5-flash",
        }
        flow.response.stream(_chunk(finishing))
        flow.response.stream(_chunk(later))
        flow.response.stream(b"")
        await addon.response(flow)
        [rec] = [r for r in store.records if r.id == store.records[-1].id]
        assert rec.output_tokens == 4000  # the later usage is the row's
        expected = Meter()._price  # a fresh pricing of the row as stored
        import copy

        fresh = copy.copy(rec)
        fresh.cost_usd = fresh.price_status = fresh.price_source = fresh.price_model = None
        expected(fresh)
        assert rec.cost_usd == fresh.cost_usd, (rec.cost_usd, fresh.cost_usd)


async def test_a_realtime_session_is_not_closed_when_only_calls_in_flight_fill_its_budget(
    tmp_path: Path, monkeypatch
) -> None:
    """d645ded: a budget that the reservations of calls in flight fill (the spend far below the cap)
    is a short wait for HTTP calls ('has no room left ... retry in 5 s', 429, retryable). A Realtime
    session's response.create is checked by Enforcer.spent_budget, which counts the reservations the
    same way: the session is capped for good and its socket closed, the error event telling the
    client to 'retry in 5 s' -- on a socket that is being closed, with $0 spent."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from websocket_hooks import client_says, metered, open_session

    import addon.meter as meter_module
    from tests.test_realtime_hooks import BUDGETED, handshake

    gen = metered(tmp_path)
    meter = next(gen)
    try:
        meter._apply(parse_policies(BUDGETED))
        injected: list = []
        closed: list = []
        monkeypatch.setattr(meter_module.ctx.master.commands, "call", lambda *a: injected.append(a))
        monkeypatch.setattr(meter, "_close_websocket", lambda flow: closed.append(flow) or True)
        flow = handshake()
        await open_session(meter, flow)
        # Another call (HTTP) in flight in the same environment reserves what the cap allows.
        meter.enforcer.budgets.reserve("other-call", [Scope("environment", "development")], Decimal("0.01"))
        asked = await client_says(meter, flow, {"type": "response.create"})
        assert not asked.dropped and closed == [], [a[3] for a in injected]
    finally:
        gen.close()


def test_a_bedrock_no_room_refusal_body_names_the_throttle_its_header_names() -> None:
    """d645ded answers a no-room refusal on Bedrock as a throttle: 429, x-amzn-ErrorType
    ThrottlingException. Its JSON body still says "__type": "AccessDeniedException" (error_body
    keys _AWS_CODES by kind, not by final): a client or SDK reading the body's __type (the
    restJson fallback when the header is gone, e.g. behind a gateway that drops x-amzn-* headers)
    takes a 5-second wait for a permanent access denial."""
    from addon.enforcement import Enforcer

    enforcer = Enforcer(parse_policies("environments:\n  qa:\n    budget: {usd: 0.001, period: day}\n"))
    enforcer.budgets.reserve("other-call", [Scope("environment", "qa")], Decimal("0.001"))
    import time

    decision = enforcer.decide(
        provider="aws",
        environment="qa",
        key_name=None,
        user_name=None,
        model="anthropic.claude-3-haiku-20240307-v1:0",
        now=time.time(),
        call_id="c1",
        estimate=lambda _model: Decimal("0.0001"),
    )
    refusal = decision.refusal
    assert refusal is not None and refusal.status_code == 429
    assert refusal.headers["x-amzn-ErrorType"] == "ThrottlingException"
    assert json.loads(refusal.content)["__type"] == "ThrottlingException", refusal.content


async def test_a_budgeted_stream_without_usage_is_still_estimated(tmp_path: Path) -> None:
    """d645ded prices a stream at its final event (_journal_stream_end -> _price_now). A chat stream
    without usage (no stream_options.include_usage: most OpenAI-compatible clients) is then priced
    with no usage: price_status is set, and _finish's estimate, wanted only for a row not priced yet
    (``counted``: price_status None), is skipped. In a budgeted scope the row is stored with no
    tokens at no cost (before: a tiktoken estimate), and the budget counts nothing for it."""
    from tests.test_meter import CHAT_URL

    addon = Meter()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tokometer_db=str(tmp_path / "spend.duckdb"))
        store = CollectingStore()
        addon.store = store  # type: ignore[assignment]
        addon._apply(parse_policies(QA_BUDGET))
        body = {
            "model": "gpt-4o-mini",
            "stream": True,
            "messages": [{"role": "user", "content": "hello there"}],
        }
        flow = make_flow(CHAT_URL, body, headers={"x-metering-tags": '{"env":"qa"}'})
        await run_request(addon, flow)
        assert flow.response is None
        stream_response(flow, addon)
        chunk = {
            "id": "c",
            "model": "gpt-4o-mini",
            "choices": [
                {"index": 0, "delta": {"content": "Hello! How can I help you today?"}, "finish_reason": None}
            ],
        }
        end = {
            "id": "c",
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
        flow.response.stream(
            f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode()
        )
        flow.response.stream(b"")
        await addon.response(flow)
        for task in list(addon._estimates):
            await task
        [rec] = store.records
        assert rec.usage_source == "estimated" and (rec.output_tokens or 0) > 0, (
            rec.usage_source,
            rec.output_tokens,
            rec.price_status,
            rec.cost_usd,
        )


def test_a_budget_filled_by_a_running_background_response_is_not_a_five_second_wait() -> None:
    """d645ded answers a cap that reservations (not spend) fill as a short wait: Retry-After 5,
    retryable, 'retry in 5 s ... (given back as they finish)'. A background response's reservation
    is among them (BudgetTracker.keep: held until it is retrieved or HOLD_S, 3 hours): the SDKs retry
    and clients loop every 5 s for up to 3 hours, told each time that room comes back in 5 s."""
    import time
    from datetime import UTC, datetime

    from addon.budgets import BudgetTracker

    tracker = BudgetTracker(parse_policies("environments:\n  qa:\n    budget: {usd: 0.001, period: day}\n"))
    tracker.reserve("bg-call", [QA], Decimal("0.001"))
    assert tracker.keep("bg-call", "hold:resp_1", time.time() + 3 * 3600) is not None
    refusal = tracker.check([QA], datetime.now(UTC))
    assert refusal is not None
    assert refusal.retry_after > 5, refusal.message()


DEV_DAY_1 = "environments:\n  development:\n    budget: {usd: 1, period: day}\n"
NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)


def test_a_session_is_not_closed_when_only_background_holds_fill_the_cap() -> None:
    """spent_budget(spent_only=True) (SocketMeter._cap_if_spent) promises 'only when the spend
    itself reached the cap'; the commit says a session is 'closed only when the spend reached the
    cap'. A cap that a background response's reservation (an estimate, released on retrieval or
    after 3 h) fills with $0 spent closes every Realtime/Live session of the scope for good."""
    e = Enforcer(parse_policies(DEV_DAY_1))
    scopes = scopes_for("development")
    clock = NOW.timestamp()
    assert e.budgets.check(scopes, NOW, reserve=("bg", lambda: Decimal("1.00"))) is None
    assert e.budgets.keep("bg", "hold:resp_1", clock + 3 * 3600) is not None
    assert e.spent_budget(scopes, clock, spent_only=True) is None


def test_the_wait_for_background_holds_is_when_room_comes_back_not_the_first_holds_end() -> None:
    """check() sets retry_after to the end of the first hold ('room at the latest when the first
    hold ends'). $0.50 spent, $0.20 kept until +60 s and $0.50 kept until +3 h under a $1 cap: when
    the first hold ends, $0.50 + $0.50 still fill the cap. The final refusal says 'retry in 1m 0s';
    the client's retry then is refused again (now for 2h59m)."""
    tracker = BudgetTracker(parse_policies(DEV_DAY_1))
    scopes = scopes_for("development")
    clock = NOW.timestamp()
    assert tracker.check(scopes, NOW, reserve=("s", lambda: Decimal("0.50"))) is None
    tracker.finish("s", scopes, Decimal("0.50"), NOW)
    assert tracker.check(scopes, NOW, reserve=("a", lambda: Decimal("0.20"))) is None
    tracker.keep("a", "hold:a", clock + 60)
    assert tracker.check(scopes, NOW, reserve=("b", lambda: Decimal("0.50"))) is None
    tracker.keep("b", "hold:b", clock + 3 * 3600)
    refusal = tracker.check(scopes, NOW)
    assert refusal is not None
    later = datetime.fromtimestamp(clock + refusal.retry_after, UTC)
    assert tracker.check(scopes, later) is None, (refusal.retry_after, refusal.message())
