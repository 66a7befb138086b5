"""The addon's hooks on OpenAI batch jobs (mitmproxy.test.taddons and tflow, no network).

The input file's upload is read for its models; the creation is a $0 row that checks them and
puts the batch on the pending list; the retrieval that first sees it ended bills it, once.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from mitmproxy import http
from mitmproxy.flow import Error
from mitmproxy.test import taddons
from test_batches import CTYPE, form, line, result_line
from test_meter import feed, finished_call, make_flow, run_request

import addon.meter
from addon.budgets import Scope
from addon.meter import INLINE_PARSE_LIMIT, Meter
from addon.policies import parse_policies
from addon.providers import batches
from addon.reservation import RESERVED_OUTPUT_TOKENS

FILES = "https://api.openai.com/v1/files"
BATCHES = "https://api.openai.com/v1/batches"
TAGS = {"x-metering-tags": '{"env": "staging", "team": "evals"}'}
RESTRICTED = """
environments:
  development:
    models:
      allow: [gpt-4o-mini]
      downgrade: {gpt-4o: gpt-4o-mini}
"""
USAGE = {
    "input_tokens": 40_000,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 9_000,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 49_000,
}


def batch_object(status: str, usage: dict | None = None, batch_id: str = "batch_1") -> dict[str, Any]:
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "input_file_id": "file-1",
        "completion_window": "24h",
        "status": status,
        "model": "gpt-4o-mini-2024-07-18" if usage else None,
        "usage": usage,
    }


async def answer(meter: Meter, flow: http.HTTPFlow, body: dict, status: int = 200) -> None:
    flow.response = http.Response.make(status, json.dumps(body), {"content-type": "application/json"})
    meter.responseheaders(flow)
    await meter.response(flow)


async def upload(
    meter: Meter, jsonl: bytes, file_id: str = "file-1", purpose: bytes = b"batch"
) -> http.HTTPFlow:
    """``client.files.create(file=..., purpose="batch")`` through the hooks."""
    body = form(("purpose", purpose, None), ("file", jsonl, "requests.jsonl"))
    flow = make_flow(FILES, body, headers={"content-type": CTYPE})
    await run_request(meter, flow)
    assert flow.response is None  # an upload always goes on
    await answer(meter, flow, {"id": file_id, "object": "file", "bytes": len(jsonl), "purpose": "batch"})
    return flow


def requests_of(model: str, n: int = 3, max_tokens: int | None = 200) -> bytes:
    return b"\n".join(line(model, max_tokens=max_tokens) for _ in range(n)) + b"\n"


async def create(meter: Meter, file_id: str = "file-1", *, answered: bool = True) -> http.HTTPFlow:
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    flow = make_flow(BATCHES, body, headers=TAGS)
    await run_request(meter, flow)
    if answered and flow.response is None:
        await answer(meter, flow, batch_object("validating"))
    return flow


async def poll(meter: Meter, body: dict, path: str = "/batch_1", method: str = "GET") -> http.HTTPFlow:
    flow = make_flow(BATCHES + path, b"", method=method)
    await run_request(meter, flow)
    await answer(meter, flow, body)
    return flow


def records(meter: Meter) -> list:
    return meter.store.records  # type: ignore[union-attr]


async def test_a_batch_is_billed_once_on_the_retrieval_that_sees_it_ended(meter: Meter) -> None:
    await upload(meter, requests_of("gpt-4o-mini"))
    assert records(meter) == []  # an upload is no call
    await create(meter)
    await poll(meter, batch_object("in_progress"))
    await poll(meter, batch_object("finalizing", USAGE))  # a running total: not yet
    await poll(meter, batch_object("completed", USAGE))
    await poll(meter, batch_object("completed", USAGE))  # read again later: billed already
    await poll(meter, batch_object("completed", USAGE, "batch_other"), "/batch_other")  # not seen started
    started, billed = records(meter)
    assert (started.path, started.api_flavor, started.action, started.status_code) == (
        "/v1/batches",
        "batch",
        "allowed",
        200,
    )
    assert (started.model_requested, started.model_sent, started.service_tier) == (
        "gpt-4o-mini",
        "gpt-4o-mini",
        "batch",
    )
    assert (started.price_status, started.cost_usd, started.usage_source) == (
        "background",
        Decimal(0),
        "none",
    )
    assert (started.environment, started.team) == ("staging", "evals")
    assert (billed.path, billed.api_flavor, billed.service_tier, billed.model_reported) == (
        "/v1/batches/batch_1",
        "batch",
        "batch",
        "gpt-4o-mini-2024-07-18",
    )
    assert (billed.input_tokens, billed.output_tokens, billed.usage_source) == (40_000, 9_000, "reported")
    # attributed as the creation was
    assert (billed.environment, billed.team, billed.model_requested) == ("staging", "evals", "gpt-4o-mini")
    assert billed.key_fingerprint == started.key_fingerprint is not None
    meter._price(billed)
    assert billed.price_status == "priced"
    assert (
        billed.cost_usd
        == meter.pricer.price_usage(
            "openai", ("gpt-4o-mini-2024-07-18",), billed.usage, billed.ts, service_tier="batch"
        ).cost_usd
    )
    assert not meter._background


async def test_a_cancel_does_not_bill_until_the_batch_is_cancelled(meter: Meter) -> None:
    """``POST .../cancel`` answers ``cancelling`` (not final); the work done before the cancel is
    billed by the retrieval that sees it ``cancelled``."""
    await upload(meter, requests_of("gpt-4o-mini"))
    await create(meter)
    await poll(meter, batch_object("cancelling", USAGE), "/batch_1/cancel", method="POST")
    assert len(records(meter)) == 1 and meter._background.get("batch_1") is not None
    await poll(meter, batch_object("cancelled", USAGE))
    _, billed = records(meter)
    assert (billed.path, billed.output_tokens, billed.team) == ("/v1/batches/batch_1", 9_000, "evals")


async def test_a_batch_ended_without_usage_gets_a_row_saying_its_cost_is_unknown(meter: Meter) -> None:
    await upload(meter, requests_of("gpt-4o-mini"))
    await create(meter)
    await poll(meter, batch_object("expired"))
    await asyncio.sleep(0)  # no offline estimate is started for a batch
    _, billed = records(meter)
    assert (billed.usage_source, billed.input_tokens, billed.error) == ("none", None, batches.NO_USAGE)
    meter._price(billed)
    assert (billed.price_status, billed.cost_usd) == ("no_usage", None)
    assert not meter._estimates


async def test_a_failed_batch_is_forgotten_without_a_row(meter: Meter) -> None:
    await upload(meter, requests_of("gpt-4o-mini"))
    await create(meter)
    await poll(meter, batch_object("failed"))
    assert len(records(meter)) == 1 and meter._background.get("batch_1") is None


async def test_a_disallowed_model_in_the_input_file_refuses_the_batch(meter: Meter) -> None:
    """The file is uploaded already: the batch cannot be downgraded, it is refused, saying why."""
    meter._apply(parse_policies(RESTRICTED))
    await upload(meter, requests_of("gpt-4o-mini") + requests_of("gpt-4o"))
    flow = await create(meter, answered=False)
    assert flow.response is not None and flow.response.status_code == 403  # upstream never contacted
    message = json.loads(flow.response.content)["error"]["message"]
    assert message.startswith(
        "tokometer: model gpt-4o is not allowed in environment development (allowed there: gpt-4o-mini"
    )
    assert "input file" in message and "downgraded" in message
    await meter.response(flow)
    [refused] = records(meter)
    assert (refused.action, refused.model_requested, refused.model_sent, refused.status_code) == (
        "blocked",
        "gpt-4o",
        None,
        403,
    )
    assert not meter._background
    meter._apply(parse_policies(RESTRICTED.replace("downgrade", "on_disallowed: block\n      downgrade")))
    flow = await create(meter, answered=False)
    message = json.loads(flow.response.content)["error"]["message"]  # type: ignore[union-attr]
    assert "model gpt-4o is not allowed" in message and "its input file file-1 asks for it" in message


async def test_an_input_file_the_proxy_did_not_see_fails_closed_where_models_are_restricted(
    meter: Meter,
) -> None:
    flow = await create(meter, "file-unseen")  # no allowlist: allowed, its model unknown
    assert flow.response is not None and flow.response.status_code == 200
    [allowed] = records(meter)
    assert (allowed.action, allowed.model_requested, allowed.price_status) == ("allowed", None, "background")
    assert "file-unseen" in (allowed.error or "")
    meter._apply(parse_policies(RESTRICTED))
    flow = await create(meter, "file-unseen-2", answered=False)
    assert flow.response is not None and flow.response.status_code == 403
    message = json.loads(flow.response.content)["error"]["message"]
    assert "upload the batch's input file through the proxy" in message and "gpt-4o-mini" in message


async def test_an_input_file_with_unreadable_lines_fails_closed_too(meter: Meter) -> None:
    meter._apply(parse_policies(RESTRICTED))
    await upload(meter, requests_of("gpt-4o-mini") + b"{not json\n")
    flow = await create(meter, answered=False)
    assert flow.response is not None and flow.response.status_code == 403
    assert "1 of 4 lines" in json.loads(flow.response.content)["error"]["message"]


async def test_other_uploads_are_not_read(meter: Meter) -> None:
    meter._apply(parse_policies(RESTRICTED))
    await upload(meter, requests_of("gpt-4o-mini"), purpose=b"fine-tune")
    flow = await create(meter, answered=False)
    assert flow.response is not None and flow.response.status_code == 403  # not a batch's: unseen


async def test_a_failed_upload_is_not_remembered(meter: Meter) -> None:
    meter._apply(parse_policies(RESTRICTED))
    flow = make_flow(
        FILES,
        form(("purpose", b"batch", None), ("file", requests_of("gpt-4o-mini"), "r.jsonl")),
        headers={"content-type": CTYPE},
    )
    await run_request(meter, flow)
    await answer(meter, flow, {"error": {"message": "bad file"}, "id": "file-1"}, status=400)
    flow = await create(meter, answered=False)
    assert flow.response is not None and flow.response.status_code == 403


async def test_a_large_upload_is_read_off_the_event_loop(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[Any] = []
    real = asyncio.to_thread
    monkeypatch.setattr(addon.meter.asyncio, "to_thread", lambda f, *a: threads.append(f) or real(f, *a))
    big = requests_of("gpt-4o-mini", n=1 + INLINE_PARSE_LIMIT // 100, max_tokens=None)
    await upload(meter, big)
    monkeypatch.undo()
    assert [f.func.__name__ for f in threads if isinstance(f, functools.partial)] == ["read_upload"]
    meter._apply(parse_policies(RESTRICTED))
    flow = await create(meter)
    assert flow.response.status_code == 200  # type: ignore[union-attr]


async def test_the_creation_reserves_the_batch_estimate(meter: Meter) -> None:
    """bytes / 4 input tokens and the lines' output caps (1,000 for a line without one), at the
    batch price; a spent budget refuses the creation as it would any call."""
    meter._apply(parse_policies("environments:\n  staging:\n    budget: {usd: 100, period: day}\n"))
    jsonl = requests_of("gpt-4o", n=2, max_tokens=300) + requests_of("gpt-4o", n=1, max_tokens=None)
    await upload(meter, jsonl)
    await create(meter, answered=False)
    reserved = meter.enforcer.budgets.reserved()[Scope("environment", "staging")]
    expected = meter.pricer.estimate(
        "openai", "gpt-4o", len(jsonl) // 4, 2 * 300 + RESERVED_OUTPUT_TOKENS, service_tier="batch"
    )
    assert reserved == expected and expected > 0
    assert expected == meter.pricer.estimate("openai", "gpt-4o", len(jsonl) // 4, 1600) / 2
    meter._apply(parse_policies("environments:\n  staging:\n    budget: {usd: 0, period: day}\n"))
    flow = await create(meter, answered=False)
    assert flow.response is not None and flow.response.status_code == 429
    assert json.loads(flow.response.content)["error"]["message"].startswith("tokometer: staging budget")


async def test_a_line_without_a_cap_reserves_what_its_model_writes_here(meter: Meter) -> None:
    """o3 wrote 4,000 .. 6,000 output tokens in its last 21 calls here: each of a batch's lines to
    o3 that sets no cap reserves their p90 (5,800), as an uncapped call would, not 1,000."""
    meter._apply(parse_policies("environments:\n  staging:\n    budget: {usd: 100, period: day}\n"))
    meter._on_finished([finished_call(meter, i, "o3", 4000 + 100 * i) for i in range(21)])
    jsonl = requests_of("o3", n=2, max_tokens=300) + requests_of("o3", n=3, max_tokens=None)
    await upload(meter, jsonl)
    await create(meter, answered=False)
    reserved = meter.enforcer.budgets.reserved()[Scope("environment", "staging")]
    expected = meter.pricer.estimate(
        "openai", "o3", len(jsonl) // 4, 2 * 300 + 3 * 5800, service_tier="batch"
    )
    assert reserved == expected and expected > 0


async def test_a_batch_pending_at_a_restart_is_billed_by_the_next_proxy_once(tmp_path: Path) -> None:
    """The pending batch and the upload's models live in files beside the journals: a restart, a
    reload or another proxy on the same database knows both, and only one bills the batch."""
    db = tmp_path / "a.duckdb"
    first = Meter()
    with taddons.context(first) as tctx:
        tctx.configure(first, tokometer_db=str(db))
        first.running()
        try:
            await upload(first, requests_of("gpt-4o-mini"))
        finally:
            first.done()
    remembered = db.with_name("a.duckdb.journal") / "batch-input-files" / "file-1.json"
    assert remembered.stat().st_mode & 0o777 == 0o600
    entry = json.loads(remembered.read_text())
    assert entry["models"] == ["gpt-4o-mini"] and "hello" not in remembered.read_text()  # no content
    second = Meter()
    with taddons.context(second) as tctx:
        tctx.configure(second, tokometer_db=str(db))
        second.running()
        try:
            second._apply(parse_policies(RESTRICTED.replace("development", "staging")))
            flow = await create(second)  # the upload, seen by the proxy before, is known here
            assert flow.response.status_code == 200  # type: ignore[union-attr]
            # two retrievals in flight at once (a poller and a dashboard) both see it ended
            gets = [make_flow(BATCHES + "/batch_1", b"", method="GET") for _ in range(2)]
            for get in gets:
                await run_request(second, get)
            for get in gets:
                await answer(second, get, batch_object("completed", USAGE))
        finally:
            second.done()
    third = Meter()  # another restart, or another proxy on the same database
    with taddons.context(third) as tctx:
        tctx.configure(third, tokometer_db=str(db))
        third.running()
        try:
            await poll(third, batch_object("completed", USAGE))
        finally:
            third.done()
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            "SELECT path, price_status, environment, team, model_requested, output_tokens, service_tier "
            "FROM calls ORDER BY path"
        ).fetchall()
        cost = con.execute("SELECT cost_usd FROM calls WHERE path <> '/v1/batches'").fetchone()[0]
    assert rows == [
        ("/v1/batches", "background", "staging", "evals", "gpt-4o-mini", None, "batch"),
        ("/v1/batches/batch_1", "priced", "staging", "evals", "gpt-4o-mini", 9_000, "batch"),
    ]
    usage = batches.parse_batch(json.dumps(batch_object("completed", USAGE)).encode()).usage
    model, when = ("gpt-4o-mini-2024-07-18",), datetime.now(UTC)
    expected = second.pricer.price_usage("openai", model, usage, when, service_tier="batch")
    assert cost == expected.cost_usd


async def test_a_list_of_batches_bills_the_ended_ones_it_shows_once(meter: Meter) -> None:
    """``client.batches.list()``: each pending batch it shows ended is billed on a row of its own
    (path /v1/batches), attributed as its creation was; a later retrieval adds nothing."""
    await upload(meter, requests_of("gpt-4o-mini"))
    await create(meter)
    page = {
        "object": "list",
        "data": [
            batch_object("completed", USAGE),
            batch_object("completed", USAGE, "batch_not_seen"),
            batch_object("in_progress", None, "batch_running"),
        ],
        "has_more": False,
    }
    listing = make_flow(BATCHES + "?limit=20", b"", method="GET")
    await run_request(meter, listing)
    listing.response = http.Response.make(200, json.dumps(page), {"transfer-encoding": "chunked"})
    meter.responseheaders(listing)
    assert not listing.response.stream  # a list page is held whole to be read
    await meter.response(listing)
    await poll(meter, batch_object("completed", USAGE))
    await poll(meter, page, "")  # listed again
    _, billed = records(meter)
    assert (billed.path, billed.api_flavor, billed.output_tokens, billed.team, billed.status_code) == (
        "/v1/batches",
        "batch",
        9_000,
        "evals",
        200,
    )
    assert not meter._background


# ---------------------------------------------------------------- Anthropic Message Batches

MESSAGE_BATCHES = "https://api.anthropic.com/v1/messages/batches"


def message_batch(status: str = "in_progress", batch_id: str = "msgbatch_1") -> dict[str, Any]:
    return {
        "id": batch_id,
        "type": "message_batch",
        "processing_status": status,
        "request_counts": {"processing": 0, "succeeded": 3, "errored": 1, "canceled": 0, "expired": 0},
        "results_url": f"{MESSAGE_BATCHES}/{batch_id}/results" if status == "ended" else None,
    }


async def create_message_batch(meter: Meter, *models: str, answered: bool = True) -> http.HTTPFlow:
    body = {
        "requests": [
            {"custom_id": f"q{i}", "params": {"model": m, "max_tokens": 700, "messages": []}}
            for i, m in enumerate(models)
        ]
    }
    flow = make_flow(MESSAGE_BATCHES, body, headers=TAGS)
    await run_request(meter, flow)
    if answered and flow.response is None:
        await answer(meter, flow, message_batch())
    return flow


def results_body() -> bytes:
    return (
        b"\n".join(
            [
                result_line(),
                result_line("errored"),
                result_line(output_tokens=100),
                result_line(model="claude-sonnet-4-5-20250929"),
            ]
        )
        + b"\n"
    )


async def download(
    meter: Meter, data: bytes, piece: int = 1000, **headers: str
) -> tuple[http.HTTPFlow, bytes]:
    """``client.messages.batches.results(id)``'s download, fed to the hooks in pieces."""
    flow = make_flow(f"{MESSAGE_BATCHES}/msgbatch_1/results", b"", method="GET")
    await run_request(meter, flow)
    flow.response = http.Response.make(200, b"", {"content-type": "application/binary", **headers})
    del flow.response.headers["content-length"]
    flow.response.headers["transfer-encoding"] = "chunked"
    flow.response.stream = False
    meter.responseheaders(flow)
    if flow.response.stream is True:  # not metered: passed on as it comes, as any download
        return flow, data
    sent = feed(flow, data, piece)
    await meter.response(flow)
    return flow, sent


async def test_a_message_batch_is_billed_by_its_results_once_per_model(meter: Meter) -> None:
    created = await create_message_batch(meter, "claude-haiku-4-5", "claude-sonnet-4-5")
    assert created.response.status_code == 200  # type: ignore[union-attr]
    await poll_anthropic(meter, message_batch("in_progress"))
    await poll_anthropic(meter, message_batch("ended"))  # no usage in it: nothing billed yet
    data = results_body()
    _, sent = await download(meter, data, piece=333)
    assert sent == data  # the client gets every byte as sent
    await download(meter, data)  # downloaded again: billed already
    started, *billed = records(meter)
    assert (started.provider, started.path, started.api_flavor, started.price_status, started.cost_usd) == (
        "anthropic",
        "/v1/messages/batches",
        "batch",
        "background",
        Decimal(0),
    )
    assert (started.model_requested, started.service_tier, started.environment) == (
        "claude-haiku-4-5",
        "batch",
        "staging",
    )
    assert "2 models" in (started.error or "")
    by_model = {r.model_reported: r for r in billed}
    assert sorted(by_model) == ["claude-haiku-4-5-20251001", "claude-sonnet-4-5-20250929"]
    haiku = by_model["claude-haiku-4-5-20251001"]
    assert (haiku.path, haiku.api_flavor, haiku.service_tier, haiku.status_code) == (
        "/v1/messages/batches/msgbatch_1/results",
        "batch",
        "batch",
        200,
    )
    assert (haiku.input_tokens, haiku.cache_read_tokens, haiku.cache_write_tokens, haiku.output_tokens) == (
        3000,
        600,
        400,
        500,
    )
    assert (haiku.environment, haiku.team) == ("staging", "evals") and len({r.id for r in billed}) == 2
    meter._price(haiku)
    assert (
        haiku.price_status == "priced"
        and haiku.cost_usd
        == meter.pricer.price_usage(
            "anthropic", ("claude-haiku-4-5-20251001",), haiku.usage, haiku.ts, service_tier="batch"
        ).cost_usd
    )
    assert not meter._background


async def poll_anthropic(meter: Meter, body: dict) -> None:
    flow = make_flow(f"{MESSAGE_BATCHES}/msgbatch_1", b"", method="GET")
    await run_request(meter, flow)
    await answer(meter, flow, body)


async def test_a_results_download_cut_short_bills_nothing_until_one_ends(meter: Meter) -> None:
    await create_message_batch(meter, "claude-haiku-4-5")
    flow = make_flow(f"{MESSAGE_BATCHES}/msgbatch_1/results", b"", method="GET")
    await run_request(meter, flow)
    flow.response = http.Response.make(200, b"", {"content-type": "application/binary"})
    flow.response.stream = False
    meter.responseheaders(flow)
    flow.response.stream(results_body()[:500])  # type: ignore[operator]
    flow.error = Error("client disconnected")
    meter.error(flow)
    assert len(records(meter)) == 1 and meter._background.get("msgbatch_1") is not None
    await download(meter, gzip.compress(results_body()), piece=50, **{"content-encoding": "gzip"})
    assert [r.model_reported for r in records(meter)[1:]] == [
        "claude-haiku-4-5-20251001",
        "claude-sonnet-4-5-20250929",
    ]


async def test_a_disallowed_model_in_a_message_batch_refuses_it(meter: Meter) -> None:
    meter._apply(parse_policies("environments:\n  staging:\n    models: {allow: [claude-haiku-4-5]}\n"))
    flow = await create_message_batch(meter, "claude-haiku-4-5", "claude-opus-4-1", answered=False)
    assert flow.response is not None and flow.response.status_code == 403
    message = json.loads(flow.response.content)["error"]["message"]
    assert "model claude-opus-4-1 is not allowed in environment staging" in message
    assert "its requests ask for it" in message
    flow = await create_message_batch(meter, "claude-haiku-4-5", answered=False)
    assert flow.response is None  # allowed: sent upstream


async def test_a_partial_results_download_bills_nothing(meter: Meter) -> None:
    """A resumed download (``Range: bytes=N-``, answered 206) holds only part of the results: it
    must not bill the batch (a later download could not bill the rest)."""
    await create_message_batch(meter, "claude-haiku-4-5")
    data = results_body()
    flow = make_flow(
        f"{MESSAGE_BATCHES}/msgbatch_1/results", b"", method="GET", headers={"range": "bytes=700-"}
    )
    await run_request(meter, flow)
    flow.response = http.Response.make(206, b"", {"content-type": "application/binary"})
    flow.response.headers["content-range"] = f"bytes 700-{len(data) - 1}/{len(data)}"
    flow.response.stream = False
    meter.responseheaders(flow)
    assert flow.response.stream  # passed on as it comes all the same
    if callable(flow.response.stream):
        assert feed(flow, data[700:], 100) == data[700:]
    await meter.response(flow)
    assert len(records(meter)) == 1 and meter._background.get("msgbatch_1") is not None
    await download(meter, data)  # the whole results: billed
    assert [r.model_reported for r in records(meter)[1:]] == [
        "claude-haiku-4-5-20251001",
        "claude-sonnet-4-5-20250929",
    ]


async def test_an_upload_answered_without_a_content_length_is_remembered(meter: Meter) -> None:
    """The upload's answer names the file id; an answer of unknown size (chunked, or HTTP/2
    without content-length) must still be held to be read, or the batch fails closed."""
    meter._apply(parse_policies(RESTRICTED))
    flow = make_flow(
        FILES,
        form(("purpose", b"batch", None), ("file", requests_of("gpt-4o-mini"), "r.jsonl")),
        headers={"content-type": CTYPE},
    )
    await run_request(meter, flow)
    body = json.dumps({"id": "file-1", "object": "file", "purpose": "batch"})
    flow.response = http.Response.make(200, body, {"content-type": "application/json"})
    del flow.response.headers["content-length"]
    flow.response.headers["transfer-encoding"] = "chunked"
    meter.responseheaders(flow)
    assert not flow.response.stream  # a file object: held whole to be read
    await meter.response(flow)
    created = await create(meter, answered=False)
    assert created.response is None  # its models are known: sent upstream
