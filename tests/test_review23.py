"""Review 23: defects in the changes merged since 1444f6e (unsent calls, finishing failures,
undecodable bodies, late lookups, OpenRouter presets behind a gateway).

Each test fails on the code reviewed (4c88f20) for the defect its docstring names, with its figures.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from meter_helpers import make_flow, run_request
from mitmproxy import http
from mitmproxy.test import tflow

from addon.budgets import Scope
from addon.meter import Meter
from addon.policies import parse_policies
from addon.stream_tap import ResultsTap
from tests.test_meter import stream_response
from tests.test_review_round14 import ALICE, slow

FIXTURES = Path(__file__).parent / "fixtures"
ANTHROPIC = "https://api.anthropic.com/v1/messages"
NOT_IN_TIME = "calling process not identified in time"
IDENTIFIED_LATE = "calling process identified after the call was attributed"
ENV_BUDGET = "environments:\n  development:\n    budget: {usd: 1, period: day}\n"


async def test_a_streamed_row_named_by_a_late_lookup_still_says_not_identified_in_time(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """424ddd3 replaces the note in ``_fill_record`` only when that call names the process. A
    stream's final event (``message_stop``) journals the row first (``_journal_stream_end``), whose
    ``_fill_record`` names the process on the row but replaces the note in a copy of the errors;
    the finished row's ``_fill_record`` then sees ``client_pid`` set and leaves state.errors as
    they were. The stored row names alice and pid 4242 and says "calling process not identified in
    time": every streamed call (the usual kind) keeps the note the commit said it removes."""
    monkeypatch.setattr("addon.meter.PROCESS_LOOKUP_TIMEOUT", 0.05)
    monkeypatch.setattr("addon.client_process.DECIDING_LOOKUP_TIMEOUT", 0.1)
    monkeypatch.setattr("addon.meter.lookup_client_process", slow(ALICE, 0.2))
    meter._apply(parse_policies(ENV_BUDGET))
    flow = make_flow(ANTHROPIC, {"model": "claude-haiku-4-5", "stream": True, "messages": []})
    flow.request.timestamp_start = datetime.now(UTC).timestamp()
    await run_request(meter, flow)
    assert flow.response is None
    await asyncio.sleep(0.4)  # the lookup answers while the call runs
    stream_response(flow, meter)
    upstream = (FIXTURES / "anthropic_stream.sse").read_bytes()
    flow.response.stream(upstream)  # type: ignore[union-attr,operator]  # message_stop: journaled
    flow.response.stream(b"")  # type: ignore[union-attr,operator]
    await meter.response(flow)
    [row] = meter.store.records  # type: ignore[union-attr]
    assert (row.user_name, row.client_pid, row.output_tokens) == ("alice", 4242, 91)  # control
    assert row.error == IDENTIFIED_LATE  # now: "calling process not identified in time"


def test_a_batch_results_reader_failure_puts_no_result_text_on_the_row() -> None:
    """8c93415 shows a stream parser's unexpected failure by type and place, never its text (which
    may quote what it read). The Message Batch results tap beside it (``ResultsTap``, the same
    module) still keeps ``str(exc)[:300]``, which ``_finish_results`` puts on the batch's row:
    "the results were not read to their end (invalid literal for int() with base 10: '<the
    completion>')". A batch result line holds the model's whole answer."""
    tap = ResultsTap(None)

    class Broken:
        def feed(self, data: bytes) -> None:
            int("the model's secret completion")

        def close(self) -> None:
            pass

    tap.reader = Broken()  # type: ignore[assignment]
    line = b'{"custom_id":"a","result":{"type":"succeeded"}}\n'
    assert tap(line) == line  # control: passed on as it came
    assert tap.failed is not None  # control
    assert "secret completion" not in tap.failed  # now: quoted whole


CHAT_URL = "https://api.openai.com/v1/chat/completions"
QA = Scope("environment", "qa")
QA_TAGS = {"x-metering-tags": '{"env":"qa"}'}
QA_LIMITS = (
    "environments:\n  qa:\n    budget: {usd: 1, period: day}\n    rate_limit: {requests_per_minute: 1}\n"
)
MINI_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def tunnel_flow(now: float) -> http.HTTPFlow:
    """A qa call on a client's kept-alive CONNECT tunnel: its upstream connection (the flow's
    ``server_conn``, mitmproxy's context server) was set up two minutes ago for an earlier call and
    closed by the provider one minute ago (an idle timeout). mitmproxy opens a new one for this
    request; only a success replaces ``flow.server_conn``."""
    flow = make_flow(CHAT_URL, MINI_BODY, headers=QA_TAGS)
    flow.request.timestamp_start, flow.request.timestamp_end = now, now + 0.001
    server = flow.server_conn
    server.timestamp_start, server.timestamp_tcp_setup = now - 120.2, now - 120.1
    server.timestamp_tls_setup, server.timestamp_end = now - 120.0, now - 60.0
    return flow


async def test_a_reconnect_that_fails_on_a_kept_alive_tunnel_is_not_billed_nor_counted(meter: Meter) -> None:
    """README: "A call that never reached the provider is a row with cost 0, not_billed ... and
    takes back its reservation and rate-limit slot: its connection failed". ``_never_sent`` reads
    "connection failed" as ``server_conn.timestamp_tcp_setup is None``; on a kept-alive tunnel
    (every SDK keeps one) the flow's ``server_conn`` is the earlier connection, set up and closed
    before this request arrived, and a failed reconnect (refused, DNS, network down) leaves it
    there. The call is billed its estimated input (8 tokens of gpt-4o-mini: $0.0000012, held
    against qa's budget) and keeps its rate-limit slot: the SDK's retry a second later is refused
    429 rate_limited. Checked with mitmdump 12.3.1 here (a TLS server that answers once, closes
    the idle connection and stops listening): the second request's error hook sees the first
    connection's id, tcp setup at T, closed at T+0.5 s, request at T+2 s, error "[Errno 111]
    Connect call failed ('127.0.0.1', 18443)". Such a connection's ``timestamp_end`` precedes the
    request's start."""
    meter._apply(parse_policies(QA_LIMITS))
    now = datetime.now(UTC).timestamp()
    failed = tunnel_flow(now)
    await run_request(meter, failed)
    failed.error = tflow.terr("[Errno 111] Connect call failed ('162.159.140.245', 443)")
    meter.error(failed)
    [row] = await rows_settled(meter)
    # now: ("priced", $0.0000012, 8)
    assert (row.price_status, row.cost_usd, row.input_tokens) == ("not_billed", Decimal(0), None)
    assert meter.enforcer.budgets._held.get(QA, Decimal(0)) == 0  # now: $0.0000012
    retry = tunnel_flow(now + 1)
    await run_request(meter, retry)
    assert meter.call_state(retry).record.action == "allowed"  # type: ignore[union-attr]  # rate_limited


async def rows_settled(meter: Meter) -> list:
    """The rows submitted, once an offline estimate (in a thread) has run."""
    for _ in range(200):
        await asyncio.gather(*meter._estimates)
        if meter.store.records:  # type: ignore[union-attr]
            break
        await asyncio.sleep(0.01)
    return meter.store.records  # type: ignore[union-attr]


GATEWAY = "https://llm.internal.example"
PRESET_BODY: dict[str, Any] = {
    "model": "openai/gpt-4o",
    "max_tokens": 4000,
    "messages": [{"role": "user", "content": "hi"}],
}


@pytest.mark.parametrize("prefix", ["/openrouter", "/v1/acct/gw/openrouter"])
async def test_a_preset_save_through_a_gateway_under_a_base_path_reserves_nothing(
    meter: Meter, prefix: str
) -> None:
    """07c7a3c: "OpenRouter's preset API ... passes unmetered, there and behind a providers: gateway
    priced as OpenRouter". A gateway that serves OpenRouter under a base path (LiteLLM's
    pass-through /openrouter/..., an AI gateway's /v1/{account}/{gateway}/openrouter/...), which
    the gateway's own chat calls are metered under (a suffix match), forwards the save as
    {prefix}/api/v1/presets/{slug}/chat/completions; saves_openrouter_preset full-matches
    /api/v1/presets/... only, so the save is metered as a chat call: $0.0400575 reserved (4,000
    gpt-4o output tokens) and a row, for a request that runs nothing."""
    meter._apply(
        parse_policies(
            f'providers:\n  orgw: {{url: "{GATEWAY}", api: openai, pricing_provider: openrouter}}\n'
            "environments:\n  development:\n    budget: {usd: 100, period: day}\n"
        )
    )
    flow = make_flow(f"{GATEWAY}{prefix}/api/v1/presets/my-preset/chat/completions", PRESET_BODY)
    flow.request.timestamp_start = datetime.now(UTC).timestamp()
    await run_request(meter, flow)
    assert flow.response is None  # control: let through
    assert meter.enforcer.budgets.reserved() == {}  # now: {development: 0.0400575}
