"""OpenAI Responses in background mode: the POST answers "queued"; the usage comes with a later GET."""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from mitmproxy import http
from mitmproxy.flow import Error
from mitmproxy.test import taddons

from addon import meter as meter_module
from addon.background_responses import HOLD_S, PendingResponses
from addon.budgets import Scope
from addon.meter import Meter
from addon.policies import parse_policies
from addon.record import CallRecord
from tests.test_meter import CollectingStore, make_flow, run_request, stream_response

RESPONSES_URL = "https://api.openai.com/v1/responses"
QUEUED = {
    "id": "resp_bg",
    "object": "response",
    "status": "queued",
    "background": True,
    "model": "o3-pro-2025-06-10",
    "output": [],
    "usage": None,
}
USAGE = {
    "input_tokens": 12,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 30_000,
    "output_tokens_details": {"reasoning_tokens": 25_000},
}
DONE = QUEUED | {"status": "completed", "usage": USAGE, "output": [{"type": "message", "content": []}]}


def meter_with_store(tmp_path: Path, tctx: taddons.context, addon: Meter) -> None:
    tctx.configure(addon, tokometer_db=str(tmp_path / "a.duckdb"))
    addon.store = CollectingStore()  # type: ignore[assignment]


async def answer(meter: Meter, flow: http.HTTPFlow, body: dict) -> None:
    flow.response = http.Response.make(200, json.dumps(body), {"content-type": "application/json"})
    meter.responseheaders(flow)
    await meter.response(flow)


async def start(meter: Meter) -> None:
    headers = {"x-metering-tags": '{"env": "staging", "team": "research"}'}
    body = {"model": "o3-pro", "input": "Write a long report.", "background": True}
    post = make_flow(RESPONSES_URL, body, headers=headers)
    await run_request(meter, post)
    await answer(meter, post, QUEUED)


async def stream_retrieval(meter: Meter, query: str, kind: str, response: dict) -> None:
    """GET /v1/responses/resp_bg?QUERY answered as a stream ending with one ``kind`` event."""
    get = make_flow(f"{RESPONSES_URL}/resp_bg?{query}", b"", method="GET")
    await run_request(meter, get)
    stream_response(get, meter)
    event = {"type": kind, "sequence_number": 9, "response": response}
    get.response.stream(f"event: {kind}\ndata: {json.dumps(event)}\n\n".encode())  # type: ignore[operator,union-attr]
    get.response.stream(b"")  # type: ignore[operator,union-attr]
    await meter.response(get)


async def poll(meter: Meter, body: dict, path: str = "/resp_bg") -> http.HTTPFlow:
    get = make_flow(RESPONSES_URL + path, b"", method="GET")
    await run_request(meter, get)
    await answer(meter, get, body)
    return get


async def test_the_usage_of_a_background_response_is_billed_once_when_retrieved(tmp_path: Path) -> None:
    addon = Meter()
    with taddons.context(addon) as tctx:
        meter_with_store(tmp_path, tctx, addon)
        await start(addon)
        await poll(addon, QUEUED | {"status": "in_progress"})  # still running: no row
        await poll(addon, DONE)
        await poll(addon, DONE)  # read again later: already billed
        await poll(addon, DONE, "/resp_other")  # not one this proxy saw start
        started, retrieved = addon.store.records  # type: ignore[union-attr]
        # the start: no estimate of a prompt-only cost, $0 here, billed on the retrieval's row
        assert (started.path, started.usage_source, started.cost_usd) == ("/v1/responses", "none", Decimal(0))
        assert (started.price_status, started.error) == ("background", None)
        assert (retrieved.path, retrieved.api_flavor, retrieved.usage_source) == (
            "/v1/responses/resp_bg",
            "responses",
            "reported",
        )
        assert (retrieved.input_tokens, retrieved.output_tokens, retrieved.reasoning_tokens) == (
            12,
            30_000,
            25_000,
        )
        # attributed as the call that started it
        assert (retrieved.environment, retrieved.team, retrieved.model_requested) == (
            "staging",
            "research",
            "o3-pro",
        )
        assert retrieved.key_fingerprint == started.key_fingerprint is not None
        addon._price(retrieved)
        assert retrieved.price_status == "priced" and retrieved.cost_usd is not None
        assert retrieved.cost_usd > Decimal("1")  # 30,000 o3-pro output tokens: $80 per 1M
        assert not addon._background


async def test_a_background_response_retrieved_as_a_stream_is_billed(tmp_path: Path) -> None:
    addon = Meter()
    with taddons.context(addon) as tctx:
        meter_with_store(tmp_path, tctx, addon)
        await start(addon)
        await stream_retrieval(addon, "stream=true&starting_after=3", "response.completed", DONE)
        _, retrieved = addon.store.records  # type: ignore[union-attr]
        assert (retrieved.streamed, retrieved.output_tokens) == (True, 30_000)


async def test_a_background_response_that_failed_is_forgotten_without_a_row(tmp_path: Path) -> None:
    addon = Meter()
    with taddons.context(addon) as tctx:
        meter_with_store(tmp_path, tctx, addon)
        await start(addon)
        await poll(addon, QUEUED | {"status": "failed", "error": {"message": "boom"}})
        assert len(addon.store.records) == 1 and not addon._background  # type: ignore[union-attr]


async def test_a_plain_response_is_billed_as_it_comes(tmp_path: Path) -> None:
    """Not background: its usage is in the POST's answer, and a later GET of it is not billed."""
    addon = Meter()
    with taddons.context(addon) as tctx:
        meter_with_store(tmp_path, tctx, addon)
        post = make_flow(RESPONSES_URL, {"model": "o3-pro", "input": "hi"})
        await run_request(addon, post)
        await answer(addon, post, DONE | {"background": False})
        await poll(addon, DONE | {"background": False})
        [record] = addon.store.records  # type: ignore[union-attr]
        assert (record.path, record.output_tokens) == ("/v1/responses", 30_000)


async def test_a_response_pending_at_a_restart_is_billed_by_the_next_proxy(tmp_path: Path) -> None:
    """The pending responses live in files beside the journals: a new instance (a script reload, a
    restart, another proxy on the same database) bills the retrieval."""
    db = tmp_path / "a.duckdb"
    first = Meter()
    with taddons.context(first) as tctx:
        tctx.configure(first, tokometer_db=str(db))
        first.running()  # opens the store, and with it the pending list beside its journals
        try:
            await start(first)
        finally:
            first.done()
    pending = db.with_name("a.duckdb.journal") / "background-responses" / "resp_bg.json"
    assert pending.stat().st_mode & 0o777 == 0o600 and pending.parent.stat().st_mode & 0o777 == 0o700
    assert json.loads(pending.read_text())["team"] == "research"  # the attribution, never the key
    second = Meter()
    with taddons.context(second) as tctx:
        tctx.configure(second, tokometer_db=str(db))
        second.running()
        try:
            await poll(second, DONE)
        finally:
            second.done()
    assert not pending.exists()  # billed: taken off
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            "SELECT path, price_status, environment, team, output_tokens FROM calls ORDER BY path"
        ).fetchall()
    assert rows == [
        ("/v1/responses", "background", "staging", "research", None),
        ("/v1/responses/resp_bg", "priced", "staging", "research", 30_000),
    ]
    # The creation row is the call; the retrieval row that bills it is a part of it (its parent_id).
    with duckdb.connect(str(db), read_only=True) as con:
        [(creation, linked)] = con.execute(
            "SELECT a.id, b.parent_id FROM calls a JOIN calls b ON b.path = '/v1/responses/resp_bg' "
            "WHERE a.path = '/v1/responses'"
        ).fetchall()
    assert linked == creation


async def test_a_background_call_counts_once_whether_retrieved_or_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One call retrieved (two rows) and one never retrieved (its creation row alone): 2 calls,
    1 of them with usage and a price (the retrieved one's usage is on its retrieval row)."""
    from addon.spend import main

    db = tmp_path / "a.duckdb"
    addon = Meter()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tokometer_db=str(db))
        addon.running()
        try:
            await start(addon)
            await poll(addon, DONE)
            await start(addon)  # never retrieved through the proxy (a webhook, say)
        finally:
            addon.done()
    capsys.readouterr()
    assert main(["--db", str(db), "summary", "--from", "2000-01-01", "--format", "json"]) in (0, None)
    [env] = json.loads(capsys.readouterr().out)["environments"]
    assert (env["calls"], env["usage_calls"], env["no_usage_calls"]) == (2, 1, 0)
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*), count(parent_id) FROM calls").fetchone() == (3, 1)


async def test_two_retrievals_in_flight_bill_the_response_once(tmp_path: Path) -> None:
    """A client streaming the response while another polls it: both see it finished."""
    addon = Meter()
    with taddons.context(addon) as tctx:
        meter_with_store(tmp_path, tctx, addon)
        await start(addon)
        gets = [make_flow(RESPONSES_URL + "/resp_bg", b"", method="GET") for _ in range(2)]
        for get in gets:
            await run_request(addon, get)
        for get in gets:
            await answer(addon, get, DONE)
        assert [r.path for r in addon.store.records] == ["/v1/responses", "/v1/responses/resp_bg"]  # type: ignore[union-attr]


async def test_a_streamed_retrieval_that_failed_is_not_journaled(tmp_path: Path) -> None:
    """No usage at its final event: no row, so nothing journaled ahead for a later start to store."""
    addon = Meter()
    with taddons.context(addon) as tctx:
        meter_with_store(tmp_path, tctx, addon)
        await start(addon)
        failed = QUEUED | {"status": "failed", "error": {"code": "server_error", "message": "boom"}}
        await stream_retrieval(addon, "stream=true", "response.failed", failed)
        assert addon.store.journaled == [] and len(addon.store.records) == 1  # type: ignore[union-attr]
        assert not addon._background


def test_a_pending_entry_is_taken_once_and_old_ones_are_forgotten(tmp_path: Path) -> None:
    folder = tmp_path / "journal" / "background-responses"
    first, second = PendingResponses(folder), PendingResponses(folder)
    assert second  # a shared folder: a GET may be a retrieval even with nothing added here
    first.add("resp_1", {"team": "a"})
    assert second.get("resp_1") == {"team": "a"}  # another proxy sees it at once
    assert second.claim("resp_1") and not first.claim("resp_1")  # billed once
    (folder / "resp_bad.json").write_text("{not json")
    assert first.get("resp_bad") is None  # logged
    first.add("resp_old", {})
    first.add("resp_new", {})
    os.utime(folder / "resp_old.json", (0, 0))
    first.forget_old()
    assert (first.get("resp_old"), first.get("resp_new")) == (None, {})
    first.add("../escape", {"team": "x"})  # not a file name: kept in memory only
    assert not (tmp_path / "journal" / "escape.json").exists() and first.get("../escape") == {"team": "x"}


def test_on_a_full_disk_a_pending_entry_is_kept_in_memory_and_billed_once(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("")  # the folder cannot be made: every write fails, as on a full disk
    pending = PendingResponses(blocked / "background-responses")
    pending.add("resp_1", {"team": "a"})
    assert pending.get("resp_1") == {"team": "a"}
    assert pending.claim("resp_1") and not pending.claim("resp_1")


async def test_a_response_started_before_a_database_switch_is_billed(tmp_path: Path) -> None:
    addon = Meter()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tokometer_db=str(tmp_path / "a.duckdb"))
        addon.running()
        try:
            await start(addon)
            tctx.configure(addon, tokometer_db=str(tmp_path / "b.duckdb"))  # a new store and list
            await poll(addon, DONE)
        finally:
            addon.done()
    with duckdb.connect(str(tmp_path / "b.duckdb"), read_only=True) as con:
        assert con.execute("SELECT path, output_tokens FROM calls").fetchall() == [
            ("/v1/responses/resp_bg", 30_000)
        ]


async def test_an_entry_written_by_another_version_is_still_billed(tmp_path: Path) -> None:
    """A field this version does not know (a newer proxy on the same database) is left out."""
    addon = Meter()
    with taddons.context(addon) as tctx:
        meter_with_store(tmp_path, tctx, addon)
        folder = tmp_path / "background-responses"
        addon._background = PendingResponses(folder)
        folder.mkdir()
        (folder / "resp_bg.json").write_text(json.dumps({"team": "research", "a_new_field": 1}))
        await poll(addon, DONE)
        [retrieved] = addon.store.records  # type: ignore[union-attr]
        assert (retrieved.team, retrieved.environment, retrieved.output_tokens) == (
            "research",
            "development",
            30_000,
        )
        # An entry without its creation row's id (an older version's): the retrieval is not linked.
        assert retrieved.parent_id is None


def test_a_response_whose_file_cannot_be_removed_is_billed_once_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only folder: the claim cannot take the file off; this proxy bills it once, not every poll."""
    pending = PendingResponses(tmp_path / "background-responses")
    pending.add("resp_1", {})

    def read_only(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(Path, "unlink", read_only)
    assert pending.claim("resp_1") and not pending.claim("resp_1")


async def test_a_background_stream_the_client_left_is_billed_on_its_resumed_retrieval(tmp_path: Path) -> None:
    """background=True with stream=True: the client leaves after response.created; the response
    runs on, and the stream resumed with GET ?stream=true&starting_after=N carries its usage."""
    addon = Meter()
    with taddons.context(addon) as tctx:
        meter_with_store(tmp_path, tctx, addon)
        body = {"model": "o3-pro", "input": "A long report.", "background": True, "stream": True}
        post = make_flow(RESPONSES_URL, body)
        await run_request(addon, post)
        stream_response(post, addon)
        created = {"type": "response.created", "sequence_number": 0, "response": QUEUED}
        post.response.stream(f"event: response.created\ndata: {json.dumps(created)}\n\n".encode())  # type: ignore[operator,union-attr]
        post.error = Error("client disconnected")
        addon.error(post)  # the client hung up
        await stream_retrieval(addon, "stream=true&starting_after=0", "response.completed", DONE)
        started, retrieved = addon.store.records  # type: ignore[union-attr]
        assert (started.aborted, started.price_status, started.usage_source) == (True, "background", "none")
        assert (retrieved.output_tokens, retrieved.team) == (30_000, started.team)


async def test_a_cancelled_background_response_is_settled_by_its_cancel(tmp_path: Path) -> None:
    """POST /v1/responses/{id}/cancel answers with the response as it stands: with usage, its row
    bills it (once: a later GET adds nothing); without, it is forgotten without a row."""
    for cancelled, rows in (
        (DONE | {"status": "cancelled"}, 2),  # work done before the cancel, reported: billed
        (QUEUED | {"status": "cancelled"}, 1),  # nothing reported: no row, the entry is gone
    ):
        addon = Meter()
        with taddons.context(addon) as tctx:
            meter_with_store(tmp_path / str(rows), tctx, addon)
            await start(addon)
            cancel = make_flow(f"{RESPONSES_URL}/resp_bg/cancel", b"", method="POST")
            await run_request(addon, cancel)
            await answer(addon, cancel, cancelled)
            assert addon._background.get("resp_bg") is None
            await poll(addon, DONE)  # read after the cancel: the response is settled already
            store = addon.store
            assert len(store.records) == rows  # type: ignore[union-attr]
            if rows == 2:
                billed = store.records[1]  # type: ignore[union-attr]
                assert (billed.path, billed.output_tokens, billed.environment) == (
                    "/v1/responses/resp_bg/cancel",
                    30_000,
                    "staging",
                )
                addon._price(billed)
                assert billed.cost_usd is not None and billed.cost_usd > Decimal("1")  # $80 per 1M output


# -- budgets: a background response holds its call's reservation while it runs -------------------

DEV = Scope("environment", "development")
DAY_CAP = "environments:\n  development:\n    budget: {usd: %s, period: day}\n"


def now_flow(url: str, body: dict | bytes, **kw: Any) -> http.HTTPFlow:
    """A flow started now: its row's spend falls in the budgets' current period."""
    flow = make_flow(url, body, **kw)
    flow.request.timestamp_start = time.time()
    return flow


async def start_budgeted(meter: Meter, response_id: str = "resp_bg", **extra: Any) -> http.HTTPFlow:
    """A background o3-pro POST, answered queued, its $0 row recorded as the store's writer does."""
    body = {"model": "o3-pro", "input": "Write a long report.", "background": True, **extra}
    post = now_flow(RESPONSES_URL, body)
    await run_request(meter, post)
    if post.response is None:
        await answer(meter, post, QUEUED | {"id": response_id})
        meter._on_finished([meter.store.records[-1]])  # type: ignore[union-attr]
    return post


async def retrieve(meter: Meter, body: dict, path: str = "/resp_bg", method: str = "GET") -> list[CallRecord]:
    """A retrieval (a GET, a cancel, a DELETE) answered ``body``; its rows priced and recorded."""
    rows = len(meter.store.records)  # type: ignore[union-attr]
    flow = now_flow(RESPONSES_URL + path, b"", method=method)
    await run_request(meter, flow)
    await answer(meter, flow, body)
    new = meter.store.records[rows:]  # type: ignore[union-attr]
    for row in new:
        meter._price(row)
    meter._on_finished(new)
    return new


def held(meter: Meter) -> Decimal:
    return meter.enforcer.budgets.reserved().get(DEV, Decimal(0))


async def test_background_calls_started_one_after_another_are_not_all_let_through(meter: Meter) -> None:
    """Each background POST reserves its estimate, and the reservation stays held while the
    response runs upstream (its POST a $0 row), so a cap with room for about one call's
    reservation does not let any number of them start."""
    meter._apply(parse_policies(DAY_CAP % "0.15"))
    allowed = 0
    for i in range(10):
        post = await start_budgeted(meter, f"resp_bg{i}")
        if post.response is not None and post.response.status_code == 429:
            continue
        allowed += 1
    # o3-pro reserves >= 1,000 output tokens at $80/M ($0.08): at most 2 fit under $0.15.
    assert allowed <= 2, f"{allowed} background o3-pro calls started under a $0.15 cap"
    assert allowed >= 1


async def test_the_hold_gives_way_to_the_retrieval_that_bills_it_once(meter: Meter) -> None:
    """Held while it runs (reserved, not spent: the live status shows no spend), the hold is
    settled by the row of the retrieval that bills it, in one step; a second retrieval neither
    bills nor settles again."""
    meter._apply(parse_policies(DAY_CAP % "100"))
    await start_budgeted(meter)
    estimate = held(meter)
    assert estimate >= Decimal("0.08")  # o3-pro: 1,000 output tokens at $80 per 1M at least
    [status] = meter.enforcer.budgets.status(datetime.now(UTC))
    assert status["spent"] == 0  # the live state's budgets: a hold is no spend
    assert await retrieve(meter, QUEUED | {"status": "in_progress"}) == []  # still running: held
    assert held(meter) == estimate
    [billed] = await retrieve(meter, DONE)
    assert held(meter) == 0
    [status] = meter.enforcer.budgets.status(datetime.now(UTC))
    assert billed.cost_usd is not None and status["spent"] == billed.cost_usd > Decimal("1")
    other = await start_budgeted(meter, "resp_other")  # another one: held apart
    assert other.response is not None and other.response.status_code == 200  # let through
    other_estimate = held(meter)  # (o3-pro wrote 30,000 tokens here: it reserves as much now)
    assert other_estimate > estimate
    assert await retrieve(meter, DONE) == []  # read again: billed already, its hold long gone
    assert held(meter) == other_estimate  # the other response's hold is untouched
    [status] = meter.enforcer.budgets.status(datetime.now(UTC))
    assert status["spent"] == billed.cost_usd


@pytest.mark.parametrize(
    ("path", "method", "body"),
    [
        ("/resp_bg", "GET", QUEUED | {"status": "failed", "error": {"message": "boom"}}),
        ("/resp_bg", "GET", QUEUED | {"status": "incomplete"}),  # no usage reported
        ("/resp_bg/cancel", "POST", QUEUED | {"status": "cancelled"}),
        ("/resp_bg", "DELETE", {"id": "resp_bg", "object": "response.deleted", "deleted": True}),
    ],
)
async def test_a_response_that_ends_unbilled_releases_its_hold(
    meter: Meter, path: str, method: str, body: dict
) -> None:
    meter._apply(parse_policies(DAY_CAP % "100"))
    await start_budgeted(meter)
    assert held(meter) > 0
    assert await retrieve(meter, body, path, method) == []
    assert held(meter) == 0 and meter._background.get("resp_bg") is None
    assert await retrieve(meter, DONE) == []  # gone: a later read bills nothing


async def test_a_cancel_with_usage_bills_and_settles_the_hold(meter: Meter) -> None:
    meter._apply(parse_policies(DAY_CAP % "100"))
    await start_budgeted(meter)
    [billed] = await retrieve(meter, DONE | {"status": "cancelled"}, "/resp_bg/cancel", "POST")
    assert billed.output_tokens == 30_000 and held(meter) == 0


async def test_a_failed_delete_keeps_the_hold(meter: Meter) -> None:
    meter._apply(parse_policies(DAY_CAP % "100"))
    await start_budgeted(meter)
    estimate = held(meter)
    flow = now_flow(RESPONSES_URL + "/resp_bg", b"", method="DELETE")
    await run_request(meter, flow)
    flow.response = http.Response.make(404, b'{"error": {"message": "no such response"}}')
    meter.responseheaders(flow)
    await meter.response(flow)
    assert held(meter) == estimate and meter._background.get("resp_bg") is not None


async def test_a_hold_nobody_settles_is_released_after_a_bound(meter: Meter) -> None:
    """A response never retrieved does not hold the budget for ever: its hold ends HOLD_S after it
    started (its pending entry stays: a retrieval still bills it)."""
    meter._apply(parse_policies(DAY_CAP % "0.15"))
    await start_budgeted(meter)
    assert held(meter) > 0
    budgets = meter.enforcer.budgets
    assert budgets.check((DEV,), datetime.now(UTC) + timedelta(seconds=HOLD_S - 60)) is None
    assert held(meter) > 0
    assert budgets.check((DEV,), datetime.now(UTC) + timedelta(seconds=HOLD_S + 1)) is None
    assert held(meter) == 0
    [billed] = await retrieve(meter, DONE)
    assert billed.output_tokens == 30_000 and held(meter) == 0


async def test_a_background_stream_the_client_left_keeps_its_hold(meter: Meter) -> None:
    meter._apply(parse_policies(DAY_CAP % "100"))
    body = {"model": "o3-pro", "input": "A long report.", "background": True, "stream": True}
    post = now_flow(RESPONSES_URL, body)
    await run_request(meter, post)
    estimate = held(meter)
    stream_response(post, meter)
    created = {"type": "response.created", "sequence_number": 0, "response": QUEUED}
    post.response.stream(f"event: response.created\ndata: {json.dumps(created)}\n\n".encode())  # type: ignore[operator,union-attr]
    post.error = Error("client disconnected")
    meter.error(post)
    meter._on_finished([meter.store.records[-1]])  # type: ignore[union-attr]
    assert estimate > 0 and held(meter) == estimate
    rows = len(meter.store.records)  # type: ignore[union-attr]
    await stream_retrieval(meter, "stream=true&starting_after=0", "response.completed", DONE)
    [billed] = meter.store.records[rows:]  # type: ignore[union-attr]
    meter._price(billed)
    meter._on_finished([billed])
    assert held(meter) == 0


async def test_a_background_stream_read_to_its_end_is_billed_at_once(meter: Meter) -> None:
    """background with stream, read to response.completed: billed on the POST's row, nothing held."""
    meter._apply(parse_policies(DAY_CAP % "100"))
    body = {"model": "o3-pro", "input": "A long report.", "background": True, "stream": True}
    post = now_flow(RESPONSES_URL, body)
    await run_request(meter, post)
    stream_response(post, meter)
    event = {"type": "response.completed", "sequence_number": 5, "response": DONE}
    post.response.stream(f"event: response.completed\ndata: {json.dumps(event)}\n\n".encode())  # type: ignore[operator,union-attr]
    post.response.stream(b"")  # type: ignore[operator,union-attr]
    await meter.response(post)
    [row] = meter.store.records  # type: ignore[union-attr]
    meter._price(row)
    meter._on_finished([row])
    assert row.output_tokens == 30_000 and held(meter) == 0 and not meter._background


async def test_a_hold_is_held_again_after_a_restart(tmp_path: Path) -> None:
    """The pending entry remembers the hold (amount, end): the next proxy on the database holds
    it again at start, until the retrieval that bills it, or its end; an entry past its end is not."""
    db = tmp_path / "a.duckdb"
    policies = tmp_path / "policies.yaml"
    policies.write_text(DAY_CAP % "100")
    first = Meter()
    with taddons.context(first) as tctx:
        tctx.configure(first, tokometer_db=str(db), tokometer_policies=str(policies))
        first.running()
        try:
            for response_id in ("resp_bg", "resp_old"):
                post = now_flow(RESPONSES_URL, {"model": "o3-pro", "input": "x", "background": True})
                await run_request(first, post)
                await answer(first, post, QUEUED | {"id": response_id})
            estimate = held(first) / 2  # each
        finally:
            first.done()
    folder = db.with_name("a.duckdb.journal") / "background-responses"
    entry = json.loads((folder / "resp_old.json").read_text())
    entry["hold"]["until"] = time.time() - 1  # its bound passed while the proxy was down
    (folder / "resp_old.json").write_text(json.dumps(entry))
    assert estimate > 0
    second = Meter()
    with taddons.context(second) as tctx:
        tctx.configure(second, tokometer_db=str(db), tokometer_policies=str(policies))
        second.running()
        try:
            assert held(second) == estimate  # resp_bg's, not resp_old's
            await poll(second, DONE)
            second.store.flush()  # type: ignore[union-attr]
            assert held(second) == 0
        finally:
            second.done()


async def test_a_hold_held_again_by_another_proxy_ends_when_it_finds_the_response_billed(
    tmp_path: Path,
) -> None:
    """Two proxies on one database: the one started later holds the other's pending response too;
    once the first bills it, a GET through the second finds it settled and lets its hold go."""
    folder = tmp_path / "background-responses"
    first, second = Meter(), Meter()
    with taddons.context(first) as tctx:
        meter_with_store(tmp_path / "1", tctx, first)
        first._apply(parse_policies(DAY_CAP % "100"))
        first._background = PendingResponses(folder)
        await start_budgeted(first)
        estimate = held(first)
    with taddons.context(second) as tctx:
        meter_with_store(tmp_path / "2", tctx, second)
        second._apply(parse_policies(DAY_CAP % "100"))
        second._background = PendingResponses(folder)
        second._hold_pending(second._background)  # as at its start
        assert held(second) == estimate > 0
        with taddons.context(first):
            [billed] = await retrieve(first, DONE)
        assert billed.output_tokens == 30_000 and held(first) == 0
        assert await retrieve(second, DONE) == [] and held(second) == 0


# -- review: holds that outlived their response, a reload, a refusal's wording -------------------


async def test_a_hold_ends_when_another_proxy_bills_the_response_through_a_get_in_flight(
    tmp_path: Path,
) -> None:
    """Two proxies on one database: the second holds the first's pending response (at its start).
    A GET through the second, sent before the first billed it and answered after, sees the
    response finished: it bills nothing (the first did) and lets its hold go, as a GET started a
    moment later does."""
    folder = tmp_path / "background-responses"
    first, second = Meter(), Meter()
    with taddons.context(first) as tctx:
        meter_with_store(tmp_path / "1", tctx, first)
        first._apply(parse_policies(DAY_CAP % "100"))
        first._background = PendingResponses(folder)
        await start_budgeted(first)
    with taddons.context(second) as tctx:
        meter_with_store(tmp_path / "2", tctx, second)
        second._apply(parse_policies(DAY_CAP % "100"))
        second._background = PendingResponses(folder)
        second._hold_pending(second._background)
        assert held(second) > 0
        get = now_flow(RESPONSES_URL + "/resp_bg", b"", method="GET")
        await run_request(second, get)  # in flight through the second proxy
        with taddons.context(first):
            [billed] = await retrieve(first, DONE)  # the first bills it meanwhile
        assert billed.output_tokens == 30_000
        await answer(second, get, DONE)  # the second's GET sees it completed
        assert second.store.records == []  # type: ignore[union-attr]  # billed once
        assert held(second) == 0


async def test_the_starting_proxy_lets_its_hold_go_when_another_proxy_bills_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxy that started a background response holds it; the retrieval that bills it goes
    through another proxy on the same database. The first notices the pending entry gone at its
    next look (every HOLD_CHECK_INTERVAL, from the policy watch) and lets its hold go."""
    monkeypatch.setattr(meter_module, "POLICY_CHECK_INTERVAL", 0.01)
    monkeypatch.setattr(meter_module, "HOLD_CHECK_INTERVAL", 0.03)
    folder = tmp_path / "background-responses"
    first, second = Meter(), Meter()
    with taddons.context(first) as tctx:
        meter_with_store(tmp_path / "1", tctx, first)
        first._apply(parse_policies(DAY_CAP % "100"))
        first._background = PendingResponses(folder)
        await start_budgeted(first)
        await start_budgeted(first, "resp_other")  # pending still: it stays held
        estimate = held(first) / 2
        assert estimate > 0
        first._release_ended_holds()  # nothing ended yet: a look changes nothing
        assert held(first) == 2 * estimate
    with taddons.context(second) as tctx:
        meter_with_store(tmp_path / "2", tctx, second)
        second._apply(parse_policies(DAY_CAP % "100"))
        second._background = PendingResponses(folder)
        [billed] = await retrieve(second, DONE)
        assert billed.output_tokens == 30_000
    assert held(first) == 2 * estimate  # not noticed yet
    watch = asyncio.ensure_future(first._watch_policies())
    try:
        for _ in range(200):
            await asyncio.sleep(0.01)
            if held(first) < 2 * estimate:
                break
    finally:
        watch.cancel()
    assert held(first) == estimate  # resp_bg's let go, resp_other's kept


async def test_a_background_post_in_flight_at_a_script_reload_keeps_its_hold(tmp_path: Path) -> None:
    """A background POST sent before a script reload and answered "queued" after it: the new
    instance reserves what the call had reserved when it takes it over, so the response runs
    held (README: a script reload holds a background response again)."""
    policies = tmp_path / "policies.yaml"
    policies.write_text(DAY_CAP % "100")
    old = Meter()
    with taddons.context(old) as tctx:
        tctx.configure(old, tokometer_db=str(tmp_path / "a.duckdb"), tokometer_policies=str(policies))
        old.running()
        post = now_flow(RESPONSES_URL, {"model": "o3-pro", "input": "x", "background": True})
        await run_request(old, post)
        plain = now_flow(RESPONSES_URL, {"model": "o3-pro", "input": "y"})
        await run_request(old, plain)
        reserved = held(old)
        ahead = now_flow(RESPONSES_URL, {"model": "o3-pro", "input": "z"})
        await run_request(old, ahead)
        # its stream's end journaled ahead: its row goes to the store before the reload, which
        # the new instance's budgets never hear of, so it is not reserved again there
        old._calls[ahead].journaled_in = old.store
        assert held(old) > reserved > 0
        old.done()  # the script reloads: mitmproxy is not shutting down
        new = Meter()
        new.configure({"tokometer_db", "tokometer_policies", "tokometer_log"})
        new.running()
        try:
            assert held(new) == reserved  # both calls in flight, reserved again
            await answer(new, post, QUEUED)
            assert new._background.get("resp_bg") is not None  # pending: a retrieval bills it
            await answer(new, plain, DONE | {"id": "resp_plain", "background": False})
            new.store.flush()  # type: ignore[union-attr]
            assert 0 < held(new) < reserved  # the plain call billed; the background one held
        finally:
            new.done()


def test_a_refusal_never_says_zero_dollars_are_reserved() -> None:
    """The refusal names what is reserved besides the spend only when something is; a reservation
    under $0.0000005 (a few embedding tokens) reads "<$0.000001", never "$0.00"."""
    from addon.budgets import BudgetTracker, scopes_for

    tracker = BudgetTracker(
        parse_policies("environments:\n  development:\n    budget: {usd: 0.0001, period: day}\n")
    )
    now = datetime.now(UTC)
    scopes = scopes_for("development")
    assert tracker.check(scopes, now, reserve=("emb", lambda: Decimal("0.0000002"))) is None  # in flight
    tracker.record(scopes, Decimal("0.0001"), now)  # another call spent the cap
    refusal = tracker.check(scopes, now)
    assert refusal is not None and refusal.reserved > 0
    assert "$0.00 more reserved" not in refusal.message(), refusal.message()
    assert "<$0.000001 more reserved" in refusal.message()
