"""A stream's reservation gives way to its cost at its final event, and is settled again at its body end.

A client moves on when a stream's final event ([DONE], message_stop, response.completed) reaches
it; upstream may keep the body open a little longer. The client's next call must be decided on the
first one's cost, not on its reservation. The reservation gives way at the final event to the cost
the finished row would get then (reported usage, or the estimate of a stream without any); if the
usage changes before the body ends, the budget is settled again to the row's final cost. Either
way, the budget's spend ends equal to the stored row's cost, counted once.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from mitmproxy.test import taddons, tflow

import addon.meter as meter_module
from addon.budgets import Scope
from addon.meter import Meter
from addon.policies import parse_policies
from addon.record import CallRecord
from tests.test_meter import CHAT_URL, FIXTURES, CollectingStore, make_flow, run_request, stream_response

QA = Scope("environment", "qa")
QA_TAGS = {"x-metering-tags": '{"env":"qa"}'}
ANTHROPIC_URL = "https://api.anthropic.com/v1/messages"
GEMINI_STREAM = (
    "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
)
MINI_USAGE = {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}
MINI_COST = Decimal("0.000009")  # 20 in at $0.15 / 1M, 10 out at $0.60 / 1M


def _budget(usd: str) -> str:
    return f"environments:\n  qa:\n    budget: {{usd: {usd}, period: day}}\n"


class WritingStore(CollectingStore):
    """Counts each submitted row as the store's writer does: priced (once: a row priced on the loop
    stays as it is), then its cost recorded against the budgets, settling whatever the call holds."""

    def __init__(self, meter: Meter) -> None:
        super().__init__()
        self.meter = meter

    def submit(self, record: CallRecord) -> None:
        super().submit(record)
        self.meter._price(record)
        self.meter.enforcer.record_spend([record])


@pytest.fixture
def qa_meter(tmp_path: Path):
    """A meter whose store counts rows at once, under a $5 a day budget of environment qa."""
    addon = Meter()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tokometer_db=str(tmp_path / "spend.duckdb"))
        addon.store = WritingStore(addon)  # type: ignore[assignment]
        addon._apply(parse_policies(_budget("5")))
        yield addon


def _spent(meter: Meter) -> Decimal:
    [status] = meter.enforcer.budgets.status(datetime.now(UTC))
    return status["spent"]


def _held(meter: Meter) -> Decimal:
    return meter.enforcer.budgets._held.get(QA, Decimal(0))


def _settled_once(meter: Meter, records: list[CallRecord]) -> None:
    """Nothing reserved or held any longer, and the spend is the rows' cost, counted once."""
    tracker = meter.enforcer.budgets
    assert tracker.reserved() == {}, tracker.reserved()
    assert tracker._held == {}, tracker._held
    assert tracker._holds == {}, tracker._holds
    assert _spent(meter) == sum((r.cost_usd or Decimal(0) for r in records), Decimal(0))


async def _started(meter: Meter, url: str, body: dict, headers: dict | None = None):
    flow = make_flow(url, body, headers={**QA_TAGS, **(headers or {})})
    flow.request.timestamp_start = datetime.now(UTC).timestamp()
    await run_request(meter, flow)
    return flow


async def _estimates_done(meter: Meter) -> None:
    for _ in range(100):
        if not meter._estimates:
            return
        await asyncio.gather(*list(meter._estimates), return_exceptions=True)


def _sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


MINI_FINAL = (
    _sse({"id": "c", "model": "gpt-4o-mini", "choices": [], "usage": MINI_USAGE}) + b"data: [DONE]\n\n"
)
MINI_BODY = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


# -- (1) the final event reached, the body not ended: the next call is decided on the cost -----------


async def test_the_next_call_is_decided_on_a_streams_cost_once_its_final_event_reached_the_client(
    tmp_path: Path,
) -> None:
    """Before: a chat stream whose [DONE] reached the client held its whole reservation ($0.0006,
    1,000 uncapped output tokens) until upstream ended the body: the client's next call under a
    $0.0005 cap was refused ("has no room left") though the first call cost $0.000009."""
    addon = Meter()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tokometer_db=str(tmp_path / "spend.duckdb"))
        addon.store = WritingStore(addon)  # type: ignore[assignment]
        addon._apply(parse_policies(_budget("0.0005")))
        first = await _started(addon, CHAT_URL, MINI_BODY)
        assert first.response is None
        stream_response(first, addon)
        first.response.stream(MINI_FINAL)  # the client has its answer and [DONE]; the body stays open
        second = await _started(addon, CHAT_URL, MINI_BODY)
        assert second.response is None, second.response and second.response.content
        # both end: the spend is their costs, once each
        first.response.stream(b"")
        await addon.response(first)
        stream_response(second, addon)
        second.response.stream(MINI_FINAL)
        second.response.stream(b"")
        await addon.response(second)
        records = addon.store.records  # type: ignore[union-attr]
        assert [r.cost_usd for r in records] == [MINI_COST, MINI_COST]
        _settled_once(addon, records)


async def test_an_anthropic_stream_gives_way_at_message_stop(tmp_path: Path) -> None:
    """Anthropic's final event is message_stop: the reservation ($0.005 and up, 1,000 output
    tokens) gives way to the call's cost ($0.002335) as it reaches the client."""
    addon = Meter()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tokometer_db=str(tmp_path / "spend.duckdb"))
        addon.store = WritingStore(addon)  # type: ignore[assignment]
        addon._apply(parse_policies(_budget("0.004")))
        body = {"model": "claude-haiku-4-5", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        headers = {"x-api-key": "sk-ant-xyz"}
        first = await _started(addon, ANTHROPIC_URL, body, headers)
        assert first.response is None
        stream_response(first, addon)
        first.response.stream((FIXTURES / "anthropic_stream.sse").read_bytes())  # up to message_stop
        assert _held(addon) == Decimal("0.002335") and addon.enforcer.budgets.reserved() == {}
        second = await _started(addon, ANTHROPIC_URL, body, headers)
        assert second.response is None, second.response and second.response.content
        addon.enforcer.budgets.settle(addon.call_state(second).record.id)  # type: ignore[union-attr]
        first.response.stream(b"")
        await addon.response(first)
        [record] = addon.store.records  # type: ignore[union-attr]
        assert record.cost_usd == Decimal("0.002335")
        _settled_once(addon, [record])


# -- (2) a stream without usage: estimated at its final event, as its row is -------------------------


NO_USAGE_STREAM = (
    _sse(
        {
            "id": "c",
            "model": "gpt-4o-mini",
            "choices": [
                {"index": 0, "delta": {"content": "Hello! How can I help you today?"}, "finish_reason": None}
            ],
        }
    )
    + _sse(
        {"id": "c", "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    )
    + b"data: [DONE]\n\n"
)
NO_USAGE_BODY = {
    "model": "gpt-4o-mini",
    "stream": True,
    "messages": [{"role": "user", "content": "hello there"}],
}


async def test_a_stream_without_usage_gives_way_to_its_estimate_and_ends_with_it(qa_meter: Meter) -> None:
    """d645ded priced such a stream at its final event with no usage (its row then skipped the
    estimate: no tokens, $0). Now its reservation gives way then to the estimate the row gets,
    and the row, estimated as before, is what the budget counts."""
    flow = await _started(qa_meter, CHAT_URL, NO_USAGE_BODY)
    assert flow.response is None
    record_id = qa_meter.call_state(flow).record.id  # type: ignore[union-attr]
    stream_response(flow, qa_meter)
    flow.response.stream(NO_USAGE_STREAM)
    await _estimates_done(qa_meter)
    tracker = qa_meter.enforcer.budgets
    assert not tracker.reserves(record_id), "the reservation is still held after [DONE]"
    early = _held(qa_meter)
    assert early > 0
    flow.response.stream(b"")
    await qa_meter.response(flow)
    await _estimates_done(qa_meter)
    [record] = qa_meter.store.records  # type: ignore[union-attr]
    assert record.usage_source == "estimated" and (record.output_tokens or 0) > 0
    assert record.cost_usd is not None and record.cost_usd > 0
    assert early == record.cost_usd  # given way at [DONE] to what the row costs
    _settled_once(qa_meter, [record])


async def test_a_stream_without_usage_whose_body_ends_before_its_early_estimate_settles_once(
    qa_meter: Meter,
) -> None:
    """The body ends while the estimate started at [DONE] is still counting in its thread: the
    finished row gives way itself, and the early estimate, when done, changes nothing."""
    flow = await _started(qa_meter, CHAT_URL, NO_USAGE_BODY)
    stream_response(flow, qa_meter)
    flow.response.stream(NO_USAGE_STREAM)
    flow.response.stream(b"")
    await qa_meter.response(flow)
    await _estimates_done(qa_meter)
    await asyncio.sleep(0.05)
    [record] = qa_meter.store.records  # type: ignore[union-attr]
    assert record.usage_source == "estimated" and record.cost_usd is not None and record.cost_usd > 0
    _settled_once(qa_meter, [record])


# -- (3) usage after the final event: settled again to it ---------------------------------------------


async def test_a_gemini_usage_after_the_final_event_settles_the_budget_again(qa_meter: Meter) -> None:
    """Gemini's final usage may come in a chunk after the one that ended the answer: the reservation
    gave way at the finishing chunk (5 output tokens), and the budget ends at the row's cost of the
    4,000 output tokens that came later (d645ded kept the earlier price, in the row and the budget)."""
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    flow = await _started(qa_meter, GEMINI_STREAM, body, {"x-goog-api-key": "AIza-test-0123456789"})
    assert flow.response is None
    stream_response(flow, qa_meter)
    finishing = {
        "candidates": [{"content": {"role": "model", "parts": [{"text": "Hi"}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15},
        "modelVersion": "gemini-2.5-flash",
    }
    later = {
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 4000, "totalTokenCount": 4010},
        "modelVersion": "gemini-2.5-flash",
    }
    flow.response.stream(_sse(finishing))
    early = Decimal(10) * Decimal("0.30") / 1_000_000 + Decimal(5) * Decimal("2.50") / 1_000_000
    assert _held(qa_meter) == early and qa_meter.enforcer.budgets.reserved() == {}
    flow.response.stream(_sse(later))
    flow.response.stream(b"")
    await qa_meter.response(flow)
    [record] = qa_meter.store.records  # type: ignore[union-attr]
    final = Decimal(10) * Decimal("0.30") / 1_000_000 + Decimal(4000) * Decimal("2.50") / 1_000_000
    assert (record.output_tokens, record.cost_usd) == (4000, final)
    _settled_once(qa_meter, [record])


async def test_the_budget_holds_the_final_cost_from_the_body_end_until_the_writer_records_it(
    tmp_path: Path,
) -> None:
    """Between the body's end and the writer's round, the budget holds the row's final cost, not the
    cost given way at the final event: a later usage counts at once, as a call's cost does."""
    addon = Meter()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tokometer_db=str(tmp_path / "spend.duckdb"))
        addon.store = CollectingStore()  # type: ignore[assignment]  # never records: the writer is late
        addon._apply(parse_policies(_budget("5")))
        body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
        flow = await _started(addon, GEMINI_STREAM, body, {"x-goog-api-key": "AIza-test-0123456789"})
        stream_response(flow, addon)
        finishing = {
            "candidates": [{"content": {"role": "model", "parts": [{"text": "Hi"}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15},
        }
        later = {
            "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 4000, "totalTokenCount": 4010}
        }
        flow.response.stream(_sse(finishing))
        early = _held(addon)
        assert early > 0 and addon.enforcer.budgets.reserved() == {}
        flow.response.stream(_sse(later))
        flow.response.stream(b"")
        await addon.response(flow)
        [record] = addon.store.records  # type: ignore[union-attr]
        assert record.output_tokens == 4000
        assert record.cost_usd is not None and record.cost_usd > early
        assert _held(addon) == record.cost_usd and addon.enforcer.budgets.reserved() == {}
        addon.enforcer.record_spend([record])  # the writer's round
        _settled_once(addon, [record])


# -- (4) cut after the final event: settled once ------------------------------------------------------


@pytest.mark.parametrize("error", ["Client disconnected.", "Server disconnected."])
async def test_a_stream_cut_after_its_final_event_settles_once(qa_meter: Meter, error: str) -> None:
    """The client hangs up at [DONE], or upstream fails before it ends the body: the call gave way
    at [DONE] and its error hook finishes it; its cost counts once, nothing stays held."""
    flow = await _started(qa_meter, CHAT_URL, MINI_BODY)
    stream_response(flow, qa_meter)
    flow.response.stream(MINI_FINAL)
    assert _held(qa_meter) == MINI_COST and qa_meter.enforcer.budgets.reserved() == {}
    flow.error = tflow.terr(error)
    qa_meter.error(flow)
    await qa_meter.response(flow)  # mitmproxy runs no response hook after error; harmless if it did
    await _estimates_done(qa_meter)
    [record] = qa_meter.store.records  # type: ignore[union-attr]
    assert (record.aborted, record.cost_usd, record.usage_source) == (False, MINI_COST, "reported")
    _settled_once(qa_meter, [record])


@pytest.mark.parametrize("error", ["Client disconnected.", "Server disconnected."])
async def test_a_stream_without_usage_cut_after_its_final_event_settles_once(
    qa_meter: Meter, error: str
) -> None:
    flow = await _started(qa_meter, CHAT_URL, NO_USAGE_BODY)
    stream_response(flow, qa_meter)
    flow.response.stream(NO_USAGE_STREAM)
    await _estimates_done(qa_meter)
    early = _held(qa_meter)
    assert early > 0 and qa_meter.enforcer.budgets.reserved() == {}
    flow.error = tflow.terr(error)
    qa_meter.error(flow)
    await _estimates_done(qa_meter)
    [record] = qa_meter.store.records  # type: ignore[union-attr]
    assert record.aborted is False and record.usage_source == "estimated"
    assert record.cost_usd == early
    _settled_once(qa_meter, [record])


async def test_a_stream_cut_at_shutdown_after_its_final_event_settles_once(
    qa_meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxy stops (done) with the body still open after [DONE]: the row is finished there."""
    flow = await _started(qa_meter, CHAT_URL, MINI_BODY)
    stream_response(flow, qa_meter)
    flow.response.stream(MINI_FINAL)
    monkeypatch.setattr(meter_module, "_shutting_down", lambda: True)
    qa_meter.done()
    [record] = qa_meter.store.records  # type: ignore[union-attr]
    assert record.cost_usd == MINI_COST
    _settled_once(qa_meter, [record])


# -- the same through the store's writer: the budget's spend is the stored rows' cost -----------------


async def test_through_the_store_the_budget_counts_the_stored_rows_once(tmp_path: Path) -> None:
    """A stream without usage, a Gemini stream whose usage comes after its final event and a stream
    the client leaves at [DONE], through the real store: the spend counted is the stored rows' sum."""
    addon = Meter()
    db = tmp_path / "spend.duckdb"
    with taddons.context(addon) as tctx:
        policies = tmp_path / "policies.yaml"
        policies.write_text(_budget("5"))
        tctx.configure(addon, tokometer_db=str(db), tokometer_policies=str(policies))
        addon.running()
        try:
            plain = await _started(addon, CHAT_URL, NO_USAGE_BODY)
            stream_response(plain, addon)
            plain.response.stream(NO_USAGE_STREAM)
            body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
            gemini = await _started(addon, GEMINI_STREAM, body, {"x-goog-api-key": "AIza-test-0123456789"})
            stream_response(gemini, addon)
            finishing = {
                "candidates": [
                    {"content": {"role": "model", "parts": [{"text": "Hi"}]}, "finishReason": "STOP"}
                ],
                "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15},
            }
            later = {
                "usageMetadata": {
                    "promptTokenCount": 10,
                    "candidatesTokenCount": 4000,
                    "totalTokenCount": 4010,
                }
            }
            gemini.response.stream(_sse(finishing))
            left = await _started(addon, CHAT_URL, MINI_BODY)
            stream_response(left, addon)
            left.response.stream(MINI_FINAL)
            await _estimates_done(addon)
            assert addon.enforcer.budgets.reserved() == {}  # all three gave way at their final event
            gemini.response.stream(_sse(later))
            for flow in (plain, gemini):
                flow.response.stream(b"")
                await addon.response(flow)
            left.error = tflow.terr("Client disconnected.")
            addon.error(left)
            await _estimates_done(addon)
            assert addon.store is not None and addon.store.flush()
            for _ in range(50):
                if not addon.enforcer.budgets._held:
                    break
                await asyncio.sleep(0.1)
            tracker = addon.enforcer.budgets
            assert tracker.reserved() == {} and tracker._held == {}, (tracker.reserved(), tracker._held)
            spent = _spent(addon)
        finally:
            addon.done()
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT output_tokens, usage_source, cost_usd FROM calls ORDER BY ts").fetchall()
    assert len(rows) == 3, rows
    assert {(r[0], r[1]) for r in rows} >= {(4000, "reported"), (10, "reported")}
    assert any(r[1] == "estimated" and r[2] > 0 for r in rows), rows
    assert spent == sum(r[2] for r in rows), (spent, rows)
